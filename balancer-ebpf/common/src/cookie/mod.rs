//! Session-cookie scanner for the first data segment of a connection (delayed binding).
//!
//! The XDP program copies the TCP payload (at most [`SCAN_MAX`] bytes) into a per-CPU
//! [`ScanScratch`], runs a [`Scanner`] over it one [`Scanner::step`] at a time, and takes
//! the [`CookieOutcome`]: the hashes of the primary and secondary server tokens of the
//! configured session cookie, or why there are none. Userspace hashes the configured
//! tokens with the same [`token_hash`] and stores `hash -> backend`.
//!
//! # What is matched
//!
//! - The payload must start with an HTTP method: 3 to 15 bytes `A`-`Z` followed by a space
//!   (`GET `, `POST `, ...); otherwise [`CookieOutcome::NotHttp`] (TLS ClientHello, SSH, ...).
//! - The request head ends at the first empty line (`\n\r\n` or `\n\n`); nothing after it
//!   (the body) is looked at. The request line is never taken for a header, so a
//!   `?JSESSIONID=` in the query string does not count.
//! - A `Cookie` header is a line starting with `cookie:`, any case, no space before the
//!   colon. Lines end with `\n`, `\r` before it is optional. Obsolete line folding is not
//!   supported (a folded continuation line is not part of the header).
//! - In its value, cookies are separated by `;`; spaces and tabs before a cookie name are
//!   skipped, empty cookies (`;;`) are allowed, a stray `\r` is just a byte of a cookie. A
//!   cookie matches if its name is exactly the configured name (case-sensitive, no space
//!   before `=`): `XJSESSIONID`, `JSESSIONIDX` and `jsessionid` do not match `JSESSIONID`.
//! - The first matching cookie in the head decides, over all `Cookie` headers.
//! - Its value may be double-quoted (the opening quote is skipped). The value ends at the
//!   first `;`, `"`, or byte `<= 0x20` (space, tab, CR, LF, other control bytes).
//! - The value is split by the delimiter byte; segment `n` (1-based) is the bytes between
//!   delimiter `n - 1` and delimiter `n`. The primary and secondary tokens are the
//!   configured segments. A token must be 1 to [`MAX_TOKEN_LEN`] bytes long: an empty or
//!   longer token counts as missing ([`CookieOutcome::SegmentMissing`] for the primary,
//!   `secondary: None` for the secondary).
//!
//! # Cut-off payloads
//!
//! The first segment may end inside the head. A token is known once the byte after it
//! (delimiter or value end) is in the payload. So: if the primary token is known, the
//! outcome is `Found` (with the secondary if that is known too); if the payload ends before
//! the primary token is known, or before the end of the head without a matching cookie,
//! the outcome is [`CookieOutcome::HeaderIncomplete`] (the cookie may be in a later
//! segment). Only the first [`SCAN_MAX`] bytes are scanned; a longer head is treated as cut
//! off there.
//!
//! # How it runs in the XDP program
//!
//! [`Scanner`] is a small state machine over byte positions of the buffer. Every read is
//! a word read at an index masked with [`IDX_MASK`] into a buffer of [`SCRATCH_SIZE`]
//! bytes, so no read can leave the buffer whatever the state holds (no bounds checks, no
//! panics). [`ScanBuf::seal`] writes a sentinel `\n\n` after the payload: it ends every
//! search (for a line end, a cookie end, a value end) at the payload's end, so the search
//! loops need no length check, and no read goes past the sentinel word.
//!
//! Headers are skipped 32 bytes at a time while the bytes hold no control byte; in a
//! block that holds a `\n`, every line start is looked at, and only lines starting with
//! `c`/`C`, `\r` or `\n` get a closer look.
//!
//! The XDP program keeps a [`ScanScratch`] (scanner, configuration copy, buffer) as the
//! value of a one-entry per-CPU array, copies the payload into `buf` with
//! `bpf_xdp_load_bytes`, calls [`ScanScratch::start`], and runs [`ScanScratch::burst`]
//! from a `bpf_loop` callback until it returns false (at most [`MAX_BURSTS`] iterations),
//! then takes [`ScanScratch::outcome`]:
//!
//! ```ignore
//! #[map]
//! static COOKIE_SCRATCH: PerCpuArray<ScanScratch> = PerCpuArray::with_max_entries(1, 0);
//!
//! #[inline(never)]
//! extern "C" fn scan_cb(_index: u64, _ctx: *mut c_void) -> i64 {
//!     match COOKIE_SCRATCH.get_ptr_mut(0) {
//!         Some(s) if unsafe { (*s).burst() } => 0,
//!         _ => 1,
//!     }
//! }
//!
//! // payload_len >= 1; written so that the verifier sees 1..=SCAN_MAX (see below).
//! let m = payload_len - 1;
//! let n = if m > SCAN_MAX - 1 { SCAN_MAX - 1 } else { m } + 1;
//! let s = unsafe { &mut *COOKIE_SCRATCH.get_ptr_mut(0)? };
//! if unsafe { bpf_xdp_load_bytes(ctx.ctx, payload_off as u32,
//!                                s.buf.bytes.as_mut_ptr() as *mut c_void, n as u32) } != 0 {
//!     return ...;
//! }
//! if s.start(n, &cookie_config) {
//!     unsafe { bpf_loop(MAX_BURSTS, scan_cb as *mut c_void, null_mut(), 0) };
//! }
//! let outcome = s.outcome();
//! ```
//!
//! What the verifier (Linux 6.18, programs built by this workspace's toolchain and loaded
//! by aya 0.14) needs, found with a probe program:
//! - The step loop must be `bpf_loop`: a plain bounded loop over the steps is refused
//!   ("the sequence of 8193 jumps is too complex") long before it covers a payload.
//!   aya-obj 0.3 relocates the callback address (`BPF_PSEUDO_FUNC`), and the kernel
//!   inlines the `bpf_loop` call into a loop of direct calls.
//! - The scan state must live in the map value, not in the callback context on the
//!   caller's stack: the verifier tracks stack contents precisely and does not converge
//!   on the callback (1M instructions); map memory is not tracked, so the callback is
//!   verified once.
//! - Positions are masked with [`IDX_MASK`] where the loops carry them to the next
//!   iteration, so that states at the loop heads have equal ranges and are pruned
//!   (without: 1M instructions; with: about 100K for the whole scanner).
//! - `bpf_xdp_load_bytes` needs a length the verifier knows to be at least 1; a
//!   `len > 0` test before `min(len, SCAN_MAX)` is lost in LLVM's output, hence the
//!   `m + 1` form above.
//!
//! [`scan`] drives the same steps on the host. No input needs more than [`MAX_STEPS`]
//! steps: every step moves the position forward or finishes the scan, except the one that
//! meets the end of a Cookie header line, and the step after that one does. Realistic
//! requests take a handful: the method, one per 512 bytes of headers, one or two per
//! Cookie header, one or two for the value.

/// Payload bytes scanned at most (a standard MTU's segment carries at most 1460).
pub const SCAN_MAX: usize = 2048;
/// Every read index is masked with this; every position the scanner reaches is below
/// `SCAN_MAX + 64`, so the mask never changes an index, it only proves the bounds.
pub const IDX_MASK: usize = 4095;
/// Size of the scratch buffer: a masked index plus a 32-byte read stays inside.
pub const SCRATCH_SIZE: usize = IDX_MASK + 1 + 64;
/// Longest server token taken (bytes). A longer one counts as missing.
pub const MAX_TOKEN_LEN: usize = 64;
/// Longest cookie name (bytes, without the `=`).
pub const MAX_NAME_LEN: usize = 31;
/// Steps one callback of the XDP program's driving loop runs. Each step already covers up
/// to 512 bytes of headers or 32 cookie items; more steps per callback save callbacks but
/// multiply the instructions the verifier checks (2: about 300K, 4: about 640K).
pub const STEP_BURST: usize = 1;
/// Upper bound on the steps any payload needs (see the module documentation).
pub const MAX_STEPS: usize = 2 * (SCAN_MAX + 64);

/// The cookie to look for and how to split its value. A map value: `#[repr(C)]`, no
/// padding. Build it with [`CookieConfig::new`]; the scanner is memory-safe with any bytes
/// in it, but only a validated one matches anything sensibly.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CookieConfig {
    /// `name=`, zero-padded, as little-endian words (byte `i` is byte `i % 8` of word
    /// `i / 8`).
    pub name: [u64; 4],
    /// Which bytes of each `name` word take part in the comparison.
    pub name_mask: [u64; 4],
    /// Length of `name=` in bytes (2..=32).
    pub name_len: u8,
    /// Byte separating the segments of the value.
    pub delimiter: u8,
    /// 1-based segment of the primary server token.
    pub primary: u8,
    /// 1-based segment of the secondary server token; 0: none.
    pub secondary: u8,
    pub _pad: [u8; 4],
}

const _: () = assert!(core::mem::size_of::<CookieConfig>() == 72);

#[cfg(feature = "user")]
// SAFETY: #[repr(C)] plain data without padding (asserted above).
unsafe impl aya::Pod for CookieConfig {}

/// Why [`CookieConfig::new`] refused a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieConfigError {
    /// Empty, longer than [`MAX_NAME_LEN`], or a byte that is not an RFC 7230 `tchar`.
    BadName,
    /// Not a visible ASCII byte, or one of `;`, `"`.
    BadDelimiter,
    /// Primary segment 0, or secondary equal to primary.
    BadSegments,
}

/// RFC 7230 `tchar`: what a cookie (token) name is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl CookieConfig {
    /// `JSESSIONID=<session>!<primary>!<secondary>`.
    pub const DEFAULT_NAME: &'static [u8] = b"JSESSIONID";
    pub const DEFAULT_DELIMITER: u8 = b'!';
    pub const DEFAULT_PRIMARY: u8 = 2;
    pub const DEFAULT_SECONDARY: u8 = 3;

    /// `name` is the cookie name (case-sensitive), `delimiter` splits its value,
    /// `primary`/`secondary` are 1-based segment numbers (`secondary` 0: none).
    pub fn new(
        name: &[u8],
        delimiter: u8,
        primary: u8,
        secondary: u8,
    ) -> Result<Self, CookieConfigError> {
        if name.is_empty() || name.len() > MAX_NAME_LEN || !name.iter().all(|&b| is_tchar(b)) {
            return Err(CookieConfigError::BadName);
        }
        if !(0x21..=0x7e).contains(&delimiter) || delimiter == b';' || delimiter == b'"' {
            return Err(CookieConfigError::BadDelimiter);
        }
        if primary == 0 || secondary == primary {
            return Err(CookieConfigError::BadSegments);
        }
        Ok(Self::build(name, delimiter, primary, secondary))
    }

    /// The default configuration, built at compile time.
    pub const DEFAULT: CookieConfig = CookieConfig::build(
        Self::DEFAULT_NAME,
        Self::DEFAULT_DELIMITER,
        Self::DEFAULT_PRIMARY,
        Self::DEFAULT_SECONDARY,
    );

    /// Builds without validating; `name` must be at most [`MAX_NAME_LEN`] bytes.
    const fn build(name: &[u8], delimiter: u8, primary: u8, secondary: u8) -> Self {
        let len = name.len() + 1;
        let mut words = [0u64; 4];
        let mut masks = [0u64; 4];
        let mut i = 0;
        while i < len && i < 32 {
            let b = if i < name.len() { name[i] } else { b'=' };
            words[i / 8] |= (b as u64) << (8 * (i % 8));
            i += 1;
        }
        let mut k = 0;
        while k < 4 {
            masks[k] = low_bytes(len.saturating_sub(8 * k));
            k += 1;
        }
        CookieConfig {
            name: words,
            name_mask: masks,
            name_len: len as u8,
            delimiter,
            primary,
            secondary,
            _pad: [0; 4],
        }
    }

    /// The cookie name (without `=`).
    pub fn name_bytes(&self) -> ([u8; 32], usize) {
        let mut out = [0u8; 32];
        for k in 0..4 {
            out[8 * k..8 * k + 8].copy_from_slice(&self.name[k].to_le_bytes());
        }
        (
            out,
            (self.name_len as usize).saturating_sub(1).min(MAX_NAME_LEN),
        )
    }
}

impl Default for CookieConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What the scan found; each variant but `Found` is a reason to fall back to the
/// cookie-less policy, and a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieOutcome {
    /// The payload does not start with an HTTP method and a space.
    NotHttp,
    /// Complete request head without a `Cookie` header.
    NoCookieHeader,
    /// Complete request head, `Cookie` header(s), but not the configured cookie.
    CookieNameAbsent,
    /// The cookie is there but the primary token is not (too few segments, empty, or
    /// longer than [`MAX_TOKEN_LEN`]).
    SegmentMissing,
    /// The payload ends before the end of the head (or of the primary token) without an
    /// answer: the cookie may be in a later segment.
    HeaderIncomplete,
    /// [`token_hash`] of the primary token, and of the secondary token if present.
    Found {
        primary: u64,
        secondary: Option<u64>,
    },
}

/// Scratch buffer the payload is copied into (in [`ScanScratch`]); the 8 bytes after the
/// payload must be the sentinel [`ScanBuf::seal`] writes.
#[repr(C, align(8))]
pub struct ScanBuf {
    pub bytes: [u8; SCRATCH_SIZE],
}

impl ScanBuf {
    pub const fn zeroed() -> Self {
        ScanBuf {
            bytes: [0; SCRATCH_SIZE],
        }
    }

    /// Writes the sentinel after a payload of `len` bytes (`len <= SCAN_MAX`) copied to
    /// the start of the buffer: `\n\n` and six zeros.
    #[inline(always)]
    pub fn seal(&mut self, len: usize) {
        let i = len & IDX_MASK;
        // SAFETY: i <= IDX_MASK and the buffer has 64 bytes more than IDX_MASK + 1.
        unsafe { write_word(self.bytes.as_mut_ptr().add(i), SENTINEL) }
    }

    /// Copies (at most [`SCAN_MAX`] bytes of) a payload in and seals it; returns the length
    /// to scan. For the host; the XDP program copies with `bpf_xdp_load_bytes`.
    pub fn fill(&mut self, payload: &[u8]) -> usize {
        let len = payload.len().min(SCAN_MAX);
        self.bytes[..len].copy_from_slice(&payload[..len]);
        self.seal(len);
        len
    }

    /// The four little-endian words at bytes `p..p + 32` (`p` masked).
    #[inline(always)]
    pub fn words4(&self, p: usize) -> [u64; 4] {
        let i = p & IDX_MASK;
        // SAFETY: i <= IDX_MASK and the buffer has 64 bytes more than IDX_MASK + 1.
        unsafe {
            let b = self.bytes.as_ptr().add(i);
            [
                read_word(b),
                read_word(b.add(8)),
                read_word(b.add(16)),
                read_word(b.add(24)),
            ]
        }
    }

    /// The little-endian word at byte `p` (masked).
    #[inline(always)]
    pub fn word(&self, p: usize) -> u64 {
        let i = p & IDX_MASK;
        // SAFETY: i <= IDX_MASK and the buffer has 64 bytes more than IDX_MASK + 1.
        unsafe { read_word(self.bytes.as_ptr().add(i)) }
    }
}

/// 8-byte load at any alignment. The BPF JIT (x86-64, arm64) does unaligned loads, but
/// LLVM's BPF backend splits an `align 1` load (`read_unaligned`) into 8 byte loads and
/// shifts, so the BPF build states alignment 8, as parse.rs does for headers (checked:
/// the XDP build gives the same results as the host build on the probe's payloads, whose
/// line starts fall at every alignment).
#[inline(always)]
unsafe fn read_word(p: *const u8) -> u64 {
    #[cfg(target_arch = "bpf")]
    {
        unsafe { u64::from_le(*(p as *const u64)) }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        unsafe { u64::from_le(core::ptr::read_unaligned(p as *const u64)) }
    }
}

#[inline(always)]
unsafe fn write_word(p: *mut u8, v: u64) {
    #[cfg(target_arch = "bpf")]
    {
        unsafe { *(p as *mut u64) = v }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        unsafe { core::ptr::write_unaligned(p as *mut u64, v) }
    }
}

mod scanner;
mod words;

pub use scanner::*;
pub use words::token_hash;
use words::*;

#[cfg(test)]
mod tests;

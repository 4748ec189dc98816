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

// --- Word-at-a-time byte tests -------------------------------------------------------

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

#[inline(always)]
const fn rep(b: u8) -> u64 {
    ONES.wrapping_mul(b as u64)
}

/// High bit of each byte that is zero. Bytes above the lowest flagged one may be flagged
/// falsely (borrow), the lowest flagged byte is always right: only use it.
#[inline(always)]
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// [`eq_bytes`]`(w, LF)` before the final `& HIGHS` (so that four words share one).
#[inline(always)]
fn lf_raw(w: u64) -> u64 {
    let x = w ^ LF;
    x.wrapping_sub(ONES) & !x
}

/// High bit of each byte equal to `b`; lowest one exact (see [`zero_bytes`]).
#[inline(always)]
fn eq_bytes(w: u64, b: u64) -> u64 {
    zero_bytes(w ^ b)
}

/// High bit of each byte below `n` (`n <= 0x80`); lowest one exact.
#[inline(always)]
fn lt_bytes(w: u64, n: u64) -> u64 {
    w.wrapping_sub(n) & !w & HIGHS
}

/// Index (0..8) of the lowest flagged byte of a non-zero mask of high bits. BPF has no
/// count-trailing-zeros: isolate the lowest bit and multiply (a de Bruijn-like table
/// packed into one constant).
#[inline(always)]
fn first_byte(m: u64) -> usize {
    let low = (m & m.wrapping_neg()) >> 7;
    (low.wrapping_mul(0x0001_0203_0405_0607) >> 56) as usize
}

/// Mask of the low `n` bytes (`n` >= 8: all).
#[inline(always)]
const fn low_bytes(n: usize) -> u64 {
    if n >= 8 {
        u64::MAX
    } else {
        (1u64 << (n * 8)) - 1
    }
}

const LF: u64 = rep(b'\n');
const C60: u64 = rep(0x60);
/// What [`ScanBuf::seal`] writes after the payload.
const SENTINEL: u64 = 0x0a0a;
const CR_LF: u64 = 0x0a0d;
const COOKIE: u64 = u64::from_le_bytes(*b"cookie:\0");
const COOKIE_FOLD: u64 = 0x0000_2020_2020_2020;

// --- The hash -----------------------------------------------------------------------

const HASH_SEED: u64 = 0x243f_6a88_85a3_08d3;
const HASH_MUL: u64 = 0x9e37_79b9_7f4a_7c15;

#[inline(always)]
fn hash_start(len: usize) -> u64 {
    HASH_SEED ^ (len as u64).wrapping_mul(HASH_MUL)
}

#[inline(always)]
fn hash_word(h: u64, w: u64) -> u64 {
    let h = (h ^ w).wrapping_mul(HASH_MUL);
    h ^ (h >> 29)
}

/// splitmix64's finaliser.
#[inline(always)]
fn hash_finish(mut h: u64) -> u64 {
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Hash of a server token, as the data plane computes it: the bytes as little-endian
/// 8-byte words (the last one zero-padded), seeded with the length. The control plane
/// stores `token_hash(token) -> backend`. Defined for any length; the data plane only
/// produces hashes of tokens of 1..=[`MAX_TOKEN_LEN`] bytes.
pub fn token_hash(token: &[u8]) -> u64 {
    let mut h = hash_start(token.len());
    for chunk in token.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        h = hash_word(h, u64::from_le_bytes(w));
    }
    hash_finish(h)
}

/// [`token_hash`] of `len` (1..=MAX_TOKEN_LEN) bytes at `off` in the buffer.
#[inline(always)]
fn token_hash_at(buf: &ScanBuf, off: usize, len: usize) -> u64 {
    let mut h = hash_start(len);
    for k in 0..MAX_TOKEN_LEN / 8 {
        if 8 * k >= len {
            break;
        }
        let w = buf.word(off + 8 * k) & low_bytes(len - 8 * k);
        h = hash_word(h, w);
    }
    hash_finish(h)
}

// --- The scanner --------------------------------------------------------------------

/// Scanner states (`Scanner::state`).
mod st {
    /// Check the method at byte 0.
    pub const METHOD: u32 = 0;
    /// Skip to the next line start and look at it.
    pub const LINES: u32 = 1;
    /// In a Cookie header: at the start of a cookie (spaces, tabs, `;` skipped first).
    pub const PAIR: u32 = 2;
    /// In a Cookie header: in a cookie that is not ours (to `;` or the line end).
    pub const SKIP: u32 = 3;
    /// In the value of our cookie: find the end of the current segment.
    pub const VALUE: u32 = 4;
    /// Finished; `Scanner::done` says why.
    pub const DONE: u32 = 5;
}

/// `Scanner::done` codes.
mod why {
    pub const NOT_HTTP: u32 = 1;
    /// The payload ended first (possibly inside our cookie's value).
    pub const CUT: u32 = 2;
    /// Empty line: end of the head without our cookie.
    pub const HEAD_END: u32 = 3;
    /// Our cookie's value was read up to its end or past the needed segments.
    pub const VALUE: u32 = 4;
}

/// The scan state. Plain data (`#[repr(C)]`, 4-byte fields, no padding).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scanner {
    /// Next byte to look at (at most `len`).
    pub pos: u32,
    /// Payload bytes in the buffer.
    pub len: u32,
    pub state: u32,
    /// Why the scan ended (`why::*`), once `state` is DONE.
    pub done: u32,
    /// A `Cookie` header line was seen.
    pub saw_header: u32,
    /// Segment number (1-based) being read in our cookie's value; 0 before.
    pub seg: u32,
    /// Where that segment starts.
    pub seg_start: u32,
    pub primary_off: u32,
    /// Length of the primary token; `u32::MAX` until it is known.
    pub primary_len: u32,
    pub secondary_off: u32,
    /// Length of the secondary token; `u32::MAX` until it is known.
    pub secondary_len: u32,
    pub _pad: u32,
}

impl Scanner {
    /// A scanner for a payload of `len` bytes at the start of a sealed [`ScanBuf`]
    /// (clamped to [`SCAN_MAX`]).
    #[inline(always)]
    pub fn new(len: usize) -> Self {
        Scanner {
            pos: 0,
            len: len.min(SCAN_MAX) as u32,
            state: st::METHOD,
            done: 0,
            saw_header: 0,
            seg: 0,
            seg_start: 0,
            primary_off: 0,
            primary_len: u32::MAX,
            secondary_off: 0,
            secondary_len: u32::MAX,
            _pad: 0,
        }
    }

    #[inline(always)]
    pub fn is_done(&self) -> bool {
        self.state == st::DONE
    }

    #[inline(always)]
    fn finish(&mut self, why: u32) -> bool {
        self.state = st::DONE;
        self.done = why;
        false
    }

    /// One step; returns false once the scan is finished (then see [`Scanner::outcome`]).
    /// Every step moves `pos` forward or finishes, except the one that meets the end of a
    /// Cookie header line (the next one does).
    ///
    /// Reads rely on the sealed buffer (see [`ScanBuf::seal`]): the sentinel `\n` at `len`
    /// ends every search for a line end, a cookie end or a value end, so the loops need no
    /// length check; positions never pass `len`, so no read reaches past the sentinel
    /// word.
    #[inline(always)]
    pub fn step(&mut self, buf: &ScanBuf, cfg: &CookieConfig) -> bool {
        let len = (self.len as usize).min(SCAN_MAX);
        let p = (self.pos as usize) & IDX_MASK;
        // A volatile read: in the XDP program the verifier then sees an unknown state at
        // every step (not the constant the previous step stored), so the steps of one
        // callback do not multiply the states it explores.
        // SAFETY: a read of a field of self.
        match unsafe { core::ptr::read_volatile(&self.state) } {
            st::LINES => self.lines(buf, p, len),
            st::PAIR => self.cookies(buf, cfg, p, false),
            st::SKIP => self.cookies(buf, cfg, p, true),
            st::VALUE => self.value(buf, cfg, p, len),
            st::METHOD => self.method(buf, len),
            _ => false,
        }
    }

    /// Method token: 3 to 15 bytes `A`-`Z`, then a space.
    #[inline(always)]
    fn method(&mut self, buf: &ScanBuf, len: usize) -> bool {
        let lo = not_upper(buf.word(0));
        let hi = not_upper(buf.word(8));
        let t = if lo != 0 {
            first_byte(lo)
        } else if hi != 0 {
            8 + first_byte(hi)
        } else {
            return self.finish(why::NOT_HTTP);
        };
        if t >= len {
            // Only capitals before the sentinel.
            return self.finish(why::CUT);
        }
        if t < 3 || (buf.word(t) & 0xff) != b' ' as u64 {
            return self.finish(why::NOT_HTTP);
        }
        self.pos = t as u32;
        self.state = st::LINES;
        true
    }

    /// Skips to the next line start that matters: 32 bytes at a time while they hold no
    /// control byte (so no `\n`); in a block that does, every `\n` in turn, looking at the
    /// first byte after it: only `c`/`C` (then `cookie:`), `\r` and `\n` (then the end of
    /// the head) need a closer look. Up to `LINE_BURST` blocks.
    #[inline(always)]
    fn lines(&mut self, buf: &ScanBuf, mut p: usize, len: usize) -> bool {
        for _ in 0..LINE_BURST {
            let [w0, w1, w2, w3] = buf.words4(p);
            // High bit of a byte set iff bit 5 or 6 of it is: clear only for control
            // bytes (and 0x80..=0x9f), which header text hardly has but for line ends.
            let t =
                ((w0 & C60) + C60) & ((w1 & C60) + C60) & ((w2 & C60) + C60) & ((w3 & C60) + C60);
            if t & HIGHS == HIGHS {
                p = (p + 32) & IDX_MASK;
                continue;
            }
            for k in 0..4 {
                let wp = p + 8 * k;
                // Every `\n` is flagged, and a few other bytes above one (borrow): the
                // flagged byte is checked again below.
                let mut m = lf_raw(buf.word(wp)) & HIGHS;
                for _ in 0..8 {
                    if m == 0 {
                        break;
                    }
                    let i = (wp + first_byte(m)) & IDX_MASK;
                    m &= m - 1;
                    let l = buf.word(i);
                    if l & 0xff != b'\n' as u64 {
                        continue;
                    }
                    // The first 7 bytes of the line after the `\n` at i. The sentinel `\n`
                    // at len comes before any stale byte of the buffer.
                    let h = l >> 8;
                    let b = h & 0xff;
                    if b | 0x20 == b'c' as u64 {
                        if h | COOKIE_FOLD == COOKIE {
                            self.saw_header = 1;
                            self.pos = (i + 8) as u32;
                            self.state = st::PAIR;
                            return true;
                        }
                    } else if b == b'\n' as u64 || h & 0xffff == CR_LF {
                        // An empty line ends the head, unless its `\n` is the sentinel.
                        let end = i + 1 + (b != b'\n' as u64) as usize;
                        return self.finish(if end < len { why::HEAD_END } else { why::CUT });
                    }
                }
            }
            p = (p + 32) & IDX_MASK;
        }
        self.pos = p as u32;
        true
    }

    /// In a Cookie header: at the start of a cookie (`skipping` false: skip spaces, tabs
    /// and empty cookies, then compare the name) or in a cookie that is not ours
    /// (`skipping`: to the next `;` or the end of the line). Up to `COOKIE_BURST` bytes
    /// skipped, words searched or names compared.
    #[inline(always)]
    fn cookies(&mut self, buf: &ScanBuf, cfg: &CookieConfig, mut p: usize, skip: bool) -> bool {
        let mut skipping = skip;
        for _ in 0..COOKIE_BURST {
            if skipping {
                let w = buf.word(p);
                let m = eq_bytes(w, rep(b';')) | eq_bytes(w, LF);
                if m == 0 {
                    p = (p + 8) & IDX_MASK;
                    continue;
                }
                let i = (p + first_byte(m)) & IDX_MASK;
                if buf.word(i) & 0xff == b';' as u64 {
                    p = (i + 1) & IDX_MASK;
                    skipping = false;
                    continue;
                }
                // End of the header line (or the sentinel).
                self.pos = i as u32;
                self.state = st::LINES;
                return true;
            }
            let b = buf.word(p) & 0xff;
            if b == b' ' as u64 || b == b'\t' as u64 || b == b';' as u64 {
                p = (p + 1) & IDX_MASK;
                continue;
            }
            if b == b'\n' as u64 {
                self.pos = p as u32;
                self.state = st::LINES;
                return true;
            }
            // A name cut by the end of the payload meets the sentinel `\n`: no match.
            let [w0, w1, w2, w3] = buf.words4(p);
            let (n, k) = (&cfg.name, &cfg.name_mask);
            let diff = ((w0 ^ n[0]) & k[0])
                | ((w1 ^ n[1]) & k[1])
                | ((w2 ^ n[2]) & k[2])
                | ((w3 ^ n[3]) & k[3]);
            if diff == 0 {
                let mut v = p + (cfg.name_len as usize).min(32);
                if buf.word(v) & 0xff == b'"' as u64 {
                    v += 1;
                }
                self.pos = v as u32;
                self.seg = 1;
                self.seg_start = v as u32;
                self.state = st::VALUE;
                return true;
            }
            skipping = true;
        }
        self.pos = p as u32;
        self.state = if skipping { st::SKIP } else { st::PAIR };
        true
    }

    /// In our cookie's value: find the end of the current segment (delimiter, or the end
    /// of the value), note the segment if it is a wanted one.
    #[inline(always)]
    fn value(&mut self, buf: &ScanBuf, cfg: &CookieConfig, mut p: usize, len: usize) -> bool {
        let delim = rep(cfg.delimiter);
        for _ in 0..VALUE_BURST {
            let w = buf.word(p);
            let m = lt_bytes(w, rep(0x21))
                | eq_bytes(w, rep(b';'))
                | eq_bytes(w, rep(b'"'))
                | eq_bytes(w, delim);
            if m == 0 {
                p = (p + 8) & IDX_MASK;
                continue;
            }
            let i = p + first_byte(m);
            if i >= len {
                // The sentinel: the segment is cut.
                return self.finish(why::CUT);
            }
            let start = self.seg_start as usize;
            let seg_len = (i - start.min(i)) as u32;
            if self.seg == cfg.primary as u32 {
                self.primary_off = start as u32;
                self.primary_len = seg_len;
            }
            if self.seg == cfg.secondary as u32 {
                self.secondary_off = start as u32;
                self.secondary_len = seg_len;
            }
            if buf.word(i) & 0xff != cfg.delimiter as u64 {
                return self.finish(why::VALUE);
            }
            self.seg += 1;
            if self.seg > cfg.primary as u32 && self.seg > cfg.secondary as u32 {
                return self.finish(why::VALUE);
            }
            p = (i + 1) & IDX_MASK;
            self.seg_start = p as u32;
        }
        self.pos = p as u32;
        true
    }

    /// The result, once [`Scanner::step`] has returned false. (Before that, or if the
    /// step budget ran out: `HeaderIncomplete`.)
    #[inline(always)]
    pub fn outcome(&self, buf: &ScanBuf) -> CookieOutcome {
        match self.done {
            why::NOT_HTTP => CookieOutcome::NotHttp,
            why::HEAD_END if self.saw_header != 0 => CookieOutcome::CookieNameAbsent,
            why::HEAD_END => CookieOutcome::NoCookieHeader,
            why::VALUE | why::CUT if self.seg != 0 => {
                let plen = self.primary_len as usize;
                if plen == u32::MAX as usize {
                    // Cut before the primary token ended; after the value ended it is
                    // simply not there.
                    return if self.done == why::CUT {
                        CookieOutcome::HeaderIncomplete
                    } else {
                        CookieOutcome::SegmentMissing
                    };
                }
                if plen == 0 || plen > MAX_TOKEN_LEN {
                    return CookieOutcome::SegmentMissing;
                }
                let primary = token_hash_at(buf, self.primary_off as usize, plen);
                let slen = self.secondary_len as usize;
                let secondary = if slen != 0 && slen <= MAX_TOKEN_LEN {
                    Some(token_hash_at(buf, self.secondary_off as usize, slen))
                } else {
                    None
                };
                CookieOutcome::Found { primary, secondary }
            }
            _ => CookieOutcome::HeaderIncomplete,
        }
    }
}

/// Words or line starts one LINES step looks at.
const LINE_BURST: usize = 16;
/// Bytes, words or names one PAIR/SKIP step looks at.
const COOKIE_BURST: usize = 32;
/// Words or segments one VALUE step looks at.
const VALUE_BURST: usize = 4;

/// High bit of each byte that is not `A`-`Z`, exact for every byte.
#[inline(always)]
fn not_upper(w: u64) -> u64 {
    let x = w & !HIGHS;
    let ge_a = x.wrapping_add(rep(0x80 - b'A'));
    let gt_z = x.wrapping_add(rep(0x80 - b'Z' - 1));
    let upper = ge_a & !gt_z & !w & HIGHS;
    !upper & HIGHS
}

/// Everything a scan needs, in one place: the XDP program keeps one per CPU as the value
/// of a one-entry per-CPU array and drives it from a `bpf_loop` callback, which looks the
/// value up itself. State in a map value matters for the verifier: it does not track map
/// memory, so every callback run starts from unknown values and the callback is verified
/// once; state on the caller's stack (the callback context) is tracked precisely and
/// the verification of the loop does not converge.
#[repr(C)]
pub struct ScanScratch {
    pub scanner: Scanner,
    pub cfg: CookieConfig,
    pub buf: ScanBuf,
}

impl ScanScratch {
    /// Starts a scan of the `len` payload bytes copied to the start of `buf`: seals the
    /// buffer and runs the first step (the method check: no loop, cheap to verify inline,
    /// and one `bpf_loop` iteration less). Returns false if that already finished the scan
    /// (`NotHttp`, or a payload cut inside the method): then there is no need to loop.
    #[inline(always)]
    pub fn start(&mut self, len: usize, cfg: &CookieConfig) -> bool {
        let len = len.min(SCAN_MAX);
        self.buf.seal(len);
        let mut scanner = Scanner::new(len);
        let more = scanner.method(&self.buf, len);
        // Volatile: a plain struct store becomes a call to a `memset` subprogram in BPF.
        // SAFETY: a write to a field of self.
        unsafe { core::ptr::write_volatile(&mut self.scanner, scanner) };
        self.cfg = *cfg;
        more
    }

    /// Runs up to [`STEP_BURST`] steps; false once the scan is finished (the body of the
    /// `bpf_loop` callback: return 1 to stop the loop when this is false).
    #[inline(always)]
    pub fn burst(&mut self) -> bool {
        for _ in 0..STEP_BURST {
            if !self.scanner.step(&self.buf, &self.cfg) {
                return false;
            }
        }
        true
    }

    /// The outcome (`HeaderIncomplete` if the scan was not run to its end).
    #[inline(always)]
    pub fn outcome(&self) -> CookieOutcome {
        self.scanner.outcome(&self.buf)
    }
}

/// `bpf_loop` iterations that finish any scan ([`MAX_STEPS`] in bursts).
pub const MAX_BURSTS: u32 = (MAX_STEPS / STEP_BURST + 1) as u32;

/// Scans a sealed buffer holding a payload of `len` bytes to the end, as the XDP program
/// does (the same steps, the same budget).
pub fn scan(buf: &ScanBuf, len: usize, cfg: &CookieConfig) -> CookieOutcome {
    let mut s = Scanner::new(len);
    for _ in 0..MAX_STEPS {
        if !s.step(buf, cfg) {
            break;
        }
    }
    s.outcome(buf)
}

/// Copies a payload into a fresh buffer and scans it. For the host (the buffer is 4 KiB
/// on the stack).
pub fn scan_payload(payload: &[u8], cfg: &CookieConfig) -> CookieOutcome {
    let mut buf = ScanBuf::zeroed();
    let len = buf.fill(payload);
    scan(&buf, len, cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::{
        format,
        string::{String, ToString},
        vec,
        vec::Vec,
    };

    use CookieOutcome::*;

    fn h(token: &str) -> u64 {
        token_hash(token.as_bytes())
    }

    fn found(primary: &str, secondary: Option<&str>) -> CookieOutcome {
        Found {
            primary: h(primary),
            secondary: secondary.map(h),
        }
    }

    /// Scans with the scanner, checking on the way that it never needs its step budget.
    fn scan_with(payload: &[u8], cfg: &CookieConfig) -> CookieOutcome {
        let mut buf = ScanBuf::zeroed();
        // Stale bytes after the payload must not matter (the per-CPU buffer keeps the
        // previous packet): fill the whole buffer with event bytes first.
        for (i, b) in buf.bytes.iter_mut().enumerate() {
            *b = b"\n;=!\"\r\nCookie: JSESSIONID=a!b!c\r\n\r\n"[i % 33];
        }
        let len = buf.fill(payload);
        let mut s = Scanner::new(len);
        let mut steps = 0;
        while s.step(&buf, cfg) {
            steps += 1;
            assert!(steps < MAX_STEPS, "step budget exhausted");
        }
        let out = s.outcome(&buf);
        assert_eq!(out, scan(&buf, len, cfg));
        // The way the XDP program drives it: copy (no seal), start, bursts.
        let mut sc = ScanScratch {
            scanner: Scanner::new(0),
            cfg: CookieConfig::DEFAULT,
            buf: ScanBuf { bytes: buf.bytes },
        };
        sc.buf.bytes[..len].copy_from_slice(&payload[..len]);
        if sc.start(len, cfg) {
            let mut iterations = 0;
            while sc.burst() {
                iterations += 1;
                assert!(iterations < MAX_BURSTS, "bpf_loop budget exhausted");
            }
        }
        assert_eq!(sc.outcome(), out);
        out
    }

    fn run(payload: &str) -> CookieOutcome {
        scan_with(payload.as_bytes(), &CookieConfig::default())
    }

    fn req(headers: &[&str]) -> String {
        let mut s = String::from("GET /app/index.jsp HTTP/1.1\r\n");
        for h in headers {
            s.push_str(h);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        s
    }

    const HOST: &str = "Host: shop.example.com";
    const UA: &str = "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101";
    const ACCEPT: &str = "Accept: text/html,application/xhtml+xml;q=0.9,*/*;q=0.8";

    #[test]
    fn default_cookie_found() {
        let r = req(&[HOST, "Cookie: JSESSIONID=abc123!srv1!srv2", UA]);
        assert_eq!(run(&r), found("srv1", Some("srv2")));
    }

    #[test]
    fn header_name_any_case() {
        for name in ["Cookie", "cookie", "COOKIE", "CoOkIe"] {
            let r = req(&[HOST, &format!("{name}: JSESSIONID=s!p!q")]);
            assert_eq!(run(&r), found("p", Some("q")), "{name}");
        }
    }

    #[test]
    fn header_position_first_middle_last_and_only() {
        let c = "Cookie: JSESSIONID=s!p!q";
        for headers in [
            &[c, HOST, UA, ACCEPT][..],
            &[HOST, UA, c, ACCEPT][..],
            &[HOST, UA, ACCEPT, c][..],
            &[c][..],
        ] {
            assert_eq!(run(&req(headers)), found("p", Some("q")), "{headers:?}");
        }
    }

    #[test]
    fn whitespace_after_colon_and_around_semicolons() {
        for c in [
            "Cookie:JSESSIONID=s!p!q",
            "Cookie:   JSESSIONID=s!p!q",
            "Cookie:\tJSESSIONID=s!p!q",
            "Cookie: \t JSESSIONID=s!p!q",
            "Cookie: a=1;JSESSIONID=s!p!q",
            "Cookie: a=1;  JSESSIONID=s!p!q",
            "Cookie: a=1 ;\tJSESSIONID=s!p!q ; b=2",
            "Cookie: ;; a=1;;; JSESSIONID=s!p!q;;",
            "Cookie: JSESSIONID=s!p!q   ",
        ] {
            assert_eq!(run(&req(&[HOST, c])), found("p", Some("q")), "{c}");
        }
    }

    #[test]
    fn cookie_among_others_at_any_position() {
        for c in [
            "Cookie: JSESSIONID=s!p!q; theme=dark; lang=en",
            "Cookie: theme=dark; JSESSIONID=s!p!q; lang=en",
            "Cookie: theme=dark; lang=en; JSESSIONID=s!p!q",
            "Cookie: _ga=GA1.2.3333.4444; _gid=GA1.2.55.66; JSESSIONID=s!p!q",
        ] {
            assert_eq!(run(&req(&[HOST, c])), found("p", Some("q")), "{c}");
        }
    }

    #[test]
    fn similar_names_do_not_match() {
        for c in [
            "Cookie: XJSESSIONID=s!p!q",
            "Cookie: JSESSIONIDX=s!p!q",
            "Cookie: jsessionid=s!p!q",
            "Cookie: JSESSIONID =s!p!q",
            "Cookie: JSESSION=s!p!q",
            "Cookie: a=JSESSIONID=s!p!q",
            "Cookie: a=b JSESSIONID=s!p!q",
        ] {
            assert_eq!(run(&req(&[HOST, c])), CookieNameAbsent, "{c}");
        }
        // The near misses come first, the real one last.
        let c = "Cookie: XJSESSIONID=x!bad1; JSESSIONIDX=x!bad2; jsessionid=x!bad3; JSESSIONID=s!p";
        assert_eq!(run(&req(&[c])), found("p", None));
    }

    #[test]
    fn several_cookie_headers_first_match_wins() {
        let r = req(&[
            "Cookie: a=1",
            HOST,
            "Cookie: JSESSIONID=s!first!x",
            "Cookie: JSESSIONID=s!second!y",
        ]);
        assert_eq!(run(&r), found("first", Some("x")));
        // The first occurrence decides even when it has no primary token.
        let r = req(&["Cookie: JSESSIONID=onlysession", "Cookie: JSESSIONID=s!p!q"]);
        assert_eq!(run(&r), SegmentMissing);
        let r = req(&["Cookie: JSESSIONID=s!a; JSESSIONID=s!b"]);
        assert_eq!(run(&r), found("a", None));
    }

    #[test]
    fn quoted_values() {
        assert_eq!(
            run(&req(&["Cookie: JSESSIONID=\"s!p!q\"; a=b"])),
            found("p", Some("q"))
        );
        assert_eq!(run(&req(&["Cookie: JSESSIONID=\"s!p\""])), found("p", None));
        assert_eq!(run(&req(&["Cookie: JSESSIONID=\"\""])), SegmentMissing);
    }

    #[test]
    fn segments() {
        let cases: &[(&str, CookieOutcome)] = &[
            ("s!p!q", found("p", Some("q"))),
            ("s!p!q!r!t", found("p", Some("q"))),
            ("s!p", found("p", None)),
            ("s!p!", found("p", None)),
            ("s!!q", SegmentMissing),
            ("!p!q", found("p", Some("q"))),
            ("s", SegmentMissing),
            ("", SegmentMissing),
            ("s!", SegmentMissing),
            ("!!", SegmentMissing),
        ];
        for (v, want) in cases {
            let r = req(&[&format!("Cookie: JSESSIONID={v}; z=1")]);
            assert_eq!(run(&r), *want, "{v}");
            let r = req(&[&format!("Cookie: JSESSIONID={v}")]);
            assert_eq!(run(&r), *want, "{v} at line end");
        }
    }

    #[test]
    fn token_length_limit() {
        let ok = "p".repeat(MAX_TOKEN_LEN);
        let long = "p".repeat(MAX_TOKEN_LEN + 1);
        let r = req(&[&format!("Cookie: JSESSIONID=s!{ok}!{long}")]);
        assert_eq!(run(&r), found(&ok, None));
        let r = req(&[&format!("Cookie: JSESSIONID=s!{long}!q")]);
        assert_eq!(run(&r), SegmentMissing);
        // Every length and alignment hashes like token_hash.
        for n in 1..=MAX_TOKEN_LEN {
            for pad in 0..8 {
                let tok: String = (0..n).map(|i| (b'a' + (i % 26) as u8) as char).collect();
                let r = req(&[&format!(
                    "Cookie: {}JSESSIONID=s!{tok}!x",
                    "a; ".repeat(pad)
                )]);
                assert_eq!(run(&r), found(&tok, Some("x")), "{n} {pad}");
            }
        }
    }

    #[test]
    fn custom_configuration() {
        let cfg = CookieConfig::new(b"SERVERID", b'.', 1, 0).unwrap();
        let r = req(&["Cookie: JSESSIONID=s!p!q; SERVERID=web3.x.y"]);
        assert_eq!(scan_with(r.as_bytes(), &cfg), found("web3", None));
        let cfg = CookieConfig::new(b"route", b':', 3, 1).unwrap();
        let r = req(&["Cookie: route=a:b:c:d"]);
        assert_eq!(scan_with(r.as_bytes(), &cfg), found("c", Some("a")));
        // A name of the maximum length.
        let name = "N".repeat(MAX_NAME_LEN);
        let cfg = CookieConfig::new(name.as_bytes(), b'!', 2, 3).unwrap();
        let r = req(&[&format!("Cookie: {name}X=s!no; {name}=s!p!q")]);
        assert_eq!(scan_with(r.as_bytes(), &cfg), found("p", Some("q")));
        assert_eq!(
            CookieConfig::default().name_bytes().0[..11],
            b"JSESSIONID="[..]
        );
        assert_eq!(CookieConfig::default().name_bytes().1, 10);
    }

    #[test]
    fn default_configuration() {
        let d = CookieConfig::default();
        assert_eq!(d, CookieConfig::new(b"JSESSIONID", b'!', 2, 3).unwrap());
        assert_eq!(d.name_len, 11);
        assert_eq!(d.name_mask, [u64::MAX, 0xff_ffff, 0, 0]);
    }

    #[test]
    fn configuration_is_validated() {
        use CookieConfigError::*;
        assert_eq!(CookieConfig::new(b"", b'!', 2, 3), Err(BadName));
        assert_eq!(CookieConfig::new(&[b'a'; 32], b'!', 2, 3), Err(BadName));
        assert_eq!(CookieConfig::new(b"a b", b'!', 2, 3), Err(BadName));
        assert_eq!(CookieConfig::new(b"a=b", b'!', 2, 3), Err(BadName));
        assert_eq!(CookieConfig::new(b"a;", b'!', 2, 3), Err(BadName));
        assert_eq!(CookieConfig::new(b"a", b';', 2, 3), Err(BadDelimiter));
        assert_eq!(CookieConfig::new(b"a", b'"', 2, 3), Err(BadDelimiter));
        assert_eq!(CookieConfig::new(b"a", b' ', 2, 3), Err(BadDelimiter));
        assert_eq!(CookieConfig::new(b"a", 0x80, 2, 3), Err(BadDelimiter));
        assert_eq!(CookieConfig::new(b"a", b'!', 0, 3), Err(BadSegments));
        assert_eq!(CookieConfig::new(b"a", b'!', 2, 2), Err(BadSegments));
        assert!(CookieConfig::new(b"a", b'!', 2, 0).is_ok());
    }

    #[test]
    fn no_cookie_header_vs_name_absent() {
        assert_eq!(run(&req(&[HOST, UA])), NoCookieHeader);
        assert_eq!(run("GET / HTTP/1.1\r\n\r\n"), NoCookieHeader);
        assert_eq!(run(&req(&[HOST, "Cookie: a=1; b=2"])), CookieNameAbsent);
        assert_eq!(run(&req(&[HOST, "Cookie:"])), CookieNameAbsent);
        assert_eq!(run(&req(&["Set-Cookie: JSESSIONID=s!p!q"])), NoCookieHeader);
        assert_eq!(run(&req(&["X-Cookie: JSESSIONID=s!p!q"])), NoCookieHeader);
        assert_eq!(run(&req(&["Cookie2: JSESSIONID=s!p!q"])), NoCookieHeader);
        assert_eq!(run(&req(&["Cookie : JSESSIONID=s!p!q"])), NoCookieHeader);
        assert_eq!(run(&req(&[" Cookie: JSESSIONID=s!p!q"])), NoCookieHeader);
    }

    #[test]
    fn bare_lf_line_endings() {
        let r = "GET / HTTP/1.1\nHost: h\nCookie: a=1; JSESSIONID=s!p!q\nAccept: */*\n\n";
        assert_eq!(run(r), found("p", Some("q")));
        let r = "GET / HTTP/1.1\nHost: h\nCookie: a=1; JSESSIONID=s!p\n\n";
        assert_eq!(run(r), found("p", None));
        assert_eq!(run("GET / HTTP/1.1\nHost: h\n\n"), NoCookieHeader);
        // Mixed endings, and \n\r\n as the end of the head.
        let r = "GET / HTTP/1.1\r\nHost: h\nCookie: JSESSIONID=s!p!q\r\n\n";
        assert_eq!(run(r), found("p", Some("q")));
        assert_eq!(run("GET / HTTP/1.1\nHost: h\n\r\n"), NoCookieHeader);
    }

    #[test]
    fn nothing_after_the_head_counts() {
        let r = "POST /login HTTP/1.1\r\nHost: h\r\nContent-Length: 40\r\n\r\nCookie: JSESSIONID=s!p!q\r\n\r\n";
        assert_eq!(run(r), NoCookieHeader);
        let r = "GET / HTTP/1.1\r\nCookie: a=1\r\n\r\n\r\nCookie: JSESSIONID=s!p!q\r\n\r\n";
        assert_eq!(run(r), CookieNameAbsent);
        let r = "GET / HTTP/1.1\n\nCookie: JSESSIONID=s!p!q\r\n\r\n";
        assert_eq!(run(r), NoCookieHeader);
    }

    #[test]
    fn request_line_does_not_count() {
        let r = "GET /a?JSESSIONID=s!p!q HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_eq!(run(r), NoCookieHeader);
        let r = "GET /a;jsessionid=s!p!q?x=Cookie:JSESSIONID=s!p!q HTTP/1.1\r\n\r\n";
        assert_eq!(run(r), NoCookieHeader);
        let r = "GET /a?JSESSIONID=s!bad!q HTTP/1.1\r\nCookie: JSESSIONID=s!p!q\r\n\r\n";
        assert_eq!(run(r), found("p", Some("q")));
    }

    #[test]
    fn methods_and_non_http() {
        for m in [
            "GET", "PUT", "POST", "HEAD", "PATCH", "DELETE", "OPTIONS", "CONNECT", "PROPFIND",
        ] {
            let r = format!("{m} / HTTP/1.1\r\nCookie: JSESSIONID=s!p!q\r\n\r\n");
            assert_eq!(run(&r), found("p", Some("q")), "{m}");
        }
        // TLS 1.2/1.3 ClientHello: handshake record, version 3.1, then a length.
        let hello = [
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x5f, 0x2a, 0x11,
            0x00, 0x20, 0x43, 0x6f, 0x6f, 0x6b, 0x69, 0x65, 0x3a, 0x0a,
        ];
        let cfg = CookieConfig::default();
        assert_eq!(scan_with(&hello, &cfg), NotHttp);
        for r in [
            "SSH-2.0-OpenSSH_9.2\r\n",
            "get / HTTP/1.1\r\n\r\n",
            "GE / HTTP/1.1\r\n\r\n",
            "GET/ HTTP/1.1\r\n\r\n",
            " GET / HTTP/1.1\r\n\r\n",
            "\r\nGET / HTTP/1.1\r\n\r\n",
            "ABCDEFGHIJKLMNOP / HTTP/1.1\r\n\r\n",
            "GET\t/ HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(run(r), NotHttp, "{r:?}");
        }
        // Cut inside the method: could still be one.
        for r in ["", "G", "GE", "GET", "POS", "ABCDEFGHIJKLMNO"] {
            assert_eq!(run(r), HeaderIncomplete, "{r:?}");
        }
        assert_eq!(run("GET "), HeaderIncomplete);
    }

    #[test]
    fn truncated_at_every_offset() {
        let full = req(&[
            HOST,
            UA,
            "Cookie: a=1; JSESSIONID=sess!prim!sec; b=2",
            ACCEPT,
        ]);
        let v = full.find("JSESSIONID=").unwrap() + "JSESSIONID=".len();
        let prim_end = v + "sess!prim".len(); // index of the '!' after the primary
        let sec_end = prim_end + "!sec".len(); // index of the ';' after the secondary
        for cut in 0..=full.len() {
            let got = run(&full[..cut]);
            let want = if cut <= prim_end {
                HeaderIncomplete
            } else if cut <= sec_end {
                found("prim", None)
            } else {
                found("prim", Some("sec"))
            };
            assert_eq!(got, want, "cut at {cut}: {:?}", &full[..cut]);
        }
        // Without the cookie: incomplete until the empty line is complete.
        let full = req(&[HOST, UA, "Cookie: a=1; b=2", ACCEPT]);
        for cut in 0..=full.len() {
            let want = if cut == full.len() {
                CookieNameAbsent
            } else {
                HeaderIncomplete
            };
            assert_eq!(run(&full[..cut]), want, "cut at {cut}");
        }
        let full = "GET / HTTP/1.1\nHost: h\n\n";
        for cut in 0..=full.len() {
            let want = if cut == full.len() {
                NoCookieHeader
            } else {
                HeaderIncomplete
            };
            assert_eq!(run(&full[..cut]), want, "cut at {cut}");
        }
    }

    /// A 1,400-byte head (as in the performance target), with the cookie header at the
    /// start, in the middle or at the end, and the cookie first or last in a long header.
    fn big_request(cookie_at: usize, cookie_last_in_header: bool) -> String {
        let filler: Vec<String> = (0..40)
            .map(|i| format!("X-Filler-{i:02}: {}", "v".repeat(20 + (i * 7) % 13)))
            .collect();
        let others = "_ga=GA1.2.1234567890.1234567890; _gid=GA1.2.987654321.987654321; theme=dark; lang=en-US; consent=yes";
        let cookie = if cookie_last_in_header {
            format!("Cookie: {others}; JSESSIONID=0123456789ABCDEF0123456789ABCDEF!web07!web12")
        } else {
            format!("Cookie: JSESSIONID=0123456789ABCDEF0123456789ABCDEF!web07!web12; {others}")
        };
        let mut headers: Vec<&str> = vec![HOST, UA, ACCEPT];
        headers.extend(filler.iter().map(|s| s.as_str()));
        let mut r;
        loop {
            let mut hs = headers.clone();
            let at = cookie_at.min(hs.len());
            hs.insert(at, &cookie);
            r = req(&hs);
            if r.len() <= 1400 {
                break;
            }
            headers.pop();
        }
        let pad_at = r.find("X-Filler-00: ").unwrap() + 13;
        while r.len() < 1400 {
            r.insert(pad_at, 'x');
        }
        r
    }

    #[test]
    fn long_heads() {
        for at in [0, 20, 1000] {
            for last in [false, true] {
                let r = big_request(at, last);
                assert_eq!(r.len(), 1400);
                assert_eq!(run(&r), found("web07", Some("web12")), "{at} {last}");
            }
        }
        // A head longer than SCAN_MAX with the cookie beyond it.
        let mut r = String::from("GET / HTTP/1.1\r\n");
        while r.len() < SCAN_MAX + 10 {
            r.push_str("X-Pad: 0123456789012345678901234567890123456789\r\n");
        }
        r.push_str("Cookie: JSESSIONID=s!p!q\r\n\r\n");
        assert_eq!(run(&r), HeaderIncomplete);
    }

    #[test]
    fn adversarial_inputs_stay_within_the_step_budget() {
        let cfg = CookieConfig::new(b"a", b'!', 2, 3).unwrap();
        let mut worst = String::from("GET / HTTP/1.1\r\nCookie: ");
        while worst.len() < SCAN_MAX {
            worst.push_str("b;");
        }
        scan_with(worst.as_bytes(), &cfg);
        let mut lines = String::from("GET / HTTP/1.1\n");
        while lines.len() < SCAN_MAX {
            lines.push_str("c\n");
        }
        scan_with(lines.as_bytes(), &cfg);
        let mut segs = String::from("GET / HTTP/1.1\nCookie: a=");
        while segs.len() < SCAN_MAX {
            segs.push('!');
        }
        scan_with(
            segs.as_bytes(),
            &CookieConfig::new(b"a", b'!', 200, 0).unwrap(),
        );
        for fill in [" ", "\t", ";", "; ", "\r", "\n", "!", "\""] {
            let mut s = String::from("GET / HTTP/1.1\r\nCookie:");
            while s.len() < SCAN_MAX + 8 {
                s.push_str(fill);
            }
            scan_with(s.as_bytes(), &cfg);
        }
    }

    #[test]
    fn word_helpers() {
        for i in 0..8 {
            let m = 0x80u64 << (8 * i);
            assert_eq!(first_byte(m), i);
            assert_eq!(first_byte(m | 0x8000_0000_0000_0000), i);
        }
        for b in 0..=255u8 {
            let w = u64::from_le_bytes([b, b'A', b, b'Z', b, b'a', b, b'@']);
            let m = not_upper(w);
            for (i, &x) in w.to_le_bytes().iter().enumerate() {
                let flagged = m & (0x80 << (8 * i)) != 0;
                assert_eq!(flagged, !x.is_ascii_uppercase(), "byte {x:#x} at {i}");
            }
        }
        assert_eq!(low_bytes(0), 0);
        assert_eq!(low_bytes(3), 0xff_ffff);
        assert_eq!(low_bytes(8), u64::MAX);
    }

    #[test]
    fn token_hash_is_stable_and_length_sensitive() {
        assert_ne!(token_hash(b"a"), token_hash(b"a\0"));
        assert_ne!(token_hash(b"web1"), token_hash(b"web2"));
        assert_ne!(token_hash(b""), token_hash(b"\0"));
        // Pinned: a change of the function must be deliberate (the control plane and the
        // data plane must compute the same value).
        assert_eq!(token_hash(b"web07"), 3284791120021216139);
        assert_eq!(token_hash(b"0123456789abcdef0123"), 8848376260410615622);
    }

    // --- Reference parser and property test ------------------------------------------

    /// A straightforward implementation of the documented rules with slices and
    /// iterators, to compare the scanner against.
    fn reference(payload: &[u8], cfg: &CookieConfig) -> CookieOutcome {
        let data = &payload[..payload.len().min(SCAN_MAX)];
        let (name_buf, name_len) = cfg.name_bytes();
        let name = &name_buf[..name_len];
        match data.iter().take(16).position(|b| !b.is_ascii_uppercase()) {
            None if data.len() < 16 => return HeaderIncomplete,
            None => return NotHttp,
            Some(t) if t < 3 || data[t] != b' ' => return NotHttp,
            Some(_) => {}
        }
        let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
        let mut saw_header = false;
        for (idx, line) in lines.iter().enumerate().skip(1) {
            let line_terminated = idx + 1 < lines.len();
            if line_terminated && (line.is_empty() || *line == b"\r") {
                return if saw_header {
                    CookieNameAbsent
                } else {
                    NoCookieHeader
                };
            }
            if line.len() < 7 || !line[..7].eq_ignore_ascii_case(b"cookie:") {
                continue;
            }
            saw_header = true;
            let pieces: Vec<&[u8]> = line[7..].split(|&b| b == b';').collect();
            for (pi, piece) in pieces.iter().enumerate() {
                let piece_terminated = line_terminated || pi + 1 < pieces.len();
                let start = piece
                    .iter()
                    .position(|&b| b != b' ' && b != b'\t')
                    .unwrap_or(piece.len());
                let piece = &piece[start..];
                let Some(rest) = piece.strip_prefix(name).and_then(|r| r.strip_prefix(b"=")) else {
                    continue;
                };
                let rest = rest.strip_prefix(b"\"").unwrap_or(rest);
                let end = rest
                    .iter()
                    .position(|&b| b == b';' || b == b'"' || b <= 0x20);
                let known_end = end.is_some() || piece_terminated;
                let value = &rest[..end.unwrap_or(rest.len())];
                let segs: Vec<&[u8]> = value.split(|&b| b == cfg.delimiter).collect();
                // Some(Some(token)), Some(None): not there, None: cut.
                let seg = |n: usize| -> Option<Option<&[u8]>> {
                    if n == 0 {
                        Some(None)
                    } else if n < segs.len() || (n == segs.len() && known_end) {
                        Some(Some(segs[n - 1]))
                    } else if known_end {
                        Some(None)
                    } else {
                        None
                    }
                };
                let ok = |t: &[u8]| !t.is_empty() && t.len() <= MAX_TOKEN_LEN;
                return match seg(cfg.primary as usize) {
                    None => HeaderIncomplete,
                    Some(Some(p)) if ok(p) => Found {
                        primary: token_hash(p),
                        secondary: match seg(cfg.secondary as usize) {
                            Some(Some(s)) if ok(s) => Some(token_hash(s)),
                            _ => None,
                        },
                    },
                    Some(_) => SegmentMissing,
                };
            }
        }
        HeaderIncomplete
    }

    fn pick(choices: &'static [&'static str]) -> impl Strategy<Value = &'static str> {
        proptest::sample::select(choices)
    }

    /// What a generated request is built for: the cookie name and delimiter of the
    /// configuration, so that matches are frequent.
    #[derive(Clone, Debug)]
    struct Target {
        name: String,
        delim: char,
    }

    impl Target {
        fn of(cfg: &CookieConfig) -> Self {
            let (bytes, len) = cfg.name_bytes();
            Target {
                name: String::from_utf8(bytes[..len].to_vec()).unwrap(),
                delim: cfg.delimiter as char,
            }
        }
    }

    /// A cookie value made of segments (the configured delimiter mostly, other bytes that
    /// end or split values now and then).
    fn value(t: &Target) -> impl Strategy<Value = String> {
        let d = t.delim.to_string();
        (
            proptest::collection::vec(
                pick(&["", "a", "web1", "s3ss10n", "x.y", "0123456789abcdef0123456789abcdef", "~"]),
                0..6,
            ),
            prop_oneof![6 => Just(d), 1 => pick(&["!", ".", ":", " ", "\""]).prop_map(String::from)],
            prop::bool::weighted(0.15),
        )
            .prop_map(|(segs, d, quoted)| {
                let v = segs.join(&d);
                if quoted {
                    format!("\"{v}\"")
                } else {
                    v
                }
            })
    }

    fn cookie_pair(t: &Target) -> impl Strategy<Value = String> {
        let n = t.name.clone();
        (
            prop_oneof![
                5 => Just(n.clone()),
                1 => Just(format!("X{n}")),
                1 => Just(format!("{n}X")),
                1 => Just(n.to_lowercase()),
                1 => Just(n[..n.len() - 1].to_string()),
                1 => pick(&["JSESSIONID", "route", "a", "theme", ""]).prop_map(String::from),
            ],
            prop_oneof![8 => Just("="), 1 => Just(""), 1 => Just(" ="), 1 => Just("==")],
            value(t),
        )
            .prop_map(|(n, eq, v)| format!("{n}{eq}{v}"))
    }

    fn cookie_header(t: &Target) -> impl Strategy<Value = String> {
        (
            prop_oneof![
                6 => pick(&["Cookie", "cookie", "COOKIE"]),
                1 => pick(&["Cookie2", "Set-Cookie", " Cookie", "Cookie ", "Cook"]),
            ],
            pick(&["", " ", "  ", "\t"]),
            proptest::collection::vec(
                (
                    cookie_pair(t),
                    pick(&[";", "; ", "; ", " ;", ";\t", ";;", " ; ", "; \r", ";\n"]),
                ),
                0..5,
            ),
        )
            .prop_map(|(n, ws, pairs)| {
                let mut s = format!("{n}:{ws}");
                for (i, (p, sep)) in pairs.iter().enumerate() {
                    if i > 0 {
                        s.push_str(sep);
                    }
                    s.push_str(p);
                }
                s
            })
    }

    fn header_line(t: &Target) -> impl Strategy<Value = String> {
        prop_oneof![
            3 => cookie_header(t),
            2 => pick(&[
                HOST,
                UA,
                ACCEPT,
                "Connection: keep-alive",
                "Cache-Control: no-cache",
                "X-Q: JSESSIONID=s!no!no",
                "Content-Length: 0",
                "\tcontinued: x",
            ])
            .prop_map(String::from),
            1 => "[ -~]{0,60}".prop_map(String::from),
        ]
    }

    fn request_for(t: &Target) -> impl Strategy<Value = Vec<u8>> {
        (
            prop_oneof![
                8 => pick(&["GET", "POST", "OPTIONS", "PROPFIND"]),
                1 => pick(&["get", "G", "\u{16}\u{3}\u{1}", "GETGETGETGETGETGET"]),
            ],
            pick(&[" /", " /", " /a?JSESSIONID=s!q!r", " /x;jsessionid=s!q"]),
            proptest::collection::vec(header_line(t), 0..8),
            pick(&["\r\n", "\r\n", "\n"]),
            prop::bool::weighted(0.8),
            pick(&["", "Cookie: JSESSIONID=s!body!x\r\n\r\n"]),
            any::<prop::sample::Index>(),
            prop::bool::weighted(0.3),
        )
            .prop_map(|(m, target, lines, eol, end, body, cut, do_cut)| {
                let mut s = format!("{m}{target} HTTP/1.1{eol}");
                for l in &lines {
                    s.push_str(l);
                    s.push_str(eol);
                }
                if end {
                    s.push_str(eol);
                    s.push_str(body);
                }
                let mut b = s.into_bytes();
                if do_cut {
                    b.truncate(cut.index(b.len() + 1));
                }
                b
            })
    }

    fn config() -> impl Strategy<Value = CookieConfig> {
        (
            pick(&["JSESSIONID", "route", "ab", "SERVERID"]),
            pick(&["!", ".", ":", "~"]),
            1u8..5,
            0u8..5,
        )
            .prop_filter_map("valid", |(n, d, p, s)| {
                CookieConfig::new(n.as_bytes(), d.as_bytes()[0], p, s).ok()
            })
    }

    /// A configuration and a request made for it.
    fn case() -> impl Strategy<Value = (Vec<u8>, CookieConfig)> {
        config().prop_flat_map(|cfg| (request_for(&Target::of(&cfg)), Just(cfg)))
    }

    /// The generator must reach every outcome often enough for the comparison to mean
    /// something.
    #[test]
    fn generator_covers_every_outcome() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let strategy = case();
        let mut counts = [0usize; 7];
        let n = 4000;
        for _ in 0..n {
            let (req, cfg) = strategy.new_tree(&mut runner).unwrap().current();
            let i = match reference(&req, &cfg) {
                NotHttp => 0,
                NoCookieHeader => 1,
                CookieNameAbsent => 2,
                SegmentMissing => 3,
                HeaderIncomplete => 4,
                Found {
                    secondary: None, ..
                } => 5,
                Found {
                    secondary: Some(_), ..
                } => 6,
            };
            counts[i] += 1;
        }
        for c in counts {
            assert!(c * 40 > n, "an outcome is rare: {counts:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

        #[test]
        fn matches_reference_parser((req, cfg) in case()) {
            prop_assert_eq!(scan_with(&req, &cfg), reference(&req, &cfg),
                "request {:?}", String::from_utf8_lossy(&req));
        }

        #[test]
        fn matches_reference_parser_default_config(
            req in request_for(&Target::of(&CookieConfig::default())),
        ) {
            let cfg = CookieConfig::default();
            prop_assert_eq!(scan_with(&req, &cfg), reference(&req, &cfg),
                "request {:?}", String::from_utf8_lossy(&req));
        }

        #[test]
        fn arbitrary_bytes_match_reference(tail in proptest::collection::vec(
            prop_oneof![any::<u8>(), pick(&["\n", "\r", ";", "!", "\"", " ", "c"]).prop_map(|s| s.as_bytes()[0])],
            0..300), cookie in prop::bool::ANY) {
            let mut req = b"GET / HTTP/1.1\r\n".to_vec();
            if cookie {
                req.extend_from_slice(b"Cookie: JSESSIONID=");
            }
            req.extend_from_slice(&tail);
            let cfg = CookieConfig::default();
            prop_assert_eq!(scan_with(&req, &cfg), reference(&req, &cfg),
                "request {:?}", String::from_utf8_lossy(&req));
        }
    }
}

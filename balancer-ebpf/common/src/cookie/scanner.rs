//! The scanner: a state machine over byte positions of a [`ScanBuf`], run one
//! [`Scanner::step`] at a time (from a `bpf_loop` callback in the XDP program).

use super::{words::*, *};

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

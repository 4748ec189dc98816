//! TCP options: reading them out of a segment, the options of the SYN-ACK and SYN the
//! balancer builds, and their translation across a splice (docs/delayed-binding.md, "TCP
//! options across the splice").
//!
//! A segment's options are copied into an [`OptionBytes`] buffer on the stack (word by
//! word, each read bounds-checked against the frame), walked and edited there with
//! indices masked to the buffer, and the changed words are written back. The walk never
//! reads the packet, so option soup (zero or oversized lengths, options running past the
//! header, duplicates) can at worst end the walk early: [`Walk::complete`] says whether
//! it reached the end of the option area, and a splice that must translate options drops
//! a segment it cannot walk rather than forward it half-translated.

use crate::{
    csum::fold,
    parse::{ptr_at, ptr_at_mut, read, write},
};

pub const OPT_EOL: u8 = 0;
pub const OPT_NOP: u8 = 1;
pub const OPT_MSS: u8 = 2;
pub const OPT_WSCALE: u8 = 3;
pub const OPT_SACK_PERM: u8 = 4;
pub const OPT_SACK: u8 = 5;
pub const OPT_TIMESTAMP: u8 = 8;

/// Most option bytes a TCP header can carry (data offset 15).
pub const MAX_OPTION_BYTES: usize = 40;
/// Options a walk looks at before giving up (a NOP counts as one). Linux, Windows,
/// macOS and the BSDs send at most 8 in any segment (a SYN: MSS, SACK-permitted,
/// timestamps, NOP, window scale; an ACK: NOP, NOP, timestamps, NOP, NOP, SACK). The
/// limit keeps verification cheap: the verifier walks every path through the steps.
pub const MAX_OPTION_STEPS: usize = 8;
/// Largest window-scale shift (RFC 7323 2.3: larger values are taken as 14).
pub const MAX_WSCALE: u8 = 14;
/// The window scale the balancer's SYN-ACK offers a client that offered one: the backend's
/// own scale is learnt only later, from its SYN-ACK, and windows are rescaled from it to
/// this one ([`rescale_window`]). 7 is what Linux offers with its default buffers, so a
/// Linux backend needs no rescaling.
pub const OFFERED_WSCALE: u8 = 7;

/// Words of the option buffer: a power of two above the 10 words of [`MAX_OPTION_BYTES`]
/// and an option's fields read past them, so that every index (`& WORD_MASK`) is in
/// bounds for the verifier, and reads past the option area read zeros.
const BUF_WORDS: usize = 16;
const WORD_MASK: usize = BUF_WORDS - 1;
const TCP_HDR_LEN: usize = 20;

/// `x` through a volatile stack slot: LLVM knows nothing about the result.
#[inline(always)]
fn opaque(x: usize) -> usize {
    // SAFETY: reading a live local.
    unsafe { core::ptr::read_volatile(&x) }
}

/// A segment's option bytes, copied out of the frame: `len` bytes (a multiple of 4, at
/// most [`MAX_OPTION_BYTES`]), zeros after. Kept as words, in memory order: a byte array
/// would be zeroed and copied with `memset`/`memcpy` calls, byte loops the verifier
/// walks one byte at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionBytes {
    words: [u32; BUF_WORDS],
    pub len: usize,
}

impl OptionBytes {
    /// Options given as bytes (host code and tests); at most [`MAX_OPTION_BYTES`] are
    /// taken, rounded down to whole words.
    pub fn from_slice(bytes: &[u8]) -> OptionBytes {
        let mut o = OptionBytes {
            words: [0; BUF_WORDS],
            len: 0,
        };
        let n = bytes.len().min(MAX_OPTION_BYTES) & !3;
        for (i, w) in bytes[..n].chunks_exact(4).enumerate() {
            o.words[i] = u32::from_ne_bytes([w[0], w[1], w[2], w[3]]);
        }
        o.len = n;
        o
    }

    /// The option area as bytes (host code and tests).
    pub fn to_bytes(&self) -> [u8; MAX_OPTION_BYTES] {
        let mut b = [0u8; MAX_OPTION_BYTES];
        for (i, chunk) in b.chunks_exact_mut(4).enumerate() {
            chunk.copy_from_slice(&self.words[i].to_ne_bytes());
        }
        b
    }

    /// The options of the TCP header at `tcp_off` in `[start, end)` that has `opt_len`
    /// option bytes (a multiple of 4, at most 40), if they are all inside the frame (else
    /// none: `len` 0).
    ///
    /// One bounds check of the whole area, of a size fixed per case: a loop of word reads
    /// lets LLVM hoist `end - start` out of it, which the verifier refuses (no arithmetic
    /// on the end pointer). Each case reads the bounds through a volatile slot, so that
    /// LLVM can neither merge the cases' checks nor turn them into a jump table.
    #[inline(always)]
    pub fn load(start: usize, end: usize, tcp_off: usize, opt_len: usize) -> OptionBytes {
        let mut o = OptionBytes {
            words: [0; BUF_WORDS],
            len: 0,
        };
        o.load_into(start, end, tcp_off, opt_len);
        o
    }

    /// [`OptionBytes::load`] into `self` (e.g. a map value: a struct this size returned
    /// by value would be copied with a `memcpy` call).
    #[inline(always)]
    pub fn load_into(&mut self, start: usize, end: usize, tcp_off: usize, opt_len: usize) {
        for i in 0..BUF_WORDS {
            self.words[i] = 0;
        }
        self.len = 0;
        let at = tcp_off + TCP_HDR_LEN;
        macro_rules! load_sizes {
            ($($n:literal)*) => {
                $(if opt_len == $n * 4 {
                    if let Some(p) = ptr_at::<[u32; $n]>(opaque(start), opaque(end), at) {
                        // SAFETY: bounds-checked by ptr_at.
                        let words = unsafe { read(p) };
                        for i in 0..$n {
                            self.words[i] = words[i];
                        }
                        self.len = $n * 4;
                    }
                    return;
                })*
            };
        }
        load_sizes!(1 2 3 4 5 6 7 8 9 10);
    }

    /// Writes the options back over the TCP header at `tcp_off` (the same header they
    /// were loaded from).
    #[inline(always)]
    pub fn store(&self, start: usize, end: usize, tcp_off: usize) -> Option<()> {
        let at = tcp_off + TCP_HDR_LEN;
        macro_rules! store_sizes {
            ($($n:literal)*) => {
                $(if self.len == $n * 4 {
                    let p = ptr_at_mut::<[u32; $n]>(opaque(start), opaque(end), at)?;
                    let mut words = [0u32; $n];
                    for i in 0..$n {
                        words[i] = self.words[i];
                    }
                    // SAFETY: bounds-checked by ptr_at_mut.
                    unsafe { write(p, words) };
                    return Some(());
                })*
            };
        }
        store_sizes!(1 2 3 4 5 6 7 8 9 10);
        Some(())
    }

    /// Byte `i` (masked into the buffer).
    #[inline(always)]
    pub fn byte(&self, i: usize) -> u8 {
        let w = self.words[(i >> 2) & WORD_MASK];
        (u32::from_le(w) >> (8 * (i & 3))) as u8
    }

    /// The two words holding bytes `i..i + 4`, as one little-endian number (byte `i`
    /// lowest), and the index of the first. Word arithmetic rather than byte by byte:
    /// fewer instructions for the verifier and fewer registers to spill.
    #[inline(always)]
    fn pair(&self, i: usize) -> (u64, usize) {
        let k = (i >> 2) & WORD_MASK;
        let lo = u32::from_le(self.words[k]) as u64;
        let hi = u32::from_le(self.words[(k + 1) & WORD_MASK]) as u64;
        ((hi << 32) | lo, k)
    }

    #[inline(always)]
    fn set_pair(&mut self, k: usize, v: u64) {
        self.words[k & WORD_MASK] = (v as u32).to_le();
        self.words[(k + 1) & WORD_MASK] = ((v >> 32) as u32).to_le();
    }

    /// The big-endian 32-bit field at byte `i`.
    #[inline(always)]
    fn be32(&self, i: usize) -> u32 {
        let (v, _) = self.pair(i);
        ((v >> (8 * (i & 3))) as u32).swap_bytes()
    }

    #[inline(always)]
    fn set_be32(&mut self, i: usize, value: u32) {
        let (v, k) = self.pair(i);
        let shift = 8 * (i & 3) as u32;
        let mask = 0xffff_ffffu64 << shift;
        let v = (v & !mask) | ((value.swap_bytes() as u64) << shift);
        self.set_pair(k, v);
    }

    /// Overwrites bytes `at..at + len` of the option area with NOPs.
    #[inline(always)]
    fn fill_nops(&mut self, at: usize, len: usize) {
        for k in 0..MAX_OPTION_BYTES / 4 {
            let first = (4 * k).max(at);
            let last = (4 * k + 4).min(at + len);
            if first < last {
                let width = 8 * (last - first) as u32;
                let mask = (((1u64 << width) - 1) << (8 * (first - 4 * k) as u32)) as u32;
                let w = u32::from_le(self.words[k]);
                self.words[k] = ((w & !mask) | (0x0101_0101 & mask)).to_le();
            }
        }
    }

    /// One's-complement sum of the option area's 16-bit words (memory order, as
    /// [`crate::csum`]): the checksum change of an edit is `!before + after`.
    #[inline(always)]
    fn sum(&self) -> u16 {
        let mut s = 0u32;
        for i in 0..MAX_OPTION_BYTES / 4 {
            let w = self.words[i];
            s += (w & 0xffff) + (w >> 16);
        }
        fold(s)
    }
}

/// What a walk over a segment's options found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Walk {
    pub mss: Option<u16>,
    /// The window-scale shift as sent (not clamped).
    pub wscale: Option<u8>,
    pub sack_ok: bool,
    /// Offset of the (first) timestamps option's kind byte.
    pub ts_at: Option<usize>,
    /// Offset and block count of the (first) SACK option.
    pub sack_at: Option<usize>,
    pub sack_blocks: usize,
    /// The walk reached the end of the option area (or an EOL) with every option
    /// well-formed and no timestamps or SACK option twice.
    pub complete: bool,
}

impl Walk {
    /// The timestamps option's `(TSval, TSecr)`.
    #[inline(always)]
    pub fn timestamps(&self, o: &OptionBytes) -> Option<(u32, u32)> {
        let at = self.ts_at?;
        Some((o.be32(at + 2), o.be32(at + 6)))
    }
}

/// Walks the options: the first [`MAX_OPTION_STEPS`] options, stopping at an EOL, at the
/// end of the area, or at the first malformed option (length below 2, running past the
/// area, or a known kind with the wrong length). The first MSS, window scale and
/// SACK-permitted count; a second timestamps or SACK option makes the walk incomplete
/// (receivers differ on which one they believe, so neither can be translated safely).
///
/// The steps are [`Walker::step`]; BPF programs run them in a `bpf_loop` callback (the
/// verifier checks a callback once, where it would walk every path through unrolled
/// steps), after trying [`quick_walk`].
#[inline(always)]
pub fn walk(o: &OptionBytes) -> Walk {
    if let Some(w) = quick_walk(o) {
        return w;
    }
    let mut s = Walker::default();
    for _ in 0..MAX_OPTION_STEPS {
        if !s.step(o) {
            break;
        }
    }
    s.finish(o)
}

/// The walk of the two layouts Linux, Windows and macOS send after the SYN, recognised
/// without walking: `NOP NOP TS` alone, or followed by `NOP NOP SACK` with 1 to 4 blocks
/// filling the rest of the area. `None` for anything else.
#[inline(always)]
pub fn quick_walk(o: &OptionBytes) -> Option<Walk> {
    let mut w = Walk::default();
    if quick_walk_into(o, &mut w) {
        Some(w)
    } else {
        None
    }
}

/// [`quick_walk`] into `w` (in place, e.g. in a map value); false, with `w` untouched,
/// for another layout.
#[inline(always)]
pub fn quick_walk_into(o: &OptionBytes, w: &mut Walk) -> bool {
    if o.words[0] != u32::from_ne_bytes([OPT_NOP, OPT_NOP, OPT_TIMESTAMP, 10]) {
        return false;
    }
    let fill = |w: &mut Walk, sack_at: Option<usize>, sack_blocks: usize| {
        w.mss = None;
        w.wscale = None;
        w.sack_ok = false;
        w.ts_at = Some(2);
        w.sack_at = sack_at;
        w.sack_blocks = sack_blocks;
        w.complete = true;
    };
    if o.len == 12 {
        fill(w, None, 0);
        return true;
    }
    let head = o.words[3].to_ne_bytes();
    let sack_len = head[3] as usize;
    let sack_ok = head[0] == OPT_NOP
        && head[1] == OPT_NOP
        && head[2] == OPT_SACK
        && (10..=34).contains(&sack_len)
        && (sack_len - 2).is_multiple_of(8)
        && o.len == 14 + sack_len;
    if !sack_ok {
        return false;
    }
    fill(w, Some(14), (sack_len - 2) / 8);
    true
}

/// The state of a walk between its steps.
#[derive(Clone, Copy, Debug, Default)]
pub struct Walker {
    w: Walk,
    off: usize,
    /// Reached the end of the area or an EOL.
    ended: bool,
    /// Stopped at a malformed or duplicated option.
    broken: bool,
}

impl Walker {
    /// One option of `o`; false when the walk is over.
    #[inline(always)]
    pub fn step(&mut self, o: &OptionBytes) -> bool {
        let len = if o.len > MAX_OPTION_BYTES {
            MAX_OPTION_BYTES
        } else {
            o.len
        };
        let off = self.off;
        if off >= len {
            self.ended = true;
            return false;
        }
        let kind = o.byte(off);
        if kind == OPT_EOL {
            self.ended = true;
            return false;
        }
        if kind == OPT_NOP {
            self.off = off + 1;
            return true;
        }
        let l = o.byte(off + 1) as usize;
        let fits = l >= 2
            && off + l <= len
            && match kind {
                OPT_MSS => l == 4,
                OPT_WSCALE => l == 3,
                OPT_SACK_PERM => l == 2,
                OPT_TIMESTAMP => l == 10,
                OPT_SACK => l >= 10 && (l - 2).is_multiple_of(8),
                _ => true,
            };
        let w = &mut self.w;
        let duplicate = (kind == OPT_TIMESTAMP && w.ts_at.is_some())
            || (kind == OPT_SACK && w.sack_at.is_some());
        if !fits || duplicate {
            self.broken = true;
            return false;
        }
        if kind == OPT_MSS && w.mss.is_none() {
            w.mss = Some(u16::from_be_bytes([o.byte(off + 2), o.byte(off + 3)]));
        } else if kind == OPT_WSCALE && w.wscale.is_none() {
            w.wscale = Some(o.byte(off + 2));
        } else if kind == OPT_SACK_PERM {
            w.sack_ok = true;
        } else if kind == OPT_TIMESTAMP {
            w.ts_at = Some(off);
        } else if kind == OPT_SACK {
            w.sack_at = Some(off);
            w.sack_blocks = (l - 2) / 8;
        }
        self.off = off + l;
        true
    }

    /// The walk, once the steps are over (or [`MAX_OPTION_STEPS`] have run).
    #[inline(always)]
    pub fn finish(self, o: &OptionBytes) -> Walk {
        let mut w = Walk::default();
        self.finish_into(o, &mut w);
        w
    }

    /// Starts over (in place, e.g. in a map value).
    #[inline(always)]
    pub fn reset(&mut self) {
        self.w.mss = None;
        self.w.wscale = None;
        self.w.sack_ok = false;
        self.w.ts_at = None;
        self.w.sack_at = None;
        self.w.sack_blocks = 0;
        self.w.complete = false;
        self.off = 0;
        self.ended = false;
        self.broken = false;
    }

    /// [`Walker::finish`] into `w` (in place).
    #[inline(always)]
    pub fn finish_into(&self, o: &OptionBytes, w: &mut Walk) {
        w.mss = self.w.mss;
        w.wscale = self.w.wscale;
        w.sack_ok = self.w.sack_ok;
        w.ts_at = self.w.ts_at;
        w.sack_at = self.w.sack_at;
        w.sack_blocks = self.w.sack_blocks;
        w.complete = !self.broken && (self.ended || self.off >= o.len);
    }
}

/// Bits of a spliced flow entry's translation (kept in [`crate::Flow::flags`]).
pub mod edit_flags {
    /// Timestamps shifted by the entry's offset: `TSval + offset` towards the client,
    /// `TSecr - offset` towards the backend.
    pub const TS_SHIFT: u8 = 16;
    /// Timestamps options overwritten with NOPs (towards a backend that refused them).
    pub const TS_STRIP: u8 = 32;
    /// SACK blocks shifted like the acknowledgement number (towards the backend).
    pub const SACK_SHIFT: u8 = 64;
    /// SACK options overwritten with NOPs (towards a backend that refused SACK).
    pub const SACK_STRIP: u8 = 128;
    /// Every bit that needs the options walked.
    pub const ANY: u8 = TS_SHIFT | TS_STRIP | SACK_SHIFT | SACK_STRIP;
}

/// The option edit of one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edit {
    /// [`edit_flags`] bits.
    pub flags: u8,
    /// The segment goes to the client (TSval shifted) rather than to the backend (TSecr).
    pub to_client: bool,
    pub ts_offset: u32,
    /// Taken off every SACK block edge (the splice's `K - B`).
    pub sack_delta: u32,
    /// Shift of the window field ([`rescale_window`]; 0 leaves it).
    pub win_shift: i8,
}

/// Applies `e` to the options: returns the checksum delta (for [`crate::csum::apply_delta`];
/// 0 when nothing changed), or `None`, with `o` untouched, when the options cannot be
/// walked to their end.
#[inline(always)]
pub fn apply(o: &mut OptionBytes, e: &Edit) -> Option<u32> {
    let w = walk(o);
    apply_walked(o, &w, e)
}

/// [`apply`] with the walk `w` of `o` already made.
#[inline(always)]
pub fn apply_walked(o: &mut OptionBytes, w: &Walk, e: &Edit) -> Option<u32> {
    if !w.complete {
        return None;
    }
    let before = o.sum();
    let mut changed = false;
    if let Some(at) = w.ts_at {
        if e.flags & edit_flags::TS_STRIP != 0 {
            o.fill_nops(at, 10);
            changed = true;
        } else if e.flags & edit_flags::TS_SHIFT != 0 {
            if e.to_client {
                o.set_be32(at + 2, o.be32(at + 2).wrapping_add(e.ts_offset));
            } else {
                o.set_be32(at + 6, o.be32(at + 6).wrapping_sub(e.ts_offset));
            }
            changed = true;
        }
    }
    if let Some(at) = w.sack_at {
        if e.flags & edit_flags::SACK_STRIP != 0 {
            o.fill_nops(at, 2 + 8 * w.sack_blocks.min(4));
            changed = true;
        } else if e.flags & edit_flags::SACK_SHIFT != 0 {
            for j in 0..8 {
                if j < 2 * w.sack_blocks {
                    let edge = at + 2 + 4 * j;
                    o.set_be32(edge, o.be32(edge).wrapping_sub(e.sack_delta));
                }
            }
            changed = true;
        }
    }
    if !changed {
        return Some(0);
    }
    Some((!before) as u32 + o.sum() as u32)
}

/// Translates the TCP header at `tcp_off` in `[start, end)`, which has `opt_len` option
/// bytes, for a splice: its options as `e` says (when `e.flags` asks for anything) and
/// its window by `e.win_shift` (when not 0). Returns the checksum delta to add to the TCP
/// checksum, or `None`, with the frame untouched, when the options would need an edit
/// but cannot be walked to their end (or the header is not in the frame).
#[inline(always)]
pub fn translate(
    start: usize,
    end: usize,
    tcp_off: usize,
    opt_len: usize,
    e: &Edit,
) -> Option<u32> {
    if let Some(d) = translate_quick(start, end, tcp_off, opt_len, e) {
        return Some(d);
    }
    translate_general(start, end, tcp_off, opt_len, e)
}

/// [`translate`] by the general walk, for any layout (the BPF programs run the same steps
/// over a scratch map value, in the XDP crate's `options.rs`).
#[inline(always)]
pub fn translate_general(
    start: usize,
    end: usize,
    tcp_off: usize,
    opt_len: usize,
    e: &Edit,
) -> Option<u32> {
    // The only check that can fail after the options changed is this one: made first.
    let win = ptr_at_mut::<u16>(start, end, tcp_off + 14)?;
    let mut delta = 0u32;
    if e.flags & edit_flags::ANY != 0 {
        let mut o = OptionBytes::load(start, end, tcp_off, opt_len);
        if o.len != opt_len {
            return None;
        }
        let w = walk(&o);
        let d = apply_walked(&mut o, &w, e)?;
        if d != 0 {
            // Writes the words `load` read: inside the frame.
            o.store(start, end, tcp_off)?;
            delta += d;
        }
    }
    // SAFETY: bounds-checked by ptr_at_mut above.
    delta += unsafe { rescale_window_at(win, e.win_shift) };
    Some(delta)
}

/// [`translate`] for the layouts real stacks send after the SYN ([`quick_walk`]'s:
/// `NOP NOP TS`, alone or followed by `NOP NOP SACK` filling the area) and shifts only:
/// every field it changes is a whole, aligned word, read and written in place, so the
/// forwarding path pays a few instructions rather than the general walk. `None`, with the
/// frame untouched, for anything else (the caller falls back to the general path).
// One macro arm per size: the 12-byte one has no SACK words (an empty range).
#[allow(clippy::reversed_empty_ranges)]
#[inline(always)]
pub fn translate_quick(
    start: usize,
    end: usize,
    tcp_off: usize,
    opt_len: usize,
    e: &Edit,
) -> Option<u32> {
    if e.flags & (edit_flags::TS_STRIP | edit_flags::SACK_STRIP) != 0 {
        return None;
    }
    let win = ptr_at_mut::<u16>(start, end, tcp_off + 14)?;
    let at = tcp_off + TCP_HDR_LEN;
    let ts_head = u32::from_ne_bytes([OPT_NOP, OPT_NOP, OPT_TIMESTAMP, 10]);
    let mut delta = 0u32;
    // Words 1 and 2 are TSval and TSecr; from word 4 on, SACK edges.
    let shift = |w: &mut u32, by: u32, delta: &mut u32| {
        let new = u32::from_be(*w).wrapping_add(by).to_be();
        *delta += crate::csum::u32_delta(*w, new);
        *w = new;
    };
    macro_rules! quick_sizes {
        ($($n:literal)*) => {
            $(if opt_len == $n * 4 {
                let p = ptr_at_mut::<[u32; $n]>(opaque(start), opaque(end), at)?;
                // SAFETY: bounds-checked by ptr_at_mut.
                let mut w = unsafe { read(p) };
                if w[0] != ts_head {
                    return None;
                }
                if $n > 3 {
                    let sack = w[3 % $n].to_ne_bytes();
                    if sack[0] != OPT_NOP
                        || sack[1] != OPT_NOP
                        || sack[2] != OPT_SACK
                        || sack[3] as usize != $n * 4 - 14
                    {
                        return None;
                    }
                }
                if e.flags & edit_flags::TS_SHIFT != 0 {
                    if e.to_client {
                        shift(&mut w[1], e.ts_offset, &mut delta);
                    } else {
                        shift(&mut w[2], e.ts_offset.wrapping_neg(), &mut delta);
                    }
                }
                if e.flags & edit_flags::SACK_SHIFT != 0 {
                    for i in 4..$n {
                        shift(&mut w[i], e.sack_delta.wrapping_neg(), &mut delta);
                    }
                }
                // SAFETY: as above.
                unsafe { write(p, w) };
                // SAFETY: bounds-checked by ptr_at_mut above.
                delta += unsafe { rescale_window_at(win, e.win_shift) };
                return Some(delta);
            })*
        };
    }
    // 12 bytes: timestamps alone; 24, 32, 40: and one to three SACK blocks.
    quick_sizes!(3 6 8 10);
    None
}

/// Rescales the TCP window field at `win` by `shift` ([`rescale_window`]; 0 leaves it)
/// and returns the checksum delta.
///
/// # Safety
/// `win` must point at the window field of a TCP header inside the frame (bounds-checked).
#[inline(always)]
pub unsafe fn rescale_window_at(win: *mut u16, shift: i8) -> u32 {
    if shift == 0 {
        return 0;
    }
    // SAFETY: the caller's contract.
    unsafe {
        let old = read(win);
        let new = rescale_window(u16::from_be(old), shift).to_be();
        write(win, new);
        crate::csum::word_delta(old, new)
    }
}

/// A window of one scale in another: `(window << from) >> to` as `window << shift` for
/// `shift = from - to`, rounded down (the receiver never sees more window than the
/// sender offered) and capped at 65535.
#[inline(always)]
pub fn rescale_window(window: u16, shift: i8) -> u16 {
    if shift >= 0 {
        let w = (window as u32) << (shift as u32 & 15);
        if w > 0xffff {
            0xffff
        } else {
            w as u16
        }
    } else {
        window >> ((-(shift as i32)) as u32 & 15)
    }
}

/// The client's SYN options that the syncookie handshake must remember: window scale
/// (clamped to [`MAX_WSCALE`]), SACK permitted, timestamps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientOptions {
    pub wscale: Option<u8>,
    pub sack_ok: bool,
    pub timestamps: bool,
}

/// Window-scale value of [`ClientOptions::bits`] meaning "no window scaling".
const NO_WSCALE: u8 = 15;
/// Bits [`ClientOptions::bits`] uses: window scale (4) and SACK permitted (1).
pub const CLIENT_OPTION_BITS: u32 = 5;
const TS_BIT: u8 = 1 << 5;

impl ClientOptions {
    /// The options of a SYN's walk.
    #[inline(always)]
    pub fn of_syn(w: &Walk) -> ClientOptions {
        ClientOptions {
            wscale: match w.wscale {
                Some(s) if s > MAX_WSCALE => Some(MAX_WSCALE),
                s => s,
            },
            sack_ok: w.sack_ok,
            timestamps: w.ts_at.is_some(),
        }
    }

    /// Window scale and SACK permitted in [`CLIENT_OPTION_BITS`] bits (what the cookie or
    /// the SYN-ACK's TSval carries; timestamps are told by the layout).
    #[inline(always)]
    pub fn bits(&self) -> u32 {
        let ws = match self.wscale {
            Some(s) => s,
            None => NO_WSCALE,
        };
        (ws as u32 & 15) | ((self.sack_ok as u32) << 4)
    }

    /// The options of [`ClientOptions::bits`]; a window scale above 14 (only a forged
    /// value can carry one) is clamped.
    #[inline(always)]
    pub fn from_bits(bits: u32, timestamps: bool) -> ClientOptions {
        let ws = (bits & 15) as u8;
        ClientOptions {
            wscale: if ws == NO_WSCALE {
                None
            } else if ws > MAX_WSCALE {
                Some(MAX_WSCALE)
            } else {
                Some(ws)
            },
            sack_ok: bits & 16 != 0,
            timestamps,
        }
    }

    /// One byte for a map value: [`ClientOptions::bits`] and a timestamps bit.
    #[inline(always)]
    pub fn to_byte(&self) -> u8 {
        self.bits() as u8 | if self.timestamps { TS_BIT } else { 0 }
    }

    #[inline(always)]
    pub fn from_byte(b: u8) -> ClientOptions {
        ClientOptions::from_bits(b as u32, b & TS_BIT != 0)
    }
}

/// The TSval of the syncookie SYN-ACK: the clock with its low [`CLIENT_OPTION_BITS`]
/// bits replaced by the client's options (as Linux does). The client echoes it in the
/// TSecr of its handshake ACK and first segment.
#[inline(always)]
pub fn synack_tsval(clock: u32, client: &ClientOptions) -> u32 {
    (clock & !((1 << CLIENT_OPTION_BITS) - 1)) | client.bits()
}

/// What a SYN or SYN-ACK built by the balancer offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynOffer {
    pub mss: u16,
    pub wscale: Option<u8>,
    pub sack_ok: bool,
    /// `(TSval, TSecr)`.
    pub timestamps: Option<(u32, u32)>,
}

impl SynOffer {
    /// Only an MSS option.
    pub const fn mss_only(mss: u16) -> SynOffer {
        SynOffer {
            mss,
            wscale: None,
            sack_ok: false,
            timestamps: None,
        }
    }

    /// The option words, in memory order, and how many there are (1 to 5), laid out as
    /// Linux lays out its SYN-ACK: MSS; SACK-permitted and timestamps (NOP-padded when
    /// only one of them is there); NOP and window scale.
    #[inline(always)]
    pub fn words(&self) -> ([u32; 5], usize) {
        let w = |b: [u8; 4]| u32::from_ne_bytes(b);
        let m = self.mss.to_be_bytes();
        let mss = w([OPT_MSS, 4, m[0], m[1]]);
        let ws = self.wscale.map(|s| {
            w([
                OPT_NOP,
                OPT_WSCALE,
                3,
                if s > MAX_WSCALE { MAX_WSCALE } else { s },
            ])
        });
        let ws_word = ws.unwrap_or(0);
        let n_ws = ws.is_some() as usize;
        match self.timestamps {
            Some((val, ecr)) => {
                let head = if self.sack_ok {
                    w([OPT_SACK_PERM, 2, OPT_TIMESTAMP, 10])
                } else {
                    w([OPT_NOP, OPT_NOP, OPT_TIMESTAMP, 10])
                };
                let val = w(val.to_be_bytes());
                let ecr = w(ecr.to_be_bytes());
                ([mss, head, val, ecr, ws_word], 4 + n_ws)
            }
            None if self.sack_ok => (
                [mss, w([OPT_NOP, OPT_NOP, OPT_SACK_PERM, 2]), ws_word, 0, 0],
                2 + n_ws,
            ),
            None => ([mss, ws_word, 0, 0, 0], 1 + n_ws),
        }
    }
}

/// How a splice translates each direction, from the client's options and the backend's
/// SYN-ACK (see the module documentation of the data plane's binding).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpliceOptions {
    /// [`edit_flags`] of the client -> backend entry.
    pub to_backend_flags: u8,
    /// Window shift of client -> backend segments (non-zero only when the client scales
    /// and the backend refused scaling: the backend reads windows unscaled).
    pub to_backend_shift: i8,
    /// [`edit_flags`] of the backend -> client entry.
    pub to_client_flags: u8,
    /// Window shift of backend -> client segments: from the backend's scale to
    /// [`OFFERED_WSCALE`].
    pub to_client_shift: i8,
    /// `T0 - B0`: the SYN-ACK TSval the client saw minus the backend's.
    pub ts_offset: u32,
}

impl SpliceOptions {
    /// The edit of the client's kept first segment (`seq_delta`: the splice's `K - B`),
    /// as the client -> backend entry will edit every later one.
    #[inline(always)]
    pub fn to_backend(&self, seq_delta: u32) -> Edit {
        Edit {
            flags: self.to_backend_flags,
            to_client: false,
            ts_offset: self.ts_offset,
            sack_delta: seq_delta,
            win_shift: self.to_backend_shift,
        }
    }

    /// `client`: what the client offered (and the balancer's SYN-ACK mirrored);
    /// `synack_tsval`: the TSval of that SYN-ACK (the client's first segment echoes it);
    /// `backend`: the walk of the backend's SYN-ACK options.
    #[inline(always)]
    pub fn negotiate(
        client: &ClientOptions,
        synack_tsval: u32,
        backend: &Walk,
        backend_opts: &OptionBytes,
    ) -> SpliceOptions {
        let mut s = SpliceOptions::default();
        if let Some(c) = client.wscale {
            match backend.wscale {
                Some(b) => {
                    let b = if b > MAX_WSCALE { MAX_WSCALE } else { b };
                    s.to_client_shift = b as i8 - OFFERED_WSCALE as i8;
                }
                None => {
                    s.to_client_shift = -(OFFERED_WSCALE as i8);
                    s.to_backend_shift = c as i8;
                }
            }
        }
        // B0 is read whether or not there are timestamps (at offset 0 when not): LLVM
        // would otherwise compute the offset from a register that only the timestamps
        // path sets, which the verifier refuses as an uninitialised read.
        let b0 = backend_opts.be32(backend.ts_at.unwrap_or(0) + 2);
        if client.timestamps {
            if backend.ts_at.is_some() {
                s.ts_offset = synack_tsval.wrapping_sub(b0);
                s.to_backend_flags |= edit_flags::TS_SHIFT;
                s.to_client_flags |= edit_flags::TS_SHIFT;
            } else {
                s.to_backend_flags |= edit_flags::TS_STRIP;
            }
        }
        if client.sack_ok {
            s.to_backend_flags |= if backend.sack_ok {
                edit_flags::SACK_SHIFT
            } else {
                edit_flags::SACK_STRIP
            };
        }
        s
    }
}

#[cfg(test)]
mod tests;

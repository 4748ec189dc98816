//! Word-at-a-time byte tests and the token hash of the cookie scanner: eight bytes of
//! the buffer at once, with the classic "has a zero byte" bit tricks.

use super::{ScanBuf, MAX_TOKEN_LEN};

pub(super) const ONES: u64 = 0x0101_0101_0101_0101;
pub(super) const HIGHS: u64 = 0x8080_8080_8080_8080;

#[inline(always)]
pub(super) const fn rep(b: u8) -> u64 {
    ONES.wrapping_mul(b as u64)
}

/// High bit of each byte that is zero. Bytes above the lowest flagged one may be flagged
/// falsely (borrow), the lowest flagged byte is always right: only use it.
#[inline(always)]
pub(super) fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// [`eq_bytes`]`(w, LF)` before the final `& HIGHS` (so that four words share one).
#[inline(always)]
pub(super) fn lf_raw(w: u64) -> u64 {
    let x = w ^ LF;
    x.wrapping_sub(ONES) & !x
}

/// High bit of each byte equal to `b`; lowest one exact (see [`zero_bytes`]).
#[inline(always)]
pub(super) fn eq_bytes(w: u64, b: u64) -> u64 {
    zero_bytes(w ^ b)
}

/// High bit of each byte below `n` (`n <= 0x80`); lowest one exact.
#[inline(always)]
pub(super) fn lt_bytes(w: u64, n: u64) -> u64 {
    w.wrapping_sub(n) & !w & HIGHS
}

/// Index (0..8) of the lowest flagged byte of a non-zero mask of high bits. BPF has no
/// count-trailing-zeros: isolate the lowest bit and multiply (a de Bruijn-like table
/// packed into one constant).
#[inline(always)]
pub(super) fn first_byte(m: u64) -> usize {
    let low = (m & m.wrapping_neg()) >> 7;
    (low.wrapping_mul(0x0001_0203_0405_0607) >> 56) as usize
}

/// Mask of the low `n` bytes (`n` >= 8: all).
#[inline(always)]
pub(super) const fn low_bytes(n: usize) -> u64 {
    if n >= 8 {
        u64::MAX
    } else {
        (1u64 << (n * 8)) - 1
    }
}

pub(super) const LF: u64 = rep(b'\n');
pub(super) const C60: u64 = rep(0x60);
/// What [`ScanBuf::seal`] writes after the payload.
pub(super) const SENTINEL: u64 = 0x0a0a;
pub(super) const CR_LF: u64 = 0x0a0d;
pub(super) const COOKIE: u64 = u64::from_le_bytes(*b"cookie:\0");
pub(super) const COOKIE_FOLD: u64 = 0x0000_2020_2020_2020;

// --- The hash -----------------------------------------------------------------------

pub(super) const HASH_SEED: u64 = 0x243f_6a88_85a3_08d3;
pub(super) const HASH_MUL: u64 = 0x9e37_79b9_7f4a_7c15;

#[inline(always)]
pub(super) fn hash_start(len: usize) -> u64 {
    HASH_SEED ^ (len as u64).wrapping_mul(HASH_MUL)
}

#[inline(always)]
pub(super) fn hash_word(h: u64, w: u64) -> u64 {
    let h = (h ^ w).wrapping_mul(HASH_MUL);
    h ^ (h >> 29)
}

/// splitmix64's finaliser.
#[inline(always)]
pub(super) fn hash_finish(mut h: u64) -> u64 {
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
pub(super) fn token_hash_at(buf: &ScanBuf, off: usize, len: usize) -> u64 {
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

/// High bit of each byte that is not `A`-`Z`, exact for every byte.
#[inline(always)]
pub(super) fn not_upper(w: u64) -> u64 {
    let x = w & !HIGHS;
    let ge_a = x.wrapping_add(rep(0x80 - b'A'));
    let gt_z = x.wrapping_add(rep(0x80 - b'Z' - 1));
    let upper = ge_a & !gt_z & !w & HIGHS;
    !upper & HIGHS
}

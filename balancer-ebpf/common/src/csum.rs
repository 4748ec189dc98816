//! Internet checksum arithmetic (RFC 1071) and incremental updates (RFC 1624).
//!
//! XDP has `bpf_csum_diff` but not the TC-only `l3/l4_csum_replace` helpers, and a NAT
//! rewrite changes a fixed set of 16-bit words per flow, so the data plane precomputes
//! one delta per flow ([`rewrite_delta`]) and applies it with [`apply_delta`]: one
//! addition and a fold per checksum per packet.
//!
//! Values are handled as they sit in memory: a `u16` / `u32` read from the packet with a
//! native load (so on little-endian hosts the bytes are swapped relative to network
//! order). One's-complement sums are byte-order independent as long as every term is read
//! the same way, which is what makes this work without conversions.

/// Folds a 32-bit one's-complement accumulator to 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The one's-complement sum contribution of replacing the 16-bit word `old` with `new`:
/// `~old + new` (RFC 1624 eqn. 3).
#[inline(always)]
pub fn word_delta(old: u16, new: u16) -> u32 {
    (!old) as u32 + new as u32
}

/// Contribution of replacing a 32-bit field (two words).
#[inline(always)]
pub fn u32_delta(old: u32, new: u32) -> u32 {
    word_delta(old as u16, new as u16) + word_delta((old >> 16) as u16, (new >> 16) as u16)
}

/// Adds an accumulated delta to a stored checksum field: `HC' = ~(~HC + delta)`.
#[inline(always)]
pub fn apply_delta(check: u16, delta: u32) -> u16 {
    !fold((!check) as u32 + fold(delta) as u32)
}

/// Like [`apply_delta`] for a UDP checksum field, where 0 means "no checksum": it stays 0,
/// and a computed 0 is sent as 0xffff (RFC 768).
#[inline(always)]
pub fn apply_delta_udp(check: u16, delta: u32) -> u16 {
    if check == 0 {
        return 0;
    }
    let new = apply_delta(check, delta);
    if new == 0 {
        0xffff
    } else {
        new
    }
}

/// Delta that the IPv4 header checksum gets when one TTL is taken off: the TTL is the high
/// byte of its word in network order, so the word drops by 0x0100, which in
/// one's-complement arithmetic is adding `!0x0100`. Expressed in memory order.
#[inline(always)]
pub fn ttl_decrement_delta() -> u32 {
    (!u16::from_be(0x0100)) as u32
}

/// Addresses and ports of a packet, as read from it (network byte order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoints {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
}

impl Endpoints {
    /// The same two ends seen from the other side (a reply's addresses and ports).
    #[inline(always)]
    pub fn reversed(self) -> Endpoints {
        Endpoints {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
        }
    }
}

/// Cancels [`ttl_decrement_delta`] inside an accumulated delta, for a rewrite that leaves
/// the TTL as it is.
#[inline(always)]
pub fn ttl_restore_delta() -> u32 {
    u16::from_be(0x0100) as u32
}

/// The two deltas of a NAT rewrite from `old` to `new`, in memory order:
/// `(ip_header_delta, l4_delta)`. The IP header delta includes the TTL decrement.
#[inline(always)]
pub fn rewrite_delta(old: Endpoints, new: Endpoints) -> (u16, u16) {
    let addrs = fold(u32_delta(old.src, new.src) + u32_delta(old.dst, new.dst)) as u32;
    let ports = fold(word_delta(old.sport, new.sport) + word_delta(old.dport, new.dport)) as u32;
    // Folded to 16 bits: a one's-complement sum is the same folded or not, and the flow
    // value keeps them as u16.
    (fold(addrs + ttl_decrement_delta()), fold(addrs + ports))
}

/// Full Internet checksum of `data` (words read in network order), with an initial sum.
/// Used on the host (tests, the control plane); the data plane only updates checksums.
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial as u64;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u64) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn ipv4_header(src: [u8; 4], dst: [u8; 4], ttl: u8) -> Vec<u8> {
        let mut h = std::vec![0x45, 0, 0, 40, 0x12, 0x34, 0x40, 0, ttl, 6, 0, 0];
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        let c = checksum(&h, 0);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    fn mem_u32(b: [u8; 4]) -> u32 {
        u32::from_ne_bytes(b)
    }

    #[test]
    fn full_checksum_of_header_with_checksum_is_zero() {
        let h = ipv4_header([198, 18, 0, 2], [198, 18, 100, 1], 64);
        assert_eq!(checksum(&h, 0), 0);
    }

    #[test]
    fn incremental_update_matches_recomputation() {
        let cases = [
            (
                [198, 18, 0, 2],
                [198, 18, 100, 1],
                [198, 18, 0, 2],
                [198, 18, 1, 3],
                64u8,
            ),
            (
                [10, 0, 0, 1],
                [255, 255, 255, 255],
                [0, 0, 0, 0],
                [1, 2, 3, 4],
                2,
            ),
            (
                [0, 0, 0, 0],
                [0, 0, 0, 0],
                [255, 255, 255, 255],
                [255, 255, 255, 255],
                255,
            ),
        ];
        for (src, dst, nsrc, ndst, ttl) in cases {
            let h = ipv4_header(src, dst, ttl);
            let old = u16::from_ne_bytes([h[10], h[11]]);
            let ends = |s, d| Endpoints {
                src: mem_u32(s),
                dst: mem_u32(d),
                sport: 0,
                dport: 0,
            };
            let (ip_delta, _) = rewrite_delta(ends(src, dst), ends(nsrc, ndst));
            let updated = apply_delta(old, ip_delta as u32);
            let expect = ipv4_header(nsrc, ndst, ttl - 1);
            assert_eq!(updated.to_ne_bytes(), [expect[10], expect[11]]);
        }
    }

    #[test]
    fn restoring_the_ttl_cancels_its_decrement() {
        let h = ipv4_header([198, 18, 0, 2], [198, 18, 100, 1], 64);
        let old = u16::from_ne_bytes([h[10], h[11]]);
        let ends = |d: [u8; 4]| Endpoints {
            src: mem_u32([198, 18, 0, 2]),
            dst: mem_u32(d),
            sport: 0,
            dport: 0,
        };
        let (delta, _) = rewrite_delta(ends([198, 18, 100, 1]), ends([198, 18, 1, 10]));
        let updated = apply_delta(old, delta as u32 + ttl_restore_delta());
        let expect = ipv4_header([198, 18, 0, 2], [198, 18, 1, 10], 64);
        assert_eq!(updated.to_ne_bytes(), [expect[10], expect[11]]);
    }

    #[test]
    fn udp_zero_checksum_stays_zero_and_zero_result_becomes_ffff() {
        assert_eq!(apply_delta_udp(0, 1234), 0);
        // Pick a delta that brings the checksum to zero: !check + delta == 0xffff.
        let check = 0x1234u16;
        let delta = (0xffffu16 - !check) as u32;
        assert_eq!(apply_delta(check, delta), 0);
        assert_eq!(apply_delta_udp(check, delta), 0xffff);
    }
}

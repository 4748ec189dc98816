//! `csum`: the full checksum against etherparse's, and the incremental updates (RFC 1624)
//! of a NAT rewrite against a full recomputation by etherparse.
//!
//! The rewrite is done on the bytes exactly as the XDP program's `forward.rs::rewrite`
//! does it: new addresses and ports written, TTL decremented (or not, with
//! `ttl_restore_delta`), the flow's precomputed deltas applied with `apply_delta` /
//! `apply_delta_udp`, and for spliced flows the sequence or acknowledgement number
//! shifted with `u32_delta` added to the TCP delta. Values are read and written in
//! memory order, as there.

use etherparse::{checksum::Sum16BitWords, NetSlice, SlicedPacket, TransportSlice};
use proptest::prelude::*;
use std::vec::Vec;

use super::frames::{self, Frame};
use balancer_common::csum::{
    apply_delta, apply_delta_udp, checksum, fold, rewrite_delta, ttl_restore_delta, u32_delta,
    Endpoints,
};
use balancer_common::parse::{parse_slice, Packet};
use balancer_common::PROTO_TCP;

fn u16_at(f: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([f[at], f[at + 1]])
}

fn u32_at(f: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]])
}

/// The checksums etherparse computes for the frame's headers as they are now, next to
/// the ones in the frame: `(ip_stored, ip_computed, l4_stored, l4_computed)`. For UDP
/// with checksum 0 ("none") the computed value is 0 too.
fn checksums(f: &[u8]) -> (u16, u16, u16, u16) {
    let sliced = SlicedPacket::from_ethernet(f).expect("etherparse");
    let Some(NetSlice::Ipv4(ip)) = &sliced.net else {
        panic!("not IPv4")
    };
    let h = ip.header();
    let ip_sums = (h.header_checksum(), h.to_header().calc_header_checksum());
    let (src, dst) = (h.source(), h.destination());
    let l4 = match &sliced.transport {
        Some(TransportSlice::Tcp(t)) => (t.checksum(), t.calc_checksum_ipv4(src, dst).unwrap()),
        Some(TransportSlice::Udp(u)) if u.checksum() == 0 => (0, 0),
        Some(TransportSlice::Udp(u)) => (
            u.checksum(),
            u.to_header()
                .calc_checksum_ipv4_raw(src, dst, u.payload())
                .unwrap(),
        ),
        other => panic!("transport {other:?}"),
    };
    (ip_sums.0, ip_sums.1, l4.0, l4.1)
}

/// etherparse's UDP checksum of the frame's datagram (0xffff for a computed 0), whatever
/// the checksum field holds.
fn udp_checksum(f: &[u8]) -> u16 {
    let mut g = f.to_vec();
    let p = parse_slice(&g).unwrap();
    g[p.l4_off + 6..p.l4_off + 8].copy_from_slice(&[0xff, 0xff]); // not "none"
    let sliced = SlicedPacket::from_ethernet(&g).unwrap();
    let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Udp(u))) = (&sliced.net, &sliced.transport)
    else {
        panic!("not UDP/IPv4")
    };
    let h = ip.header();
    u.to_header()
        .calc_checksum_ipv4_raw(h.source(), h.destination(), u.payload())
        .unwrap()
}

/// A spliced flow's sequence shift: which field (true: the sequence number, as towards
/// the client; false: the acknowledgement number, as towards the backend) and by how much.
type Shift = Option<(bool, u32)>;

/// `forward.rs::rewrite` over a byte frame.
fn rewrite(f: &mut [u8], p: &Packet, new: Endpoints, decrement_ttl: bool, shift: Shift) {
    let old = Endpoints {
        src: p.key.src,
        dst: p.key.dst,
        sport: p.key.sport,
        dport: p.key.dport,
    };
    let (ip_delta, l4_delta) = rewrite_delta(old, new);
    let (ip_delta, l4_delta) = (ip_delta as u32, l4_delta as u32);
    let l3 = p.l3_off;
    f[l3 + 12..l3 + 16].copy_from_slice(&new.src.to_ne_bytes());
    f[l3 + 16..l3 + 20].copy_from_slice(&new.dst.to_ne_bytes());
    let check = u16_at(f, l3 + 10);
    let check = if decrement_ttl {
        f[l3 + 8] -= 1;
        apply_delta(check, ip_delta)
    } else {
        apply_delta(check, ip_delta + ttl_restore_delta())
    };
    f[l3 + 10..l3 + 12].copy_from_slice(&check.to_ne_bytes());

    let l4 = p.l4_off;
    f[l4..l4 + 2].copy_from_slice(&new.sport.to_ne_bytes());
    f[l4 + 2..l4 + 4].copy_from_slice(&new.dport.to_ne_bytes());
    if p.key.proto == PROTO_TCP {
        let mut delta = l4_delta;
        if let Some((seq, by)) = shift {
            let at = l4 + if seq { 4 } else { 8 };
            let old = u32_at(f, at);
            let new = u32::from_be(old).wrapping_add(by).to_be();
            f[at..at + 4].copy_from_slice(&new.to_ne_bytes());
            delta += u32_delta(old, new);
        }
        let c = apply_delta(u16_at(f, l4 + 16), delta);
        f[l4 + 16..l4 + 18].copy_from_slice(&c.to_ne_bytes());
    } else {
        let c = apply_delta_udp(u16_at(f, l4 + 6), l4_delta);
        f[l4 + 6..l4 + 8].copy_from_slice(&c.to_ne_bytes());
    }
}

fn endpoints() -> impl Strategy<Value = Endpoints> {
    (any::<u32>(), any::<u32>(), any::<u16>(), any::<u16>()).prop_map(|(src, dst, sport, dport)| {
        Endpoints {
            src,
            dst,
            sport,
            dport,
        }
    })
}

/// New endpoints: random, or the NAT's real shapes (only the destination changes, or
/// only the source), or nothing at all.
fn rewrite_of(p: &Packet) -> impl Strategy<Value = Endpoints> {
    let old = Endpoints {
        src: p.key.src,
        dst: p.key.dst,
        sport: p.key.sport,
        dport: p.key.dport,
    };
    prop_oneof![
        3 => endpoints(),
        2 => (any::<u32>(), any::<u16>()).prop_map(move |(dst, dport)| Endpoints { dst, dport, ..old }),
        2 => (any::<u32>(), any::<u16>()).prop_map(move |(src, sport)| Endpoints { src, sport, ..old }),
        1 => Just(old),
    ]
}

fn shift() -> impl Strategy<Value = Shift> {
    prop_oneof![Just(None), (prop::bool::ANY, any::<u32>()).prop_map(Some)]
}

/// A frame, its parse, a rewrite of it, whether the TTL is decremented, a sequence shift.
fn case(
    frame: impl Strategy<Value = Frame>,
) -> impl Strategy<Value = (Vec<u8>, Packet, Endpoints, bool, Shift)> {
    frame.prop_flat_map(|fr| {
        let f = fr.build();
        let p = parse_slice(&f).expect("generated frame parses");
        let decrement = if p.ttl >= 1 {
            prop::bool::ANY.boxed()
        } else {
            // A TTL of 0 cannot be decremented (the data plane passes packets with TTL
            // <= 1 to the kernel, which sends the ICMP time exceeded).
            Just(false).boxed()
        };
        (Just(f), Just(p), rewrite_of(&p), decrement, shift())
    })
}

proptest! {
    #![proptest_config(super::config(10_000))]

    /// `checksum` is the Internet checksum etherparse computes, for any length, and an
    /// initial sum continues it (as the pseudo-header sum does).
    #[test]
    fn full_checksum_matches_etherparse(
        a in proptest::collection::vec(any::<u8>(), 0..64),
        b in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut ab = a.clone();
        ab.extend_from_slice(&b);
        let reference = Sum16BitWords::new().add_slice(&ab).ones_complement().to_be();
        prop_assert_eq!(checksum(&ab, 0), reference);
        if a.len() % 2 == 0 {
            let head = !checksum(&a, 0) as u32;
            prop_assert_eq!(checksum(&b, head), reference);
        }
    }

}

proptest! {
    #![proptest_config(super::config(3_000))]

    /// The IPv4 header checksum after a rewrite (addresses, TTL) is the recomputed one,
    /// exactly (not just an equivalent one's-complement zero), for TCP and UDP frames with
    /// any IP options.
    #[test]
    fn nat_rewrite_ipv4_and_tcp_checksums((f, p, new, dec, shift) in case(frames::tcp_frame(64))) {
        let mut g = f.clone();
        rewrite(&mut g, &p, new, dec, shift);
        let (ip, ip_calc, tcp, tcp_calc) = checksums(&g);
        prop_assert_eq!(ip, ip_calc, "IPv4 header checksum");
        prop_assert_eq!(tcp, tcp_calc, "TCP checksum");
        prop_assert_eq!(g[p.l3_off + 8], p.ttl - u8::from(dec));
    }

    #[test]
    fn nat_rewrite_ipv4_and_udp_checksums((f, p, new, dec, _shift) in case(frames::udp_frame(64))) {
        let mut g = f.clone();
        let had_checksum = u16_at(&f, p.l4_off + 6) != 0;
        rewrite(&mut g, &p, new, dec, None);
        let (ip, ip_calc, udp, udp_calc) = checksums(&g);
        prop_assert_eq!(ip, ip_calc, "IPv4 header checksum");
        // A datagram without checksum stays without; one with gets the recomputed
        // value, 0xffff for a computed 0 (RFC 768).
        prop_assert_eq!(udp != 0, had_checksum);
        prop_assert_eq!(udp, udp_calc, "UDP checksum");
    }

    /// The rare UDP case where the rewritten datagram's checksum computes to 0: it must
    /// be sent as 0xffff (RFC 768), not 0 ("no checksum"). The first payload word is
    /// chosen to make that happen.
    #[test]
    fn nat_rewrite_udp_checksum_computing_to_zero(
        (f, p, new, dec, _shift) in case(frames::udp_frame(64)),
    ) {
        if p.ip_end - p.payload_off < 2 {
            return Ok(()); // no payload word to choose (a few percent of the cases)
        }
        let with_word = |w: u16| {
            let mut g = f.clone();
            g[p.payload_off..p.payload_off + 2].copy_from_slice(&w.to_be_bytes());
            let c = udp_checksum(&g);
            g[p.l4_off + 6..p.l4_off + 8].copy_from_slice(&c.to_be_bytes());
            g
        };
        let mut g = with_word(0);
        rewrite(&mut g, &p, new, dec, None);
        let w = udp_checksum(&g); // one's complement of the sum with the word at 0
        let mut g = with_word(w);
        rewrite(&mut g, &p, new, dec, None);
        let (_, _, udp, udp_calc) = checksums(&g);
        prop_assert_eq!(udp_calc, 0xffff);
        prop_assert_eq!(udp, 0xffff);
    }

    /// A wrong checksum stays wrong by the same amount: the balancer never turns a
    /// corrupted packet into one the receiver accepts (nor the reverse).
    #[test]
    fn nat_rewrite_keeps_checksum_errors((f, p, new, dec, shift) in case(frames::tcp_frame(32)),
                                         ip_err in 1u16..0xffff, tcp_err in 1u16..0xffff) {
        let mut g = f.clone();
        let add = |f: &mut [u8], at: usize, e: u16| {
            let c = u16_at(f, at);
            let c = fold(c as u32 + e.to_be() as u32);
            f[at..at + 2].copy_from_slice(&c.to_ne_bytes());
        };
        add(&mut g, p.l3_off + 10, ip_err);
        add(&mut g, p.l4_off + 16, tcp_err);
        rewrite(&mut g, &p, new, dec, shift);
        let (ip, ip_calc, tcp, tcp_calc) = checksums(&g);
        // stored - computed, in one's-complement arithmetic (0 and 0xffff are both zero).
        let diff = |stored: u16, calc: u16| fold(stored as u32 + !calc as u32) % 0xffff;
        prop_assert_eq!(diff(ip, ip_calc), ip_err % 0xffff);
        prop_assert_eq!(diff(tcp, tcp_calc), tcp_err % 0xffff);
    }

}

proptest! {
    #![proptest_config(super::config(10_000))]

    /// `apply_delta_udp`: 0 ("no checksum") stays 0, and the result is never 0 otherwise.
    #[test]
    fn udp_zero_rule(check in any::<u16>(), delta in any::<u32>()) {
        let delta = delta & 0x3_ffff;
        let r = apply_delta_udp(check, delta);
        if check == 0 {
            prop_assert_eq!(r, 0);
        } else {
            prop_assert_ne!(r, 0);
            let plain = apply_delta(check, delta);
            prop_assert!(r == plain || (plain == 0 && r == 0xffff));
        }
    }

    /// Deltas compose: applying the deltas of two rewrites in a row (A -> B, B -> C) is
    /// applying the delta of A -> C, up to the two representations of zero.
    #[test]
    fn deltas_compose(check in any::<u16>(), a in endpoints(), b in endpoints(), c in endpoints()) {
        // 0xffff is not a value a full checksum of a header produces.
        let check = if check == 0xffff { 0 } else { check };
        let wide = |(ip, l4): (u16, u16)| (ip as u32, l4 as u32);
        let (ip_ab, l4_ab) = wide(rewrite_delta(a, b));
        let (ip_bc, l4_bc) = wide(rewrite_delta(b, c));
        let (ip_ac, l4_ac) = wide(rewrite_delta(a, c));
        let restore = ttl_restore_delta();
        let norm = |x: u16| if x == 0xffff { 0 } else { x };
        prop_assert_eq!(
            norm(apply_delta(apply_delta(check, l4_ab), l4_bc)),
            norm(apply_delta(check, l4_ac))
        );
        prop_assert_eq!(
            norm(apply_delta(apply_delta(check, ip_ab + restore), ip_bc + restore)),
            norm(apply_delta(check, ip_ac + restore))
        );
    }
}

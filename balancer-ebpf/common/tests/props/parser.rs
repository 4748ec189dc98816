//! `parse::parse_packet` on arbitrary bytes, generated frames and mutated frames.
//!
//! Every input is checked four ways:
//! - **no panic, no read outside `[start, end)`**: the frame sits in a [`Guarded`] buffer
//!   and is parsed once with zeros and once with 0xff around it; the results must be
//!   equal (a read past `end` would see different lengths, flags and offsets);
//! - **offsets inside the frame**: [`check_offsets`];
//! - **exact agreement with [`reference`]**, a hand-written parser over a byte slice
//!   (safe indexing only) that implements the rules of README "Packet handling rules",
//!   including which [`ParseError`] each malformed packet gets;
//! - **agreement with etherparse** ([`etherparse_view`]) on whether the packet is
//!   accepted and on every extracted field. etherparse's rules differ from the data
//!   plane's in four places, each handled there and documented with why the production
//!   rule is the right one for this program.

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use proptest::prelude::*;
use std::vec::Vec;

use super::frames::{self, Guarded, Layout, FILLS};
use balancer_common::parse::{parse_slice, Packet, ParseError};
use balancer_common::{FlowKey, PROTO_TCP, PROTO_UDP};

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// The rules, written down plainly over a slice. The order of the checks fixes which
/// error a packet with several problems gets; it is the order of the README table (link,
/// IPv4 header, datagram length, protocol, fragment, L4 header).
pub fn reference(f: &[u8]) -> Result<Packet, ParseError> {
    use ParseError::*;
    // Ethernet, then at most one 802.1Q / 802.1ad tag.
    let mut ether_type = be16(f, 12).ok_or(Truncated)?;
    let mut l3 = 14;
    let vlan = ether_type == 0x8100 || ether_type == 0x88a8;
    if vlan {
        ether_type = be16(f, 16).ok_or(Truncated)?;
        l3 = 18;
    }
    if ether_type != 0x0800 {
        return Err(NotIpv4);
    }
    // IPv4 fixed header, then its fields.
    let ip = f.get(l3..l3 + 20).ok_or(Truncated)?;
    if ip[0] >> 4 != 4 {
        return Err(Invalid);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let tot_len = usize::from(be16(ip, 2).unwrap());
    if ihl < 20 || tot_len < ihl {
        return Err(Invalid);
    }
    // The whole datagram must be in the frame (anything after it is link padding).
    let datagram = f.get(l3..l3 + tot_len).ok_or(Truncated)?;
    let proto = ip[9];
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(NotTcpUdp);
    }
    let frag = be16(ip, 6).unwrap();
    if frag & 0x1fff != 0 {
        return Err(NonFirstFragment);
    }
    let more_fragments = frag & 0x2000 != 0;
    let l4 = l3 + ihl;
    let (ports, tcp_flags, l4_len) = if proto == PROTO_TCP {
        // The fixed TCP header must be in the frame; then its data offset is checked
        // against the datagram.
        let h = f.get(l4..l4 + 20).ok_or(Truncated)?;
        let doff = usize::from(h[12] >> 4) * 4;
        if doff < 20 {
            return Err(Invalid);
        }
        if datagram.len() < ihl + doff {
            // A first fragment may legitimately end inside the TCP header (the rest is
            // in the next fragment); otherwise the header claims more than there is.
            return Err(if more_fragments { Truncated } else { Invalid });
        }
        (&h[..4], h[13], doff)
    } else {
        let h = f.get(l4..l4 + 8).ok_or(Truncated)?;
        if datagram.len() < ihl + 8 {
            return Err(Invalid);
        }
        (&h[..4], 0, 8)
    };
    let word = |b: &[u8]| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    Ok(Packet {
        l3_off: l3,
        l4_off: l4,
        payload_off: l4 + l4_len,
        ip_end: l3 + tot_len,
        key: FlowKey::new(
            word(&ip[12..16]),
            word(&ip[16..20]),
            u16::from_ne_bytes([ports[0], ports[1]]),
            u16::from_ne_bytes([ports[2], ports[3]]),
            proto,
        ),
        tcp_flags,
        ttl: ip[8],
        first_fragment: more_fragments,
        vlan,
    })
}

/// The fields a parse extracts, in plain numbers (host order), for comparing with
/// etherparse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fields {
    pub l3_off: usize,
    pub l4_off: usize,
    pub payload_off: usize,
    pub ip_end: usize,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    pub ttl: u8,
    pub first_fragment: bool,
    pub vlan: bool,
}

pub fn fields(p: &Packet) -> Fields {
    Fields {
        l3_off: p.l3_off,
        l4_off: p.l4_off,
        payload_off: p.payload_off,
        ip_end: p.ip_end,
        src: p.key.src.to_ne_bytes(),
        dst: p.key.dst.to_ne_bytes(),
        sport: u16::from_be(p.key.sport),
        dport: u16::from_be(p.key.dport),
        proto: p.key.proto,
        tcp_flags: p.tcp_flags,
        ttl: p.ttl,
        first_fragment: p.first_fragment,
        vlan: p.vlan,
    }
}

/// What etherparse (`SlicedPacket::from_ethernet`) makes of the frame: `Some` with the
/// fields if it finds Ethernet, IPv4 and a TCP or UDP header, `None` otherwise.
///
/// Where etherparse's rules differ from the data plane's, the frame is first brought to
/// the form in which both rules give the same answer, or the answer is fixed:
///
/// 1. **VLAN tags**: etherparse reads two tags (QinQ) and also takes TPID 0x9100 as a
///    tag. The data plane reads at most one 0x8100 / 0x88a8 tag and passes everything
///    else to the kernel (`NotIpv4`): it only ever rewrites frames whose layout it
///    fully knows, and the kernel handles the rest. Here: `None` for those frames.
/// 2. **First fragments** (MF set, offset 0): etherparse does not read the transport
///    header of any fragment. The data plane must read it: the first fragment of a flow
///    is recognised by its ports and dropped (`drop_fragment`), the other fragments are
///    passed. Here: MF is cleared in the copy given to etherparse.
/// 3. **IPsec AH** (protocol 51): etherparse skips the AH header and parses the TCP/UDP
///    header behind it. The data plane passes AH (`NotTcpUdp`): rewriting addresses
///    under AH would break its integrity check. Here: `None`.
/// 4. **UDP length field**: etherparse rejects a UDP header whose length is 1..=7 or
///    runs past the IP datagram, and cuts the payload to it. The data plane does not
///    read the field: NAT rewrites addresses and ports whatever the length says, the
///    IPv4 total length bounds the datagram, and the receiving stack validates the UDP
///    length and checksum (an incremental checksum update keeps a wrong checksum wrong).
///    Here: the copy gets the length the datagram implies.
pub fn etherparse_view(frame: &[u8]) -> Option<Fields> {
    let mut f = frame.to_vec();
    let is_tag = |t: u16| t == 0x8100 || t == 0x88a8 || t == 0x9100;
    let outer = be16(&f, 12)?;
    let mut l3 = 14;
    if outer == 0x9100 {
        return None; // 1.
    }
    if is_tag(outer) {
        if is_tag(be16(&f, 16)?) {
            return None; // 1.
        }
        l3 = 18;
    }
    let mut more_fragments = false;
    if let Some(ip) = f.get(l3..l3 + 20) {
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let tot_len = usize::from(be16(ip, 2).unwrap());
        let frag = be16(ip, 6).unwrap();
        let proto = ip[9];
        if proto == 51 {
            return None; // 3.
        }
        if frag & 0x3fff == 0x2000 {
            more_fragments = true;
            f[l3 + 6] &= !0x20; // 2.
        }
        if proto == PROTO_UDP && ihl >= 20 && tot_len >= ihl + 8 && l3 + tot_len <= f.len() {
            let len = ((tot_len - ihl) as u16).to_be_bytes(); // 4.
            f[l3 + ihl + 4..l3 + ihl + 6].copy_from_slice(&len);
        }
    }
    let sliced = SlicedPacket::from_ethernet(&f).ok()?;
    let Some(NetSlice::Ipv4(ip)) = &sliced.net else {
        return None;
    };
    let base = f.as_ptr() as usize;
    let h = ip.header();
    let l3_off = h.slice().as_ptr() as usize - base;
    let ip_end = l3_off + usize::from(h.total_len());
    let (l4_off, sport, dport, tcp_flags, payload_off, payload_len) = match &sliced.transport {
        Some(TransportSlice::Tcp(t)) => {
            let flags = [
                t.fin(),
                t.syn(),
                t.rst(),
                t.psh(),
                t.ack(),
                t.urg(),
                t.ece(),
                t.cwr(),
            ]
            .iter()
            .enumerate()
            .fold(0u8, |acc, (bit, &set)| acc | (u8::from(set) << bit));
            (
                t.slice().as_ptr() as usize - base,
                t.source_port(),
                t.destination_port(),
                flags,
                t.payload().as_ptr() as usize - base,
                t.payload().len(),
            )
        }
        Some(TransportSlice::Udp(u)) => (
            u.slice().as_ptr() as usize - base,
            u.source_port(),
            u.destination_port(),
            0,
            u.payload().as_ptr() as usize - base,
            u.payload().len(),
        ),
        _ => return None,
    };
    // etherparse's payload ends where the IP datagram ends.
    assert_eq!(payload_off + payload_len, ip_end, "etherparse payload end");
    Some(Fields {
        l3_off,
        l4_off,
        payload_off,
        ip_end,
        src: h.source(),
        dst: h.destination(),
        sport,
        dport,
        proto: h.protocol().0,
        tcp_flags,
        ttl: h.ttl(),
        first_fragment: more_fragments,
        vlan: sliced.vlan.is_some(),
    })
}

/// Offsets of an accepted packet are ordered, inside the frame, and consistent with its
/// headers' sizes.
fn check_offsets(p: &Packet, len: usize) -> Result<(), TestCaseError> {
    prop_assert!(p.l3_off == 14 || p.l3_off == 18, "l3_off {}", p.l3_off);
    prop_assert_eq!(p.vlan, p.l3_off == 18);
    let ihl = p.l4_off - p.l3_off;
    prop_assert!(
        (20..=60).contains(&ihl) && ihl.is_multiple_of(4),
        "ihl {}",
        ihl
    );
    let l4_len = p.payload_off - p.l4_off;
    if p.key.proto == PROTO_TCP {
        prop_assert!(
            (20..=60).contains(&l4_len) && l4_len.is_multiple_of(4),
            "doff {}",
            l4_len
        );
    } else {
        prop_assert_eq!(p.key.proto, PROTO_UDP);
        prop_assert_eq!(l4_len, 8);
        prop_assert_eq!(p.tcp_flags, 0);
    }
    prop_assert!(
        p.payload_off <= p.ip_end,
        "payload_off {} ip_end {}",
        p.payload_off,
        p.ip_end
    );
    prop_assert!(p.ip_end <= len, "ip_end {} len {}", p.ip_end, len);
    Ok(())
}

/// All checks on one frame; returns the production result.
fn check_frame(frame: &[u8]) -> Result<Result<Packet, ParseError>, TestCaseError> {
    let mut results = Vec::new();
    for fill in FILLS {
        let mut g = Guarded::new(frame, fill);
        let (start, end) = g.range();
        results.push(balancer_common::parse::parse_packet(start, end));
        prop_assert!(g.guards_intact());
    }
    prop_assert_eq!(
        results[0],
        results[1],
        "result depends on bytes outside the frame"
    );
    let got = results[0];
    prop_assert_eq!(got, parse_slice(frame));
    if let Ok(p) = &got {
        check_offsets(p, frame.len())?;
    }
    prop_assert_eq!(got, reference(frame), "reference parser");
    prop_assert_eq!(
        got.ok().map(|p| fields(&p)),
        etherparse_view(frame),
        "etherparse"
    );
    Ok(got)
}

/// Arbitrary bytes, most of them with an IPv4 ethertype (optionally behind a tag) and
/// version nibble so that the interesting checks are reached.
fn raw_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(any::<u8>(), 0..160),
        0u8..5,
        prop::bool::ANY,
    )
        .prop_map(|(mut f, shape, version)| {
            let l3 = match shape {
                1 if f.len() >= 14 => {
                    f[12..14].copy_from_slice(&[8, 0]);
                    14
                }
                2 | 3 if f.len() >= 18 => {
                    let tpid: [u8; 2] = if shape == 2 { [0x81, 0] } else { [0x88, 0xa8] };
                    f[12..14].copy_from_slice(&tpid);
                    f[16..18].copy_from_slice(&[8, 0]);
                    18
                }
                _ => return f,
            };
            if version {
                if let Some(b) = f.get_mut(l3) {
                    *b = 0x45 | (*b & 0x0f);
                }
                if let Some(b) = f.get_mut(l3 + 9) {
                    *b = if *b & 1 == 0 { PROTO_TCP } else { PROTO_UDP };
                }
            }
            f
        })
}

fn mutated_frame() -> impl Strategy<Value = (frames::Frame, Vec<frames::Mutation>)> {
    (
        frames::frame(),
        proptest::collection::vec(frames::mutation(), 0..4),
    )
}

fn apply(frame: &frames::Frame, mutations: &[frames::Mutation]) -> (Vec<u8>, Layout) {
    let layout = frame.layout();
    let mut f = frame.build();
    for m in mutations {
        frames::mutate(&mut f, &layout, m);
    }
    (f, layout)
}

/// The generators must reach every outcome, or the comparisons above prove little.
#[test]
fn generators_reach_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = mutated_frame();
    let mut counts = [0usize; 8];
    let n = 2000;
    for _ in 0..n {
        let (frame, mutations) = strategy.new_tree(&mut runner).unwrap().current();
        let (f, _) = apply(&frame, &mutations);
        let i = match parse_slice(&f) {
            Ok(p) if p.first_fragment => 0,
            Ok(p) if p.vlan => 1,
            Ok(_) => 2,
            Err(ParseError::NotIpv4) => 3,
            Err(ParseError::NotTcpUdp) => 4,
            Err(ParseError::NonFirstFragment) => 5,
            Err(ParseError::Truncated) => 6,
            Err(ParseError::Invalid) => 7,
        };
        counts[i] += 1;
    }
    for c in counts {
        assert!(c * 50 > n, "an outcome is rare: {counts:?}");
    }
}

proptest! {
    #![proptest_config(super::config(20_000))]

    #[test]
    fn arbitrary_bytes(f in raw_frame()) {
        let _ = check_frame(&f)?;
    }
}

proptest! {
    #![proptest_config(super::config(8_000))]

    #[test]
    fn mutated_frames((frame, mutations) in mutated_frame()) {
        let (f, _) = apply(&frame, &mutations);
        let _ = check_frame(&f)?;
    }
}

proptest! {
    #![proptest_config(super::config(2_000))]

    /// Generated frames, unmutated: accepted exactly when the generator made an IPv4
    /// TCP/UDP packet the rules allow, with the generator's own field values.
    #[test]
    fn generated_frames_parse_to_their_fields(frame in frames::frame()) {
        let f = frame.build();
        let got = check_frame(&f)?;
        let layout = frame.layout();
        let link_ok = match frame.vlan {
            frames::Vlan::None => true,
            frames::Vlan::One { tpid, .. } => tpid != frames::TPID_9100,
            frames::Vlan::Two { .. } => false,
        };
        let l4_ok = match &frame.l4 {
            frames::L4::Tcp(_) => frame.ip.proto == PROTO_TCP,
            frames::L4::Udp(_) => frame.ip.proto == PROTO_UDP,
            frames::L4::Raw(_) => false,
        };
        if link_ok && frame.ether_type == 0x0800 && l4_ok && frame.ip.frag & 0x1fff == 0 {
            prop_assert!(got.is_ok(), "{:?}", got);
            let p = got.unwrap();
            prop_assert_eq!(p.l3_off, layout.l3);
            prop_assert_eq!(p.l4_off, layout.l4);
            prop_assert_eq!(p.ip_end, layout.ip_end);
            prop_assert_eq!(p.ip_end + frame.padding.len(), f.len());
            prop_assert_eq!(p.payload_off + frame.payload.len(), p.ip_end);
            prop_assert_eq!(p.key.src.to_ne_bytes(), frame.ip.src);
            prop_assert_eq!(p.key.dst.to_ne_bytes(), frame.ip.dst);
            prop_assert_eq!(p.ttl, frame.ip.ttl);
            prop_assert_eq!(p.first_fragment, frame.ip.frag & 0x2000 != 0);
            match &frame.l4 {
                frames::L4::Tcp(t) => {
                    prop_assert_eq!((u16::from_be(p.key.sport), u16::from_be(p.key.dport)), (t.sport, t.dport));
                    prop_assert_eq!(p.tcp_flags, t.flags);
                }
                frames::L4::Udp(u) => {
                    prop_assert_eq!((u16::from_be(p.key.sport), u16::from_be(p.key.dport)), (u.sport, u.dport));
                }
                frames::L4::Raw(_) => unreachable!(),
            }
        } else if !link_ok || frame.ether_type != 0x0800 {
            prop_assert_eq!(got, Err(ParseError::NotIpv4));
        } else if frame.ip.proto != PROTO_TCP && frame.ip.proto != PROTO_UDP {
            prop_assert_eq!(got, Err(ParseError::NotTcpUdp));
        } else if frame.ip.frag & 0x1fff != 0 {
            prop_assert_eq!(got, Err(ParseError::NonFirstFragment));
        }
        // Otherwise: the TCP or UDP number over raw bytes. Whatever the bytes say, as
        // long as the reference and etherparse agree (checked above).
    }

}

proptest! {
    #![proptest_config(super::config(1_000))]

    /// Every truncation of a generated frame: the result for a cut frame is the full
    /// frame's result once the whole datagram is in, `Truncated` before; for a frame the
    /// parser refuses, either `Truncated` or the same refusal.
    #[test]
    fn every_truncation((frame, mutations) in mutated_frame()) {
        let (f, _) = apply(&frame, &mutations);
        let full = check_frame(&f)?;
        for cut in 0..f.len() {
            let got = check_frame(&f[..cut])?;
            match full {
                Ok(p) if cut >= p.ip_end => prop_assert_eq!(got, full, "cut {}", cut),
                Ok(_) => prop_assert_eq!(got, Err(ParseError::Truncated), "cut {}", cut),
                Err(e) => prop_assert!(
                    got == Err(e) || got == Err(ParseError::Truncated),
                    "cut {}: {:?}, full frame {:?}", cut, got, e
                ),
            }
        }
    }
}

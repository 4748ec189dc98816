//! `flow` and `hash`: the invariants their documentation states.
//!
//! - `new_entries`: the forward entry rewrites client -> VIP into client -> backend, the
//!   reply entry rewrites backend -> client into VIP -> client; the reply key is the
//!   5-tuple the parser reads from the backend's answer; each entry's `other_key` is the
//!   other entry's key (so `other_key` twice is the identity); and the precomputed
//!   checksum deltas, applied as the data plane applies them, give frames whose checksums
//!   etherparse accepts.
//! - `next_state` / `track` / `still_valid`: the TCP state only moves forward (SYN <
//!   ESTABLISHED < FIN < CLOSED), RST closes, UDP is UDP; `track` stores `next_state` and
//!   refreshes the time as documented; `still_valid` is the documented rule.
//! - `fmix32` is a bijection (checked through its inverse), so `flow_hash` changes
//!   whenever exactly one of source, destination, the port pair or the protocol changes;
//!   `fnv1a64` is FNV-1a (published vectors) followed by the splitmix64 finaliser.

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use proptest::prelude::*;

use super::frames::{self, Frame, L4};
use balancer_common::csum::{apply_delta, apply_delta_udp};
use balancer_common::flow::*;
use balancer_common::hash::{flow_hash, fmix32, fnv1a64};
use balancer_common::parse::{
    parse_slice, read, EthHdr, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};
use balancer_common::{
    backend_state, direction, flow_flags, flow_state, flow_tick, ns_since_tick, Backend, Config,
    Flow, FlowKey, FLOW_TICK_SHIFT, LAST_SEEN_GRANULARITY_NS, MAX_BACKENDS, MAX_FLOW_TIMEOUT_S,
    PROTO_TCP, PROTO_UDP,
};

fn backend() -> impl Strategy<Value = Backend> {
    (any::<[u8; 4]>(), any::<u16>()).prop_map(|(a, p)| Backend {
        addr: u32::from_ne_bytes(a),
        port: p.to_be(),
        state: backend_state::UP,
        _pad: 0,
        service: 0,
        weight: 1,
    })
}

fn tcp_or_udp_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![frames::tcp_frame(40), frames::udp_frame(40)]
}

/// The data plane's rewrite (`forward.rs::rewrite`, TTL decremented) of `f` with `flow`.
fn apply(f: &mut [u8], p: &Packet, flow: &Flow) {
    let l3 = p.l3_off;
    f[l3 + 12..l3 + 16].copy_from_slice(&flow.new_src.to_ne_bytes());
    f[l3 + 16..l3 + 20].copy_from_slice(&flow.new_dst.to_ne_bytes());
    f[l3 + 8] -= 1;
    let c = u16::from_ne_bytes([f[l3 + 10], f[l3 + 11]]);
    f[l3 + 10..l3 + 12].copy_from_slice(&apply_delta(c, flow.ip_csum_delta as u32).to_ne_bytes());
    let l4 = p.l4_off;
    f[l4..l4 + 2].copy_from_slice(&flow.new_sport.to_ne_bytes());
    f[l4 + 2..l4 + 4].copy_from_slice(&flow.new_dport.to_ne_bytes());
    let at = l4 + if p.key.proto == PROTO_TCP { 16 } else { 6 };
    let c = u16::from_ne_bytes([f[at], f[at + 1]]);
    let c = if p.key.proto == PROTO_TCP {
        apply_delta(c, flow.l4_csum_delta as u32)
    } else {
        apply_delta_udp(c, flow.l4_csum_delta as u32)
    };
    f[at..at + 2].copy_from_slice(&c.to_ne_bytes());
}

/// Checksums as stored and as etherparse computes them (UDP without checksum: 0, 0).
fn checksums_ok(f: &[u8]) -> Result<(), TestCaseError> {
    let s =
        SlicedPacket::from_ethernet(f).map_err(|e| TestCaseError::fail(std::format!("{e:?}")))?;
    let Some(NetSlice::Ipv4(ip)) = &s.net else {
        return Err(TestCaseError::fail("not IPv4"));
    };
    let h = ip.header();
    prop_assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
    match &s.transport {
        Some(TransportSlice::Tcp(t)) => prop_assert_eq!(
            t.checksum(),
            t.calc_checksum_ipv4(h.source(), h.destination()).unwrap()
        ),
        Some(TransportSlice::Udp(u)) if u.checksum() == 0 => {}
        Some(TransportSlice::Udp(u)) => prop_assert_eq!(
            u.checksum(),
            u.to_header()
                .calc_checksum_ipv4_raw(h.source(), h.destination(), u.payload())
                .unwrap()
        ),
        _ => return Err(TestCaseError::fail("not TCP/UDP")),
    }
    Ok(())
}

/// The backend's answer to a client packet: same frame shape, backend -> client.
fn reply_frame(client: &Frame, b: &Backend) -> Frame {
    let mut r = client.clone();
    r.ip.src = b.addr.to_ne_bytes();
    r.ip.dst = client.ip.src;
    let bport = u16::from_be(b.port);
    let sport = match &client.l4 {
        L4::Tcp(t) => t.sport,
        L4::Udp(u) => u.sport,
        L4::Raw(_) => unreachable!(),
    };
    match &mut r.l4 {
        L4::Tcp(t) => {
            t.sport = bport;
            t.dport = sport;
        }
        L4::Udp(u) => {
            u.sport = bport;
            u.dport = sport;
        }
        L4::Raw(_) => unreachable!(),
    }
    r
}

proptest! {
    #![proptest_config(super::config(2_000))]

    #[test]
    fn new_entries_rewrite_and_find_each_other(
        fr in tcp_or_udp_frame(), b in backend(), ifindex in any::<u32>(),
        slot in 0..MAX_BACKENDS, now in any::<u64>(),
    ) {
        let mut fr = fr;
        fr.ip.ttl = fr.ip.ttl.max(2); // the data plane only forwards TTL > 1
        let f = fr.build();
        let p = parse_slice(&f).unwrap();
        // SAFETY: the frame holds an Ethernet header (it parsed).
        let eth: EthHdr = unsafe { read(f.as_ptr() as *const EthHdr) };
        let (fk, fwd, rk, rev) = new_entries(&p, &eth, ifindex, slot, &b, now);

        prop_assert_eq!(fk, p.key);
        prop_assert_eq!(other_key(&fk, &fwd), rk);
        prop_assert_eq!(other_key(&rk, &rev), fk);
        prop_assert_eq!(other_key(&other_key(&fk, &fwd), &rev), fk);
        prop_assert_eq!(other_key(&other_key(&rk, &rev), &fwd), rk);
        prop_assert_eq!((fwd.direction, rev.direction), (direction::TO_BACKEND, direction::TO_CLIENT));
        prop_assert_eq!((fwd.backend_slot(), rev.backend_slot()), (slot, slot));
        prop_assert_eq!((rev.ifindex, rev.dmac, rev.smac, rev.has(flow_flags::L2_VALID)), (ifindex, eth.src, eth.dst, true));
        prop_assert!(!fwd.has(flow_flags::L2_VALID));
        let tick = flow_tick(now);
        prop_assert_eq!((fwd.created_tick, fwd.last_seen_tick, rev.last_seen_tick), (tick, tick, tick));

        // Client -> VIP rewritten with the forward entry: client -> backend, checksums
        // right, and the parser reads the forward entry's target.
        let mut g = f.clone();
        apply(&mut g, &p, &fwd);
        checksums_ok(&g)?;
        let q = parse_slice(&g).unwrap();
        prop_assert_eq!(q.key, FlowKey::new(p.key.src, b.addr, p.key.sport, b.port, p.key.proto));

        // The backend's answer carries the reply key; rewritten with the reply entry it
        // is VIP -> client with right checksums.
        let rf = reply_frame(&fr, &b);
        let r = rf.build();
        let rp = parse_slice(&r).unwrap();
        prop_assert_eq!(rp.key, rk);
        let mut h = r.clone();
        apply(&mut h, &rp, &rev);
        checksums_ok(&h)?;
        let hq = parse_slice(&h).unwrap();
        prop_assert_eq!(hq.key, FlowKey::new(p.key.dst, p.key.src, p.key.dport, p.key.sport, p.key.proto));

        // States: UDP both ways; a SYN opens both in SYN; anything else re-creates an
        // established flow (closing if the packet says so).
        if p.key.proto == PROTO_UDP {
            prop_assert_eq!((fwd.state, rev.state), (flow_state::UDP, flow_state::UDP));
        } else if is_syn(&p) {
            prop_assert_eq!((fwd.state, rev.state), (flow_state::SYN, flow_state::SYN));
        } else {
            prop_assert_eq!(fwd.state, next_state(flow_state::ESTABLISHED, PROTO_TCP, p.tcp_flags));
            prop_assert_eq!(rev.state, flow_state::ESTABLISHED);
        }
    }
}

fn tcp_state() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(flow_state::SYN),
        Just(flow_state::ESTABLISHED),
        Just(flow_state::FIN),
        Just(flow_state::CLOSED),
    ]
}

fn packet(proto: u8, flags: u8) -> Packet {
    Packet {
        l3_off: 14,
        l4_off: 34,
        payload_off: 54,
        ip_end: 54,
        key: FlowKey::new(1, 2, 3, 4, proto),
        tcp_flags: flags,
        ttl: 64,
        first_fragment: false,
        vlan: false,
    }
}

proptest! {
    #![proptest_config(super::config(10_000))]

    #[test]
    fn tcp_state_only_moves_forward(state in tcp_state(), flags in any::<u8>()) {
        let next = next_state(state, PROTO_TCP, flags);
        prop_assert!((flow_state::SYN..=flow_state::CLOSED).contains(&next));
        prop_assert!(next >= state, "{} -> {} on {:#x}", state, next, flags);
        if flags & TCP_RST != 0 {
            prop_assert_eq!(next, flow_state::CLOSED);
        } else if flags & TCP_FIN != 0 {
            prop_assert!(next >= flow_state::FIN);
        } else if state == flow_state::SYN && flags & TCP_ACK != 0 {
            prop_assert_eq!(next, flow_state::ESTABLISHED);
        } else {
            prop_assert_eq!(next, state);
        }
    }

    #[test]
    fn udp_state_is_udp(state in any::<u8>(), flags in any::<u8>(), proto in any::<u8>()) {
        let proto = if proto == PROTO_TCP { PROTO_UDP } else { proto };
        prop_assert_eq!(next_state(state, proto, flags), flow_state::UDP);
    }

    /// Ages from 32-bit ticks: within one tick below the true age for any age up to
    /// twice the longest timeout, across the tick counter's wrap, and 0 (never a
    /// huge age) for a stamp a little after `now`.
    #[test]
    fn tick_ages_follow_the_clock(
        then in any::<u64>(),
        age in prop_oneof![0u64..4_000_000_000, 0u64..(u64::from(MAX_FLOW_TIMEOUT_S) * 2_000_000_000)],
        ahead in 0u64..1_000_000_000,
    ) {
        let now = then.saturating_add(age);
        let true_age = now - then;
        let got = ns_since_tick(now, flow_tick(then));
        prop_assert!(got <= true_age + (1 << FLOW_TICK_SHIFT), "age {true_age} ns read as {got}");
        prop_assert!(got + (1 << FLOW_TICK_SHIFT) > true_age, "age {true_age} ns read as {got}");
        prop_assert_eq!(ns_since_tick(then, flow_tick(then.saturating_add(ahead))), 0);
    }

    /// `track` stores `next_state`, and the time when the state changes or the stored
    /// time is more than the granularity old; otherwise it leaves the entry alone.
    #[test]
    fn track_updates_as_documented(
        state in tcp_state(), flags in any::<u8>(), udp in prop::bool::ANY,
        last in any::<u32>(), now in any::<u64>(),
    ) {
        let proto = if udp { PROTO_UDP } else { PROTO_TCP };
        let mut flow = Flow { state: if udp { flow_state::UDP } else { state }, last_seen_tick: last, ..Flow::default() };
        let before = flow;
        track(&mut flow, &packet(proto, flags), now);
        let next = next_state(before.state, proto, flags);
        prop_assert_eq!(flow.state, next);
        if next != before.state || ns_since_tick(now, last) > LAST_SEEN_GRANULARITY_NS {
            prop_assert_eq!(flow.last_seen_tick, flow_tick(now));
        } else {
            prop_assert_eq!(flow, before);
        }
    }

    /// `still_valid`: false once idle past the state's timeout, false for a fresh SYN on
    /// an entry past its handshake, true otherwise.
    #[test]
    fn still_valid_is_the_documented_rule(
        state in prop_oneof![tcp_state(), Just(flow_state::UDP)], flags in any::<u8>(),
        last in any::<u64>(), idle in prop_oneof![0u64..2_000_000_000_000, 0u64..1 << 50],
        timeouts in (0u32..2000, 0u32..2000, 0u32..2000),
    ) {
        let config = Config {
            tcp_established_timeout_s: timeouts.0,
            tcp_transient_timeout_s: timeouts.1,
            udp_timeout_s: timeouts.2,
            ..Config::default()
        };
        let proto = if state == flow_state::UDP { PROTO_UDP } else { PROTO_TCP };
        let pkt = packet(proto, flags);
        let flow = Flow { state, last_seen_tick: flow_tick(last), ..Flow::default() };
        let now = last.saturating_add(idle);
        let idle_ns = ns_since_tick(now, flow_tick(last));
        let fresh_syn = proto == PROTO_TCP && flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        let expected = idle_ns <= config.timeout_ns(state) && !(fresh_syn && state != flow_state::SYN);
        prop_assert_eq!(still_valid(&flow, &pkt, now, &config), expected);
        prop_assert_eq!(is_syn(&pkt), fresh_syn);
    }
}

/// Modular inverse of an odd number, mod 2^32 (Newton's iteration).
fn inverse(a: u32) -> u32 {
    let mut x = a; // correct to 3 bits for odd a
    for _ in 0..5 {
        x = x.wrapping_mul(2u32.wrapping_sub(a.wrapping_mul(x)));
    }
    x
}

/// Inverse of `h ^= h >> s` for s >= 1.
fn unxorshift(h: u32, s: u32) -> u32 {
    let mut x = h;
    let mut k = s;
    while k < 32 {
        x = h ^ (x >> s);
        k += s;
    }
    x
}

fn unfmix32(mut h: u32) -> u32 {
    h = unxorshift(h, 16);
    h = h.wrapping_mul(inverse(0xc2b2_ae35));
    h = unxorshift(h, 13);
    h = h.wrapping_mul(inverse(0x85eb_ca6b));
    unxorshift(h, 16)
}

fn fnv1a_reference(bytes: &[u8], basis: u64) -> u64 {
    bytes.iter().fold(basis, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn splitmix_finish(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[test]
fn hash_references_match_published_values() {
    const BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    // FNV-1a 64 (draft-eastlake-fnv test vectors).
    assert_eq!(fnv1a_reference(b"", BASIS), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a_reference(b"a", BASIS), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a_reference(b"foobar", BASIS), 0x8594_4171_f739_67e8);
    // splitmix64 seeded with 0: first output.
    assert_eq!(
        splitmix_finish(0x9e37_79b9_7f4a_7c15),
        0xe220_a839_7b1d_cdaf
    );
    assert_eq!(unfmix32(fmix32(0x1234_5678)), 0x1234_5678);
}

fn key() -> impl Strategy<Value = FlowKey> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u16>(),
        any::<u16>(),
        any::<u8>(),
    )
        .prop_map(|(s, d, sp, dp, p)| FlowKey::new(s, d, sp, dp, p))
}

proptest! {
    #![proptest_config(super::config(10_000))]

    #[test]
    fn fmix32_is_a_bijection(x in any::<u32>()) {
        prop_assert_eq!(unfmix32(fmix32(x)), x);
        prop_assert_eq!(fmix32(unfmix32(x)), x);
    }

    /// Changing exactly one of source, destination, the port pair or the protocol always
    /// changes the hash (each is mixed in through bijections).
    #[test]
    fn flow_hash_changes_with_each_field(k in key(), other in key(), field in 0u8..4) {
        let mut m = k;
        match field {
            0 => m.src = other.src,
            1 => m.dst = other.dst,
            2 => { m.sport = other.sport; m.dport = other.dport; }
            _ => m.proto = other.proto,
        }
        if m == k {
            return Ok(()); // the "other" value happened to be the same
        }
        prop_assert_ne!(flow_hash(&m), flow_hash(&k));
    }

    #[test]
    fn fnv1a64_is_fnv1a_then_splitmix(bytes in proptest::collection::vec(any::<u8>(), 0..64), seed in any::<u64>()) {
        let expected = splitmix_finish(fnv1a_reference(&bytes, 0xcbf2_9ce4_8422_2325 ^ seed));
        prop_assert_eq!(fnv1a64(&bytes, seed), expected);
    }
}

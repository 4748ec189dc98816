//! Forwarding: the forward rewrite to a backend and the reply rewrite back, VLAN tags,
//! one-armed set-ups, retransmitted SYNs and closed tuples, backend states and removal,
//! UDP, checksums, next hops, lost flow entries, the lookup tables and slot reuse.

use std::net::{Ipv4Addr, SocketAddrV4};

use aya::maps::{HashMap, MapData};
use balancer_common::{backend_state, map_names, Counter, Flow, FlowKey};
use balancer_tests::{packet::*, testrun::*};
use balancer_user::Proto;

use super::{forward_ok, new_flow_forwarded, reply_ok, setup, tcp_backends, FLOWS};
use crate::{run, run_counted};

#[test]
fn vlan_tagged_syn_keeps_its_tag() {
    let (bed, svc, backends) = setup();
    let syn = Frame::to_vip(40000, SYN).vlan(42);
    let b = forward_ok(&bed, &syn, &backends);
    let r = run(&bed, &syn.build(), Ingress::Client);
    assert_eq!(decode_checked(&r.output).unwrap().vlan, Some(42));
    let data = Frame::to_vip(40000, PSH_ACK).vlan(42).payload(b"tagged");
    assert_eq!(forward_ok(&bed, &data, &backends), b);
    // The reply, tagged too, goes back with its tag.
    let reply = Frame::reply(b, client(40000), ACK).vlan(42).payload(b"ok");
    let out = reply_ok(&bed, &reply, Ingress::Client, XDP_TX);
    assert_eq!(out.vlan, Some(42));
    let _ = svc;
}

// --- Forwarding ---------------------------------------------------------------------------

#[test]
fn syn_is_forwarded_and_the_reply_translated_back() {
    let (bed, svc, backends) = setup();
    let sport = 40000;
    let syn = Frame::to_vip(sport, SYN);
    let input = syn.build();
    let out = new_flow_forwarded(&bed, &syn, Ingress::Client, XDP_REDIRECT, &backends, "SYN");
    let b = out.dst;
    assert_eq!(out.ttl, 63);
    let stats = bed.balancer().stats().unwrap();
    let bs = stats.backends.iter().find(|x| x.backend == b).unwrap();
    assert_eq!(
        (
            bs.counters.new_flows,
            bs.counters.packets_to,
            bs.counters.bytes_to
        ),
        (1, 1, input.len() as u64)
    );

    let flow = bed
        .flow_of(client(sport), vip(), Proto::Tcp)
        .unwrap()
        .expect("flow entry");
    assert_eq!(flow.backend, b);
    assert_eq!(flow.state, "syn");

    // The backend's SYN-ACK, received on the backends' side: back to the client's MAC
    // from the MAC it addressed, redirected to the client's interface.
    let synack_frame = Frame::reply(b, client(sport), SYN_ACK);
    let synack = synack_frame.build();
    let r = run_counted(
        &bed,
        &synack,
        Ingress::Backend,
        XDP_REDIRECT,
        &[
            (Counter::TxRedirect, 1),
            (Counter::TxBytes, synack.len() as u64),
        ],
        "SYN-ACK",
    );
    check_to_client(&synack, &r.output, vip(), client(sport)).unwrap();

    // The same reply arriving on the interface the client's SYN came in on: XDP_TX.
    reply_ok(&bed, &synack_frame, Ingress::Client, XDP_TX);

    // The handshake's ACK and data follow to the same backend.
    for f in [
        Frame::to_vip(sport, ACK),
        Frame::to_vip(sport, PSH_ACK).payload(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n"),
        Frame::to_vip(sport, PSH_ACK).payload(&[0x5a; 1001]),
    ] {
        assert_eq!(forward_ok(&bed, &f, &backends), b);
    }
    let flow = bed
        .flow_of(client(sport), vip(), Proto::Tcp)
        .unwrap()
        .unwrap();
    assert_eq!(flow.state, "established");
    let data = Frame::reply(b, client(sport), PSH_ACK).payload(&[0x33; 777]);
    reply_ok(&bed, &data, Ingress::Backend, XDP_REDIRECT);
    let stats = bed.balancer().stats().unwrap();
    let bs = stats.backends.iter().find(|x| x.backend == b).unwrap();
    assert_eq!((bs.counters.packets_to, bs.counters.packets_from), (4, 3));
    let _ = svc;
}

#[test]
fn one_armed_forward_uses_xdp_tx() {
    // Clients and backends behind the same interface: the forward direction goes back out
    // of the interface it came in on.
    let (bed, _, backends) = setup();
    let syn = Frame::to_vip(40000, SYN);
    assert_eq!(syn.build().len(), 54, "tx_bytes counts the 54-byte SYN");
    new_flow_forwarded(
        &bed,
        &syn,
        Ingress::Backend,
        XDP_TX,
        &backends,
        "one-armed SYN",
    );

    // Without a context the program sees the namespace's loopback as ingress.
    let input = Frame::to_vip(40001, SYN).build();
    let r = run(&bed, &input, Ingress::Loopback);
    assert_eq!(r.verdict, XDP_REDIRECT, "got {}", r.verdict_name());
    let b = decode_checked(&r.output).unwrap().dst;
    let reply = Frame::reply(b, client(40001), SYN_ACK).build();
    let r = run(&bed, &reply, Ingress::Loopback);
    assert_eq!(r.verdict, XDP_TX, "got {}", r.verdict_name());
}

#[test]
fn retransmitted_syn_and_closed_tuples() {
    let (bed, svc, backends) = setup();
    // A retransmitted SYN keeps the first decision, even once its backend is draining.
    let b = forward_ok(&bed, &Frame::to_vip(40000, SYN), &backends);
    bed.set_backend_state(svc, b, backend_state::DRAINING)
        .unwrap();
    let before = bed.counters().unwrap();
    assert_eq!(
        forward_ok(&bed, &Frame::to_vip(40000, SYN).seq(1000), &backends),
        b
    );
    assert_eq!(
        bed.counters().unwrap().delta(&before).get("new_flows"),
        None
    );
    let up: Vec<_> = backends.iter().copied().filter(|x| *x != b).collect();

    // After RST, a new SYN on the tuple is a new connection: picked again, and it must not
    // land on the draining backend.
    assert_eq!(forward_ok(&bed, &Frame::to_vip(40000, ACK), &backends), b);
    assert_eq!(forward_ok(&bed, &Frame::to_vip(40000, RST), &backends), b);
    assert_eq!(
        bed.flow_of(client(40000), vip(), Proto::Tcp)
            .unwrap()
            .unwrap()
            .state,
        "closed"
    );
    let before = bed.counters().unwrap();
    let b2 = forward_ok(&bed, &Frame::to_vip(40000, SYN).seq(777), &up);
    assert_eq!(
        bed.counters().unwrap().delta(&before).get("new_flows"),
        Some(&1)
    );
    let f = bed
        .flow_of(client(40000), vip(), Proto::Tcp)
        .unwrap()
        .unwrap();
    assert_eq!((f.state, f.backend), ("syn", b2));
    // ...and its reply comes back from the VIP.
    let reply = Frame::reply(b2, client(40000), SYN_ACK);
    reply_ok(&bed, &reply, Ingress::Backend, XDP_REDIRECT);

    // The same after a FIN.
    bed.set_backend_state(svc, b, backend_state::UP).unwrap();
    let c = forward_ok(&bed, &Frame::to_vip(41000, SYN), &backends);
    assert_eq!(forward_ok(&bed, &Frame::to_vip(41000, ACK), &backends), c);
    bed.set_backend_state(svc, c, backend_state::DRAINING)
        .unwrap();
    assert_eq!(
        forward_ok(&bed, &Frame::to_vip(41000, FIN_ACK), &backends),
        c
    );
    assert_eq!(
        bed.flow_of(client(41000), vip(), Proto::Tcp)
            .unwrap()
            .unwrap()
            .state,
        "fin"
    );
    let up: Vec<_> = backends.iter().copied().filter(|x| *x != c).collect();
    forward_ok(&bed, &Frame::to_vip(41000, SYN).seq(5), &up);
}

#[test]
fn draining_and_removed_backends() {
    let (bed, svc, backends) = setup();
    // Flows to every backend, established.
    let mut existing = Vec::new();
    for sport in 20000..20030 {
        let b = forward_ok(&bed, &Frame::to_vip(sport, SYN), &backends);
        forward_ok(&bed, &Frame::to_vip(sport, ACK), &backends);
        existing.push((sport, b));
    }
    let drained = existing[0].1;
    bed.set_backend_state(svc, drained, backend_state::DRAINING)
        .unwrap();
    let up: Vec<_> = backends.iter().copied().filter(|x| *x != drained).collect();
    let mut per_backend = std::collections::BTreeMap::new();
    for sport in 30000..30200 {
        let b = forward_ok(&bed, &Frame::to_vip(sport, SYN), &up);
        *per_backend.entry(b).or_insert(0) += 1;
    }
    assert_eq!(
        per_backend.len(),
        2,
        "both remaining backends get new flows: {per_backend:?}"
    );
    // Existing connections keep their backend, the draining one included.
    for (sport, b) in &existing {
        let f = Frame::to_vip(*sport, PSH_ACK).payload(b"more");
        assert_eq!(forward_ok(&bed, &f, &backends), *b);
    }
    let reply = Frame::reply(drained, client(existing[0].0), ACK);
    reply_ok(&bed, &reply, Ingress::Backend, XDP_REDIRECT);

    // Nobody left to take new flows: SYNs are dropped, existing flows still forwarded.
    bed.set_backend_state(svc, up[0], backend_state::DRAINING)
        .unwrap();
    bed.set_backend_state(svc, up[1], backend_state::DOWN)
        .unwrap();
    let syn = Frame::to_vip(50000, SYN).build();
    let new_refused_existing_kept = |what: &str| {
        run_counted(
            &bed,
            &syn,
            Ingress::Client,
            XDP_DROP,
            &[(Counter::DropNoBackend, 1)],
            what,
        );
        for (sport, b) in &existing {
            assert_eq!(forward_ok(&bed, &Frame::to_vip(*sport, ACK), &backends), *b);
        }
    };
    new_refused_existing_kept("SYN with no backend up");

    // Removed backends: the same.
    for b in &backends {
        bed.remove_backend(svc, *b).unwrap();
    }
    new_refused_existing_kept("SYN with every backend removed");
    // A backend added again takes the new flows.
    let fresh = SocketAddrV4::new(backend_addr(5), 8080);
    bed.add_backend(svc, fresh).unwrap();
    assert_eq!(
        forward_ok(&bed, &Frame::to_vip(50000, SYN), &[fresh]),
        fresh
    );
}

#[test]
fn udp_service() {
    let bed = TestBed::new(FLOWS).unwrap();
    let dns = SocketAddrV4::new(VIP, 53);
    let backends: Vec<_> = (20..22)
        .map(|i| SocketAddrV4::new(backend_addr(i), 5353))
        .collect();
    bed.add_service(dns, Proto::Udp, &backends).unwrap();
    let c = client(45000);

    let q = Frame::udp(c, dns, b"query one");
    let out = new_flow_forwarded(
        &bed,
        &q,
        Ingress::Client,
        XDP_REDIRECT,
        &backends,
        "UDP query",
    );
    let b = out.dst;
    assert_ne!(out.l4_checksum, 0);
    assert_eq!(
        bed.flow_of(c, dns, Proto::Udp).unwrap().unwrap().state,
        "udp"
    );

    // Without a checksum: stays without.
    let z = Frame::udp(c, dns, b"no checksum")
        .udp_zero_checksum()
        .build();
    let r = run(&bed, &z, Ingress::Client);
    assert_eq!(r.verdict, XDP_REDIRECT);
    let out = check_to_backend(&z, &r.output, c, b).unwrap();
    assert_eq!(out.l4_checksum, 0, "a zero UDP checksum must stay zero");

    // A datagram whose rewritten checksum computes to zero must carry 0xffff, not 0
    // ("no checksum"). Payload word = the checksum the rewritten datagram has with payload 0.
    let probe = Frame::udp(c, dns, &[0, 0]).build();
    let r = run(&bed, &probe, Ingress::Client);
    let w = decode_checked(&r.output).unwrap().l4_checksum;
    let tricky = Frame::udp(c, dns, &w.to_be_bytes()).build();
    let r = run(&bed, &tricky, Ingress::Client);
    let out = check_to_backend(&tricky, &r.output, c, b).unwrap();
    assert_eq!(
        out.l4_checksum, 0xffff,
        "a computed zero UDP checksum is sent as 0xffff"
    );

    // The answer comes back from the VIP.
    let a = Frame::udp(b, c, b"answer")
        .macs(backend_mac(*b.ip()), BACKEND_IF_MAC)
        .build();
    let r = run(&bed, &a, Ingress::Backend);
    assert_eq!(r.verdict, XDP_REDIRECT);
    check_to_client(&a, &r.output, dns, c).unwrap();
    let az = Frame::udp(b, c, b"answer")
        .macs(backend_mac(*b.ip()), BACKEND_IF_MAC)
        .udp_zero_checksum()
        .build();
    let r = run(&bed, &az, Ingress::Backend);
    let out = check_to_client(&az, &r.output, dns, c).unwrap();
    assert_eq!(out.l4_checksum, 0);

    // Many flows: every datagram valid and on a configured backend.
    for sport in 1000..1100 {
        let f = Frame::udp(client(sport), dns, &sport.to_be_bytes());
        forward_ok(&bed, &f, &backends);
    }
}

#[test]
fn checksums_stay_valid_across_many_tuples() {
    let (bed, _, backends) = setup();
    // Varied sources, ports and payload lengths (odd ones too).
    for i in 0..300u32 {
        let src = SocketAddrV4::new(
            Ipv4Addr::new(198, 18, (i % 7) as u8, (i * 37 % 250) as u8 + 2),
            1024 + (i * 211 % 60000) as u16,
        );
        let payload: Vec<u8> = (0..(i % 41)).map(|k| (k * 13 + i) as u8).collect();
        let f = Frame::tcp(src, vip(), SYN).payload(&payload);
        forward_ok(&bed, &f, &backends);
    }
}

// --- Next hop -----------------------------------------------------------------------------

#[test]
fn next_hop_resolution() {
    let bed = TestBed::new(FLOWS).unwrap();
    let lonely = SocketAddrV4::new(backend_addr(40), 8080);
    let svc = bed.add_service(vip(), Proto::Tcp, &[lonely]).unwrap();
    bed.del_neighbour(*lonely.ip()).unwrap();
    // No neighbour entry yet: the rewritten packet goes to the kernel, which resolves it.
    let syn = Frame::to_vip(40000, SYN).build();
    let r = run_counted(
        &bed,
        &syn,
        Ingress::Client,
        XDP_PASS,
        &[(Counter::NewFlows, 1), (Counter::PassNoNeighbour, 1)],
        "SYN without a neighbour entry",
    );
    let out = decode_checked(&r.output).unwrap();
    assert_eq!((out.src, out.dst), (client(40000), lonely));
    // The kernel forwards it and takes the TTL off itself: the balancer leaves it as is.
    assert_eq!(out.ttl, 64, "TTL of the packet handed to the kernel");
    // Once it is known, the flow's packets are forwarded by XDP.
    bed.add_neighbour(*lonely.ip()).unwrap();
    assert_eq!(
        forward_ok(&bed, &Frame::to_vip(40000, ACK), &[lonely]),
        lonely
    );

    // A backend without a route: dropped.
    bed.remove_backend(svc, lonely).unwrap();
    let far = SocketAddrV4::new(Ipv4Addr::new(198, 19, 200, 10), 8080);
    bed.balancer()
        .add_backend(
            svc,
            balancer_user::BackendSpec::new(far, balancer_user::Weight::new(100).unwrap()),
        )
        .unwrap();
    run_counted(
        &bed,
        &Frame::to_vip(40001, SYN).build(),
        Ingress::Client,
        XDP_DROP,
        &[(Counter::NewFlows, 1), (Counter::DropNoRoute, 1)],
        "SYN to a backend without a route",
    );
}

#[test]
fn lost_flow_entry_is_recreated_on_the_same_backend() {
    let (bed, _, backends) = setup();
    let b = forward_ok(&bed, &Frame::to_vip(40000, SYN), &backends);
    forward_ok(&bed, &Frame::to_vip(40000, ACK), &backends);
    // Forget both entries of the flow, as an eviction would.
    let mut map: HashMap<MapData, FlowKey, Flow> = bed
        .balancer()
        .map(map_names::FLOWS)
        .unwrap()
        .try_into()
        .unwrap();
    let keys: Vec<FlowKey> = map.keys().map(|k| k.unwrap()).collect();
    assert_eq!(keys.len(), 2);
    for k in keys {
        map.remove(&k).unwrap();
    }
    let before = bed.counters().unwrap();
    let f = Frame::to_vip(40000, PSH_ACK).payload(b"after the table was lost");
    assert_eq!(
        forward_ok(&bed, &f, &backends),
        b,
        "the consistent hash picks the same backend"
    );
    let delta = bed.counters().unwrap().delta(&before);
    assert_eq!(delta.get("flow_misses"), Some(&1), "{delta:?}");
    assert_eq!(delta.get("new_flows"), None, "{delta:?}");
    let flow = bed
        .flow_of(client(40000), vip(), Proto::Tcp)
        .unwrap()
        .unwrap();
    assert_eq!(flow.state, "established");
    let reply = Frame::reply(b, client(40000), ACK);
    reply_ok(&bed, &reply, Ingress::Backend, XDP_REDIRECT);
}

/// The control plane writes the lookup tables through a memory mapping; the data plane
/// (and the map syscalls) must see every entry of them.
#[test]
fn every_table_entry_names_a_backend_of_its_service() {
    let (bed, svc, backends) = setup();
    // A second service, with its own table.
    let other = SocketAddrV4::new(Ipv4Addr::new(198, 18, 100, 9), 80);
    bed.add_service(other, Proto::Tcp, &tcp_backends(2)[..1])
        .unwrap();
    let ring: aya::maps::Array<aya::maps::MapData, u32> = bed
        .balancer()
        .map(balancer_common::map_names::RING)
        .unwrap()
        .try_into()
        .unwrap();
    let slots: Vec<u32> = bed
        .balancer()
        .backends(Some(svc))
        .unwrap()
        .iter()
        .map(|b| b.slot)
        .collect();
    assert_eq!(slots.len(), backends.len());
    let id = bed
        .balancer()
        .services()
        .unwrap()
        .iter()
        .find(|s| s.service == svc)
        .unwrap()
        .id;
    let size = balancer_common::RING_SIZE;
    let mut count = std::collections::HashMap::new();
    for i in 0..size {
        let slot = ring.get(&(id * size + i), 0).unwrap();
        assert!(slots.contains(&slot), "entry {i}: slot {slot}");
        *count.entry(slot).or_insert(0) += 1;
    }
    assert_eq!(count.len(), slots.len(), "{count:?}");
}

/// The next hop towards a backend is cached per backend slot; a slot that is reused by
/// another backend must not send new flows to the old backend's MAC.
#[test]
fn reused_backend_slot_gets_its_own_next_hop() {
    let bed = TestBed::new(FLOWS).expect("test bed");
    let [a, b] = [backend_addr(0), backend_addr(1)].map(|ip| SocketAddrV4::new(ip, 8080));
    let svc = bed.add_service(vip(), Proto::Tcp, &[a]).unwrap();
    let slot_of = |ep: SocketAddrV4| {
        bed.balancer()
            .backends(Some(svc))
            .unwrap()
            .into_iter()
            .find(|x| x.backend == ep)
            .map(|x| x.slot)
    };
    let first = slot_of(a).unwrap();
    for (i, backend) in [(1u16, a), (2, a)] {
        let r = run(
            &bed,
            &Frame::tcp(client(40000 + i), vip(), SYN).build(),
            Ingress::Client,
        );
        let d = decode_checked(&r.output).unwrap();
        assert_eq!((d.dst, d.dst_mac), (backend, backend_mac(*backend.ip())));
    }
    bed.remove_backend(svc, a).unwrap();
    bed.add_backend(svc, b).unwrap();
    assert_eq!(slot_of(b), Some(first), "the slot is reused");
    let r = run(
        &bed,
        &Frame::tcp(client(40010), vip(), SYN).build(),
        Ingress::Client,
    );
    let d = decode_checked(&r.output).unwrap();
    assert_eq!((d.dst, d.dst_mac), (b, backend_mac(*b.ip())));
}

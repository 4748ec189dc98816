//! Traffic that is not the balancer's, malformed and odd packets, and refused service
//! packets: passed untouched or dropped, counted, leaving no state.

use std::net::{Ipv4Addr, SocketAddrV4};

use balancer_common::Counter;
use balancer_tests::{packet::*, testrun::*};

use super::{edited_syn, forward_ok, fragment, setup};
use crate::{run, run_cases, Case};

/// A first fragment to the service cannot be translated whole: dropped, and only counted
/// as that (nothing sent, nothing malformed).
fn first_fragment() -> Case {
    Case::dropped(
        "first fragment",
        fragment(0x2000),
        Ingress::Client,
        Counter::DropFragment,
    )
}

// --- Traffic that is not the balancer's --------------------------------------------------

#[test]
fn non_service_traffic_passes_untouched() {
    let (bed, _, backends) = setup();
    let other_vip = SocketAddrV4::new(Ipv4Addr::new(198, 18, 100, 2), 80);
    let other_port = SocketAddrV4::new(VIP, 81);
    let not_service =
        |what: &str, frame: Vec<u8>| Case::passed(what, frame, Counter::PassNotService);
    run_cases(
        &bed,
        &[
            not_service(
                "TCP SYN to another address",
                Frame::tcp(client(40000), other_vip, SYN).build(),
            ),
            not_service(
                "TCP SYN to another port of the VIP",
                Frame::tcp(client(40000), other_port, SYN).build(),
            ),
            not_service(
                "UDP to the VIP's TCP port",
                Frame::udp(client(40000), vip(), b"x").build(),
            ),
            not_service("ARP request", arp_frame()),
            not_service("IPv6 TCP SYN", ipv6_syn_frame()),
            not_service("ICMP echo to the VIP", icmp_echo_frame()),
            not_service(
                "tagged SYN to another address",
                Frame::tcp(client(40000), other_vip, SYN).vlan(7).build(),
            ),
            // A reply whose entry expired or was evicted: not the balancer's any more.
            not_service(
                "reply without a flow",
                Frame::reply(backends[0], client(40000), ACK).build(),
            ),
        ],
    );
    assert!(bed.flows().unwrap().is_empty(), "no flow may be created");
}

// --- Malformed and odd packets ------------------------------------------------------------

#[test]
fn truncated_syn_at_every_offset_passes_untouched() {
    let (bed, _, backends) = setup();
    let full = Frame::to_vip(40000, SYN).build();
    for len in 0..14 {
        assert!(
            bed.run(&full[..len], Ingress::Client).is_err(),
            "the kernel refuses frames shorter than an Ethernet header ({len} bytes)"
        );
    }
    let mut cases: Vec<Case> = (14..full.len())
        .map(|len| {
            Case::passed(
                format!("SYN cut to {len} bytes"),
                full[..len].to_vec(),
                Counter::PassMalformed,
            )
        })
        .collect();
    // A data segment cut inside its payload.
    let data = Frame::to_vip(40001, PSH_ACK)
        .payload(b"GET / HTTP/1.1\r\n\r\n")
        .build();
    cases.extend([data.len() - 1, data.len() - 10, 55].map(|len| {
        Case::passed(
            format!("data cut to {len} bytes"),
            data[..len].to_vec(),
            Counter::PassMalformed,
        )
    }));
    run_cases(&bed, &cases);
    assert!(bed.flows().unwrap().is_empty(), "no flow may be created");
    // The whole frame is forwarded.
    forward_ok(&bed, &Frame::to_vip(40000, SYN), &backends);
}

#[test]
fn invalid_headers_pass_untouched() {
    let (bed, _, _) = setup();
    let set_tot_len = |f: &mut Vec<u8>, v: u16| f[16..18].copy_from_slice(&v.to_be_bytes());
    let malformed =
        |what: String, frame: Vec<u8>| Case::passed(what, frame, Counter::PassMalformed);
    let mut cases: Vec<Case> = (0..5u8)
        .map(|ihl| malformed(format!("IHL {ihl}"), edited_syn(|f| f[14] = 0x40 | ihl)))
        .collect();
    cases.push(malformed(
        "IHL 15 beyond the datagram".into(),
        edited_syn(|f| f[14] = 0x4f),
    ));
    cases.push(malformed(
        "IP version 6 in an IPv4 frame".into(),
        edited_syn(|f| f[14] = 0x65),
    ));
    for doff in [0u8, 4] {
        cases.push(malformed(
            format!("TCP data offset {doff}"),
            edited_syn(|f| f[46] = doff << 4),
        ));
    }
    cases.push(malformed(
        "TCP data offset beyond the datagram".into(),
        edited_syn(|f| f[46] = 0xf0),
    ));
    cases.push(malformed(
        "total length beyond the frame".into(),
        edited_syn(|f| set_tot_len(f, 41)),
    ));
    cases.push(malformed(
        "total length below the IP header".into(),
        edited_syn(|f| set_tot_len(f, 19)),
    ));
    cases.push(malformed(
        "total length below the TCP header".into(),
        edited_syn(|f| set_tot_len(f, 39)),
    ));
    let udp = {
        let mut f = Frame::udp(client(40000), SocketAddrV4::new(VIP, 53), b"").build();
        f[16..18].copy_from_slice(&27u16.to_be_bytes());
        fix_ipv4_checksum(&mut f, 14);
        f
    };
    cases.push(malformed("UDP header beyond the datagram".into(), udp));
    run_cases(&bed, &cases);
    assert!(bed.flows().unwrap().is_empty(), "no flow may be created");
}

#[test]
fn fragments() {
    let (bed, _, _) = setup();
    // A first fragment to another address is not the balancer's business.
    let other = {
        let mut f = Frame::tcp(
            client(40000),
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 100, 9), 80),
            SYN,
        )
        .build();
        f[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
        fix_ipv4_checksum(&mut f, 14);
        f
    };
    run_cases(
        &bed,
        &[
            // A non-first fragment has no ports: passed as it is.
            Case::passed("non-first fragment", fragment(185), Counter::PassFragment),
            Case::passed(
                "middle fragment",
                fragment(0x2000 | 185),
                Counter::PassFragment,
            ),
            first_fragment(),
            Case::passed(
                "first fragment to another address",
                other,
                Counter::PassNotService,
            ),
        ],
    );
}

#[test]
fn ttl_and_ip_options() {
    let (bed, _, backends) = setup();
    // TTL 0 and 1 expire here: passed to the kernel (which answers with ICMP), nothing
    // sent.
    let expired: Vec<Case> = [0u8, 1]
        .map(|ttl| {
            Case::passed(
                format!("TTL {ttl}"),
                Frame::to_vip(40000 + ttl as u16, SYN).ttl(ttl).build(),
                Counter::PassTtlExceeded,
            )
        })
        .into();
    run_cases(&bed, &expired);
    // TTL 2 still goes through, leaving with 1.
    forward_ok(&bed, &Frame::to_vip(40010, SYN).ttl(2), &backends);

    // Options: 4 bytes (NOP NOP NOP EOL), and 12 (router alert, NOPs, EOL).
    let opts: [&[u8]; 2] = [&[1, 1, 1, 0], &[0x94, 4, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0]];
    for (i, o) in opts.into_iter().enumerate() {
        let sport = 40100 + i as u16;
        let syn = Frame::to_vip(sport, SYN).ip_options(o);
        let b = forward_ok(&bed, &syn, &backends);
        let data = Frame::to_vip(sport, PSH_ACK)
            .ip_options(o)
            .payload(b"hello, options");
        assert_eq!(
            forward_ok(&bed, &data, &backends),
            b,
            "options: same backend"
        );
        let r = run(&bed, &syn.build(), Ingress::Client);
        let out = decode_checked(&r.output).unwrap();
        assert_eq!(out.ip_options, o, "options preserved");
    }
}

#[test]
fn padded_frame_keeps_its_padding() {
    let (bed, _, backends) = setup();
    let syn = Frame::to_vip(40000, SYN);
    let mut input = syn.build();
    input.resize(60, 0xa5); // Ethernet minimum size, padded after the datagram
    let r = run(&bed, &input, Ingress::Client);
    assert_eq!(r.verdict, XDP_REDIRECT, "got {}", r.verdict_name());
    assert_eq!(r.output.len(), 60);
    assert_eq!(&r.output[54..], &[0xa5; 6], "padding unchanged");
    let out = decode_checked(&r.output).unwrap();
    assert!(backends.contains(&out.dst));
}

// --- Refused service packets leave no state -----------------------------------------

#[test]
fn refused_service_packets_create_no_flow() {
    let (bed, _, _) = setup();
    run_cases(
        &bed,
        &[
            first_fragment(),
            Case::passed(
                "TTL 1",
                Frame::to_vip(40001, SYN).ttl(1).build(),
                Counter::PassTtlExceeded,
            ),
        ],
    );
    assert!(
        bed.flows().unwrap().is_empty(),
        "flows: {:?}",
        bed.flows().unwrap()
    );
}

// --- The harness's own checks -------------------------------------------------------------

#[test]
fn harness_checks_detect_broken_frames() {
    // No root needed: this only exercises the packet builders and validators.
    let syn = Frame::to_vip(40000, SYN).build();
    decode_checked(&syn).expect("a built SYN is valid");
    let mut bad_ip = syn.clone();
    bad_ip[24] ^= 1; // IPv4 header checksum
    assert!(decode_checked(&bad_ip).is_err());
    let mut bad_tcp = syn.clone();
    bad_tcp[50] ^= 1; // TCP checksum
    assert!(decode_checked(&bad_tcp).is_err());
    let mut bad_addr = syn.clone();
    bad_addr[33] ^= 1; // destination address without checksum update
    assert!(decode_checked(&bad_addr).is_err());

    let udp = Frame::udp(client(1), SocketAddrV4::new(VIP, 53), b"abc");
    let d = decode_checked(&udp.build()).unwrap();
    assert_ne!(d.l4_checksum, 0);
    let z = decode_checked(&udp.clone().udp_zero_checksum().build()).unwrap();
    assert_eq!(z.l4_checksum, 0, "no checksum is accepted as such");

    let opts = Frame::to_vip(1, SYN)
        .ip_options(&[1, 1, 1, 0])
        .vlan(9)
        .build();
    let d = decode_checked(&opts).unwrap();
    assert_eq!(
        (d.ip_options.as_slice(), d.vlan),
        (&[1u8, 1, 1, 0][..], Some(9))
    );

    // check_forwarded (through check_to_backend): an unchanged frame is not a forwarded one
    // (TTL, addresses).
    let b = SocketAddrV4::new(backend_addr(0), 8080);
    assert!(check_to_backend(&syn, &syn, client(40000), b).is_err());
    assert_eq!(backend_mac(backend_addr(1)), [2, 0, 0, 0, 1, 11]);
    assert_eq!(xdp_md(54, 3)[4..8], 54u32.to_ne_bytes());
}

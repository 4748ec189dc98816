//! The TC fallback: the TC program completes a binding and leaves other packets alone.

use super::*;

// --- The TC fallback ----------------------------------------------------------------------

/// XDP's half of the fallback (pass the SYN-ACK when `bpf_xdp_adjust_tail` cannot grow
/// the frame) cannot be provoked here: `BPF_PROG_TEST_RUN` gives an XDP program a whole
/// page (about 3.5 KB of room after the headroom), and a kept segment is at most 1,536
/// bytes. So the TC program is run directly on the SYN-ACK, as the kernel would after
/// that `XDP_PASS`.
#[test]
fn tc_program_completes_the_binding() {
    let (bed, _, backends) = setup();
    let payload = request_head(1400, 1.0, "be2", "be1");
    let conn = handshake(&bed, Conn::new(40000, 0x0bad_cafe, 1460));
    bind(&bed, &conn, &payload, backends[1], Choice::Hit, None);
    let b = 0xfff0_0000;
    let synack = conn.backend_synack(backends[1], b).build();
    let expected = conn.expected_segment(&payload, backends[1], b);
    let r = tc_counted(
        &bed,
        &synack,
        TC_ACT_REDIRECT,
        &[
            (Counter::SplicedByTc, 1),
            (Counter::BindingsCompleted, 1),
            (Counter::TxRedirect, 1),
            (Counter::TxBytes, expected.build().len() as u64),
        ],
        "SYN-ACK through TC",
    );
    check_frame(&r.output, &expected).expect("kept segment built by TC");
    assert_spliced(&bed, &conn, backends[1], b);

    // XDP carries on with the spliced flow.
    let ack = Frame::tcp(conn.client, vip(), ACK)
        .seq(conn.isn.wrapping_add(1 + payload.len() as u32))
        .ack(conn.cookie.wrapping_add(101));
    spliced_to_backend(
        &bed,
        &conn,
        &ack,
        backends[1],
        b,
        "spliced ACK after the TC splice",
    );

    // The same SYN-ACK again is the spliced flow's business now (XDP's), not TC's.
    let r = tc_counted(&bed, &synack, TC_ACT_OK, &[], "SYN-ACK after the splice");
    assert_eq!(r.output, synack, "passed untouched");
}

#[test]
fn tc_program_leaves_other_packets_alone() {
    let (bed, _, backends) = setup();
    // A plain NAT service next to the cookie one.
    let nat_vip = SocketAddrV4::new(Ipv4Addr::new(198, 18, 100, 2), 80);
    let nat_backend = be(20);
    bed.add_service(nat_vip, balancer_user::Proto::Tcp, &[nat_backend])
        .unwrap();
    let syn = Frame::tcp(client(50000), nat_vip, SYN).build();
    assert_eq!(run(&bed, &syn, Ingress::Client).verdict, XDP_REDIRECT);

    let conn = handshake(&bed, Conn::new(40000, 1, 1460));
    bind(
        &bed,
        &conn,
        &http_get("be1"),
        backends[0],
        Choice::Hit,
        None,
    );

    let frames: Vec<(&str, Vec<u8>)> = vec![
        (
            "SYN-ACK of a NAT flow",
            Frame::reply(nat_backend, client(50000), SYN_ACK).build(),
        ),
        (
            "SYN-ACK without a flow",
            Frame::reply(backends[2], client(50001), SYN_ACK).build(),
        ),
        (
            "data from a binding backend",
            Frame::reply(backends[0], conn.client, PSH_ACK)
                .payload(b"not a SYN-ACK")
                .build(),
        ),
        ("client segment of a binding flow", conn.data(b"x").build()),
        ("ARP", arp_frame()),
        ("IPv6", ipv6_syn_frame()),
        ("UDP", Frame::udp(client(1), vip(), b"u").build()),
    ];
    for (what, f) in &frames {
        let r = tc_counted(&bed, f, TC_ACT_OK, &[], what);
        assert_eq!(&r.output, f, "{what}: passed untouched");
    }
    // A SYN-ACK for the binding flow that acknowledges something else: never to the
    // client, dropped.
    let wrong = conn
        .backend_synack(backends[0], 5)
        .ack(conn.isn.wrapping_add(9))
        .build();
    tc_counted(
        &bed,
        &wrong,
        TC_ACT_SHOT,
        &[(Counter::DropWhileBinding, 1)],
        "SYN-ACK with a wrong ack",
    );
    let (fwd, _) = entries(&bed, &conn, backends[0]);
    assert_eq!(fwd.phase, phase::BINDING);
}

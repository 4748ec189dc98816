//! Phases 3 and 4: the first data segment binds, the backend's SYN-ACK delivers the
//! kept segment; retransmissions while binding.

use super::*;

// --- Phase 3: the first data segment ----------------------------------------------------

#[test]
fn first_segment_binds_to_the_backend_its_cookie_names() {
    let (bed, _, backends) = setup();
    let conn = handshake(&bed, Conn::new(40000, 0xdead_beef, 1460));
    handshake_ack_validates(&bed, &conn, "handshake ACK");
    let payload = http_get("be2");
    bind(&bed, &conn, &payload, backends[1], Choice::Hit, None);

    // Both entries: binding, waiting for the backend's SYN-ACK.
    let (fwd, rev) = entries(&bed, &conn, backends[1]);
    for (what, f, dir) in [
        ("forward", fwd, direction::TO_BACKEND),
        ("reply", rev, direction::TO_CLIENT),
    ] {
        assert_eq!(
            (
                f.phase,
                f.state,
                f.direction,
                f.client_isn,
                // Until the backend's SYN-ACK, the sequence shift's field holds the
                // syncookie ISN.
                f.cookie_isn(),
            ),
            (phase::BINDING, flow_state::SYN, dir, conn.isn, conn.cookie,),
            "{what} entry"
        );
    }
    // What the SYN to the backend offers is kept with the segment: the client's MSS and
    // options (none here).
    let pending = bed
        .pending(&reply_key(&conn, backends[1]))
        .unwrap()
        .expect("PENDING value");
    assert_eq!(
        (pending.mss, pending.client_options, pending.client_tsval()),
        (1460, ClientOptions::default().to_byte(), 0)
    );
    assert!(
        fwd.has(flow_flags::L2_VALID),
        "the next hop resolved for the SYN is cached"
    );
    assert_binding(&bed, &conn, backends[1], "bound");
    let info = bed
        .flow_of(conn.client, vip(), balancer_user::Proto::Tcp)
        .unwrap()
        .expect("flow listed");
    assert_eq!(
        (info.phase, info.state, info.backend.to_string().as_str()),
        ("binding", "syn", "198.18.1.11:8080")
    );

    // The segment is kept as received, already addressed to the backend's port, its
    // checksum valid for client -> backend.
    let kept = bed
        .pending_segment(&reply_key(&conn, backends[1]))
        .unwrap()
        .expect("kept segment");
    assert_eq!(kept.len(), 20 + payload.len());
    let want = conn
        .data(&payload)
        .addressed(
            BACKEND_IF_MAC,
            backend_mac(*backends[1].ip()),
            conn.client,
            backends[1],
        )
        .build();
    assert_eq!(kept, want[34..], "kept segment");

    // The MSS to the backend is the client's from the cookie (not capped); IP options of
    // the first segment are not carried over.
    for (i, mss) in [536u16, 1300, 8960].into_iter().enumerate() {
        let c = handshake(&bed, Conn::new(40100 + i as u16, i as u32, mss));
        bind(&bed, &c, &http_get("be3"), backends[2], Choice::Hit, None);
    }
    let c = handshake(&bed, Conn::new(40200, 5, 1460));
    let input = c.data(&http_get("be1")).ip_options(&[1, 1, 1, 0]).build();
    let r = run(&bed, &input, Ingress::Client);
    assert_eq!(r.verdict, XDP_REDIRECT);
    check_frame(&r.output, &c.expected_backend_syn(backends[0])).expect("SYN without options");
    // ...nor into the kept segment, which gets a fresh IPv4 header.
    complete(&bed, &c, &http_get("be1"), backends[0], 1234);
}

// --- Phase 4: the backend's SYN-ACK -----------------------------------------------------

#[test]
fn backend_synack_delivers_the_kept_segment() {
    let (bed, svc, backends) = setup();
    // A full-size first segment (the frame grows from the 58-byte SYN-ACK to 1,474
    // bytes), and a 1-byte one (it shrinks: the SYN-ACK carries an option).
    let big = request_head(1400, 0.5, "be2", "be3");
    let tiny = b"G".to_vec();
    for (i, (payload, named, outcome)) in [
        (big, Some(backends[1]), None),
        (tiny, None, Some(Counter::CookieBeyondFirstSegment)),
    ]
    .into_iter()
    .enumerate()
    {
        let conn = handshake(&bed, Conn::new(40000 + i as u16, 0x0100_0000, 1460));
        let (backend, choice) = match named {
            Some(b) => (b, Choice::Hit),
            None => (
                bed.policy_backend(svc, &conn.key()).unwrap(),
                Choice::Policy,
            ),
        };
        bind(&bed, &conn, &payload, backend, choice, outcome);
        let b = 0x9000_0000 + i as u32;
        complete(&bed, &conn, &payload, backend, b);
        assert_eq!(
            bed.flow_of(conn.client, vip(), balancer_user::Proto::Tcp)
                .unwrap()
                .unwrap()
                .phase,
            "spliced"
        );
    }
}

#[test]
fn unexpected_packets_while_binding_are_dropped() {
    let (bed, _, backends, conn, payload) = one_binding(500, 0);
    let b = 123_456;
    let from_backend = [
        (
            "SYN-ACK acknowledging another ISN",
            conn.backend_synack(backends[0], b)
                .ack(conn.isn.wrapping_add(2)),
        ),
        (
            "plain ACK from the backend",
            Frame::reply(backends[0], conn.client, ACK)
                .seq(b)
                .ack(conn.isn + 1),
        ),
        (
            "RST from the backend",
            Frame::reply(backends[0], conn.client, RST).seq(0),
        ),
        (
            "SYN-ACK with RST",
            conn.backend_synack(backends[0], b).flags(TcpFlags {
                rst: true,
                ..SYN_ACK
            }),
        ),
    ];
    let later = conn
        .data(b"second segment")
        .seq(conn.isn.wrapping_add(1 + payload.len() as u32));
    let from_client = [
        ("the handshake ACK again", conn.handshake_ack()),
        ("a later client segment", later),
    ];
    let while_binding = |ingress: Ingress| {
        move |(what, f): (&str, Frame)| Case {
            output: Output::Unchecked,
            ..Case::dropped(what, f.build(), ingress, Counter::DropWhileBinding)
        }
    };
    let cases: Vec<Case> = from_backend
        .into_iter()
        .map(while_binding(Ingress::Backend))
        .chain(from_client.into_iter().map(while_binding(Ingress::Client)))
        .collect();
    run_cases(&bed, &cases);
    // Still binding; the right SYN-ACK completes it.
    let (fwd, rev) = entries(&bed, &conn, backends[0]);
    assert_eq!((fwd.phase, rev.phase), (phase::BINDING, phase::BINDING));
    complete(&bed, &conn, &payload, backends[0], b);
}

// --- Retransmissions --------------------------------------------------------------------

#[test]
fn retransmitted_first_segment_resends_the_backend_syn() {
    let (bed, _, backends, conn, payload) = one_binding(0xffff_fffe, 2);
    for round in 0..2 {
        let counters = [
            (Counter::BindRetransmits, 1),
            (Counter::TxRedirect, 1),
            (Counter::TxBytes, BUILT_SYN_LEN),
        ];
        let what = format!("retransmission {round} of the first segment");
        assert_eq!(
            first_segment_again(&bed, &conn, &payload, backends[2], &counters, &what),
            BTreeMap::from([(
                backends[2],
                BackendCountersValues {
                    packets_to: 1,
                    bytes_to: BUILT_SYN_LEN,
                    ..Default::default()
                }
            )])
        );
    }
    assert_binding(
        &bed,
        &conn,
        backends[2],
        "no new entries for a retransmission",
    );
    complete(&bed, &conn, &payload, backends[2], 77);
    // Once spliced, the same segment is an ordinary retransmission for the backend.
    let again = conn.data(&payload);
    let forwarded = conn.forwarded_to_backend(&again, backends[2], 77);
    let what = "first segment again, spliced";
    run_case(
        &bed,
        &Case::redirected(what, &again, Ingress::Client, forwarded),
    );
}

#[test]
fn binding_times_out_with_a_rst_to_the_client() {
    let (bed, _, backends, conn, payload) = one_binding(31337, 1);
    let other = handshake(&bed, Conn::new(40001, 4242, 1460));
    bind(&bed, &other, &payload, backends[1], Choice::Hit, None);

    // The backend does not answer; past the bind timeout (3 s) the client's
    // retransmission gets a RST from the VIP and the connection is forgotten.
    std::thread::sleep(Duration::from_millis(3100));
    let r = run_counted(
        &bed,
        &conn.data(&payload).build(),
        Ingress::Client,
        XDP_TX,
        &[(Counter::BindingsTimedOut, 1)],
        "retransmission after the bind timeout",
    );
    let rst = Frame::tcp(vip(), conn.client, RST)
        .macs(CLIENT_IF_MAC, CLIENT_MAC)
        .seq(conn.cookie.wrapping_add(1))
        .window(0);
    check_frame(&r.output, &rst).expect("RST to the client");
    assert_eq!(bed.flow_entry(&conn.key()).unwrap(), None);
    assert_eq!(
        bed.flow_entry(&tcp_key(backends[1], conn.client)).unwrap(),
        None
    );
    assert_eq!(
        bed.pending_segment(&reply_key(&conn, backends[1])).unwrap(),
        None
    );
    // The other connection is untouched; its late SYN-ACK still completes it.
    complete(&bed, &other, &payload, backends[1], 99);

    // A late SYN-ACK of the reset connection is no longer the balancer's.
    let late = conn.backend_synack(backends[1], 5).build();
    let r = run_counted(
        &bed,
        &late,
        Ingress::Backend,
        XDP_PASS,
        &[(Counter::PassNotService, 1)],
        "late SYN-ACK",
    );
    assert_eq!(r.output, late);
}

/// A backend that did not get the kept segment repeats its SYN-ACK: once spliced, that is
/// forwarded to the client like any spliced packet (its sequence number becomes `K`: a
/// duplicate of the syncookie SYN-ACK), the client answers with an ACK, and its
/// retransmission of the first segment reaches the backend through the splice
/// (docs/delayed-binding.md, "Retransmissions"). The kept segment is released when the
/// splice completes.
#[test]
fn repeated_backend_synack_after_splice_reaches_the_client() {
    let (bed, _, backends) = setup();
    let payload = http_get("be1");
    let b = 0x4000_0000;
    let conn = spliced(&bed, Conn::new(40000, 9, 1460), backends[0], "be1", b);
    let synack = conn.backend_synack(backends[0], b);
    let forwarded = conn.forwarded_to_client(&synack, b);
    let what = "repeated backend SYN-ACK, forwarded to the client";
    run_case(
        &bed,
        &Case::redirected(what, &synack, Ingress::Backend, forwarded),
    );
    // The client's duplicate ACK and its retransmitted first segment go to the backend,
    // acknowledging the backend's ISN.
    let (dup, again) = (conn.handshake_ack(), conn.data(&payload));
    spliced_to_backend(&bed, &conn, &dup, backends[0], b, "client ACK");
    spliced_to_backend(&bed, &conn, &again, backends[0], b, "first segment again");
    assert_spliced(&bed, &conn, backends[0], b);
}

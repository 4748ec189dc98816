//! A backend that fails the binding: refusal, a stale ACK, a retransmission after the
//! failure.

use super::*;

/// A backend that refuses the connection (RST|ACK to the balancer's SYN, nothing
/// listening): the client gets the RST at once, in its own sequence space (the
/// syncookie's), from the VIP, and the connection is forgotten. A RST that does not
/// answer our SYN is dropped and changes nothing.
#[test]
fn backend_refusal_resets_the_client_at_once() {
    let (bed, _, backends, conn, _) = one_binding(5000, 1);
    let refusal = |ack: u32| {
        Frame::reply(backends[1], conn.client, RST_ACK)
            .seq(0)
            .ack(ack)
            .window(0)
            .build()
    };
    // Blind RST (wrong ack): dropped, the binding goes on.
    run_counted(
        &bed,
        &refusal(conn.isn.wrapping_add(7)),
        Ingress::Backend,
        XDP_DROP,
        &[(Counter::DropWhileBinding, 1)],
        "RST not answering our SYN",
    );
    assert_binding(&bed, &conn, backends[1], "after a blind RST");
    let r = run_counted(
        &bed,
        &refusal(conn.isn.wrapping_add(1)),
        Ingress::Backend,
        XDP_REDIRECT,
        &[
            (Counter::BindingsRefused, 1),
            (Counter::TxRedirect, 1),
            (Counter::TxBytes, 54),
        ],
        "backend refusal",
    );
    let d = decode_checked(&r.output).expect("RST to the client");
    assert_eq!((d.src, d.dst), (vip(), conn.client));
    assert_eq!(
        d.seq,
        Some(conn.cookie.wrapping_add(1)),
        "in the client's window"
    );
    assert_eq!(d.ack, Some(conn.isn.wrapping_add(1)));
    let flags = d.tcp_flags.unwrap();
    assert!(flags.rst && flags.ack, "{flags:?}");
    assert_no_state(&bed, "connection forgotten");
}

/// The backend's TIME-WAIT of an earlier connection on the same 4-tuple answers the SYN
/// with an ACK of that old connection. The first time, XDP passes it to the TC program,
/// which resets the old connection (`<SEQ=SEG.ACK><CTL=RST>`, sent as a copy) and turns
/// the ACK into the SYN again, so the binding goes on at once. A second stale ACK gets the
/// RST alone from XDP; the binding stays for the client's retransmission.
#[test]
fn stale_ack_from_the_backend_is_reset_and_the_syn_sent_again() {
    let (bed, _, backends, conn, payload) = one_binding(9000, 0);
    let old_ack = 0x4000_0000;
    let stale = Frame::reply(backends[0], conn.client, ACK)
        .seq(0x1234_5678)
        .ack(old_ack)
        .build();
    let r = run_counted(
        &bed,
        &stale,
        Ingress::Backend,
        XDP_PASS,
        &[(Counter::PassStaleAckToTc, 1)],
        "first stale ACK",
    );
    assert_eq!(r.output, stale, "passed to TC untouched");
    let r = tc_counted(
        &bed,
        &stale,
        TC_ACT_REDIRECT,
        &[(Counter::BindStaleAcks, 1), (Counter::BindRetransmits, 1)],
        "stale ACK through TC",
    );
    check_frame(&r.output, &conn.expected_backend_syn(backends[0]).ttl(64))
        .expect("the SYN again, after the RST");
    assert_binding(&bed, &conn, backends[0], "still binding");
    // TC acts once per binding; XDP answers a later stale ACK with the RST alone.
    let r = tc_counted(&bed, &stale, TC_ACT_OK, &[], "stale ACK again in TC");
    assert_eq!(r.output, stale, "passed untouched");
    let r = run_counted(
        &bed,
        &stale,
        Ingress::Backend,
        XDP_TX,
        &[(Counter::BindStaleAcks, 1)],
        "second stale ACK",
    );
    let d = decode_checked(&r.output).expect("RST to the backend");
    assert_eq!((d.src, d.dst), (conn.client, backends[0]));
    assert_eq!(d.seq, Some(old_ack));
    let flags = d.tcp_flags.unwrap();
    assert!(flags.rst && !flags.ack && !flags.syn, "{flags:?}");
    assert_binding(&bed, &conn, backends[0], "still binding");
    complete(&bed, &conn, &payload, backends[0], 31337);
}

/// A client retransmitting its first segment after its backend went down (while the
/// binding waited) is bound again: to the replacement the control plane wrote.
#[test]
fn retransmission_after_the_backend_failed_binds_again() {
    let (bed, svc, backends, conn, payload) = one_binding(77, 1);
    bed.set_failover(svc, backends[1], Some(backends[2]))
        .unwrap();
    bed.set_backend_state(svc, backends[1], backend_state::DOWN)
        .unwrap();
    let counters = [
        (Counter::BindsRedone, 1),
        (Counter::SyncookiesValid, 1),
        (Counter::CookiePairsReported, 1),
        (Counter::NewFlows, 1),
        (Counter::BindingsStarted, 1),
        (Counter::TxRedirect, 1),
        (Counter::TxBytes, BUILT_SYN_LEN),
    ];
    let what = "retransmission to a failed backend (SYN to be3)";
    let delta = first_segment_again(&bed, &conn, &payload, backends[2], &counters, what);
    assert_eq!(delta[&backends[2]].failover_redirects, 1, "{delta:?}");
    assert_binding(&bed, &conn, backends[2], "the old entries are gone");
    complete(&bed, &conn, &payload, backends[2], 4242);
}

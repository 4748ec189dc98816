//! Phases 1 and 2: the SYN answered with a syncookie, the handshake ACK, invalid
//! cookies.

use super::*;

// --- Phase 1: SYN ---------------------------------------------------------------------

#[test]
fn syn_is_answered_with_a_syncookie_synack() {
    let (bed, _, _) = setup();
    let conn = handshake(&bed, Conn::new(40000, 0x1234_5678, 1460));

    // A retransmitted SYN gets the same answer: the cookie is stateless (the same unless
    // the 64-second window turned in between).
    let t = cookie_window();
    let again = handshake(&bed, Conn::new(40000, 0x1234_5678, 1460));
    assert!(
        again.cookie == conn.cookie || cookie_window() != t,
        "retransmitted SYN: cookie {:#x}, first {:#x}",
        again.cookie,
        conn.cookie
    );

    // The cookie carries the client's MSS rounded down to the table; the SYN-ACK offers
    // at most 1460. A SYN without an MSS option counts as 536.
    for (i, mss) in [100u16, 536, 1220, 1300, 1440, 1460, 4312, 8960, 9000, 65535]
        .into_iter()
        .enumerate()
    {
        let c = handshake(&bed, Conn::new(41000 + i as u16, 7 + i as u32, mss));
        assert_eq!(c.cookie & 7, encode_mss(mss), "MSS index of {mss}");
    }
    let bare = Conn::new(41100, 0xffff_ffff, 536);
    let r = run(
        &bed,
        &Frame::tcp(bare.client, vip(), SYN).seq(bare.isn).build(),
        Ingress::Client,
    );
    assert_eq!(r.verdict, XDP_TX);
    let cookie = decode_checked(&r.output).unwrap().seq.unwrap();
    check_frame(&r.output, &bare.expected_synack(cookie)).expect("SYN without options");
    assert_eq!(cookie & 7, 0, "no MSS option: index of 536");

    // IP options are dropped (IHL 5); a VLAN tag is kept; data on the SYN is ignored.
    let c = Conn::new(41200, 99, 1460);
    let f = c.syn().ip_options(&[0x94, 4, 0, 0]).build();
    let r = run(&bed, &f, Ingress::Client);
    assert_eq!(r.verdict, XDP_TX);
    let cookie = decode_checked(&r.output).unwrap().seq.unwrap();
    check_frame(&r.output, &c.expected_synack(cookie)).expect("SYN with IP options");

    let c = Conn::new(41201, 100, 1460);
    let r = run(&bed, &c.syn().vlan(42).build(), Ingress::Client);
    assert_eq!(r.verdict, XDP_TX);
    let cookie = decode_checked(&r.output).unwrap().seq.unwrap();
    check_frame(&r.output, &c.expected_synack(cookie).vlan(42)).expect("tagged SYN");

    let c = Conn::new(41202, 101, 1460);
    let r = run(
        &bed,
        &c.syn().payload(b"TFO data is not taken").build(),
        Ingress::Client,
    );
    assert_eq!(r.verdict, XDP_TX);
    let cookie = decode_checked(&r.output).unwrap().seq.unwrap();
    check_frame(&r.output, &c.expected_synack(cookie)).expect("SYN with data");

    assert_no_state(&bed, "after SYNs");
}

#[test]
fn syn_without_a_secret_is_dropped() {
    let (bed, _, _) = setup();
    // An all-zero key is "not set" (everyone knows it).
    bed.rotate_syncookie_secret(CookieSecret::default())
        .unwrap();
    let c = Conn::new(40000, 1, 1460);
    let input = c.syn().build();
    let what = "SYN without a secret, dropped untouched";
    run_case(
        &bed,
        &Case::dropped(what, input, Ingress::Client, Counter::DropNoSyncookieKey),
    );
    assert_no_state(&bed, "after the SYN");
}

// --- Phase 2: the handshake ACK ---------------------------------------------------------

#[test]
fn valid_handshake_acks_are_dropped_without_state() {
    let (bed, _, _) = setup();
    let conn = handshake(&bed, Conn::new(40000, 0x8000_0000, 1460));
    let valid = |what: &str, f: Frame| Case {
        output: Output::Unchecked,
        ..Case::dropped(what, f.build(), Ingress::Client, Counter::SyncookiesValid)
    };
    // A cookie of the previous 64-second window is still valid.
    let t = cookie_window();
    let mut old = Conn::new(40001, 5, 1460);
    old.cookie = syncookie(&TEST_SECRET, old.client, vip(), old.isn, old.mss, t - 1);
    run_cases(
        &bed,
        &[
            valid("handshake ACK", conn.handshake_ack()),
            // A bare FIN with a valid cookie: nothing to bind on either.
            valid(
                "FIN after the handshake",
                conn.handshake_ack().flags(FIN_ACK),
            ),
            valid("cookie of the previous window", old.handshake_ack()),
        ],
    );

    // After one rotation, cookies of the previous secret still validate.
    let earlier = handshake(&bed, Conn::new(40002, 6, 1460));
    bed.rotate_syncookie_secret(CookieSecret { k0: 42, k1: 43 })
        .unwrap();
    // The MSS index is not covered by the hash (as in Linux): a client may claim another
    // table MSS, as it could have in its SYN. Index 6 and 7 are not in the table.
    let mut other = conn;
    other.cookie = (conn.cookie & !7) | ((conn.cookie + 1) % 6);
    run_cases(
        &bed,
        &[
            valid("cookie of the previous secret", earlier.handshake_ack()),
            valid("another table MSS", other.handshake_ack()),
        ],
    );
    assert_no_state(&bed, "after valid ACKs");
}

#[test]
fn invalid_cookies_are_dropped() {
    let (bed, _, _) = setup();
    let conn = handshake(&bed, Conn::new(40000, 1000, 1460));
    let t = cookie_window();
    let mut cases: Vec<(String, Frame)> = Vec::new();
    // Without timestamps the cookie's 8 low bits carry the MSS and the options (not
    // hashed, like the MSS); with them only the 3 low bits do.
    for bit in [8, 20, 31] {
        let mut c = conn;
        c.cookie ^= 1 << bit;
        cases.push((format!("cookie bit {bit} flipped"), c.handshake_ack()));
    }
    let ts_conn = handshake(
        &bed,
        Conn::new(40002, 2000, 1460).with_options(LINUX_CLIENT, BackendOptions::NONE),
    );
    for bit in [3, 7, 31] {
        let mut c = ts_conn;
        c.cookie ^= 1 << bit;
        cases.push((
            format!("timestamps cookie bit {bit} flipped"),
            c.handshake_ack(),
        ));
    }
    // A client that sent timestamps in its SYN must send them in its ACK: without them
    // the cookie is checked in the other layout, under which it never validates.
    let mut c = ts_conn;
    c.options.timestamps = false;
    cases.push((
        "timestamps cookie in an ACK without timestamps".into(),
        c.handshake_ack(),
    ));
    for index in [6, 7] {
        let mut c = conn;
        c.cookie = (conn.cookie & !7) | index;
        cases.push((format!("MSS index {index}"), c.handshake_ack()));
    }
    for (what, window) in [("two windows old", t - 2), ("next window", t + 1)] {
        let mut c = conn;
        c.cookie = syncookie(&TEST_SECRET, c.client, vip(), c.isn, c.mss, window);
        cases.push((what.into(), c.handshake_ack()));
    }
    let mut c = conn;
    c.isn += 1;
    cases.push((
        "another ISN (seq - 1 is not the SYN's)".into(),
        c.handshake_ack(),
    ));
    let mut c = conn;
    c.client = client(40001);
    cases.push(("another source port".into(), c.handshake_ack()));
    let mut c = conn;
    c.client = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 3), 40000);
    cases.push(("another client address".into(), c.handshake_ack()));
    let mut c = conn;
    c.cookie ^= 0x100;
    cases.push((
        "first segment with a wrong cookie".into(),
        c.data(&http_get("be1")),
    ));
    let cases: Vec<Case> = cases
        .into_iter()
        .map(|(what, f)| {
            Case::dropped(what, f.build(), Ingress::Client, Counter::SyncookiesInvalid)
        })
        .collect();
    run_cases(&bed, &cases);

    // Nothing to answer without a flow: a RST (counted apart from invalid syncookies),
    // a segment without ACK or with SYN.
    let mut cases = vec![Case::dropped(
        "RST",
        conn.handshake_ack().flags(RST).build(),
        Ingress::Client,
        Counter::RstNoFlow,
    )];
    let odd: [(&str, Frame); 3] = [
        ("SYN+ACK", conn.handshake_ack().flags(SYN_ACK)),
        (
            "FIN without ACK",
            conn.handshake_ack().flags(TcpFlags {
                fin: true,
                ..Default::default()
            }),
        ),
        (
            "PSH without ACK",
            conn.data(b"GET / HTTP/1.1\r\n\r\n").flags(TcpFlags {
                psh: true,
                ..Default::default()
            }),
        ),
    ];
    cases.extend(
        odd.into_iter().map(|(what, f)| {
            Case::dropped(what, f.build(), Ingress::Client, Counter::DropOddNoFlow)
        }),
    );
    run_cases(&bed, &cases);

    // A secret rotated out twice no longer validates its cookies.
    let before = handshake(&bed, Conn::new(40010, 77, 1460));
    bed.rotate_syncookie_secret(CookieSecret { k0: 1, k1: 2 })
        .unwrap();
    bed.rotate_syncookie_secret(CookieSecret { k0: 3, k1: 4 })
        .unwrap();
    let invalid = |what: &str, f: Frame| Case {
        output: Output::Unchecked,
        ..Case::dropped(what, f.build(), Ingress::Client, Counter::SyncookiesInvalid)
    };
    run_cases(
        &bed,
        &[
            invalid("secret rotated twice", before.handshake_ack()),
            invalid(
                "first segment under a secret rotated twice",
                before.data(&http_get("be1")),
            ),
        ],
    );
    assert_no_state(&bed, "after invalid cookies");
}

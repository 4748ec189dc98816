//! TCP options across the syncookie handshake and the splice: the SYN-ACK mirrors what
//! the client offered, the SYN to the backend carries the client's own options, and the
//! splice translates timestamps, SACK blocks and windows between the two ends (or strips
//! what the backend refused). Every expected frame comes from the test's own model
//! (`Conn::options_to_backend` and friends, which read options with etherparse).

use super::*;

/// A client segment of a spliced `conn` with the given options (after its first segment
/// of `sent` bytes).
fn client_segment(conn: &Conn, sent: u32, acked: u32, options: &[u8]) -> Frame {
    Frame::tcp(conn.client, vip(), ACK)
        .seq(conn.isn.wrapping_add(1 + sent))
        .ack(conn.cookie.wrapping_add(1 + acked))
        .window(3000)
        .tcp_options(options)
}

/// A backend segment of `conn` (backend ISN `b`) with the given options and payload.
fn backend_segment(conn: &Conn, backend: SocketAddrV4, b: u32, sent: u32, options: &[u8]) -> Frame {
    Frame::reply(backend, conn.client, PSH_ACK)
        .seq(b.wrapping_add(1))
        .ack(conn.isn.wrapping_add(1 + sent))
        .window(1000)
        .tcp_options(options)
        .payload(b"HTTP/1.1 200 OK\r\n\r\n")
}

/// Handshake, first segment and the backend's SYN-ACK (ISN `b`) for `conn` to `backend`:
/// every built frame checked against the model. Returns the connection with its cookie and
/// SYN-ACK TSval, and the length of its first segment.
fn splice(bed: &TestBed, conn: Conn, backend: SocketAddrV4, b: u32) -> (Conn, u32) {
    let conn = handshake(bed, conn);
    handshake_ack_validates(bed, &conn, "handshake ACK");
    // The backends' server ids are be1, be2, be3 for 198.18.1.10, .11, .12.
    let payload = http_get(&format!("be{}", backend.ip().octets()[3] - 9));
    bind(bed, &conn, &payload, backend, Choice::Hit, None);
    complete(bed, &conn, &payload, backend, b);
    (conn, payload.len() as u32)
}

/// Traffic both ways through a splice of `conn`: segments with timestamps, SACK blocks
/// (one and several) and windows, each compared with the model's translation.
fn spliced_both_ways(bed: &TestBed, conn: &Conn, backend: SocketAddrV4, b: u32, sent: u32) {
    let t0 = conn.synack_tsval;
    let k = conn.cookie;
    let ts = ts_option(CLIENT_TSVAL + 7, t0.wrapping_add(3));
    let one_block = [ts.clone(), sack_option(&[(k + 3000, k + 4000)])].concat();
    let three_blocks = [
        ts.clone(),
        sack_option(&[
            (k + 9000, k + 9500),
            (k + 3000, k + 4000),
            (k + 6000, k + 7000),
        ]),
    ]
    .concat();
    // D-SACK: the first block below the cumulative ACK.
    let dsack = [ts.clone(), sack_option(&[(k + 1, k + 100)])].concat();
    let no_ts_sack = sack_option(&[(k + 3000, k + 4000)]);
    let backend_ts = ts_option(BackendOptions::LINUX.tsval.unwrap() + 40, CLIENT_TSVAL + 7);
    let mut cases = Vec::new();
    for (what, options) in [
        ("ACK with timestamps", ts.clone()),
        ("ACK with one SACK block", one_block),
        ("ACK with three SACK blocks", three_blocks),
        ("ACK with a D-SACK block", dsack),
        ("ACK with SACK and no timestamps", no_ts_sack),
        ("ACK without options", Vec::new()),
    ] {
        if !conn.options.timestamps && options.len() >= ts.len() && options[..12] == ts[..] {
            continue;
        }
        let f = client_segment(conn, sent, 500, &options);
        cases.push(Case::redirected(
            format!("{what}, client -> backend"),
            &f,
            Ingress::Client,
            conn.forwarded_to_backend(&f, backend, b),
        ));
    }
    for (what, options) in [
        ("data with timestamps", backend_ts),
        ("data without options", Vec::new()),
    ] {
        let f = backend_segment(conn, backend, b, sent, &options);
        cases.push(Case::redirected(
            format!("{what}, backend -> client"),
            &f,
            Ingress::Backend,
            conn.forwarded_to_client(&f, b),
        ));
    }
    run_cases(bed, &cases);
}

#[test]
fn linux_ends_keep_window_scale_sack_and_timestamps() {
    let (bed, _, backends) = setup();
    let conn =
        Conn::new(41000, 0x1000_0000, 1460).with_options(LINUX_CLIENT, BackendOptions::LINUX);
    let b = 0x7000_0000;
    let (conn, sent) = splice(&bed, conn, backends[0], b);
    // What the entries keep: timestamps shifted both ways, SACK towards the backend, the
    // windows as they are (both ends scale by 7).
    let (fwd, rev) = entries(&bed, &conn, backends[0]);
    let offset = conn.ts_offset().expect("both ends send timestamps");
    assert_eq!(
        (fwd.ts_offset, rev.ts_offset, fwd.win_shift, rev.win_shift),
        (offset, offset, 0, 0)
    );
    use balancer_common::tcp_opts::edit_flags::*;
    assert_eq!(
        (fwd.flags & ANY, rev.flags & ANY),
        (TS_SHIFT | SACK_SHIFT, TS_SHIFT)
    );
    spliced_both_ways(&bed, &conn, backends[0], b, sent);
}

#[test]
fn windows_are_rescaled_between_unlike_scales() {
    let (bed, _, backends) = setup();
    for (i, backend) in [
        // Scales by 9: windows to the client shifted up by 2.
        BackendOptions {
            wscale: Some(9),
            ..BackendOptions::LINUX
        },
        // Scales by 3: shifted down by 4, rounded down.
        BackendOptions {
            wscale: Some(3),
            ..BackendOptions::LINUX
        },
        // No scaling: windows to the client shifted down by 7, the client's up by its 7.
        BackendOptions {
            wscale: None,
            ..BackendOptions::LINUX
        },
    ]
    .into_iter()
    .enumerate()
    {
        let conn =
            Conn::new(41100 + i as u16, 0x2000_0000, 1460).with_options(LINUX_CLIENT, backend);
        let b = 0x3000_0000 + i as u32;
        let (conn, sent) = splice(&bed, conn, backends[0], b);
        spliced_both_ways(&bed, &conn, backends[0], b, sent);
        // A window the scaled value of which overflows 16 bits is capped.
        let f = backend_segment(&conn, backends[0], b, sent, &[]).window(0xfff0);
        run_case(
            &bed,
            &Case::redirected(
                format!("{backend:?}: large window to the client"),
                &f,
                Ingress::Backend,
                conn.forwarded_to_client(&f, b),
            ),
        );
    }
}

#[test]
fn options_the_backend_refuses_are_stripped_from_the_client() {
    let (bed, _, backends) = setup();
    for (i, backend) in [
        BackendOptions {
            tsval: None,
            ..BackendOptions::LINUX
        },
        BackendOptions {
            sack_ok: false,
            ..BackendOptions::LINUX
        },
        BackendOptions::NONE,
    ]
    .into_iter()
    .enumerate()
    {
        let conn =
            Conn::new(41200 + i as u16, 0x4000_0000, 1460).with_options(LINUX_CLIENT, backend);
        let b = 0x5000_0000;
        // The kept segment's timestamps are stripped too (see `Conn::expected_segment`).
        let (conn, sent) = splice(&bed, conn, backends[1], b);
        spliced_both_ways(&bed, &conn, backends[1], b, sent);
    }
}

#[test]
fn clients_offering_some_options_bind_and_splice() {
    let (bed, _, backends) = setup();
    let variants = [
        // MSS only.
        ClientOptions::default(),
        // SACK and window scale without timestamps (the cookie carries the options).
        ClientOptions {
            wscale: Some(8),
            sack_ok: true,
            timestamps: false,
        },
        // Timestamps without SACK, scale 0.
        ClientOptions {
            wscale: Some(0),
            sack_ok: false,
            timestamps: true,
        },
        // Timestamps only, scale 14.
        ClientOptions {
            wscale: Some(14),
            sack_ok: false,
            timestamps: true,
        },
        // Window scale only.
        ClientOptions {
            wscale: Some(2),
            sack_ok: false,
            timestamps: false,
        },
    ];
    for (i, options) in variants.into_iter().enumerate() {
        let conn = Conn::new(41300 + i as u16, 0x6000_0000 + i as u32, 1440)
            .with_options(options, BackendOptions::LINUX);
        let b = 0x0100_0000;
        let (conn, sent) = splice(&bed, conn, backends[2], b);
        spliced_both_ways(&bed, &conn, backends[2], b, sent);
    }
}

#[test]
fn spliced_segments_whose_options_cannot_be_walked_are_dropped() {
    let (bed, _, backends) = setup();
    let conn = Conn::new(41400, 0x1000, 1460).with_options(LINUX_CLIENT, BackendOptions::LINUX);
    let b = 0x9000_0000;
    let (conn, sent) = splice(&bed, conn, backends[0], b);
    let ts = ts_option(CLIENT_TSVAL, conn.synack_tsval);
    let soups: [(&str, Vec<u8>); 4] = [
        (
            "a zero option length",
            [vec![3, 0, 1, 1], ts.clone()].concat(),
        ),
        (
            "an option running past the header",
            vec![1, 1, 8, 10, 0, 0, 0, 0],
        ),
        ("two timestamps options", [ts.clone(), ts.clone()].concat()),
        ("more than 8 options", [vec![1; 8], ts.clone()].concat()),
    ];
    let cases: Vec<Case> = soups
        .iter()
        .map(|(what, soup)| {
            Case::dropped(
                format!("client segment with {what}"),
                client_segment(&conn, sent, 0, soup).build(),
                Ingress::Client,
                Counter::DropUntranslatableOptions,
            )
        })
        .collect();
    run_cases(&bed, &cases);
    // Other well-formed options around the timestamps (an MSS option is odd after the
    // SYN, but valid) are kept and walked.
    let odd = [vec![2, 4, 5, 0xb4], ts, vec![1, 1]].concat();
    let f = client_segment(&conn, sent, 0, &odd);
    run_case(
        &bed,
        &Case::redirected(
            "unknown options around timestamps",
            &f,
            Ingress::Client,
            conn.forwarded_to_backend(&f, backends[0], b),
        ),
    );
}

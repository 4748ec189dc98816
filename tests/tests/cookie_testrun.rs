//! Cookie mode (delayed binding, `docs/delayed-binding.md`) one packet at a time through
//! `BPF_PROG_TEST_RUN` (see `balancer_tests::testrun`): every phase of a connection, the
//! retransmissions, the cookie outcomes and the TC fallback, with the exact counter
//! changes and every output frame compared field by field and byte by byte with the frame
//! it must be (checksums verified by recomputation). Needs root: every test panics with a
//! clear message otherwise. Each test has its own pinned instance and network namespace.
//!
//! The beds install [`TEST_SECRET`] as the syncookie secret, so the tests compute the
//! cookies the data plane must hand out (`syncookie::make_cookie` over CLOCK_TAI windows).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use balancer_ebpf::{
    backend_state,
    cookie::{scan_payload, CookieConfig, CookieOutcome},
    direction, flow_state, phase,
    syncookie::{decode_mss, encode_mss, CookieSecret},
    Counter, Flow, FlowKey,
};
use balancer_tests::{packet::*, testrun::*};
use balancer_user::{stats::BackendCountersValues, ServiceAddr};

const FLOWS: u32 = 65_536;
/// Frame length of the answers the data plane builds in place: a SYN-ACK or a SYN with
/// one MSS option (14 + 20 + 24).
const BUILT_SYN_LEN: u64 = 58;
/// The client's receive window in every segment it sends (`Frame`'s default).
const CLIENT_WINDOW: u16 = 64240;
/// TTL of the client's handshake and first segments: the frames the balancer builds
/// carry 64, forwarded ones one less than they came with.
const CLIENT_TTL: u8 = 50;

fn be(n: u8) -> SocketAddrV4 {
    SocketAddrV4::new(backend_addr(n), 8080)
}

/// A bed with the cookie-mode service VIP:80 -> be1, be2, be3 (198.18.1.10-12:8080,
/// server ids `be1`..`be3`) and [`TEST_SECRET`] as the syncookie secret.
fn setup() -> (TestBed, ServiceAddr, Vec<SocketAddrV4>) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "the cookie-mode BPF_PROG_TEST_RUN tests need root (BPF_PROG_TEST_RUN, bpffs pins, \
             network namespaces). Run them as root, e.g. `sudo -E cargo test --release -p \
             balancer-tests --test cookie_testrun`"
        );
    }
    let bed = TestBed::new(FLOWS).expect("test bed");
    let backends = vec![be(0), be(1), be(2)];
    let svc = bed
        .add_cookie_service(
            vip(),
            &[
                (backends[0], "be1"),
                (backends[1], "be2"),
                (backends[2], "be3"),
            ],
        )
        .expect("cookie service");
    bed.rotate_syncookie_secret(TEST_SECRET)
        .expect("installing the test secret");
    (bed, svc, backends)
}

fn run(bed: &TestBed, frame: &[u8], ingress: Ingress) -> RunResult {
    bed.run(frame, ingress).expect("BPF_PROG_TEST_RUN")
}

/// Runs `frame` through the XDP program and checks the verdict, and that the counters
/// that moved are exactly `expect` plus `rx_packets`.
fn run_counted(
    bed: &TestBed,
    frame: &[u8],
    ingress: Ingress,
    verdict: u32,
    expect: &[(Counter, u64)],
    what: &str,
) -> RunResult {
    let before = bed.counters().unwrap();
    let r = run(bed, frame, ingress);
    let delta = bed.counters().unwrap().delta(&before);
    assert_eq!(
        r.verdict,
        verdict,
        "{what}: verdict {} (counters {delta:?})",
        r.verdict_name()
    );
    let mut want = expect.to_vec();
    want.push((Counter::RxPackets, 1));
    assert_eq!(delta, counter_map(&want), "{what}: counters");
    r
}

/// [`run_counted`] for the TC program (which counts no `rx_packets`).
fn tc_counted(
    bed: &TestBed,
    frame: &[u8],
    verdict: u32,
    expect: &[(Counter, u64)],
    what: &str,
) -> RunResult {
    let before = bed.counters().unwrap();
    let r = bed.run_tc(frame, Ingress::Backend).expect("skb test run");
    let delta = bed.counters().unwrap().delta(&before);
    assert_eq!(
        r.verdict,
        verdict,
        "{what}: TC verdict {} (counters {delta:?})",
        tc_verdict_name(r.verdict)
    );
    assert_eq!(delta, counter_map(expect), "{what}: counters");
    r
}

/// Per-backend counter changes between two snapshots (backends whose counters moved).
fn backend_delta(
    before: &BTreeMap<SocketAddrV4, BackendCountersValues>,
    after: &BTreeMap<SocketAddrV4, BackendCountersValues>,
) -> BTreeMap<SocketAddrV4, BackendCountersValues> {
    let zero = BackendCountersValues::default();
    after
        .iter()
        .filter_map(|(b, a)| {
            let o = before.get(b).unwrap_or(&zero);
            let d = BackendCountersValues {
                packets_to: a.packets_to - o.packets_to,
                bytes_to: a.bytes_to - o.bytes_to,
                packets_from: a.packets_from - o.packets_from,
                bytes_from: a.bytes_from - o.bytes_from,
                new_flows: a.new_flows - o.new_flows,
                cookie_hits: a.cookie_hits - o.cookie_hits,
                cookie_misses: a.cookie_misses - o.cookie_misses,
                failover_redirects: a.failover_redirects - o.failover_redirects,
            };
            (d != zero).then_some((*b, d))
        })
        .collect()
}

/// How the first segment's backend was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Choice {
    /// The cookie's primary (`cookie_hits`).
    Hit,
    /// The replacement of a failed primary (`failover_redirects`).
    Failover,
    /// The Maglev policy (`cookie_misses`).
    Policy,
}

/// One client connection to the VIP.
#[derive(Clone, Copy, Debug)]
struct Conn {
    client: SocketAddrV4,
    isn: u32,
    /// The MSS option of the client's SYN.
    mss: u16,
    /// The syncookie (the SYN-ACK's ISN), once the handshake ran.
    cookie: u32,
}

impl Conn {
    fn new(sport: u16, isn: u32, mss: u16) -> Conn {
        Conn {
            client: client(sport),
            isn,
            mss,
            cookie: 0,
        }
    }

    fn key(&self) -> FlowKey {
        tcp_key(self.client, vip())
    }

    /// The client's SYN: Linux-like options (MSS, SACK, timestamps, window scale).
    fn syn(&self) -> Frame {
        Frame::tcp(self.client, vip(), SYN)
            .ttl(CLIENT_TTL)
            .seq(self.isn)
            .tcp_options(&linux_syn_options(self.mss))
    }

    /// The ACK completing the handshake.
    fn handshake_ack(&self) -> Frame {
        Frame::tcp(self.client, vip(), ACK)
            .ttl(CLIENT_TTL)
            .seq(self.isn.wrapping_add(1))
            .ack(self.cookie.wrapping_add(1))
    }

    /// The first data segment.
    fn data(&self, payload: &[u8]) -> Frame {
        Frame::tcp(self.client, vip(), PSH_ACK)
            .ttl(CLIENT_TTL)
            .seq(self.isn.wrapping_add(1))
            .ack(self.cookie.wrapping_add(1))
            .payload(payload)
    }

    /// The MSS the cookie carries (the client's, rounded down to the table).
    fn cookie_mss(&self) -> u16 {
        decode_mss(encode_mss(self.mss)).unwrap()
    }

    /// The SYN-ACK the balancer must answer the SYN with.
    fn expected_synack(&self, cookie: u32) -> Frame {
        Frame::tcp(vip(), self.client, SYN_ACK)
            .macs(CLIENT_IF_MAC, CLIENT_MAC)
            .seq(cookie)
            .ack(self.isn.wrapping_add(1))
            .window(65535)
            .tcp_options(&mss_option(self.cookie_mss().min(1460)))
    }

    /// The SYN the balancer must send `backend` for this connection.
    fn expected_backend_syn(&self, backend: SocketAddrV4) -> Frame {
        Frame::tcp(self.client, backend, SYN)
            .macs(BACKEND_IF_MAC, backend_mac(*backend.ip()))
            .seq(self.isn)
            .ack(0)
            .window(CLIENT_WINDOW)
            .tcp_options(&mss_option(self.cookie_mss()))
    }

    /// The backend's SYN-ACK to the balancer's SYN, with ISN `b`.
    fn backend_synack(&self, backend: SocketAddrV4, b: u32) -> Frame {
        Frame::reply(backend, self.client, SYN_ACK)
            .seq(b)
            .ack(self.isn.wrapping_add(1))
            .window(65160)
            .tcp_options(&mss_option(1460))
    }

    /// The kept first segment as it must reach `backend` once its ISN `b` is known: in
    /// a fresh IPv4 header (TTL 64, no options), TCP header and payload as the client
    /// sent them but for the port and the acknowledgement number.
    fn expected_segment(&self, payload: &[u8], backend: SocketAddrV4, b: u32) -> Frame {
        self.data(payload)
            .addressed(
                BACKEND_IF_MAC,
                backend_mac(*backend.ip()),
                self.client,
                backend,
            )
            .ttl(64)
            .ack(b.wrapping_add(1))
    }

    /// `f`, a segment of this connection from the client, as the splice to `backend`
    /// (ISN `b`) must forward it: addressed to the backend, TTL one less, the
    /// acknowledgement number shifted back by `K - B`.
    fn forwarded_to_backend(&self, f: &Frame, backend: SocketAddrV4, b: u32) -> Frame {
        let ack = tcp_ack(f).wrapping_sub(self.cookie).wrapping_add(b);
        f.clone()
            .addressed(
                BACKEND_IF_MAC,
                backend_mac(*backend.ip()),
                self.client,
                backend,
            )
            .ttl(f.ttl - 1)
            .ack(ack)
    }

    /// `f`, a segment of the backend (ISN `b`) to this connection's client, as the splice
    /// must forward it: addressed to the client from the VIP, TTL one less, the sequence
    /// number shifted by `K - B`.
    fn forwarded_to_client(&self, f: &Frame, b: u32) -> Frame {
        let seq = tcp_seq(f).wrapping_add(self.cookie.wrapping_sub(b));
        f.clone()
            .addressed(CLIENT_IF_MAC, CLIENT_MAC, vip(), self.client)
            .ttl(f.ttl - 1)
            .seq(seq)
    }
}

fn tcp_seq(f: &Frame) -> u32 {
    match f.l4 {
        L4::Tcp { seq, .. } => seq,
        L4::Udp => panic!("not a TCP frame"),
    }
}

fn tcp_ack(f: &Frame) -> u32 {
    match f.l4 {
        L4::Tcp { ack, .. } => ack,
        L4::Udp => panic!("not a TCP frame"),
    }
}

/// Runs `frame`, a client segment of `conn` spliced to `backend` (ISN `b`), through XDP
/// and checks it is redirected to the backend as [`Conn::forwarded_to_backend`].
fn spliced_to_backend(
    bed: &TestBed,
    conn: &Conn,
    frame: &Frame,
    backend: SocketAddrV4,
    b: u32,
    what: &str,
) -> RunResult {
    let r = run(bed, &frame.build(), Ingress::Client);
    assert_eq!(r.verdict, XDP_REDIRECT, "{what}: got {}", r.verdict_name());
    check_frame(&r.output, &conn.forwarded_to_backend(frame, backend, b)).expect(what);
    r
}

/// Runs `frame`, a segment of the backend (ISN `b`) spliced to `conn`'s client, through
/// XDP and checks it is redirected to the client as [`Conn::forwarded_to_client`].
fn spliced_to_client(bed: &TestBed, conn: &Conn, frame: &Frame, b: u32, what: &str) -> RunResult {
    let r = run(bed, &frame.build(), Ingress::Backend);
    assert_eq!(r.verdict, XDP_REDIRECT, "{what}: got {}", r.verdict_name());
    check_frame(&r.output, &conn.forwarded_to_client(frame, b)).expect(what);
    r
}

/// Sends the client's SYN and checks the SYN-ACK: every field, the cookie computed here
/// from the test secret (in the window before or after the run), `syncookies_sent`.
/// Returns the connection with its cookie.
fn handshake(bed: &TestBed, mut conn: Conn) -> Conn {
    let input = conn.syn().build();
    let t0 = cookie_window();
    let r = run_counted(
        bed,
        &input,
        Ingress::Client,
        XDP_TX,
        &[(Counter::SyncookiesSent, 1)],
        "SYN",
    );
    let t1 = cookie_window();
    let got = decode_checked(&r.output).expect("SYN-ACK").seq.unwrap();
    let candidates: Vec<u32> = [t0, t1]
        .iter()
        .map(|t| syncookie(&TEST_SECRET, conn.client, vip(), conn.isn, conn.mss, *t))
        .collect();
    assert!(
        candidates.contains(&got),
        "SYN-ACK ISN {got:#010x} is not the syncookie {candidates:#010x?}"
    );
    check_frame(&r.output, &conn.expected_synack(got)).expect("SYN-ACK");
    conn.cookie = got;
    conn
}

/// Sends the first data segment and checks it became the SYN to `backend`, with the
/// counters of a binding chosen by `choice` (`outcome`: the cookie outcome counter).
fn bind(
    bed: &TestBed,
    conn: &Conn,
    payload: &[u8],
    backend: SocketAddrV4,
    choice: Choice,
    outcome: Option<Counter>,
) -> RunResult {
    let input = conn.data(payload).build();
    let mut expect = vec![
        (Counter::SyncookiesValid, 1),
        (Counter::NewFlows, 1),
        (Counter::BindingsStarted, 1),
        (Counter::TxRedirect, 1),
        (Counter::TxBytes, BUILT_SYN_LEN),
    ];
    if let Some(c) = outcome {
        expect.push((c, 1));
    }
    // The test bed reports every primary/secondary pair the scanner finds.
    if let CookieOutcome::Found {
        secondary: Some(_), ..
    } = scan_payload(payload, &CookieConfig::default())
    {
        expect.push((Counter::CookiePairsReported, 1));
    }
    let before = bed.backend_counters().unwrap();
    let r = run_counted(
        bed,
        &input,
        Ingress::Client,
        XDP_REDIRECT,
        &expect,
        "first segment",
    );
    let sent_to = decode_checked(&r.output).expect("SYN to the backend").dst;
    assert_eq!(sent_to, backend, "first segment bound to the wrong backend");
    check_frame(&r.output, &conn.expected_backend_syn(backend)).expect("SYN to the backend");
    let mut want = BackendCountersValues {
        packets_to: 1,
        bytes_to: BUILT_SYN_LEN,
        new_flows: 1,
        ..Default::default()
    };
    match choice {
        Choice::Hit => want.cookie_hits = 1,
        Choice::Failover => want.failover_redirects = 1,
        Choice::Policy => want.cookie_misses = 1,
    }
    let delta = backend_delta(&before, &bed.backend_counters().unwrap());
    assert_eq!(
        delta,
        BTreeMap::from([(backend, want)]),
        "per-backend counters"
    );
    r
}

/// Runs the backend's SYN-ACK (ISN `b`) through XDP and checks it became the kept
/// segment, sent back to the backend (`XDP_TX`), and that the flow is spliced.
fn complete(bed: &TestBed, conn: &Conn, payload: &[u8], backend: SocketAddrV4, b: u32) {
    let synack = conn.backend_synack(backend, b).build();
    let expected = conn.expected_segment(payload, backend, b);
    // The frame now carries the first segment to the backend: counted as transmitted.
    let r = run_counted(
        bed,
        &synack,
        Ingress::Backend,
        XDP_TX,
        &[
            (Counter::BindingsCompleted, 1),
            (Counter::TxSameInterface, 1),
            (Counter::TxBytes, expected.build().len() as u64),
        ],
        "backend SYN-ACK",
    );
    check_frame(&r.output, &expected).expect("kept segment");
    assert_spliced(bed, conn, backend, b);
}

/// Both entries of the connection: spliced, established, shifting by `K - B`; the kept
/// segment released.
fn assert_spliced(bed: &TestBed, conn: &Conn, backend: SocketAddrV4, b: u32) {
    assert_eq!(
        bed.pending_segment(&conn.key()).unwrap(),
        None,
        "the kept segment is released once spliced"
    );
    let (fwd, rev) = entries(bed, conn, backend);
    let delta = conn.cookie.wrapping_sub(b);
    for (what, f) in [("forward", fwd), ("reply", rev)] {
        assert_eq!(
            (f.phase, f.state, f.seq_delta),
            (phase::SPLICED, flow_state::ESTABLISHED, delta),
            "{what} entry after the binding"
        );
    }
}

/// The forward and reply entries of `conn` bound to `backend`.
fn entries(bed: &TestBed, conn: &Conn, backend: SocketAddrV4) -> (Flow, Flow) {
    let fwd = bed.flow_entry(&conn.key()).unwrap().expect("forward entry");
    let rev = bed
        .flow_entry(&tcp_key(backend, conn.client))
        .unwrap()
        .expect("reply entry");
    (fwd, rev)
}

/// A connection through SYN, first segment (bound to `backend` by its cookie) and the
/// backend's SYN-ACK with ISN `b`.
fn spliced(bed: &TestBed, conn: Conn, backend: SocketAddrV4, id: &str, b: u32) -> Conn {
    let conn = handshake(bed, conn);
    let payload = http_get(id);
    bind(bed, &conn, &payload, backend, Choice::Hit, None);
    complete(bed, &conn, &payload, backend, b);
    conn
}

/// A small GET whose session cookie names `primary`.
fn http_get(primary: &str) -> Vec<u8> {
    format!(
        "GET /cart HTTP/1.1\r\nHost: shop.test\r\nCookie: JSESSIONID=s3ss10n!{primary}!be3\r\n\r\n"
    )
    .into_bytes()
}

fn assert_no_state(bed: &TestBed, what: &str) {
    assert_eq!(
        bed.flow_entries().unwrap(),
        vec![],
        "{what}: no flow entry may exist"
    );
    assert_eq!(
        bed.pending_keys().unwrap(),
        vec![],
        "{what}: no segment may be kept"
    );
}

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
    let r = run_counted(
        &bed,
        &input,
        Ingress::Client,
        XDP_DROP,
        &[(Counter::DropNoSyncookieKey, 1)],
        "SYN without a secret",
    );
    assert_eq!(r.output, input, "dropped frame untouched");
    assert_no_state(&bed, "after the SYN");
}

// --- Phase 2: the handshake ACK ---------------------------------------------------------

#[test]
fn valid_handshake_acks_are_dropped_without_state() {
    let (bed, _, _) = setup();
    let conn = handshake(&bed, Conn::new(40000, 0x8000_0000, 1460));
    run_counted(
        &bed,
        &conn.handshake_ack().build(),
        Ingress::Client,
        XDP_DROP,
        &[(Counter::SyncookiesValid, 1)],
        "handshake ACK",
    );
    // A bare FIN with a valid cookie: nothing to bind on either.
    run_counted(
        &bed,
        &conn.handshake_ack().flags(FIN_ACK).build(),
        Ingress::Client,
        XDP_DROP,
        &[(Counter::SyncookiesValid, 1)],
        "FIN after the handshake",
    );

    // A cookie of the previous 64-second window is still valid.
    let t = cookie_window();
    let mut old = Conn::new(40001, 5, 1460);
    old.cookie = syncookie(&TEST_SECRET, old.client, vip(), old.isn, old.mss, t - 1);
    run_counted(
        &bed,
        &old.handshake_ack().build(),
        Ingress::Client,
        XDP_DROP,
        &[(Counter::SyncookiesValid, 1)],
        "cookie of the previous window",
    );

    // After one rotation, cookies of the previous secret still validate.
    let earlier = handshake(&bed, Conn::new(40002, 6, 1460));
    bed.rotate_syncookie_secret(CookieSecret { k0: 42, k1: 43 })
        .unwrap();
    run_counted(
        &bed,
        &earlier.handshake_ack().build(),
        Ingress::Client,
        XDP_DROP,
        &[(Counter::SyncookiesValid, 1)],
        "cookie of the previous secret",
    );

    // The MSS index is not covered by the hash (as in Linux): a client may claim another
    // table MSS, as it could have in its SYN. Index 6 and 7 are not in the table.
    let mut other = conn;
    other.cookie = (conn.cookie & !7) | ((conn.cookie + 1) % 6);
    run_counted(
        &bed,
        &other.handshake_ack().build(),
        Ingress::Client,
        XDP_DROP,
        &[(Counter::SyncookiesValid, 1)],
        "another table MSS",
    );
    assert_no_state(&bed, "after valid ACKs");
}

#[test]
fn invalid_cookies_are_dropped() {
    let (bed, _, _) = setup();
    let conn = handshake(&bed, Conn::new(40000, 1000, 1460));
    let t = cookie_window();
    let mut cases: Vec<(String, Frame)> = Vec::new();
    for bit in [3, 8, 20, 31] {
        let mut c = conn;
        c.cookie ^= 1 << bit;
        cases.push((format!("cookie bit {bit} flipped"), c.handshake_ack()));
    }
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
    // Nothing to answer without a flow: a RST, a segment without ACK.
    cases.push(("RST".into(), conn.handshake_ack().flags(RST)));
    cases.push((
        "FIN without ACK".into(),
        conn.handshake_ack().flags(TcpFlags {
            fin: true,
            ..Default::default()
        }),
    ));
    cases.push((
        "PSH without ACK".into(),
        conn.data(b"GET / HTTP/1.1\r\n\r\n").flags(TcpFlags {
            psh: true,
            ..Default::default()
        }),
    ));
    for (what, f) in &cases {
        let input = f.build();
        let r = run_counted(
            &bed,
            &input,
            Ingress::Client,
            XDP_DROP,
            &[(Counter::SyncookiesInvalid, 1)],
            what,
        );
        assert_eq!(r.output, input, "{what}: dropped frame untouched");
    }

    // A secret rotated out twice no longer validates its cookies.
    let before = handshake(&bed, Conn::new(40010, 77, 1460));
    bed.rotate_syncookie_secret(CookieSecret { k0: 1, k1: 2 })
        .unwrap();
    bed.rotate_syncookie_secret(CookieSecret { k0: 3, k1: 4 })
        .unwrap();
    run_counted(
        &bed,
        &before.handshake_ack().build(),
        Ingress::Client,
        XDP_DROP,
        &[(Counter::SyncookiesInvalid, 1)],
        "secret rotated twice",
    );
    run_counted(
        &bed,
        &before.data(&http_get("be1")).build(),
        Ingress::Client,
        XDP_DROP,
        &[(Counter::SyncookiesInvalid, 1)],
        "first segment under a secret rotated twice",
    );
    assert_no_state(&bed, "after invalid cookies");
}

// --- Phase 3: the first data segment ----------------------------------------------------

#[test]
fn first_segment_binds_to_the_backend_its_cookie_names() {
    let (bed, _, backends) = setup();
    let conn = handshake(&bed, Conn::new(40000, 0xdead_beef, 1460));
    run_counted(
        &bed,
        &conn.handshake_ack().build(),
        Ingress::Client,
        XDP_DROP,
        &[(Counter::SyncookiesValid, 1)],
        "handshake ACK",
    );
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
                f.cookie_isn,
                f.mss,
                f.seq_delta
            ),
            (
                phase::BINDING,
                flow_state::SYN,
                dir,
                conn.isn,
                conn.cookie,
                1460,
                0
            ),
            "{what} entry"
        );
    }
    assert_eq!(
        fwd.l2_valid, 1,
        "the next hop resolved for the SYN is cached"
    );
    assert_eq!(bed.flow_entries().unwrap().len(), 2);
    let info = bed
        .flow_of(conn.client, vip(), balancer_user::Proto::Tcp)
        .unwrap()
        .expect("flow listed");
    assert_eq!(
        (info.phase, info.state, info.backend.as_str()),
        ("binding", "syn", "198.18.1.11:8080")
    );

    // The segment is kept as received, already addressed to the backend's port, its
    // checksum valid for client -> backend.
    let kept = bed
        .pending_segment(&conn.key())
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
    assert_eq!(bed.pending_keys().unwrap(), vec![conn.key()]);

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
    let (bed, _, backends) = setup();
    let conn = handshake(&bed, Conn::new(40000, 500, 1460));
    let payload = http_get("be1");
    bind(&bed, &conn, &payload, backends[0], Choice::Hit, None);
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
    for (what, f) in from_backend {
        run_counted(
            &bed,
            &f.build(),
            Ingress::Backend,
            XDP_DROP,
            &[(Counter::DropWhileBinding, 1)],
            what,
        );
    }
    let later = conn
        .data(b"second segment")
        .seq(conn.isn.wrapping_add(1 + payload.len() as u32));
    for (what, f) in [
        ("the handshake ACK again", conn.handshake_ack()),
        ("a later client segment", later),
    ] {
        run_counted(
            &bed,
            &f.build(),
            Ingress::Client,
            XDP_DROP,
            &[(Counter::DropWhileBinding, 1)],
            what,
        );
    }
    // Still binding; the right SYN-ACK completes it.
    let (fwd, rev) = entries(&bed, &conn, backends[0]);
    assert_eq!((fwd.phase, rev.phase), (phase::BINDING, phase::BINDING));
    complete(&bed, &conn, &payload, backends[0], b);
}

// --- Retransmissions --------------------------------------------------------------------

#[test]
fn retransmitted_first_segment_resends_the_backend_syn() {
    let (bed, _, backends) = setup();
    let conn = handshake(&bed, Conn::new(40000, 0xffff_fffe, 1460));
    let payload = http_get("be3");
    bind(&bed, &conn, &payload, backends[2], Choice::Hit, None);
    for round in 0..2 {
        let before = bed.backend_counters().unwrap();
        let r = run_counted(
            &bed,
            &conn.data(&payload).build(),
            Ingress::Client,
            XDP_REDIRECT,
            &[
                (Counter::BindRetransmits, 1),
                (Counter::TxRedirect, 1),
                (Counter::TxBytes, BUILT_SYN_LEN),
            ],
            "retransmitted first segment",
        );
        check_frame(&r.output, &conn.expected_backend_syn(backends[2]))
            .unwrap_or_else(|e| panic!("retransmission {round}: {e:#}"));
        assert_eq!(
            backend_delta(&before, &bed.backend_counters().unwrap()),
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
    assert_eq!(
        bed.flow_entries().unwrap().len(),
        2,
        "no new entries for a retransmission"
    );
    complete(&bed, &conn, &payload, backends[2], 77);
    // Once spliced, the same segment is an ordinary retransmission for the backend.
    let r = run_counted(
        &bed,
        &conn.data(&payload).build(),
        Ingress::Client,
        XDP_REDIRECT,
        &[
            (Counter::TxRedirect, 1),
            (Counter::TxBytes, conn.data(&payload).build().len() as u64),
        ],
        "first segment again, spliced",
    );
    check_frame(
        &r.output,
        &conn.forwarded_to_backend(&conn.data(&payload), backends[2], 77),
    )
    .unwrap();
}

#[test]
fn binding_times_out_with_a_rst_to_the_client() {
    let (bed, _, backends) = setup();
    let conn = handshake(&bed, Conn::new(40000, 31337, 1460));
    let payload = http_get("be2");
    bind(&bed, &conn, &payload, backends[1], Choice::Hit, None);
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
    assert_eq!(bed.pending_segment(&conn.key()).unwrap(), None);
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
    let input = synack.build();
    let r = run_counted(
        &bed,
        &input,
        Ingress::Backend,
        XDP_REDIRECT,
        &[
            (Counter::TxRedirect, 1),
            (Counter::TxBytes, input.len() as u64),
        ],
        "repeated backend SYN-ACK",
    );
    check_frame(&r.output, &conn.forwarded_to_client(&synack, b))
        .expect("SYN-ACK forwarded to the client");
    // The client's duplicate ACK and its retransmitted first segment go to the backend,
    // acknowledging the backend's ISN.
    let (dup, again) = (conn.handshake_ack(), conn.data(&payload));
    spliced_to_backend(&bed, &conn, &dup, backends[0], b, "client ACK");
    spliced_to_backend(&bed, &conn, &again, backends[0], b, "first segment again");
    assert_spliced(&bed, &conn, backends[0], b);
}

// --- Phase 5: spliced -------------------------------------------------------------------

#[test]
fn spliced_traffic_is_translated_both_ways() {
    let (bed, _, backends) = setup();
    let mut flows = Vec::new();
    // Backend ISNs from the connection's K: far from K (the shift wraps), near 2^32 (the
    // backend's own sequence numbers wrap), K (no shift), K - 1, and 1. The client's
    // ISNs are near 2^32 too.
    let isns: [fn(u32) -> u32; 5] = [
        |k| k.wrapping_add(0x8000_0000),
        |_| 0xffff_fff0,
        |k| k,
        |k| k.wrapping_sub(1),
        |_| 1,
    ];
    for (i, isn_of) in isns.iter().enumerate() {
        let conn = handshake(
            &bed,
            Conn::new(40000 + i as u16, 0xffff_ff00 + 16 * i as u32, 1460),
        );
        let b = isn_of(conn.cookie);
        let payload = http_get("be2");
        bind(&bed, &conn, &payload, backends[1], Choice::Hit, None);
        complete(&bed, &conn, &payload, backends[1], b);
        flows.push((conn, b, payload.len() as u32));
    }

    for (conn, b, sent) in &flows {
        let (conn, b, sent) = (*conn, *b, *sent);
        let k = conn.cookie;
        let c_next = conn.isn.wrapping_add(1 + sent);
        let mut b_next = b.wrapping_add(1);
        let mut acked = 0u32;
        // Payload lengths 0..40 with varied bytes: odd lengths, and every checksum
        // folding case the incremental updates meet.
        for n in 0..40u32 {
            let body: Vec<u8> = (0..n)
                .map(|i| (i * 37 + n * 11) as u8 ^ (k as u8))
                .collect();
            // Backend -> client: seq shifted by K - B, ack unchanged.
            let from_backend = Frame::reply(backends[1], conn.client, PSH_ACK)
                .seq(b_next)
                .ack(c_next)
                .window(502)
                .payload(&body);
            let input = from_backend.build();
            let before = bed.backend_counters().unwrap();
            let r = run_counted(
                &bed,
                &input,
                Ingress::Backend,
                XDP_REDIRECT,
                &[
                    (Counter::TxRedirect, 1),
                    (Counter::TxBytes, input.len() as u64),
                ],
                "spliced backend -> client",
            );
            check_frame(&r.output, &conn.forwarded_to_client(&from_backend, b))
                .unwrap_or_else(|e| panic!("B={b:#x} n={n} backend -> client: {e:#}"));
            assert_eq!(
                backend_delta(&before, &bed.backend_counters().unwrap()),
                BTreeMap::from([(
                    backends[1],
                    BackendCountersValues {
                        packets_from: 1,
                        bytes_from: input.len() as u64,
                        ..Default::default()
                    }
                )])
            );
            b_next = b_next.wrapping_add(n);
            acked = acked.wrapping_add(n);

            // Client -> backend: ack shifted back by K - B, seq unchanged.
            let from_client = Frame::tcp(conn.client, vip(), PSH_ACK)
                .seq(c_next)
                .ack(k.wrapping_add(1).wrapping_add(acked))
                .payload(&body);
            let input = from_client.build();
            let r = run_counted(
                &bed,
                &input,
                Ingress::Client,
                XDP_REDIRECT,
                &[
                    (Counter::TxRedirect, 1),
                    (Counter::TxBytes, input.len() as u64),
                ],
                "spliced client -> backend",
            );
            check_frame(
                &r.output,
                &conn.forwarded_to_backend(&from_client, backends[1], b),
            )
            .unwrap_or_else(|e| panic!("B={b:#x} n={n} client -> backend: {e:#}"));
        }
    }
    // The second connection's backend sequence numbers wrapped around 2^32 in the loop.
    let (_, b, _) = flows[1];
    assert!(b.wrapping_add(1 + (0..40).sum::<u32>()) < b);
}

#[test]
fn fin_and_rst_end_a_spliced_flow() {
    let (bed, _, backends) = setup();
    let payload_len = http_get("be2").len() as u32;
    // Orderly close: FINs both ways, then the last ACK.
    let b = 0x7000_0000;
    let conn = spliced(&bed, Conn::new(40000, 1, 1460), backends[1], "be2", b);
    let k = conn.cookie;
    let c_next = conn.isn.wrapping_add(1 + payload_len);
    let client_fin = Frame::tcp(conn.client, vip(), FIN_ACK)
        .seq(c_next)
        .ack(k.wrapping_add(1));
    spliced_to_backend(&bed, &conn, &client_fin, backends[1], b, "client FIN");
    let backend_fin = Frame::reply(backends[1], conn.client, FIN_ACK)
        .seq(b.wrapping_add(1))
        .ack(c_next.wrapping_add(1));
    spliced_to_client(&bed, &conn, &backend_fin, b, "backend FIN");
    let last = Frame::tcp(conn.client, vip(), ACK)
        .seq(c_next.wrapping_add(1))
        .ack(k.wrapping_add(2));
    spliced_to_backend(&bed, &conn, &last, backends[1], b, "last ACK");
    let (fwd, rev) = entries(&bed, &conn, backends[1]);
    assert_eq!(
        (fwd.state, rev.state, fwd.phase),
        (flow_state::FIN, flow_state::FIN, phase::SPLICED)
    );

    // Abort: the backend's RST is shifted like any of its segments, the client's too.
    let b2 = 0x10;
    let conn2 = spliced(&bed, Conn::new(40001, 2, 1460), backends[1], "be2", b2);
    let k2 = conn2.cookie;
    let rst = Frame::reply(
        backends[1],
        conn2.client,
        TcpFlags {
            rst: true,
            ack: true,
            ..Default::default()
        },
    )
    .seq(b2.wrapping_add(1))
    .ack(conn2.isn.wrapping_add(1 + payload_len));
    spliced_to_client(&bed, &conn2, &rst, b2, "backend RST");
    let (_, rev) = entries(&bed, &conn2, backends[1]);
    assert_eq!(rev.state, flow_state::CLOSED);
    let crst = Frame::tcp(
        conn2.client,
        vip(),
        TcpFlags {
            rst: true,
            ack: true,
            ..Default::default()
        },
    )
    .seq(conn2.isn.wrapping_add(1 + payload_len))
    .ack(k2.wrapping_add(1));
    spliced_to_backend(&bed, &conn2, &crst, backends[1], b2, "client RST");
    let (fwd, _) = entries(&bed, &conn2, backends[1]);
    assert_eq!(fwd.state, flow_state::CLOSED);
}

#[test]
fn new_connection_on_a_closed_spliced_tuple_is_bound_anew() {
    let (bed, _, backends) = setup();
    let payload_len = http_get("be2").len() as u32;
    let conn = spliced(&bed, Conn::new(40001, 2, 1460), backends[1], "be2", 0x10);
    let rst = Frame::tcp(
        conn.client,
        vip(),
        TcpFlags {
            rst: true,
            ack: true,
            ..Default::default()
        },
    )
    .seq(conn.isn.wrapping_add(1 + payload_len))
    .ack(conn.cookie.wrapping_add(1));
    assert_eq!(
        run(&bed, &rst.build(), Ingress::Client).verdict,
        XDP_REDIRECT
    );
    // The client reuses its port: a fresh syncookie, and the first segment binds anew
    // (here to the backend its cookie names now).
    let again = handshake(&bed, Conn::new(40001, 0x5555_0000, 1460));
    assert_ne!(again.cookie, conn.cookie);
    run_counted(
        &bed,
        &again.handshake_ack().build(),
        Ingress::Client,
        XDP_DROP,
        &[(Counter::SyncookiesValid, 1)],
        "handshake ACK of the new connection",
    );
    let payload = http_get("be3");
    bind(&bed, &again, &payload, backends[2], Choice::Hit, None);
    let (fwd, _) = entries(&bed, &again, backends[2]);
    assert_eq!(
        (fwd.phase, fwd.client_isn, fwd.cookie_isn),
        (phase::BINDING, again.isn, again.cookie)
    );
    complete(&bed, &again, &payload, backends[2], 3);
}

// --- Cookie outcomes and backend choice ---------------------------------------------------

#[test]
fn cookie_outcomes_and_the_policy_fallback() {
    let (bed, svc, backends) = setup();
    let ids = ["be1", "be2", "be3"];
    let hit = |cookie: &str| format!("GET / HTTP/1.1\r\nHost: a\r\n{cookie}\r\n\r\n");
    // (what, payload, cookie outcome counter, backend named by the cookie)
    type Case = (&'static str, Vec<u8>, Option<Counter>, Option<&'static str>);
    let cases: Vec<Case> = vec![
        (
            "TLS ClientHello",
            vec![
                0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
            ],
            Some(Counter::CookieNotHttp),
            None,
        ),
        (
            "no Cookie header",
            b"GET / HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n".to_vec(),
            Some(Counter::CookieNoHeader),
            None,
        ),
        (
            "other cookies only",
            hit("Cookie: a=1; XJSESSIONID=s!be2!be3; jsessionid=s!be2; JSESSIONIDX=s!be1")
                .into_bytes(),
            Some(Counter::CookieNameAbsent),
            None,
        ),
        (
            "session id without tokens",
            hit("Cookie: JSESSIONID=onlythesession").into_bytes(),
            Some(Counter::CookieNoToken),
            None,
        ),
        (
            "empty primary token",
            hit("Cookie: JSESSIONID=s!!be3").into_bytes(),
            Some(Counter::CookieNoToken),
            None,
        ),
        (
            "head continues in the next segment",
            b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: curl/8.0\r\n".to_vec(),
            Some(Counter::CookieBeyondFirstSegment),
            None,
        ),
        (
            "unknown primary token",
            hit("Cookie: JSESSIONID=s!be9!be3").into_bytes(),
            Some(Counter::CookieUnknownToken),
            None,
        ),
        (
            "token of another length",
            hit("Cookie: JSESSIONID=s!be22!be3").into_bytes(),
            Some(Counter::CookieUnknownToken),
            None,
        ),
        // Hits: among other cookies, quoted, lower-case header name, second header.
        (
            "among other cookies",
            hit("Cookie: a=1; JSESSIONID=s!be1!be2; b=2").into_bytes(),
            None,
            Some("be1"),
        ),
        (
            "quoted value",
            hit("Cookie: JSESSIONID=\"s!be3!be1\"").into_bytes(),
            None,
            Some("be3"),
        ),
        (
            "lower-case header name",
            hit("cookie: JSESSIONID=s!be2").into_bytes(),
            None,
            Some("be2"),
        ),
        (
            "second Cookie header",
            hit("Cookie: a=1\r\nCookie: JSESSIONID=x!be1!be3").into_bytes(),
            None,
            Some("be1"),
        ),
    ];
    let mut policy_backends = std::collections::BTreeSet::new();
    for (i, (what, payload, outcome, named)) in cases.iter().enumerate() {
        let conn = handshake(&bed, Conn::new(41000 + i as u16, 1000 * i as u32, 1460));
        let (backend, choice) = match named {
            Some(id) => (
                backends[ids.iter().position(|x| x == id).unwrap()],
                Choice::Hit,
            ),
            None => (
                bed.policy_backend(svc, &conn.key()).unwrap(),
                Choice::Policy,
            ),
        };
        if choice == Choice::Policy {
            policy_backends.insert(backend);
        }
        let before = bed.counters().unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            bind(&bed, &conn, payload, backend, choice, *outcome)
        }));
        if r.is_err() {
            panic!(
                "case {what:?} failed (counters moved: {:?})",
                bed.counters().unwrap().delta(&before)
            );
        }
    }
    // The fallback really is the policy's spread, not one fixed backend.
    let mut spread = policy_backends;
    for sport in 42000..42030 {
        let conn = handshake(&bed, Conn::new(sport, sport as u32, 1460));
        let b = bed.policy_backend(svc, &conn.key()).unwrap();
        bind(
            &bed,
            &conn,
            b"GET / HTTP/1.1\r\n\r\n",
            b,
            Choice::Policy,
            Some(Counter::CookieNoHeader),
        );
        spread.insert(b);
    }
    assert_eq!(spread.len(), 3, "policy picks: {spread:?}");
}

#[test]
fn failover_and_unavailable_primaries() {
    let (bed, svc, backends) = setup();
    let mut sport = 40000;
    let mut next = |bed: &TestBed| {
        sport += 1;
        handshake(bed, Conn::new(sport, sport as u32 * 3, 1460))
    };
    let to_be2 = http_get("be2");

    // Primary down, its sessions moved to be3: failover redirect.
    bed.set_backend_state(svc, backends[1], backend_state::DOWN)
        .unwrap();
    bed.set_failover(svc, backends[1], Some(backends[2]))
        .unwrap();
    let c = next(&bed);
    bind(&bed, &c, &to_be2, backends[2], Choice::Failover, None);
    // Draining counts as unavailable for new sessions too.
    bed.set_backend_state(svc, backends[1], backend_state::DRAINING)
        .unwrap();
    let c = next(&bed);
    bind(&bed, &c, &to_be2, backends[2], Choice::Failover, None);
    // The replacement down as well: the policy decides (never be2 nor be3).
    bed.set_backend_state(svc, backends[2], backend_state::DOWN)
        .unwrap();
    for _ in 0..5 {
        let c = next(&bed);
        let b = bed.policy_backend(svc, &c.key()).unwrap();
        assert_eq!(b, backends[0], "only be1 is up");
        bind(&bed, &c, &to_be2, b, Choice::Policy, None);
    }
    bed.set_backend_state(svc, backends[2], backend_state::UP)
        .unwrap();
    // No failover entry: the policy, which never picks the unavailable primary.
    bed.set_failover(svc, backends[1], None).unwrap();
    for _ in 0..10 {
        let c = next(&bed);
        let b = bed.policy_backend(svc, &c.key()).unwrap();
        assert_ne!(b, backends[1]);
        bind(&bed, &c, &to_be2, b, Choice::Policy, None);
    }
    // The primary back up: its sessions return to it, failover entry or not.
    bed.set_failover(svc, backends[1], Some(backends[2]))
        .unwrap();
    bed.set_backend_state(svc, backends[1], backend_state::UP)
        .unwrap();
    let c = next(&bed);
    bind(&bed, &c, &to_be2, backends[1], Choice::Hit, None);
    // A failover target is only taken for the failed primary's sessions.
    let c = next(&bed);
    bind(&bed, &c, &http_get("be1"), backends[0], Choice::Hit, None);
}

#[test]
fn no_backend_drops_the_first_segment() {
    let (bed, svc, backends) = setup();
    for b in &backends {
        bed.set_backend_state(svc, *b, backend_state::DOWN).unwrap();
    }
    // The handshake still works (it needs no backend)...
    let conn = handshake(&bed, Conn::new(40000, 1, 1460));
    // ...but the first segment has nowhere to go: dropped, nothing kept.
    let input = conn.data(&http_get("be2")).build();
    let r = run_counted(
        &bed,
        &input,
        Ingress::Client,
        XDP_DROP,
        // The pair is reported although the connection cannot be bound: the servers
        // named in the cookie are still each other's replication partners.
        &[
            (Counter::SyncookiesValid, 1),
            (Counter::CookiePairsReported, 1),
            (Counter::DropNoBackend, 1),
        ],
        "first segment without backends",
    );
    assert_eq!(r.output, input);
    assert_no_state(&bed, "after the drop");
}

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

// --- The helpers' own checks ----------------------------------------------------------------

#[test]
fn cookie_helpers_check_themselves() {
    // No root needed: packet builders and validators only.
    use balancer_ebpf::cookie::token_hash;
    let f = Frame::to_vip(40000, PSH_ACK)
        .ack(77)
        .tcp_options(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])
        .payload(b"x");
    let bytes = f.build();
    let d = check_frame(&bytes, &f).expect("a frame is the frame it was built from");
    assert_eq!((d.ack, d.window), (Some(77), Some(64240)));
    assert_eq!(d.tcp_options, [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    assert!(check_frame(&bytes, &f.clone().ack(78)).is_err(), "ack");
    assert!(check_frame(&bytes, &f.clone().window(1)).is_err(), "window");
    assert!(check_frame(&bytes, &f.clone().ttl(63)).is_err(), "TTL");
    assert!(check_frame(&bytes, &f.clone().tcp_options(&[])).is_err());
    let mut bad = bytes.clone();
    bad[50] ^= 1; // TCP checksum
    assert!(check_frame(&bad, &f).is_err(), "checksum");
    let mut padded = bytes.clone();
    padded.push(0);
    assert!(check_frame(&padded, &f).is_err(), "trailing byte");

    // Options are padded to whole words.
    let syn = Frame::to_vip(1, SYN).tcp_options(&[1, 1, 1]);
    assert_eq!(
        decode_checked(&syn.build()).unwrap().tcp_options,
        [1, 1, 1, 0]
    );

    // The benchmark's request heads: exact length, one complete head, the cookie where
    // asked, and the data plane's scanner finds the primary token in each.
    for at in [0.0, 0.5, 1.0] {
        let head = request_head(1400, at, "be2", "be3");
        assert_eq!(head.len(), 1400);
        let text = String::from_utf8(head.clone()).unwrap();
        assert!(text.ends_with("\r\n\r\n") && !text[..1396].contains("\r\n\r\n"));
        let lines: Vec<&str> = text.trim_end().split("\r\n").collect();
        let pos = lines.iter().position(|l| l.starts_with("Cookie:")).unwrap();
        let want = match at {
            0.0 => 1,
            1.0 => lines.len() - 1,
            _ => lines.len() / 2,
        };
        assert!(
            pos.abs_diff(want) <= 1,
            "cookie at line {pos} of {}",
            lines.len()
        );
        match scan_payload(&head, &CookieConfig::default()) {
            CookieOutcome::Found { primary, .. } => assert_eq!(primary, token_hash(b"be2")),
            other => panic!("head with the cookie at {at}: {other:?}"),
        }
    }
}

/// A backend that refuses the connection (RST|ACK to the balancer's SYN, nothing
/// listening): the client gets the RST at once, in its own sequence space (the
/// syncookie's), from the VIP, and the connection is forgotten. A RST that does not
/// answer our SYN is dropped and changes nothing.
#[test]
fn backend_refusal_resets_the_client_at_once() {
    let (bed, _, backends) = setup();
    let conn = handshake(&bed, Conn::new(40000, 5000, 1460));
    let payload = http_get("be2");
    bind(&bed, &conn, &payload, backends[1], Choice::Hit, None);
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
    assert_eq!(bed.flow_entries().unwrap().len(), 2);
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
    assert!(
        bed.flow_entries().unwrap().is_empty(),
        "connection forgotten"
    );
}

/// The backend's TIME-WAIT of an earlier connection on the same 4-tuple answers the SYN
/// with an ACK of that old connection. The first time, XDP passes it to the TC program,
/// which resets the old connection (`<SEQ=SEG.ACK><CTL=RST>`, sent as a copy) and turns
/// the ACK into the SYN again, so the binding goes on at once. A second stale ACK gets the
/// RST alone from XDP; the binding stays for the client's retransmission.
#[test]
fn stale_ack_from_the_backend_is_reset_and_the_syn_sent_again() {
    let (bed, _, backends) = setup();
    let conn = handshake(&bed, Conn::new(40000, 9000, 1460));
    let payload = http_get("be1");
    bind(&bed, &conn, &payload, backends[0], Choice::Hit, None);
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
    assert_eq!(bed.flow_entries().unwrap().len(), 2, "still binding");
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
    assert_eq!(bed.flow_entries().unwrap().len(), 2, "still binding");
    complete(&bed, &conn, &payload, backends[0], 31337);
}

/// A client retransmitting its first segment after its backend went down (while the
/// binding waited) is bound again: to the replacement the control plane wrote.
#[test]
fn retransmission_after_the_backend_failed_binds_again() {
    let (bed, svc, backends) = setup();
    let conn = handshake(&bed, Conn::new(40000, 77, 1460));
    let payload = http_get("be2");
    bind(&bed, &conn, &payload, backends[1], Choice::Hit, None);
    bed.set_failover(svc, backends[1], Some(backends[2]))
        .unwrap();
    bed.set_backend_state(svc, backends[1], backend_state::DOWN)
        .unwrap();
    let before = bed.backend_counters().unwrap();
    let r = run_counted(
        &bed,
        &conn.data(&payload).build(),
        Ingress::Client,
        XDP_REDIRECT,
        &[
            (Counter::BindsRedone, 1),
            (Counter::SyncookiesValid, 1),
            (Counter::CookiePairsReported, 1),
            (Counter::NewFlows, 1),
            (Counter::BindingsStarted, 1),
            (Counter::TxRedirect, 1),
            (Counter::TxBytes, BUILT_SYN_LEN),
        ],
        "retransmission to a failed backend",
    );
    check_frame(&r.output, &conn.expected_backend_syn(backends[2])).expect("SYN to be3");
    let delta = backend_delta(&before, &bed.backend_counters().unwrap());
    assert_eq!(delta[&backends[2]].failover_redirects, 1, "{delta:?}");
    assert_eq!(
        bed.flow_entries().unwrap().len(),
        2,
        "the old entries are gone"
    );
    complete(&bed, &conn, &payload, backends[2], 4242);
}

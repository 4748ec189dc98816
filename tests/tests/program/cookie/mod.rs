//! Cookie mode (delayed binding, `docs/delayed-binding.md`) one packet at a time through
//! `BPF_PROG_TEST_RUN` (see `balancer_tests::testrun`): every phase of a connection, the
//! retransmissions, the cookie outcomes and the TC fallback, with the exact counter
//! changes and every output frame compared field by field and byte by byte with the frame
//! it must be (checksums verified by recomputation). Needs root: every test panics with a
//! clear message otherwise. Each test has its own pinned instance and network namespace.
//!
//! The beds install [`TEST_SECRET`] as the syncookie secret, so the tests compute the
//! cookies the data plane must hand out (`syncookie::make_cookie` over CLOCK_TAI windows).

mod binding;
mod choice;
mod failure;
mod handshake;
mod options;
mod spliced;
mod tc;
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use balancer_common::{
    backend_state,
    cookie::{scan_payload, CookieConfig, CookieOutcome},
    direction, flow_flags, flow_state, phase,
    syncookie::{decode_mss, encode_mss, CookieSecret},
    tcp_opts::ClientOptions,
    Counter, Flow, FlowKey,
};
use balancer_tests::{packet::*, testrun::*};
use etherparse::TcpOptionElement;

use crate::{run, run_case, run_cases, run_counted, tc_counted, Case, Output};
use balancer_user::{control::stats::BackendCountersValues, ServiceAddr};

const FLOWS: u32 = 65_536;
/// Frame length of the answers the data plane builds in place for a client that offers
/// only an MSS: a SYN-ACK or a SYN with one MSS option (14 + 20 + 24).
const BUILT_SYN_LEN: u64 = 58;
/// The TSval of every segment of a client that sends timestamps (its clock stands still
/// for the length of a test).
const CLIENT_TSVAL: u32 = 0x1234_5678;
/// What a Linux client's SYN offers with default sysctls.
const LINUX_CLIENT: ClientOptions = ClientOptions {
    wscale: Some(7),
    sack_ok: true,
    timestamps: true,
};
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
             balancer-tests --test program cookie::`"
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

/// What a backend's SYN-ACK offers besides its MSS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BackendOptions {
    wscale: Option<u8>,
    sack_ok: bool,
    /// Its TSval, if it sends timestamps.
    tsval: Option<u32>,
}

impl BackendOptions {
    const NONE: BackendOptions = BackendOptions {
        wscale: None,
        sack_ok: false,
        tsval: None,
    };
    const LINUX: BackendOptions = BackendOptions {
        wscale: Some(7),
        sack_ok: true,
        tsval: Some(0x0bad_cafe),
    };
}

/// One client connection to the VIP.
#[derive(Clone, Copy, Debug)]
struct Conn {
    client: SocketAddrV4,
    isn: u32,
    /// The MSS option of the client's SYN.
    mss: u16,
    /// What else the client's SYN offers (default: nothing).
    options: ClientOptions,
    /// The syncookie (the SYN-ACK's ISN), once the handshake ran.
    cookie: u32,
    /// The SYN-ACK's TSval (`T0`), once the handshake ran, if the client sends timestamps.
    synack_tsval: u32,
    /// What the backend's SYN-ACK offers (default: nothing).
    backend: BackendOptions,
}

impl Conn {
    fn new(sport: u16, isn: u32, mss: u16) -> Conn {
        Conn {
            client: client(sport),
            isn,
            mss,
            options: ClientOptions::default(),
            cookie: 0,
            synack_tsval: 0,
            backend: BackendOptions::NONE,
        }
    }

    /// A client offering `options`, bound to a backend offering `backend`.
    fn with_options(mut self, options: ClientOptions, backend: BackendOptions) -> Conn {
        self.options = options;
        self.backend = backend;
        self
    }

    /// The client's timestamps option in a segment after the SYN, if it sends them.
    fn ts(&self) -> Option<Vec<u8>> {
        self.options
            .timestamps
            .then(|| ts_option(CLIENT_TSVAL, self.synack_tsval))
    }

    /// Length of the SYN the balancer sends the backend (and of its SYN-ACK): 14 + 20 +
    /// the TCP header with the client's options.
    fn built_syn_len(&self) -> u64 {
        let o = self.options;
        let opts = syn_options(
            self.mss,
            o.sack_ok,
            o.timestamps.then_some((0, 0)),
            o.wscale,
        );
        (14 + 20 + 20 + opts.len()) as u64
    }

    /// `K - B` for the backend's ISN `b`.
    fn shift(&self, b: u32) -> u32 {
        self.cookie.wrapping_sub(b)
    }

    /// The splice's timestamp offset `T0 - B0` (both ends send timestamps).
    fn ts_offset(&self) -> Option<u32> {
        match (self.options.timestamps, self.backend.tsval) {
            (true, Some(b0)) => Some(self.synack_tsval.wrapping_sub(b0)),
            _ => None,
        }
    }

    /// `options` of a client segment as the splice must hand them to the backend (ISN
    /// `b`): TSecr in the backend's clock (or timestamps stripped when it refused them),
    /// SACK blocks shifted like the acknowledgement (or stripped).
    fn options_to_backend(&self, options: &[u8], b: u32) -> Vec<u8> {
        let strip_ts = self.options.timestamps && self.backend.tsval.is_none();
        let strip_sack = self.options.sack_ok && !self.backend.sack_ok;
        let shift_sack = self.options.sack_ok && self.backend.sack_ok;
        let (off, shift) = (self.ts_offset(), self.shift(b));
        edit_options(options, |e| match e {
            TcpOptionElement::Timestamp(_, _) if strip_ts => None,
            TcpOptionElement::Timestamp(v, ecr) => Some(TcpOptionElement::Timestamp(
                v,
                off.map_or(ecr, |o| ecr.wrapping_sub(o)),
            )),
            TcpOptionElement::SelectiveAcknowledgement(..) if strip_sack => None,
            TcpOptionElement::SelectiveAcknowledgement(first, rest) if shift_sack => {
                let s = |(l, r): (u32, u32)| (l.wrapping_sub(shift), r.wrapping_sub(shift));
                Some(TcpOptionElement::SelectiveAcknowledgement(
                    s(first),
                    rest.map(|b| b.map(s)),
                ))
            }
            other => Some(other),
        })
    }

    /// `options` of a backend segment as the splice must hand them to the client: TSval
    /// in the clock the client saw in the SYN-ACK.
    fn options_to_client(&self, options: &[u8]) -> Vec<u8> {
        let off = self.ts_offset();
        edit_options(options, |e| match e {
            TcpOptionElement::Timestamp(v, ecr) => Some(TcpOptionElement::Timestamp(
                off.map_or(v, |o| v.wrapping_add(o)),
                ecr,
            )),
            other => Some(other),
        })
    }

    /// A client window as the backend must see it: unchanged, unless the client scales
    /// and the backend refused scaling (it reads windows unscaled).
    fn window_to_backend(&self, w: u16) -> u16 {
        match (self.options.wscale, self.backend.wscale) {
            (Some(c), None) => ((w as u32) << c).min(0xffff) as u16,
            _ => w,
        }
    }

    /// A backend window as the client must see it: from the backend's scale to the 7 the
    /// SYN-ACK offered, rounded down, capped at 65535.
    fn window_to_client(&self, w: u16) -> u16 {
        if self.options.wscale.is_none() {
            return w;
        }
        let bytes = (w as u64) << self.backend.wscale.unwrap_or(0);
        (bytes >> 7).min(0xffff) as u16
    }

    fn key(&self) -> FlowKey {
        tcp_key(self.client, vip())
    }

    /// The client's SYN: its MSS and options, laid out as Linux does.
    fn syn(&self) -> Frame {
        let o = self.options;
        Frame::tcp(self.client, vip(), SYN)
            .ttl(CLIENT_TTL)
            .seq(self.isn)
            .tcp_options(&syn_options(
                self.mss,
                o.sack_ok,
                o.timestamps.then_some((CLIENT_TSVAL, 0)),
                o.wscale,
            ))
    }

    /// The ACK completing the handshake.
    fn handshake_ack(&self) -> Frame {
        let f = Frame::tcp(self.client, vip(), ACK)
            .ttl(CLIENT_TTL)
            .seq(self.isn.wrapping_add(1))
            .ack(self.cookie.wrapping_add(1));
        match self.ts() {
            Some(ts) => f.tcp_options(&ts),
            None => f,
        }
    }

    /// The first data segment.
    fn data(&self, payload: &[u8]) -> Frame {
        let f = Frame::tcp(self.client, vip(), PSH_ACK)
            .ttl(CLIENT_TTL)
            .seq(self.isn.wrapping_add(1))
            .ack(self.cookie.wrapping_add(1))
            .payload(payload);
        match self.ts() {
            Some(ts) => f.tcp_options(&ts),
            None => f,
        }
    }

    /// The MSS the cookie carries (the client's, rounded down to the table).
    fn cookie_mss(&self) -> u16 {
        decode_mss(encode_mss(self.mss)).unwrap()
    }

    /// The SYN-ACK the balancer must answer the SYN with: the client's options mirrored
    /// (window scale 7 whatever the client's, timestamps echoing the client's TSval).
    fn expected_synack(&self, cookie: u32) -> Frame {
        let o = self.options;
        Frame::tcp(vip(), self.client, SYN_ACK)
            .macs(CLIENT_IF_MAC, CLIENT_MAC)
            .seq(cookie)
            .ack(self.isn.wrapping_add(1))
            .window(65535)
            .tcp_options(&syn_options(
                self.cookie_mss().min(1460),
                o.sack_ok,
                o.timestamps.then_some((self.synack_tsval, CLIENT_TSVAL)),
                o.wscale.map(|_| 7),
            ))
    }

    /// The SYN the balancer must send `backend` for this connection: the client's own
    /// options, timestamps with the client's TSval.
    fn expected_backend_syn(&self, backend: SocketAddrV4) -> Frame {
        let o = self.options;
        Frame::tcp(self.client, backend, SYN)
            .macs(BACKEND_IF_MAC, backend_mac(*backend.ip()))
            .seq(self.isn)
            .ack(0)
            .window(CLIENT_WINDOW)
            .tcp_options(&syn_options(
                self.cookie_mss(),
                o.sack_ok,
                o.timestamps.then_some((CLIENT_TSVAL, 0)),
                o.wscale,
            ))
    }

    /// The backend's SYN-ACK to the balancer's SYN, with ISN `b`.
    fn backend_synack(&self, backend: SocketAddrV4, b: u32) -> Frame {
        let be = self.backend;
        Frame::reply(backend, self.client, SYN_ACK)
            .seq(b)
            .ack(self.isn.wrapping_add(1))
            .window(65160)
            .tcp_options(&syn_options(
                1460,
                be.sack_ok && self.options.sack_ok,
                be.tsval
                    .filter(|_| self.options.timestamps)
                    .map(|v| (v, CLIENT_TSVAL)),
                be.wscale.filter(|_| self.options.wscale.is_some()),
            ))
    }

    /// The kept first segment as it must reach `backend` once its ISN `b` is known: in
    /// a fresh IPv4 header (TTL 64, no options), TCP header and payload as the client
    /// sent them but for the port and the acknowledgement number.
    fn expected_segment(&self, payload: &[u8], backend: SocketAddrV4, b: u32) -> Frame {
        let data = self.data(payload);
        let options = self.options_to_backend(&data.tcp_options, b);
        let window = self.window_to_backend(data.window);
        data.addressed(
            BACKEND_IF_MAC,
            backend_mac(*backend.ip()),
            self.client,
            backend,
        )
        .ttl(64)
        .ack(b.wrapping_add(1))
        .tcp_options(&options)
        .window(window)
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
            .tcp_options(&self.options_to_backend(&f.tcp_options, b))
            .window(self.window_to_backend(f.window))
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
            .tcp_options(&self.options_to_client(&f.tcp_options))
            .window(self.window_to_client(f.window))
    }
}

/// `options` with each option passed through `edit` (read with etherparse, not the data
/// plane's parser): `None` overwrites the option with NOPs of its length. Bytes after the
/// last option (EOL padding) are kept.
fn edit_options(
    options: &[u8],
    edit: impl Fn(TcpOptionElement) -> Option<TcpOptionElement>,
) -> Vec<u8> {
    let mut out = Vec::new();
    for e in etherparse::TcpOptionsIterator::from_slice(options) {
        let e = e.expect("a well-formed option in a test frame");
        let len = option_bytes(&e).len();
        match edit(e) {
            Some(new) => out.extend_from_slice(&option_bytes(&new)),
            None => out.extend(std::iter::repeat_n(1u8, len)),
        }
    }
    out.extend_from_slice(&options[out.len().min(options.len())..]);
    out
}

/// The wire bytes of one option.
fn option_bytes(e: &TcpOptionElement) -> Vec<u8> {
    use TcpOptionElement::*;
    match *e {
        Noop => vec![1],
        MaximumSegmentSize(m) => {
            let m = m.to_be_bytes();
            vec![2, 4, m[0], m[1]]
        }
        WindowScale(s) => vec![3, 3, s],
        SelectiveAcknowledgementPermitted => vec![4, 2],
        SelectiveAcknowledgement(first, rest) => {
            let blocks: Vec<(u32, u32)> = std::iter::once(first)
                .chain(rest.into_iter().flatten())
                .collect();
            sack_option(&blocks)[2..].to_vec()
        }
        Timestamp(v, e) => ts_option(v, e)[2..].to_vec(),
    }
}

/// The timestamps option of a TCP frame (etherparse's reading).
fn timestamps_of(frame: &[u8]) -> Option<(u32, u32)> {
    let s = etherparse::SlicedPacket::from_ethernet(frame).ok()?;
    let Some(etherparse::TransportSlice::Tcp(t)) = s.transport else {
        return None;
    };
    t.options_iterator().find_map(|o| match o {
        Ok(TcpOptionElement::Timestamp(v, e)) => Some((v, e)),
        _ => None,
    })
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
        .map(|t| {
            syncookie_with(
                &TEST_SECRET,
                conn.client,
                vip(),
                conn.isn,
                conn.mss,
                &conn.options,
                *t,
            )
        })
        .collect();
    assert!(
        candidates.contains(&got),
        "SYN-ACK ISN {got:#010x} is not the syncookie {candidates:#010x?}"
    );
    if conn.options.timestamps {
        // The options the cookie has no room for ride in the TSval's low 5 bits.
        let (tsval, _) = timestamps_of(&r.output).expect("SYN-ACK timestamps");
        assert_eq!(
            tsval & 0x1f,
            conn.options.bits(),
            "SYN-ACK TSval {tsval:#x}"
        );
        conn.synack_tsval = tsval;
    }
    check_frame(&r.output, &conn.expected_synack(got)).expect("SYN-ACK");
    conn.cookie = got;
    conn
}

/// Runs the client's handshake ACK of `conn` and checks its cookie validates: counted
/// as `syncookies_valid` and dropped (nothing to forward before the first segment).
fn handshake_ack_validates(bed: &TestBed, conn: &Conn, what: &str) {
    let input = conn.handshake_ack().build();
    let valid = [(Counter::SyncookiesValid, 1)];
    run_counted(bed, &input, Ingress::Client, XDP_DROP, &valid, what);
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
        (Counter::TxBytes, conn.built_syn_len()),
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
        bytes_to: conn.built_syn_len(),
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

/// Runs the first data segment of `conn` again (a retransmission) and checks it became
/// the SYN to `backend`, with exactly the counter changes `counters`. Returns the
/// per-backend counter changes.
fn first_segment_again(
    bed: &TestBed,
    conn: &Conn,
    payload: &[u8],
    backend: SocketAddrV4,
    counters: &[(Counter, u64)],
    what: &str,
) -> BTreeMap<SocketAddrV4, BackendCountersValues> {
    let before = bed.backend_counters().unwrap();
    let input = conn.data(payload).build();
    let r = run_counted(bed, &input, Ingress::Client, XDP_REDIRECT, counters, what);
    check_frame(&r.output, &conn.expected_backend_syn(backend))
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    backend_delta(&before, &bed.backend_counters().unwrap())
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
        bed.pending_segment(&reply_key(conn, backend)).unwrap(),
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

/// The forward and reply entries of `conn` bound to `backend`: the reply entry in the
/// flow table once spliced, with the kept segment in PENDING while binding (never both).
fn entries(bed: &TestBed, conn: &Conn, backend: SocketAddrV4) -> (Flow, Flow) {
    let fwd = bed.flow_entry(&conn.key()).unwrap().expect("forward entry");
    let key = reply_key(conn, backend);
    let rev = match (
        bed.flow_entry(&key).unwrap(),
        bed.pending_reply(&key).unwrap(),
    ) {
        (Some(rev), None) | (None, Some(rev)) => rev,
        (rev, kept) => panic!("reply entry: in FLOWS {rev:?}, in PENDING {kept:?}"),
    };
    (fwd, rev)
}

/// The key of the reply direction of `conn` bound to `backend` (what the backend's
/// answers carry), under which a binding keeps its segment.
fn reply_key(conn: &Conn, backend: SocketAddrV4) -> FlowKey {
    tcp_key(backend, conn.client)
}

/// `conn` is being bound to `backend` and nothing else is: its client-side entry is the
/// only flow entry, its reply entry and first segment the only kept segment.
fn assert_binding(bed: &TestBed, conn: &Conn, backend: SocketAddrV4, what: &str) {
    let keys: Vec<FlowKey> = bed
        .flow_entries()
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, vec![conn.key()], "{what}: flow entries");
    assert_eq!(
        bed.pending_keys().unwrap(),
        vec![reply_key(conn, backend)],
        "{what}: kept segments"
    );
}

/// A connection through SYN, first segment (bound to `backend` by its cookie) and the
/// backend's SYN-ACK with ISN `b`.
fn spliced(bed: &TestBed, conn: Conn, backend: SocketAddrV4, id: &str, b: u32) -> Conn {
    let (conn, payload) = bound(bed, conn, backend, id);
    complete(bed, &conn, &payload, backend, b);
    conn
}

/// A bed ([`setup`]) with one connection, from client port 40000 with ISN `isn`, whose
/// first segment is bound to `backends[i]` by its cookie ([`bound`]): the bed, the
/// service, the backends, the connection and the first segment's payload.
fn one_binding(isn: u32, i: usize) -> (TestBed, ServiceAddr, Vec<SocketAddrV4>, Conn, Vec<u8>) {
    let (bed, svc, backends) = setup();
    let id = format!("be{}", i + 1);
    let (conn, payload) = bound(&bed, Conn::new(40000, isn, 1460), backends[i], &id);
    (bed, svc, backends, conn, payload)
}

/// A connection through SYN and first segment, a GET whose cookie names `id`, bound to
/// `backend` (a cookie hit): waiting for the backend's SYN-ACK. Returns the connection
/// and the first segment's payload.
fn bound(bed: &TestBed, conn: Conn, backend: SocketAddrV4, id: &str) -> (Conn, Vec<u8>) {
    let conn = handshake(bed, conn);
    let payload = http_get(id);
    bind(bed, &conn, &payload, backend, Choice::Hit, None);
    (conn, payload)
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

// --- The helpers' own checks ----------------------------------------------------------------

#[test]
fn cookie_helpers_check_themselves() {
    // No root needed: packet builders and validators only.
    use balancer_common::cookie::token_hash;
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

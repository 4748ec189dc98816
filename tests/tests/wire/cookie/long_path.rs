//! Spliced connections at full speed (issue 12): Linux's own TCP on both ends, over a
//! path with a 50 ms round trip (the impairment relay's delay, 25 ms each way, on the
//! client's link), without and with 1% loss. The balancer's SYN-ACK mirrors the options
//! the client offered (it does not know the backend yet) and the splice translates them,
//! so the client's end negotiates exactly what the client offered and the backend's end
//! what both offered; `ss` on each end says which, and how many segments were resent.

use std::{net::SocketAddr, time::Duration};

use balancer_tests::{
    bulk::{self, Transfer},
    ss::{self, TcpOptions, TcpSocketInfo},
    topology::BACKEND_PORT,
};

use super::*;

/// Each way, for the large transfers.
const LARGE: usize = 100 << 20;
/// Each way, for every combination of options.
const SMALL: usize = 2 << 20;
/// Reads and writes of a transfer time out after this long without progress.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// The long path with `loss`, one backend in a cookie-mode service.
fn long_path_setup(loss: f64) -> Topology {
    assert_root();
    let mut t = bulk::long_path_topology(
        1,
        topology::balancer_bin().expect("the balancer binary"),
        loss,
        0x1012,
    )
    .expect("building the long-path topology");
    add_cookie_service(&mut t);
    t
}

/// The two ends of the connection to `server` (the VIP: spliced; the backend: direct)
/// whose client socket is `client`: the client's and the backend's (whose peer is the
/// client's address: the splice keeps it).
fn both_ends(
    t: &Topology,
    client: SocketAddr,
    server: SocketAddr,
) -> (TcpSocketInfo, TcpSocketInfo) {
    let c = ss::find(&t.client, Some(client), Some(server)).expect("ss on the client");
    let b = ss::find(&t.backends[0].ns, None, Some(client)).expect("ss on the backend");
    assert_eq!(
        b.local.map(|a| a.port()),
        Some(BACKEND_PORT),
        "backend socket: {b:?}"
    );
    (c, b)
}

/// Whether each end negotiated what it should: the client's end `client_end`, the
/// backend's end `backend_end`.
fn check_negotiated(
    what: &str,
    ends: &(TcpSocketInfo, TcpSocketInfo),
    client_end: TcpOptions,
    backend_end: TcpOptions,
) -> Result<(), String> {
    let (c, b) = ends;
    let mut wrong = Vec::new();
    if c.negotiated() != client_end {
        wrong.push(format!(
            "the client's end negotiated {}, expected {client_end}: {}",
            c.options(),
            c.raw
        ));
    }
    if b.negotiated() != backend_end {
        wrong.push(format!(
            "the backend's end negotiated {}, expected {backend_end}: {}",
            b.options(),
            b.raw
        ));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("{what}: {}", wrong.join("; ")))
    }
}

/// What each end of a connection should negotiate when the client offers `client` and
/// the backend `backend`: spliced, the client's end (client <-> VIP) gets what the
/// client offered (the balancer's SYN-ACK mirrors it, not knowing the backend yet) and
/// the backend's end what both offered; direct, both ends what both offered.
fn expected_ends(
    spliced: bool,
    client: TcpOptions,
    backend: TcpOptions,
) -> (TcpOptions, TcpOptions) {
    let both = client.and(backend);
    (if spliced { client } else { both }, both)
}

/// The sender of a transfer resent at most `bound` of its data segments, not counting
/// as many as the relay's socket dropped (frames it could not read in time on a busy
/// machine are lost like the ones it drops on purpose).
fn assert_few_retransmissions(what: &str, sender: &TcpSocketInfo, bound: f64, t: &Topology) {
    let relay = &t.wan.as_ref().unwrap().relay;
    let dropped = relay.a_to_b().socket_drops + relay.b_to_a().socket_drops;
    let allowed = bound * sender.data_segs_out as f64 + dropped as f64;
    assert!(
        f64::from(sender.retrans.1) < allowed,
        "{what}: {} of {} data segments retransmitted (bound {:.1}% + {dropped} dropped by the relay's socket): {}",
        sender.retrans.1,
        sender.data_segs_out,
        bound * 100.0,
        sender.raw
    );
}

/// On one connection to `server` over the long path (the VIP: spliced; the backend's
/// address: direct, the baseline): the options of both ends (before the transfers, so a
/// missing option fails at once), a `LARGE` download then a `LARGE` upload, each
/// checked, with `ss` read after each while the connection is open.
fn large_transfers(t: &Topology, loss: f64, server: SocketAddr) {
    let spliced = server == vip();
    let label = format!(
        "{}, 50 ms RTT, {:.0}% loss",
        if spliced { "spliced" } else { "direct" },
        loss * 100.0
    );
    let body = bulk::upload_body(LARGE);
    // Segments lost on the path are resent; a storm resends many times more.
    let bound = 3.0 * loss + 0.01;
    let (down, up, client_end, backend_end) = std::thread::scope(|s| {
        s.spawn(|| {
            t.client
                .enter_current_thread()
                .expect("entering the client");
            let mut c = bulk::connect(server, IO_TIMEOUT).expect("connecting");
            let local = c.local_addr().unwrap();
            let r = c
                .get("/")
                .expect("a first request (it binds a spliced connection)");
            assert_eq!(r.answering_backend().unwrap(), "be1");
            let ends = both_ends(t, local, server);
            let (client_end, backend_end) =
                expected_ends(spliced, TcpOptions::ALL, TcpOptions::ALL);
            if let Err(e) = check_negotiated(&label, &ends, client_end, backend_end) {
                panic!("{e}");
            }

            let (down, _) = bulk::download(&mut c, LARGE, &[])
                .unwrap_or_else(|e| panic!("{label}: download: {e:#}"));
            let (_, backend_sent) = both_ends(t, local, server);
            assert_few_retransmissions(&format!("{label}, download"), &backend_sent, bound, t);
            let (up, _) = bulk::upload(&mut c, &body, &[])
                .unwrap_or_else(|e| panic!("{label}: upload: {e:#}"));
            let (client_sent, backend_end) = both_ends(t, local, server);
            assert_few_retransmissions(&format!("{label}, upload"), &client_sent, bound, t);
            (down, up, client_sent, backend_end)
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    });
    let relay = &t.wan.as_ref().unwrap().relay;
    eprintln!(
        "{label}: {} MiB download {:.1} Mbit/s ({:.1} s), upload {:.1} Mbit/s ({:.1} s); congestion control {:?}; client {} rtt {:?} retrans {:?}; backend {} rtt {:?} retrans {:?}; relay {}",
        LARGE >> 20,
        down.mbit_s(),
        down.elapsed.as_secs_f64(),
        up.mbit_s(),
        up.elapsed.as_secs_f64(),
        client_end.congestion,
        client_end.options(),
        client_end.rtt_ms,
        client_end.retrans,
        backend_end.options(),
        backend_end.rtt_ms,
        backend_end.retrans,
        relay.summary()
    );
    // The path really was long (and lossy when asked), both ways.
    let rtt = client_end.rtt_ms.expect("the client's RTT").0;
    assert!(rtt >= 50.0, "client RTT {rtt} ms: {}", relay.summary());
    for d in [relay.a_to_b(), relay.b_to_a()] {
        assert_eq!(d.oversized, 0, "{}", relay.summary());
        assert!(d.delayed > 0, "{}", relay.summary());
        if loss > 0.0 {
            assert!(d.lost > 0, "{}", relay.summary());
        }
    }
    let s = Stats::read(t);
    assert_eq!(
        s.global("bindings_completed"),
        spliced as u64,
        "{}",
        s.summary()
    );
    assert_no_failures(&s);
}

#[test]
fn hundred_megabytes_each_way_over_a_50_ms_path() {
    let _g = topology::machine_shared();
    let t = long_path_setup(0.0);
    large_transfers(&t, 0.0, vip());
}

#[test]
fn hundred_megabytes_each_way_over_a_50_ms_path_with_1_percent_loss() {
    let _g = topology::machine_shared();
    let t = long_path_setup(0.01);
    large_transfers(&t, 0.01, vip());
}

/// The baseline of the two above: the same transfers on a direct connection to the
/// backend over the same path (routed by the gateway's kernel, no splice), which must
/// negotiate every option and lose nothing to a retransmission storm; what it reaches is
/// what the relay sustains.
#[test]
fn direct_connections_over_the_50_ms_path_are_the_baseline() {
    let _g = topology::machine_shared();
    for loss in [0.0, 0.01] {
        let t = long_path_setup(loss);
        large_transfers(&t, loss, t.backends[0].socket_addr());
    }
}

/// What one case of the option matrix measured.
struct CaseResult {
    up: Transfer,
    down: Transfer,
    ends: (TcpSocketInfo, TcpSocketInfo),
}

/// The client offers `client`, the backend `backend`: a connection to `server` (the
/// VIP: spliced, it binds; the backend's address: direct) carries a `SMALL` upload and
/// download whole, and each end negotiated what it should; what went wrong otherwise.
fn options_case(
    t: &Topology,
    server: SocketAddr,
    client: TcpOptions,
    backend: TcpOptions,
) -> Result<CaseResult, String> {
    let spliced = server == vip();
    let what = format!(
        "{}, client {client}, backend {backend}",
        if spliced { "spliced" } else { "direct" }
    );
    client.apply(&t.client).expect("client sysctls");
    backend.apply(&t.backends[0].ns).expect("backend sysctls");
    let body = bulk::upload_body(SMALL);
    let (client_end, backend_end) = expected_ends(spliced, client, backend);
    std::thread::scope(|s| {
        s.spawn(|| {
            t.client
                .enter_current_thread()
                .expect("entering the client");
            let fail = |e: anyhow::Error| format!("{what}: {e:#}");
            let mut c = bulk::connect(server, IO_TIMEOUT).map_err(fail)?;
            let local = c.local_addr().unwrap();
            let (up, be) = bulk::upload(&mut c, &body, &[]).map_err(fail)?;
            if be != "be1" {
                return Err(format!("{what}: answered by {be:?}"));
            }
            let (down, _) = bulk::download(&mut c, SMALL, &[]).map_err(fail)?;
            let ends = both_ends(t, local, server);
            check_negotiated(&what, &ends, client_end, backend_end)?;
            Ok(CaseResult { up, down, ends })
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Clients and backends offering some of the options, or none but MSS (Linux always
/// sends MSS, so that is the least a Linux client offers).
fn option_cases() -> [(TcpOptions, TcpOptions); 9] {
    let all = TcpOptions::ALL;
    let no_ts = TcpOptions {
        timestamps: false,
        ..all
    };
    let no_sack = TcpOptions { sack: false, ..all };
    let no_wscale = TcpOptions {
        window_scaling: false,
        ..all
    };
    [
        (TcpOptions::MSS_ONLY, all),
        (no_ts, all),   // SACK without timestamps
        (no_sack, all), // timestamps without SACK
        (no_wscale, all),
        (all, no_ts),
        (all, no_sack),
        (all, no_wscale),
        (TcpOptions::MSS_ONLY, TcpOptions::MSS_ONLY),
        (no_ts, no_sack),
    ]
}

/// Every case of [`option_cases`] on a connection to `server`; all run, so that one
/// failure does not hide what the others do. Returns how many cases there were.
fn run_option_cases(t: &Topology, server: SocketAddr) -> usize {
    let cases = option_cases();
    let mut failures = Vec::new();
    for (client, backend) in cases {
        match options_case(t, server, client, backend) {
            Ok(r) => eprintln!(
                "to {server}: client {client}, backend {backend}: {} MiB upload {:.1} Mbit/s, download {:.1} Mbit/s; windows seen by the client {:?}, by the backend {:?}",
                SMALL >> 20,
                r.up.mbit_s(),
                r.down.mbit_s(),
                r.ends.0.snd_wnd,
                r.ends.1.snd_wnd
            ),
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    cases.len()
}

#[test]
fn clients_and_backends_offering_some_options_bind_and_transfer() {
    let _g = topology::machine_shared();
    let t = long_path_setup(0.0);
    let cases = run_option_cases(&t, vip());
    let s = Stats::read(&t);
    assert_eq!(
        s.global("bindings_completed"),
        cases as u64,
        "{}",
        s.summary()
    );
    assert_no_failures(&s);
}

/// The expectations of the test above, checked against Linux itself: on direct
/// connections, both ends negotiate what both offered (and the same transfers pass).
#[test]
fn direct_connections_negotiate_what_both_ends_offer() {
    let _g = topology::machine_shared();
    let t = long_path_setup(0.0);
    run_option_cases(&t, t.backends[0].socket_addr());
    assert_eq!(Stats::read(&t).global("bindings_completed"), 0);
}

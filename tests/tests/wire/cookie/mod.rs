//! End-to-end tests of cookie mode (delayed binding): real HTTP clients through the XDP
//! data plane in network namespaces; the backends answer with their name, so every
//! response says which backend the connection was bound to.
//!
//! Needs root and a built `balancer` binary (see `wire/netns.rs`). The SYN-flood test takes the
//! machine for itself (the others wait for it, and it for them) so that its rate and the
//! other tests' timings do not disturb each other.

mod backend_failure;
mod long_path;
mod ports;
mod routing;
mod syn_flood;
mod transfer;

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    time::{Duration, Instant},
};

use balancer_tests::{
    attack::{self, RawSender, Segment},
    daemon::backend_entry,
    harness::root::assert_root,
    http::{self, Conn, Fnv64},
    impair::Impairment,
    netns::Netns,
    topology::{self, service_arg, vip, Stats, Topology},
};

use crate::TESTSRV;

/// Adds the cookie-mode service `VIP:80` with every backend, each backend's server id
/// being its name (be1, be2, ...), and starts the test servers.
fn add_cookie_service(t: &mut Topology) {
    t.attach().expect("attaching the balancer");
    t.start_servers(Path::new(TESTSRV))
        .expect("starting test servers");
    t.add_cookie_service_with_backends()
        .expect("adding the cookie service");
}

/// Two-arm topology with `n` backends in a cookie-mode service.
fn setup(n: usize) -> Topology {
    assert_root();
    let mut t = Topology::two_arm(n).expect("building the topology");
    add_cookie_service(&mut t);
    t
}

/// `JSESSIONID` naming `primary` (and another server as secondary), placed among other
/// cookies in one of four ways chosen by `i`.
fn session_cookie(i: usize, primary: &str) -> String {
    let sid = format!("JSESSIONID=s{i:05}x!{primary}!be9");
    match i % 4 {
        0 => sid,
        1 => format!("{sid}; theme=dark"),
        2 => format!("a=1; {sid}; z=2"),
        _ => format!("theme=dark; lang=en-GB; tracking=abc123; {sid}"),
    }
}

/// One GET on a fresh connection (connect timeout `connect`) with `cookie` (if any) among
/// a few other headers; the name of the backend that answered.
fn get_with_cookie(cookie: Option<&str>, connect: Duration) -> anyhow::Result<String> {
    get_with_cookie_from(cookie, connect).map(|(name, _)| name)
}

/// [`get_with_cookie`], also returning the client port the connection used.
fn get_with_cookie_from(cookie: Option<&str>, connect: Duration) -> anyhow::Result<(String, u16)> {
    let mut conn = Conn::connect_timeout(vip(), connect)?;
    let port = conn.local_addr()?.port();
    let mut headers = vec![
        ("User-Agent", "cookie-test/1"),
        ("Accept", "*/*"),
        ("Connection", "close"),
    ];
    if let Some(c) = cookie {
        headers.insert(2, ("Cookie", c));
    }
    let r = conn.request("GET", "/", &headers, &[])?;
    Ok((r.answering_backend()?, port))
}

/// Runs `f(k)` for k in 0..threads, each on its own thread inside `ns`; the results in
/// order of k.
fn in_parallel<T: Send>(ns: &Netns, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                let f = &f;
                s.spawn(move || {
                    ns.enter_current_thread().expect("entering the namespace");
                    f(k)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread panicked"))
            .collect()
    })
}

/// Counters that no test traffic should move: failures of the binding machinery.
const FAILURE_COUNTERS: &[&str] = &[
    "syncookies_invalid",
    "drop_no_syncookie_key",
    "bindings_timed_out",
    "drop_no_backend",
    "drop_no_route",
    "drop_flow_table_full",
    "pass_malformed",
];

fn assert_no_failures(s: &Stats) {
    for c in FAILURE_COUNTERS {
        assert_eq!(s.global(c), 0, "{c}: {}", s.summary());
    }
}

fn count_by_name(answers: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in answers {
        *m.entry(a.clone()).or_default() += 1;
    }
    m
}

/// A SYN as Linux sends it (window 64240, MSS 1460).
fn syn(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, seq: u32) -> Segment<'static> {
    Segment {
        seq,
        flags: attack::TCP_SYN,
        window: 64240,
        mss: Some(1460),
        ..Segment::between(src, sport, dst, dport)
    }
}

//! End-to-end tests of cookie mode (delayed binding): real HTTP clients through the XDP
//! data plane in network namespaces; the backends answer with their name, so every
//! response says which backend the connection was bound to.
//!
//! Needs root and a built `balancer` binary (see `netns.rs`). The SYN-flood test takes the
//! machine for itself (the others wait for it, and it for them) so that its rate and the
//! other tests' timings do not disturb each other.

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    time::{Duration, Instant},
};

use balancer_tests::{
    attack::{self, RawSender, Segment, Sniffer},
    http::{self, Conn, Fnv64},
    impair::Impairment,
    netns::Netns,
    topology::{self, service_arg, vip, Stats, Topology},
};
use serde_json::Value;

const TESTSRV: &str = env!("CARGO_BIN_EXE_balancer-testsrv");

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
    topology::assert_root();
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
    anyhow::ensure!(r.status == 200, "status {}", r.status);
    anyhow::ensure!(
        r.header("x-backend") == Some(r.text().as_str()),
        "body {:?} and X-Backend {:?} disagree",
        r.text(),
        r.header("x-backend")
    );
    Ok((r.text(), port))
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

/// Global counters that are not zero, for failure messages.
fn nonzero(s: &Stats) -> String {
    let g = s.0["global"].as_object().unwrap();
    let mut out: Vec<String> = g
        .iter()
        .filter(|(_, v)| v.as_u64() != Some(0))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for b in s.0["backends"].as_array().unwrap() {
        out.push(format!(
            "[{} hits={} misses={} failover={} flows={}]",
            b["backend"],
            b["cookie_hits"],
            b["cookie_misses"],
            b["failover_redirects"],
            b["new_flows"]
        ));
    }
    out.join(" ")
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
        assert_eq!(s.global(c), 0, "{c}: {}", nonzero(s));
    }
}

fn count_by_name(answers: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in answers {
        *m.entry(a.clone()).or_default() += 1;
    }
    m
}

#[test]
fn requests_land_on_the_backend_their_cookie_names() {
    const N: usize = 1000;
    const THREADS: usize = 4;
    let _g = topology::machine_shared();
    let t = setup(3);
    let names: Vec<String> = t.backends.iter().map(|b| b.name.clone()).collect();
    let started = Instant::now();
    let results = in_parallel(&t.client, THREADS, |k| {
        (k..N)
            .step_by(THREADS)
            .map(|i| {
                let want = names[i % names.len()].clone();
                let got = get_with_cookie(Some(&session_cookie(i, &want)), http::CONNECT_TIMEOUT)
                    .map_err(|e| format!("{e:#}"));
                (i, want, got)
            })
            .collect::<Vec<_>>()
    });
    let elapsed = started.elapsed();
    let s = Stats::read(&t);
    let mut wrong = Vec::new();
    for (i, want, got) in results.iter().flatten() {
        if got.as_deref() != Ok(want.as_str()) {
            wrong.push(format!("request {i} for {want}: {got:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {N} requests did not reach their backend, first {:?}; counters: {}",
        wrong.len(),
        &wrong[..wrong.len().min(5)],
        nonzero(&s)
    );
    eprintln!(
        "{N} cookie requests on fresh connections in {:.2} s ({:.0}/s)",
        elapsed.as_secs_f64(),
        N as f64 / elapsed.as_secs_f64()
    );
    let ctx = nonzero(&s);
    assert_eq!(s.global("bindings_started"), N as u64, "{ctx}");
    assert_eq!(s.global("bindings_completed"), N as u64, "{ctx}");
    assert_eq!(s.global("new_flows"), N as u64, "{ctx}");
    assert!(s.global("syncookies_sent") >= N as u64, "{ctx}");
    // The handshake ACK and the first segment of every connection.
    assert!(s.global("syncookies_valid") >= 2 * N as u64, "{ctx}");
    // One-segment requests: nothing arrives while a connection is being bound.
    assert_eq!(s.global("drop_while_binding"), 0, "{ctx}");
    assert_no_failures(&s);
    for c in [
        "cookie_not_http",
        "cookie_no_header",
        "cookie_name_absent",
        "cookie_no_token",
        "cookie_beyond_first_segment",
        "cookie_unknown_token",
    ] {
        assert_eq!(s.global(c), 0, "{c}: {ctx}");
    }
    for (k, b) in t.backends.iter().enumerate() {
        let named = (0..N).filter(|i| i % t.backends.len() == k).count() as u64;
        assert_eq!(s.backend(&b.endpoint(), "cookie_hits"), named, "{ctx}");
        assert_eq!(s.backend(&b.endpoint(), "new_flows"), named, "{ctx}");
        assert_eq!(s.backend(&b.endpoint(), "cookie_misses"), 0, "{ctx}");
        assert_eq!(s.backend(&b.endpoint(), "failover_redirects"), 0, "{ctx}");
    }
    assert_eq!(s.backends_sum("cookie_hits"), N as u64, "{ctx}");
}

#[test]
fn requests_without_a_usable_cookie_follow_the_policy() {
    const N: usize = 300;
    const EACH: usize = 20;
    let _g = topology::machine_shared();
    let t = setup(3);
    let answers: Vec<Result<String, String>> = in_parallel(&t.client, 3, |k| {
        (k..N)
            .step_by(3)
            .map(|_| get_with_cookie(None, http::CONNECT_TIMEOUT).map_err(|e| format!("{e:#}")))
            .collect::<Vec<_>>()
    })
    .into_iter()
    .flatten()
    .collect();
    let errors: Vec<_> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        errors.is_empty(),
        "{} errors: {:?}",
        errors.len(),
        errors.first()
    );
    let answers: Vec<String> = answers.into_iter().map(Result::unwrap).collect();
    let spread = count_by_name(&answers);
    // Each within 1/3 +- 0.13 (60..=140 of 300), as in the plain-NAT test.
    for b in &t.backends {
        let n = spread.get(&b.name).copied().unwrap_or(0);
        assert!(
            (60..=140).contains(&n),
            "{} got {n} of {N}: {spread:?}",
            b.name
        );
    }
    let s = Stats::read(&t);
    let ctx = nonzero(&s);
    assert_eq!(s.global("cookie_no_header"), N as u64, "{ctx}");
    assert_eq!(s.backends_sum("cookie_misses"), N as u64, "{ctx}");
    assert_eq!(s.backends_sum("cookie_hits"), 0, "{ctx}");
    for b in &t.backends {
        assert_eq!(
            s.backend(&b.endpoint(), "cookie_misses"),
            spread[&b.name] as u64,
            "{ctx}"
        );
    }

    // Cookies that name no usable server: each outcome has its counter, and the policy
    // answers.
    let cases: [(&str, &str); 3] = [
        ("theme=dark; SESSION=s1!be1!be2", "cookie_name_absent"),
        ("a=1; JSESSIONID=nodelimiter", "cookie_no_token"),
        ("JSESSIONID=s1!nosuch!be2", "cookie_unknown_token"),
    ];
    for (cookie, counter) in cases {
        let before = Stats::read(&t);
        let cookie = cookie.to_string();
        let answers = t
            .client
            .run(move || {
                (0..EACH)
                    .map(|_| get_with_cookie(Some(&cookie), http::CONNECT_TIMEOUT))
                    .collect::<anyhow::Result<Vec<_>>>()
            })
            .unwrap()
            .unwrap_or_else(|e| panic!("cookie for {counter}: {e:#}"));
        let after = Stats::read(&t);
        assert_eq!(
            after.global(counter) - before.global(counter),
            EACH as u64,
            "{}",
            nonzero(&after)
        );
        assert_eq!(
            after.backends_sum("cookie_misses") - before.backends_sum("cookie_misses"),
            EACH as u64,
            "{}",
            nonzero(&after)
        );
        assert!(answers.iter().all(|a| t.backend_index(a).is_some()));
    }
    let s = Stats::read(&t);
    assert_eq!(s.backends_sum("cookie_hits"), 0, "{}", nonzero(&s));
    assert_no_failures(&s);
}

/// A TLS 1.2 ClientHello record (SNI `app.example.test`): what a TLS client sends first.
fn client_hello() -> Vec<u8> {
    let sni = b"app.example.test";
    let mut ext = Vec::new();
    // server_name: type 0, list of one host_name.
    ext.extend_from_slice(&[0x00, 0x00]);
    ext.extend_from_slice(&((sni.len() + 5) as u16).to_be_bytes());
    ext.extend_from_slice(&((sni.len() + 3) as u16).to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    ext.extend_from_slice(sni);
    let mut body = vec![0x03, 0x03];
    body.extend((0..32u8).map(|i| i.wrapping_mul(37).wrapping_add(11)));
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2f, 0x13, 0x01]); // cipher suites
    body.extend_from_slice(&[0x01, 0x00]); // compression: null
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

#[test]
fn non_http_first_segment_is_bound_by_policy() {
    const N: usize = 12;
    let _g = topology::machine_shared();
    let t = setup(3);
    let hello = client_hello();
    let sent = hello.clone();
    let answers = t
        .client
        .run(move || -> anyhow::Result<Vec<String>> {
            let mut names = Vec::new();
            for _ in 0..N {
                let mut s = TcpStream::connect_timeout(&vip(), http::CONNECT_TIMEOUT)?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(http::READ_TIMEOUT))?;
                s.write_all(&sent)?;
                // testsrv: `NAME\n`, then the bytes echoed.
                let mut name = Vec::new();
                let mut byte = [0u8; 1];
                while name.len() < 16 {
                    s.read_exact(&mut byte)?;
                    if byte[0] == b'\n' {
                        break;
                    }
                    name.push(byte[0]);
                }
                let mut echoed = vec![0u8; sent.len()];
                s.read_exact(&mut echoed)?;
                anyhow::ensure!(echoed == sent, "the backend received other bytes");
                names.push(String::from_utf8(name)?);
            }
            Ok(names)
        })
        .unwrap()
        .expect("TLS-like connections through a cookie-mode service");
    assert!(
        answers.iter().all(|a| t.backend_index(a).is_some()),
        "{answers:?}"
    );
    let s = Stats::read(&t);
    let ctx = nonzero(&s);
    assert_eq!(s.global("cookie_not_http"), N as u64, "{ctx}");
    assert_eq!(s.backends_sum("cookie_misses"), N as u64, "{ctx}");
    assert_eq!(s.global("bindings_completed"), N as u64, "{ctx}");
    assert_no_failures(&s);
    eprintln!(
        "ClientHello ({} bytes) connections by backend: {:?}",
        hello.len(),
        count_by_name(&answers)
    );
}

#[test]
fn keepalive_connection_stays_on_the_cookie_backend() {
    let _g = topology::machine_shared();
    let t = setup(3);
    let cookie = session_cookie(2, "be2");
    let answers = t
        .client
        .run(move || -> anyhow::Result<Vec<(String, usize)>> {
            let mut c = Conn::connect(vip())?;
            let mut out = Vec::new();
            for i in 0..100 {
                // Some answers several segments long, to move the sequence numbers on.
                let path = if i % 10 == 9 { "/bytes/20000" } else { "/" };
                let r = c.request("GET", path, &[("Cookie", &cookie)], &[])?;
                anyhow::ensure!(r.status == 200, "request {i}: status {}", r.status);
                if path != "/" {
                    anyhow::ensure!(http::is_pattern(&r.body), "request {i}: bad body");
                }
                let who = r.header("x-backend").unwrap_or_default().to_string();
                out.push((who, r.body.len()));
            }
            Ok(out)
        })
        .unwrap()
        .expect("100 requests on one connection");
    assert_eq!(answers.len(), 100);
    for (i, (who, _)) in answers.iter().enumerate() {
        assert_eq!(who, "be2", "request {i}");
    }
    let s = Stats::read(&t);
    let ctx = nonzero(&s);
    assert_eq!(s.global("bindings_completed"), 1, "{ctx}");
    let be2 = t.backends[1].endpoint();
    assert_eq!(s.backend(&be2, "cookie_hits"), 1, "{ctx}");
    assert!(s.backend(&be2, "packets_to") >= 100, "{ctx}");
    assert!(s.backend(&be2, "packets_from") >= 100, "{ctx}");
    assert_no_failures(&s);
}

const TRANSFER: usize = 10 << 20;

/// `len` bytes of a deterministic pseudo-random stream.
fn upload_body(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// On one connection whose cookie names `backend`: a `TRANSFER`-byte upload, checked
/// against the backend's length and digest, then a `TRANSFER`-byte download, checked
/// against the pattern. Returns the two durations.
fn transfers(
    t: &Topology,
    backend: &str,
    connect: Duration,
    io_timeout: Duration,
) -> (Duration, Duration) {
    let cookie = session_cookie(7, backend);
    let body = upload_body(TRANSFER, 0x5eed);
    let digest = Fnv64::of(&body).hex();
    let backend = backend.to_string();
    t.client
        .run(move || -> anyhow::Result<(Duration, Duration)> {
            let mut c = Conn::connect_timeout(vip(), connect)?;
            c.stream().set_read_timeout(Some(io_timeout))?;
            c.stream().set_write_timeout(Some(io_timeout))?;
            let started = Instant::now();
            let r = c.request("POST", "/upload", &[("Cookie", &cookie)], &body)?;
            let up = started.elapsed();
            anyhow::ensure!(r.status == 200, "upload: status {}", r.status);
            anyhow::ensure!(
                r.header("x-backend") == Some(backend.as_str()),
                "upload answered by {:?}",
                r.header("x-backend")
            );
            anyhow::ensure!(
                r.header("x-body-len") == Some(TRANSFER.to_string().as_str()),
                "upload: backend read {:?} bytes",
                r.header("x-body-len")
            );
            anyhow::ensure!(
                r.header("x-body-fnv") == Some(digest.as_str()),
                "upload: backend digest {:?}, sent {digest}",
                r.header("x-body-fnv")
            );
            let started = Instant::now();
            let r = c.request(
                "GET",
                &format!("/bytes/{TRANSFER}"),
                &[("Cookie", &cookie)],
                &[],
            )?;
            let down = started.elapsed();
            anyhow::ensure!(r.status == 200, "download: status {}", r.status);
            anyhow::ensure!(r.header("x-backend") == Some(backend.as_str()));
            anyhow::ensure!(r.body.len() == TRANSFER, "download: {} bytes", r.body.len());
            anyhow::ensure!(http::is_pattern(&r.body), "download: corrupted body");
            Ok((up, down))
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("transfers through a spliced connection: {e:#}"))
}

fn mb_per_s(d: Duration) -> f64 {
    TRANSFER as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

#[test]
fn large_transfers_through_a_spliced_connection() {
    let _g = topology::machine_shared();
    let t = setup(3);
    let (up, down) = transfers(&t, "be3", http::CONNECT_TIMEOUT, http::READ_TIMEOUT);
    eprintln!(
        "spliced 10 MiB: upload {:.2} s ({:.1} MiB/s), download {:.2} s ({:.1} MiB/s)",
        up.as_secs_f64(),
        mb_per_s(up),
        down.as_secs_f64(),
        mb_per_s(down)
    );
    let s = Stats::read(&t);
    let ctx = nonzero(&s);
    assert_eq!(s.global("bindings_completed"), 1, "{ctx}");
    let be3 = t.backends[2].endpoint();
    assert_eq!(s.backend(&be3, "cookie_hits"), 1, "{ctx}");
    assert!(
        s.backend(&be3, "bytes_to") > TRANSFER as u64
            && s.backend(&be3, "bytes_from") > TRANSFER as u64,
        "{ctx}"
    );
    assert_no_failures(&s);
}

#[test]
fn transfers_and_requests_survive_loss_and_reordering() {
    let _g = topology::machine_shared();
    topology::assert_root();
    let mut t = Topology::two_arm_with_wan(3, Impairment::NONE).expect("building the topology");
    add_cookie_service(&mut t);
    let impaired = Impairment::new(0.02, 0.05, 0x1055);
    t.wan.as_ref().unwrap().relay.set(impaired);

    let started = Instant::now();
    let names: Vec<String> = t.backends.iter().map(|b| b.name.clone()).collect();
    let answers = in_parallel(&t.client, 3, |k| {
        (k..30)
            .step_by(3)
            .map(|i| {
                let want = names[i % 3].clone();
                let got = get_with_cookie(Some(&session_cookie(i, &want)), Duration::from_secs(15))
                    .map_err(|e| format!("{e:#}"));
                (want, got)
            })
            .collect::<Vec<_>>()
    });
    let requests = started.elapsed();
    for (want, got) in answers.iter().flatten() {
        assert_eq!(
            got.as_deref(),
            Ok(want.as_str()),
            "{}",
            t.wan.as_ref().unwrap().relay.summary()
        );
    }
    let (up, down) = transfers(&t, "be1", Duration::from_secs(15), Duration::from_secs(30));
    let relay = &t.wan.as_ref().unwrap().relay;
    eprintln!(
        "2% loss, 5% reordering: 30 cookie requests in {:.2} s; 10 MiB upload {:.2} s ({:.1} MiB/s), download {:.2} s ({:.1} MiB/s); relay {}",
        requests.as_secs_f64(),
        up.as_secs_f64(),
        mb_per_s(up),
        down.as_secs_f64(),
        mb_per_s(down),
        relay.summary()
    );
    // The link really was impaired, both ways.
    for d in [relay.a_to_b(), relay.b_to_a()] {
        assert!(d.lost > 20 && d.reordered > 50, "{}", relay.summary());
        assert_eq!(d.oversized, 0, "{}", relay.summary());
    }
    let s = Stats::read(&t);
    let ctx = nonzero(&s);
    assert_eq!(s.global("bindings_completed"), 31, "{ctx}");
    assert_eq!(s.backends_sum("cookie_hits"), 31, "{ctx}");
    for c in [
        "bindings_timed_out",
        "drop_no_backend",
        "drop_flow_table_full",
    ] {
        assert_eq!(s.global(c), 0, "{c}: {ctx}");
    }
}

/// Result of [`syn_flood`].
struct Flood {
    sent: u64,
    errors: u64,
    elapsed: Duration,
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

/// Sends SYNs to the VIP from random spoofed addresses of the client's subnet
/// (198.18.0.16-239) and random ports through a raw socket, in batches, for `duration`
/// or `max` packets. Runs on the calling thread's namespace.
fn syn_flood(duration: Duration, max: u64, seed: u64) -> anyhow::Result<Flood> {
    const BATCH: usize = 64;
    let tx = RawSender::new()?;
    let mut rng = balancer_tests::rng::Rng::new(seed);
    let mut packets: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(64)).collect();
    let (mut sent, mut errors) = (0u64, 0u64);
    let started = Instant::now();
    while sent < max && started.elapsed() < duration {
        for p in packets.iter_mut() {
            let r = rng.next_u64();
            let src = Ipv4Addr::new(198, 18, 0, 16 + (r % 224) as u8);
            let sport = 1024 + ((r >> 8) % 64000) as u16;
            let seg = syn(
                src,
                sport,
                topology::VIP,
                topology::SERVICE_PORT,
                (r >> 32) as u32,
            );
            attack::build_into(&seg, p);
        }
        let (s, e) = tx.send_batch(&mut packets);
        sent += s;
        errors += e;
    }
    Ok(Flood {
        sent,
        errors,
        elapsed: started.elapsed(),
    })
}

/// Client-side entries in the flow table.
fn flow_count(t: &Topology) -> usize {
    t.balancer_json(&["flows", "--json", "--limit", "10000000"])
        .unwrap()
        .as_array()
        .unwrap()
        .len()
}

/// Packets the client's interface dropped on transmit (its peer's queue was full).
fn client_tx_dropped(t: &Topology) -> u64 {
    let out = t.client.ip(&["-s", "-j", "link", "show", "eth0"]).unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["stats64"]["tx"]["dropped"].as_u64().unwrap_or(0)
}

#[test]
fn syn_flood_creates_no_state_and_legit_clients_get_through() {
    const FLOOD_TIME: Duration = Duration::from_secs(2);
    const FLOOD_MAX: u64 = 1_000_000;
    let _g = topology::machine_exclusive();
    let t = setup(3);
    let flows_before = flow_count(&t);
    let before = Stats::read(&t);
    let dropped_before = client_tx_dropped(&t);
    let names: Vec<String> = t.backends.iter().map(|b| b.name.clone()).collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    // Thread 0 floods; threads 1 and 2 are legit clients until the flood ends.
    let results = in_parallel(&t.client, 3, |k| {
        if k == 0 {
            let f = syn_flood(FLOOD_TIME, FLOOD_MAX, 0xf100d);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            return (Some(f), Vec::new());
        }
        let mut legit = Vec::new();
        let mut i = k;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let want = names[i % names.len()].clone();
            let t0 = Instant::now();
            let got =
                get_with_cookie_from(Some(&session_cookie(i, &want)), Duration::from_secs(10))
                    .map_err(|e| format!("{e:#}"));
            let port = got.as_ref().map(|(_, p)| *p).unwrap_or(0);
            legit.push((want, got.map(|(name, _)| name), t0.elapsed(), port));
            i += 2;
        }
        (None, legit)
    });
    std::thread::sleep(Duration::from_millis(200));
    let after = Stats::read(&t);
    let flows_after = flow_count(&t);
    let dropped = client_tx_dropped(&t) - dropped_before;
    let flood = results[0]
        .0
        .as_ref()
        .unwrap()
        .as_ref()
        .expect("flooding from the client namespace");
    let legit: Vec<_> = results.iter().flat_map(|r| r.1.iter()).collect();
    let delta = |c: &str| after.global(c) - before.global(c);
    let rate = flood.sent as f64 / flood.elapsed.as_secs_f64();
    let answered = delta("syncookies_sent");
    let slowest = legit.iter().map(|l| l.2).max().unwrap_or_default();
    // Client ports repeat over a couple of thousand connections (the server closes first,
    // so the client keeps no TIME_WAIT); a reused 5-tuple replaces its old flow entries.
    let tuples: std::collections::BTreeSet<u16> = legit.iter().map(|l| l.3).collect();
    eprintln!(
        "SYN flood: {} SYNs in {:.2} s = {:.0}/s sent ({} send errors), {} answered with syncookies ({:.0}/s), {} dropped at the client's veth; {} legit requests during the flood, slowest {:.2} s; flows {} -> {}",
        flood.sent,
        flood.elapsed.as_secs_f64(),
        rate,
        flood.errors,
        answered,
        answered as f64 / flood.elapsed.as_secs_f64(),
        dropped,
        legit.len(),
        slowest.as_secs_f64(),
        flows_before,
        flows_after
    );
    let ctx = nonzero(&after);
    for (want, got, _, _) in &legit {
        assert_eq!(got.as_deref(), Ok(want.as_str()), "{ctx}");
    }
    assert!(legit.len() >= 4, "only {} legit requests", legit.len());
    let n = legit.len() as u64;
    // SYNs keep no state: the flow table holds the legit connections only (one entry per
    // distinct client 5-tuple).
    assert_eq!(flows_after - flows_before, tuples.len(), "{ctx}");
    assert_eq!(delta("new_flows"), n, "{ctx}");
    assert_eq!(delta("bindings_completed"), n, "{ctx}");
    // Every SYN that reached the gateway was answered (legit ones included; those the
    // veth queue dropped never arrived).
    assert!(
        answered + dropped >= flood.sent + n && answered <= flood.sent + 2 * n + dropped,
        "sent {} + {n} legit, answered {answered}, dropped {dropped}: {ctx}",
        flood.sent
    );
    assert!(
        answered as f64 >= 0.5 * flood.sent as f64,
        "most SYNs were lost before the gateway: {ctx}"
    );
    assert_no_failures(&after);
}

/// A TCP connection to the VIP from the client's address and a fixed source port
/// (`SO_REUSEADDR`, so the port can be taken again right after a connection closed).
fn connect_from_port(port: u16, timeout: Duration) -> anyhow::Result<TcpStream> {
    connect_from_port_to(
        port,
        SocketAddrV4::new(topology::VIP, topology::SERVICE_PORT),
        timeout,
    )
}

/// As [`connect_from_port`], to `remote`.
fn connect_from_port_to(
    port: u16,
    remote: SocketAddrV4,
    timeout: Duration,
) -> anyhow::Result<TcpStream> {
    // SAFETY: plain socket call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    anyhow::ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    let local = sockaddr(topology::CLIENT_ADDR, port);
    let remote = sockaddr(*remote.ip(), remote.port());
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: valid option values and addresses of the sizes passed. SO_SNDTIMEO bounds
    // a blocking connect.
    unsafe {
        anyhow::ensure!(
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
                && libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDTIMEO,
                    &tv as *const libc::timeval as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                ) == 0,
            "setsockopt: {}",
            std::io::Error::last_os_error()
        );
        anyhow::ensure!(
            libc::bind(
                fd.as_raw_fd(),
                &local as *const libc::sockaddr_in as *const libc::sockaddr,
                len
            ) == 0,
            "bind to port {port}: {}",
            std::io::Error::last_os_error()
        );
        anyhow::ensure!(
            libc::connect(
                fd.as_raw_fd(),
                &remote as *const libc::sockaddr_in as *const libc::sockaddr,
                len
            ) == 0,
            "connect from port {port}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(TcpStream::from(fd))
}

/// One `Connection: close` GET with `cookie` on `stream`; the answering backend's name.
/// Returns after the server closed, so the client closes second and its port is free
/// again at once (no TIME_WAIT on the client), as with any HTTP/1.1 server that ends
/// connections itself.
fn get_on(mut stream: TcpStream, cookie: &str) -> anyhow::Result<String> {
    stream.set_read_timeout(Some(http::READ_TIMEOUT))?;
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n",
        vip()
    );
    stream.write_all(req.as_bytes())?;
    let mut reader = std::io::BufReader::new(stream);
    let r = http::read_response(&mut reader, false)?;
    anyhow::ensure!(r.status == 200, "status {}", r.status);
    // Wait for the server's FIN, so that the client closes second.
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest)?;
    anyhow::ensure!(rest.is_empty(), "{} bytes after the response", rest.len());
    Ok(r.text())
}

#[test]
fn reused_client_port_gets_a_new_binding() {
    const PORT: u16 = 61_001;
    let _g = topology::machine_shared();
    let t = setup(3);
    let answers = t
        .client
        .run(|| -> Vec<anyhow::Result<String>> {
            let mut out = Vec::new();
            for (i, primary) in ["be1", "be2", "be2", "be3"].into_iter().enumerate() {
                let got = connect_from_port(PORT, Duration::from_secs(3))
                    .and_then(|s| get_on(s, &session_cookie(i, primary)));
                let failed = got.is_err();
                out.push(got.map_err(|e| e.context(format!("connection {i} for {primary}"))));
                if failed {
                    // The port stays taken by the failed connection.
                    break;
                }
                // The client closes after the server: its port is free right away.
                std::thread::sleep(Duration::from_millis(20));
            }
            out
        })
        .unwrap();
    let s = Stats::read(&t);
    let ctx = nonzero(&s);
    let flows = t.balancer_json(&["flows", "--json"]).unwrap();
    let got: Vec<String> = answers
        .iter()
        .map(|a| match a {
            Ok(n) => n.clone(),
            Err(e) => format!("error: {e:#}"),
        })
        .collect();
    assert_eq!(
        got,
        ["be1", "be2", "be2", "be3"],
        "connections from one client port, one after the other; counters: {ctx}; flows: {flows}"
    );
    assert_eq!(s.global("bindings_completed"), 4, "{ctx}");
}

/// A backend's TIME-WAIT for the client's address and port, left by a connection that
/// went to it directly, takes the binding SYN (another ISN space: that of the client's
/// connection to the VIP) for an old segment about half the time, and answers it with an
/// old ACK. The balancer resets that TIME-WAIT and sends the SYN again at once (XDP
/// passes the ACK to the TC program, which sends both), so no request waits for the
/// client to retransmit its first segment.
#[test]
fn backend_time_wait_of_a_direct_connection_does_not_hold_the_binding() {
    const FIRST_PORT: u16 = 61_100;
    const PORTS: u16 = 24;
    let _g = topology::machine_shared();
    let t = setup(1);
    let backend = match t.backends[0].socket_addr() {
        SocketAddr::V4(a) => a,
        other => panic!("IPv4 backend expected, got {other}"),
    };
    let answers = t
        .client
        .run(move || -> Vec<anyhow::Result<(String, String)>> {
            (FIRST_PORT..FIRST_PORT + PORTS)
                .map(|port| {
                    // Direct: the backend closes first and keeps the TIME-WAIT.
                    let direct = connect_from_port_to(port, backend, Duration::from_secs(3))
                        .and_then(|s| get_on(s, "JSESSIONID=direct!be1"))
                        .map_err(|e| e.context(format!("direct from port {port}")))?;
                    std::thread::sleep(Duration::from_millis(20));
                    let via_vip = connect_from_port(port, Duration::from_secs(3))
                        .and_then(|s| get_on(s, &session_cookie(port as usize, "be1")))
                        .map_err(|e| e.context(format!("through the VIP from port {port}")))?;
                    Ok((direct, via_vip))
                })
                .collect()
        })
        .unwrap();
    let s = Stats::read(&t);
    let ctx = nonzero(&s);
    for a in &answers {
        match a {
            Ok((direct, via_vip)) => {
                assert_eq!((direct.as_str(), via_vip.as_str()), ("be1", "be1"), "{ctx}")
            }
            Err(e) => panic!("{e:#}; counters: {ctx}"),
        }
    }
    let passed = s.global("pass_stale_ack_to_tc");
    assert!(
        passed > 0,
        "no binding met a TIME-WAIT in {PORTS} tries (each about even odds): {ctx}"
    );
    // Each stale ACK was reset once, by TC (XDP resets only a second one per binding),
    // and the only SYNs sent again are TC's: no client had to retransmit.
    assert_eq!(s.global("bind_stale_acks"), passed, "{ctx}");
    assert_eq!(s.global("bind_retransmits"), passed, "{ctx}");
    assert_eq!(s.global("bindings_completed"), PORTS as u64, "{ctx}");
    assert_no_failures(&s);
}

/// Opens a connection to the VIP while watching the calling thread's `eth0` with a packet
/// socket, and returns it with the ISN of the SYN it sent.
fn connect_and_read_isn() -> anyhow::Result<(Conn, u32)> {
    let sniffer = Sniffer::all("eth0")?;
    let conn = Conn::connect(vip())?;
    let port = conn.local_addr()?.port();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 2048];
    while let Some((n, _)) =
        sniffer.recv(&mut buf, deadline.saturating_duration_since(Instant::now()))
    {
        if let Some(tcp) = attack::parse(&buf[..n]) {
            if tcp.sport == port
                && tcp.flags & (attack::TCP_SYN | attack::TCP_ACK) == attack::TCP_SYN
            {
                return Ok((conn, tcp.seq));
            }
        }
    }
    anyhow::bail!("did not see the SYN of port {port}")
}

/// A spliced keep-alive connection gets a SYN on its own tuple with ISN `isn + offset`
/// from the client's address, then must go on serving requests.
fn syn_on_a_live_connection(offset: u32) {
    let t = setup(3);
    let cookie = session_cookie(5, "be2");
    let outcome = t
        .client
        .run(move || -> anyhow::Result<Vec<String>> {
            let (mut conn, isn) = connect_and_read_isn()?;
            let port = conn.local_addr()?.port();
            let mut answers = Vec::new();
            let r = conn.request("GET", "/", &[("Cookie", &cookie)], &[])?;
            answers.push(r.text());
            let extra = syn(
                topology::CLIENT_ADDR,
                port,
                topology::VIP,
                topology::SERVICE_PORT,
                isn.wrapping_add(offset),
            );
            RawSender::new()?.send(&attack::build(&extra))?;
            std::thread::sleep(Duration::from_millis(50));
            for i in 0..3 {
                let r = conn
                    .request("GET", "/", &[("Cookie", &cookie)], &[])
                    .map_err(|e| e.context(format!("request {i} after the SYN")))?;
                answers.push(r.text());
            }
            Ok(answers)
        })
        .unwrap();
    let s = Stats::read(&t);
    let ctx = nonzero(&s);
    let answers = outcome.unwrap_or_else(|e| panic!("{e:#}; counters: {ctx}"));
    assert_eq!(answers, ["be2"; 4], "{ctx}");
    assert_eq!(s.global("bindings_completed"), 1, "{ctx}");
}

/// A late copy of the connection's own SYN (same tuple, same ISN), as a network that
/// delays or duplicates packets delivers it.
#[test]
fn duplicate_syn_does_not_break_a_spliced_connection() {
    let _g = topology::machine_shared();
    syn_on_a_live_connection(0);
}

/// A SYN with another ISN on a live connection's tuple, as an off-path attacker who knows
/// (or guesses) the client's address and port can send: it must not tear the connection
/// down (RFC 5961 section 4: a SYN on a synchronized connection gets a challenge ACK
/// whatever its sequence number). The client's own new connection on a reused port
/// (`reused_client_port_gets_a_new_binding`) proves itself by completing the syncookie
/// handshake; a bare SYN proves nothing.
#[test]
fn blind_syn_does_not_break_a_spliced_connection() {
    let _g = topology::machine_shared();
    syn_on_a_live_connection(0x4000_0000);
}

#[test]
fn failover_sends_a_failed_backends_sessions_to_its_replacement() {
    const N: usize = 20;
    let _g = topology::machine_shared();
    let t = setup(3);
    let service = service_arg();
    let (be1, be2) = (t.backends[0].endpoint(), t.backends[1].endpoint());
    let requests = |primary: &'static str| -> Vec<String> {
        t.client
            .run(move || {
                (0..N)
                    .map(|i| {
                        get_with_cookie(Some(&session_cookie(i, primary)), http::CONNECT_TIMEOUT)
                    })
                    .collect::<anyhow::Result<Vec<_>>>()
            })
            .unwrap()
            .unwrap_or_else(|e| panic!("requests for {primary}'s sessions: {e:#}"))
    };
    assert!(requests("be1").iter().all(|a| a == "be1"));
    // An open connection to be1, bound before it fails.
    let cookie = session_cookie(1, "be1");
    let mut open = t.client.run(|| Conn::connect(vip()).unwrap()).unwrap();
    let first = open
        .request("GET", "/", &[("Cookie", &cookie)], &[])
        .unwrap();
    assert_eq!(first.text(), "be1");

    // be1 taken out of service without a failover: the policy chooses, never be1.
    t.balancer(&["backend", "drain", &service, &be1]).unwrap();
    let before = Stats::read(&t);
    let answers = requests("be1");
    assert!(answers.iter().all(|a| a != "be1"), "{answers:?}");
    let after = Stats::read(&t);
    assert_eq!(
        after.backends_sum("cookie_misses") - before.backends_sum("cookie_misses"),
        N as u64,
        "{}",
        nonzero(&after)
    );

    // Failover to be2: be1's sessions land on be2 and are counted as redirects.
    t.balancer(&["backend", "failover", &service, &be1, "--to", &be2])
        .unwrap();
    let list = t.balancer_json(&["backend", "list", "--json"]).unwrap();
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backend"] == be1.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["failover_to"], be2.as_str(), "{entry}");
    let before = Stats::read(&t);
    let answers = requests("be1");
    assert!(answers.iter().all(|a| a == "be2"), "{answers:?}");
    let after = Stats::read(&t);
    let ctx = nonzero(&after);
    assert_eq!(
        after.backend(&be2, "failover_redirects") - before.backend(&be2, "failover_redirects"),
        N as u64,
        "{ctx}"
    );
    assert_eq!(
        after.backend(&be1, "cookie_hits"),
        before.backend(&be1, "cookie_hits"),
        "{ctx}"
    );
    // Sessions of the other backends are not affected.
    assert!(requests("be3").iter().all(|a| a == "be3"));
    // The connection bound before the failure keeps its backend.
    let r = open
        .request("GET", "/", &[("Cookie", &cookie)], &[])
        .unwrap();
    assert_eq!(r.text(), "be1");

    // Back: failover cleared, be1 in service again.
    t.balancer(&["backend", "failover", &service, &be1, "--clear"])
        .unwrap();
    t.balancer(&["backend", "undrain", &service, &be1]).unwrap();
    let before = Stats::read(&t);
    assert!(requests("be1").iter().all(|a| a == "be1"));
    let after = Stats::read(&t);
    assert_eq!(
        after.backend(&be1, "cookie_hits") - before.backend(&be1, "cookie_hits"),
        N as u64,
        "{}",
        nonzero(&after)
    );
    assert_eq!(
        after.backend(&be2, "failover_redirects"),
        before.backend(&be2, "failover_redirects")
    );
    assert_no_failures(&after);
}

#[test]
fn backend_that_never_answers_gets_the_client_reset() {
    let _g = topology::machine_shared();
    let t = setup(2);
    let service = service_arg();
    // A backend address in the backend subnet where nothing answers: the gateway has a
    // static neighbour entry for it, so the SYN goes out onto the bridge and is lost.
    let dead = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 200), topology::BACKEND_PORT);
    t.gateway
        .ip(&[
            "neigh",
            "add",
            &dead.ip().to_string(),
            "lladdr",
            "02:00:5e:10:00:99",
            "dev",
            "srv0",
            "nud",
            "permanent",
        ])
        .unwrap();
    t.balancer(&[
        "backend",
        "add",
        &service,
        &dead.to_string(),
        "--server-id",
        "dead",
    ])
    .unwrap();
    let before = Stats::read(&t);
    let cookie = session_cookie(3, "dead");
    let (outcome, elapsed, local) = t
        .client
        .run(move || {
            let mut s = TcpStream::connect_timeout(&vip(), http::CONNECT_TIMEOUT).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            let local = s.local_addr().unwrap();
            let req = format!(
                "GET / HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\n\r\n",
                vip()
            );
            let t0 = Instant::now();
            s.write_all(req.as_bytes()).unwrap();
            let mut buf = [0u8; 256];
            let outcome = s.read(&mut buf);
            (outcome.map_err(|e| e.kind()), t0.elapsed(), local)
        })
        .unwrap();
    let after = Stats::read(&t);
    let ctx = nonzero(&after);
    eprintln!(
        "request to a dead backend: {outcome:?} after {:.2} s",
        elapsed.as_secs_f64()
    );
    assert_eq!(outcome, Err(ErrorKind::ConnectionReset), "{ctx}");
    assert!(
        (Duration::from_millis(2900)..=Duration::from_secs(8)).contains(&elapsed),
        "reset after {elapsed:?}"
    );
    let delta = |c: &str| after.global(c) - before.global(c);
    assert_eq!(delta("bindings_timed_out"), 1, "{ctx}");
    assert_eq!(delta("bindings_started"), 1, "{ctx}");
    assert_eq!(delta("bindings_completed"), 0, "{ctx}");
    assert!(delta("bind_retransmits") >= 1, "{ctx}");
    assert_eq!(after.backend(&dead.to_string(), "cookie_hits"), 1, "{ctx}");
    // The abandoned connection left no flow behind.
    let flows = t.balancer_json(&["flows", "--json"]).unwrap();
    let client = local.to_string();
    assert!(
        flows
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["client"] != client.as_str()),
        "{flows}"
    );
    // The service still works for the live backends.
    let cookie = session_cookie(4, "be2");
    let who = t
        .client
        .run(move || get_with_cookie(Some(&cookie), http::CONNECT_TIMEOUT))
        .unwrap()
        .unwrap();
    assert_eq!(who, "be2");
}

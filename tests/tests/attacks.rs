//! Wire attacks on a cookie-mode service, sent from the client's namespace with raw
//! sockets (`balancer_tests::attack`), while legit clients (the kernel's TCP, real HTTP
//! requests through the VIP on fresh connections, each naming a backend by cookie) must
//! keep a 100% success rate. Each test builds its own two-arm topology, runs its attack
//! for a couple of seconds at a bounded rate, and prints the rate it reached and the
//! legit clients' counts (`--nocapture`).
//!
//! - ACK flood with invalid syncookies: dropped, counted, no state.
//! - RST flood with out-of-window sequence numbers on the 4-tuples of live spliced
//!   keep-alive connections: the connections and their flow entries survive.
//! - Overlapping, out-of-order and rewritten segments while a connection is being bound:
//!   the backend gets a consistent byte stream, or the connection fails; nothing else.
//! - Handshakes completed and then left silent (thousands, plus kernel clients that
//!   connect and never write): no state.
//! - Slowloris first segments (a partial request head, then a byte at a time): one
//!   spliced flow per connection and nothing else; the backend's own timeouts apply.
//! - Forged cookies naming a draining, a down or an unknown server never reach it; a
//!   healthy server's token does (by design).
//!
//! The SYN flood is `cookie.rs::syn_flood_creates_no_state_and_legit_clients_get_through`.
//!
//! Spoofed attacker sources are 198.18.0.16-239 (the client's subnet, configured nowhere):
//! the balancer's answers come back to the client's interface, where the raw client's
//! packet socket sees them and the namespace's stack drops them (no forwarding there).
//! The floods take the machine for themselves (`MACHINE`), so their rates and the other
//! tests' timings do not disturb each other.
//!
//! Needs root and a built `balancer` binary (`cargo build --release -p balancer-user`).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufReader, Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use aya::maps::{HashMap, MapData};
use balancer_ebpf::{direction, map_names, Flow, FlowKey, PendingSegment};
use balancer_tests::{
    attack::{
        self, build_into, HandshakeFlood, RawTcp, Rng, Segment, Sniffer, TCP_ACK, TCP_PSH, TCP_RST,
        TCP_SYN,
    },
    daemon::{backend_entry, daemon_config, ConfigOptions, Daemon},
    http::{self, Conn, Fnv64},
    impair::{Impairment, Relay},
    netns::{self, Netns},
    topology::{self, vip, Stats, Topology, CLIENT_ADDR, SERVICE_PORT, VIP},
};
use balancer_user::dataplane::Balancer;
use serde_json::Value;

const TESTSRV: &str = env!("CARGO_BIN_EXE_balancer-testsrv");

/// Two-arm topology with `n` backends, the balancer attached (with `attach` arguments)
/// and the cookie-mode service `VIP:80` with every backend, server id = backend name.
fn setup(n: usize, attach: &[&str]) -> Topology {
    topology::assert_root();
    let mut t = Topology::two_arm(n).expect("building the topology");
    t.attach_with(attach).expect("attaching the balancer");
    t.start_servers(Path::new(TESTSRV))
        .expect("starting test servers");
    t.add_cookie_service_with_backends()
        .expect("adding the cookie service");
    t
}

/// A session cookie naming `primary` (no secondary, so no replication pair is implied).
fn session_cookie(i: usize, primary: &str) -> String {
    format!("JSESSIONID=s{i:06}x!{primary}")
}

/// One `Connection: close` GET with `cookie` on a fresh connection; the answering
/// backend's name and the client port.
fn get_with_cookie(cookie: &str, connect: Duration) -> anyhow::Result<(String, u16)> {
    let mut conn = Conn::connect_timeout(vip(), connect)?;
    let port = conn.local_addr()?.port();
    let r = conn.request(
        "GET",
        "/",
        &[("Cookie", cookie), ("Connection", "close")],
        &[],
    )?;
    anyhow::ensure!(r.status == 200, "status {}", r.status);
    anyhow::ensure!(
        r.header("x-backend") == Some(r.text().as_str()),
        "body {:?} and X-Backend {:?} disagree",
        r.text(),
        r.header("x-backend")
    );
    Ok((r.text(), port))
}

/// Spoofed attacker source: 198.18.0.16-239 and a port.
fn spoofed(rng: &mut Rng) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::new(198, 18, 0, 16 + rng.below(224) as u8),
        1024 + rng.below(64_000) as u16,
    )
}

fn is_spoofed(a: Ipv4Addr) -> bool {
    let o = a.octets();
    o[..3] == [198, 18, 0] && (16..240).contains(&o[3])
}

// --- legit clients ------------------------------------------------------------------

struct LegitRequest {
    want: String,
    got: Result<String, String>,
    took: Duration,
    port: u16,
}

/// What the legit clients saw during an attack.
#[derive(Default)]
struct Legit(Vec<LegitRequest>);

impl Legit {
    fn total(&self) -> usize {
        self.0.len()
    }

    fn ok(&self) -> usize {
        self.0
            .iter()
            .filter(|r| r.got.as_deref() == Ok(r.want.as_str()))
            .count()
    }

    fn failures(&self) -> Vec<String> {
        self.0
            .iter()
            .filter(|r| r.got.as_deref() != Ok(r.want.as_str()))
            .map(|r| {
                format!(
                    "for {}: {:?} after {:.2} s",
                    r.want,
                    r.got,
                    r.took.as_secs_f64()
                )
            })
            .collect()
    }

    /// Distinct client ports (each a client-side flow entry).
    fn ports(&self) -> BTreeSet<u16> {
        self.0.iter().map(|r| r.port).filter(|p| *p != 0).collect()
    }

    fn summary(&self) -> String {
        let slowest = self.0.iter().map(|r| r.took).max().unwrap_or_default();
        format!(
            "legit {}/{} ok, slowest {:.3} s",
            self.ok(),
            self.total(),
            slowest.as_secs_f64()
        )
    }

    /// Every legit request reached the backend its cookie named, and there were some.
    fn assert_all_ok(&self, ctx: &str) {
        let failures = self.failures();
        assert!(
            failures.is_empty(),
            "{} of {} legit requests failed, first {:?}; {ctx}",
            failures.len(),
            self.total(),
            &failures[..failures.len().min(5)]
        );
        assert!(self.total() >= 4, "only {} legit requests", self.total());
    }
}

/// Sets the flag when dropped (also when the attack panics), so the legit clients stop.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Runs `attack` on a thread inside the client namespace while `threads` legit clients,
/// also there, make one request after the other (fresh connection, cookie naming each
/// backend in turn) until the attack returns (at least two each).
fn during<T: Send>(t: &Topology, threads: usize, attack: impl FnOnce() -> T + Send) -> (T, Legit) {
    let names: Vec<String> = t.backends.iter().map(|b| b.name.clone()).collect();
    during_naming(t, &names, threads, attack)
}

/// [`during`], the legit clients naming the backends in `names` only.
fn during_naming<T: Send>(
    t: &Topology,
    names: &[String],
    threads: usize,
    attack: impl FnOnce() -> T + Send,
) -> (T, Legit) {
    let stop = AtomicBool::new(false);
    let client = &t.client;
    std::thread::scope(|s| {
        let clients: Vec<_> = (0..threads)
            .map(|k| {
                let stop = &stop;
                s.spawn(move || {
                    client.enter_current_thread().expect("entering the client");
                    let mut out = Vec::new();
                    let mut i = k;
                    while !stop.load(Ordering::Relaxed) || out.len() < 2 {
                        let want = names[i % names.len()].clone();
                        let t0 = Instant::now();
                        let got =
                            get_with_cookie(&session_cookie(i, &want), Duration::from_secs(5))
                                .map_err(|e| format!("{e:#}"));
                        let port = got.as_ref().map(|(_, p)| *p).unwrap_or(0);
                        out.push(LegitRequest {
                            want,
                            got: got.map(|(name, _)| name),
                            took: t0.elapsed(),
                            port,
                        });
                        i += threads;
                    }
                    out
                })
            })
            .collect();
        let attacker = s.spawn(|| {
            let _stop = StopOnDrop(&stop);
            client.enter_current_thread().expect("entering the client");
            attack()
        });
        let result = attacker.join();
        let legit = Legit(
            clients
                .into_iter()
                .flat_map(|h| h.join().expect("legit client panicked"))
                .collect(),
        );
        match result {
            Ok(r) => (r, legit),
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

// --- counters and tables ------------------------------------------------------------

/// One FLOWS entry: its key, and whether it is the client-side (to the backend) one.
struct Entry {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    to_backend: bool,
}

/// The flow state: `flows --json` rows (client-side entries, with phase and state), and
/// the raw entries of the FLOWS map (both directions) and the PENDING count, read
/// straight from the pinned maps. Read while legit clients run, the two views and the
/// two directions may differ by the connections opening at that moment.
struct Table {
    rows: Vec<Value>,
    entries: Vec<Entry>,
    pending: usize,
}

impl Table {
    fn read(t: &Topology) -> Table {
        let rows = t
            .balancer_json(&["flows", "--json", "--limit", "10000000"])
            .unwrap()
            .as_array()
            .unwrap()
            .clone();
        let b = Balancer::open(&t.pin_dir()).expect("opening the pinned data plane");
        let flows: HashMap<MapData, FlowKey, Flow> = b
            .map(map_names::FLOWS)
            .unwrap()
            .try_into()
            .expect("FLOWS map");
        let ip = |a: u32| Ipv4Addr::from(a.to_ne_bytes());
        let entries = flows
            .iter()
            .filter_map(Result::ok)
            .map(|(k, f)| Entry {
                src: ip(k.src),
                dst: ip(k.dst),
                sport: u16::from_be(k.sport),
                dport: u16::from_be(k.dport),
                to_backend: f.direction == direction::TO_BACKEND,
            })
            .collect();
        let pending: HashMap<MapData, FlowKey, PendingSegment> = b
            .map(map_names::PENDING)
            .unwrap()
            .try_into()
            .expect("PENDING map");
        let pending = pending.keys().filter(Result::is_ok).count();
        Table {
            rows,
            entries,
            pending,
        }
    }

    /// Entries of either direction with a spoofed attacker address.
    fn attacker_entries(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| is_spoofed(e.src) || is_spoofed(e.dst))
            .count()
    }

    /// Entries of either direction of the legit client's connections from these ports.
    fn entries_of_ports(&self, ports: &BTreeSet<u16>) -> usize {
        self.entries
            .iter()
            .filter(|e| {
                (e.to_backend && e.src == CLIENT_ADDR && ports.contains(&e.sport))
                    || (!e.to_backend && e.dst == CLIENT_ADDR && ports.contains(&e.dport))
            })
            .count()
    }

    /// Rows of the legit client's connections from these ports.
    fn rows_of_ports(&self, ports: &BTreeSet<u16>) -> Vec<&Value> {
        self.rows
            .iter()
            .filter(|r| {
                r["client"].as_str().is_some_and(|c| {
                    c.strip_prefix(&format!("{CLIENT_ADDR}:"))
                        .and_then(|p| p.parse::<u16>().ok())
                        .is_some_and(|p| ports.contains(&p))
                })
            })
            .collect()
    }

    /// Once nothing moves: every connection is one row and exactly two entries, and no
    /// segment is kept.
    fn assert_quiet_and_consistent(&self) {
        let forward = self.entries.iter().filter(|e| e.to_backend).count();
        assert_eq!(forward, self.rows.len(), "{}", self.summary());
        assert_eq!(
            self.entries.len() - forward,
            forward,
            "entries without their other direction: {}",
            self.summary()
        );
        assert_eq!(self.pending, 0, "{}", self.summary());
    }

    fn summary(&self) -> String {
        format!(
            "{} connections, {} FLOWS entries, {} PENDING",
            self.rows.len(),
            self.entries.len(),
            self.pending
        )
    }
}

/// Packets the client's interface dropped on transmit (its peer's queue was full).
fn client_tx_dropped(t: &Topology) -> u64 {
    let out = t.client.ip(&["-s", "-j", "link", "show", "eth0"]).unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["stats64"]["tx"]["dropped"].as_u64().unwrap_or(0)
}

// --- 1. ACK flood -------------------------------------------------------------------

/// ACKs from spoofed sources with random sequence and acknowledgement numbers (so
/// `ack - 1` is no valid syncookie), a quarter of them carrying a request whose cookie
/// names a backend, as a "first data segment" would: each is counted in
/// `syncookies_invalid` and dropped before anything is looked up or stored; legit
/// clients keep getting through.
#[test]
fn ack_flood_with_invalid_syncookies_is_dropped_without_state() {
    const RATE: u64 = 200_000;
    const TIME: Duration = Duration::from_secs(2);
    let _g = topology::machine_exclusive();
    let t = setup(3, &[]);
    let table_before = Table::read(&t);
    let before = Stats::read(&t);
    let dropped_before = client_tx_dropped(&t);
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {VIP}\r\nCookie: {}\r\n\r\n",
        session_cookie(1, "be1")
    );
    let (flood, legit) = during(&t, 2, || {
        attack::flood(TIME, RATE, 0xacf1, |rng, buf| {
            let (src, sport) = spoofed(rng);
            let mut s = Segment::between(src, sport, VIP, SERVICE_PORT);
            s.seq = rng.u32();
            s.ack = rng.u32();
            s.flags = TCP_ACK;
            if rng.below(4) == 0 {
                s.flags |= TCP_PSH;
                s.payload = request.as_bytes();
            }
            build_into(&s, buf);
        })
    });
    let flood = flood.expect("flooding from the client namespace");
    std::thread::sleep(Duration::from_millis(200));
    let after = Stats::read(&t);
    let table = Table::read(&t);
    let dropped = client_tx_dropped(&t) - dropped_before;
    let delta = |c: &str| after.global(c) - before.global(c);
    let invalid = delta("syncookies_invalid");
    eprintln!(
        "ACK flood: {} ACKs in {:.2} s = {:.0}/s sent (bound {RATE}/s, {} send errors), {} dropped at the client's veth, {} counted invalid at the gateway ({:.0}/s); {}; table {} -> {}",
        flood.sent,
        flood.elapsed.as_secs_f64(),
        flood.rate(),
        flood.errors,
        dropped,
        invalid,
        invalid as f64 / flood.elapsed.as_secs_f64(),
        legit.summary(),
        table_before.summary(),
        table.summary()
    );
    let ctx = after.summary();
    legit.assert_all_ok(&ctx);
    let n = legit.total() as u64;
    // Every flood packet that reached the gateway is an invalid syncookie, nothing else.
    assert!(invalid <= flood.sent, "{ctx}");
    assert!(
        invalid + dropped >= flood.sent && invalid as f64 >= 0.5 * flood.sent as f64,
        "sent {}, counted invalid {invalid}, dropped on the way {dropped}: {ctx}",
        flood.sent
    );
    // No state: the legit connections are the only new flows and entries.
    assert_eq!(table.attacker_entries(), 0, "{}", table.summary());
    assert_eq!(delta("new_flows"), n, "{ctx}");
    assert_eq!(delta("bindings_started"), n, "{ctx}");
    assert_eq!(delta("bindings_completed"), n, "{ctx}");
    assert_eq!(
        table.rows.len() - table_before.rows.len(),
        legit.ports().len(),
        "{ctx}"
    );
    table.assert_quiet_and_consistent();
    for c in [
        "drop_flow_table_full",
        "drop_no_backend",
        "bindings_timed_out",
    ] {
        assert_eq!(delta(c), 0, "{c}: {ctx}");
    }
}

// --- 2. RST flood on live spliced connections --------------------------------------

/// Idle timeout of TCP flows in SYN, FIN or RST state in the RST test (the default is
/// 30 s; short here so that the test can idle past it).
const TRANSIENT_TIMEOUT_S: u64 = 3;

/// Opens a keep-alive connection to the VIP (calling thread in the client namespace)
/// and reads its ISN from the SYN it sends.
fn connect_reading_isn() -> anyhow::Result<(Conn, u32)> {
    let sniffer = Sniffer::all("eth0")?;
    let conn = Conn::connect(vip())?;
    let port = conn.local_addr()?.port();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        let Some((n, outgoing)) = sniffer.recv(&mut buf, Duration::from_millis(100)) else {
            continue;
        };
        let Some(v) = attack::parse(&buf[..n]) else {
            continue;
        };
        if outgoing && v.sport == port && v.dst == VIP && v.flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
            return Ok((conn, v.seq));
        }
    }
    anyhow::bail!("did not see the SYN of port {port}")
}

struct LiveConn {
    conn: Conn,
    isn: u32,
    port: u16,
    backend: String,
    cookie: String,
}

impl LiveConn {
    fn request(&mut self) -> Result<String, String> {
        match self
            .conn
            .request("GET", "/", &[("Cookie", &self.cookie)], &[])
        {
            Ok(r) if r.status == 200 && r.text() == self.backend => Ok(r.text()),
            Ok(r) => Err(format!("status {} from {}", r.status, r.text())),
            Err(e) => Err(format!("{e:#}")),
        }
    }
}

/// The TCP challenge-ACK and reset counters of a backend's stack (`nstat`), for the
/// report.
fn backend_tcp_counters(t: &Topology, i: usize) -> String {
    match t.backends[i].ns.exec("nstat", &["-asz"]) {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| {
                ["Challenge", "EstabResets", "AttemptFails", "BeyondWindow"]
                    .iter()
                    .any(|k| l.contains(k))
            })
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join("="))
            .collect::<Vec<_>>()
            .join(" "),
        Err(e) => format!("nstat: {e:#}"),
    }
}

/// An attacker who knows the 4-tuples of live keep-alive connections (client address
/// and port) but not their sequence numbers floods RSTs (and RST|ACKs) on them; the
/// sequence numbers here are kept at least 2^28 away from the connection's window
/// (random ones are out of window but for one in 65536, which would earn a challenge
/// ACK, and exact with odds 2^-32). The connections must go on serving requests
/// throughout, keep their flow entries, and still work after idling.
///
/// What the data plane does with a RST on a spliced flow: it NATs it to the backend
/// like any packet of the connection (the client's sequence space is the backend's, so
/// the sequence number passes unchanged), and the backend's kernel checks it (RFC 5961
/// section 3: a RST out of the window is dropped, one in the window but not exact earns
/// a challenge ACK, only `seq == rcv_nxt` resets). The connection is never torn down by
/// the balancer itself. The flow-state tracking (`flow::next_state`) notes the RST
/// (state closed) without a sequence check, so a closed spliced entry keeps the
/// established idle timeout (`flow::still_valid`): were it to expire after the short
/// `tcp-transient-timeout`, a keep-alive connection idling longer than that would lose
/// its entry, and in cookie mode a lost entry cannot be re-created (its next segment
/// has no valid syncookie), black-holing the connection. The test idles the attacked
/// connections past the transient timeout and uses them again.
#[test]
fn rst_flood_out_of_window_spares_live_spliced_connections() {
    const TARGETS: usize = 4;
    const RATE: u64 = 150_000;
    const TIME: Duration = Duration::from_secs(2);
    let _g = topology::machine_exclusive();
    let transient = TRANSIENT_TIMEOUT_S.to_string();
    let t = setup(3, &["--tcp-transient-timeout", &transient]);
    let names: Vec<String> = t.backends.iter().map(|b| b.name.clone()).collect();
    // TARGETS attacked connections and one control connection, each bound by a first
    // request.
    let mut conns = t
        .client
        .run(move || -> anyhow::Result<Vec<LiveConn>> {
            (0..=TARGETS)
                .map(|k| {
                    let (conn, isn) = connect_reading_isn()?;
                    let port = conn.local_addr()?.port();
                    let backend = names[k % names.len()].clone();
                    let mut c = LiveConn {
                        conn,
                        isn,
                        port,
                        cookie: session_cookie(100 + k, &backend),
                        backend,
                    };
                    c.request().map_err(anyhow::Error::msg)?;
                    Ok(c)
                })
                .collect()
        })
        .unwrap()
        .expect("opening the keep-alive connections");
    let control = conns.pop().unwrap();
    let mut targets = conns;
    let tuples: Vec<(u16, u32)> = targets.iter().map(|c| (c.port, c.isn)).collect();
    let ports: BTreeSet<u16> = targets.iter().map(|c| c.port).collect();
    let before = Stats::read(&t);
    let table_before = Table::read(&t);
    let ((flood, kept), legit) = during(&t, 1, || {
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            // The attacked connections stay in use throughout.
            let user = s.spawn(|| {
                let mut out = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let c = &mut targets[i % TARGETS];
                    out.push((c.port, c.request()));
                    i += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                out
            });
            let flood = attack::flood(TIME, RATE, 0x5e7, |rng, buf| {
                let (port, isn) = tuples[rng.below(TARGETS)];
                let mut s = Segment::between(CLIENT_ADDR, port, VIP, SERVICE_PORT);
                // At least 2^28 from the window on either side.
                s.seq = isn
                    .wrapping_add(1 + 0x1000_0000)
                    .wrapping_add(rng.below(0xe000_0000) as u32);
                s.window = 0;
                s.flags = TCP_RST;
                if rng.below(2) == 0 {
                    s.flags |= TCP_ACK;
                    s.ack = rng.u32();
                }
                build_into(&s, buf);
            });
            stop.store(true, Ordering::Relaxed);
            (flood, user.join().expect("connection user panicked"))
        })
    });
    let flood = flood.expect("flooding from the client namespace");
    let after_flood = Stats::read(&t);
    let table = Table::read(&t);
    let rows: Vec<(String, String, String)> = table
        .rows_of_ports(&ports)
        .iter()
        .map(|r| {
            (
                r["client"].as_str().unwrap_or_default().to_string(),
                r["phase"].as_str().unwrap_or_default().to_string(),
                r["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    // Idle past the transient timeout, then use every connection again.
    let idle = Duration::from_millis(TRANSIENT_TIMEOUT_S * 1000 + 1500);
    std::thread::sleep(idle);
    let mut all = targets;
    all.push(control);
    let after_idle: Vec<(u16, bool, Result<String, String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = all
            .iter_mut()
            .enumerate()
            .map(|(k, c)| {
                s.spawn(move || {
                    let _ = c
                        .conn
                        .stream()
                        .set_read_timeout(Some(Duration::from_secs(3)));
                    (c.port, k == TARGETS, c.request())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let after = Stats::read(&t);
    let sent_to: u64 = t
        .backends
        .iter()
        .map(|b| {
            after_flood.backend(&b.endpoint(), "packets_to")
                - before.backend(&b.endpoint(), "packets_to")
        })
        .sum();
    let kept_ok = kept.iter().filter(|(_, r)| r.is_ok()).count();
    eprintln!(
        "RST flood: {} RSTs on {TARGETS} live connections in {:.2} s = {:.0}/s sent (bound {RATE}/s, {} send errors); {} packets NATed to the backends during it; keep-alive requests on the attacked connections {}/{} ok; {}; flows of the attacked connections after the flood {:?}; after idling {:.1} s (transient timeout {TRANSIENT_TIMEOUT_S} s): {:?}; table {} -> {}; backend TCP counters: {}",
        flood.sent,
        flood.elapsed.as_secs_f64(),
        flood.rate(),
        flood.errors,
        sent_to,
        kept_ok,
        kept.len(),
        legit.summary(),
        rows,
        idle.as_secs_f64(),
        after_idle,
        table_before.summary(),
        table.summary(),
        (0..t.backends.len())
            .map(|i| format!("be{}: {}", i + 1, backend_tcp_counters(&t, i)))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let ctx = after.summary();
    legit.assert_all_ok(&ctx);
    let mut violations = Vec::new();
    for (port, r) in &kept {
        if let Err(e) = r {
            violations.push(format!(
                "request on attacked port {port} during the flood: {e}"
            ));
        }
    }
    if kept.len() < 10 {
        violations.push(format!("only {} requests during the flood", kept.len()));
    }
    if rows.len() != TARGETS {
        violations.push(format!("flow rows of the attacked connections: {rows:?}"));
    }
    // The entries may show the RSTs (state closed): what matters is that they stay
    // spliced and keep the established idle timeout, which the idling below checks.
    for (client, phase, _) in &rows {
        if phase != "spliced" {
            violations.push(format!(
                "flow of {client} is {phase} after the RST flood (was spliced)"
            ));
        }
    }
    for (port, control, r) in &after_idle {
        if let Err(e) = r {
            violations.push(format!(
                "{} connection (port {port}) after idling {:.1} s: {e}",
                if *control { "control" } else { "attacked" },
                idle.as_secs_f64()
            ));
        }
    }
    let d = |c: &str| after.global(c) - before.global(c);
    if d("syncookies_invalid") != 0 {
        violations.push(format!(
            "{} segments of the live connections found no flow entry and were dropped as invalid syncookies",
            d("syncookies_invalid")
        ));
    }
    if (sent_to as f64) < 0.5 * flood.sent as f64 {
        violations.push(format!(
            "only {sent_to} of {} RSTs were NATed to the backends",
            flood.sent
        ));
    }
    assert!(
        violations.is_empty(),
        "RST flood with out-of-window sequence numbers:\n  {}\ncounters: {ctx}",
        violations.join("\n  ")
    );
}

// --- 3. Segments out of order, overlapping, rewritten while binding ----------------

const BODY_LEN: usize = 1500;

/// `len` bytes of a deterministic pseudo-random stream.
fn body(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// Head of a `Connection: close` upload of `len` bytes, with `cookie` if any.
fn upload_head(cookie: Option<&str>, len: usize) -> Vec<u8> {
    let mut h = format!("POST /upload HTTP/1.1\r\nHost: {VIP}\r\n");
    if let Some(c) = cookie {
        h.push_str(&format!("Cookie: {c}\r\n"));
    }
    h.push_str(&format!(
        "Content-Length: {len}\r\nConnection: close\r\n\r\n"
    ));
    h.into_bytes()
}

/// The ways the request reaches the balancer in [`binding_scenario`]. "While binding":
/// the link to the backend the cookie names (be4, behind a [`CutLink`]) is cut while
/// the first segment and what follows it arrive, so the connection stays in the binding
/// phase (its SYN to the backend lost) until the link is back and the client
/// retransmits.
const SCENARIOS: [&str; 7] = [
    "a later segment before the first",
    "overlapping out-of-order pieces after the first segment",
    "head cut after the cookie, overlapping continuation while binding",
    "first segment retransmitted with other bytes while binding",
    "first segment retransmitted with other bytes after binding",
    "first segment retransmitted longer (repacketized) while binding",
    "partial head without the cookie, overlapping continuation",
];

/// Scenarios that bind to the backend behind the cut link.
fn while_binding(kind: usize) -> bool {
    matches!(kind, 2 | 3 | 5)
}

/// What one scenario must end with: the backend named (`None`: the policy chooses) and
/// the body the backend must have read.
struct Expect {
    backend: Option<String>,
    body: Vec<u8>,
}

/// Backend `i`'s link to the bridge, through a userspace relay ([`Relay`]) in a
/// namespace of its own, so that a test can cut it (every IPv4 frame lost) and restore
/// it. The relay goes before its namespace.
struct CutLink {
    relay: Relay,
    _ns: Netns,
}

impl CutLink {
    fn insert(t: &Topology, i: usize) -> CutLink {
        let ns = Netns::new("lbr").expect("relay namespace");
        // The relay's namespace sends nothing itself.
        ns.exec(
            "sysctl",
            &[
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        )
        .unwrap();
        // The backend's port on the bridge moves into the relay's namespace; a new
        // veth takes its place on the bridge.
        let port = format!("be{i}");
        let bridged = format!("rl{i}");
        t.lan
            .ip(&["link", "set", &port, "netns", ns.name()])
            .unwrap();
        netns::veth(&ns, "up0", &t.lan, &bridged).unwrap();
        t.lan
            .ip(&["link", "set", &bridged, "master", "br0"])
            .unwrap();
        ns.ip(&["link", "set", &port, "up"]).unwrap();
        // The relay needs wire-sized frames (see `impair`).
        let off = [
            "gro", "off", "gso", "off", "tso", "off", "tx", "off", "rx", "off",
        ];
        for dev in [port.as_str(), "up0"] {
            let mut args = vec!["-K", dev];
            args.extend(off);
            ns.exec("ethtool", &args).unwrap();
        }
        let mut args = vec!["-K", "eth0"];
        args.extend(off);
        t.backends[i].ns.exec("ethtool", &args).unwrap();
        let relay = Relay::start(&ns, &port, "up0", Impairment::NONE).expect("starting the relay");
        CutLink { relay, _ns: ns }
    }

    fn cut(&self, cut: bool) {
        self.relay.set(if cut {
            Impairment::new(1.0, 0.0, 7)
        } else {
            Impairment::NONE
        });
    }
}

/// One raw connection from `src` whose upload (cookie naming `named`, `BODY_LEN` bytes)
/// reaches the balancer as scenario `kind` says; returns the response. `other` names
/// another server (same length as `named`) for the rewritten copies.
fn binding_scenario(
    kind: usize,
    i: usize,
    src: Ipv4Addr,
    (named, other): (&str, &str),
    link: &CutLink,
) -> (Expect, anyhow::Result<http::Response>) {
    let mut rng = Rng::new(0xb1d0 + i as u64);
    let data = body(BODY_LEN, rng.next_u64());
    let cookie = (kind != 6).then(|| session_cookie(i, named));
    let head = upload_head(cookie.as_deref(), BODY_LEN);
    let h = head.len();
    let req = [head.clone(), data.clone()].concat();
    let expect = Expect {
        backend: cookie.is_some().then(|| named.to_string()),
        body: data.clone(),
    };
    // The same request naming another server with other body bytes.
    let alt = [
        upload_head(Some(&session_cookie(i, other)), BODY_LEN),
        body(BODY_LEN, rng.next_u64()),
    ]
    .concat();
    assert!(
        kind == 6 || alt.len() == req.len(),
        "{named} and {other} differ in length"
    );
    let wait = Duration::from_secs(3);
    let mut run = || -> anyhow::Result<http::Response> {
        let sport = 20_000 + rng.below(40_000) as u16;
        let mut c = RawTcp::connect("eth0", (src, sport), (VIP, SERVICE_PORT), rng.u32(), wait)?;
        let cut = |on| {
            if while_binding(kind) {
                link.cut(on);
            }
        };
        cut(true);
        let sent = (|| -> anyhow::Result<()> {
            match kind {
                0 => {
                    // No flow yet: `seq - 1` is not the ISN the syncookie was made for.
                    c.send(h, &data[..700])?;
                    c.poll(Duration::from_millis(30))?;
                    c.deliver(&[(0, &head)], wait)?;
                    c.deliver(&[(h + 700, &data[700..]), (h, &data[..700])], wait)
                }
                1 => {
                    c.deliver(&[(0, &head)], wait)?;
                    c.deliver(
                        &[
                            (h + 900, &data[900..]),
                            (h, &data[..600]),
                            (h + 400, &data[400..1100]),
                        ],
                        wait,
                    )
                }
                2 => {
                    // Up to the end of the cookie line: the token is known, the head is
                    // not complete.
                    let cut_at = req
                        .windows(2)
                        .enumerate()
                        .skip(req.windows(7).position(|w| w == b"Cookie:").unwrap_or(0))
                        .find(|(_, w)| *w == b"\r\n")
                        .map(|(k, _)| k + 2)
                        .unwrap_or(40);
                    c.burst(&[
                        (0, &req[..cut_at]),
                        (cut_at - 10, &req[cut_at - 10..h + 200]),
                    ])?;
                    c.poll(Duration::from_millis(50))?;
                    link.cut(false);
                    c.deliver(
                        &[
                            (0, &req[..cut_at]),
                            (cut_at - 10, &req[cut_at - 10..h + 200]),
                            (h + 200, &req[h + 200..]),
                        ],
                        wait,
                    )
                }
                3 => {
                    let first = h + 300;
                    c.burst(&[(0, &req[..first]), (0, &alt[..first])])?;
                    c.poll(Duration::from_millis(50))?;
                    link.cut(false);
                    // The client keeps retransmitting the other bytes.
                    c.deliver(&[(0, &alt[..first])], wait)?;
                    c.deliver(&[(first, &req[first..])], wait)
                }
                4 => {
                    let first = h + 300;
                    c.deliver(&[(0, &req[..first])], wait)?;
                    c.send(0, &alt[..first])?;
                    c.poll(Duration::from_millis(20))?;
                    c.deliver(&[(first, &req[first..])], wait)
                }
                5 => {
                    c.burst(&[(0, &req[..h + 300]), (0, &req[..h + 800])])?;
                    c.poll(Duration::from_millis(50))?;
                    link.cut(false);
                    c.deliver(&[(0, &req[..h + 800]), (h + 800, &req[h + 800..])], wait)
                }
                _ => {
                    // 40 bytes: no end of head and no cookie, so the policy binds; the next
                    // piece overlaps it.
                    c.burst(&[(0, &req[..40]), (30, &req[30..300])])?;
                    c.deliver(
                        &[(0, &req[..40]), (30, &req[30..300]), (300, &req[300..])],
                        wait,
                    )
                }
            }
        })();
        cut(false);
        sent?;
        let r = c.response(wait);
        let _ = c.abort();
        r
    };
    let r = run();
    (expect, r)
}

/// Whether a response shows the backend read exactly the intended request.
fn consistent(e: &Expect, r: &http::Response) -> Result<String, String> {
    let who = r.header("x-backend").unwrap_or_default().to_string();
    let fnv = Fnv64::of(&e.body).hex();
    let len = e.body.len().to_string();
    let ok = r.status == 200
        && e.backend.as_ref().is_none_or(|b| *b == who)
        && r.header("x-body-len") == Some(len.as_str())
        && r.header("x-body-fnv") == Some(fnv.as_str());
    if ok {
        Ok(who)
    } else {
        Err(format!(
            "status {} from {who:?} (expected {:?}), body {:?} bytes with digest {:?} (sent {len}, {fnv})",
            r.status,
            e.backend,
            r.header("x-body-len"),
            r.header("x-body-fnv")
        ))
    }
}

/// Raw clients complete the syncookie handshake and then send their first request in
/// pieces the data plane must not mix up: a later segment before the first (no flow yet:
/// its `seq - 1` is not the ISN the syncookie was made for, so it is dropped as an
/// invalid syncookie), overlapping and out-of-order pieces, a head cut after the cookie
/// followed by an overlapping piece while binding (dropped while binding: only the first
/// segment means anything then), the first segment retransmitted with other bytes (a
/// cookie naming another server, another body) while or after binding, or retransmitted
/// longer, and a partial head without the cookie (bound by the policy) with an
/// overlapping continuation. The backend must read exactly the request the client meant
/// first (its digest of the body, and the backend the first copy named), or the
/// connection fails; never a mix. While binding, the data plane keeps the first copy and
/// only re-sends its SYN for a retransmission; after binding, the backend's TCP keeps
/// the bytes it already has. Legit clients meanwhile (naming be1-be3): 100%.
#[test]
fn segments_out_of_order_or_rewritten_while_binding_never_mix() {
    const ROUNDS: usize = 3;
    let _g = topology::machine_shared();
    let t = setup(4, &[]);
    let link = CutLink::insert(&t, 3);
    let names: Vec<String> = t.backends.iter().map(|b| b.name.clone()).collect();
    let legit_names = &names[..3];
    let before = Stats::read(&t);
    let started = Instant::now();
    let (outcomes, legit) = during_naming(&t, legit_names, 2, || {
        let mut out = Vec::new();
        for i in 0..ROUNDS * SCENARIOS.len() {
            let kind = i % SCENARIOS.len();
            let src = Ipv4Addr::new(198, 18, 0, 40 + i as u8);
            let (named, other) = if while_binding(kind) {
                (&names[3], &names[i % 3])
            } else {
                (&names[i % 3], &names[(i + 1) % 3])
            };
            let (e, r) = binding_scenario(kind, i, src, (named, other), &link);
            out.push((kind, e, r));
        }
        out
    });
    let elapsed = started.elapsed();
    let after = Stats::read(&t);
    let ctx = after.summary();
    let d = |c: &str| after.global(c) - before.global(c);
    let mut inconsistent = Vec::new();
    let mut completed = [0usize; SCENARIOS.len()];
    let mut failed = Vec::new();
    for (kind, e, r) in &outcomes {
        match r {
            Ok(resp) => match consistent(e, resp) {
                Ok(_) => completed[*kind] += 1,
                Err(why) => inconsistent.push(format!("{}: {why}", SCENARIOS[*kind])),
            },
            Err(err) => failed.push(format!("{}: {err:#}", SCENARIOS[*kind])),
        }
    }
    eprintln!(
        "binding with hostile segments: {} raw connections in {:.2} s; completed per scenario {:?} of {ROUNDS} ({:?}); failed (reset or no answer, allowed) {:?}; inconsistent {:?}; {}; syncookies_invalid +{}, drop_while_binding +{}, bind_retransmits +{}, cookie_beyond_first_segment +{}; be4 link {}",
        outcomes.len(),
        elapsed.as_secs_f64(),
        completed,
        SCENARIOS,
        failed,
        inconsistent,
        legit.summary(),
        d("syncookies_invalid"),
        d("drop_while_binding"),
        d("bind_retransmits"),
        d("cookie_beyond_first_segment"),
        link.relay.summary()
    );
    legit.assert_all_ok(&ctx);
    assert!(
        inconsistent.is_empty(),
        "the backend read something other than what the client meant: {inconsistent:?}; {ctx}"
    );
    // The raw client works: every scenario completed at least once.
    for (k, n) in completed.iter().enumerate() {
        assert!(
            *n > 0,
            "{} never completed: {failed:?}; {ctx}",
            SCENARIOS[k]
        );
    }
    // The later segments sent before the first found no flow and no valid syncookie.
    assert!(d("syncookies_invalid") >= ROUNDS as u64, "{ctx}");
    // The binding phase was exercised: overlapping pieces dropped while binding, the
    // repeated first segments re-sent the SYN (twice each: once cut, once restored).
    assert!(d("drop_while_binding") >= ROUNDS as u64, "{ctx}");
    assert!(d("bind_retransmits") >= 4 * ROUNDS as u64, "{ctx}");
    assert_eq!(d("cookie_beyond_first_segment"), ROUNDS as u64, "{ctx}");
    for c in [
        "drop_flow_table_full",
        "bindings_timed_out",
        "pass_malformed",
    ] {
        assert_eq!(d(c), 0, "{c}: {ctx}");
    }
}

// --- 4. Handshakes that never send data -----------------------------------------

/// Thousands of spoofed clients complete the syncookie handshake (SYN, SYN-ACK, ACK)
/// and never send a byte, plus kernel clients that connect and keep their sockets open
/// without writing: the data plane drops each handshake ACK after checking it and keeps
/// nothing, so the flow table holds the legit connections only.
#[test]
fn completed_handshakes_without_data_keep_no_state() {
    const RATE: u64 = 30_000;
    const TIME: Duration = Duration::from_secs(2);
    const IDLE_CLIENTS: usize = 20;
    let _g = topology::machine_exclusive();
    let t = setup(3, &[]);
    let table_before = Table::read(&t);
    let before = Stats::read(&t);
    let ((flood, idle, mid), legit) = during(&t, 2, || {
        let idle: Vec<TcpStream> = (0..IDLE_CLIENTS)
            .map(|_| TcpStream::connect_timeout(&vip(), Duration::from_secs(3)))
            .collect::<Result<_, _>>()
            .expect("connecting the idle clients");
        let flood = HandshakeFlood {
            ifname: "eth0",
            dst: VIP,
            dport: SERVICE_PORT,
            duration: TIME,
            pps: RATE,
            seed: 0x4a5d,
        }
        .run(spoofed, is_spoofed)
        .expect("handshake flood");
        // While the idle clients are still connected.
        let mid = Table::read(&t);
        (flood, idle, mid)
    });
    let idle_ports: BTreeSet<u16> = idle
        .iter()
        .map(|s| s.local_addr().unwrap().port())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let after = Stats::read(&t);
    let table = Table::read(&t);
    drop(idle);
    let ctx = after.summary();
    let d = |c: &str| after.global(c) - before.global(c);
    let n = legit.total() as u64;
    eprintln!(
        "handshakes without data: {} SYNs, {} SYN-ACKs, {} handshakes completed in {:.2} s = {:.0}/s (bound {RATE} SYNs/s, {} send errors), plus {IDLE_CLIENTS} idle kernel clients; syncookies_sent +{}, syncookies_valid +{}; {}; table {} -> {} (mid-flood {})",
        flood.syns,
        flood.synacks,
        flood.acks,
        flood.elapsed.as_secs_f64(),
        flood.rate(),
        flood.errors,
        d("syncookies_sent"),
        d("syncookies_valid"),
        legit.summary(),
        table_before.summary(),
        table.summary(),
        mid.summary()
    );
    legit.assert_all_ok(&ctx);
    assert!(
        flood.acks >= 1000,
        "only {} handshakes completed",
        flood.acks
    );
    // Every handshake ACK that arrived was checked (valid) and dropped.
    assert!(
        d("syncookies_valid") >= 2 * n + flood.acks / 2,
        "{} handshakes, {n} legit requests: {ctx}",
        flood.acks
    );
    for tb in [&mid, &table] {
        assert_eq!(tb.attacker_entries(), 0, "{}", tb.summary());
        assert_eq!(
            tb.entries_of_ports(&idle_ports),
            0,
            "idle clients have flows: {:?}",
            tb.rows_of_ports(&idle_ports)
        );
        // Legit connections being bound at that moment, at most one per legit client.
        assert!(tb.pending <= 2, "{}", tb.summary());
    }
    table.assert_quiet_and_consistent();
    assert_eq!(
        table.rows.len() - table_before.rows.len(),
        legit.ports().len(),
        "{ctx}"
    );
    assert_eq!(d("new_flows"), n, "{ctx}");
    assert_eq!(d("bindings_started"), n, "{ctx}");
    for c in [
        "drop_flow_table_full",
        "syncookies_invalid",
        "bindings_timed_out",
    ] {
        assert_eq!(d(c), 0, "{c}: {ctx}");
    }
}

// --- 5. Slowloris ---------------------------------------------------------------------

/// Many connections send a partial request head (no blank line) as their first
/// segment, then dribble the rest a byte every 100 ms, including a `Cookie:` header
/// naming be1. The head continues beyond the first segment, so the policy binds each
/// connection (`cookie_beyond_first_segment`; the late cookie is not read) and it is
/// spliced to its backend, whose own timeouts govern it from then on: the balancer keeps
/// exactly one spliced flow (two entries) per connection and no kept segment, and legit
/// clients keep getting through. In the end each request completes and is answered.
#[test]
fn slowloris_first_segments_cost_one_spliced_flow_each() {
    const N: usize = 200;
    const DRIBBLE: &[u8] = b"Cookie: JSESSIONID=slow!be1\r\n";
    let _g = topology::machine_shared();
    let t = setup(3, &[]);
    let before = Stats::read(&t);
    let table_before = Table::read(&t);
    let started = Instant::now();
    let (out, legit) = during(&t, 2, || -> anyhow::Result<_> {
        let mut conns = Vec::with_capacity(N);
        let head = format!("GET / HTTP/1.1\r\nHost: {VIP}\r\n");
        for _ in 0..N {
            let s = TcpStream::connect_timeout(&vip(), Duration::from_secs(5))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            (&s).write_all(head.as_bytes())?;
            conns.push(s);
        }
        let ports: BTreeSet<u16> = conns
            .iter()
            .map(|s| s.local_addr().map(|a| a.port()))
            .collect::<Result<_, _>>()?;
        let mut mid = None;
        for (k, b) in DRIBBLE.iter().enumerate() {
            for s in &conns {
                (&*s).write_all(&[*b])?;
            }
            if k == DRIBBLE.len() / 2 {
                mid = Some(Table::read(&t));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut answers = Vec::with_capacity(N);
        for s in &conns {
            (&*s).write_all(b"Connection: close\r\n\r\n")?;
        }
        for s in conns {
            let mut r = BufReader::new(s);
            let resp = http::read_response(&mut r, false)?;
            anyhow::ensure!(resp.status == 200, "status {}", resp.status);
            let mut rest = Vec::new();
            let _ = r.read_to_end(&mut rest);
            answers.push(resp.text());
        }
        Ok((ports, mid.expect("mid-dribble table"), answers))
    });
    let elapsed = started.elapsed();
    let after = Stats::read(&t);
    let ctx = after.summary();
    let (ports, mid, answers) = out.unwrap_or_else(|e| panic!("slowloris clients: {e:#}; {ctx}"));
    let d = |c: &str| after.global(c) - before.global(c);
    let mut spread = BTreeMap::new();
    for a in &answers {
        *spread.entry(a.clone()).or_insert(0usize) += 1;
    }
    let rows = mid.rows_of_ports(&ports);
    let spliced = rows
        .iter()
        .filter(|r| r["phase"] == "spliced" && r["state"] == "established")
        .count();
    eprintln!(
        "slowloris: {N} connections dribbling {} bytes each over {:.1} s; mid-dribble {} flows of theirs ({spliced} spliced/established), table {} -> {} (mid); answered by {spread:?}; {}",
        DRIBBLE.len(),
        elapsed.as_secs_f64(),
        rows.len(),
        table_before.summary(),
        mid.summary(),
        legit.summary()
    );
    legit.assert_all_ok(&ctx);
    assert_eq!(answers.len(), N);
    // One spliced flow per connection, both entries, nothing kept.
    assert_eq!(rows.len(), N, "{ctx}");
    assert_eq!(spliced, N, "{rows:?}");
    assert_eq!(mid.entries_of_ports(&ports), 2 * N, "{}", mid.summary());
    // Legit connections being bound at that moment, at most one per legit client.
    assert!(mid.pending <= 2, "{}", mid.summary());
    // Bound by the policy: the cookie came after the first segment.
    assert_eq!(d("cookie_beyond_first_segment"), N as u64, "{ctx}");
    assert_eq!(
        after.backends_sum("cookie_misses") - before.backends_sum("cookie_misses"),
        N as u64,
        "{ctx}"
    );
    assert_eq!(
        after.backends_sum("cookie_hits") - before.backends_sum("cookie_hits"),
        legit.total() as u64,
        "{ctx}"
    );
    assert!(
        spread.len() > 1,
        "the policy sent them all to one backend: {spread:?}"
    );
    for c in [
        "drop_flow_table_full",
        "syncookies_invalid",
        "bindings_timed_out",
    ] {
        assert_eq!(d(c), 0, "{c}: {ctx}");
    }
}

// --- 7. Forged cookies -------------------------------------------------------------

/// Forged session cookies under the daemon. A cookie is a routing hint, not a
/// credential: the balancer trusts a token that names a healthy backend of the service
/// and binds the connection there (that is the design: anyone can write any cookie, so
/// the app servers must authenticate their sessions themselves, e.g. reject a session id
/// they do not hold). What it must never do is bring traffic to a server that is not
/// taking new connections: tokens of a draining backend, of a backend the health checks
/// found down (here one whose server still runs but fails its checks, and one whose
/// server is stopped), and unknown tokens (a server that is not a backend of the
/// service, a made-up name) all fall back to the policy among the healthy backends
/// (`cookie_hits` stays 0 for the named ones, `cookie_unknown_token` counts the unknown
/// ones). Nothing here has a replication partner, so no failover rewrite applies; with
/// one, the sessions of a down primary go to its secondary, still never to the primary.
#[test]
fn forged_cookies_never_reach_a_server_that_is_not_up() {
    const EACH: usize = 20;
    let _g = topology::machine_shared();
    topology::assert_root();
    let mut t = Topology::two_arm(6).expect("building the topology");
    t.start_servers(Path::new(TESTSRV))
        .expect("starting test servers");
    // be4's server runs but its health checks fail: its answers to the gateway's own
    // address are black-holed (clients' traffic, routed through the same gateway, is not).
    t.backends[3]
        .ns
        .ip(&[
            "route",
            "add",
            "blackhole",
            &topology::GATEWAY_SERVER_ADDR.to_string(),
        ])
        .unwrap();
    // be5's server is stopped; be6 is not in the configuration.
    t.stop_server(4).unwrap();
    let o = ConfigOptions {
        without: vec![5],
        ..ConfigOptions::default()
    };
    let config = daemon_config(&t, &o);
    let drained = "  server_id = \"be3\"\n";
    assert!(config.contains(drained), "{config}");
    let config = config.replacen(drained, &format!("{drained}  drain = true\n"), 1);
    let d = Daemon::start(&mut t, &config).expect("starting the daemon");
    let ep = |i: usize| t.backends[i].endpoint();
    let want: [(usize, &str, &str); 5] = [
        (0, "up", "up"),
        (1, "up", "up"),
        (2, "draining", "up"),
        (3, "down", "down"),
        (4, "down", "down"),
    ];
    d.wait_for("backend states", Duration::from_secs(10), || {
        let list = d.backends()?;
        Ok(want
            .iter()
            .all(|(i, state, health)| {
                backend_entry(&list, &ep(*i))
                    .is_some_and(|e| e["state"] == *state && e["health"]["health"] == *health)
            })
            .then_some(()))
    })
    .unwrap();
    // The servers of be3 (draining), be4 (down) and be6 (not a backend) answer when asked
    // directly (from be1's namespace): "never reached" is not for want of a server.
    for i in [2, 3, 5] {
        let addr = t.backends[i].socket_addr();
        let who = t.backends[0]
            .ns
            .run(move || http::get(addr, "/").map(|r| r.text()))
            .unwrap()
            .unwrap_or_else(|e| panic!("be{} directly: {e:#}", i + 1));
        assert_eq!(who, t.backends[i].name);
    }
    let stats = || Stats(d.ctl_json(&["stats"]).unwrap());
    let cases: [(&str, &str); 7] = [
        ("be3", "draining"),
        ("be4", "down (server running, checks failing)"),
        ("be5", "down (server stopped)"),
        ("be6", "unknown (a server, not a backend)"),
        ("nosuch", "unknown (made up)"),
        ("be1", "healthy"),
        ("be2", "healthy"),
    ];
    let before = stats();
    let mut results = Vec::new();
    for (k, (token, what)) in cases.iter().enumerate() {
        let token = token.to_string();
        let answers = t
            .client
            .run(move || {
                (0..EACH)
                    .map(|i| {
                        get_with_cookie(
                            &format!("JSESSIONID=forged{k}x{i:03}!{token}"),
                            http::CONNECT_TIMEOUT,
                        )
                        .map(|(who, _)| who)
                        .map_err(|e| format!("{e:#}"))
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap();
        results.push((cases[k].0, *what, answers));
    }
    let after = stats();
    let ctx = after.summary();
    let mut report = Vec::new();
    for (token, what, answers) in &results {
        let mut spread = BTreeMap::new();
        for a in answers {
            *spread
                .entry(a.clone().unwrap_or_else(|e| format!("error: {e}")))
                .or_insert(0usize) += 1;
        }
        report.push(format!("{token} ({what}) -> {spread:?}"));
    }
    eprintln!(
        "forged cookies, {EACH} requests each: {}",
        report.join("; ")
    );
    for (token, what, answers) in &results {
        for a in answers {
            let who = a
                .as_ref()
                .unwrap_or_else(|e| panic!("request naming {token} ({what}): {e}; {ctx}"));
            if what.starts_with("healthy") {
                assert_eq!(who, token, "a healthy server's token routes to it; {ctx}");
            } else {
                assert_ne!(who, token, "a {what} server was reached; {ctx}");
                assert!(
                    who == "be1" || who == "be2",
                    "{token} ({what}) answered by {who}; {ctx}"
                );
            }
        }
    }
    let delta = |i: usize, f: &str| after.backend(&ep(i), f) - before.backend(&ep(i), f);
    for i in [2, 3, 4] {
        for f in [
            "cookie_hits",
            "new_flows",
            "packets_to",
            "failover_redirects",
        ] {
            assert_eq!(delta(i, f), 0, "be{} {f}: {ctx}", i + 1);
        }
    }
    for i in [0, 1] {
        assert_eq!(delta(i, "cookie_hits"), EACH as u64, "be{}: {ctx}", i + 1);
    }
    let g = |c: &str| after.global(c) - before.global(c);
    assert_eq!(g("cookie_unknown_token"), 2 * EACH as u64, "{ctx}");
    assert_eq!(
        after.backends_sum("cookie_misses") - before.backends_sum("cookie_misses"),
        5 * EACH as u64,
        "{ctx}"
    );
    assert_eq!(
        after.backends_sum("failover_redirects") - before.backends_sum("failover_redirects"),
        0,
        "{ctx}"
    );
}

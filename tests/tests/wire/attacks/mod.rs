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
//! The SYN flood is `cookie::syn_flood::syn_flood_creates_no_state_and_legit_clients_get_through`.
//!
//! Spoofed attacker sources are 198.18.0.16-239 (the client's subnet, configured nowhere):
//! the balancer's answers come back to the client's interface, where the raw client's
//! packet socket sees them and the namespace's stack drops them (no forwarding there).
//! The floods take the machine for themselves (`MACHINE`), so their rates and the other
//! tests' timings do not disturb each other.
//!
//! Needs root and a built `balancer` binary (`cargo build --release -p balancer-user`).

mod binding;
mod floods;
mod forged;
mod rst;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufReader, Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use aya::maps::{HashMap, MapData};
use balancer_common::{direction, map_names, Flow, FlowKey, PendingSegment};
use balancer_tests::{
    attack::{self, build_into, HandshakeFlood, RawTcp, Rng, Segment, TCP_ACK, TCP_PSH, TCP_RST},
    daemon::{backend_entry, daemon_config, ConfigOptions, Daemon},
    harness::root::assert_root,
    http::{self, Conn, Fnv64},
    impair::{Impairment, Relay},
    netns::{self, Netns},
    topology::{self, vip, Stats, Topology, CLIENT_ADDR, SERVICE_PORT, VIP},
};
use balancer_user::dataplane::Balancer;
use serde_json::Value;

use crate::TESTSRV;

/// Two-arm topology with `n` backends, the balancer attached (with `attach` arguments)
/// and the cookie-mode service `VIP:80` with every backend, server id = backend name.
fn setup(n: usize, attach: &[&str]) -> Topology {
    assert_root();
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
    Ok((r.answering_backend()?, port))
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

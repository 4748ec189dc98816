//! The reference replicated app server (`balancer-testsrv --server-id`) on its own, on
//! loopback (no root): sessions count without gaps, every update is on the secondary the
//! cookie names, and when a primary is killed its sessions continue on their secondaries
//! with no lost or repeated update.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use balancer_tests::{
    http::{self, Conn},
    session::{json, try_request, Answer, SessionCookie},
};
use serde_json::Value;

use crate::TESTSRV;

/// App servers on 127.0.0.1, each with all the others as peers; killed on drop.
struct Cluster {
    servers: Vec<Server>,
}

struct Server {
    id: String,
    addr: SocketAddr,
    child: Option<Child>,
}

impl Cluster {
    /// Starts one server per id, with `extra` arguments each, and waits until all listen.
    /// A server that cannot listen (something else took its address meanwhile) makes the
    /// whole cluster start again on fresh addresses: the peers must all know each other.
    fn start(ids: &[&str], extra: &[&str]) -> Cluster {
        let mut last_error = String::new();
        for _attempt in 0..3 {
            match Cluster::try_start(ids, extra) {
                Ok(cluster) => return cluster,
                Err(e) => last_error = e,
            }
        }
        panic!("cluster {ids:?} did not start: {last_error}");
    }

    fn try_start(ids: &[&str], extra: &[&str]) -> Result<Cluster, String> {
        let addrs = cluster_addrs(ids.len());
        let mut cluster = Cluster {
            servers: Vec::new(),
        };
        for (id, addr) in ids.iter().zip(&addrs) {
            let mut cmd = Command::new(TESTSRV);
            cmd.args(["--listen", &addr.to_string(), "--server-id", id])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            for (peer, peer_addr) in ids.iter().zip(&addrs) {
                if peer != id {
                    cmd.arg("--peer").arg(format!("{peer}={peer_addr}"));
                }
            }
            let child = cmd.spawn().expect("starting balancer-testsrv");
            cluster.servers.push(Server {
                id: id.to_string(),
                addr: *addr,
                child: Some(child),
            });
        }
        for s in &mut cluster.servers {
            wait_listening(s)?;
        }
        Ok(cluster)
    }

    fn addr(&self, id: &str) -> SocketAddr {
        self.servers
            .iter()
            .find(|s| s.id == id)
            .unwrap_or_else(|| panic!("no server {id}"))
            .addr
    }

    /// SIGKILL, as a crash: no chance to hand anything over.
    fn kill(&mut self, id: &str) {
        let s = self
            .servers
            .iter_mut()
            .find(|s| s.id == id)
            .expect("server");
        if let Some(mut child) = s.child.take() {
            child.kill().expect("killing a server");
            child.wait().expect("reaping a server");
        }
    }

    fn stats(&self, id: &str) -> Value {
        json(&http::get(self.addr(id), "/_sessions").expect("GET /_sessions"))
    }

    /// What server `id` holds of `session` (`None`: nothing).
    fn held(&self, id: &str, session: &str) -> Option<Value> {
        let r = http::get(self.addr(id), &format!("/_sessions/{session}")).expect("GET");
        (r.status == 200).then(|| json(&r))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for s in &mut self.servers {
            if let Some(mut child) = s.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// `n` addresses no other cluster uses: each server gets its own address in 127.0.0.0/8
/// (all of it is loopback) and a port below the ephemeral range. Asking the kernel for a
/// free port and closing it again is a race: a parallel test's client connection can get
/// the same port as its local port before the server binds it (seen in CI).
fn cluster_addrs(n: usize) -> Vec<SocketAddr> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let pid = std::process::id();
    (0..n)
        .map(|_| {
            let serial = NEXT.fetch_add(1, Ordering::Relaxed) + 1;
            let [_, _, high, low] = serial.to_be_bytes();
            let ip = Ipv4Addr::new(127, 100 + (pid % 100) as u8, high, low);
            SocketAddr::from((ip, 20_080))
        })
        .collect()
}

fn wait_listening(s: &mut Server) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect_timeout(&s.addr, Duration::from_millis(100)).is_err() {
        if let Some(status) = s.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
            return Err(format!(
                "server {} on {} exited ({status}) before listening",
                s.id, s.addr
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!("server {} does not listen on {}", s.id, s.addr));
        }
        thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// `GET /session` to `addr`, sending `cookie` and `request_id` if given.
fn request(addr: SocketAddr, cookie: Option<&SessionCookie>, request_id: Option<&str>) -> Answer {
    try_request(addr, cookie, request_id)
        .unwrap_or_else(|e| panic!("GET /session from {addr}: {e:#}"))
}

/// Checks an answer from server `from` to the update that should yield `counter`.
fn check(a: &Answer, from: &str, session: Option<&str>, counter: u64) {
    let c = a.cookie();
    assert_eq!(a.status, 200, "{a:?}");
    assert!(!a.lost, "session lost: {a:?}");
    assert_eq!(a.counter(), counter, "{a:?}");
    assert_eq!(
        (c.primary.as_str(), a.backend.as_str()),
        (from, from),
        "{a:?}"
    );
    assert_eq!(a.body["server"], from);
    assert_eq!(a.body["session"].as_str(), Some(c.session.as_str()));
    assert_eq!(a.body["secondary"].as_str(), c.secondary.as_deref());
    if let Some(session) = session {
        assert_eq!(c.session, session, "the session id changed: {a:?}");
    }
    assert_ne!(c.secondary.as_deref(), Some(from), "{a:?}");
}

/// The replica the cookie names must hold at least what the client saw (exactly, as no
/// other request runs on the session).
fn check_replicated(cluster: &Cluster, cookie: &SessionCookie, counter: u64) {
    let secondary = cookie.secondary.as_deref().expect("a secondary");
    let held = cluster
        .held(secondary, &cookie.session)
        .unwrap_or_else(|| panic!("{secondary} holds nothing of {cookie}"));
    assert_eq!(held["role"], "replica", "{held}");
    assert_eq!(held["primary"], cookie.primary.as_str(), "{held}");
    assert_eq!(held["counter"], counter, "{held}");
}

const SESSIONS: usize = 20;
const BEFORE: u64 = 10;
const AFTER: u64 = 6;

/// 20 sessions x 10 updates on three servers, then one server is killed and every
/// session makes 6 more updates, sent where the client's last cookie says: the primary,
/// or its secondary when the primary is the dead server.
fn sessions_survive_a_dead_primary(choice: &str) {
    let mut cluster = Cluster::start(&["a", "b", "c"], &["--secondary-choice", choice]);
    let ids = ["a", "b", "c"];
    let addrs: HashMap<String, SocketAddr> = ids
        .iter()
        .map(|id| (id.to_string(), cluster.addr(id)))
        .collect();

    let cookies: Vec<SessionCookie> = thread::scope(|scope| {
        let workers: Vec<_> = (0..SESSIONS)
            .map(|i| {
                let addrs = &addrs;
                scope.spawn(move || {
                    let first = ids[i % ids.len()];
                    let a = request(addrs[first], None, None);
                    check(&a, first, None, 1);
                    assert_eq!(a.event(), "new");
                    let mut cookie = a.cookie().clone();
                    for n in 2..=BEFORE {
                        let a = request(addrs[&cookie.primary], Some(&cookie), None);
                        check(&a, &cookie.primary, Some(&cookie.session), n);
                        assert_eq!(a.event(), "continued");
                        cookie = a.cookie().clone();
                    }
                    cookie
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    for c in &cookies {
        check_replicated(&cluster, c, BEFORE);
    }

    cluster.kill("a");
    let orphans = cookies.iter().filter(|c| c.primary == "a").count();
    assert!(orphans > 0);
    let after: Vec<SessionCookie> = thread::scope(|scope| {
        let workers: Vec<_> = cookies
            .iter()
            .map(|cookie| {
                let addrs = &addrs;
                scope.spawn(move || {
                    let mut cookie = cookie.clone();
                    for n in BEFORE + 1..=BEFORE + AFTER {
                        let orphan = cookie.primary == "a";
                        let to = match &cookie.secondary {
                            Some(s) if orphan => s.clone(),
                            _ => cookie.primary.clone(),
                        };
                        let a = request(addrs[&to], Some(&cookie), None);
                        check(&a, &to, Some(&cookie.session), n);
                        let expected = if orphan { "takeover" } else { "continued" };
                        assert_eq!(a.event(), expected, "{a:?}");
                        let c = a.cookie();
                        assert!(
                            c.secondary.is_some() && c.secondary.as_deref() != Some("a"),
                            "the one live peer must take the replica: {a:?}"
                        );
                        cookie = c.clone();
                    }
                    cookie
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    for c in &after {
        check_replicated(&cluster, c, BEFORE + AFTER);
    }

    let (b, c) = (cluster.stats("b"), cluster.stats("c"));
    let takeovers = b["takeovers"].as_u64().unwrap() + c["takeovers"].as_u64().unwrap();
    assert_eq!(takeovers, orphans as u64, "{b}\n{c}");
    assert_eq!((b["lost"].as_u64(), c["lost"].as_u64()), (Some(0), Some(0)));
    let primaries = b["primary"].as_u64().unwrap() + c["primary"].as_u64().unwrap();
    assert_eq!(primaries, SESSIONS as u64, "{b}\n{c}");

    // Sessions b cannot continue, lost and replaced by a new one: one it never heard of,
    // and one it holds a replica of but the cookie names another secondary (that replica
    // could be behind the one the cookie names).
    let at_c = after
        .iter()
        .find(|c| c.primary == "c")
        .expect("c's own sessions");
    assert_eq!(at_c.secondary.as_deref(), Some("b"));
    for cookie in ["0123456789abcdef!b!c", &format!("{}!a!c", at_c.session)] {
        let cookie = SessionCookie::parse(cookie).unwrap();
        let lost = request(addrs["b"], Some(&cookie), None);
        assert!(lost.lost, "{lost:?}");
        assert_eq!(
            (lost.status, lost.counter(), lost.event()),
            (200, 1, "lost")
        );
        assert_ne!(lost.cookie().session, cookie.session);
        assert_eq!(lost.cookie().primary, "b");
    }
    assert_eq!(cluster.stats("b")["lost"], 2);
}

#[test]
fn sessions_survive_a_dead_primary_partner_secondaries() {
    sessions_survive_a_dead_primary("partner");
}

#[test]
fn sessions_survive_a_dead_primary_spread_secondaries() {
    sessions_survive_a_dead_primary("session");
}

#[test]
fn partner_mode_replicates_all_sessions_of_a_server_to_one_peer() {
    let cluster = Cluster::start(&["a", "b", "c"], &[]);
    let secondaries: Vec<Option<String>> = (0..10)
        .map(|_| {
            request(cluster.addr("a"), None, None)
                .cookie()
                .secondary
                .clone()
        })
        .collect();
    assert!(secondaries[0].is_some());
    assert!(
        secondaries.iter().all(|s| s == &secondaries[0]),
        "{secondaries:?}"
    );
}

#[test]
fn retried_requests_are_applied_once_also_across_a_takeover() {
    let mut cluster = Cluster::start(&["a", "b"], &[]);
    let (a, b) = (cluster.addr("a"), cluster.addr("b"));
    let first = request(a, None, Some("r1"));
    let mut cookie = first.cookie().clone();
    assert_eq!(cookie.secondary.as_deref(), Some("b"));
    for n in 2..=3 {
        let r = request(a, Some(&cookie), Some(&format!("r{n}")));
        check(&r, "a", Some(&cookie.session), n);
        cookie = r.cookie().clone();
    }
    // The answer to r3 got lost: the client retries it.
    let again = request(a, Some(&cookie), Some("r3"));
    check(&again, "a", Some(&cookie.session), 3);
    assert_eq!(again.body["replayed"], true);

    // And once more after the primary died: the secondary has r3, and says so.
    cluster.kill("a");
    let taken = request(b, Some(&cookie), Some("r3"));
    check(&taken, "b", Some(&cookie.session), 3);
    assert_eq!(
        (taken.event(), &taken.body["replayed"]),
        ("takeover", &Value::Bool(true))
    );
    // No peer left to hold a replica: answered anyway, the cookie says so.
    assert_eq!(taken.cookie().secondary, None);
    assert_eq!(taken.body["secondary"], Value::Null);
    let next = request(b, Some(taken.cookie()), Some("r4"));
    check(&next, "b", Some(&cookie.session), 4);
    let stats = cluster.stats("b");
    assert_eq!(
        (
            &stats["replayed"],
            &stats["takeovers"],
            &stats["unreplicated"]
        ),
        (&Value::from(1), &Value::from(1), &Value::from(2)),
        "{stats}"
    );
}

#[test]
fn replicas_only_move_forward() {
    let cluster = Cluster::start(&["a"], &[]);
    let a = cluster.addr("a");
    let replicate = |primary: &str, epoch: u64, counter: u64| {
        let body = format!(
            r#"{{"session":"s1","primary":"{primary}","epoch":{epoch},"counter":{counter}}}"#
        );
        http::post(a, "/_replicate", body.as_bytes()).expect("POST /_replicate")
    };
    let held = || cluster.held("a", "s1").expect("s1 held");
    assert_eq!(replicate("x", 0, 5).status, 200);
    assert_eq!(replicate("x", 0, 3).status, 200, "older: acknowledged");
    assert_eq!(held()["counter"], 5);
    assert_eq!(replicate("x", 0, 5).status, 200, "duplicate: acknowledged");
    // y took the session over: a later epoch wins, the old primary is refused.
    assert_eq!(replicate("y", 1, 6).status, 200);
    let stale = replicate("x", 0, 9);
    assert_eq!(
        (stale.status, stale.header("x-session-owner")),
        (409, Some("y"))
    );
    assert_eq!(
        (&held()["epoch"], &held()["counter"]),
        (&Value::from(1), &Value::from(6))
    );
    assert_eq!(held()["primary"], "y");
    assert_eq!(http::post(a, "/_replicate", b"{").unwrap().status, 400);
    let bad_id = br#"{"session":"s!1","primary":"x","epoch":0,"counter":1}"#;
    assert_eq!(http::post(a, "/_replicate", bad_id).unwrap().status, 400);
}

#[test]
fn plain_routes_still_work_in_session_mode() {
    let cluster = Cluster::start(&["a"], &["--name", "app-a"]);
    let a = cluster.addr("a");
    let health = http::get(a, "/health").unwrap();
    assert_eq!((health.status, health.text().as_str()), (200, "ok"));
    let bytes = http::get(a, "/bytes/1000").unwrap();
    assert!(bytes.body.len() == 1000 && http::is_pattern(&bytes.body));
    let plain = http::get(a, "/other").unwrap();
    assert_eq!(plain.text(), "app-a");
    assert_eq!(plain.header("x-backend"), Some("app-a"));
    let up = http::post(a, "/upload", b"abc").unwrap();
    assert_eq!(up.header("x-body-len"), Some("3"));
    let mut conn = Conn::connect(a).unwrap();
    assert_eq!(
        conn.request("PUT", "/session", &[], b"").unwrap().status,
        405
    );
    // A bad request id is refused rather than ignored (it would break retries).
    let bad = conn
        .request("GET", "/session", &[("X-Request-Id", "a b")], &[])
        .unwrap();
    assert_eq!(bad.status, 400);
    // Without peers: served, no secondary.
    let r = request(a, None, None);
    assert_eq!((r.status, r.cookie().secondary.clone()), (200, None));
    assert_eq!(r.backend, "app-a");
}

/// One client of [`kill_a_primary_under_load`]: updates its session until `end`, each
/// request with a new request id; a request that fails (the primary died mid-request or
/// refuses connections) is retried with the same id on the secondary of the last cookie.
/// Returns the last cookie, the last counter and how many takeovers it saw.
fn load_client(
    addrs: &HashMap<String, SocketAddr>,
    client: usize,
    end: Instant,
) -> (SessionCookie, u64, u64) {
    let first = ["a", "b", "c"][client % 3];
    let mut cookie = request(addrs[first], None, None).cookie().clone();
    let (mut counter, mut takeovers) = (1, 0);
    for seq in 1.. {
        if Instant::now() >= end {
            break;
        }
        let id = format!("c{client}-{seq}");
        let mut to = cookie.primary.clone();
        let answer = loop {
            match try_request(addrs[&to], Some(&cookie), Some(&id)) {
                Ok(a) => break a,
                Err(e) => {
                    let secondary = cookie.secondary.clone();
                    assert!(
                        to == cookie.primary && secondary.is_some(),
                        "{id} to {to} failed with nowhere else to go: {e:#}"
                    );
                    to = secondary.unwrap();
                }
            }
        };
        check(&answer, &to, Some(&cookie.session), counter + 1);
        takeovers += u64::from(answer.event() == "takeover");
        counter += 1;
        cookie = answer.cookie().clone();
    }
    (cookie, counter, takeovers)
}

/// 50 clients, each with its own session, update their counters in a tight loop; one
/// server is killed meanwhile. Every client sees 1, 2, 3, ... with no gap or repeat
/// (retries carry their request id, so one the dead primary had replicated is not
/// applied twice), and the secondary of each final cookie holds the final counter.
#[test]
fn kill_a_primary_under_load() {
    const CLIENTS: usize = 50;
    let mut cluster = Cluster::start(&["a", "b", "c"], &[]);
    let addrs: HashMap<String, SocketAddr> = ["a", "b", "c"]
        .iter()
        .map(|id| (id.to_string(), cluster.addr(id)))
        .collect();
    let end = Instant::now() + Duration::from_millis(1500);
    let results = thread::scope(|scope| {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let addrs = &addrs;
                scope.spawn(move || load_client(addrs, i, end))
            })
            .collect();
        thread::sleep(Duration::from_millis(500));
        cluster.kill("a");
        let results: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        results
    });
    let mut takeovers = 0;
    for (cookie, counter, t) in &results {
        assert!(*counter > 5, "{cookie}: only {counter} updates");
        assert_ne!(cookie.primary, "a");
        assert!(*t <= 1, "{cookie}: {t} takeovers");
        takeovers += t;
        check_replicated(&cluster, cookie, *counter);
    }
    let (b, c) = (cluster.stats("b"), cluster.stats("c"));
    assert_eq!(
        b["takeovers"].as_u64().unwrap() + c["takeovers"].as_u64().unwrap(),
        takeovers
    );
    assert!(takeovers >= (CLIENTS / 3) as u64, "{takeovers} takeovers");
    assert_eq!((b["lost"].as_u64(), c["lost"].as_u64()), (Some(0), Some(0)));
}

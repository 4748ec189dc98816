//! End-to-end tests of operating `balancer daemon`: reloads of bad and good
//! configurations, restarts under load, group membership with signed host messages
//! (and unsigned, replayed, malformed ones), permissions of what it exposes, and the CLI
//! while no daemon runs. Each test builds its own netns topology; guards remove
//! everything (namespaces, pins, processes, files), also when a test panics.
//!
//! Needs root and a built `balancer` binary (`cargo build --release -p balancer-user`).

use std::{
    net::{SocketAddr, UdpSocket},
    os::unix::{
        fs::{FileTypeExt as _, PermissionsExt as _},
        process::CommandExt as _,
    },
    path::Path,
    process::{Command, Output},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use balancer_tests::{
    daemon::{backend_entry, colliding_tokens, daemon_config, Background, ConfigOptions, Daemon},
    http,
    load::wait_pair,
    rng::Rng,
    topology::{self, vip, Topology, GATEWAY_SERVER_ADDR},
};
use balancer_user::group::{unix_ms, GroupKey, HostMessage, InterfaceInfo, Role, MAGIC};
use serde_json::Value;

const TESTSRV: &str = env!("CARGO_BIN_EXE_balancer-testsrv");
/// The daemon re-plans every 250 ms without an event.
const DAEMON_TICK: Duration = Duration::from_millis(250);
/// Health-check interval of every configuration here ([`ConfigOptions::default`]).
const HEALTH_INTERVAL: Duration = Duration::from_millis(200);
const GROUP_PORT: u16 = 7946;
const GROUP_KEY: &str = "daemon-ops-test-group-key-0123456789abcdef";
const OTHER_KEY: &str = "a-different-key-that-is-not-the-group-key-xyz";

/// Two-arm topology with three plain test servers.
fn topology() -> Topology {
    topology::assert_root();
    let mut t = Topology::two_arm(3).expect("building the topology");
    t.start_servers(Path::new(TESTSRV))
        .expect("starting test servers");
    t
}

/// Waits until every backend of the configuration is healthy.
fn wait_healthy(d: &Daemon, n: usize) {
    d.wait_for("backends healthy", Duration::from_secs(10), || {
        let up = d
            .backends()?
            .iter()
            .filter(|b| b["health"]["health"] == "up" && b["state"] == "up")
            .count();
        Ok((up >= n).then_some(()))
    })
    .unwrap();
}

/// `text` with the first `from` replaced by `to`; `from` must be there.
fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} is not in\n{text}");
    text.replacen(from, to, 1)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim_end().to_string()
}

/// The gateway's metrics endpoint (127.0.0.1:9469 in its namespace): GET /metrics.
fn metrics(t: &Topology) -> String {
    let addr: SocketAddr = "127.0.0.1:9469".parse().unwrap();
    let r = t
        .gateway
        .run(move || http::get(addr, "/metrics"))
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

/// Value of the sample `name` (no labels) in a Prometheus exposition.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Health checks done so far per backend endpoint (HEALTH map, through the CLI).
fn health_checks(d: &Daemon) -> Vec<(String, u64)> {
    d.backends()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["backend"].as_str().unwrap_or_default().to_string(),
                b["health"]["checks"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

// ---- 1. Reloads ---------------------------------------------------------------------

/// A rejected configuration never changes what runs: for each bad file, `balancer
/// reload` fails with one line saying why, the daemon keeps running, and the pinned
/// state is what it was; the same through SIGHUP, counted on the metrics endpoint; then
/// a good file is applied.
#[test]
fn bad_configuration_on_reload_keeps_the_running_state() {
    let mut t = topology();
    let base = daemon_config(&t, &ConfigOptions::default());
    let mut d = Daemon::start(&mut t, &base).expect("starting the daemon");
    wait_healthy(&d, 3);
    let before = d.state_dump().unwrap();
    let be = |i: usize| t.backends[i].endpoint();
    let address = |i: usize| format!("  address = \"{}\"\n", be(i));
    let with_weight = |w: u32| {
        edit(
            &base,
            &address(0),
            &format!("{}  weight = {w}\n", address(0)),
        )
    };
    let (tok_a, tok_b) = colliding_tokens();
    let readable_key = d
        .write_file("readable.key", GROUP_KEY, 0o644)
        .unwrap()
        .display()
        .to_string();

    // (what, file (None: no file at all), what the one-line error must say)
    let cases: Vec<(&str, Option<String>, String)> = vec![
        (
            "TOML syntax error",
            Some(format!("{base}  [[service.backend]\n")),
            format!("{}: line ", d.config.display()),
        ),
        (
            "unknown key",
            Some(edit(&base, "  server_id = \"be1\"\n", "  server_id = \"be1\"\n  wieght = 5\n")),
            "unknown field `wieght`".into(),
        ),
        (
            "duplicate backend",
            Some(format!("{base}  [[service.backend]]\n{}  server_id = \"dup\"\n", address(0))),
            format!("backend {}: configured twice in this service", be(0)),
        ),
        (
            "server_id used twice",
            Some(edit(&base, "server_id = \"be2\"", "server_id = \"be1\"")),
            "server_id \"be1\" is also used by backend".into(),
        ),
        (
            "server_ids with colliding hashes",
            Some(edit(
                &edit(&base, "server_id = \"be1\"", &format!("server_id = \"{tok_a}\"")),
                "server_id = \"be2\"",
                &format!("server_id = \"{tok_b}\""),
            )),
            format!("server_id \"{tok_b}\" hashes like \"{tok_a}\""),
        ),
        ("weight 0", Some(with_weight(0)), "weight 0 is not in 1..=10000".into()),
        (
            "weight 100000",
            Some(with_weight(100_000)),
            "weight 100000 is not in 1..=10000".into(),
        ),
        (
            "cookie mode on UDP",
            Some(edit(&base, "mode = \"cookie\"\n", "mode = \"cookie\"\nproto = \"udp\"\n")),
            "cookie mode needs proto = \"tcp\"".into(),
        ),
        (
            "secondary naming an unknown server_id",
            Some(edit(&base, "  server_id = \"be1\"\n", "  server_id = \"be1\"\n  secondary = \"be9\"\n")),
            "secondary \"be9\" is not the server_id of any backend of this service".into(),
        ),
        (
            "unknown interface",
            Some(edit(&base, "\"srv0\"]", "\"srv0\", \"nosuch0\"]")),
            "interface \"nosuch0\" does not exist in this network namespace".into(),
        ),
        (
            "bad duration",
            Some(edit(&base, "interval = \"200ms\"", "interval = \"200\"")),
            "health.interval: invalid duration \"200\"".into(),
        ),
        (
            "instance changed",
            Some(edit(
                &base,
                &format!("instance = \"{}\"", t.instance()),
                "instance = \"lbother\"",
            )),
            "daemon.instance cannot change on reload".into(),
        ),
        (
            "group key readable by others",
            Some(format!(
                "{base}[group]\nkey_file = \"{readable_key}\"\nlisten = \"{GATEWAY_SERVER_ADDR}:{GROUP_PORT}\"\n"
            )),
            "may be accessed by group or others (mode 644)".into(),
        ),
        (
            "metrics address not on this host",
            Some(edit(&base, "pair_sample = 1\n", "pair_sample = 1\nmetrics = \"192.0.2.1:9469\"\n")),
            "daemon.metrics 192.0.2.1:9469: ".into(),
        ),
        (
            "interface that cannot take the program, with be2 drained",
            Some(edit(
                &edit(&base, "\"srv0\"]", "\"srv0\", \"lo\"]"),
                &address(1),
                &format!("{}  drain = true\n", address(1)),
            )),
            "attaching to lo: ".into(),
        ),
        (
            "file missing",
            None,
            format!("cannot read {}", d.config.display()),
        ),
    ];
    for (what, file, expected) in &cases {
        match file {
            Some(text) => d.write_config(text).unwrap(),
            None => std::fs::remove_file(&d.config).unwrap(),
        }
        let out = d.ctl(&["reload"]).unwrap();
        let err = stderr(&out);
        eprintln!("{what}: {err}");
        assert!(
            !out.status.success(),
            "{what}: reload succeeded\n{}",
            d.log()
        );
        assert_eq!(err.lines().count(), 1, "{what}: not one line: {err}");
        assert!(
            err.starts_with("balancer: error: reload rejected, running state kept: "),
            "{what}: {err}"
        );
        assert!(
            err.contains(expected.as_str()),
            "{what}: {err:?} lacks {expected:?}"
        );
        assert!(out.stdout.is_empty(), "{what}");
    }

    // The same through SIGHUP: the log says why.
    d.write_config(&with_weight(0)).unwrap();
    let rejections = |log: &str| log.matches("reload rejected, running state kept").count();
    let seen = rejections(&d.log());
    assert_eq!(seen, cases.len(), "{}", d.log());
    let log_at = d.log_len();
    d.signal(libc::SIGHUP).unwrap();
    d.wait_for("SIGHUP reload rejected", Duration::from_secs(5), || {
        Ok((rejections(&d.log()) > seen).then_some(()))
    })
    .unwrap();
    let hup_log = d.log_since(log_at);
    assert!(
        hup_log.contains("weight 0 is not in 1..=10000"),
        "{hup_log}"
    );
    assert!(d.is_running());

    let text = metrics(&t);
    assert_eq!(
        metric(&text, "balancer_config_reload_failures_total"),
        Some((cases.len() + 1) as f64),
        "{text}"
    );
    assert_eq!(metric(&text, "balancer_config_reloads_total"), Some(0.0));
    // A rejected file must not leak into what the daemon plans on its own (it re-plans
    // every tick): compare after a few ticks.
    std::thread::sleep(DAEMON_TICK * 3);
    assert!(d.is_running(), "{}", d.log());
    assert_eq!(d.state_dump().unwrap(), before, "{}", d.log());

    // A good change: be1's weight, be2 drained, be3 removed.
    let good = daemon_config(
        &t,
        &ConfigOptions {
            without: vec![2],
            ..ConfigOptions::default()
        },
    );
    let good = edit(
        &good,
        &address(0),
        &format!("{}  weight = 50\n", address(0)),
    );
    let good = edit(
        &good,
        &address(1),
        &format!("{}  drain = true\n", address(1)),
    );
    d.write_config(&good).unwrap();
    let log_at = d.log_len();
    let out = d.ctl(&["reload"]).unwrap();
    assert!(out.status.success(), "{}\n{}", stderr(&out), d.log());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("reloaded: "), "{stdout}");
    let list = d.backends().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    let e1 = backend_entry(&list, &be(0)).expect("be1");
    assert_eq!(
        (e1["weight"].as_u64(), e1["state"].as_str()),
        (Some(50), Some("up")),
        "{e1}"
    );
    let e2 = backend_entry(&list, &be(1)).expect("be2");
    assert_eq!(e2["state"], "draining", "{e2}");
    assert!(backend_entry(&list, &be(2)).is_none(), "{list:?}");
    let services = d.ctl_json(&["service", "list"]).unwrap();
    assert_eq!(services[0]["backends"], 2, "{services}");
    assert_eq!(services[0]["active_backends"], 1, "{services}");
    let log = d.log_since(log_at);
    for line in [
        format!("backend {} removed", be(2)),
        format!("backend {} weight 100 -> 50", be(0)),
        format!("backend {} up -> draining", be(1)),
        "configuration reloaded".to_string(),
    ] {
        assert!(log.contains(&line), "{line:?} not in\n{log}");
    }
    assert_eq!(
        metric(&metrics(&t), "balancer_config_reloads_total"),
        Some(1.0)
    );
}

// ---- 2. Restarts under load ---------------------------------------------------------

#[derive(Default)]
struct LoadCounters {
    ok: AtomicU64,
    failed: AtomicU64,
    connections: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl LoadCounters {
    fn fail(&self, e: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 20 {
            errors.push(e);
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }
}

/// A response of a plain test server: 200 and a backend name.
fn check_answer(r: &http::Response) -> Result<(), String> {
    let name = r.text();
    if r.status == 200 && name.starts_with("be") {
        Ok(())
    } else {
        Err(format!("status {}, body {name:?}", r.status))
    }
}

/// Requests through the VIP from the client namespace until `stop`: on one keep-alive
/// connection after another (`keep_alive`), or on a new connection each.
fn load_thread(
    t: &Topology,
    keep_alive: bool,
    stop: Arc<AtomicBool>,
    c: Arc<LoadCounters>,
) -> std::thread::JoinHandle<()> {
    let path = t.client.path();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on a valid namespace fd, for this thread only.
        assert_eq!(
            unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) },
            0
        );
        let mut conn: Option<http::Conn> = None;
        while !stop.load(Ordering::Relaxed) {
            let result = if keep_alive {
                if conn.is_none() {
                    match http::Conn::connect(vip()) {
                        Ok(x) => {
                            c.connections.fetch_add(1, Ordering::Relaxed);
                            conn = Some(x);
                        }
                        Err(e) => {
                            c.fail(format!("keep-alive connect: {e:#}"));
                            continue;
                        }
                    }
                }
                let k = conn.as_mut().unwrap();
                let r = k.get("/");
                // A few hundred requests per connection, then a new one.
                if r.as_ref().map_or(true, |r| r.closes()) || c.ok() % 200 == 199 {
                    conn = None;
                }
                r
            } else {
                c.connections.fetch_add(1, Ordering::Relaxed);
                http::get(vip(), "/")
            };
            match result
                .map_err(|e| format!("{e:#}"))
                .and_then(|r| check_answer(&r).map(|_| r))
            {
                Ok(_) => {
                    c.ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => c.fail(format!(
                    "{}: {e}",
                    if keep_alive {
                        "keep-alive"
                    } else {
                        "new connection"
                    }
                )),
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    })
}

/// Lines a daemon writes when it changes the pinned services or backends.
fn changes_in(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            [
                ": added",
                " added",
                " removed",
                "re-created",
                " weight ",
                " -> ",
                "failover rewrite",
                "attached",
            ]
            .iter()
            .any(|p| l.contains(p))
        })
        .collect()
}

/// The data plane is pinned: stopping the daemon (SIGTERM, or SIGKILL) and starting it
/// again while clients send requests loses none of them, and the restarted daemon adopts
/// the pinned state (backend states, health, a failover rewrite) rather than writing it
/// again.
#[test]
fn restarting_the_daemon_under_load_fails_no_request() {
    let mut t = topology();
    // be3's sessions go to be1 when be3 fails; be3 fails before the load starts.
    let pairs = vec![("be3".to_string(), "be1".to_string())];
    let config = daemon_config(
        &t,
        &ConfigOptions {
            pairs,
            ..ConfigOptions::default()
        },
    );
    let mut d = Daemon::start(&mut t, &config).expect("starting the daemon");
    wait_healthy(&d, 3);
    t.stop_server(2).unwrap();
    let (be1, be3) = (t.backends[0].endpoint(), t.backends[2].endpoint());
    d.wait_for(
        "be3 down, rewritten to be1",
        Duration::from_secs(10),
        || {
            let list = d.backends()?;
            let e = backend_entry(&list, &be3).cloned().unwrap_or(Value::Null);
            Ok((e["state"] == "down" && e["failover_to"] == be1.as_str()).then_some(()))
        },
    )
    .unwrap();
    let before = d.state_dump().unwrap();
    let checks_before: u64 = health_checks(&d).iter().map(|(_, c)| c).sum();

    let stop = Arc::new(AtomicBool::new(false));
    let keep = Arc::new(LoadCounters::default());
    let fresh = Arc::new(LoadCounters::default());
    let threads = [
        load_thread(&t, true, stop.clone(), keep.clone()),
        load_thread(&t, false, stop.clone(), fresh.clone()),
    ];
    let started = Instant::now();
    let progress = |d: &Daemon, n: u64| {
        let (k0, f0) = (keep.ok(), fresh.ok());
        d.wait_for("requests flowing", Duration::from_secs(10), || {
            Ok((keep.ok() >= k0 + n && fresh.ok() >= f0 + n).then_some(()))
        })
    };
    progress(&d, 20).unwrap();

    let mut windows = Vec::new();
    for how in ["SIGTERM", "SIGKILL"] {
        let total = || keep.ok() + fresh.ok();
        let at_stop = total();
        let down_at = Instant::now();
        match how {
            "SIGTERM" => {
                d.stop().unwrap();
                assert!(!d.control_socket().exists(), "socket removed on SIGTERM");
            }
            _ => {
                d.kill().unwrap();
                assert!(
                    d.control_socket().exists(),
                    "a killed daemon leaves its socket"
                );
            }
        }
        std::thread::sleep(Duration::from_secs(1));
        let while_stopped = total() - at_stop;
        let log_at = d.log_len();
        d.spawn().unwrap();
        let down_for = down_at.elapsed();
        let during = total() - at_stop;
        windows.push((how, down_for, while_stopped, during));
        // The restarted daemon adopted everything: nothing added, removed or changed.
        let log = d.log_since(log_at);
        assert!(log.contains("daemon running"), "{log}");
        assert_eq!(changes_in(&log), Vec::<&str>::new(), "{log}");
        assert_eq!(d.state_dump().unwrap(), before, "after {how}:\n{}", d.log());
        progress(&d, 20).unwrap();
        let log = d.log_since(log_at);
        assert_eq!(changes_in(&log), Vec::<&str>::new(), "{log}");
    }
    // The health records continue from the pinned counters.
    d.wait_for("checks resumed", Duration::from_secs(5), || {
        let now: u64 = health_checks(&d).iter().map(|(_, c)| c).sum();
        Ok((now > checks_before + 6).then_some(()))
    })
    .unwrap();
    let remaining = Duration::from_secs(6).saturating_sub(started.elapsed());
    std::thread::sleep(remaining);
    stop.store(true, Ordering::Relaxed);
    for th in threads {
        th.join().unwrap();
    }
    let elapsed = started.elapsed();
    for (how, down_for, while_stopped, during) in &windows {
        eprintln!(
            "{how}: daemon away {down_for:?}; {while_stopped} requests while stopped, {during} until the new one was ready"
        );
    }
    for (what, c) in [("keep-alive", &keep), ("new connection", &fresh)] {
        eprintln!(
            "{what}: {} requests ok, {} failed, {} connections in {elapsed:?}",
            c.ok(),
            c.failed.load(Ordering::Relaxed),
            c.connections.load(Ordering::Relaxed)
        );
        assert_eq!(
            c.failed.load(Ordering::Relaxed),
            0,
            "{what}: {:?}",
            c.errors.lock().unwrap()
        );
        assert!(c.ok() > 100, "{what}: only {} requests", c.ok());
    }
    for (_, _, while_stopped, _) in &windows {
        assert!(
            *while_stopped > 0,
            "no request while the daemon was stopped"
        );
    }
    assert_eq!(d.state_dump().unwrap(), before);
}

// ---- 3. Group membership ------------------------------------------------------------

fn group_addr() -> SocketAddr {
    SocketAddr::from((GATEWAY_SERVER_ADDR, GROUP_PORT))
}

/// `balancer members --json`: (rows, counters).
fn members(d: &Daemon) -> (Vec<Value>, Value) {
    let v = d.ctl_json(&["members"]).unwrap();
    (
        v["members"].as_array().cloned().unwrap_or_default(),
        v["counters"].clone(),
    )
}

fn row<'a>(rows: &'a [Value], name: &str, trusted: bool) -> Option<&'a Value> {
    rows.iter()
        .find(|m| m["name"] == name && m["trusted"] == trusted)
}

fn counter(counters: &Value, name: &str) -> u64 {
    counters[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}: {counters}"))
}

/// A host message as an agent would send it, stamped `timestamp_ms`.
fn host_message(name: &str, addr: [u8; 4], timestamp_ms: u64, seq: u64) -> HostMessage {
    HostMessage {
        name: name.into(),
        addr: addr.into(),
        interfaces: vec![InterfaceInfo {
            name: "eth0".into(),
            ip: addr.into(),
            prefix_len: 24,
        }],
        load: 0.5,
        timestamp_ms,
        seq,
        role: Role::Agent,
        server_id: None,
        secondary: None,
    }
}

/// Agents announce themselves with signed host messages; the daemon trusts those
/// signed with the group key only, learns their replication pairs, rejects replayed,
/// truncated, oversized, malformed, future and forged datagrams (each counted) without
/// ever trusting them, keeps its health-check schedule under a flood of junk, and marks
/// a member down once it is silent for member_timeout.
#[test]
fn group_membership_trusts_only_signed_fresh_messages() {
    let mut t = topology();
    let mut d = Daemon::new(&mut t).unwrap();
    let key_file = d.write_file("group.key", GROUP_KEY, 0o600).unwrap();
    let other_key_file = d.write_file("other.key", OTHER_KEY, 0o600).unwrap();
    let group = format!(
        "[group]\nkey_file = \"{}\"\nname = \"lb-test\"\nlisten = \"{}\"\ninterval = \"500ms\"\nmember_timeout = \"1.5s\"\npeers = [\"{}\"]\n",
        key_file.display(),
        group_addr(),
        group_addr()
    );
    let config = daemon_config(
        &t,
        &ConfigOptions {
            extra: group.clone(),
            ..ConfigOptions::default()
        },
    );
    d.write_config(&config).unwrap();
    d.spawn().unwrap();
    wait_healthy(&d, 3);

    // Port where the test captures what app-be1's agent sends (besides the balancer).
    const CAPTURE: &str = "127.0.0.1:7999";
    let bin = t.balancer_bin().to_string_lossy().to_string();
    let dir = d.dir.clone();
    let agent = |i: usize, key: &Path, name: &str, sid: &str, sec: &str, extra: &[&str]| {
        let mut cmd = t.backends[i].ns.command(&bin);
        cmd.arg("agent")
            .arg("--group-key")
            .arg(key)
            .args(["--send-to", &group_addr().to_string()])
            .args(["--name", name, "--server-id", sid, "--secondary", sec])
            .args(["--interval", "300ms"])
            .args(extra)
            .env("RUST_LOG", "info");
        Background::spawn(cmd, &dir.join(format!("{name}.log"))).unwrap()
    };
    let mut good = agent(
        0,
        &key_file,
        "app-be1",
        "be1",
        "be2",
        &["--send-to", CAPTURE],
    );
    let mut evil = agent(1, &other_key_file, "app-evil", "be2", "be3", &[]);

    let be1_addr = t.backends[0].addr.to_string();
    let m = d
        .wait_for("app-be1 trusted and up", Duration::from_secs(5), || {
            let (rows, _) = members(&d);
            Ok(row(&rows, "app-be1", true)
                .filter(|m| m["up"] == true)
                .cloned())
        })
        .unwrap();
    assert_eq!(m["role"], "agent", "{m}");
    assert_eq!(m["addr"], be1_addr.as_str(), "{m}");
    assert_eq!(
        (&m["server_id"], &m["secondary"]),
        (&Value::from("be1"), &Value::from("be2"))
    );
    let ifaces = m["interfaces"].as_array().unwrap();
    assert!(
        ifaces
            .iter()
            .any(|i| i["name"] == "eth0" && i["ip"] == be1_addr.as_str() && i["prefix_len"] == 24),
        "{m}"
    );
    d.wait_for("the balancer's own message", Duration::from_secs(5), || {
        let (rows, _) = members(&d);
        Ok(row(&rows, "lb-test", true)
            .filter(|m| m["role"] == "balancer" && m["up"] == true)
            .map(|_| ()))
    })
    .unwrap();
    let pair = wait_pair(&d, "be1", "be2", Duration::from_secs(5)).unwrap();
    assert_eq!(pair["source"], "agent", "{pair}");
    assert_eq!(pair["service"], "198.18.100.1:80/tcp", "{pair}");
    let evil_row = d
        .wait_for(
            "app-evil listed as untrusted",
            Duration::from_secs(5),
            || {
                let (rows, _) = members(&d);
                Ok(row(&rows, "app-evil", false).cloned())
            },
        )
        .unwrap();
    assert_eq!(evil_row["up"], false, "{evil_row}");
    assert!(evil.is_running(), "{}", evil.log());

    // Raw datagrams from backend 0's namespace: a genuine message captured from the
    // agent and replayed, and broken or forged ones.
    let key = GroupKey::from_file(&key_file).unwrap();
    let other = GroupKey::from_bytes(OTHER_KEY.as_bytes()).unwrap();
    let (_, c0) = members(&d);
    let target = group_addr();
    let (k, o) = (key.clone(), other.clone());
    let captured: Vec<u8> = t.backends[0]
        .ns
        .run(move || -> anyhow::Result<Vec<u8>> {
            let cap = UdpSocket::bind(CAPTURE)?;
            cap.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut buf = [0u8; 2048];
            let (n, _) = cap.recv_from(&mut buf)?;
            let first = buf[..n].to_vec();
            let msg = HostMessage::decode(&first, &k).expect("a genuine host message");
            assert_eq!(msg.name, "app-be1");
            // The next one: the balancer has accepted `first` (and likely this one) by now.
            cap.recv_from(&mut buf)?;
            let tx = UdpSocket::bind("0.0.0.0:0")?;
            let send = |d: &[u8]| tx.send_to(d, target).map(|_| ());
            send(&first)?; // replayed
            send(&first)?; // replayed
            send(&first[..20])?; // truncated
            let mut big = MAGIC.to_vec();
            big.resize(1500, b'x');
            send(&big)?; // oversized
            send(&[b'j'; 64])?; // malformed: no magic
            let now = unix_ms();
            let hour = 3_600_000;
            let future = host_message("future-probe", [198, 18, 1, 10], now + hour, now + hour);
            send(&future.encode(&k)?)?;
            let stale = host_message("stale-probe", [198, 18, 1, 10], now - hour, now);
            send(&stale.encode(&k)?)?;
            // Forged: app-be1 moved elsewhere, signed with another key.
            let forged = host_message("app-be1", [198, 18, 1, 99], now, u64::MAX - 1);
            send(&forged.encode(&o)?)?;
            Ok(first)
        })
        .unwrap()
        .unwrap();
    let delta = |c: &Value, name: &str| counter(c, name) - counter(&c0, name);
    let c1 = d
        .wait_for("every probe counted", Duration::from_secs(5), || {
            let (_, c) = members(&d);
            let done = delta(&c, "replayed") >= 2
                && delta(&c, "truncated") >= 1
                && delta(&c, "oversized") >= 1
                && delta(&c, "malformed") >= 1
                && delta(&c, "future") >= 1
                && delta(&c, "stale") >= 1;
            Ok(done.then_some(c))
        })
        .unwrap();
    eprintln!("after the probes: {c1}");
    assert!(delta(&c1, "bad_signature") >= 1, "{c1}");
    let (rows, _) = members(&d);
    for name in ["future-probe", "stale-probe"] {
        assert!(rows.iter().all(|m| m["name"] != name), "{name}: {rows:?}");
    }
    let trusted = row(&rows, "app-be1", true).expect("app-be1 still trusted");
    assert_eq!(
        trusted["addr"],
        be1_addr.as_str(),
        "a forged message moved it: {trusted}"
    );
    assert_eq!(trusted["up"], true, "{trusted}");
    let forged_row = row(&rows, "app-be1", false).expect("the forged message as an untrusted row");
    assert_eq!(forged_row["addr"], "198.18.1.99", "{forged_row}");

    // A flood of ~20k junk datagrams from backend 1's namespace: random bytes, messages
    // signed with another key under ever new names, future-dated and replayed genuine
    // ones. Sent in bursts of 1000 every 100 ms (2 s), while the health checks go on.
    let mut rng = Rng::new(1);
    let now = unix_ms();
    let flood: Vec<Vec<u8>> = (0..20_000u64)
        .map(|i| match i % 4 {
            0 => {
                let len = 1 + rng.below(1400);
                (0..len).map(|_| rng.next_u64() as u8).collect()
            }
            1 => host_message(&format!("flood-{i}"), [198, 18, 1, 11], now, i)
                .encode(&other)
                .unwrap(),
            2 => host_message("flood-future", [198, 18, 1, 11], now + 3_600_000, i)
                .encode(&key)
                .unwrap(),
            _ => captured.clone(),
        })
        .collect();
    let checks_before = health_checks(&d);
    let flood_started = Instant::now();
    let (burst_rate, sent) = t.backends[1]
        .ns
        .run(move || -> anyhow::Result<(f64, usize)> {
            let tx = UdpSocket::bind("0.0.0.0:0")?;
            let start = Instant::now();
            let mut burst_time = Duration::ZERO;
            let mut sent = 0;
            for (n, chunk) in flood.chunks(1000).enumerate() {
                let b = Instant::now();
                for dgram in chunk {
                    // A full socket buffer is the flood's problem, not the test's.
                    if tx.send_to(dgram, target).is_ok() {
                        sent += 1;
                    }
                }
                burst_time += b.elapsed();
                let next = start + Duration::from_millis(100) * (n as u32 + 1);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            Ok((sent as f64 / burst_time.as_secs_f64(), sent))
        })
        .unwrap()
        .unwrap();
    let flood_time = flood_started.elapsed();
    let checks_after = health_checks(&d);
    let window = flood_started.elapsed();
    assert!(d.is_running(), "{}", d.log());
    let (rows, c2) = members(&d);
    let handled: u64 = [
        "accepted",
        "oversized",
        "truncated",
        "malformed",
        "bad_signature",
        "stale",
        "future",
        "replayed",
        "invalid",
    ]
    .iter()
    .map(|n| counter(&c2, n) - counter(&c1, n))
    .sum();
    eprintln!(
        "flood: {sent} datagrams sent in {flood_time:?} (bursts at {burst_rate:.0}/s), {handled} seen by the daemon: {c2}"
    );
    assert!(handled > 1000, "{c2}");
    let expected = (window.as_millis() / HEALTH_INTERVAL.as_millis()) as u64;
    for ((ep, before), (_, after)) in checks_before.iter().zip(&checks_after) {
        eprintln!(
            "{ep}: {} checks during the {window:?} flood window (schedule: {expected})",
            after - before
        );
        assert!(
            after - before + 3 >= expected,
            "{ep}: {} checks in {window:?}, every {HEALTH_INTERVAL:?} expected",
            after - before
        );
    }
    for m in &rows {
        if m["trusted"] == true {
            assert!(
                ["app-be1", "lb-test"].contains(&m["name"].as_str().unwrap_or("")),
                "trusted: {m}"
            );
        }
    }
    let untrusted = rows.iter().filter(|m| m["trusted"] == false).count();
    assert!(untrusted <= 256, "{untrusted} untrusted rows");
    assert!(counter(&c2, "untrusted_evicted") > 0, "{c2}");

    // The agent dies: its member is down once unheard for member_timeout, its pair goes.
    // (The flood may have crowded out some of its messages: the helper waits for a
    // fresh one first.)
    kill_and_wait_down(&d, &mut good, "app-be1", 1.5);
    d.wait_for("agent pair gone", Duration::from_secs(2), || {
        let pairs = d.ctl_json(&["pairs"])?;
        Ok(pairs
            .as_array()
            .is_some_and(|a| a.iter().all(|p| p["source"] != "agent"))
            .then_some(()))
    })
    .unwrap();
    assert!(d.is_running());

    // A reload that changes group settings but not the listen address applies them (the
    // group socket is bound anew while the old one still holds the address).
    let changed = edit(
        &config,
        "member_timeout = \"1.5s\"",
        "member_timeout = \"2.5s\"",
    );
    d.write_config(&changed).unwrap();
    let out = d.ctl(&["reload"]).unwrap();
    assert!(out.status.success(), "{}\n{}", stderr(&out), d.log());
    let mut again = agent(0, &key_file, "app-be1", "be1", "be2", &[]);
    d.wait_for("app-be1 up again", Duration::from_secs(5), || {
        let (rows, _) = members(&d);
        Ok(row(&rows, "app-be1", true)
            .filter(|m| m["up"] == true)
            .map(|_| ()))
    })
    .unwrap();
    kill_and_wait_down(&d, &mut again, "app-be1", 2.5);
    assert!(evil.is_running(), "{}", evil.log());
}

/// Kills `agent`, announcing itself as `name`, and checks that its member goes down
/// once it has not been heard from for `member_timeout_s`, by the daemon's clock
/// (`last_seen_s`) and by ours.
fn kill_and_wait_down(d: &Daemon, agent: &mut Background, name: &str, member_timeout_s: f64) {
    let queried = Instant::now();
    let age_at_query = d
        .wait_for("member heard from lately", Duration::from_secs(5), || {
            let (rows, _) = members(d);
            Ok(row(&rows, name, true)
                .filter(|m| m["up"] == true)
                .and_then(|m| m["last_seen_s"].as_f64())
                .filter(|s| *s < 0.5))
        })
        .unwrap();
    agent.kill().unwrap();
    let killed = Instant::now();
    let age_at_kill = age_at_query + killed.duration_since(queried).as_secs_f64();
    let mut last_up_age = 0.0;
    let down_age = d
        .wait_for("member down", Duration::from_secs(10), || {
            let (rows, _) = members(d);
            let m = row(&rows, name, true).expect("the member's row").clone();
            let age = m["last_seen_s"].as_f64().unwrap();
            if m["up"] == true {
                last_up_age = age;
                return Ok(None);
            }
            Ok(Some(age))
        })
        .unwrap();
    let down_after = killed.elapsed();
    eprintln!(
        "{name} down {down_after:?} after its agent was killed (last heard {age_at_kill:.2} s before; member_timeout {member_timeout_s} s)"
    );
    // Up while heard from within member_timeout, down after: by the daemon's own clock.
    assert!(
        last_up_age <= member_timeout_s,
        "up after {last_up_age} s of silence"
    );
    assert!(
        down_age > member_timeout_s,
        "down after only {down_age} s of silence"
    );
    // And by ours: not before member_timeout counted from the last message.
    assert!(
        down_after.as_secs_f64() + age_at_kill >= member_timeout_s,
        "down {down_after:?} after the kill, last heard {age_at_kill} s before it"
    );
}

// ---- 4. Permissions -----------------------------------------------------------------

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// `program args` as user nobody.
fn as_nobody(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap()
}

/// Only root reaches the control socket and the pinned maps; the metrics endpoint is
/// read-only and on loopback.
#[test]
fn control_socket_pins_and_metrics_are_restricted() {
    let mut t = topology();
    let config = daemon_config(&t, &ConfigOptions::default());
    let d = Daemon::start(&mut t, &config).expect("starting the daemon");
    wait_healthy(&d, 3);

    let socket = d.control_socket();
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket(), "{}", socket.display());
    assert_eq!(mode(&socket), 0o600, "{}", socket.display());
    assert_eq!(mode(&d.run_dir()), 0o700, "{}", d.run_dir().display());
    let pin_dir = t.pin_dir();
    for dir in [pin_dir.as_path(), pin_dir.parent().unwrap()] {
        assert_eq!(
            mode(dir) & 0o077,
            0,
            "{} is mode {:o}",
            dir.display(),
            mode(dir)
        );
    }
    let mut pins = 0;
    for e in std::fs::read_dir(&pin_dir).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(
            mode(&p) & 0o077,
            0,
            "{} is mode {:o}",
            p.display(),
            mode(&p)
        );
        pins += 1;
    }
    assert!(pins > 10, "{pins} pins");

    // Others cannot use them.
    let bin = t.balancer_bin().to_path_buf();
    let run_dir = d.run_dir().display().to_string();
    let out = as_nobody(
        &bin,
        &["--instance", t.instance(), "--run-dir", &run_dir, "reload"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is root-only: run as root"),
        "{}",
        stderr(&out)
    );
    let out = as_nobody(&bin, &["--instance", t.instance(), "backend", "list"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("must run as root"),
        "{}",
        stderr(&out)
    );
    for dir in [&pin_dir, &d.run_dir()] {
        let out = as_nobody(Path::new("/bin/ls"), &[&dir.display().to_string()]);
        assert!(!out.status.success(), "nobody lists {}", dir.display());
    }
    let pin = pin_dir.join("BALANCER_BACKENDS");
    let out = as_nobody(Path::new("/bin/cat"), &[&pin.display().to_string()]);
    assert!(!out.status.success(), "nobody reads {}", pin.display());

    // Metrics: GET answers, anything that could change something is refused.
    let text = metrics(&t);
    assert!(text.contains("balancer_backend_up{"), "{text}");
    let addr: SocketAddr = "127.0.0.1:9469".parse().unwrap();
    let (post, put, head) = t
        .gateway
        .run(move || -> anyhow::Result<_> {
            let post = http::post(addr, "/metrics", b"x=1")?;
            let put = http::Conn::connect(addr)?.request(
                "PUT",
                "/metrics",
                &[("Connection", "close")],
                b"",
            )?;
            let head = http::Conn::connect(addr)?.request(
                "HEAD",
                "/metrics",
                &[("Connection", "close")],
                b"",
            )?;
            Ok((post, put, head))
        })
        .unwrap()
        .unwrap();
    for r in [&post, &put] {
        assert_eq!(r.status, 405, "{}", r.text());
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    }
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    // Loopback only: not on the gateway's other addresses, nor from the client.
    let gw_side: SocketAddr = SocketAddr::from((GATEWAY_SERVER_ADDR, 9469));
    let refused = t
        .gateway
        .run(move || {
            std::net::TcpStream::connect_timeout(&gw_side, Duration::from_secs(1)).is_err()
        })
        .unwrap();
    assert!(refused, "metrics answer on {gw_side}");
    let from_client: SocketAddr = "198.18.0.1:9469".parse().unwrap();
    let refused = t
        .client
        .run(move || {
            std::net::TcpStream::connect_timeout(&from_client, Duration::from_secs(1)).is_err()
        })
        .unwrap();
    assert!(refused, "metrics answer the client on {from_client}");
}

// ---- 5. The CLI without a daemon ----------------------------------------------------

/// Asserts that a daemon command fails, clearly, because no daemon answers.
fn assert_no_daemon(d: &Daemon, args: &[&str]) {
    let out = d.ctl(args).unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("no balancer daemon answers"),
        "{args:?}: {err}"
    );
}

/// With the daemon stopped, the CLI still shows the last health from the pinned HEALTH
/// map, the data plane still forwards, and the daemon's own commands say clearly that
/// no daemon answers (socket removed, or left behind by a killed daemon).
#[test]
fn cli_works_from_pinned_state_while_the_daemon_is_stopped() {
    let mut t = topology();
    let config = daemon_config(&t, &ConfigOptions::default());
    let mut d = Daemon::start(&mut t, &config).expect("starting the daemon");
    wait_healthy(&d, 3);
    d.wait_for("a few checks", Duration::from_secs(5), || {
        Ok(health_checks(&d).iter().all(|(_, c)| *c >= 3).then_some(()))
    })
    .unwrap();
    let running = d.state_dump().unwrap();

    for how in ["SIGTERM", "SIGKILL"] {
        match how {
            "SIGTERM" => d.stop().unwrap(),
            _ => d.kill().unwrap(),
        }
        assert_eq!(d.control_socket().exists(), how == "SIGKILL");
        let frozen = health_checks(&d);
        let list = d.backends().unwrap();
        assert_eq!(list.len(), 3);
        for b in &list {
            assert_eq!(b["health"]["health"], "up", "{b}");
            assert!(b["health"]["checks"].as_u64().unwrap() >= 3, "{b}");
        }
        let stats = d.ctl_json(&["stats"]).unwrap();
        let backends = stats["backends"].as_array().unwrap();
        assert_eq!(backends.len(), 3, "{stats}");
        for b in backends {
            assert_eq!(b["health"]["health"], "up", "{b}");
        }
        assert_eq!(d.state_dump().unwrap(), running, "after {how}");
        for args in [
            &["reload"][..],
            &["members"],
            &["pairs"],
            &["members", "--json"],
        ] {
            assert_no_daemon(&d, args);
        }
        // Forwarding goes on; nobody checks: the records stay as they were.
        let r = t.client.run(|| http::get(vip(), "/")).unwrap().unwrap();
        assert_eq!(r.status, 200);
        std::thread::sleep(HEALTH_INTERVAL * 3);
        assert_eq!(health_checks(&d), frozen, "checks while no daemon runs");
        // A new daemon replaces a stale socket and resumes the checks.
        d.spawn().unwrap();
        d.wait_for("checks resumed", Duration::from_secs(5), || {
            let now = health_checks(&d);
            Ok(now
                .iter()
                .zip(&frozen)
                .all(|((_, a), (_, b))| a > b)
                .then_some(()))
        })
        .unwrap();
        assert_eq!(d.state_dump().unwrap(), running);
    }
}

//! Restarting the daemon under load fails no request.

use super::*;

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

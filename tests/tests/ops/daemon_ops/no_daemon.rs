//! The CLI works from the pinned state while no daemon runs.

use super::*;

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

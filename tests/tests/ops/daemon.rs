//! End-to-end tests of `balancer daemon`: configuration, health checks, the failover
//! rewrite with replicated app servers, reloads, restarts, group membership and metrics,
//! on the netns topology with the real data plane.
//!
//! Needs root and a built `balancer` binary (see `wire/netns.rs`).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use balancer_tests::{
    daemon::{backend_entry, daemon_config, ConfigOptions, Daemon},
    harness::root::assert_root,
    load::{metric_value, metrics},
    session::{try_request, Answer, SessionCookie},
    topology::{vip, Topology},
};
use serde_json::Value;

use crate::TESTSRV;

/// Two-arm topology with three replicated app servers and a daemon running `o`, its
/// backends healthy.
pub(crate) fn setup(o: &ConfigOptions) -> (Topology, Daemon) {
    assert_root();
    let mut t = Topology::two_arm(3).expect("building the topology");
    t.start_session_servers(Path::new(TESTSRV))
        .expect("starting app servers");
    let config = daemon_config(&t, o);
    let d = Daemon::start(&mut t, &config).expect("starting the daemon");
    wait_health(&d, |h| h == "up", 3);
    (t, d)
}

/// Waits until `n` backends have a health that `ok` accepts.
fn wait_health(d: &Daemon, ok: impl Fn(&str) -> bool, n: usize) {
    d.wait_for("backends healthy", Duration::from_secs(10), || {
        let list = d.backends()?;
        let good = list
            .iter()
            .filter(|b| b["health"]["health"].as_str().is_some_and(&ok))
            .count();
        Ok((good >= n).then_some(()))
    })
    .unwrap();
}

/// One session request through the VIP from the client namespace.
fn via_vip(t: &Topology, cookie: Option<&SessionCookie>) -> anyhow::Result<Answer> {
    let cookie = cookie.cloned();
    t.client
        .run(move || try_request(vip(), cookie.as_ref(), None))?
}

/// Sessions pinned to their primaries; one primary's server dies; the daemon marks it
/// down, learns (from the cookies in traffic) which server holds its sessions, rewrites
/// them there, and every session continues with its counter; after the server returns
/// and the hold-down passes, the rewrite goes.
#[test]
fn failover_rewrite_sends_a_dead_primarys_sessions_to_its_secondary() {
    let (mut t, d) = setup(&ConfigOptions::default());
    // 30 sessions, 3 requests each, each on a fresh connection (a fresh binding).
    let mut sessions: Vec<(SessionCookie, u64)> = Vec::new();
    for _ in 0..30 {
        let a = via_vip(&t, None).unwrap();
        assert_eq!(a.status, 200);
        sessions.push((a.cookie().clone(), a.counter()));
    }
    for _ in 0..2 {
        for (cookie, counter) in sessions.iter_mut() {
            let a = via_vip(&t, Some(cookie)).unwrap();
            assert_eq!(a.backend, cookie.primary, "pinned to the primary: {a:?}");
            assert_eq!(a.counter(), *counter + 1);
            *counter = a.counter();
            *cookie = a.cookie().clone();
        }
    }
    // The victim: the primary of the first session; its secondary takes over.
    let victim = sessions[0].0.primary.clone();
    let secondary = sessions[0].0.secondary.clone().expect("a secondary");
    let victim_i = t.backend_index(&victim).unwrap();
    let victim_ep = t.backends[victim_i].endpoint();
    let secondary_ep = t.backends[t.backend_index(&secondary).unwrap()].endpoint();
    // The data plane reported the pairs it saw (pair_sample = 1).
    let pairs = d.ctl_json(&["pairs"]).unwrap();
    assert!(
        pairs
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["primary"] == victim.as_str()
                && p["secondary"] == secondary.as_str()
                && p["source"] == "traffic"),
        "{pairs}"
    );

    t.stop_server(victim_i).unwrap();
    let killed = Instant::now();
    // Retry the victim's first session until its secondary serves it.
    let (first_served, a) = loop {
        if let Ok(a) = via_vip(&t, Some(&sessions[0].0)) {
            break (killed.elapsed(), a);
        }
        assert!(killed.elapsed() < Duration::from_secs(10), "{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("failover: first request served by the secondary {first_served:?} after the kill");
    assert_eq!(a.backend, secondary, "{a:?}");
    assert_eq!(a.event(), "takeover");
    assert_eq!(a.counter(), sessions[0].1 + 1, "no lost or repeated update");
    sessions[0] = (a.cookie().clone(), a.counter());

    // Every session continues where it was.
    for (cookie, counter) in sessions.iter_mut() {
        let a = via_vip(&t, Some(cookie)).unwrap();
        assert!(
            !a.lost,
            "{cookie}: {a:?}\npairs {}\nlog:\n{}",
            d.ctl_json(&["pairs"]).unwrap(),
            d.log()
        );
        assert_eq!(a.counter(), *counter + 1, "{a:?}");
        assert_ne!(a.backend, victim);
        *counter = a.counter();
        *cookie = a.cookie().clone();
    }
    let list = d.backends().unwrap();
    let entry = backend_entry(&list, &victim_ep).unwrap();
    assert_eq!(entry["state"], "down", "{entry}");
    assert_eq!(entry["health"]["health"], "down", "{entry}");
    assert_eq!(entry["failover_to"], secondary_ep.as_str(), "{entry}");
    let text = metrics(&t).unwrap();
    assert_eq!(
        metric_value(&text, "balancer_failover_rewrites_total"),
        Some(1.0)
    );
    crate::dashboard::assert_queries_exported(&text);
    assert!(
        text.contains(&format!(
            "balancer_backend_up{{service=\"198.18.100.1:80/tcp\",backend=\"{victim_ep}\""
        )),
        "{text}"
    );
    assert!(d.log().contains("failover rewrite"), "{}", d.log());

    // The server comes back: up after rise checks + the hold-down, rewrite removed.
    t.start_server(victim_i, Path::new(TESTSRV)).unwrap();
    let back = Instant::now();
    d.wait_for("rewrite removed", Duration::from_secs(10), || {
        let list = d.backends()?;
        let e = backend_entry(&list, &victim_ep)
            .cloned()
            .unwrap_or(Value::Null);
        Ok((e["state"] == "up" && e.get("failover_to").is_none()).then_some(()))
    })
    .unwrap();
    assert!(
        back.elapsed() >= Duration::from_secs(2),
        "removed after {:?}, before the 2 s hold-down",
        back.elapsed()
    );
    assert_eq!(
        metric_value(&metrics(&t).unwrap(), "balancer_failover_restores_total"),
        Some(1.0)
    );
}

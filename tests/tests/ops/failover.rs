//! Failover under load, end to end: 50 clients each update their own session through the
//! VIP while the app server holding the most sessions as primary is killed; the daemon
//! notices, rewrites that primary's sessions to its secondary (learned from the cookies
//! in traffic), and every session continues with no lost or repeated update.
//!
//! Clients retry a failed request through the VIP with its request id, each attempt
//! bounded to 1 s (`LoadOptions`): the app servers apply a request id once, so a retry
//! of an update the dead primary had replicated is not counted twice. The test prints
//! the failover time (kill -> first request of one of the dead primary's sessions served
//! by its secondary) and the daemon's own steps, read from its log.
//!
//! Needs root and a built `balancer` binary (see `wire/netns.rs`).

use std::{
    path::Path,
    thread,
    time::{Duration, Instant, SystemTime},
};

use balancer_tests::{
    daemon::{backend_entry, daemon_config, ConfigOptions, Daemon},
    harness::root::assert_root,
    load::{
        busiest_primary, check_sessions, check_takeovers, daemon_times, failover_time,
        metric_value, metrics, primaries_at, sessions_of, totals, wait_healthy, wait_pair, Load,
        LoadOptions,
    },
    topology::{vip, Topology},
};

use crate::TESTSRV;
const CLIENTS: usize = 50;
const BEFORE_KILL: Duration = Duration::from_millis(1500);
const AFTER_KILL: Duration = Duration::from_secs(3);

/// The problems as one message (with the daemon's log), or nothing.
fn report(what: &str, problems: &[String], t: &Topology, d: &Daemon) -> Option<String> {
    if problems.is_empty() {
        return None;
    }
    let stats = t
        .balancer_output(&["stats"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let shown: Vec<&String> = problems.iter().take(20).collect();
    Some(format!(
        "{what}: {} problems, first ones:\n  {}\nbalancer stats:\n{stats}\ndaemon log:\n{}",
        problems.len(),
        shown
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  "),
        d.log()
    ))
}

#[test]
fn kill_a_primary_under_load_every_session_continues_on_its_secondary() {
    assert_root();
    let mut t = Topology::two_arm(3).expect("building the topology");
    t.start_session_servers(Path::new(TESTSRV))
        .expect("starting app servers");
    let config = daemon_config(&t, &ConfigOptions::default());
    let d = Daemon::start(&mut t, &config).expect("starting the daemon");
    wait_healthy(&d, 3, Duration::from_secs(10)).unwrap();

    let opts = LoadOptions {
        clients: CLIENTS,
        ..LoadOptions::default()
    };
    let load = Load::start(&t.client, vip(), &opts).expect("starting the clients");
    thread::sleep(BEFORE_KILL);
    let (victim, secondary) = match busiest_primary(&load.live()) {
        Some((v, Some(s))) => (v, s),
        other => panic!("no primary with a secondary after {BEFORE_KILL:?}: {other:?}"),
    };
    // The daemon learned the pair from the cookies in traffic (pair_sample = 1).
    wait_pair(&d, &victim, &secondary, Duration::from_secs(5)).unwrap();
    let victim_i = t.backend_index(&victim).unwrap();
    let victim_ep = t.backends[victim_i].endpoint();
    let secondary_ep = t.backends[t.backend_index(&secondary).unwrap()].endpoint();
    let before_kill = load.answered();

    let (kill, kill_wall) = (Instant::now(), SystemTime::now());
    t.stop_server(victim_i).expect("killing the victim");
    thread::sleep(AFTER_KILL);
    let logs = load.stop();

    let n = totals(&logs);
    let by_primary = primaries_at(&logs, kill);
    let victims = sessions_of(&logs, &victim, kill);
    let failover = failover_time(&logs, &victim, kill);
    eprintln!(
        "failover: killed {victim} (secondary {secondary}) after {BEFORE_KILL:?} of load; \
         sessions per primary at the kill {by_primary:?}"
    );
    eprintln!(
        "failover: {} requests answered ({before_kill} before the kill, {} after), {} failed \
         attempts retried ({} of them timed out after {:?}), {CLIENTS} clients, {} sessions of \
         {victim}",
        n.answered,
        n.answered as u64 - before_kill,
        n.failed,
        n.timed_out,
        opts.attempt_timeout,
        victims.len()
    );
    let ms = |d: Option<Duration>| {
        d.map_or("-".to_string(), |d| {
            format!("{:.0} ms", d.as_secs_f64() * 1e3)
        })
    };
    let times = daemon_times(&d.log(), &victim_ep, kill_wall);
    let since = |t: Option<SystemTime>| t.and_then(|t| t.duration_since(kill_wall).ok());
    eprintln!(
        "failover: kill -> daemon notes {victim} down {}, -> rewrite logged {}, -> first \
         request served by the secondary {}",
        ms(since(times.down)),
        ms(since(times.rewrite)),
        ms(failover)
    );

    if let Some(msg) = report("session continuity", &check_sessions(&logs), &t, &d) {
        panic!("{msg}");
    }
    assert!(!victims.is_empty(), "{victim} held no session at the kill");
    if let Some(msg) = report(
        "takeover by the secondary",
        &check_takeovers(&logs, &victim, kill),
        &t,
        &d,
    ) {
        panic!("{msg}");
    }
    let failover = failover.expect("a request served by the secondary");
    assert!(
        failover < AFTER_KILL,
        "failover took {failover:?}; daemon log:\n{}",
        d.log()
    );
    // Every client kept working after the kill: each has answers after it.
    for l in &logs {
        assert!(
            l.answers.iter().any(|a| a.at > kill + failover),
            "client {} has no answer after the failover",
            l.client
        );
    }

    // The daemon's view: the victim down, its sessions rewritten to the secondary, one
    // rewrite in all.
    let list = d.backends().unwrap();
    let entry = backend_entry(&list, &victim_ep).unwrap();
    assert_eq!(entry["state"], "down", "{entry}");
    assert_eq!(entry["health"]["health"], "down", "{entry}");
    assert_eq!(entry["failover_to"], secondary_ep.as_str(), "{entry}");
    for b in &t.backends {
        if b.name != victim {
            let e = backend_entry(&list, &b.endpoint()).unwrap();
            assert_eq!(e["state"], "up", "{e}");
            assert!(e.get("failover_to").is_none(), "{e}");
        }
    }
    let text = metrics(&t).unwrap();
    assert_eq!(
        metric_value(&text, "balancer_failover_rewrites_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "balancer_failover_restores_total"),
        Some(0.0)
    );
}

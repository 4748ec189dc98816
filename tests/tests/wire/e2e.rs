//! The benchmark's end-to-end comparison, briefly, as a correctness check (not a speed
//! check): our balancer in cookie mode and in plain NAT mode, HAProxy routing on the same
//! cookie, nftables DNAT and SYNPROXY, and going direct, each for a second or two in both
//! modes (keep-alive, a new connection per request) on one netns topology with nginx
//! backends and wrk as the client (`balancer_tests::e2e`). Every cookie-routed request
//! must land on the backend the cookie names, and the plain ones must spread over every
//! backend (the backends' own request counters), wrk must see no errors, and every parsed
//! figure must be positive. A second test runs the failover measurement with HAProxy in
//! front.
//!
//! Needs root, a built `balancer` binary, and wrk, haproxy, nginx, nft and bpftool
//! (installed by `cargo xtask setup`).

use std::{path::PathBuf, time::Duration};

use balancer_tests::{
    e2e::{run_end_to_end, E2eOptions, Mode, Setup, SETUPS},
    harness::root::assert_root,
    load::{measure_failover_with, FailoverOptions, Front, LoadOptions},
    topology,
};
use balancer_user::daemon::config::HealthConfig;

use crate::TESTSRV;

#[test]
fn every_setup_serves_every_request_from_the_backend_the_cookie_names() {
    assert_root();
    let _g = topology::machine_exclusive();
    let balancer = topology::balancer_bin().unwrap();
    let o = E2eOptions {
        duration: Duration::from_secs(2),
        connections: 16,
        threads: 2,
        compare_testsrv: false,
        ..E2eOptions::quick(PathBuf::from(TESTSRV), balancer)
    };
    let r = run_end_to_end(&o, &|line| eprintln!("{line}")).expect("the end-to-end run");
    balancer_tests::e2e::print_table(&r);
    assert!(
        r.problems.is_empty(),
        "problems:\n  {}",
        r.problems.join("\n  ")
    );
    // Every setup but direct_testsrv, which this run leaves out (`compare_testsrv`).
    for setup in SETUPS.into_iter().filter(|s| *s != Setup::DirectTestsrv) {
        for mode in [Mode::KeepAlive, Mode::NewConnection] {
            let c = r
                .cell(setup, mode)
                .unwrap_or_else(|| panic!("no cell {setup:?} {mode:?}"));
            let what = format!("{} {}", setup.name(), mode.name());
            assert_eq!(c.errors, 0, "{what}");
            for (name, v) in [
                ("requests/s", c.requests_per_s),
                ("p50", c.p50_ms),
                ("p99", c.p99_ms),
                ("busy CPU", c.busy_ms_per_1k),
            ] {
                assert!(v > 0.0 && v.is_finite(), "{what}: {name} = {v}");
            }
            assert!(
                c.p50_ms <= c.p99_ms,
                "{what}: p50 {} > p99 {}",
                c.p50_ms,
                c.p99_ms
            );
            let conns = c.backend_connections_per_request.expect("counted");
            match (setup, mode) {
                // wrk really opens a connection per request, and the backend sees each
                // (ours, nftables and direct pass the client's connections through).
                (
                    Setup::Balancer
                    | Setup::BalancerNat
                    | Setup::NftablesDnat
                    | Setup::NftablesSynproxy
                    | Setup::Direct,
                    Mode::NewConnection,
                ) => assert!(
                    (0.95..=1.05).contains(&conns),
                    "{what}: {conns} backend connections per request"
                ),
                (_, Mode::KeepAlive) => assert!(
                    conns < 0.01,
                    "{what}: {conns} backend connections per request with keep-alive"
                ),
                // HAProxy reuses its server-side connections.
                _ => {}
            }
            if setup.is_nftables() {
                // The kernel's work beyond direct's, from tick-sampled totals of runs of a
                // second or two: present, but its sign is not reliable here.
                assert!(c.gateway_cpu_ms_per_1k.is_finite(), "{what}");
                assert!(c.kernel_vs_direct_ms_per_1k.is_some(), "{what}");
            } else if setup != Setup::Direct {
                assert!(c.gateway_cpu_ms_per_1k > 0.0, "{what}: no gateway CPU");
            } else {
                assert_eq!(c.gateway_cpu_ms_per_1k, 0.0, "{what}");
            }
            if setup.spreads() {
                assert!(
                    c.problems.is_empty() && c.requests > 0,
                    "{what}: {:?}",
                    c.problems
                );
            }
        }
    }
    // The report names what ran.
    assert!(r.method.haproxy_config.contains("field(2,!)"));
    assert!(r.method.wrk["new_connection"].contains("Connection: close"));
    assert!(r.method.nftables_dnat_rules.contains("numgen random"));
    assert!(r.method.nftables_synproxy_rules.contains("synproxy"));
    assert!(!r
        .method
        .balancer_nat_commands
        .join(" ")
        .contains("--cookie"));
    for m in ["keep_alive", "new_connection"] {
        let x = &r.ratios[m];
        assert!(x.rps_balancer_over_haproxy.is_some_and(|v| v > 0.0), "{m}");
        assert!(x.rps_balancer_over_direct.is_some_and(|v| v > 0.0), "{m}");
        assert!(
            x.cpu_own_balancer_over_haproxy.is_some_and(|v| v > 0.0),
            "{m}"
        );
        assert!(
            x.rps_balancer_nat_over_nftables_dnat
                .is_some_and(|v| v > 0.0),
            "{m}"
        );
        assert!(
            x.rps_balancer_over_nftables_synproxy
                .is_some_and(|v| v > 0.0),
            "{m}"
        );
    }
    serde_json::to_string(&r).expect("the report serializes");
}

#[test]
fn haproxy_failover_moves_a_dead_primarys_sessions_to_their_secondary() {
    assert_root();
    let _g = topology::machine_exclusive();
    let balancer = topology::balancer_bin().unwrap();
    let health = HealthConfig::default();
    let o = FailoverOptions {
        load: LoadOptions {
            clients: 20,
            ..LoadOptions::default()
        },
        before: Duration::from_millis(1000),
        jitter: health.interval,
        ..FailoverOptions::default()
    };
    let r = measure_failover_with(
        &Front::Haproxy {
            health: health.clone(),
        },
        &balancer,
        TESTSRV.as_ref(),
        &o,
    )
    .expect("the failover run");
    eprintln!(
        "haproxy failover: killed {} ({} sessions), DOWN after {:?}, first served by {} after {:?}; {:?}",
        r.victim, r.victim_sessions, r.down, r.secondary, r.failover, r.totals
    );
    assert_eq!(r.front, "haproxy");
    assert!(
        r.front_config
            .contains(&format!("inter {}", health.interval.as_millis())),
        "{}",
        r.front_config
    );
    assert!(r.victim_sessions > 0);
    assert!(
        r.problems.is_empty(),
        "session problems:\n  {}",
        r.problems.join("\n  ")
    );
    // Detection takes at least `fall` failed checks after the kill, at most fall + 1
    // intervals plus the timeout; the first request served by the secondary comes after it.
    let down = r.down.expect("HAProxy reported the server DOWN");
    assert!(
        down <= r.failover + Duration::from_millis(50),
        "{down:?} {:?}",
        r.failover
    );
    assert!(r.failover < Duration::from_secs(3), "{:?}", r.failover);
}

/// The benchmark's quick end-to-end part, for a look by hand (`--ignored`): prints the
/// table, and the report as JSON to `$E2E_JSON` if set.
#[test]
#[ignore]
fn quick_report() {
    assert_root();
    let _g = topology::machine_exclusive();
    let o = E2eOptions::quick(PathBuf::from(TESTSRV), topology::balancer_bin().unwrap());
    let r = run_end_to_end(&o, &|line| eprintln!("{line}")).unwrap();
    balancer_tests::e2e::print_table(&r);
    if let Some(path) = std::env::var_os("E2E_JSON") {
        std::fs::write(path, serde_json::to_string_pretty(&r).unwrap()).unwrap();
    }
}

/// Failover time, ours (daemon defaults) and HAProxy (the same health settings), a few
/// runs each (`--ignored`; `$FAILOVER_RUNS`, default 3).
#[test]
#[ignore]
fn compare_failover() {
    use balancer_tests::load::{measure_failover, minimal_config};
    assert_root();
    let _g = topology::machine_exclusive();
    let balancer = topology::balancer_bin().unwrap();
    let runs: usize = std::env::var("FAILOVER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let health = HealthConfig::default();
    let o = FailoverOptions {
        jitter: health.interval,
        ..FailoverOptions::default()
    };
    for i in 0..runs {
        let config = |t: &topology::Topology| minimal_config(t, None);
        let ours = measure_failover(&balancer, TESTSRV.as_ref(), &config, &o).unwrap();
        let h = measure_failover_with(
            &Front::Haproxy {
                health: health.clone(),
            },
            &balancer,
            TESTSRV.as_ref(),
            &o,
        )
        .unwrap();
        for r in [&ours, &h] {
            eprintln!(
                "run {i}: {:<16} failover {:>6.1} ms, down {:?}, rewrite {:?}, {} sessions, {:?}, {} problems",
                r.front,
                r.failover.as_secs_f64() * 1e3,
                r.down,
                r.rewrite,
                r.victim_sessions,
                r.totals,
                r.problems.len()
            );
        }
    }
}

//! End-to-end tests of operating `balancer daemon`: reloads of bad and good
//! configurations, restarts under load, group membership with signed host messages
//! (and unsigned, replayed, malformed ones), permissions of what it exposes, and the CLI
//! while no daemon runs. Each test builds its own netns topology; guards remove
//! everything (namespaces, pins, processes, files), also when a test panics.
//!
//! Needs root and a built `balancer` binary (`cargo build --release -p balancer-user`).

mod group;
mod no_daemon;
mod permissions;
mod reload;
mod restart;

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
    daemon::{
        backend_entry, colliding_tokens, daemon_config, edit, Background, ConfigOptions, Daemon,
    },
    harness::root::assert_root,
    http,
    load::{metrics, wait_pair},
    netns::stderr,
    rng::Rng,
    topology::{vip, Topology, GATEWAY_SERVER_ADDR},
};
use balancer_user::daemon::group::{unix_ms, GroupKey, HostMessage, InterfaceInfo, Role, MAGIC};
use serde_json::Value;

use crate::TESTSRV;
/// The daemon re-plans every 250 ms without an event.
const DAEMON_TICK: Duration = Duration::from_millis(250);
/// Health-check interval of every configuration here ([`ConfigOptions::default`]).
const HEALTH_INTERVAL: Duration = Duration::from_millis(200);
const GROUP_PORT: u16 = 7946;
const GROUP_KEY: &str = "daemon-ops-test-group-key-0123456789abcdef";
const OTHER_KEY: &str = "a-different-key-that-is-not-the-group-key-xyz";

/// Two-arm topology with three plain test servers.
fn topology() -> Topology {
    assert_root();
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

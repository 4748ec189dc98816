//! End-to-end HTTP load on the two-arm netns topology: our balancer in cookie mode,
//! HAProxy routing on the same cookie segment, and going direct to the backend through
//! the gateway's kernel (no balancer), with the same backends and the same load
//! generator (`wrk`), one after another on one topology instance.
//!
//! Per setup, two modes: keep-alive, and a new connection per request (`Connection:
//! close`, which the backend honours by closing after the response; wrk then reconnects).
//! Each cell reports wrk's requests/s, p50 and p99 latency and errors, and CPU figures:
//! system-wide `/proc/stat` deltas (softirq, system, user), the gateway's own work (for
//! ours the XDP/TC programs' run time from BPF run-time statistics, for HAProxy its process
//! time) and the softirq time beyond the direct cell's at the same request count.
//!
//! Every cell also checks where the requests went: each backend's nginx `stub_status`
//! request counter is read before and after, and the backend the cookie names must have
//! answered at least as many requests as wrk counted while every other backend answered
//! none ([`Cell::problems`]).
//!
//! The backends run nginx (Debian's package) answering every request with its own name
//! (`X-Backend` header and body), not `balancer-testsrv`: on this machine the test server
//! (a thread per connection) costs more CPU per request than nginx, and client, gateway and
//! backends share the same CPUs. [`E2eOptions::compare_testsrv`] adds direct cells against
//! `balancer-testsrv` so every report shows the difference.

mod bed;
mod cpu;
mod nginx;
mod report;
mod run;
#[cfg(test)]
mod tests;
mod wrk;
use bed::*;
pub use cpu::*;
pub use nginx::*;
pub use report::*;
pub use run::*;
pub use wrk::*;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::{
    haproxy::{self, Haproxy, HaproxyConfig},
    http, netns,
    topology::{self, service_arg, vip, Arms, Topology, BACKEND_PORT},
};

/// Port of the `balancer-testsrv` comparison server on backend 0.
pub const TESTSRV_PORT: u16 = 8081;
/// The session cookie every request carries: backend be1 primary, be2 secondary.
pub const COOKIE: &str = "JSESSIONID=e2e0000000000001!be1!be2";
/// The backend that cookie names (index into the topology's backends).
const TARGET: usize = 0;
/// nginx's status page on every backend.
const STATUS_PATH: &str = "/_nginx_status";

/// What [`run_end_to_end`] runs.
#[derive(Clone, Debug)]
pub struct E2eOptions {
    /// Length of one wrk run (one cell); wrk takes whole seconds (rounded up).
    pub duration: Duration,
    /// wrk connections (`-c`).
    pub connections: usize,
    /// wrk threads (`-t`).
    pub threads: usize,
    /// Rounds: each round runs every setup and mode once (setups one after another).
    pub runs: usize,
    /// Backends in the topology (requests all go to be1; the others are there for the
    /// balancers' configuration and to show that nothing reaches them).
    pub backends: usize,
    /// `balancer-testsrv` (for the comparison cells).
    pub testsrv: PathBuf,
    /// `balancer`.
    pub balancer: PathBuf,
    /// Also run direct cells against `balancer-testsrv` on backend 0 (port
    /// [`TESTSRV_PORT`]), to show what the choice of backend server does.
    pub compare_testsrv: bool,
    /// wrk's `--timeout`.
    pub wrk_timeout: Duration,
}

impl E2eOptions {
    fn with(testsrv: PathBuf, balancer: PathBuf, duration: Duration, runs: usize) -> Self {
        E2eOptions {
            duration,
            connections: 64,
            threads: haproxy::cpus(),
            runs,
            backends: 3,
            testsrv,
            balancer,
            compare_testsrv: true,
            wrk_timeout: Duration::from_secs(2),
        }
    }

    /// For CI: 3 s cells, one round (about 40 s of load, a minute with setup).
    pub fn quick(testsrv: PathBuf, balancer: PathBuf) -> Self {
        Self::with(testsrv, balancer, Duration::from_secs(3), 1)
    }

    /// 10 s cells, three rounds (about 4 minutes).
    pub fn full(testsrv: PathBuf, balancer: PathBuf) -> Self {
        Self::with(testsrv, balancer, Duration::from_secs(10), 3)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Setup {
    /// Our balancer, cookie mode, XDP attached to the gateway's interfaces.
    Balancer,
    /// HAProxy in the gateway namespace, routing on the cookie.
    Haproxy,
    /// The client talks to the backend's own address, routed by the gateway's kernel.
    Direct,
    /// As direct, to `balancer-testsrv` instead of nginx (comparison only).
    DirectTestsrv,
}

impl Setup {
    pub fn name(self) -> &'static str {
        match self {
            Setup::Balancer => "balancer",
            Setup::Haproxy => "haproxy",
            Setup::Direct => "direct",
            Setup::DirectTestsrv => "direct_testsrv",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    KeepAlive,
    NewConnection,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::KeepAlive => "keep_alive",
            Mode::NewConnection => "new_connection",
        }
    }
}

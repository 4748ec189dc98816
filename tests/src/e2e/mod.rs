//! End-to-end HTTP load on the two-arm netns topology: our balancer in cookie mode and in
//! plain NAT mode, HAProxy routing on the same cookie segment, nftables (the kernel's own
//! L4 balancing) as DNAT over the backends and as SYNPROXY in front of that DNAT, and
//! going direct to the backend through the gateway's kernel (no balancer), with the same
//! backends and the same load generator (`wrk`), one after another on one topology
//! instance. The pairs compared: ours in cookie mode with HAProxy and with nftables
//! SYNPROXY (both answer the client's handshake before choosing a backend), ours in plain
//! NAT mode with nftables DNAT (both pass the client's handshake through to a backend
//! chosen per connection).
//!
//! Per setup, two modes: keep-alive, and a new connection per request (`Connection:
//! close`, which the backend honours by closing after the response; wrk then reconnects).
//! Each cell reports wrk's requests/s, p50 and p99 latency and errors, and CPU figures:
//! system-wide `/proc/stat` deltas (softirq, system, user), the gateway's own work (for
//! ours the XDP/TC programs' run time from BPF run-time statistics, for HAProxy its process
//! time, for nftables the kernel's: see below) and the softirq time beyond the direct
//! cell's at the same request count.
//!
//! Gateway CPU of nftables: its work (conntrack, NAT, SYNPROXY) runs in the kernel's
//! receive path, in softirq (and system time where a process's send runs it), interleaved
//! with the client's and backends' own kernel work on the same CPUs, so it has no meter of
//! its own. It is measured as the cell's system-wide softirq + system CPU per request
//! minus the direct cell's of the same mode and round set (`kernel_vs_direct_ms_per_1k`):
//! direct does the same client and backend work and the gateway's plain forwarding, so
//! what is left is what nftables adds to forwarding. The same difference is computed for
//! ours (it is negative where XDP is cheaper than the kernel's forwarding it replaces). The
//! targets compare ours' own figure (its programs' run time, which includes the work that
//! replaces forwarding) with nftables' figure beyond forwarding: a comparison that leans
//! towards nftables; the beyond-direct ratio of both is reported beside it.
//!
//! Every cell also checks where the requests went: each backend's nginx `stub_status`
//! request counter is read before and after. For cookie-routed setups the backend the
//! cookie names must have answered at least as many requests as wrk counted while every
//! other backend answered none; for the spread ones (ours plain NAT, nftables) the sum
//! over the backends must be at least wrk's count and every backend must have answered
//! some ([`CellRun::problems`]). In the nftables cells the DNAT rules' counters must show
//! at least a connection per request with a new connection per request, and one per wrk
//! connection with keep-alive (the balancer is detached and no other rules are loaded, so
//! nftables alone handles the traffic); in the other setups' cells the gateway
//! namespace's conntrack table must not grow (conntrack runs there only while the
//! nftables rules are loaded, so the direct baseline does not pay for it).
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
    nftables::{self, Nftables, NftablesConfig},
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
    /// Backends in the topology (cookie-routed requests all go to be1, the others are there
    /// for the balancers' configuration and to show that nothing reaches them; plain NAT
    /// and nftables spread requests over all of them).
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

    /// For CI: 3 s cells, one round (about 60 s of load, a minute and a half with setup).
    pub fn quick(testsrv: PathBuf, balancer: PathBuf) -> Self {
        Self::with(testsrv, balancer, Duration::from_secs(3), 1)
    }

    /// 10 s cells, three rounds (about 7 minutes).
    pub fn full(testsrv: PathBuf, balancer: PathBuf) -> Self {
        Self::with(testsrv, balancer, Duration::from_secs(10), 3)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Setup {
    /// Our balancer, cookie mode, XDP attached to the gateway's interfaces.
    Balancer,
    /// Our balancer, plain NAT mode (no cookie), XDP attached to the gateway's interfaces.
    BalancerNat,
    /// HAProxy in the gateway namespace, routing on the cookie.
    Haproxy,
    /// nftables DNAT over the backends in the gateway namespace.
    NftablesDnat,
    /// nftables SYNPROXY in front of that DNAT.
    NftablesSynproxy,
    /// The client talks to the backend's own address, routed by the gateway's kernel.
    Direct,
    /// As direct, to `balancer-testsrv` instead of nginx (comparison only).
    DirectTestsrv,
}

impl Setup {
    pub fn name(self) -> &'static str {
        match self {
            Setup::Balancer => "balancer",
            Setup::BalancerNat => "balancer_nat",
            Setup::Haproxy => "haproxy",
            Setup::NftablesDnat => "nftables_dnat",
            Setup::NftablesSynproxy => "nftables_synproxy",
            Setup::Direct => "direct",
            Setup::DirectTestsrv => "direct_testsrv",
        }
    }

    /// Our balancer (XDP attached for the cell).
    pub fn is_ours(self) -> bool {
        matches!(self, Setup::Balancer | Setup::BalancerNat)
    }

    /// nftables rules loaded for the cell.
    pub fn is_nftables(self) -> bool {
        matches!(self, Setup::NftablesDnat | Setup::NftablesSynproxy)
    }

    /// Requests spread over every backend (no cookie routing).
    pub fn spreads(self) -> bool {
        matches!(
            self,
            Setup::BalancerNat | Setup::NftablesDnat | Setup::NftablesSynproxy
        )
    }
}

/// Every setup, in the order of the report's cells.
pub const SETUPS: [Setup; 7] = [
    Setup::Balancer,
    Setup::BalancerNat,
    Setup::Haproxy,
    Setup::NftablesDnat,
    Setup::NftablesSynproxy,
    Setup::Direct,
    Setup::DirectTestsrv,
];

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

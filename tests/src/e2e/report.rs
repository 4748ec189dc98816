//! The figures of a run: cells of setup and mode, ratios, the report.

use super::*;

/// One wrk run and what was measured around it.
#[derive(Clone, Debug, Serialize)]
pub struct CellRun {
    pub setup: Setup,
    pub mode: Mode,
    pub round: usize,
    pub wrk: WrkOutput,
    /// Socket errors + non-2xx responses.
    pub errors: u64,
    /// System-wide `/proc/stat` deltas over the wrk run.
    pub cpu: CpuTimes,
    /// The gateway's own work: the balancer's BPF programs' run time (ours), HAProxy's
    /// process time (Haproxy), zero (Direct, and nftables, whose kernel work is only known
    /// against the direct cells: see [`Cell::gateway_cpu_ms_per_1k`]).
    pub gateway_own_s: f64,
    /// Balancer only: BPF program runs (both directions, every packet).
    pub prog_runs: Option<u64>,
    /// Requests each backend's nginx counted during the run (not counting the status
    /// reads); empty for `direct_testsrv`.
    pub backend_requests: Vec<u64>,
    /// Connections the target backend (all backends, for the spread setups) accepted
    /// during the run.
    pub backend_connections: Option<u64>,
    /// Balancer only: the global counters (`balancer stats`) that moved during the run.
    pub balancer_counters: BTreeMap<String, u64>,
    /// nftables only: connections its DNAT rules balanced during the run (their counters).
    pub nftables_connections: Option<u64>,
    /// nftables SYNPROXY only: its counters' growth during the run.
    pub synproxy: Option<nftables::SynproxyStats>,
    /// Growth of the gateway namespace's conntrack table during the run (other setups
    /// than nftables: at most 0, conntrack is not running there).
    pub conntrack_entries_growth: i64,
    /// What went wrong with where requests went, errors, figures (empty: nothing).
    pub problems: Vec<String>,
}

/// The client's source ports for a setup's cells: each setup that reaches a backend from
/// the client's address and ports, or the VIP from them, its own range, so that no
/// setup's connection meets a TIME-WAIT socket another setup's connection with the same
/// 4-tuple left: on the backend (direct and ours both reach be1:8080 from the client's
/// address; the backend closes first, so it holds TIME-WAIT for 60 s; ours in plain NAT
/// mode and nftables too), in the client (wrk closes a connection as soon as it has read
/// the response, often before the backend's FIN: the client then holds TIME-WAIT for
/// client port -> VIP:80, and every later setup on those ports pays for connect() looking
/// for a free port; seen: nftables DNAT at a tenth of its rate and 0.6 ms of CPU per
/// request after HAProxy's cells on the same ports), in the gateway's conntrack table
/// (nftables keeps entries in TIME_WAIT for 120 s) or in the gateway's own stack
/// (HAProxy's client connections). HAProxy and `direct_testsrv` share direct's range: none
/// of their 4-tuples meets another's (HAProxy reaches the VIP from the client and the
/// backends from the gateway's address, direct be1:8080 from the client, direct_testsrv
/// be1:8081). Within a setup, ports are reused as the kernel's own connections reuse them.
pub fn port_range(setup: Setup) -> (u16, u16) {
    match setup {
        Setup::Direct | Setup::Haproxy | Setup::DirectTestsrv => (1024, 13999),
        Setup::Balancer => (14000, 26999),
        Setup::BalancerNat => (27000, 39999),
        Setup::NftablesDnat => (40000, 52999),
        Setup::NftablesSynproxy => (53000, 65535),
    }
}

/// One setup and mode over every round.
#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    pub setup: Setup,
    pub mode: Mode,
    pub runs: usize,
    /// Sums over the runs.
    pub requests: u64,
    pub seconds: f64,
    /// Medians over the runs.
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Lowest and highest requests/s of the runs.
    pub requests_per_s_min: f64,
    pub requests_per_s_max: f64,
    /// Socket errors + non-2xx, summed.
    pub errors: u64,
    /// Summed `/proc/stat` deltas.
    pub cpu: CpuTimes,
    /// Gateway's own CPU seconds (see [`CellRun::gateway_own_s`]) and per 1,000 requests;
    /// for nftables, whose work is the kernel's, the softirq + system CPU beyond direct
    /// ([`Cell::kernel_vs_direct_ms_per_1k`]).
    pub gateway_cpu_s: f64,
    pub gateway_cpu_ms_per_1k: f64,
    /// System-wide softirq per 1,000 requests.
    pub softirq_ms_per_1k: f64,
    /// Softirq per 1,000 requests minus the direct cell's (same mode, same rounds).
    pub softirq_vs_direct_ms_per_1k: Option<f64>,
    /// Softirq + system per 1,000 requests minus the direct cell's (same mode, same
    /// rounds): the kernel's work beyond plain forwarding, comparable across ours and
    /// nftables.
    pub kernel_vs_direct_ms_per_1k: Option<f64>,
    /// The gateway's own CPU plus its softirq beyond direct, per 1,000 requests (for
    /// ours the programs run inside softirq, so this is the softirq beyond direct alone).
    pub gateway_cpu_with_softirq_ms_per_1k: Option<f64>,
    /// System-wide busy time (all kinds) per 1,000 requests.
    pub busy_ms_per_1k: f64,
    /// Target backend connections per request (1: a new connection for each).
    pub backend_connections_per_request: Option<f64>,
    pub problems: Vec<String>,
}

/// Ratios for the targets (per mode).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Ratios {
    /// Our requests/s over HAProxy's.
    pub rps_balancer_over_haproxy: Option<f64>,
    /// Our requests/s over direct's.
    pub rps_balancer_over_direct: Option<f64>,
    /// Gateway's own CPU per request: ours (BPF run time) over HAProxy's (process time).
    pub cpu_own_balancer_over_haproxy: Option<f64>,
    /// The same with the softirq beyond direct included on both sides.
    pub cpu_with_softirq_balancer_over_haproxy: Option<f64>,
    /// Requests/s, ours in plain NAT mode over nftables DNAT.
    pub rps_balancer_nat_over_nftables_dnat: Option<f64>,
    /// Requests/s, ours in cookie mode over nftables SYNPROXY (+ DNAT).
    pub rps_balancer_over_nftables_synproxy: Option<f64>,
    /// Gateway CPU per request: ours in plain NAT mode (BPF run time) over nftables DNAT
    /// (softirq + system beyond direct).
    pub cpu_balancer_nat_over_nftables_dnat: Option<f64>,
    /// The same, ours in cookie mode over nftables SYNPROXY.
    pub cpu_balancer_over_nftables_synproxy: Option<f64>,
    /// Softirq + system beyond direct on both sides, ours plain NAT over nftables DNAT
    /// (negative where ours costs less than the kernel's forwarding).
    pub cpu_vs_direct_balancer_nat_over_nftables_dnat: Option<f64>,
    /// The same, ours in cookie mode over nftables SYNPROXY.
    pub cpu_vs_direct_balancer_over_nftables_synproxy: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct E2eMethod {
    pub summary: String,
    /// The wrk command lines (per mode; the URL per setup is in `urls`).
    pub wrk: BTreeMap<String, String>,
    pub urls: BTreeMap<String, String>,
    /// The balancer's CLI steps for the balancer (cookie mode) cells.
    pub balancer_commands: Vec<String>,
    /// The same for the balancer_nat (plain NAT) cells.
    pub balancer_nat_commands: Vec<String>,
    pub haproxy_config: String,
    pub haproxy_version: String,
    /// The rulesets of the nftables cells (`nft -f` input) and how they were loaded.
    pub nftables_dnat_rules: String,
    pub nftables_synproxy_rules: String,
    pub nftables: String,
    pub nftables_version: String,
    pub nginx_config: String,
    pub nginx_version: String,
    pub wrk_version: String,
    pub cpu: String,
    pub ports: String,
    pub checks: String,
    pub order: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct E2eReport {
    pub method: E2eMethod,
    pub duration_s: f64,
    pub connections: usize,
    pub threads: usize,
    pub rounds: usize,
    pub cpus: usize,
    pub cells: Vec<Cell>,
    /// Keyed by mode name.
    pub ratios: BTreeMap<String, Ratios>,
    pub runs: Vec<CellRun>,
    /// Every problem of every run (empty: all requests went where the cookie says, no
    /// wrk errors, all figures positive).
    pub problems: Vec<String>,
}

impl Cell {
    /// System-wide system time per 1,000 requests.
    pub fn system_ms_per_1k(&self) -> f64 {
        self.cpu.system_s * 1e3 / (self.requests.max(1) as f64 / 1e3)
    }
}

impl E2eReport {
    pub fn cell(&self, setup: Setup, mode: Mode) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.setup == setup && c.mode == mode)
    }
}

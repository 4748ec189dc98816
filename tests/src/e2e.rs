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

/// What wrk printed, parsed.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct WrkOutput {
    pub requests: u64,
    pub seconds: f64,
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub socket_errors: SocketErrors,
    pub non_2xx: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct SocketErrors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
}

impl SocketErrors {
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout
    }
}

/// A wrk duration or latency (`653.72us`, `5.40ms`, `1.02s`, `1.00m`) in milliseconds.
fn parse_time_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let factor = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        _ => return None,
    };
    Some(n * factor)
}

/// Parses wrk's text output (run with `--latency`).
pub fn parse_wrk(text: &str) -> Result<WrkOutput> {
    let mut out = WrkOutput::default();
    let (mut p50, mut p99, mut rps, mut total) = (None, None, None, None);
    let mut in_dist = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("Latency Distribution") {
            in_dist = true;
            continue;
        }
        if in_dist {
            match t.split_once(char::is_whitespace) {
                Some(("50%", v)) => p50 = parse_time_ms(v),
                Some(("99%", v)) => {
                    p99 = parse_time_ms(v);
                    in_dist = false;
                }
                Some((p, _)) if p.ends_with('%') => {}
                _ => in_dist = false,
            }
        }
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        }
        // "240289 requests in 5.02s, 24.75MB read"
        if let Some((n, rest)) = t.split_once(" requests in ") {
            if let (Ok(n), Some(secs)) = (
                n.trim().parse::<u64>(),
                rest.split(',').next().and_then(parse_time_ms),
            ) {
                total = Some((n, secs / 1e3));
            }
        }
        // "Socket errors: connect 0, read 12, write 0, timeout 0"
        if let Some(v) = t.strip_prefix("Socket errors:") {
            for part in v.split(',') {
                let mut w = part.split_whitespace();
                let (Some(k), Some(n)) = (w.next(), w.next().and_then(|n| n.parse().ok())) else {
                    continue;
                };
                match k {
                    "connect" => out.socket_errors.connect = n,
                    "read" => out.socket_errors.read = n,
                    "write" => out.socket_errors.write = n,
                    "timeout" => out.socket_errors.timeout = n,
                    _ => {}
                }
            }
        }
        if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            out.non_2xx = v.trim().parse().unwrap_or(0);
        }
    }
    let (Some(p50), Some(p99), Some(rps), Some((n, secs))) = (p50, p99, rps, total) else {
        bail!("wrk output lacks requests, Requests/sec or the 50%/99% latencies:\n{text}");
    };
    out.requests = n;
    out.seconds = secs;
    out.requests_per_s = rps;
    out.p50_ms = p50;
    out.p99_ms = p99;
    Ok(out)
}

/// System-wide CPU time by kind, from the `cpu` line of `/proc/stat` (seconds).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct CpuTimes {
    pub user_s: f64,
    pub system_s: f64,
    pub softirq_s: f64,
    pub irq_s: f64,
    pub idle_s: f64,
}

impl CpuTimes {
    pub fn read() -> Result<CpuTimes> {
        let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let line = text
            .lines()
            .find(|l| l.starts_with("cpu "))
            .context("no cpu line in /proc/stat")?;
        let v: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse::<f64>().ok())
            .collect();
        ensure!(v.len() >= 7, "short cpu line: {line}");
        let hz = haproxy::clock_ticks();
        // user nice system idle iowait irq softirq
        Ok(CpuTimes {
            user_s: (v[0] + v[1]) / hz,
            system_s: v[2] / hz,
            idle_s: (v[3] + v[4]) / hz,
            irq_s: v[5] / hz,
            softirq_s: v[6] / hz,
        })
    }

    fn minus(&self, o: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user_s: self.user_s - o.user_s,
            system_s: self.system_s - o.system_s,
            softirq_s: self.softirq_s - o.softirq_s,
            irq_s: self.irq_s - o.irq_s,
            idle_s: self.idle_s - o.idle_s,
        }
    }

    fn plus(&self, o: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user_s: self.user_s + o.user_s,
            system_s: self.system_s + o.system_s,
            softirq_s: self.softirq_s + o.softirq_s,
            irq_s: self.irq_s + o.irq_s,
            idle_s: self.idle_s + o.idle_s,
        }
    }

    /// Everything but idle.
    pub fn busy_s(&self) -> f64 {
        self.user_s + self.system_s + self.softirq_s + self.irq_s
    }
}

/// Run time and run count of BPF programs (BPF run-time statistics).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ProgStats {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// Keeps BPF run-time statistics enabled while it lives (`BPF_ENABLE_STATS`: reference
/// counted by the kernel, so whoever else enabled them is not disturbed, and they go off
/// again when the last holder closes, also if this process dies).
pub struct BpfStatsGuard(#[allow(dead_code)] std::os::fd::OwnedFd);

impl BpfStatsGuard {
    pub fn enable() -> Result<BpfStatsGuard> {
        use std::os::fd::FromRawFd;
        const BPF_ENABLE_STATS: libc::c_long = 32;
        // union bpf_attr { struct { __u32 type; } enable_stats; }, BPF_STATS_RUN_TIME = 0.
        let mut attr = [0u8; 16];
        // SAFETY: a zeroed bpf_attr prefix large enough for this command.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_mut_ptr() as *mut libc::c_void,
                attr.len() as libc::c_uint,
            )
        };
        if fd < 0 {
            bail!("BPF_ENABLE_STATS: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a new fd that nothing else owns.
        Ok(BpfStatsGuard(unsafe {
            std::os::fd::OwnedFd::from_raw_fd(fd as i32)
        }))
    }
}

/// The ids of the programs behind the BPF links pinned in `pin_dir` (the balancer's XDP
/// and TC links), from `bpftool link show pinned`.
pub fn pinned_prog_ids(pin_dir: &Path) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    let entries =
        std::fs::read_dir(pin_dir).with_context(|| format!("listing {}", pin_dir.display()))?;
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("link_") || name.starts_with("tclink_")) {
            continue;
        }
        let out = Command::new("bpftool")
            .args(["-j", "link", "show", "pinned"])
            .arg(e.path())
            .output()
            .context("running bpftool")?;
        if !out.status.success() {
            continue;
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if let Some(id) = v["prog_id"].as_u64() {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ensure!(!ids.is_empty(), "no program links in {}", pin_dir.display());
    ids.sort_unstable();
    Ok(ids)
}

/// Sum of the run-time statistics of programs `ids` (`bpftool prog show id`).
pub fn prog_stats(ids: &[u64]) -> Result<ProgStats> {
    let mut s = ProgStats::default();
    for id in ids {
        let out = Command::new("bpftool")
            .args(["-j", "prog", "show", "id", &id.to_string()])
            .output()
            .context("running bpftool")?;
        ensure!(
            out.status.success(),
            "bpftool prog show id {id}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let v: Value = serde_json::from_slice(&out.stdout).context("bpftool output")?;
        // bpftool leaves the fields out while they are zero.
        s.run_time_ns += v["run_time_ns"].as_u64().unwrap_or(0);
        s.run_cnt += v["run_cnt"].as_u64().unwrap_or(0);
    }
    Ok(s)
}

/// nginx `stub_status` counters of one backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NginxStatus {
    pub accepts: u64,
    pub requests: u64,
}

/// Parses nginx's `stub_status` page.
pub fn parse_stub_status(text: &str) -> Result<NginxStatus> {
    // Active connections: 1
    // server accepts handled requests
    //  16 16 31
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if l.trim_start()
            .starts_with("server accepts handled requests")
        {
            let nums: Vec<u64> = lines
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
            ensure!(nums.len() == 3, "stub_status counters: {text}");
            return Ok(NginxStatus {
                accepts: nums[0],
                requests: nums[2],
            });
        }
    }
    bail!("not a stub_status page: {text}")
}

/// nginx on every backend of a topology, killed (and its files removed) on drop.
pub struct NginxBackends {
    children: Vec<Child>,
    dir: PathBuf,
    /// The configuration of backend 0 (the others differ by name and address).
    pub config_text: String,
    /// Each backend's namespace path and nginx address.
    addrs: Vec<(String, SocketAddr)>,
}

/// nginx's configuration for a backend named `name` at `addr`.
pub fn nginx_config(dir: &Path, name: &str, addr: SocketAddr, workers: usize) -> String {
    let d = dir.display();
    format!(
        "daemon off;
master_process on;
worker_processes {workers};
pid {d}/{name}.pid;
error_log stderr error;
events {{ worker_connections 65536; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 60s;
    client_body_temp_path {d}/{name}-body;
    proxy_temp_path {d}/{name}-proxy;
    fastcgi_temp_path {d}/{name}-fastcgi;
    uwsgi_temp_path {d}/{name}-uwsgi;
    scgi_temp_path {d}/{name}-scgi;
    server {{
        listen {addr} reuseport backlog=4096;
        location = {STATUS_PATH} {{ stub_status; }}
        location / {{
            add_header X-Backend {name} always;
            return 200 \"{name}\\n\";
        }}
    }}
}}
"
    )
}

impl NginxBackends {
    /// Starts nginx (`worker_processes` = CPUs) on every backend of `t`, listening on
    /// `addr:BACKEND_PORT`, and waits until each answers its status page.
    pub fn start(t: &Topology) -> Result<NginxBackends> {
        let bin = haproxy::find_program("nginx")
            .context("nginx is not installed (`cargo xtask setup` installs it)")?;
        let dir = std::env::temp_dir().join(netns::unique_name("lbnginx"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut n = NginxBackends {
            children: Vec::new(),
            dir: dir.clone(),
            config_text: String::new(),
            addrs: Vec::new(),
        };
        for b in &t.backends {
            let text = nginx_config(&dir, &b.name, b.socket_addr(), haproxy::cpus());
            if n.config_text.is_empty() {
                n.config_text = text.clone();
            }
            let path = dir.join(format!("{}.conf", b.name));
            std::fs::write(&path, &text)?;
            let mut cmd = b.ns.command(&bin.to_string_lossy());
            cmd.arg("-c")
                .arg(&path)
                .arg("-e")
                .arg("stderr")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            let child = cmd
                .spawn()
                .with_context(|| format!("starting nginx in {}", b.ns.name()))?;
            n.children.push(child);
            n.addrs.push((b.ns.path(), b.socket_addr()));
        }
        for i in 0..n.addrs.len() {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if n.status(i).is_ok() {
                    break;
                }
                if let Some(st) = n.children[i].try_wait()? {
                    bail!("nginx of backend {i} exited ({st})");
                }
                if Instant::now() > deadline {
                    bail!("nginx of backend {i} does not answer after 10 s");
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(n)
    }

    /// The status counters of backend `i` (read from inside its namespace).
    pub fn status(&self, i: usize) -> Result<NginxStatus> {
        let (ns, addr) = self.addrs[i].clone();
        let r = in_ns(&ns, move || http::get(addr, STATUS_PATH))??;
        ensure!(r.status == 200, "status page: {}", r.status);
        parse_stub_status(&r.text())
    }

    /// Every backend's counters.
    pub fn statuses(&self) -> Result<Vec<NginxStatus>> {
        (0..self.addrs.len()).map(|i| self.status(i)).collect()
    }
}

impl Drop for NginxBackends {
    fn drop(&mut self) {
        for c in &mut self.children {
            haproxy::stop_group(c);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `f` on a thread inside the network namespace at `path`.
fn in_ns<T: Send + 'static>(path: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a valid namespace fd; it affects this thread only.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(anyhow::anyhow!(
                "setns: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
}

/// `balancer-testsrv` on backend 0 at port [`TESTSRV_PORT`], killed on drop.
struct Testsrv(Child);

impl Drop for Testsrv {
    fn drop(&mut self) {
        haproxy::stop_group(&mut self.0);
    }
}

fn start_testsrv(t: &Topology, bin: &Path) -> Result<Testsrv> {
    let b = &t.backends[TARGET];
    let addr = SocketAddr::V4(SocketAddrV4::new(b.addr, TESTSRV_PORT));
    let mut cmd = b.ns.command(&bin.to_string_lossy());
    cmd.arg("--listen")
        .arg(addr.to_string())
        .arg("--name")
        .arg(&b.name)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut s = Testsrv(cmd.spawn().context("starting balancer-testsrv")?);
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.ns.run(move || http::get(addr, "/").is_err())? {
        if s.0.try_wait()?.is_some() || Instant::now() > deadline {
            bail!("balancer-testsrv does not answer on {addr}");
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(s)
}

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
    /// The gateway's own work: the balancer's BPF programs' run time (Balancer),
    /// HAProxy's process time (Haproxy), zero (Direct).
    pub gateway_own_s: f64,
    /// Balancer only: BPF program runs (both directions, every packet).
    pub prog_runs: Option<u64>,
    /// Requests each backend's nginx counted during the run (not counting the status
    /// reads); empty for `direct_testsrv`.
    pub backend_requests: Vec<u64>,
    /// Connections the target backend accepted during the run.
    pub backend_connections: Option<u64>,
    /// Balancer only: the global counters (`balancer stats`) that moved during the run.
    pub balancer_counters: BTreeMap<String, u64>,
    /// What went wrong with where requests went, errors, figures (empty: nothing).
    pub problems: Vec<String>,
}

/// The client's source ports for a setup's cells: each setup its own range, so that no
/// setup's connection meets a TIME-WAIT socket another setup's connection with the same
/// 4-tuple left on the backend (direct and ours both reach be1:8080 from the client's
/// address; the backend closes first, so it holds TIME-WAIT for 60 s). Within a setup,
/// ports are reused as the kernel's own connections reuse them.
pub fn port_range(setup: Setup) -> (u16, u16) {
    match setup {
        Setup::Direct => (1024, 22999),
        Setup::Balancer => (23000, 44999),
        Setup::Haproxy | Setup::DirectTestsrv => (45000, 65535),
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
    /// Gateway's own CPU seconds (see [`CellRun::gateway_own_s`]) and per 1,000 requests.
    pub gateway_cpu_s: f64,
    pub gateway_cpu_ms_per_1k: f64,
    /// System-wide softirq per 1,000 requests.
    pub softirq_ms_per_1k: f64,
    /// Softirq per 1,000 requests minus the direct cell's (same mode, same rounds).
    pub softirq_vs_direct_ms_per_1k: Option<f64>,
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
}

#[derive(Clone, Debug, Serialize)]
pub struct E2eMethod {
    pub summary: String,
    /// The wrk command lines (per mode; the URL per setup is in `urls`).
    pub wrk: BTreeMap<String, String>,
    pub urls: BTreeMap<String, String>,
    /// The balancer's CLI steps for the balancer cells.
    pub balancer_commands: Vec<String>,
    pub haproxy_config: String,
    pub haproxy_version: String,
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

impl E2eReport {
    pub fn cell(&self, setup: Setup, mode: Mode) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.setup == setup && c.mode == mode)
    }
}

fn wrk_args(o: &E2eOptions, mode: Mode, url: &str) -> Vec<String> {
    let mut a = vec![
        format!("-t{}", o.threads),
        format!("-c{}", o.connections),
        // wrk takes whole seconds (s, m, h units only).
        format!("-d{}s", whole_seconds(o.duration)),
        format!("--timeout={}s", whole_seconds(o.wrk_timeout)),
        "--latency".into(),
        "-H".into(),
        format!("Cookie: {COOKIE}"),
    ];
    if mode == Mode::NewConnection {
        a.extend(["-H".into(), "Connection: close".into()]);
    }
    a.push(url.into());
    a
}

/// `d` rounded up to whole seconds, at least 1.
fn whole_seconds(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

fn shell_quote(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_=./:%".contains(c))
            {
                a.clone()
            } else {
                format!("'{a}'")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn version_of(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().next().unwrap_or_default().trim().to_string()
        })
        .unwrap_or_default()
}

/// The setup in front of the backends while cells run.
enum Front {
    None,
    Balancer { prog_ids: Vec<u64> },
    Haproxy(Box<Haproxy>),
}

/// What one cell runs against.
struct Bed<'a> {
    t: &'a mut Topology,
    nginx: &'a NginxBackends,
    o: &'a E2eOptions,
}

impl Bed<'_> {
    fn url(&self, setup: Setup) -> String {
        match setup {
            Setup::Balancer | Setup::Haproxy => format!("http://{}/", vip()),
            Setup::Direct => format!("http://{}/", self.t.backends[TARGET].socket_addr()),
            Setup::DirectTestsrv => {
                format!("http://{}:{TESTSRV_PORT}/", self.t.backends[TARGET].addr)
            }
        }
    }

    fn cell(
        &self,
        setup: Setup,
        mode: Mode,
        round: usize,
        front: &Front,
        progress: &dyn Fn(String),
    ) -> Result<CellRun> {
        let url = self.url(setup);
        let (lo, hi) = port_range(setup);
        self.t
            .client
            .sysctl("net.ipv4.ip_local_port_range", &format!("{lo} {hi}"))?;
        let counters_before = match front {
            Front::Balancer { .. } => Some(self.t.global_stats()?),
            _ => None,
        };
        let args = wrk_args(self.o, mode, &url);
        let count_backends = setup != Setup::DirectTestsrv;
        let before_status = if count_backends {
            self.nginx.statuses()?
        } else {
            Vec::new()
        };
        let stats = match front {
            Front::Balancer { .. } => Some(BpfStatsGuard::enable()?),
            _ => None,
        };
        let prog_before = match front {
            Front::Balancer { prog_ids } => Some(prog_stats(prog_ids)?),
            _ => None,
        };
        let haproxy_before = match front {
            Front::Haproxy(h) => Some(h.cpu_time()?),
            _ => None,
        };
        let cpu_before = CpuTimes::read()?;
        let out = self
            .t
            .client
            .command("wrk")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .context("running wrk (installed by `cargo xtask setup`)")?;
        let cpu = CpuTimes::read()?.minus(&cpu_before);
        let (gateway_own_s, prog_runs) = match front {
            Front::Balancer { prog_ids } => {
                let after = prog_stats(prog_ids)?;
                let b = prog_before.unwrap_or_default();
                (
                    (after.run_time_ns - b.run_time_ns) as f64 / 1e9,
                    Some(after.run_cnt - b.run_cnt),
                )
            }
            Front::Haproxy(h) => (
                (h.cpu_time()? - haproxy_before.unwrap_or_default()).as_secs_f64(),
                None,
            ),
            Front::None => (0.0, None),
        };
        drop(stats);
        let mut balancer_counters = BTreeMap::new();
        if let Some(before) = counters_before {
            let after = self.t.global_stats()?;
            if let Some(a) = after.as_object() {
                for (k, v) in a {
                    let d = v.as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0);
                    if d != 0 {
                        balancer_counters.insert(k.clone(), d);
                    }
                }
            }
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "wrk {} failed ({}): {}{text}",
                shell_quote(&args),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let wrk = parse_wrk(&text)?;
        let mut problems = Vec::new();
        let what = format!("{} {} round {round}", setup.name(), mode.name());
        let errors = wrk.socket_errors.total() + wrk.non_2xx;
        if errors > 0 {
            problems.push(format!(
                "{what}: wrk errors: {:?}, non-2xx {}",
                wrk.socket_errors, wrk.non_2xx
            ));
        }
        for (name, v) in [
            ("requests", wrk.requests as f64),
            ("requests/s", wrk.requests_per_s),
            ("p50", wrk.p50_ms),
            ("p99", wrk.p99_ms),
            ("seconds", wrk.seconds),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                problems.push(format!("{what}: {name} is {v}"));
            }
        }
        if setup == Setup::Balancer && gateway_own_s <= 0.0 {
            problems.push(format!(
                "{what}: the balancer's programs ran for {gateway_own_s} s"
            ));
        }
        let mut backend_requests = Vec::new();
        let mut backend_connections = None;
        if count_backends {
            let after = self.nginx.statuses()?;
            for (i, (b, a)) in before_status.iter().zip(&after).enumerate() {
                // The status page counts its own request: the reading after adds one.
                let n = a.requests.saturating_sub(b.requests).saturating_sub(1);
                backend_requests.push(n);
                let name = &self.t.backends[i].name;
                if i == TARGET {
                    backend_connections = Some(a.accepts - b.accepts - 1);
                    if n < wrk.requests {
                        problems.push(format!(
                            "{what}: {name} (named by the cookie) answered {n} requests, wrk counted {}",
                            wrk.requests
                        ));
                    }
                } else if n != 0 {
                    problems.push(format!(
                        "{what}: {n} requests reached {name}, which the cookie does not name"
                    ));
                }
            }
        }
        progress(format!(
            "  {:<15} {:<15} {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  errors {}  gateway {:.3} s  softirq {:.2} s",
            setup.name(),
            mode.name(),
            wrk.requests_per_s,
            wrk.p50_ms,
            wrk.p99_ms,
            errors,
            gateway_own_s,
            cpu.softirq_s
        ));
        Ok(CellRun {
            setup,
            mode,
            round,
            wrk,
            errors,
            cpu,
            gateway_own_s,
            prog_runs,
            backend_requests,
            backend_connections,
            balancer_counters,
            problems,
        })
    }
}

/// The balancer's CLI steps for the balancer cells.
fn balancer_steps(t: &Topology) -> Vec<Vec<String>> {
    let service = service_arg();
    let mut steps = vec![{
        let mut a = vec!["attach".to_string()];
        for i in &t.gateway_ifaces {
            a.push("--iface".into());
            a.push(i.clone());
        }
        a
    }];
    steps.push(vec![
        "service".into(),
        "add".into(),
        service.clone(),
        "--cookie".into(),
    ]);
    for b in &t.backends {
        steps.push(vec![
            "backend".into(),
            "add".into(),
            service.clone(),
            b.endpoint(),
            "--server-id".into(),
            b.name.clone(),
        ]);
    }
    steps
}

fn haproxy_config(t: &Topology) -> HaproxyConfig {
    HaproxyConfig::new(
        vip(),
        t.backends
            .iter()
            .map(|b| (b.name.clone(), b.socket_addr()))
            .collect(),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn aggregate(runs: &[CellRun], setup: Setup, mode: Mode) -> Option<Cell> {
    let rs: Vec<&CellRun> = runs
        .iter()
        .filter(|r| r.setup == setup && r.mode == mode)
        .collect();
    if rs.is_empty() {
        return None;
    }
    let requests: u64 = rs.iter().map(|r| r.wrk.requests).sum();
    let per_1k = |s: f64| s * 1e3 / (requests.max(1) as f64 / 1e3);
    let cpu = rs
        .iter()
        .fold(CpuTimes::default(), |acc, r| acc.plus(&r.cpu));
    let gateway_cpu_s: f64 = rs.iter().map(|r| r.gateway_own_s).sum();
    let rps: Vec<f64> = rs.iter().map(|r| r.wrk.requests_per_s).collect();
    let conns: Option<u64> = rs.iter().map(|r| r.backend_connections).sum();
    Some(Cell {
        setup,
        mode,
        runs: rs.len(),
        requests,
        seconds: rs.iter().map(|r| r.wrk.seconds).sum(),
        requests_per_s: median(rps.clone()),
        requests_per_s_min: rps.iter().copied().fold(f64::INFINITY, f64::min),
        requests_per_s_max: rps.iter().copied().fold(0.0, f64::max),
        p50_ms: median(rs.iter().map(|r| r.wrk.p50_ms).collect()),
        p99_ms: median(rs.iter().map(|r| r.wrk.p99_ms).collect()),
        errors: rs.iter().map(|r| r.errors).sum(),
        cpu,
        gateway_cpu_s,
        gateway_cpu_ms_per_1k: per_1k(gateway_cpu_s),
        softirq_ms_per_1k: per_1k(cpu.softirq_s),
        softirq_vs_direct_ms_per_1k: None,
        gateway_cpu_with_softirq_ms_per_1k: None,
        busy_ms_per_1k: per_1k(cpu.busy_s()),
        backend_connections_per_request: conns.map(|c| c as f64 / requests.max(1) as f64),
        problems: rs.iter().flat_map(|r| r.problems.clone()).collect(),
    })
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    }
}

/// Runs every setup and mode on one fresh two-arm topology (see the module
/// documentation) and returns the figures; `progress` gets a line per step.
pub fn run_end_to_end(o: &E2eOptions, progress: &dyn Fn(String)) -> Result<E2eReport> {
    topology::require_root()?;
    ensure!(o.runs > 0 && o.connections > 0 && o.threads > 0 && o.backends >= 2);
    ensure!(
        o.connections >= o.threads,
        "wrk needs at least one connection per thread"
    );
    for p in ["wrk", "haproxy", "nginx", "bpftool"] {
        if haproxy::find_program(p).is_none() {
            bail!("{p} is not installed (`cargo xtask setup` installs it)");
        }
    }
    progress(format!(
        "end to end: building a two-arm topology with {} backends",
        o.backends
    ));
    let mut t = Topology::build(Arms::Two, o.backends, o.balancer.clone())?;
    let nginx = NginxBackends::start(&t)?;
    let testsrv = if o.compare_testsrv {
        Some(start_testsrv(&t, &o.testsrv)?)
    } else {
        None
    };
    let steps = balancer_steps(&t);
    let hconf = haproxy_config(&t);
    let mut runs = Vec::new();
    let mut haproxy_text = hconf.render();
    let urls: BTreeMap<String, String>;
    {
        let bed = Bed {
            t: &mut t,
            nginx: &nginx,
            o,
        };
        urls = [
            Setup::Balancer,
            Setup::Haproxy,
            Setup::Direct,
            Setup::DirectTestsrv,
        ]
        .iter()
        .map(|s| (s.name().to_string(), bed.url(*s)))
        .collect();
        let modes = [Mode::KeepAlive, Mode::NewConnection];
        for round in 1..=o.runs {
            progress(format!("end to end: round {round}/{}", o.runs));
            // Direct first: the topology's own limit.
            for mode in modes {
                runs.push(bed.cell(Setup::Direct, mode, round, &Front::None, progress)?);
            }
            if testsrv.is_some() && round == 1 {
                for mode in modes {
                    runs.push(bed.cell(
                        Setup::DirectTestsrv,
                        mode,
                        round,
                        &Front::None,
                        progress,
                    )?);
                }
            }
            // Ours: attached only for its cells (XDP would otherwise see the other
            // setups' packets too).
            for s in &steps {
                let a: Vec<&str> = s.iter().map(String::as_str).collect();
                bed.t.balancer(&a)?;
            }
            let result = (|| -> Result<Vec<CellRun>> {
                let prog_ids = pinned_prog_ids(&bed.t.pin_dir())?;
                let front = Front::Balancer { prog_ids };
                let mut v = Vec::new();
                for mode in modes {
                    v.push(bed.cell(Setup::Balancer, mode, round, &front, progress)?);
                }
                Ok(v)
            })();
            bed.t.detach()?;
            runs.extend(result?);
            // HAProxy: started for its cells, stopped after (its VIP address goes too).
            let h = Haproxy::start(&bed.t.gateway, &hconf)?;
            haproxy_text = h.text.clone();
            let front = Front::Haproxy(Box::new(h));
            for mode in modes {
                runs.push(bed.cell(Setup::Haproxy, mode, round, &front, progress)?);
            }
            drop(front);
        }
    }
    drop(testsrv);
    let modes = [Mode::KeepAlive, Mode::NewConnection];
    let setups = [
        Setup::Balancer,
        Setup::Haproxy,
        Setup::Direct,
        Setup::DirectTestsrv,
    ];
    let mut cells: Vec<Cell> = modes
        .iter()
        .flat_map(|m| setups.iter().filter_map(|s| aggregate(&runs, *s, *m)))
        .collect();
    // Softirq beyond direct's (same mode).
    for m in modes {
        let direct = cells
            .iter()
            .find(|c| c.setup == Setup::Direct && c.mode == m)
            .map(|c| c.softirq_ms_per_1k);
        for c in cells.iter_mut().filter(|c| c.mode == m) {
            if let (Some(d), true) = (direct, matches!(c.setup, Setup::Balancer | Setup::Haproxy)) {
                let extra = c.softirq_ms_per_1k - d;
                c.softirq_vs_direct_ms_per_1k = Some(extra);
                c.gateway_cpu_with_softirq_ms_per_1k = Some(match c.setup {
                    // The programs run in softirq: already inside `extra`.
                    Setup::Balancer => extra,
                    _ => c.gateway_cpu_ms_per_1k + extra,
                });
            }
        }
    }
    let mut ratios = BTreeMap::new();
    for m in modes {
        let get = |s: Setup| cells.iter().find(|c| c.setup == s && c.mode == m);
        let (b, h, d) = (
            get(Setup::Balancer),
            get(Setup::Haproxy),
            get(Setup::Direct),
        );
        ratios.insert(
            m.name().to_string(),
            Ratios {
                rps_balancer_over_haproxy: ratio(
                    b.map(|c| c.requests_per_s),
                    h.map(|c| c.requests_per_s),
                ),
                rps_balancer_over_direct: ratio(
                    b.map(|c| c.requests_per_s),
                    d.map(|c| c.requests_per_s),
                ),
                cpu_own_balancer_over_haproxy: ratio(
                    b.map(|c| c.gateway_cpu_ms_per_1k),
                    h.map(|c| c.gateway_cpu_ms_per_1k),
                ),
                cpu_with_softirq_balancer_over_haproxy: ratio(
                    b.and_then(|c| c.gateway_cpu_with_softirq_ms_per_1k),
                    h.and_then(|c| c.gateway_cpu_with_softirq_ms_per_1k),
                ),
            },
        );
    }
    let wrk: BTreeMap<String, String> = modes
        .iter()
        .map(|m| {
            let mut a = vec!["wrk".to_string()];
            a.extend(wrk_args(o, *m, "<url>"));
            (m.name().to_string(), shell_quote(&a))
        })
        .collect();
    let method = E2eMethod {
        summary: format!(
            "one two-arm netns topology (client, gateway, {} backends on a bridge; all on this machine's {} CPUs), nginx on every backend answering every request with its name; wrk in the client namespace sends every request with the cookie `{COOKIE}` (primary be1), so every setup serves every request from be1 and the backend work is the same; setups: `balancer` = our XDP balancer attached to the gateway's two interfaces, cookie-mode service at the VIP; `haproxy` = HAProxy in the gateway namespace listening on the VIP (address on the gateway's lo while it runs), use-server on the cookie's segments; `direct` = wrk to be1's own address, routed by the gateway's kernel with nothing attached; `direct_testsrv` = as direct, to balancer-testsrv (thread per connection) on be1 port {TESTSRV_PORT}, first round only, to show the backend server's own limit. wrk latency is from the request's first byte written to its response read (in new-connection mode it excludes the client's handshake, which for our balancer is answered by XDP; the backend handshake it triggers is inside the latency).",
            o.backends,
            haproxy::cpus()
        ),
        wrk,
        urls,
        balancer_commands: steps
            .iter()
            .map(|s| format!("balancer --instance <instance> {}", shell_quote(s)))
            .collect(),
        haproxy_config: haproxy_text,
        haproxy_version: version_of("haproxy", &["-v"]),
        nginx_config: nginx.config_text.clone(),
        nginx_version: version_of("nginx", &["-v"]),
        wrk_version: version_of("wrk", &["--version"]),
        cpu: "client, gateway and backends share the machine's CPUs and kernel, so CPU is measured per cell as (a) system-wide /proc/stat deltas over the wrk run (tick-sampled at CONFIG_HZ; softirq is where XDP and the whole veth/TCP receive path run, for every namespace); (b) the gateway's own work: for `balancer` the run time of its XDP and TC programs from BPF run-time statistics (BPF_ENABLE_STATS held during its cells only; bpftool prog show run_time_ns), for `haproxy` its process utime+stime (/proc/<pid>/stat, all threads; tick accounting also charges softirq that ran while HAProxy was on the CPU to it), for `direct` zero; gateway_cpu_ms_per_1k = (b) per 1,000 wrk requests; (c) softirq_vs_direct_ms_per_1k = the cell's softirq per 1,000 requests minus the direct cell's of the same mode (direct has the same client and backend stack work plus the gateway kernel's forwarding, which both balancers replace): it can be negative when the balancer's path is cheaper than kernel forwarding; gateway_cpu_with_softirq_ms_per_1k = (c) for ours (its programs run inside softirq) and (b)+(c) for HAProxy. cpu_own ratio = (b) ours / (b) HAProxy; cpu_with_softirq ratio = the same with (c) included.".into(),
        ports: format!(
            "wrk's source ports: direct {:?}, balancer {:?}, haproxy and direct_testsrv {:?} (net.ipv4.ip_local_port_range in the client namespace, set before each cell): no setup meets TIME-WAIT state that another setup's connections with the same 4-tuple left on the backend (the backend closes first and keeps TIME-WAIT 60 s; our balancer strips TCP timestamps, so the backend accepts a reused 4-tuple only with a higher ISN, which the client's ISN for the VIP does not give after a direct connection from the same port)",
            port_range(Setup::Direct),
            port_range(Setup::Balancer),
            port_range(Setup::Haproxy)
        ),
        checks: "each backend's nginx stub_status request counter is read before and after every cell (from inside its namespace; the reading itself is discounted): the cookie's primary (be1) must have answered at least the requests wrk counted and every other backend none; wrk must report no socket errors and no non-2xx answers; requests, requests/s, p50, p99 must be positive, and our programs' run time too. backend_connections_per_request = connections be1 accepted per request (1 in new-connection mode for direct and ours: wrk really reconnects; HAProxy keeps its server-side connections alive and reuses them).".into(),
        order: format!(
            "{} round(s); in each: direct (keep-alive, new connection), [direct_testsrv in round 1], balancer (attached, cells, detached), haproxy (started, cells, stopped); the cell figures are medians (rates, latencies) or sums (requests, CPU) over the rounds",
            o.runs
        ),
    };
    let problems = runs.iter().flat_map(|r| r.problems.clone()).collect();
    Ok(E2eReport {
        method,
        duration_s: o.duration.as_secs_f64(),
        connections: o.connections,
        threads: o.threads,
        rounds: o.runs,
        cpus: haproxy::cpus(),
        cells,
        ratios,
        runs,
        problems,
    })
}

/// The cells and ratios as a table on stdout.
pub fn print_table(r: &E2eReport) {
    println!(
        "\nend to end: wrk -t{} -c{} for {:.0} s per cell, {} round(s), {} CPUs shared by client, gateway and backends",
        r.threads, r.connections, r.duration_s, r.rounds, r.cpus
    );
    println!(
        "{:<15} {:<15} {:>10} {:>9} {:>9} {:>7} {:>11} {:>11} {:>11} {:>11}",
        "setup",
        "mode",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "gw ms/1k",
        "gw+sirq/1k",
        "sirq ms/1k",
        "busy ms/1k"
    );
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    for c in &r.cells {
        println!(
            "{:<15} {:<15} {:>10.0} {:>9.3} {:>9.3} {:>7} {:>11.3} {:>11} {:>11.3} {:>11.3}",
            c.setup.name(),
            c.mode.name(),
            c.requests_per_s,
            c.p50_ms,
            c.p99_ms,
            c.errors,
            c.gateway_cpu_ms_per_1k,
            opt(c.gateway_cpu_with_softirq_ms_per_1k),
            c.softirq_ms_per_1k,
            c.busy_ms_per_1k
        );
    }
    for (mode, x) in &r.ratios {
        println!(
            "{mode}: req/s ours/HAProxy {}, ours/direct {}; gateway CPU per request ours/HAProxy {} (own), {} (with softirq beyond direct)",
            opt(x.rps_balancer_over_haproxy),
            opt(x.rps_balancer_over_direct),
            opt(x.cpu_own_balancer_over_haproxy),
            opt(x.cpu_with_softirq_balancer_over_haproxy)
        );
    }
    for p in r.problems.iter().take(20) {
        println!("  problem: {p}");
    }
}

/// For tests: the address the balancer and HAProxy cells target.
pub fn front_addr() -> SocketAddr {
    vip()
}

/// For tests: be1's address.
pub fn target_backend_addr() -> Ipv4Addr {
    topology::backend_addr(TARGET)
}

/// For tests: the port the backends' nginx listens on.
pub fn backend_port() -> u16 {
    BACKEND_PORT
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 5s test @ http://198.18.1.10:8080/
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   653.72us  597.77us  24.04ms   92.75%
    Req/Sec    24.12k     7.77k   39.69k    69.00%
  Latency Distribution
     50%  549.00us
     75%  793.00us
     90%    1.11ms
     99%    2.69ms
  240289 requests in 5.02s, 24.75MB read
  Socket errors: connect 0, read 12, write 3, timeout 7
  Non-2xx or 3xx responses: 5
Requests/sec:  47909.86
Transfer/sec:      4.93MB
";

    #[test]
    fn parses_wrk_output() {
        let w = parse_wrk(WRK).unwrap();
        assert_eq!(w.requests, 240289);
        assert!((w.seconds - 5.02).abs() < 1e-9);
        assert!((w.requests_per_s - 47909.86).abs() < 1e-9);
        assert!((w.p50_ms - 0.549).abs() < 1e-9);
        assert!((w.p99_ms - 2.69).abs() < 1e-9);
        assert_eq!(
            w.socket_errors,
            SocketErrors {
                connect: 0,
                read: 12,
                write: 3,
                timeout: 7
            }
        );
        assert_eq!(w.non_2xx, 5);
        assert!(parse_wrk("unable to connect to 198.18.1.10:8080 Connection refused").is_err());
    }

    #[test]
    fn parses_times_and_stub_status() {
        assert_eq!(parse_time_ms("1.00m"), Some(60e3));
        assert_eq!(parse_time_ms("2s"), Some(2e3));
        assert_eq!(parse_time_ms("x"), None);
        let s = parse_stub_status(
            "Active connections: 1 \nserver accepts handled requests\n 16 16 31 \nReading: 0 Writing: 1 Waiting: 0 \n",
        )
        .unwrap();
        assert_eq!(
            s,
            NginxStatus {
                accepts: 16,
                requests: 31
            }
        );
    }
}

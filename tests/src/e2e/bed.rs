//! The topology of a run: the fronts (ours, HAProxy, nftables, direct), the test servers,
//! wrk's command line, one cell's run and checks.

use super::*;

/// Runs `f` on a thread inside the network namespace at `path`.
pub(crate) fn in_ns<T: Send + 'static>(
    path: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
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
pub(crate) struct Testsrv(pub(crate) Child);

impl Drop for Testsrv {
    fn drop(&mut self) {
        haproxy::stop_group(&mut self.0);
    }
}

pub(crate) fn start_testsrv(t: &Topology, bin: &Path) -> Result<Testsrv> {
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

pub(crate) fn wrk_args(o: &E2eOptions, mode: Mode, url: &str) -> Vec<String> {
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
pub(crate) fn whole_seconds(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

pub(crate) fn shell_quote(args: &[String]) -> String {
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

pub(crate) fn version_of(program: &str, args: &[&str]) -> String {
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
pub(crate) enum Front {
    None,
    Balancer {
        prog_ids: Vec<u64>,
    },
    Haproxy(Box<Haproxy>),
    /// The rules stay loaded while the front lives.
    Nftables(Box<Nftables>),
}

/// What one cell runs against.
pub(crate) struct Bed<'a> {
    pub(crate) t: &'a mut Topology,
    pub(crate) nginx: &'a NginxBackends,
    pub(crate) o: &'a E2eOptions,
}

impl Bed<'_> {
    pub(crate) fn url(&self, setup: Setup) -> String {
        match setup {
            Setup::Balancer
            | Setup::BalancerNat
            | Setup::Haproxy
            | Setup::NftablesDnat
            | Setup::NftablesSynproxy => format!("http://{}/", vip()),
            Setup::Direct => format!("http://{}/", self.t.backends[TARGET].socket_addr()),
            Setup::DirectTestsrv => {
                format!("http://{}:{TESTSRV_PORT}/", self.t.backends[TARGET].addr)
            }
        }
    }

    /// Attaches ours with `steps` (attach, service, backends), runs both modes' cells of
    /// `setup` and detaches again (also when a cell fails).
    pub(crate) fn ours_cells(
        &mut self,
        setup: Setup,
        steps: &[Vec<String>],
        round: usize,
        progress: &dyn Fn(String),
    ) -> Result<Vec<CellRun>> {
        let result = (|| -> Result<Vec<CellRun>> {
            for s in steps {
                let a: Vec<&str> = s.iter().map(String::as_str).collect();
                self.t.balancer(&a)?;
            }
            let prog_ids = pinned_prog_ids(&self.t.pin_dir())?;
            let front = Front::Balancer { prog_ids };
            [Mode::KeepAlive, Mode::NewConnection]
                .into_iter()
                .map(|mode| self.cell(setup, mode, round, &front, progress))
                .collect()
        })();
        self.t.detach()?;
        result
    }

    pub(crate) fn cell(
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
        let gateway = &self.t.gateway;
        let entries_before = nftables::conntrack_entries(gateway)?;
        let (hits_before, synproxy_before) = match front {
            Front::Nftables(n) => (
                Some(n.dnat_hits()?),
                Some(nftables::SynproxyStats::read(gateway)?),
            ),
            _ => (None, None),
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
        let entries_growth = nftables::conntrack_entries(gateway)? as i64 - entries_before as i64;
        let (nftables_connections, synproxy) = match front {
            Front::Nftables(n) => (
                Some(n.dnat_hits()? - hits_before.unwrap_or_default()),
                match setup {
                    Setup::NftablesSynproxy => Some(
                        nftables::SynproxyStats::read(gateway)?
                            .minus(&synproxy_before.unwrap_or_default()),
                    ),
                    _ => None,
                },
            ),
            _ => (None, None),
        };
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
            // No process or program of its own: the kernel's work beyond forwarding is
            // derived from the direct cells when the cells are aggregated.
            Front::None | Front::Nftables(_) => (0.0, None),
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
        if setup.is_ours() && gateway_own_s <= 0.0 {
            problems.push(format!(
                "{what}: the balancer's programs ran for {gateway_own_s} s"
            ));
        }
        let (backend_requests, backend_connections) = if count_backends {
            let after = self.nginx.statuses()?;
            self.check_backends(
                setup,
                &what,
                wrk.requests,
                &before_status,
                &after,
                &mut problems,
            )
        } else {
            (Vec::new(), None)
        };
        match nftables_connections {
            Some(n) => {
                let least = match mode {
                    Mode::NewConnection => wrk.requests,
                    Mode::KeepAlive => self.o.connections as u64,
                };
                if n < least {
                    problems.push(format!(
                        "{what}: nftables DNATed {n} connections for {} requests by {} wrk connections: it did not handle them all",
                        wrk.requests, self.o.connections
                    ));
                }
            }
            None if entries_growth > 0 => problems.push(format!(
                "{what}: the gateway namespace's conntrack table grew by {entries_growth} entries, where no rule needs conntrack"
            )),
            None => {}
        }
        progress(format!(
            "  {:<17} {:<15} {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  errors {}  gateway {:.3} s  softirq {:.2} s",
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
            nftables_connections,
            synproxy,
            conntrack_entries_growth: entries_growth,
            problems,
        })
    }

    /// Requests per backend from the nginx counters read before and after a cell, and
    /// the connections the backends accepted (the cookie's backend alone for cookie
    /// routing, all for the spread setups); what does not add up goes to `problems`.
    fn check_backends(
        &self,
        setup: Setup,
        what: &str,
        wrk_requests: u64,
        before: &[NginxStatus],
        after: &[NginxStatus],
        problems: &mut Vec<String>,
    ) -> (Vec<u64>, Option<u64>) {
        let mut requests = Vec::new();
        let mut connections = 0;
        for (i, (b, a)) in before.iter().zip(after).enumerate() {
            // The status page counts its own request: the reading after adds one.
            let n = a.requests.saturating_sub(b.requests).saturating_sub(1);
            requests.push(n);
            let accepted = a.accepts.saturating_sub(b.accepts).saturating_sub(1);
            let name = &self.t.backends[i].name;
            if setup.spreads() {
                connections += accepted;
                if n == 0 {
                    problems.push(format!(
                        "{what}: {name} answered no requests (they should spread over every backend)"
                    ));
                }
            } else if i == TARGET {
                connections = accepted;
                if n < wrk_requests {
                    problems.push(format!(
                        "{what}: {name} (named by the cookie) answered {n} requests, wrk counted {wrk_requests}"
                    ));
                }
            } else if n != 0 {
                problems.push(format!(
                    "{what}: {n} requests reached {name}, which the cookie does not name"
                ));
            }
        }
        let total: u64 = requests.iter().sum();
        if setup.spreads() && total < wrk_requests {
            problems.push(format!(
                "{what}: the backends answered {total} requests, wrk counted {wrk_requests}"
            ));
        }
        (requests, Some(connections))
    }
}

/// The balancer's CLI steps for the balancer cells: the service in cookie mode (each
/// backend's server id its name) or plain NAT.
pub(crate) fn balancer_steps(t: &Topology, cookie: bool) -> Vec<Vec<String>> {
    let service = service_arg();
    let mut steps = vec![{
        let mut a = vec!["attach".to_string()];
        for i in &t.gateway_ifaces {
            a.push("--iface".into());
            a.push(i.clone());
        }
        a
    }];
    let mut add = vec!["service".into(), "add".into(), service.clone()];
    if cookie {
        add.push("--cookie".into());
    }
    steps.push(add);
    for b in &t.backends {
        let mut add = vec![
            "backend".into(),
            "add".into(),
            service.clone(),
            b.endpoint(),
        ];
        if cookie {
            add.extend(["--server-id".into(), b.name.clone()]);
        }
        steps.push(add);
    }
    steps
}

pub(crate) fn haproxy_config(t: &Topology) -> HaproxyConfig {
    HaproxyConfig::new(
        vip(),
        t.backends
            .iter()
            .map(|b| (b.name.clone(), b.socket_addr()))
            .collect(),
    )
}

/// nftables DNAT over every backend for the VIP, with SYNPROXY in front or not (its
/// window scale the backends').
pub(crate) fn nftables_config(t: &Topology, synproxy: bool) -> Result<NftablesConfig> {
    let SocketAddr::V4(service) = vip() else {
        unreachable!("the VIP is IPv4")
    };
    Ok(NftablesConfig {
        service,
        backends: t
            .backends
            .iter()
            .map(|b| SocketAddrV4::new(b.addr, BACKEND_PORT))
            .collect(),
        synproxy,
        wscale: nftables::window_scale_of(&t.backends[0].ns)?,
        timestamps: false,
    })
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
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

pub(crate) fn aggregate(runs: &[CellRun], setup: Setup, mode: Mode) -> Option<Cell> {
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
        kernel_vs_direct_ms_per_1k: None,
        gateway_cpu_with_softirq_ms_per_1k: None,
        busy_ms_per_1k: per_1k(cpu.busy_s()),
        backend_connections_per_request: conns.map(|c| c as f64 / requests.max(1) as f64),
        problems: rs.iter().flat_map(|r| r.problems.clone()).collect(),
    })
}

pub(crate) fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    }
}

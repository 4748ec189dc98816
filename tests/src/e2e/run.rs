//! Running every setup and mode, and printing the table.

use super::*;

/// Runs every setup and mode on one fresh two-arm topology (see the module
/// documentation) and returns the figures; `progress` gets a line per step.
pub fn run_end_to_end(o: &E2eOptions, progress: &dyn Fn(String)) -> Result<E2eReport> {
    crate::harness::root::require_root()?;
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
        // The ratio of a figure of two setups' cells, where both have it.
        let over = |x: Option<&Cell>, y: Option<&Cell>, figure: fn(&Cell) -> Option<f64>| {
            ratio(x.and_then(figure), y.and_then(figure))
        };
        ratios.insert(
            m.name().to_string(),
            Ratios {
                rps_balancer_over_haproxy: over(b, h, |c| Some(c.requests_per_s)),
                rps_balancer_over_direct: over(b, d, |c| Some(c.requests_per_s)),
                cpu_own_balancer_over_haproxy: over(b, h, |c| Some(c.gateway_cpu_ms_per_1k)),
                cpu_with_softirq_balancer_over_haproxy: over(b, h, |c| {
                    c.gateway_cpu_with_softirq_ms_per_1k
                }),
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

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
    for p in ["wrk", "haproxy", "nginx", "bpftool", "nft"] {
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
    let steps = balancer_steps(&t, true);
    let nat_steps = balancer_steps(&t, false);
    let hconf = haproxy_config(&t);
    let dnat_conf = nftables_config(&t, false)?;
    let synproxy_conf = nftables_config(&t, true)?;
    let mut runs = Vec::new();
    let mut haproxy_text = hconf.render();
    let urls: BTreeMap<String, String>;
    {
        let mut bed = Bed {
            t: &mut t,
            nginx: &nginx,
            o,
        };
        urls = SETUPS
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
            // setups' packets too), cookie mode then plain NAT.
            for (setup, steps) in [(Setup::Balancer, &steps), (Setup::BalancerNat, &nat_steps)] {
                runs.extend(bed.ours_cells(setup, steps, round, progress)?);
            }
            // HAProxy: started for its cells, stopped after (its VIP address goes too).
            let h = Haproxy::start(&bed.t.gateway, &hconf)?;
            haproxy_text = h.text.clone();
            let front = Front::Haproxy(Box::new(h));
            for mode in modes {
                runs.push(bed.cell(Setup::Haproxy, mode, round, &front, progress)?);
            }
            drop(front);
            // nftables: loaded for its cells, the table deleted after (also on error).
            for (setup, conf) in [
                (Setup::NftablesDnat, &dnat_conf),
                (Setup::NftablesSynproxy, &synproxy_conf),
            ] {
                let front = Front::Nftables(Box::new(Nftables::load(&bed.t.gateway, conf)?));
                for mode in modes {
                    runs.push(bed.cell(setup, mode, round, &front, progress)?);
                }
            }
        }
    }
    drop(testsrv);
    let modes = [Mode::KeepAlive, Mode::NewConnection];
    let mut cells: Vec<Cell> = modes
        .iter()
        .flat_map(|m| SETUPS.iter().filter_map(|s| aggregate(&runs, *s, *m)))
        .collect();
    beyond_direct(&mut cells);
    let ratios = modes
        .iter()
        .map(|m| (m.name().to_string(), ratios_of(&cells, *m)))
        .collect();
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
            "one two-arm netns topology (client, gateway, {} backends on a bridge; all on this machine's {} CPUs), nginx on every backend answering every request with its name; wrk in the client namespace sends every request with the cookie `{COOKIE}` (primary be1), so every cookie-routed setup serves every request from be1 and the backend work is the same, while the plain ones spread the requests over every backend (each backend does less, the backends together the same); setups: `balancer` = our XDP balancer attached to the gateway's two interfaces, cookie-mode service at the VIP; `balancer_nat` = the same with a plain NAT service (no cookie mode: Maglev over the backends per connection, the client's handshake passed through); `haproxy` = HAProxy in the gateway namespace listening on the VIP (address on the gateway's lo while it runs), use-server on the cookie's segments; `nftables_dnat` = nftables in the gateway namespace, DNAT of the VIP's port to a backend chosen by `numgen random` per connection (conntrack translates the rest of the connection and the replies, which come back through the gateway by the backends' default route, so no SNAT); `nftables_synproxy` = the same DNAT behind nftables SYNPROXY (the client's handshake answered with a syncookie SYN-ACK by the gateway's kernel, the backend connection opened on the valid ACK; the backends' mss and window scale, no TCP timestamps, as ours in cookie mode); `direct` = wrk to be1's own address, routed by the gateway's kernel with nothing attached; `direct_testsrv` = as direct, to balancer-testsrv (thread per connection) on be1 port {TESTSRV_PORT}, first round only, to show the backend server's own limit. wrk latency is from the request's first byte written to its response read (in new-connection mode it excludes the client's handshake, which for our balancer is answered by XDP; the backend handshake it triggers is inside the latency).",
            o.backends,
            haproxy::cpus()
        ),
        wrk,
        urls,
        balancer_commands: cli_lines(&steps),
        balancer_nat_commands: cli_lines(&nat_steps),
        haproxy_config: haproxy_text,
        haproxy_version: version_of("haproxy", &["-v"]),
        nftables_dnat_rules: dnat_conf.render(),
        nftables_synproxy_rules: synproxy_conf.render(),
        nftables: format!(
            "`nft -f -` in the gateway namespace for the setup's cells, `nft delete table ip {}` after; for SYNPROXY also the VIP on the gateway's lo and, in the gateway namespace only (both are per-namespace sysctls), {}, restored after; the balancer is detached and HAProxy stopped meanwhile",
            nftables::TABLE,
            nftables::SYNPROXY_SYSCTLS
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        nftables_version: version_of("nft", &["--version"]),
        nginx_config: nginx.config_text.clone(),
        nginx_version: version_of("nginx", &["-v"]),
        wrk_version: version_of("wrk", &["--version"]),
        cpu: "client, gateway and backends share the machine's CPUs and kernel, so CPU is measured per cell as (a) system-wide /proc/stat deltas over the wrk run (tick-sampled at CONFIG_HZ; softirq is where XDP and the whole veth/TCP receive path run, for every namespace); (b) the gateway's own work: for `balancer` the run time of its XDP and TC programs from BPF run-time statistics (BPF_ENABLE_STATS held during its cells only; bpftool prog show run_time_ns), for `haproxy` its process utime+stime (/proc/<pid>/stat, all threads; tick accounting also charges softirq that ran while HAProxy was on the CPU to it), for `direct` zero, for nftables (d) below (its work is the kernel's, in softirq and, where a process's send runs the receive path, system time, with no meter of its own); gateway_cpu_ms_per_1k = (b) per 1,000 wrk requests; (c) softirq_vs_direct_ms_per_1k = the cell's softirq per 1,000 requests minus the direct cell's of the same mode (direct has the same client and backend stack work plus the gateway kernel's forwarding, which both balancers replace): it can be negative when the balancer's path is cheaper than kernel forwarding; (d) kernel_vs_direct_ms_per_1k = the same for softirq + system; gateway_cpu_with_softirq_ms_per_1k = (c) for ours (its programs run inside softirq), (b)+(c) for HAProxy and (d) for nftables. cpu_own ratio = (b) ours / (b) HAProxy; cpu_with_softirq ratio = the same with (c) included. Against nftables: cpu ratio = (b) ours (its programs' whole run time, the work that replaces forwarding included) / (d) nftables (only what it adds to forwarding), which leans towards nftables; cpu_vs_direct ratio = (d) ours / (d) nftables (negative where ours costs less than forwarding).".into(),
        ports: format!(
            "wrk's source ports: direct, haproxy and direct_testsrv {:?}, balancer {:?}, balancer_nat {:?}, nftables_dnat {:?}, nftables_synproxy {:?} (net.ipv4.ip_local_port_range in the client namespace, set before each cell): no setup meets TIME-WAIT state that another setup's connections with the same 4-tuple left: on the backend (the backend closes first and keeps TIME-WAIT 60 s; our balancer strips TCP timestamps, so the backend accepts a reused 4-tuple only with a higher ISN, which the client's ISN for the VIP does not give after a direct connection from the same port), in the client (wrk often closes first, leaving TIME-WAIT for client port -> VIP:80, after which connect() has to search for a free port: seen as nftables DNAT at a tenth of its new-connection rate on HAProxy's ports), in the gateway's conntrack table (nftables, TIME_WAIT 120 s) or its own stack (HAProxy's client connections); HAProxy and direct_testsrv share direct's range because none of their 4-tuples meet (HAProxy reaches the VIP from the client and the backends from the gateway's address, direct be1:8080, direct_testsrv be1:8081)",
            port_range(Setup::Direct),
            port_range(Setup::Balancer),
            port_range(Setup::BalancerNat),
            port_range(Setup::NftablesDnat),
            port_range(Setup::NftablesSynproxy)
        ),
        checks: "each backend's nginx stub_status request counter is read before and after every cell (from inside its namespace; the reading itself is discounted): for the cookie-routed setups the cookie's primary (be1) must have answered at least the requests wrk counted and every other backend none, for the spread ones (balancer_nat, nftables_*) the backends together at least the requests wrk counted and every backend some; the DNAT rules' counters must show at least one connection per request in the nftables cells with a new connection per request and one per wrk connection with keep-alive, and the gateway namespace's conntrack table must not grow in the other cells (conntrack runs there only while the nftables rules are loaded, so the direct baseline does not pay for it); the nftables_synproxy cells also record SYNPROXY's counters (cookie SYN-ACKs sent, cookies checked); wrk must report no socket errors and no non-2xx answers; requests, requests/s, p50, p99 must be positive, and our programs' run time too. backend_connections_per_request = connections be1 (the spread setups: all backends) accepted per request (1 in new-connection mode for direct, ours and nftables: wrk really reconnects; HAProxy keeps its server-side connections alive and reuses them).".into(),
        order: format!(
            "{} round(s); in each: direct (keep-alive, new connection), [direct_testsrv in round 1], balancer (attached, cells, detached), balancer_nat (attached, cells, detached), haproxy (started, cells, stopped), nftables_dnat (rules loaded, cells, table deleted), nftables_synproxy (the same); the cell figures are medians (rates, latencies) or sums (requests, CPU) over the rounds",
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

/// `balancer --instance <instance> ...` for each CLI step.
fn cli_lines(steps: &[Vec<String>]) -> Vec<String> {
    steps
        .iter()
        .map(|s| format!("balancer --instance <instance> {}", shell_quote(s)))
        .collect()
}

/// Fills in the figures beyond the direct cell's of the same mode (see the module
/// documentation): softirq and softirq + system, and the gateway CPU that includes them.
fn beyond_direct(cells: &mut [Cell]) {
    let kernel = |c: &Cell| c.softirq_ms_per_1k + c.system_ms_per_1k();
    for m in [Mode::KeepAlive, Mode::NewConnection] {
        let Some((d_softirq, d_kernel)) = cells
            .iter()
            .find(|c| c.setup == Setup::Direct && c.mode == m)
            .map(|c| (c.softirq_ms_per_1k, kernel(c)))
        else {
            continue;
        };
        for c in cells
            .iter_mut()
            .filter(|c| c.mode == m && !matches!(c.setup, Setup::Direct | Setup::DirectTestsrv))
        {
            let extra = c.softirq_ms_per_1k - d_softirq;
            let extra_kernel = kernel(c) - d_kernel;
            c.softirq_vs_direct_ms_per_1k = Some(extra);
            c.kernel_vs_direct_ms_per_1k = Some(extra_kernel);
            if c.setup.is_nftables() {
                // Its own work is the kernel's beyond forwarding.
                c.gateway_cpu_ms_per_1k = extra_kernel;
                c.gateway_cpu_s = extra_kernel * c.requests as f64 / 1e6;
            }
            c.gateway_cpu_with_softirq_ms_per_1k = Some(match c.setup {
                // The programs run in softirq: already inside `extra`.
                Setup::Balancer | Setup::BalancerNat => extra,
                Setup::Haproxy => c.gateway_cpu_ms_per_1k + extra,
                _ => extra_kernel,
            });
        }
    }
}

/// The ratios of one mode's cells.
fn ratios_of(cells: &[Cell], m: Mode) -> Ratios {
    let get = |s: Setup| cells.iter().find(|c| c.setup == s && c.mode == m);
    let (b, n, h, d) = (
        get(Setup::Balancer),
        get(Setup::BalancerNat),
        get(Setup::Haproxy),
        get(Setup::Direct),
    );
    let (nd, ns) = (get(Setup::NftablesDnat), get(Setup::NftablesSynproxy));
    // The ratio of a figure of two setups' cells, where both have it.
    let over = |x: Option<&Cell>, y: Option<&Cell>, figure: fn(&Cell) -> Option<f64>| {
        ratio(x.and_then(figure), y.and_then(figure))
    };
    let rps = |c: &Cell| Some(c.requests_per_s);
    let own = |c: &Cell| Some(c.gateway_cpu_ms_per_1k);
    let kernel = |c: &Cell| c.kernel_vs_direct_ms_per_1k;
    Ratios {
        rps_balancer_over_haproxy: over(b, h, rps),
        rps_balancer_over_direct: over(b, d, rps),
        cpu_own_balancer_over_haproxy: over(b, h, own),
        cpu_with_softirq_balancer_over_haproxy: over(b, h, |c| {
            c.gateway_cpu_with_softirq_ms_per_1k
        }),
        rps_balancer_nat_over_nftables_dnat: over(n, nd, rps),
        rps_balancer_over_nftables_synproxy: over(b, ns, rps),
        cpu_balancer_nat_over_nftables_dnat: over(n, nd, own),
        cpu_balancer_over_nftables_synproxy: over(b, ns, own),
        cpu_vs_direct_balancer_nat_over_nftables_dnat: over(n, nd, kernel),
        cpu_vs_direct_balancer_over_nftables_synproxy: over(b, ns, kernel),
    }
}

/// The cells and ratios as a table on stdout.
pub fn print_table(r: &E2eReport) {
    println!(
        "\nend to end: wrk -t{} -c{} for {:.0} s per cell, {} round(s), {} CPUs shared by client, gateway and backends",
        r.threads, r.connections, r.duration_s, r.rounds, r.cpus
    );
    println!(
        "{:<17} {:<15} {:>10} {:>9} {:>9} {:>7} {:>11} {:>11} {:>11} {:>11} {:>11}",
        "setup",
        "mode",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "gw ms/1k",
        "gw+sirq/1k",
        "sirq ms/1k",
        "kern-d ms/1k",
        "busy ms/1k"
    );
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    for c in &r.cells {
        println!(
            "{:<17} {:<15} {:>10.0} {:>9.3} {:>9.3} {:>7} {:>11.3} {:>11} {:>11.3} {:>11} {:>11.3}",
            c.setup.name(),
            c.mode.name(),
            c.requests_per_s,
            c.p50_ms,
            c.p99_ms,
            c.errors,
            c.gateway_cpu_ms_per_1k,
            opt(c.gateway_cpu_with_softirq_ms_per_1k),
            c.softirq_ms_per_1k,
            opt(c.kernel_vs_direct_ms_per_1k),
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
        println!(
            "{mode}: req/s ours NAT/nftables DNAT {}, ours cookie/nftables SYNPROXY {}; gateway CPU per request ours (run time) / nftables (softirq+system beyond direct): NAT/DNAT {}, cookie/SYNPROXY {}; both beyond direct: {}, {}",
            opt(x.rps_balancer_nat_over_nftables_dnat),
            opt(x.rps_balancer_over_nftables_synproxy),
            opt(x.cpu_balancer_nat_over_nftables_dnat),
            opt(x.cpu_balancer_over_nftables_synproxy),
            opt(x.cpu_vs_direct_balancer_nat_over_nftables_dnat),
            opt(x.cpu_vs_direct_balancer_over_nftables_synproxy)
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

//! The demo's steps, in order.

use super::*;

pub(crate) fn run(args: &Args, outcome: &mut Outcome) -> Result<()> {
    for (what, p) in [("--balancer", &args.balancer), ("--testsrv", &args.testsrv)] {
        if !p.is_file() {
            bail!("{what} {}: no such file", p.display());
        }
    }
    if args.sessions == 0 {
        bail!("--sessions must be at least 1");
    }
    balancer_tests::harness::root::require_root()?;
    let started = Instant::now();
    println!(
        "demo: building the two-arm topology: client, gateway, lan bridge, {BACKENDS} backends"
    );
    let mut guard = Teardown {
        topology: Some(Topology::build(Arms::Two, BACKENDS, args.balancer.clone())?),
        daemon: None,
        plain: Vec::new(),
    };
    let t = guard.topology.as_mut().expect("topology");
    println!(
        "demo: namespaces: client {} ({}), gateway {}, lan {}, backends {}",
        t.client.name(),
        topology::CLIENT_ADDR,
        t.gateway.name(),
        t.lan.name(),
        t.backends
            .iter()
            .map(|b| format!("{} {} ({})", b.name, b.ns.name(), b.addr))
            .collect::<Vec<_>>()
            .join(", ")
    );
    interrupted()?;
    t.start_session_servers(&args.testsrv)?;
    println!(
        "demo: app servers {} on port {BACKEND_PORT}: each keeps its sessions' counters and replicates every update to a partner before answering",
        t.backends
            .iter()
            .map(|b| b.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    interrupted()?;
    guard.plain = start_plain_servers(t, &args.testsrv)?;
    let t = guard.topology.as_mut().expect("topology");
    println!(
        "demo: plain test servers on port {NAT_BACKEND_PORT} of each backend (for the NAT service)"
    );
    interrupted()?;

    let config = demo_config(t);
    let d = Daemon::start(t, &config)?;
    println!(
        "\ndemo: started `balancer daemon --config {}`:",
        d.config.display()
    );
    print_indented(&config);
    let d = guard.daemon.insert(d);
    let t = guard.topology.as_ref().expect("topology");
    wait_healthy(d, 2 * BACKENDS, Duration::from_secs(10))?;
    println!();
    show(d, &["backend", "list"])?;
    interrupted()?;

    // --- 1. NAT -----------------------------------------------------------------------
    println!(
        "demo: NAT: {} HTTP requests from {} to {}, a fresh connection each; spread over backends:",
        args.requests,
        topology::CLIENT_ADDR,
        nat_vip()
    );
    nat_requests(t, args.requests, outcome)?;
    interrupted()?;

    // --- 2. Sessions ------------------------------------------------------------------
    let opts = LoadOptions {
        clients: args.sessions,
        think: Duration::from_millis(20),
        ..LoadOptions::default()
    };
    println!(
        "\ndemo: sessions: {} clients, each with its own session, update their counter through {} (GET /session, a fresh connection each, cookie JSESSIONID=<session>!<primary>!<secondary>)",
        opts.clients,
        topology::vip()
    );
    let load = Load::start(&t.client, topology::vip(), &opts)?;
    sleep(Duration::from_millis(1500))?;
    let Some((victim, Some(secondary))) = busiest_primary(&load.live()) else {
        bail!("no session with a secondary after 1.5 s");
    };
    wait_pair(d, &victim, &secondary, Duration::from_secs(10))?;
    let before = load.live();
    print_sessions(&before);
    show(d, &["pairs"])?;
    interrupted()?;

    // --- 3. Failover ------------------------------------------------------------------
    let vi = t.backend_index(&victim).context("victim index")?;
    let victim_ep = t.backends[vi].endpoint();
    let held = before
        .iter()
        .flatten()
        .filter(|l| l.cookie.primary == victim)
        .count();
    println!(
        "demo: killing {victim}'s app server (SIGKILL), primary of {held} sessions, replicated on {secondary}"
    );
    let log_offset = d.log_len();
    let (kill, kill_wall) = (Instant::now(), SystemTime::now());
    guard.topology.as_mut().expect("topology").stop_server(vi)?;
    // Until one of its sessions is served by the secondary, then 1.5 s more.
    loop {
        let served = load
            .live()
            .iter()
            .flatten()
            .any(|l| l.takeovers > 0 && l.backend == secondary);
        if served {
            break;
        }
        if kill.elapsed() > Duration::from_secs(15) {
            bail!(
                "no session of {victim} served by {secondary} 15 s after the kill; daemon log:\n{}",
                d.log_since(log_offset)
            );
        }
        sleep(Duration::from_millis(10))?;
    }
    sleep(Duration::from_millis(1500))?;
    let after = load.live();
    let logs = load.stop();
    let n = totals(&logs);
    outcome.session_updates = n.answered;

    println!("\ndemo: daemon log since the kill:");
    for line in d.log_since(log_offset).lines() {
        let plain = strip_ansi(line);
        if ["health", "failover", "backend", "down"]
            .iter()
            .any(|w| plain.contains(w))
        {
            println!("  {}", short_log_line(line));
        }
    }
    println!();
    show(d, &["backend", "list"])?;
    print_continuity(&before, &after, &victim, &logs, kill);

    let mut problems = check_sessions(&logs);
    problems.extend(check_takeovers(&logs, &victim, kill));
    outcome.session_problems = problems.len();
    let times = daemon_times(&d.log(), &victim_ep, kill_wall);
    let since = |t: Option<SystemTime>| {
        t.and_then(|t| t.duration_since(kill_wall).ok())
            .map_or("-".to_string(), ms)
    };
    let first = failover_time(&logs, &victim, kill);
    println!(
        "demo: failover time: kill -> daemon marks {victim} down {}, -> failover rewrite logged {}, -> first request served by {secondary} {}",
        since(times.down),
        since(times.rewrite),
        first.map_or("-".to_string(), ms)
    );
    println!(
        "demo: {} session updates answered, {} attempts failed around the kill and were retried with their request id ({} timed out after {:?}); {}",
        n.answered,
        n.failed,
        n.timed_out,
        opts.attempt_timeout,
        if problems.is_empty() {
            "every counter went on without a gap or a repeat".to_string()
        } else {
            format!("{} problems:", problems.len())
        }
    );
    for p in problems.iter().take(10) {
        println!("  {p}");
    }
    interrupted()?;

    println!("\ndemo: balancer stats (excerpt)");
    let stats = d.ctl(&["stats"])?;
    for line in String::from_utf8_lossy(&stats.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let wanted = [
            "new_flows",
            "syncookies_sent",
            "bindings_started",
            "bindings_completed",
            "bindings_refused",
            "bindings_timed_out",
            "cookie_pairs_reported",
        ];
        if wanted.contains(&name) {
            println!("  {line}");
        }
    }
    println!(
        "\ndemo: ran {:.1} s before the teardown",
        started.elapsed().as_secs_f64()
    );
    drop(guard);
    Ok(())
}

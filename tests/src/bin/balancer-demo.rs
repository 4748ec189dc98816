//! `balancer-demo`: the balancer end to end in network namespaces, run by the daemon.
//!
//! Builds the two-arm topology (client, gateway, three backends be1..be3), each backend
//! running the replicated app server on port 8080 and a plain test server on port 8081,
//! and starts `balancer daemon` on the gateway with a configuration that has two services
//! (printed): a cookie-mode service at 198.18.100.1:80 with the app servers, and a plain
//! NAT service at 198.18.100.2:80 with the plain servers. (Separate backend ports keep the
//! two services' connections from ever sharing a 4-tuple on a backend.) Then:
//!
//! 1. NAT: HTTP requests on fresh connections to 198.18.100.2:80, and how they spread.
//! 2. Sessions: clients, each with its own session, update their session counter in a
//!    loop through 198.18.100.1:80 (a fresh connection per request); the table shows each
//!    session pinned to the primary its cookie names, and the replication pairs the
//!    daemon learned from those cookies.
//! 3. Failover: the app server holding the most sessions as primary is killed; the
//!    daemon's log lines about it, `balancer backend list` with the rewrite, the same
//!    sessions continuing on the secondary with their counters (before and after), and
//!    the failover time.
//!
//! Everything is torn down at the end, also on failure and on Ctrl-C / SIGTERM. The last
//! line is always `demo: <requests> requests, <backends> backends, <errors> errors`, where
//! requests counts NAT requests and session updates, and errors the NAT requests not
//! answered plus the session updates lost, repeated or misrouted; the exit status is
//! non-zero if there were errors.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context, Result};
use balancer_tests::{
    daemon::Daemon,
    http,
    load::{
        busiest_primary, check_sessions, check_takeovers, daemon_times, failover_time, sessions_of,
        strip_ansi, totals, wait_healthy, wait_pair, ClientLog, Live, Load, LoadOptions,
    },
    topology::{self, Arms, Topology, BACKEND_PORT, SERVICE_PORT, VIP},
};
use clap::Parser;

const BACKENDS: usize = 3;
/// The plain NAT service, next to the cookie-mode one at `topology::VIP`, and the port of
/// its backends' (plain) test servers.
const NAT_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 2);
const NAT_BACKEND_PORT: u16 = 8081;

#[derive(Parser)]
#[command(
    name = "balancer-demo",
    about = "End-to-end demo of the balancer and its daemon in network namespaces"
)]
struct Args {
    /// The `balancer` CLI binary.
    #[arg(long)]
    balancer: PathBuf,
    /// The `balancer-testsrv` binary (the backends' replicated app server).
    #[arg(long)]
    testsrv: PathBuf,
    /// Number of NAT requests to send, each on a fresh connection.
    #[arg(long, default_value_t = 300)]
    requests: usize,
    /// Number of session clients.
    #[arg(long, default_value_t = 12)]
    sessions: usize,
}

/// Set by SIGINT/SIGTERM: stop sending and tear down.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn set_signal_handler(handler: libc::sighandler_t) {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installing a handler that only stores to an atomic (async-signal-safe),
        // or SIG_IGN.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

fn interrupted() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d`, waking early (with an error) on Ctrl-C.
fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        interrupted()?;
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    interrupted()
}

/// Owns the daemon and the topology; on drop, ignores further SIGINT/SIGTERM (ignored
/// signals stay ignored in the `balancer detach` and `ip netns delete` children, so a
/// second Ctrl-C cannot cut the teardown short), stops the daemon, tears the topology
/// down, and checks nothing is left.
struct Teardown {
    topology: Option<Topology>,
    daemon: Option<Daemon>,
    /// The NAT service's plain test servers (the topology kills its own servers).
    plain: Vec<Child>,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        let Some(t) = self.topology.take() else {
            return;
        };
        set_signal_handler(libc::SIG_IGN);
        println!("demo: tearing down");
        let daemon_dir = self.daemon.as_ref().map(|d| d.dir.clone());
        // The daemon first (SIGTERM; the data plane stays attached), then the topology
        // detaches the instance and deletes the namespaces.
        drop(self.daemon.take());
        for c in &mut self.plain {
            let _ = c.kill();
            let _ = c.wait();
        }
        let pin_dir = t.pin_dir();
        let mut namespaces: Vec<String> = vec![
            t.client.name().into(),
            t.gateway.name().into(),
            t.lan.name().into(),
        ];
        namespaces.extend(t.backends.iter().map(|b| b.ns.name().to_string()));
        drop(t);
        let left: Vec<&String> = namespaces
            .iter()
            .filter(|n| Path::new("/run/netns").join(n).exists())
            .collect();
        if !left.is_empty() {
            eprintln!("demo: warning: namespaces left behind: {left:?}");
        }
        if pin_dir.exists() {
            eprintln!("demo: warning: pins left behind in {}", pin_dir.display());
        }
        if let Some(dir) = daemon_dir.filter(|d| d.exists()) {
            eprintln!(
                "demo: warning: daemon files left behind in {}",
                dir.display()
            );
        }
    }
}

#[derive(Default)]
struct Outcome {
    /// NAT requests sent, and answers per backend name.
    nat_sent: usize,
    nat_answered: BTreeMap<String, usize>,
    /// Session updates answered, and problems (lost, repeated, misrouted updates).
    session_updates: usize,
    session_problems: usize,
}

impl Outcome {
    fn requests(&self) -> usize {
        self.nat_sent + self.session_updates
    }

    fn errors(&self) -> usize {
        let nat_ok: usize = self.nat_answered.values().sum();
        self.nat_sent - nat_ok + self.session_problems
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    set_signal_handler(on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
    let mut outcome = Outcome::default();
    let result = run(&args, &mut outcome);
    // The topology is gone by now.
    let errors = outcome.errors();
    let code = match &result {
        Ok(()) if errors == 0 => ExitCode::SUCCESS,
        Ok(()) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo: error: {e:#}");
            if STOP.load(Ordering::SeqCst) {
                println!(
                    "demo: interrupted after {} NAT requests and {} session updates",
                    outcome.nat_sent, outcome.session_updates
                );
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    };
    println!(
        "demo: {} requests, {BACKENDS} backends, {errors} errors",
        outcome.requests()
    );
    code
}

fn nat_vip() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(NAT_VIP, SERVICE_PORT))
}

/// The daemon's configuration for the demo, with comments saying what each part does.
fn demo_config(t: &Topology) -> String {
    let ifaces: Vec<String> = t
        .gateway_ifaces
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect();
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"[daemon]
instance = "{}"
interfaces = [{}]     # client side, server side
failover_hold_down = "10s"          # a recovered primary waits this long before it gets its sessions back
pair_sample = 4                     # learn replication pairs from 1 in 4 session cookies

[health]                            # the daemon's defaults, except an HTTP check
kind = "http"
path = "/health"
interval = "250ms"
timeout = "200ms"
rise = 2
fall = 2

[[service]]                         # sessions pinned to the primary named in JSESSIONID
address = "{VIP}:{SERVICE_PORT}"
mode = "cookie"
"#,
        t.instance(),
        ifaces.join(", ")
    );
    for b in &t.backends {
        let _ = writeln!(
            s,
            "  [[service.backend]]\n  address = \"{}\"\n  server_id = \"{}\"             # no `secondary`: learned from the cookies\n",
            b.endpoint(),
            b.name
        );
    }
    let _ = writeln!(
        s,
        "[[service]]                         # plain L4 NAT, Maglev spread, plain servers\naddress = \"{NAT_VIP}:{SERVICE_PORT}\"\nmode = \"nat\"\n"
    );
    for b in &t.backends {
        let _ = writeln!(
            s,
            "  [[service.backend]]\n  address = \"{}:{NAT_BACKEND_PORT}\"\n",
            b.addr
        );
    }
    s.trim_end().to_string() + "\n"
}

/// Sends `n` GET / requests to the NAT service from the client, a fresh connection each.
fn nat_requests(t: &Topology, n: usize, outcome: &mut Outcome) -> Result<BTreeMap<String, usize>> {
    let (answered, errors) = t
        .client
        .run(move || {
            let mut answered: BTreeMap<String, usize> = BTreeMap::new();
            let mut errors = Vec::new();
            for _ in 0..n {
                if STOP.load(Ordering::SeqCst) {
                    break;
                }
                match http::get(nat_vip(), "/") {
                    Ok(r) if r.status == 200 => *answered.entry(r.text()).or_default() += 1,
                    Ok(r) => errors.push(format!("HTTP status {}", r.status)),
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
            (answered, errors)
        })
        .context("running the NAT client")?;
    let sent: usize = answered.values().sum::<usize>() + errors.len();
    outcome.nat_sent += sent;
    for (k, v) in &answered {
        *outcome.nat_answered.entry(k.clone()).or_default() += v;
    }
    for b in &t.backends {
        let count = answered.get(&b.name).copied().unwrap_or(0);
        println!(
            "  {:<4} {:<18} {count:>6}  {:>5.1}%",
            b.name,
            format!("{}:{NAT_BACKEND_PORT}", b.addr),
            100.0 * count as f64 / sent.max(1) as f64
        );
    }
    for (name, count) in &answered {
        if t.backend_index(name).is_none() {
            println!("  unexpected answer {name:?}: {count}");
        }
    }
    if !errors.is_empty() {
        println!("  {} failed requests, first ones:", errors.len());
        for e in errors.iter().take(5) {
            println!("    {e}");
        }
    }
    Ok(answered)
}

/// Prints command output indented.
fn print_indented(text: &str) {
    for line in text.lines() {
        println!("  {line}");
    }
}

/// Runs the CLI against the daemon's instance and prints its output.
fn show(d: &Daemon, args: &[&str]) -> Result<()> {
    let out = d.ctl(args)?;
    if !out.status.success() {
        bail!(
            "balancer {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    println!("demo: balancer {}", args.join(" "));
    print_indented(&String::from_utf8_lossy(&out.stdout));
    Ok(())
}

/// A daemon log line shortened for the demo: time of day, level, message (without the
/// module path).
fn short_log_line(line: &str) -> String {
    let plain = strip_ansi(line);
    let mut words = plain.split_whitespace();
    let (Some(ts), Some(level)) = (words.next(), words.next()) else {
        return plain;
    };
    let mut rest: Vec<&str> = words.collect();
    if rest
        .first()
        .is_some_and(|w| w.contains("::") && w.ends_with(':'))
    {
        rest.remove(0);
    }
    let time = ts
        .split_once('T')
        .map_or(ts, |(_, t)| t.trim_end_matches('Z'));
    let time = time.get(..12).unwrap_or(time);
    format!("{time} {level:<5} {}", rest.join(" "))
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn run(args: &Args, outcome: &mut Outcome) -> Result<()> {
    for (what, p) in [("--balancer", &args.balancer), ("--testsrv", &args.testsrv)] {
        if !p.is_file() {
            bail!("{what} {}: no such file", p.display());
        }
    }
    if args.sessions == 0 {
        bail!("--sessions must be at least 1");
    }
    topology::require_root()?;
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

/// Starts a plain test server (named like the backend) on `NAT_BACKEND_PORT` in every
/// backend namespace, in its own process group (a Ctrl-C reaches the demo, which tears
/// down in order), and waits until each accepts connections.
fn start_plain_servers(t: &Topology, testsrv: &Path) -> Result<Vec<Child>> {
    let mut children = Vec::new();
    let result = (|| -> Result<()> {
        for b in &t.backends {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", b.ns.name()])
                .arg(testsrv)
                .args(["--listen", &format!("{}:{NAT_BACKEND_PORT}", b.addr)])
                .args(["--name", &b.name])
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            children.push(cmd.spawn().context("starting a plain test server")?);
        }
        for b in &t.backends {
            let addr = SocketAddr::V4(SocketAddrV4::new(b.addr, NAT_BACKEND_PORT));
            let deadline = Instant::now() + Duration::from_secs(10);
            while !b.ns.run(move || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })? {
                if Instant::now() > deadline {
                    bail!(
                        "the plain test server of {} does not listen on {addr}",
                        b.name
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(children),
        Err(e) => {
            for c in &mut children {
                let _ = c.kill();
                let _ = c.wait();
            }
            Err(e)
        }
    }
}

/// The session table while the load runs: session, primary, secondary, counter.
fn print_sessions(live: &[Option<Live>]) {
    println!("demo: sessions pinned to their primaries (after 1.5 s):");
    println!(
        "  {:<6} {:<18} {:<8} {:<10} {:>7}",
        "CLIENT", "SESSION", "PRIMARY", "SECONDARY", "COUNTER"
    );
    for (i, l) in live.iter().enumerate() {
        let Some(l) = l else {
            println!("  c{i:<5} (no answer yet)");
            continue;
        };
        println!(
            "  c{i:<5} {:<18} {:<8} {:<10} {:>7}",
            l.cookie.session,
            l.cookie.primary,
            l.cookie.secondary.as_deref().unwrap_or("NONE"),
            l.counter
        );
    }
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for l in live.iter().flatten() {
        *per.entry(l.cookie.primary.as_str()).or_default() += 1;
    }
    println!(
        "  sessions per primary: {}",
        per.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// The same sessions before the kill and at the end: who served them and their counters.
fn print_continuity(
    before: &[Option<Live>],
    after: &[Option<Live>],
    victim: &str,
    logs: &[ClientLog],
    kill: Instant,
) {
    let taken: Vec<usize> = sessions_of(logs, victim, kill)
        .iter()
        .map(|l| l.client)
        .collect();
    println!("demo: the sessions before the kill and now:");
    println!(
        "  {:<6} {:<18} {:<20} {:<17} EVENTS AFTER THE KILL",
        "CLIENT", "SESSION", "SERVED BY", "COUNTER"
    );
    for (i, (b, a)) in before.iter().zip(after).enumerate() {
        let (Some(b), Some(a)) = (b, a) else {
            continue;
        };
        let mut events: BTreeMap<&str, usize> = BTreeMap::new();
        for ans in logs[i].answers.iter().filter(|x| x.at >= kill) {
            *events.entry(ans.event.as_str()).or_default() += 1;
        }
        let events = events
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mark = if taken.contains(&i) { " *" } else { "" };
        println!(
            "  c{i:<5} {:<18} {:<20} {:<17} {events}{mark}",
            a.cookie.session,
            format!("{} -> {}", b.cookie.primary, a.backend),
            format!("{} -> {}", b.counter, a.counter),
        );
    }
    println!("  (* a session of {victim}, taken over by its secondary)");
}

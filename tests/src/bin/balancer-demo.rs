//! `balancer-demo`: the balancer end to end in network namespaces.
//!
//! Builds the two-arm topology (client, gateway, three backends be1..be3), attaches the
//! balancer to the gateway, adds the service 198.18.100.1:80 with the backends on port
//! 8080, sends real HTTP requests from the client (a fresh connection each), shows how
//! they spread over the backends and what the counters say, and tears everything down,
//! also on failure and on Ctrl-C / SIGTERM. The last line is always
//! `demo: <requests> requests, <backends> backends, <errors> errors`, where every request
//! not answered by a backend counts as an error; the exit status is non-zero if there
//! were errors.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{bail, Context, Result};
use balancer_tests::{
    http,
    topology::{self, Arms, Topology},
};
use clap::Parser;

const BACKENDS: usize = 3;

#[derive(Parser)]
#[command(
    name = "balancer-demo",
    about = "End-to-end demo of the balancer in network namespaces"
)]
struct Args {
    /// The `balancer` CLI binary.
    #[arg(long)]
    balancer: PathBuf,
    /// The `balancer-testsrv` binary (the backends' HTTP server).
    #[arg(long)]
    testsrv: PathBuf,
    /// Number of HTTP requests to send, each on a fresh connection.
    #[arg(long, default_value_t = 300)]
    requests: usize,
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

/// Owns the topology; on drop, ignores further SIGINT/SIGTERM (ignored signals stay
/// ignored in the `balancer detach` and `ip netns delete` children, so a second Ctrl-C
/// cannot cut the teardown short), tears down, and checks nothing is left.
struct Teardown(Option<Topology>);

impl Drop for Teardown {
    fn drop(&mut self) {
        let Some(t) = self.0.take() else { return };
        set_signal_handler(libc::SIG_IGN);
        println!("demo: tearing down");
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
    }
}

#[derive(Default)]
struct Outcome {
    /// Answers per backend name.
    answered: BTreeMap<String, usize>,
    errors: Vec<String>,
}

impl Outcome {
    fn ok(&self) -> usize {
        self.answered.values().sum()
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    set_signal_handler(on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
    let mut outcome = Outcome::default();
    let result = run(&args, &mut outcome);
    // The topology is gone by now.
    let ok = outcome.ok();
    let errors = args.requests.saturating_sub(ok);
    let code = match &result {
        Ok(()) if errors == 0 => ExitCode::SUCCESS,
        Ok(()) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo: error: {e:#}");
            if STOP.load(Ordering::SeqCst) {
                println!(
                    "demo: interrupted: {ok} of {} requests answered, {} failed",
                    args.requests,
                    outcome.errors.len()
                );
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    };
    println!(
        "demo: {} requests, {BACKENDS} backends, {errors} errors",
        args.requests
    );
    code
}

fn run(args: &Args, outcome: &mut Outcome) -> Result<()> {
    for (what, p) in [("--balancer", &args.balancer), ("--testsrv", &args.testsrv)] {
        if !p.is_file() {
            bail!("{what} {}: no such file", p.display());
        }
    }
    topology::require_root()?;
    println!(
        "demo: building the two-arm topology: client, gateway, lan bridge, {BACKENDS} backends"
    );
    let mut guard = Teardown(Some(Topology::build(
        Arms::Two,
        BACKENDS,
        args.balancer.clone(),
    )?));
    let t = guard.0.as_mut().expect("topology");
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
    t.attach()?;
    println!(
        "demo: attached balancer instance '{}' to {} (native XDP)",
        t.instance(),
        t.gateway_ifaces.join(", ")
    );
    interrupted()?;
    t.start_servers(&args.testsrv)?;
    interrupted()?;
    t.add_service_with_backends()?;
    println!(
        "demo: service {} -> {}",
        topology::service_arg(),
        t.backends
            .iter()
            .map(|b| b.endpoint())
            .collect::<Vec<_>>()
            .join(", ")
    );
    interrupted()?;

    let n = args.requests;
    println!(
        "demo: sending {n} HTTP requests from {} to {}, a fresh connection each",
        topology::CLIENT_ADDR,
        topology::vip()
    );
    let result = t
        .client
        .run(move || {
            let mut o = Outcome::default();
            for _ in 0..n {
                if STOP.load(Ordering::SeqCst) {
                    break;
                }
                match http::get(topology::vip(), "/") {
                    Ok(r) if r.status == 200 => *o.answered.entry(r.text()).or_default() += 1,
                    Ok(r) => o.errors.push(format!("HTTP status {}", r.status)),
                    Err(e) => o.errors.push(format!("{e:#}")),
                }
            }
            o
        })
        .context("running the client")?;
    *outcome = result;
    interrupted()?;

    println!("demo: spread over backends:");
    for b in &t.backends {
        let count = outcome.answered.get(&b.name).copied().unwrap_or(0);
        println!(
            "  {:<4} {:<18} {count:>6}  {:>5.1}%",
            b.name,
            b.endpoint(),
            100.0 * count as f64 / n.max(1) as f64
        );
    }
    for (name, count) in &outcome.answered {
        if t.backend_index(name).is_none() {
            println!("  unexpected answer {name:?}: {count}");
        }
    }
    if !outcome.errors.is_empty() {
        println!(
            "demo: {} failed requests, first ones:",
            outcome.errors.len()
        );
        for e in outcome.errors.iter().take(5) {
            println!("  {e}");
        }
    }

    println!("\ndemo: balancer stats");
    print!(
        "{}",
        String::from_utf8_lossy(&t.balancer(&["stats"])?.stdout)
    );
    println!("\ndemo: balancer backend list");
    print!(
        "{}",
        String::from_utf8_lossy(&t.balancer(&["backend", "list"])?.stdout)
    );
    println!();
    drop(guard);
    Ok(())
}

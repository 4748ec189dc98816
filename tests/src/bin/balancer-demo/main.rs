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

mod output;
mod run;
mod setup;
mod traffic;
use output::*;
use run::*;
use setup::*;
use traffic::*;

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

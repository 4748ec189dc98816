//! Failover time: kill of a primary's app server -> first request of one of its sessions
//! served by its secondary, end to end on network namespaces, measured as the failover
//! test does it (`balancer_tests::load::measure_failover`): a fresh two-arm topology with
//! three replicated app servers, `balancer daemon` with the cookie service, 50 clients
//! each updating its own session through the VIP (new connection per request, retries
//! with the same request id, 1 s per attempt), SIGKILL of the busiest primary after
//! 1.5 s plus a random part of the health-check interval. Once with the daemon's default
//! settings (no `[health]` section), once with faster checks; several runs each, with
//! min/median/max. The daemon's own steps (backend noted down, rewrite logged) are read
//! from its log.

use std::{path::Path, time::Duration};

use anyhow::{ensure, Context, Result};
use balancer_tests::{
    load::{measure_failover_with, minimal_config, FailoverOptions, Front},
    topology::Topology,
};
use balancer_user::daemon::config::DaemonConfig;
use serde::Serialize;

use crate::{Args, Target};

/// The failover-time target: every run with the daemon's default settings below this.
const TARGET_FAILOVER_MS: f64 = 1000.0;
/// The faster checks measured next to the defaults.
const FAST_HEALTH: (&str, u64, u64, u32, u32) = ("tcp", 100, 80, 2, 2);

#[derive(Serialize)]
pub struct FailoverReport {
    metric: String,
    method: String,
    client: FailoverClient,
    settings: Vec<FailoverSetting>,
    notes: Vec<String>,
}

#[derive(Serialize)]
struct FailoverClient {
    clients: usize,
    attempt_timeout_ms: u64,
    retry_pause_ms: u64,
    load_before_kill_ms: u64,
}

/// The health settings a run used, as the daemon resolved them from its configuration.
#[derive(Serialize)]
struct HealthUsed {
    kind: String,
    interval_ms: f64,
    timeout_ms: f64,
    rise: u32,
    fall: u32,
    failover_hold_down_s: f64,
    pair_sample: u32,
}

#[derive(Serialize, Default)]
struct Spread {
    min: f64,
    median: f64,
    max: f64,
    values: Vec<f64>,
}

impl Spread {
    fn of(values: Vec<f64>) -> Spread {
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        if sorted.is_empty() {
            return Spread::default();
        }
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Spread {
            min: sorted[0],
            median,
            max: sorted[n - 1],
            values,
        }
    }
}

#[derive(Serialize)]
struct FailoverRunResult {
    victim: String,
    secondary: String,
    victim_sessions: usize,
    failover_ms: f64,
    daemon_down_ms: Option<f64>,
    rewrite_logged_ms: Option<f64>,
    requests_answered: usize,
    attempts_failed: u64,
    attempts_timed_out: u64,
    /// Session continuity problems (none expected).
    problems: Vec<String>,
}

#[derive(Serialize)]
struct FailoverSetting {
    name: String,
    /// `balancer daemon` or `haproxy`.
    front: String,
    /// HAProxy's configuration as run (the first run's; empty for the daemon, whose
    /// settings are `health_section`).
    front_config: String,
    /// The `[health]` section written into the daemon's configuration (empty: none, the
    /// daemon's defaults).
    health_section: String,
    health: HealthUsed,
    runs: Vec<FailoverRunResult>,
    /// Runs that could not be measured, with why.
    errors: Vec<String>,
    /// Kill -> first request of a session of the killed primary served by its secondary.
    failover_ms: Spread,
    /// Kill -> the daemon noted the backend down (its log), or HAProxy logged it DOWN.
    daemon_down_ms: Spread,
    /// Kill -> the daemon logged the rewrite (written to the map just before).
    rewrite_logged_ms: Spread,
}

/// Runs the failover measurement with the daemon's defaults and with faster checks.
pub fn measure(args: &Args, progress: &dyn Fn(String)) -> Result<FailoverReport> {
    let (balancer, testsrv) = crate::binaries(args)?;
    let runs = args.failover_runs.unwrap_or(if args.quick { 3 } else { 5 });
    ensure!(runs > 0, "--failover-runs must be positive");
    let (kind, interval, timeout, rise, fall) = FAST_HEALTH;
    let fast = format!(
        "kind = \"{kind}\"\ninterval = \"{interval}ms\"\ntimeout = \"{timeout}ms\"\nrise = {rise}\nfall = {fall}\n"
    );
    let o = FailoverOptions::default();
    let mut settings = Vec::new();
    for (name, health, front) in [
        ("daemon defaults", None, FrontKind::Daemon),
        ("fast checks", Some(fast.as_str()), FrontKind::Daemon),
        ("HAProxy, daemon defaults", None, FrontKind::Haproxy),
    ] {
        settings.push(measure_setting(
            name, health, front, runs, &balancer, &testsrv, &o, progress,
        )?);
    }
    Ok(FailoverReport {
        metric: "failover time: SIGKILL of a primary's app server -> first request of one of its sessions served by its secondary (client-side, ms)".into(),
        method: format!(
            "per run: fresh two-arm netns topology, 3 replicated app servers (balancer-testsrv --server-id, partner replication), balancer daemon with one cookie-mode service and the settings below; {} clients each updating its own session through the VIP on a new connection per request, X-Request-Id on each, a failed or {} ms-silent attempt retried after {} ms with the same id; the busiest primary is killed after {} ms of load plus a random part of the check interval; the run ends {} ms after the first request served by the secondary and checks every session (consecutive counters, one takeover per session of the killed primary)",
            o.load.clients,
            o.load.attempt_timeout.as_millis(),
            o.load.retry_pause.as_millis(),
            o.before.as_millis(),
            o.after.as_millis()
        ),
        client: FailoverClient {
            clients: o.load.clients,
            attempt_timeout_ms: o.load.attempt_timeout.as_millis() as u64,
            retry_pause_ms: o.load.retry_pause.as_millis() as u64,
            load_before_kill_ms: o.before.as_millis() as u64,
        },
        settings,
        notes: vec![
            "The HAProxy rows: the same topology, app servers, clients and kill, with HAProxy (Debian's) in the gateway namespace on the VIP instead of the daemon and XDP: `use-server` on the cookie's primary segment, then on its secondary segment (HAProxy skips a rule whose server is down), TCP checks with the daemon's default interval, timeout, rise and fall, `timeout connect` = the check timeout and `retries 0` so a request to the dead server is answered 503 at once and retried by the client; its configuration is in `front_config`. Its daemon_down_ms is when HAProxy logged the server DOWN; it has no rewrite step.".into(),
            "daemon_down_ms and rewrite_logged_ms come from the daemon's log timestamps (same clock): the health transition, and the line logged after the rewrite and the backend state were written. The data plane honours the rewrite from the moment it is written, which can be a little before the log line.".into(),
            "failover_ms is what a client sees: the first answer to a session of the killed primary from its secondary. It includes the daemon's detection and rewrite, and the clients' own retries: an attempt the data plane bound to the dead backend before the rewrite is refused (the backend host's RST reaches the client at once), or, when that host still has a TIME-WAIT socket for the reused 4-tuple, answered with an old ACK that the data plane resets back to it (bind_stale_acks) so the client's retransmission binds again, where the rewrite then applies (binds_redone); an attempt that gets no answer within 1 s is counted in attempts_timed_out.".into(),
        ],
    })
}

/// What stands in front of the app servers in a run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FrontKind {
    /// `balancer daemon` with the cookie service.
    Daemon,
    /// HAProxy routing on the cookie's primary, then secondary segment, with the daemon's
    /// health settings (`balancer_tests::load::haproxy_failover_config`).
    Haproxy,
}

#[allow(clippy::too_many_arguments)]
fn measure_setting(
    name: &str,
    health: Option<&str>,
    front_kind: FrontKind,
    runs: usize,
    balancer: &Path,
    testsrv: &Path,
    o: &FailoverOptions,
    progress: &dyn Fn(String),
) -> Result<FailoverSetting> {
    let health_section = health.unwrap_or_default().to_string();
    // What the daemon makes of it: the resolved settings of the service.
    let probe = DaemonConfig::parse(&format!(
        "[daemon]\ninterfaces = [\"lo\"]\n{}\n[[service]]\naddress = \"198.18.100.1:80\"\nmode = \"cookie\"\n  [[service.backend]]\n  address = \"198.18.1.10:8080\"\n  server_id = \"be1\"\n",
        health.map(|h| format!("[health]\n{h}")).unwrap_or_default()
    ))
    .context("resolving the health settings")?;
    let h = &probe.services[0].health;
    let used = HealthUsed {
        kind: format!("{:?}", h.kind).to_lowercase(),
        interval_ms: h.interval.as_secs_f64() * 1e3,
        timeout_ms: h.timeout.as_secs_f64() * 1e3,
        rise: h.rise,
        fall: h.fall,
        failover_hold_down_s: probe.daemon.failover_hold_down.as_secs_f64(),
        pair_sample: probe.daemon.pair_sample,
    };
    let opts = FailoverOptions {
        jitter: h.interval,
        ..o.clone()
    };
    let mut results = Vec::new();
    let mut errors = Vec::new();
    let mut front_config = String::new();
    for i in 0..runs {
        progress(format!(
            "failover, {name} ({} {:.0} ms / {:.0} ms, fall {}): run {}/{runs}",
            used.kind,
            used.interval_ms,
            used.timeout_ms,
            used.fall,
            i + 1
        ));
        let config = |t: &Topology| minimal_config(t, health);
        let front = match front_kind {
            FrontKind::Daemon => Front::Daemon { config: &config },
            FrontKind::Haproxy => Front::Haproxy { health: h.clone() },
        };
        match measure_failover_with(&front, balancer, testsrv, &opts) {
            Ok(r) => {
                if front_config.is_empty() && front_kind == FrontKind::Haproxy {
                    front_config = r.front_config.clone();
                }
                // Milliseconds, to 0.1 ms.
                let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
                progress(format!(
                    "  killed {} ({} sessions): down {:.0} ms, rewrite {:.0} ms, first served by {} {:.0} ms; {} attempts failed ({} timed out){}",
                    r.victim,
                    r.victim_sessions,
                    r.down.map_or(f64::NAN, ms),
                    r.rewrite.map_or(f64::NAN, ms),
                    r.secondary,
                    ms(r.failover),
                    r.totals.failed,
                    r.totals.timed_out,
                    if r.problems.is_empty() {
                        String::new()
                    } else {
                        format!("; {} session problems: {}", r.problems.len(), r.problems[0])
                    }
                ));
                results.push(FailoverRunResult {
                    victim: r.victim,
                    secondary: r.secondary,
                    victim_sessions: r.victim_sessions,
                    failover_ms: ms(r.failover),
                    daemon_down_ms: r.down.map(ms),
                    rewrite_logged_ms: r.rewrite.map(ms),
                    requests_answered: r.totals.answered,
                    attempts_failed: r.totals.failed,
                    attempts_timed_out: r.totals.timed_out,
                    problems: r.problems.into_iter().take(10).collect(),
                });
            }
            Err(e) => {
                progress(format!("  run failed: {e:#}"));
                errors.push(format!("{e:#}"));
            }
        }
    }
    let spread = |f: &dyn Fn(&FailoverRunResult) -> Option<f64>| {
        Spread::of(results.iter().filter_map(f).collect())
    };
    Ok(FailoverSetting {
        name: name.into(),
        front: match front_kind {
            FrontKind::Daemon => "balancer daemon",
            FrontKind::Haproxy => "haproxy",
        }
        .into(),
        front_config,
        health_section,
        health: used,
        failover_ms: spread(&|r| Some(r.failover_ms)),
        daemon_down_ms: spread(&|r| r.daemon_down_ms),
        rewrite_logged_ms: spread(&|r| r.rewrite_logged_ms),
        runs: results,
        errors,
    })
}

/// Every run with the default settings under the target (checked on the worst run).
pub fn target(f: &FailoverReport) -> Option<Target> {
    let defaults = f.settings.first()?;
    if defaults.runs.is_empty() {
        return None;
    }
    let mut t = Target::below(
        "failover_ms with the daemon's default settings, worst of the runs",
        TARGET_FAILOVER_MS,
        defaults.failover_ms.max,
        "ms",
    );
    // A run that failed, or whose sessions broke, does not meet it either.
    t.met &= defaults.errors.is_empty() && defaults.runs.iter().all(|r| r.problems.is_empty());
    Some(t)
}

pub fn print(f: &FailoverReport) {
    println!(
        "
{}",
        f.metric
    );
    println!(
        "{}
",
        f.method
    );
    println!(
        "{:<26} {:<28} {:>4} {:>22} {:>22} {:>22}",
        "settings",
        "health",
        "runs",
        "failover min/med/max",
        "down min/med/max",
        "rewrite min/med/max"
    );
    let mmm = |s: &Spread| {
        if s.values.is_empty() {
            "-".to_string()
        } else {
            format!("{:.0}/{:.0}/{:.0}", s.min, s.median, s.max)
        }
    };
    for s in &f.settings {
        let h = &s.health;
        println!(
            "{:<26} {:<28} {:>4} {:>22} {:>22} {:>22}",
            s.name,
            format!(
                "{} {:.0}ms/{:.0}ms rise {} fall {}",
                h.kind, h.interval_ms, h.timeout_ms, h.rise, h.fall
            ),
            s.runs.len(),
            mmm(&s.failover_ms),
            mmm(&s.daemon_down_ms),
            mmm(&s.rewrite_logged_ms)
        );
        for e in &s.errors {
            println!("  failed run: {e}");
        }
        for r in &s.runs {
            for p in r.problems.iter().take(3) {
                println!("  session problem (killed {}): {p}", r.victim);
            }
        }
    }
    for n in &f.notes {
        println!("- {n}");
    }
    if let Some(t) = target(f) {
        println!(
            "failover with default settings: worst {:.0} ms -> target < {TARGET_FAILOVER_MS:.0} ms {}",
            t.measured,
            if t.met { "MET" } else { "NOT MET" }
        );
    }
}

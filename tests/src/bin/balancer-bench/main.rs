//! `balancer-bench`: what `cargo xtask bench` measures, in one run on one machine.
//!
//! Parts (each in its own module; `--only`/`--skip` choose):
//! - `dataplane`: per-packet cost of every data-plane path with BPF_PROG_TEST_RUN, as
//!   ratios to the XDP_PASS baseline of the same run.
//! - `failover`: kill of a primary's app server -> first request of one of its sessions
//!   served by its secondary, end to end on network namespaces.
//!
//! Results go to a JSON file (`--out`), and, with `--markdown`, to a Markdown report.

mod dataplane;
mod failover;
mod stats;

use std::{
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, ValueEnum};
use serde::Serialize;

use crate::{
    dataplane::{DataplaneOptions, DataplaneReport},
    failover::FailoverReport,
    stats::{machine, Machine},
};

#[derive(Parser, Debug)]
#[command(
    about = "Measure the balancer: data-plane cost per packet (BPF_PROG_TEST_RUN) and failover time (needs root)"
)]
struct Args {
    /// Fewer calls and runs (a few minutes in all, for CI).
    #[arg(long)]
    quick: bool,
    /// Where to write the JSON results (directories are created).
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
    /// Run only these parts (repeat or comma-separate; default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
    /// Skip these parts.
    #[arg(long, value_enum, value_delimiter = ',')]
    skip: Vec<Part>,
    /// Interleaved rounds of the data-plane paths (default 10, quick 4).
    #[arg(long)]
    rounds: Option<usize>,
    /// Single-shot calls per path and round (default 10000, quick 2500).
    #[arg(long)]
    calls: Option<usize>,
    /// `repeat` of the amortised runs of the pass-through paths.
    #[arg(long, default_value_t = 10_000)]
    repeat: u32,
    /// Failover runs per setting (default 5, quick 3).
    #[arg(long)]
    failover_runs: Option<usize>,
    /// The `balancer` binary for the end-to-end parts (default: next to this one).
    #[arg(long)]
    balancer: Option<PathBuf>,
    /// The `balancer-testsrv` binary for the end-to-end parts (default: next to this one).
    #[arg(long)]
    testsrv: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
enum Part {
    Dataplane,
    Failover,
}

impl Args {
    fn runs(&self, part: Part) -> bool {
        (self.only.is_empty() || self.only.contains(&part)) && !self.skip.contains(&part)
    }
}

/// One performance target and whether this run met it.
#[derive(Serialize, Clone)]
pub struct Target {
    /// What is compared.
    pub metric: String,
    /// The measured value must be at most (`<=`), below (`<`) or at least (`>=`) `limit`.
    pub comparison: &'static str,
    pub limit: f64,
    pub measured: f64,
    pub unit: &'static str,
    pub met: bool,
}

impl Target {
    pub fn at_most(metric: &str, limit: f64, measured: f64, unit: &'static str) -> Target {
        Target {
            metric: metric.into(),
            comparison: "<=",
            limit,
            measured,
            unit,
            met: measured <= limit,
        }
    }

    pub fn below(metric: &str, limit: f64, measured: f64, unit: &'static str) -> Target {
        Target {
            metric: metric.into(),
            comparison: "<",
            limit,
            measured,
            unit,
            met: measured < limit,
        }
    }

    pub fn at_least(metric: &str, limit: f64, measured: f64, unit: &'static str) -> Target {
        Target {
            metric: metric.into(),
            comparison: ">=",
            limit,
            measured,
            unit,
            met: measured >= limit,
        }
    }

    fn verdict(&self) -> &'static str {
        if self.met {
            "MET"
        } else {
            "NOT MET"
        }
    }
}

#[derive(Serialize)]
struct Report {
    machine: Machine,
    /// The command line of this run.
    command: String,
    quick: bool,
    parts: Vec<Part>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dataplane: Option<DataplaneReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failover: Option<FailoverReport>,
    /// Every target of the parts run, in the order of the parts.
    targets: Vec<Target>,
    all_targets_met: bool,
    seconds: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("balancer-bench needs root (BPF_PROG_TEST_RUN, bpffs pins, network namespaces)");
    }
    let parts: Vec<Part> = Part::value_variants()
        .iter()
        .copied()
        .filter(|p| args.runs(*p))
        .collect();
    ensure!(!parts.is_empty(), "--only and --skip leave nothing to run");
    let machine = machine();
    let started = Instant::now();
    let progress = |msg: String| eprintln!("[{:6.1}s] {msg}", started.elapsed().as_secs_f64());

    let dataplane = if args.runs(Part::Dataplane) {
        let o = DataplaneOptions {
            rounds: args.rounds.unwrap_or(if args.quick { 4 } else { 10 }),
            calls: args
                .calls
                .unwrap_or(if args.quick { 2_500 } else { 10_000 }),
            repeat: args.repeat,
            repeat_calls: if args.quick { 8 } else { 30 },
        };
        let r = dataplane::measure(&o, &machine, &progress)?;
        dataplane::print(&r, &machine);
        Some(r)
    } else {
        None
    };
    let failover = if args.runs(Part::Failover) {
        let f = failover::measure(&args, &progress)?;
        failover::print(&f);
        Some(f)
    } else {
        None
    };

    let mut targets = Vec::new();
    if let Some(d) = &dataplane {
        targets.extend(d.targets.iter().cloned());
    }
    if let Some(t) = failover.as_ref().and_then(failover::target) {
        targets.push(t);
    }
    println!("\ntargets:");
    for t in &targets {
        println!(
            "  {:<92} {:>9.2} {} {:<9} {}",
            t.metric,
            t.measured,
            t.comparison,
            format!("{}{}", t.limit, t.unit),
            t.verdict()
        );
    }
    let report = Report {
        machine,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        quick: args.quick,
        parts,
        dataplane,
        failover,
        all_targets_met: targets.iter().all(|t| t.met),
        targets,
        seconds: started.elapsed().as_secs_f64(),
    };
    write_report(&args.out, &report)
}

fn write_report(out: &Path, report: &impl Serialize) -> Result<()> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(out, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    println!("results written to {}", out.display());
    Ok(())
}

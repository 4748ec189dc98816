//! `balancer-bench`: what `cargo xtask bench` measures, in one run on one machine.
//!
//! Parts (each in its own module; `--only`/`--skip` choose):
//! - `dataplane`: per-packet cost of every data-plane path with BPF_PROG_TEST_RUN, as
//!   ratios to the XDP_PASS baseline of the same run.
//! - `scale`: the per-packet cost with 1k vs 1M flow-table entries and 4 vs 4,096
//!   backends; memory per flow entry and of every map.
//! - `end_to_end`: wrk through our balancer, HAProxy and directly, on the netns topology.
//! - `failover`: kill of a primary's app server -> first request of one of its sessions
//!   served by its secondary, end to end on network namespaces, ours and HAProxy's.
//! - `splice_throughput`: goodput of a spliced connection over a 50 ms path (and with 1%
//!   loss) against a direct connection over the same path.
//!
//! Results go to a JSON file (`--out`), and, with `--markdown`, to a Markdown report.

mod dataplane;
mod end_to_end;
mod failover;
mod markdown;
mod plot;
mod scale;
mod splice_throughput;
mod spliced_options;
mod stats;

use std::{
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{ensure, Context, Result};
use balancer_tests::{e2e::E2eReport, topology};
use clap::{Parser, ValueEnum};
use serde::Serialize;

use crate::{
    dataplane::{DataplaneOptions, DataplaneReport},
    failover::FailoverReport,
    scale::ScaleReport,
    splice_throughput::SpliceThroughputReport,
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
    /// MiB of each download and upload of the splice-throughput part (default 32, quick 8).
    #[arg(long)]
    splice_mib: Option<usize>,
    /// Congestion control of the backends in the splice-throughput part (default: the
    /// namespace's, which is the host's), e.g. `cubic` for a controlled comparison.
    #[arg(long)]
    splice_backend_cc: Option<String>,
    /// Rounds per case of the splice-throughput part (default 5, quick 2).
    #[arg(long)]
    splice_rounds: Option<usize>,
    /// Also write the results as Markdown here (e.g. BENCHMARKS.md).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Where the plot images go (default: next to the Markdown file); the Markdown links
    /// them relative to itself.
    #[arg(long, requires = "markdown")]
    plots: Option<PathBuf>,
    /// Hand-written analysis of the targets to include in the Markdown.
    #[arg(long, requires = "markdown")]
    analysis: Option<PathBuf>,
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
    Scale,
    EndToEnd,
    Failover,
    SpliceThroughput,
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
    end_to_end: Option<E2eReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failover: Option<FailoverReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scale: Option<ScaleReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    splice_throughput: Option<SpliceThroughputReport>,
    /// Every target of the parts run, in the order of the parts.
    targets: Vec<Target>,
    all_targets_met: bool,
    seconds: f64,
}

/// Measures one part of the benchmark and prints its report, if the part is to run.
fn run_part<R>(
    runs: bool,
    measure: impl FnOnce() -> Result<R>,
    print: impl FnOnce(&R),
) -> Result<Option<R>> {
    if !runs {
        return Ok(None);
    }
    let r = measure()?;
    print(&r);
    Ok(Some(r))
}

fn main() -> Result<()> {
    let args = Args::parse();
    balancer_tests::harness::root::require_root()?;
    let parts: Vec<Part> = Part::value_variants()
        .iter()
        .copied()
        .filter(|p| args.runs(*p))
        .collect();
    ensure!(!parts.is_empty(), "--only and --skip leave nothing to run");
    let machine = machine();
    let started = Instant::now();
    let progress = |msg: String| eprintln!("[{:6.1}s] {msg}", started.elapsed().as_secs_f64());

    let dataplane_options = DataplaneOptions {
        rounds: args.rounds.unwrap_or(if args.quick { 4 } else { 10 }),
        calls: args
            .calls
            .unwrap_or(if args.quick { 2_500 } else { 10_000 }),
        repeat: args.repeat,
        repeat_calls: if args.quick { 8 } else { 30 },
    };
    let dataplane = run_part(
        args.runs(Part::Dataplane),
        || dataplane::measure(&dataplane_options, &machine, &progress),
        |r| dataplane::print(r, &machine),
    )?;
    let scale = run_part(
        args.runs(Part::Scale),
        || scale::measure(&scale::ScaleOptions::new(args.quick), &machine, &progress),
        scale::print,
    )?;
    let end_to_end = run_part(
        args.runs(Part::EndToEnd),
        || end_to_end::measure(&args, &progress),
        end_to_end::print,
    )?;
    let failover = run_part(
        args.runs(Part::Failover),
        || failover::measure(&args, &progress),
        failover::print,
    )?;
    let splice_throughput = run_part(
        args.runs(Part::SpliceThroughput),
        || splice_throughput::measure(&args, &progress),
        splice_throughput::print,
    )?;

    let mut targets = Vec::new();
    if let Some(d) = &dataplane {
        targets.extend(d.targets.iter().cloned());
    }
    if let Some(s) = &scale {
        targets.extend(s.targets.iter().cloned());
    }
    if let Some(e) = &end_to_end {
        targets.extend(end_to_end::targets(e));
    }
    if let Some(t) = failover.as_ref().and_then(failover::target) {
        targets.push(t);
    }
    if let Some(s) = &splice_throughput {
        targets.extend(splice_throughput::targets(s));
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
        command: std::env::args()
            .map(|a| from_cwd(&a))
            .collect::<Vec<_>>()
            .join(" "),
        quick: args.quick,
        parts,
        dataplane,
        scale,
        end_to_end,
        failover,
        splice_throughput,
        all_targets_met: targets.iter().all(|t| t.met),
        targets,
        seconds: started.elapsed().as_secs_f64(),
    };
    let mut json = serde_json::to_value(&report)?;
    json["date"] = utc_now().into();
    write_report(&args.out, &json)?;
    if let Some(md_path) = &args.markdown {
        write_markdown(&args, md_path, &json, report.end_to_end.as_ref())?;
    }
    Ok(())
}

/// BENCHMARKS.md and its plot.
fn write_markdown(
    args: &Args,
    md_path: &Path,
    json: &serde_json::Value,
    end_to_end: Option<&E2eReport>,
) -> Result<()> {
    let analysis = match &args.analysis {
        Some(p) => Some(fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let md_dir = md_path.parent().unwrap_or(Path::new(""));
    let mut plot_rel = None;
    if let Some(e) = end_to_end {
        let dir = args.plots.as_deref().unwrap_or(md_dir);
        let file = dir.join("end-to-end.svg");
        let subtitle = format!(
            "{}, wrk -t{} -c{}, {} s per cell x {} round(s); kernel {}, {} CPUs shared by clients, gateway and backends",
            json["date"].as_str().unwrap_or(""),
            e.threads,
            e.connections,
            e.duration_s,
            e.rounds,
            json["machine"]["kernel"].as_str().unwrap_or(""),
            e.cpus
        );
        markdown::write(&file, &end_to_end::plot(e, &subtitle))?;
        println!("plot written to {}", file.display());
        plot_rel = Some(relative_to(&file, md_dir));
    }
    let md = markdown::render(
        json,
        &markdown::Links {
            plot: plot_rel.as_deref(),
            json: Path::new(&from_cwd(&args.out.to_string_lossy())),
        },
        analysis.as_deref(),
    );
    markdown::write(md_path, &md)?;
    println!("Markdown written to {}", md_path.display());
    Ok(())
}

/// `arg` with the current directory's prefix taken off, so the command line in a
/// committed report reads the same on every machine.
fn from_cwd(arg: &str) -> String {
    let Ok(cwd) = std::env::current_dir() else {
        return arg.to_string();
    };
    match Path::new(arg).strip_prefix(&cwd) {
        Ok(rel) if Path::new(arg).is_absolute() => rel.to_string_lossy().into_owned(),
        _ => arg.to_string(),
    }
}

/// `file` as a path relative to `dir` (both as given, made absolute first), for a link.
fn relative_to(file: &Path, dir: &Path) -> String {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (file, dir) = (abs(file), abs(dir));
    let common = file
        .components()
        .zip(dir.components())
        .take_while(|(a, b)| a == b)
        .count();
    let ups = dir.components().count() - common;
    let mut rel = PathBuf::new();
    for _ in 0..ups {
        rel.push("..");
    }
    rel.extend(file.components().skip(common));
    rel.to_string_lossy().into_owned()
}

/// The `balancer` and `balancer-testsrv` binaries of the end-to-end parts: as given, or
/// the workspace's built ones.
fn binaries(args: &Args) -> Result<(PathBuf, PathBuf)> {
    let balancer = match &args.balancer {
        Some(p) => p.clone(),
        None => topology::balancer_bin()?,
    };
    let testsrv = match &args.testsrv {
        Some(p) => p.clone(),
        None => topology::built_bin("balancer-testsrv")?,
    };
    Ok((balancer, testsrv))
}

/// The current time in UTC, to the minute.
fn utc_now() -> String {
    // SAFETY: time(NULL) and gmtime_r into a zeroed struct have no other preconditions.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::gmtime_r(&t, &mut tm);
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min
        )
    }
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

//! Project tasks, run as `cargo xtask <task>` (alias in .cargo/config.toml).
//!
//! Every task that needs the toolchain or the kernel runs setup first when a
//! prerequisite is missing, so a fresh Debian 12 machine only needs `cargo xtask test`.

mod package;
mod run;
mod setup;
mod summary;
mod tasks;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, test and run the XDP balancer"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install all prerequisites, skipping those present (Debian packages, nightly
    /// rust-src, bpf-linker, bpffs). Must run as root.
    Setup,
    /// Release build of all binaries (runs setup first if something is missing).
    Build,
    /// Build, then run the end-to-end demo; arguments after `--` go to balancer-demo.
    Demo {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The full test suite, as CI runs it: fmt, clippy, unit and integration tests.
    /// Arguments after `--` go to the final `cargo test` (e.g. a test name filter).
    /// Needs root, except with `--unit`.
    Test {
        /// Only what needs no root: fmt, clippy and the unit tests.
        #[arg(long)]
        unit: bool,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build, then run the benchmarks: target/bench/results.json, and BENCHMARKS.md
    /// (full run) or target/bench/BENCHMARKS.md (quick run). Arguments after `--` go to
    /// balancer-bench (e.g. `-- --only dataplane`).
    Bench {
        /// A few minutes, for CI: fewer calls and runs, same parts and checks.
        #[arg(long)]
        quick: bool,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build, then make the Debian package (target/package/balancer_<version>_<arch>.deb
    /// unless --out says otherwise): binary, systemd unit, example configuration, man
    /// pages, shell completions. Prints the package's path last.
    Package {
        /// Use the release binary already built (`cargo xtask build`).
        #[arg(long)]
        no_build: bool,
        /// Directory for the .deb.
        #[arg(long, value_name = "DIR")]
        out: Option<std::path::PathBuf>,
    },
    /// Build, then fuzz the XDP program through BPF_PROG_TEST_RUN (balancer-fuzz);
    /// exits non-zero on a finding. Needs root.
    Fuzz {
        /// Frames to run (default 1,000,000).
        #[arg(long)]
        packets: Option<u64>,
        /// Seed of the generator (default: random, printed).
        #[arg(long)]
        seed: Option<u64>,
    },
}

/// Prints errors as one `error: what failed: why` line; anyhow's default `Debug` report
/// would add a backtrace whenever RUST_BACKTRACE is set, burying the message.
fn main() -> ExitCode {
    match run_task(Cli::parse().task) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_task(task: Task) -> Result<ExitCode> {
    match task {
        Task::Setup => setup::setup()?,
        Task::Build => tasks::build()?,
        Task::Demo { args } => return tasks::demo(&args),
        Task::Test { unit: true, args } => tasks::test_unit(&args)?,
        Task::Test { unit: false, args } => tasks::test(&args)?,
        Task::Bench { quick, args } => return tasks::bench(quick, &args),
        Task::Fuzz { packets, seed } => return tasks::fuzz(packets, seed),
        Task::Package { no_build, out } => tasks::package(no_build, out)?,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything after the first `--` is passed on verbatim, including a second `--`
    /// (so `cargo xtask test -- -- --nocapture` reaches the test harness).
    #[test]
    fn passes_trailing_args_verbatim() {
        let cli = Cli::try_parse_from(["xtask", "test", "--", "filter", "--", "--nocapture"])
            .expect("valid command line");
        let Task::Test { args, .. } = cli.task else {
            panic!("parsed as another task");
        };
        assert_eq!(args, ["filter", "--", "--nocapture"]);
    }

    /// `--unit` picks the tier that needs no root; without it, the full run.
    #[test]
    fn unit_flag_selects_the_unprivileged_tier() {
        let unit = Cli::try_parse_from(["xtask", "test", "--unit"]).expect("valid command line");
        assert!(matches!(unit.task, Task::Test { unit: true, .. }));
        let full = Cli::try_parse_from(["xtask", "test"]).expect("valid command line");
        assert!(matches!(full.task, Task::Test { unit: false, .. }));
    }
}

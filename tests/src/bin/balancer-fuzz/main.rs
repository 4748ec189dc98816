//! Fuzzes the loaded XDP program through BPF_PROG_TEST_RUN (needs root): frames built by
//! mutating valid templates are run one at a time through the real program, pinned in a
//! private network namespace with a NAT TCP, a NAT UDP, a backend-less and a cookie-mode
//! service, and every output is checked (verdict, counters, where forwarded frames go,
//! their rewrite and checksums). See `balancer_tests::fuzz` for the bed, the mutations
//! and the invariants.
//!
//! The full run (one million packets; a few minutes):
//!
//! ```sh
//! cargo xtask fuzz --packets 1000000            # builds, then runs this binary
//! cargo xtask fuzz --packets 1000000 --seed 42  # a given seed (default: a random one, printed)
//! ```
//!
//! or directly, after `cargo build --release -p balancer-tests`:
//! `sudo ./target/release/balancer-fuzz --packets 1000000 --seed 42`. The test suite runs
//! a smaller count (`cargo test --release -p balancer-tests --test program fuzz::`).
//!
//! Prints throughput, the verdict histogram, counter totals and every finding with its
//! seed, iteration, template, mutations and the frames in hex; exits 1 if there is a
//! finding that is not a known bug (`balancer_tests::fuzz::KNOWN_BUGS`), 2 on a setup
//! error. A run with the same seed generates the same frames as long as the data plane
//! answers the same way (its clocks, syncookie windows and timeouts, can change that).

use std::process::ExitCode;

use balancer_tests::fuzz::{self, FuzzConfig};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Fuzz the XDP data plane through BPF_PROG_TEST_RUN (needs root)")]
struct Args {
    /// Frames to generate (the truncation sweep of every template comes first).
    #[arg(long, default_value_t = 1_000_000)]
    packets: u64,
    /// Seed of the generator (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Empty the flow table every this many packets.
    #[arg(long, default_value_t = 25_000)]
    epoch: u64,
    /// Flow-table capacity of the bed.
    #[arg(long, default_value_t = 8192)]
    flow_capacity: u32,
    /// Stop after this many findings.
    #[arg(long, default_value_t = 20)]
    max_failures: usize,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
    /// Skip the pause past the bind timeout after the first epoch (3.2 s) that lets
    /// retransmissions meet bindings that timed out.
    #[arg(long)]
    no_aging: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(fuzz::random_seed);
    let cfg = FuzzConfig {
        packets: args.packets,
        seed,
        epoch: args.epoch,
        flow_capacity: args.flow_capacity,
        max_failures: args.max_failures,
        progress: !args.quiet,
        age_bindings: !args.no_aging,
    };
    println!(
        "balancer-fuzz: seed {seed}, {} packets (reproduce with --seed {seed})",
        cfg.packets
    );
    match fuzz::run(&cfg) {
        Ok(report) => {
            println!("{report}");
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                println!(
                    "FAILED: reproduce with --seed {seed} --packets {}",
                    cfg.packets
                );
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

//! Fuzzing of the loaded XDP program through `BPF_PROG_TEST_RUN` (see
//! `balancer_tests::fuzz` for the bed, the mutations and the invariants), in the suite's
//! size: a fixed seed and a random one (printed, so a failure can be replayed with
//! `cargo xtask fuzz --seed S --packets N`). The full run is `cargo xtask fuzz --packets
//! 1000000`. Needs root: every test panics with a clear message otherwise.
//!
//! Findings matched by `balancer_tests::fuzz::KNOWN_BUGS` are reported but do not fail
//! the run; `known_bugs_still_reproduce` checks that each of them still happens, so the
//! list is emptied as the bugs get fixed.

use balancer_tests::{
    fuzz::{self, FuzzConfig, FIXED_BUGS, KNOWN_BUGS},
    testrun::require_root,
};

/// Packets of the fixed-seed run (a few seconds in release builds).
const FIXED_PACKETS: u64 = 200_000;
const FIXED_SEED: u64 = 0x5eed_0001;
/// Packets of the random-seed run.
const RANDOM_PACKETS: u64 = 100_000;

fn fuzz_run(seed: u64, packets: u64) {
    require_root();
    let cfg = FuzzConfig {
        packets,
        seed,
        ..Default::default()
    };
    println!("fuzz: seed {seed}, {packets} packets (replay: cargo xtask fuzz --seed {seed} --packets {packets})");
    let report = fuzz::run(&cfg).expect("fuzz bed");
    println!("{report}");
    assert_eq!(report.packets, packets, "the run stopped early");
    assert!(
        report.ok(),
        "fuzz seed {seed}: {} new findings (see above); replay with `cargo xtask fuzz --seed {seed} --packets {packets}`",
        report.new_failures()
    );
    // The run must reach the deep paths, or it proves little.
    for path in [
        "nat rewrite to backend",
        "nat rewrite to client",
        "syncookie SYN-ACK",
        "SYN to backend (binding)",
        "kept segment to backend",
        "spliced rewrite to backend",
        "spliced rewrite to client",
    ] {
        assert!(
            report.paths.get(path).copied().unwrap_or(0) > 0,
            "no output of kind {path:?} was checked: {:?}",
            report.paths
        );
    }
}

#[test]
fn fuzz_fixed_seed() {
    fuzz_run(FIXED_SEED, FIXED_PACKETS);
}

#[test]
fn fuzz_random_seed() {
    fuzz_run(fuzz::random_seed(), RANDOM_PACKETS);
}

/// Each known bug still happens on its minimal frame sequence: when one is fixed, this
/// fails until its `KNOWN_BUGS` entry is removed (the fuzz runs then check it again);
/// and the bugs this fuzzer found that were fixed stay fixed.
#[test]
fn known_bugs_reproduce_and_fixed_ones_do_not() {
    require_root();
    for bug in KNOWN_BUGS {
        let r = fuzz::reproduce(bug.name).expect("reproduction");
        println!("{r}\n");
        assert!(
            r.reproduced,
            "known bug {} no longer reproduces: remove it from KNOWN_BUGS\n{r}",
            bug.name
        );
    }
    for name in FIXED_BUGS {
        let r = fuzz::reproduce(name).expect("reproduction");
        println!("{r}\n");
        assert!(!r.reproduced, "fixed bug {name} is back\n{r}");
    }
}

//! Property tests of the `no_std` library: the packet parser, checksum arithmetic, the TCP
//! answers built in place, syncookies, the flow-table logic and the hashes, against
//! etherparse and small hand-written reference implementations.
//!
//! These files are compiled into the library's unit-test binary (mounted with `#[path]`
//! at the end of `src/parse.rs`), not as Cargo integration tests: any `tests/*.rs` target
//! makes Cargo build the package's binaries, and `balancer-xdp` only builds for the BPF
//! target. They use only the library's public API, so they can move to `tests/*.rs`
//! (`crate::` becoming `balancer_ebpf::`) once the binary is kept out of host builds.
//!
//! Run with `cargo test -p balancer-ebpf --lib props` (add `--release` for speed; the case
//! counts are sized for a debug build). Generated inputs are random per run; a failure
//! prints the minimal input proptest shrank it to.

mod checksums;
mod flows;
mod frames;
mod parser;
mod replies;
mod syncookies;

use proptest::test_runner::Config;

/// proptest settings: `cases` inputs (or `PROPTEST_CASES` if set, for a longer run), no
/// regression files written next to the sources (a failure is reported with its shrunk
/// input instead).
pub fn config(cases: u32) -> Config {
    let defaults = Config::default();
    Config {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            defaults.cases
        } else {
            cases
        },
        failure_persistence: None,
        ..defaults
    }
}

//! Property tests of the `no_std` library: the packet parser, checksum arithmetic, the TCP
//! answers built in place, syncookies, the flow-table logic and the hashes, against
//! etherparse and small hand-written reference implementations. They use only the
//! library's public API.
//!
//! Run with `cargo test -p balancer-common --test props` (add `--release` for speed; the
//! case counts are sized for a debug build). Generated inputs are random per run; a
//! failure prints the minimal input proptest shrank it to.

mod checksums;
mod flows;
mod frames;
mod options;
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

//! Operations tests: `balancer daemon` (configuration, health checks, reloads, restarts
//! under load, group membership, permissions), failover of replicated app servers under
//! load, and the tables of bad CLI arguments and configuration files.
//!
//! One test binary: the tests run in parallel, each with its own topology (unique
//! namespace and instance names). Needs root and a built `balancer` binary
//! (`cargo build --release -p balancer-user --bins`, or `BALANCER_BIN`).

/// The reference app server, built by Cargo for this package's integration tests.
const TESTSRV: &str = env!("CARGO_BIN_EXE_balancer-testsrv");

mod bad_input;
mod daemon;
mod daemon_ops;
mod dashboard;
mod failover;
mod package;
mod status_page;

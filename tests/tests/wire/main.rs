//! Wire-level tests: real traffic from a client namespace through the XDP data plane to
//! test servers in backend namespaces (netns topologies of `balancer_tests::topology`),
//! in cookie and NAT modes, under attack, over lossy links, and against the benchmark's
//! end-to-end harness; plus the reference app server on its own.
//!
//! One test binary: the tests run in parallel, each with its own topology (unique
//! namespace and instance names), and the floods take the machine for themselves
//! (`topology::machine_exclusive`). Needs root and a built `balancer` binary, except
//! `appsrv`, which runs on loopback.

/// The reference app server, built by Cargo for this package's integration tests.
const TESTSRV: &str = env!("CARGO_BIN_EXE_balancer-testsrv");

mod appsrv;
mod attacks;
mod cookie;
mod e2e;
mod netns;
mod persistence;
mod veth_lab;

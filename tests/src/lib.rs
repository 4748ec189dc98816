//! Test bed of the balancer: network namespaces and topologies, an HTTP client and the
//! reference HTTP server, and a harness for BPF_PROG_TEST_RUN. Used by the integration
//! tests in `tests/tests/`, the demo and the benchmark.

pub mod attack;
pub mod daemon;
pub mod e2e;
pub mod fuzz;
pub mod haproxy;
pub mod http;
pub mod impair;
pub mod load;
pub mod netns;
pub mod packet;
pub mod rng;
pub mod session;
pub mod testrun;
pub mod topology;

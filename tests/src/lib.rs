//! Test bed of the balancer, one copy of each helper: the root check ([`harness`]),
//! network namespaces and topologies with one address plan ([`netns`], [`topology`]), the
//! daemon and CLI runners ([`daemon`], [`topology::Topology::balancer`]), HTTP clients,
//! session load and timed bulk transfers ([`http`], [`session`], [`load`], [`bulk`]), raw
//! sockets and packet builders ([`rawsock`], [`attack`], [`impair`]), what `ss` reports of
//! TCP connections ([`ss`]), BPF_PROG_TEST_RUN ([`testrun`], [`fuzz`]) and the
//! benchmark's beds ([`e2e`], [`haproxy`], [`nftables`]). Used by the integration tests in
//! `tests/tests/`, the demo, the benchmark and the fuzzer; tests/README.md has the rules.

pub mod attack;
pub mod bulk;
pub mod daemon;
pub mod e2e;
pub mod fuzz;
pub mod haproxy;
pub mod harness;
pub mod http;
pub mod impair;
pub mod load;
pub mod netns;
pub mod nftables;
pub mod packet;
pub mod rawsock;
pub mod rng;
pub mod session;
pub mod ss;
pub mod testrun;
pub mod topology;

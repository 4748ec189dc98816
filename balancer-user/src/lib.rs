//! The balancer's control-plane library: one API over the pinned data plane, used by the
//! `balancer` CLI, the daemon and the tests, so nothing is implemented twice.
//!
//! All state lives in BPF maps pinned under one directory per instance
//! (`/sys/fs/bpf/balancer/<instance>/` by default). Every call opens what it needs from
//! the pins, so the CLI is stateless and keeps working while no daemon runs.

//! The modules are layered, each using only those above it:
//! - [`model`]: addresses, protocols, backend states, weights, syncookie secrets (values);
//! - [`dataplane`]: the only user of aya: the compiled object, pins, links, and the maps
//!   behind one trait ([`MapStore`]) with its pinned implementation ([`PinnedMaps`]);
//! - [`control`]: services, backends, Maglev, cookie mode, health records, stats, flows,
//!   as [`Control`] operations over any [`MapStore`] (over [`MemoryStore`] in unit tests);
//! - [`daemon`]: configuration, health checking, group membership, replication pairs,
//!   failover, metrics and the control socket, on top of `control`;
//! - the `balancer` CLI (src/bin/balancer/), on top of all of them.
//!
//! [`error`] is the one error type of `model`, `dataplane` and `control`.

pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod error;
pub mod model;

pub use control::{
    cookie_mode::CookieSettings, BackendInfo, BackendSpec, Control, MemoryStore, ServiceInfo,
};
pub use dataplane::{AttachOptions, Balancer, MapStore, Mode, PinnedMaps};
pub use error::{Error, Result};
pub use model::{BackendState, Persistence, Proto, ServiceAddr, Weight};

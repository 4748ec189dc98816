//! The balancer's control-plane library: one API over the pinned data plane, used by the
//! `balancer` CLI, the daemon and the tests, so nothing is implemented twice.
//!
//! All state lives in BPF maps pinned under one directory per instance
//! (`/sys/fs/bpf/balancer/<instance>/` by default). Every call opens what it needs from
//! the pins, so the CLI is stateless and keeps working while no daemon runs.

pub mod addr;
pub mod backend_health;
pub mod config;
pub mod control;
pub mod cookie_mode;
pub mod daemon;
pub mod dataplane;
pub mod error;
pub mod flows;
pub mod group;
pub mod health;
pub mod maglev;
pub mod metrics;
mod mmap_array;
pub mod pairs;
pub mod stats;

pub use addr::{Proto, ServiceAddr};
pub use control::{BackendInfo, BackendSpec, ServiceInfo};
pub use cookie_mode::CookieSettings;
pub use dataplane::{AttachOptions, Balancer, Mode};
pub use error::{Error, Result};

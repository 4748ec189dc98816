//! The control logic over the pinned maps: services and backends (slot allocation,
//! Maglev tables, the write order the data plane relies on), cookie mode (server ids,
//! failover rewrites, syncookie keys), health records, counters and flows. Each file adds
//! its operations to [`Balancer`](crate::dataplane::Balancer).

pub mod backend_health;
pub mod cookie_mode;
pub mod flows;
pub mod maglev;
pub mod services;
pub mod stats;

pub use services::{BackendInfo, BackendSpec, ServiceInfo};

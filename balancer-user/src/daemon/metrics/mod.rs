//! Prometheus metrics: the counters and health states in the OpenMetrics text format
//! (through `prometheus-client`), and a small read-only HTTP/1.1 server (hyper) for
//! them and the status page.
//!
//! Families:
//! - `balancer_<counter>_total`: the data plane's global counters (`balancer stats`), and
//!   the daemon's own counters;
//! - `balancer_service_*{service}`: backends configured and taking new flows, and an
//!   info gauge with the service's mode;
//! - `balancer_backend_*{service,backend[,server_id]}`: per-backend traffic counters,
//!   weight, data-plane state, and the health checks' results where the backend is
//!   checked.
//!
//! The server answers `GET` (and `HEAD`) of its endpoints, nothing else: 404 for other
//! paths, 405 for other methods. It reads at most [`MAX_HEAD`] bytes of request head
//! within [`IO_TIMEOUT`], so a slow or oversized request cannot hold a connection, and
//! at most [`MAX_CONNECTIONS`] connections are served at once.

mod render;
mod server;
mod snapshot;
#[cfg(test)]
mod tests;

pub use render::render;
pub use server::{
    serve, serve_endpoints, Endpoint, Page, Render, CONTENT_TYPE, IO_TIMEOUT, MAX_CONNECTIONS,
    MAX_HEAD,
};
pub use snapshot::{BackendMetrics, MetricsSnapshot, ServiceMetrics};

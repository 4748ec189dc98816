//! What one scrape reports, read from the data plane.

use std::collections::HashMap;

use balancer_common::Counter;

use crate::{
    control::backend_health::HealthInfo,
    control::stats::{BackendCountersValues, Stats},
    control::{BackendInfo, ServiceInfo},
    dataplane::Balancer,
    error::Result,
};

/// Everything one scrape reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// Global data-plane counters.
    pub global: Vec<(Counter, u64)>,
    /// Daemon counters (name, help, value), rendered as `balancer_<name>_total`
    /// counters; `name` is lowercase letters, digits and '_', e.g. `config_reloads`.
    pub daemon: Vec<(&'static str, &'static str, u64)>,
    pub services: Vec<ServiceMetrics>,
    pub backends: Vec<BackendMetrics>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceMetrics {
    /// `198.18.0.10:80/tcp`.
    pub service: String,
    /// `nat` or `cookie`.
    pub mode: &'static str,
    pub backends: usize,
    /// Backends taking new flows.
    pub active_backends: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BackendMetrics {
    /// `198.18.0.10:80/tcp`.
    pub service: String,
    /// `198.18.1.2:8080`.
    pub backend: String,
    /// Cookie mode: the backend's server-ID token.
    pub server_id: Option<String>,
    /// Data-plane state: `up`, `draining` or `down`.
    pub state: &'static str,
    pub weight: u32,
    pub counters: BackendCountersValues,
    /// Health-check results; `None` while the backend is not checked.
    pub health: Option<HealthInfo>,
}

impl MetricsSnapshot {
    /// From what [`Balancer::stats`], [`Balancer::services`] and [`Balancer::backends`]
    /// return (health included).
    pub fn from_dataplane(
        stats: &Stats,
        services: &[ServiceInfo],
        backends: &[BackendInfo],
    ) -> MetricsSnapshot {
        let counters: HashMap<u32, BackendCountersValues> = stats
            .backends
            .iter()
            .map(|b| (b.slot, b.counters))
            .collect();
        MetricsSnapshot {
            global: Counter::ALL.iter().map(|&c| (c, stats.get(c))).collect(),
            daemon: Vec::new(),
            services: services
                .iter()
                .map(|s| ServiceMetrics {
                    service: s.service.to_string(),
                    mode: s.mode,
                    backends: s.backends,
                    active_backends: s.active_backends,
                })
                .collect(),
            // A backend added between the two reads has no counters yet: left out rather
            // than reported as zeros, which Prometheus would take for a counter reset.
            backends: backends
                .iter()
                .filter_map(|b| {
                    Some(BackendMetrics {
                        service: b.service.to_string(),
                        backend: b.backend.to_string(),
                        server_id: b.server_id.clone(),
                        state: b.state.name(),
                        weight: b.weight.get(),
                        counters: *counters.get(&b.slot)?,
                        health: b.health.clone(),
                    })
                })
                .collect(),
        }
    }

    /// Reads the data-plane part of a snapshot from the pinned maps.
    pub fn read(balancer: &Balancer) -> Result<MetricsSnapshot> {
        Ok(MetricsSnapshot::from_dataplane(
            &balancer.stats()?,
            &balancer.services()?,
            &balancer.backends(None)?,
        ))
    }
}

//! Counters read from the per-CPU maps, summed over CPUs.

use balancer_common::{BackendStats, Counter, GlobalStats};
use serde::Serialize;

use crate::{
    control::backend_health::HealthInfo, control::Control, dataplane::MapStore, error::Result,
};

#[derive(Clone, Debug, Serialize)]
pub struct BackendCounters {
    pub service: String,
    pub backend: std::net::SocketAddrV4,
    pub slot: u32,
    pub state: &'static str,
    #[serde(flatten)]
    pub counters: BackendCountersValues,
    /// What the daemon's health checks found (absent: never checked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthInfo>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct BackendCountersValues {
    pub packets_to: u64,
    pub bytes_to: u64,
    pub packets_from: u64,
    pub bytes_from: u64,
    pub new_flows: u64,
    pub cookie_hits: u64,
    pub cookie_misses: u64,
    pub failover_redirects: u64,
}

impl From<BackendStats> for BackendCountersValues {
    fn from(s: BackendStats) -> Self {
        BackendCountersValues {
            packets_to: s.packets_to,
            bytes_to: s.bytes_to,
            packets_from: s.packets_from,
            bytes_from: s.bytes_from,
            new_flows: s.new_flows,
            cookie_hits: s.cookie_hits,
            cookie_misses: s.cookie_misses,
            failover_redirects: s.failover_redirects,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    /// Global counters by name (JSON object, keys sorted).
    pub global: serde_json::Map<String, serde_json::Value>,
    pub backends: Vec<BackendCounters>,
}

impl Stats {
    /// A global counter's value.
    pub fn get(&self, counter: Counter) -> u64 {
        self.global
            .get(counter.label())
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
    }
}

impl<S: MapStore> Control<S> {
    /// Global counters summed over CPUs, in `Counter` order.
    pub fn global_counters(&self) -> Result<GlobalStats> {
        self.store.global_counters()
    }

    pub fn stats(&self) -> Result<Stats> {
        let total = self.global_counters()?;
        let mut global = serde_json::Map::new();
        for c in Counter::ALL {
            global.insert(c.label().to_string(), total[c as usize].into());
        }
        let mut names: Vec<_> = self.slot_names()?.into_iter().collect();
        names.sort_by(|a, b| (&a.1 .0, &a.1 .1).cmp(&(&b.1 .0, &b.1 .1)));
        let health = self.health_records()?;
        let mut backends = Vec::new();
        for (slot, (service, backend, state)) in names {
            backends.push(BackendCounters {
                service,
                backend,
                slot,
                state,
                counters: self.store.backend_stats(slot)?.into(),
                health: health.get(&slot).and_then(HealthInfo::from_record),
            });
        }
        Ok(Stats { global, backends })
    }
}

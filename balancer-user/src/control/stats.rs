//! Counters read from the per-CPU maps, summed over CPUs.

use balancer_common::{BackendCounter, BackendStats, Counter, GlobalStats};
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
    /// One JSON key per counter, named by its label.
    #[serde(flatten, serialize_with = "serialize_counters")]
    pub counters: BackendCountersValues,
    /// What the daemon's health checks found (absent: never checked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthInfo>,
}

/// A backend's counters summed over CPUs: the map's own value type, whose fields, labels
/// and help texts come from one table (`balancer_common::BackendCounter`).
pub type BackendCountersValues = BackendStats;

/// The counters as a map from label to value, in table order.
fn serialize_counters<S: serde::Serializer>(
    counters: &BackendCountersValues,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap as _;
    let mut map = serializer.serialize_map(Some(BackendCounter::COUNT))?;
    for c in BackendCounter::ALL {
        map.serialize_entry(c.label(), &counters.get(c))?;
    }
    map.end()
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
                counters: self.store.backend_stats(slot)?,
                health: health.get(&slot).and_then(HealthInfo::from_record),
            });
        }
        Ok(Stats { global, backends })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_counters_json_has_one_key_per_counter() {
        let counters = BackendCounters {
            service: "198.18.0.10:80/tcp".into(),
            backend: "198.18.1.2:8080".parse().unwrap(),
            slot: 3,
            state: "up",
            counters: BackendCountersValues {
                packets_to: 1,
                bytes_to: 2,
                packets_from: 3,
                bytes_from: 4,
                new_flows: 5,
                cookie_hits: 6,
                cookie_misses: 7,
                failover_redirects: u64::MAX,
            },
            health: None,
        };
        assert_eq!(
            serde_json::to_string(&counters).unwrap(),
            format!(
                "{{\"service\":\"198.18.0.10:80/tcp\",\"backend\":\"198.18.1.2:8080\",\
                 \"slot\":3,\"state\":\"up\",\"packets_to\":1,\"bytes_to\":2,\
                 \"packets_from\":3,\"bytes_from\":4,\"new_flows\":5,\"cookie_hits\":6,\
                 \"cookie_misses\":7,\"failover_redirects\":{}}}",
                u64::MAX
            )
        );
    }
}

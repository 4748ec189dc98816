//! The pinned HEALTH map: what the daemon's health checks found, per backend slot.
//!
//! The daemon writes a record after every check; `balancer backend list`, `balancer
//! stats` and the metrics endpoint read it. Being a pinned map, it outlives the daemon:
//! the last known state stays visible while no daemon runs, and a restarted daemon
//! resumes its counters from it.

use std::collections::HashMap;

use balancer_common::{health_state, BackendHealth};
use serde::Serialize;

use crate::{control::Control, dataplane::MapStore, error::Result};

/// A backend's health as shown by the CLI and the metrics.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HealthInfo {
    /// `up` or `down`.
    pub health: &'static str,
    pub checks: u64,
    pub failures: u64,
    pub transitions: u64,
    /// Response time of the last check, seconds.
    pub response_s: f64,
    /// Wall-clock time of the last state change, Unix seconds (absent: never changed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_change_unix_s: Option<f64>,
}

impl HealthInfo {
    /// `None` for a slot no health check has written.
    pub fn from_record(r: &BackendHealth) -> Option<HealthInfo> {
        let health = match r.state {
            health_state::UP => "up",
            health_state::DOWN => "down",
            _ => return None,
        };
        Some(HealthInfo {
            health,
            checks: r.checks,
            failures: r.failures,
            transitions: r.transitions,
            response_s: r.last_response_us as f64 / 1e6,
            last_change_unix_s: (r.last_change_unix_ns != 0)
                .then(|| r.last_change_unix_ns as f64 / 1e9),
        })
    }
}

impl<S: MapStore> Control<S> {
    /// Health records of every slot that has one.
    pub fn health_records(&self) -> Result<HashMap<u32, BackendHealth>> {
        self.store.health_records()
    }

    /// Health record of one slot (`state` UNKNOWN when none was written).
    pub fn health_record(&self, slot: u32) -> Result<BackendHealth> {
        self.store.health(slot)
    }

    /// Writes a slot's health record (the daemon, after each check).
    pub fn write_health(&mut self, slot: u32, record: &BackendHealth) -> Result<()> {
        self.store.set_health(slot, record)
    }

    /// Forgets a slot's health (its backend was removed; a new backend may take the slot).
    pub fn clear_health(&mut self, slot: u32) -> Result<()> {
        self.write_health(slot, &BackendHealth::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_become_infos() {
        let mut r = BackendHealth {
            state: health_state::UNKNOWN,
            last_response_us: 1500,
            checks: 5,
            failures: 1,
            last_change_unix_ns: 2_500_000_000,
            transitions: 1,
            ..BackendHealth::default()
        };
        assert_eq!(HealthInfo::from_record(&r), None);
        r.state = health_state::DOWN;
        assert_eq!(
            HealthInfo::from_record(&r),
            Some(HealthInfo {
                health: "down",
                checks: 5,
                failures: 1,
                transitions: 1,
                response_s: 0.0015,
                last_change_unix_s: Some(2.5),
            })
        );
        r.last_change_unix_ns = 0;
        assert_eq!(
            HealthInfo::from_record(&r).unwrap().last_change_unix_s,
            None
        );
    }
}

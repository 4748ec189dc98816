//! [`MapStore`] in plain memory, for unit tests of the control and daemon logic that
//! need no root and no kernel.
//!
//! Tables start as the kernel creates them: all zeros (a fresh RING block names slot 0
//! everywhere, which is why a new service's block must be cleared before the service is
//! visible). Every write is recorded in order ([`MemoryStore::writes`]), and after each
//! one the store checks what the data plane relies on: a visible service's table names
//! only backends of that service that are up ([`MemoryStore::violations`]).

use std::collections::{BTreeSet, HashMap};

use balancer_common::{
    backend_state, cookie::CookieConfig, health_state, syncookie::SyncookieKeys, Backend,
    BackendHealth, BackendStats, Failover, Flow, FlowKey, GlobalStats, ServerId, ServerIdKey,
    Service, ServiceKey, MAX_BACKENDS, RING_SIZE,
};

use crate::{control::maglev::NO_BACKEND, dataplane::MapStore, error::Result};

/// One write, as recorded by [`MemoryStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    InsertService(ServiceKey, Service),
    RemoveService(ServiceKey),
    Backend(u32, Backend),
    /// A change to a service's table (writes that change nothing are not recorded):
    /// the slots it names afterwards.
    Ring {
        service_id: u32,
        names: BTreeSet<u32>,
    },
    CookieConfig(u32),
    /// A server-ID token (by its key) now names `slot`.
    InsertServerId(ServerIdKey, u32),
    RemoveServerId(ServerIdKey),
    Failover(u32, Failover),
    Health(u32, BackendHealth),
    ZeroBackendStats(u32),
    SyncookieKeys(SyncookieKeys),
}

/// The maps of one instance, in memory.
pub struct MemoryStore {
    services: HashMap<ServiceKey, Service>,
    backends: Vec<Backend>,
    rings: HashMap<u32, Vec<u32>>,
    /// The slots each written block of RING names, for the check after each write.
    ring_names: HashMap<u32, BTreeSet<u32>>,
    cookie_configs: HashMap<u32, CookieConfig>,
    server_ids: HashMap<ServerIdKey, ServerId>,
    failover: HashMap<u32, Failover>,
    syncookie_keys: SyncookieKeys,
    health: HashMap<u32, BackendHealth>,
    backend_stats: HashMap<u32, BackendStats>,
    /// Counters the data plane would have counted; tests set them directly.
    pub global_counters: GlobalStats,
    /// The flow table, in walk order; tests set it directly.
    pub flows: Vec<(FlowKey, Flow)>,
    writes: Vec<Write>,
    violations: Vec<String>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            services: HashMap::new(),
            backends: vec![Backend::default(); MAX_BACKENDS as usize],
            rings: HashMap::new(),
            ring_names: HashMap::new(),
            cookie_configs: HashMap::new(),
            server_ids: HashMap::new(),
            failover: HashMap::new(),
            syncookie_keys: SyncookieKeys::default(),
            health: HashMap::new(),
            backend_stats: HashMap::new(),
            global_counters: [0; balancer_common::Counter::COUNT],
            flows: Vec::new(),
            writes: Vec::new(),
            violations: Vec::new(),
        }
    }
}

/// COOKIE_CONFIG as the kernel creates it.
const ZERO_COOKIE_CONFIG: CookieConfig = CookieConfig {
    name: [0; 4],
    name_mask: [0; 4],
    name_len: 0,
    delimiter: 0,
    primary: 0,
    secondary: 0,
    _pad: [0; 4],
};

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every write so far, oldest first.
    pub fn writes(&self) -> &[Write] {
        &self.writes
    }

    /// Index in [`writes`](Self::writes) of the first write `matches` accepts. Panics,
    /// naming `what` and listing the writes, when there is none: for tests.
    pub fn position(&self, what: &str, matches: impl Fn(&Write) -> bool) -> usize {
        self.writes
            .iter()
            .position(matches)
            .unwrap_or_else(|| panic!("no write {what} in {:#?}", self.writes))
    }

    /// Forgets the writes so far (after setting up a test's starting state).
    pub fn clear_writes(&mut self) {
        self.writes.clear();
    }

    /// What was wrong after a write, one line each: a visible service's table naming a
    /// slot that is not an up backend of that service.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// Sets a backend slot's counters (as the data plane would count them).
    pub fn set_backend_stats(&mut self, slot: u32, stats: BackendStats) {
        self.backend_stats.insert(slot, stats);
    }

    fn ring_block(&self, service_id: u32) -> Vec<u32> {
        self.rings
            .get(&service_id)
            .cloned()
            .unwrap_or_else(|| vec![0; RING_SIZE as usize])
    }

    fn record(&mut self, write: Write) {
        let mut wrong = Vec::new();
        for (key, service) in &self.services {
            let names: Vec<u32> = match self.ring_names.get(&service.id) {
                Some(names) => names.iter().copied().collect(),
                // A block never written is all zeros: it names slot 0.
                None => vec![0],
            };
            for slot in names {
                let b = self
                    .backends
                    .get(slot as usize)
                    .copied()
                    .unwrap_or_default();
                if b.state != backend_state::UP || b.service != service.id {
                    wrong.push(format!(
                        "the table of service {key:?} (id {}) names slot {slot}: {b:?}",
                        service.id
                    ));
                }
            }
        }
        for w in wrong {
            self.violations.push(format!("after {write:?}: {w}"));
        }
        self.writes.push(write);
    }
}

impl MapStore for MemoryStore {
    fn services(&self) -> Result<Vec<(ServiceKey, Service)>> {
        Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn service(&self, key: &ServiceKey) -> Result<Option<Service>> {
        Ok(self.services.get(key).copied())
    }

    fn insert_service(&mut self, key: ServiceKey, service: Service) -> Result<()> {
        self.services.insert(key, service);
        self.record(Write::InsertService(key, service));
        Ok(())
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        self.services.remove(key);
        self.record(Write::RemoveService(*key));
        Ok(())
    }

    fn backend(&self, slot: u32) -> Result<Backend> {
        Ok(self
            .backends
            .get(slot as usize)
            .copied()
            .unwrap_or_default())
    }

    fn used_backends(&self) -> Result<Vec<(u32, Backend)>> {
        Ok((0..MAX_BACKENDS)
            .zip(self.backends.iter().copied())
            .filter(|(_, b)| b.state != backend_state::EMPTY)
            .collect())
    }

    fn set_backend(&mut self, slot: u32, backend: Backend) -> Result<()> {
        self.backends[slot as usize] = backend;
        self.record(Write::Backend(slot, backend));
        Ok(())
    }

    fn ring(&self, service_id: u32) -> Result<Vec<u32>> {
        Ok(self.ring_block(service_id))
    }

    fn update_ring(
        &mut self,
        service_id: u32,
        update: impl FnOnce(&[u32]) -> Vec<u32>,
    ) -> Result<()> {
        let old = self.ring_block(service_id);
        let new = update(&old);
        if new != old {
            let names: BTreeSet<u32> = new.iter().copied().filter(|s| *s != NO_BACKEND).collect();
            self.rings.insert(service_id, new);
            self.ring_names.insert(service_id, names.clone());
            self.record(Write::Ring { service_id, names });
        }
        Ok(())
    }

    fn cookie_config(&self, service_id: u32) -> Result<CookieConfig> {
        Ok(*self
            .cookie_configs
            .get(&service_id)
            .unwrap_or(&ZERO_COOKIE_CONFIG))
    }

    fn set_cookie_config(&mut self, service_id: u32, config: &CookieConfig) -> Result<()> {
        self.cookie_configs.insert(service_id, *config);
        self.record(Write::CookieConfig(service_id));
        Ok(())
    }

    fn server_id(&self, key: &ServerIdKey) -> Result<Option<ServerId>> {
        Ok(self.server_ids.get(key).copied())
    }

    fn server_ids(&self) -> Result<Vec<(ServerIdKey, ServerId)>> {
        Ok(self.server_ids.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn insert_server_id(&mut self, key: ServerIdKey, value: ServerId) -> Result<()> {
        self.server_ids.insert(key, value);
        self.record(Write::InsertServerId(key, value.slot));
        Ok(())
    }

    fn remove_server_id(&mut self, key: &ServerIdKey) -> Result<()> {
        self.server_ids.remove(key);
        self.record(Write::RemoveServerId(*key));
        Ok(())
    }

    fn failover(&self, slot: u32) -> Result<Failover> {
        Ok(self.failover.get(&slot).copied().unwrap_or_default())
    }

    fn set_failover(&mut self, slot: u32, value: Failover) -> Result<()> {
        self.failover.insert(slot, value);
        self.record(Write::Failover(slot, value));
        Ok(())
    }

    fn syncookie_keys(&self) -> Result<SyncookieKeys> {
        Ok(self.syncookie_keys)
    }

    fn set_syncookie_keys(&mut self, keys: SyncookieKeys) -> Result<()> {
        self.syncookie_keys = keys;
        self.record(Write::SyncookieKeys(keys));
        Ok(())
    }

    fn health(&self, slot: u32) -> Result<BackendHealth> {
        Ok(self.health.get(&slot).copied().unwrap_or_default())
    }

    fn health_records(&self) -> Result<HashMap<u32, BackendHealth>> {
        Ok(self
            .health
            .iter()
            .filter(|(_, r)| r.state != health_state::UNKNOWN)
            .map(|(s, r)| (*s, *r))
            .collect())
    }

    fn set_health(&mut self, slot: u32, record: &BackendHealth) -> Result<()> {
        self.health.insert(slot, *record);
        self.record(Write::Health(slot, *record));
        Ok(())
    }

    fn global_counters(&self) -> Result<GlobalStats> {
        Ok(self.global_counters)
    }

    fn backend_stats(&self, slot: u32) -> Result<BackendStats> {
        Ok(self.backend_stats.get(&slot).copied().unwrap_or_default())
    }

    fn zero_backend_stats(&mut self, slot: u32) -> Result<()> {
        self.backend_stats.remove(&slot);
        self.record(Write::ZeroBackendStats(slot));
        Ok(())
    }

    fn visit_flows(&self, mut visit: impl FnMut(&FlowKey, &Flow) -> bool) -> Result<()> {
        for (k, f) in &self.flows {
            if !visit(k, f) {
                break;
            }
        }
        Ok(())
    }
}

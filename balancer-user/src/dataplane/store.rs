//! The maps as the control logic uses them, as one trait: the control operations
//! ([`crate::control::Control`]) run over the pinned maps ([`PinnedMaps`]) in production
//! and over plain memory ([`crate::control::memory_store::MemoryStore`]) in unit tests
//! that need no root, as Katran's library has a BPF adapter and a testing mode.
//!
//! The trait holds exactly the reads and writes the control logic makes, in the data
//! plane's own value types; none of them names aya. What an operation means (which slot
//! is free, in what order the writes go) stays with the caller: an implementation only
//! stores.
//!
//! [`PinnedMaps`]: super::pinned::PinnedMaps

use std::collections::HashMap;

use balancer_common::{
    cookie::CookieConfig, syncookie::SyncookieKeys, Backend, BackendHealth, BackendStats, Failover,
    Flow, FlowKey, GlobalStats, ServerId, ServerIdKey, Service, ServiceKey,
};

use crate::error::Result;

pub trait MapStore {
    /// Every entry of SERVICES, in no particular order.
    fn services(&self) -> Result<Vec<(ServiceKey, Service)>>;
    /// The SERVICES entry under `key`; `None` when there is none (or it cannot be read).
    fn service(&self, key: &ServiceKey) -> Result<Option<Service>>;
    fn insert_service(&mut self, key: ServiceKey, service: Service) -> Result<()>;
    fn remove_service(&mut self, key: &ServiceKey) -> Result<()>;

    /// One BACKENDS slot (all zeros when unused).
    fn backend(&self, slot: u32) -> Result<Backend>;
    /// Every used BACKENDS slot (state not EMPTY) in slot order, from one read of the
    /// whole table.
    fn used_backends(&self) -> Result<Vec<(u32, Backend)>>;
    fn set_backend(&mut self, slot: u32, backend: Backend) -> Result<()>;
    /// Empties a BACKENDS slot (its service is being removed).
    fn clear_backend(&mut self, slot: u32) -> Result<()> {
        self.set_backend(slot, Backend::default())
    }

    /// Service `service_id`'s block of RING (`RING_SIZE` entries).
    fn ring(&self, service_id: u32) -> Result<Vec<u32>>;
    /// Makes the block `update(current block)`, storing only the entries that differ,
    /// each with one atomic store: the data plane, reading meanwhile, sees every entry
    /// either old or new.
    fn update_ring(
        &mut self,
        service_id: u32,
        update: impl FnOnce(&[u32]) -> Vec<u32>,
    ) -> Result<()>;

    /// COOKIE_CONFIG of a service id (all zeros when never written).
    fn cookie_config(&self, service_id: u32) -> Result<CookieConfig>;
    fn set_cookie_config(&mut self, service_id: u32, config: &CookieConfig) -> Result<()>;
    /// The SERVER_IDS entry under `key`; `None` when there is none (or it cannot be
    /// read).
    fn server_id(&self, key: &ServerIdKey) -> Result<Option<ServerId>>;
    /// Every entry of SERVER_IDS, in no particular order.
    fn server_ids(&self) -> Result<Vec<(ServerIdKey, ServerId)>>;
    fn insert_server_id(&mut self, key: ServerIdKey, value: ServerId) -> Result<()>;
    fn remove_server_id(&mut self, key: &ServerIdKey) -> Result<()>;
    /// FAILOVER of a backend slot (inactive when never written).
    fn failover(&self, slot: u32) -> Result<Failover>;
    fn set_failover(&mut self, slot: u32, value: Failover) -> Result<()>;
    fn syncookie_keys(&self) -> Result<SyncookieKeys>;
    fn set_syncookie_keys(&mut self, keys: SyncookieKeys) -> Result<()>;

    /// HEALTH of a backend slot (state UNKNOWN when never written).
    fn health(&self, slot: u32) -> Result<BackendHealth>;
    /// Every HEALTH record that was written (state not UNKNOWN), from one read of the
    /// whole table.
    fn health_records(&self) -> Result<HashMap<u32, BackendHealth>>;
    fn set_health(&mut self, slot: u32, record: &BackendHealth) -> Result<()>;

    /// The global counters, summed over CPUs.
    fn global_counters(&self) -> Result<GlobalStats>;
    /// A backend slot's counters, summed over CPUs.
    fn backend_stats(&self, slot: u32) -> Result<BackendStats>;
    /// Zeroes a backend slot's counters on every CPU (a new backend takes the slot).
    fn zero_backend_stats(&mut self, slot: u32) -> Result<()>;

    /// Calls `visit` with flow-table entries until it returns false. Entries evicted
    /// while the table is walked are skipped.
    fn visit_flows(&self, visit: impl FnMut(&FlowKey, &Flow) -> bool) -> Result<()>;
}

//! The control logic over the maps: services and backends (slot allocation, Maglev
//! tables, the write order the data plane relies on), cookie mode (server ids, failover
//! rewrites, syncookie keys), health records, counters and flows.
//!
//! The logic is written once, as the methods of [`Control`] over a
//! [`MapStore`](crate::dataplane::MapStore): [`Balancer`](crate::dataplane::Balancer)'s
//! methods (api.rs) run it over the pinned maps, unit tests over a [`MemoryStore`].

mod api;
pub mod backend_health;
pub mod cookie_mode;
pub mod flows;
pub mod maglev;
pub mod memory_store;
pub mod services;
pub mod stats;

#[cfg(test)]
mod tests;

pub use memory_store::MemoryStore;
pub use services::{BackendInfo, BackendSpec, ServiceInfo};

/// The control operations over one map store. Each file of this module adds its
/// operations; each validates its whole input before it writes anything.
pub struct Control<S> {
    store: S,
}

impl<S> Control<S> {
    pub fn new(store: S) -> Self {
        Control { store }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }
}

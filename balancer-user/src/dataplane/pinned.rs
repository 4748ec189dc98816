//! [`MapStore`] over an instance's pinned maps, through aya and the shared mappings of
//! [`MmapArray`].
//!
//! Each map is opened the first time an operation needs it and kept for the life of the
//! store, so an operation opens only the maps it uses, and once each.

use std::{cell::OnceCell, collections::HashMap};

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues};
use balancer_common::{
    backend_state, cookie::CookieConfig, health_state, map_names, syncookie::SyncookieKeys,
    Backend, BackendHealth, BackendStats, Counter, Failover, Flow, FlowKey, GlobalStats, ServerId,
    ServerIdKey, Service, ServiceKey, MAX_BACKENDS, RING_SIZE,
};

use super::{mmap_array::MmapArray, store::MapStore, Balancer};
use crate::error::{map_ctx, Error, Result};

/// The pinned maps of the instance `balancer` holds open (and locked).
pub struct PinnedMaps<'a> {
    balancer: &'a Balancer,
    services: Lazy<BpfHashMap<MapData, ServiceKey, Service>>,
    backends: Lazy<Array<MapData, Backend>>,
    /// The same map, mapped: whole-table reads without a syscall per slot.
    backends_view: OnceCell<MmapArray<Backend>>,
    cookie_config: Lazy<Array<MapData, CookieConfig>>,
    server_ids: Lazy<BpfHashMap<MapData, ServerIdKey, ServerId>>,
    failover: Lazy<Array<MapData, Failover>>,
    syncookie_keys: Lazy<Array<MapData, SyncookieKeys>>,
    health: Lazy<Array<MapData, BackendHealth>>,
    health_view: OnceCell<MmapArray<BackendHealth>>,
    backend_stats: Lazy<PerCpuArray<MapData, BackendStats>>,
}

impl<'a> PinnedMaps<'a> {
    pub fn new(balancer: &'a Balancer) -> Self {
        PinnedMaps {
            balancer,
            services: Lazy::new(map_names::SERVICES),
            backends: Lazy::new(map_names::BACKENDS),
            backends_view: OnceCell::new(),
            cookie_config: Lazy::new(map_names::COOKIE_CONFIG),
            server_ids: Lazy::new(map_names::SERVER_IDS),
            failover: Lazy::new(map_names::FAILOVER),
            syncookie_keys: Lazy::new(map_names::SYNCOOKIE_KEYS),
            health: Lazy::new(map_names::HEALTH),
            health_view: OnceCell::new(),
            backend_stats: Lazy::new(map_names::BACKEND_STATS),
        }
    }

    /// The service's block of RING, mapped (that part of the map only).
    fn ring_of(&self, service_id: u32) -> Result<MmapArray<u32>> {
        MmapArray::open_range(
            self.balancer.dir(),
            map_names::RING,
            service_id * RING_SIZE,
            RING_SIZE,
        )
    }

    /// The whole BACKENDS or HEALTH table, mapped once, as (slot, value) of the values
    /// `used` keeps.
    fn used_slots<T: Copy, C: FromIterator<(u32, T)>>(
        &self,
        view: &OnceCell<MmapArray<T>>,
        name: &str,
        used: impl Fn(&T) -> bool,
    ) -> Result<C> {
        if view.get().is_none() {
            let _ = view.set(MmapArray::open(self.balancer, name, MAX_BACKENDS)?);
        }
        let view = view.get().expect("set above");
        Ok((0..MAX_BACKENDS)
            .map(|slot| (slot, view.get(slot as usize)))
            .filter(|(_, v)| used(v))
            .collect())
    }
}

/// A pinned map, opened as `T` on first use.
struct Lazy<T> {
    name: &'static str,
    map: OnceCell<T>,
}

impl<T: TryFrom<Map, Error = MapError>> Lazy<T> {
    fn new(name: &'static str) -> Self {
        Lazy {
            name,
            map: OnceCell::new(),
        }
    }

    fn get(&self, balancer: &Balancer) -> Result<&T> {
        if self.map.get().is_none() {
            let _ = self.map.set(open(balancer, self.name)?);
        }
        Ok(self.map.get().expect("set above"))
    }

    fn get_mut(&mut self, balancer: &Balancer) -> Result<&mut T> {
        self.get(balancer)?;
        Ok(self.map.get_mut().expect("opened above"))
    }
}

/// The pinned map `name` as `T`.
fn open<T>(balancer: &Balancer, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = MapError>,
{
    let short = name.trim_start_matches("BALANCER_");
    balancer
        .map(name)?
        .try_into()
        .map_err(map_ctx(format!("{short} map")))
}

fn read_ring(ring: &MmapArray<u32>) -> Vec<u32> {
    (0..RING_SIZE as usize).map(|i| ring.get(i)).collect()
}

impl MapStore for PinnedMaps<'_> {
    fn services(&self) -> Result<Vec<(ServiceKey, Service)>> {
        let services = self.services.get(self.balancer)?;
        services
            .iter()
            .map(|item| item.map_err(map_ctx("reading SERVICES")))
            .collect()
    }

    fn service(&self, key: &ServiceKey) -> Result<Option<Service>> {
        let services = self.services.get(self.balancer)?;
        Ok(services.get(key, 0).ok())
    }

    fn insert_service(&mut self, key: ServiceKey, service: Service) -> Result<()> {
        self.services
            .get_mut(self.balancer)?
            .insert(key, service, 0)
            .map_err(map_ctx("writing SERVICES"))
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        self.services
            .get_mut(self.balancer)?
            .remove(key)
            .map_err(map_ctx("removing from SERVICES"))
    }

    fn backend(&self, slot: u32) -> Result<Backend> {
        self.backends
            .get(self.balancer)?
            .get(&slot, 0)
            .map_err(map_ctx("reading BACKENDS"))
    }

    fn used_backends(&self) -> Result<Vec<(u32, Backend)>> {
        self.used_slots(&self.backends_view, map_names::BACKENDS, |b: &Backend| {
            b.state != backend_state::EMPTY
        })
    }

    fn set_backend(&mut self, slot: u32, backend: Backend) -> Result<()> {
        self.backends
            .get_mut(self.balancer)?
            .set(slot, backend, 0)
            .map_err(map_ctx("writing BACKENDS"))
    }

    fn clear_backend(&mut self, slot: u32) -> Result<()> {
        self.backends
            .get_mut(self.balancer)?
            .set(slot, Backend::default(), 0)
            .map_err(map_ctx("clearing BACKENDS"))
    }

    fn ring(&self, service_id: u32) -> Result<Vec<u32>> {
        Ok(read_ring(&self.ring_of(service_id)?))
    }

    fn update_ring(
        &mut self,
        service_id: u32,
        update: impl FnOnce(&[u32]) -> Vec<u32>,
    ) -> Result<()> {
        // One mapping for the read and the write.
        let ring = self.ring_of(service_id)?;
        let old = read_ring(&ring);
        let new = update(&old);
        for (i, (o, n)) in old.iter().zip(&new).enumerate() {
            if o != n {
                ring.store(i, *n);
            }
        }
        Ok(())
    }

    fn cookie_config(&self, service_id: u32) -> Result<CookieConfig> {
        self.cookie_config
            .get(self.balancer)?
            .get(&service_id, 0)
            .map_err(map_ctx("reading COOKIE_CONFIG"))
    }

    fn set_cookie_config(&mut self, service_id: u32, config: &CookieConfig) -> Result<()> {
        self.cookie_config
            .get_mut(self.balancer)?
            .set(service_id, config, 0)
            .map_err(map_ctx("writing COOKIE_CONFIG"))
    }

    fn server_id(&self, key: &ServerIdKey) -> Result<Option<ServerId>> {
        let ids = self.server_ids.get(self.balancer)?;
        Ok(ids.get(key, 0).ok())
    }

    fn server_ids(&self) -> Result<Vec<(ServerIdKey, ServerId)>> {
        self.server_ids
            .get(self.balancer)?
            .iter()
            .map(|item| item.map_err(map_ctx("reading SERVER_IDS")))
            .collect()
    }

    fn insert_server_id(&mut self, key: ServerIdKey, value: ServerId) -> Result<()> {
        self.server_ids
            .get_mut(self.balancer)?
            .insert(key, value, 0)
            .map_err(map_ctx("writing SERVER_IDS"))
    }

    fn remove_server_id(&mut self, key: &ServerIdKey) -> Result<()> {
        self.server_ids
            .get_mut(self.balancer)?
            .remove(key)
            .map_err(map_ctx("removing from SERVER_IDS"))
    }

    fn failover(&self, slot: u32) -> Result<Failover> {
        self.failover
            .get(self.balancer)?
            .get(&slot, 0)
            .map_err(map_ctx("reading FAILOVER"))
    }

    fn set_failover(&mut self, slot: u32, value: Failover) -> Result<()> {
        self.failover
            .get_mut(self.balancer)?
            .set(slot, value, 0)
            .map_err(map_ctx("writing FAILOVER"))
    }

    fn syncookie_keys(&self) -> Result<SyncookieKeys> {
        self.syncookie_keys
            .get(self.balancer)?
            .get(&0, 0)
            .map_err(map_ctx("reading SYNCOOKIE_KEYS"))
    }

    fn set_syncookie_keys(&mut self, keys: SyncookieKeys) -> Result<()> {
        self.syncookie_keys
            .get_mut(self.balancer)?
            .set(0, keys, 0)
            .map_err(map_ctx("writing SYNCOOKIE_KEYS"))
    }

    fn health(&self, slot: u32) -> Result<BackendHealth> {
        self.health
            .get(self.balancer)?
            .get(&slot, 0)
            .map_err(map_ctx("reading HEALTH"))
    }

    fn health_records(&self) -> Result<HashMap<u32, BackendHealth>> {
        self.used_slots(&self.health_view, map_names::HEALTH, |r: &BackendHealth| {
            r.state != health_state::UNKNOWN
        })
    }

    fn set_health(&mut self, slot: u32, record: &BackendHealth) -> Result<()> {
        self.health
            .get_mut(self.balancer)?
            .set(slot, record, 0)
            .map_err(map_ctx("writing HEALTH"))
    }

    fn global_counters(&self) -> Result<GlobalStats> {
        // Read once per call (the metrics endpoint, `balancer stats`): not kept.
        let stats: PerCpuArray<MapData, GlobalStats> = open(self.balancer, map_names::STATS)?;
        let per_cpu = stats.get(&0, 0).map_err(map_ctx("reading STATS"))?;
        let mut total = [0u64; Counter::COUNT];
        for cpu in per_cpu.iter() {
            for (t, v) in total.iter_mut().zip(cpu.iter()) {
                *t += v;
            }
        }
        Ok(total)
    }

    fn backend_stats(&self, slot: u32) -> Result<BackendStats> {
        let per_cpu = self
            .backend_stats
            .get(self.balancer)?
            .get(&slot, 0)
            .map_err(map_ctx("reading BACKEND_STATS"))?;
        let mut sum = BackendStats::default();
        for cpu in per_cpu.iter() {
            sum.add(cpu);
        }
        Ok(sum)
    }

    fn zero_backend_stats(&mut self, slot: u32) -> Result<()> {
        let stats = self.backend_stats.get_mut(self.balancer)?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| Error::Io {
            context: "counting possible CPUs".into(),
            source: e,
        })?;
        let zeros =
            PerCpuValues::try_from(vec![BackendStats::default(); cpus]).map_err(|e| Error::Io {
                context: "building per-CPU values".into(),
                source: e,
            })?;
        stats
            .set(slot, zeros, 0)
            .map_err(map_ctx("clearing BACKEND_STATS"))
    }

    fn visit_flows(&self, mut visit: impl FnMut(&FlowKey, &Flow) -> bool) -> Result<()> {
        let flows: BpfHashMap<MapData, FlowKey, Flow> = open(self.balancer, map_names::FLOWS)?;
        for item in flows.iter() {
            // Entries can be evicted while we walk the table; skip those.
            let Ok((k, f)) = item else { continue };
            if !visit(&k, &f) {
                break;
            }
        }
        Ok(())
    }
}

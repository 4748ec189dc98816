//! Services and backends: the read-validate-write operations behind `balancer service`
//! and `balancer backend`.
//!
//! Every operation validates its whole input against the current maps before writing
//! anything, and writes in an order that never lets the data plane see a half-made
//! change: a backend slot is filled before the ring points at it, and the ring stops
//! pointing at a backend before its slot is cleared.

use std::net::SocketAddrV4;

use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues};
use balancer_common::{
    backend_state, map_names, Backend, BackendStats, Service, ServiceKey, MAX_BACKENDS,
    MAX_SERVICES, RING_SIZE, SERVICE_F_COOKIE,
};
use serde::Serialize;

use crate::{
    control::backend_health::HealthInfo,
    control::cookie_mode::{validate_server_id, CookieMaps, CookieSettings},
    control::maglev::{self, Member, NO_BACKEND},
    dataplane::mmap_array::MmapArray,
    dataplane::Balancer,
    error::{map_ctx, Error, Result},
    model::{
        addr::{ip_from_map, ip_to_map, Proto, ServiceAddr},
        BackendState, Weight,
    },
};

/// A service as listed by `balancer service list`.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceInfo {
    pub service: ServiceAddr,
    pub id: u32,
    pub backends: usize,
    /// Backends currently taking new flows.
    pub active_backends: usize,
    /// `nat`, or `cookie` (delayed binding on the session cookie).
    pub mode: &'static str,
    /// Cookie-mode settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie: Option<CookieSettings>,
}

/// A backend to add.
#[derive(Clone, Debug)]
pub struct BackendSpec {
    pub addr: SocketAddrV4,
    pub weight: Weight,
    /// Cookie-mode services: the token the app server writes into the session cookie.
    pub server_id: Option<String>,
}

impl BackendSpec {
    pub fn new(addr: SocketAddrV4, weight: Weight) -> Self {
        BackendSpec {
            addr,
            weight,
            server_id: None,
        }
    }
}

/// A backend as listed by `balancer backend list`.
#[derive(Clone, Debug, Serialize)]
pub struct BackendInfo {
    pub service: ServiceAddr,
    pub backend: SocketAddrV4,
    pub slot: u32,
    pub state: BackendState,
    pub weight: Weight,
    /// Fraction of the service's lookup table (new flows) this backend gets.
    pub table_share: f64,
    /// Cookie-mode services: the backend's server-ID token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// Cookie-mode services: the backend that takes this one's sessions, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover_to: Option<SocketAddrV4>,
    /// What the daemon's health checks found (absent: never checked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthInfo>,
}

/// Typed handles on the maps the operations use.
struct Maps {
    services: HashMap<MapData, ServiceKey, Service>,
    backends: Array<MapData, Backend>,
    /// The same map, mapped: whole-table reads without a syscall per slot.
    backends_view: MmapArray<Backend>,
    /// The pin directory, for mapping one service's part of RING when needed.
    pins: std::path::PathBuf,
}

impl Maps {
    fn open(b: &Balancer) -> Result<Self> {
        Ok(Maps {
            services: b
                .map(map_names::SERVICES)?
                .try_into()
                .map_err(map_ctx("SERVICES map"))?,
            backends: b
                .map(map_names::BACKENDS)?
                .try_into()
                .map_err(map_ctx("BACKENDS map"))?,
            backends_view: MmapArray::open(b, map_names::BACKENDS, MAX_BACKENDS)?,
            pins: b.dir().to_path_buf(),
        })
    }

    fn services(&self) -> Result<Vec<(ServiceAddr, Service)>> {
        let mut out = Vec::new();
        for item in self.services.iter() {
            let (k, v) = item.map_err(map_ctx("reading SERVICES"))?;
            if let Some(addr) = ServiceAddr::from_key(&k) {
                out.push((addr, v));
            }
        }
        out.sort_by_key(|(a, _)| *a);
        Ok(out)
    }

    fn service(&self, addr: &ServiceAddr) -> Result<Service> {
        self.services
            .get(&addr.key(), 0)
            .map_err(|_| Error::UnknownService(addr.to_string()))
    }

    /// All used backend slots.
    fn backends(&self) -> Result<Vec<(u32, Backend)>> {
        Ok((0..MAX_BACKENDS)
            .map(|slot| (slot, self.backends_view.get(slot as usize)))
            .filter(|(_, b)| b.state != backend_state::EMPTY)
            .collect())
    }

    fn backends_of(&self, service: &Service) -> Result<Vec<(u32, Backend)>> {
        Ok(self
            .backends()?
            .into_iter()
            .filter(|(_, b)| b.service == service.id)
            .collect())
    }

    fn find_backend(
        &self,
        addr: &ServiceAddr,
        service: &Service,
        endpoint: SocketAddrV4,
    ) -> Result<(u32, Backend)> {
        self.backends_of(service)?
            .into_iter()
            .find(|(_, b)| endpoint_of(b) == endpoint)
            .ok_or_else(|| Error::UnknownBackend {
                service: addr.to_string(),
                backend: endpoint.to_string(),
            })
    }

    /// The service's lookup table, mapped (that part of RING only).
    fn ring_of(&self, service: &Service) -> Result<MmapArray<u32>> {
        if service.id >= MAX_SERVICES {
            return Err(Error::invalid(
                "service id",
                service.id,
                format!("at most {MAX_SERVICES} services"),
            ));
        }
        MmapArray::open_range(
            &self.pins,
            map_names::RING,
            service.id * RING_SIZE,
            RING_SIZE,
        )
    }

    fn ring_block(&self, service: &Service) -> Result<Vec<u32>> {
        Ok(read_ring(&self.ring_of(service)?))
    }

    /// Makes the service's table `new`, writing only the entries that differ.
    fn write_ring(&mut self, service: &Service, new: &[u32]) -> Result<()> {
        let ring = self.ring_of(service)?;
        store_changed(&ring, &read_ring(&ring), new);
        Ok(())
    }

    /// Recomputes the service's lookup table from its backends' states and weights,
    /// moving as few entries as possible. `pending` is a change to one slot that is not
    /// written yet: taking a backend out of the table must happen before the data plane
    /// can see its new state, or new flows hashing to it would be dropped in between.
    fn rebuild_ring(&mut self, service: &Service, pending: Option<(u32, Backend)>) -> Result<()> {
        let members: Vec<Member> = self
            .backends_of(service)?
            .into_iter()
            .map(|(slot, b)| match pending {
                Some((p, pb)) if p == slot => (slot, pb),
                _ => (slot, b),
            })
            .filter(|(_, b)| b.state == backend_state::UP && b.weight > 0)
            .map(|(slot, b)| Member {
                slot,
                identity: Member::identity_of(ip_from_map(b.addr), u16::from_be(b.port)),
                weight: b.weight,
            })
            .collect();
        // One mapping for the read and the write.
        let ring = self.ring_of(service)?;
        let old = read_ring(&ring);
        store_changed(&ring, &old, &maglev::update(&old, &members));
        Ok(())
    }

    /// Applies a change to a backend slot in the safe order: a backend that gains new
    /// flows is written before the table names it; one that loses them leaves the table
    /// first.
    fn update_backend(&mut self, service: &Service, slot: u32, new: Backend) -> Result<()> {
        let write = |maps: &mut Maps| {
            maps.backends
                .set(slot, new, 0)
                .map_err(map_ctx("writing BACKENDS"))
        };
        if new.state == backend_state::UP {
            write(self)?;
            self.rebuild_ring(service, None)
        } else {
            self.rebuild_ring(service, Some((slot, new)))?;
            write(self)
        }
    }
}

/// A service's table as mapped by [`Maps::ring_of`].
fn read_ring(ring: &MmapArray<u32>) -> Vec<u32> {
    (0..RING_SIZE as usize).map(|i| ring.get(i)).collect()
}

/// Stores the entries of `new` that differ from `old` (what `ring` holds).
fn store_changed(ring: &MmapArray<u32>, old: &[u32], new: &[u32]) {
    for (i, (o, n)) in old.iter().zip(new).enumerate() {
        if o != n {
            ring.store(i, *n);
        }
    }
}

fn zero_backend_stats(b: &Balancer, slot: u32) -> Result<()> {
    let mut stats: PerCpuArray<MapData, BackendStats> = b
        .map(map_names::BACKEND_STATS)?
        .try_into()
        .map_err(map_ctx("BACKEND_STATS map"))?;
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

impl Balancer {
    pub fn add_service(&self, addr: ServiceAddr) -> Result<ServiceInfo> {
        self.add_service_with(addr, None)
    }

    /// Adds a service; with `cookie`, in cookie mode (TCP only).
    pub fn add_service_with(
        &self,
        addr: ServiceAddr,
        cookie: Option<CookieSettings>,
    ) -> Result<ServiceInfo> {
        let cookie_config = match &cookie {
            Some(c) if addr.proto != Proto::Tcp => {
                return Err(Error::invalid(
                    "service",
                    addr,
                    format!("cookie mode needs TCP (cookie name {})", c.name),
                ))
            }
            Some(c) => Some(c.to_config()?),
            None => None,
        };
        let mut maps = Maps::open(self)?;
        let existing = maps.services()?;
        if existing.iter().any(|(a, _)| *a == addr) {
            return Err(Error::DuplicateService(addr.to_string()));
        }
        let id = (0..MAX_SERVICES)
            .find(|id| existing.iter().all(|(_, s)| s.id != *id))
            .ok_or(Error::ServicesFull(MAX_SERVICES))?;
        let flags = if cookie_config.is_some() {
            SERVICE_F_COOKIE
        } else {
            0
        };
        let service = Service { id, flags };
        // The block may hold entries of a removed service: clear it before the service
        // becomes visible.
        maps.write_ring(&service, &vec![NO_BACKEND; RING_SIZE as usize])?;
        if let Some(config) = &cookie_config {
            CookieMaps::open(self)?.set_config(id, config)?;
        }
        maps.services
            .insert(addr.key(), service, 0)
            .map_err(map_ctx("writing SERVICES"))?;
        Ok(ServiceInfo {
            service: addr,
            id,
            backends: 0,
            active_backends: 0,
            mode: if cookie.is_some() { "cookie" } else { "nat" },
            cookie,
        })
    }

    /// Removes a service and its backends. Established flows keep their translation until
    /// they end or time out; new connections to the VIP are no longer answered.
    pub fn remove_service(&self, addr: ServiceAddr) -> Result<()> {
        let mut maps = Maps::open(self)?;
        let service = maps.service(&addr)?;
        let backends = maps.backends_of(&service)?;
        maps.services
            .remove(&addr.key())
            .map_err(map_ctx("removing from SERVICES"))?;
        maps.write_ring(&service, &vec![NO_BACKEND; RING_SIZE as usize])?;
        if service.flags & SERVICE_F_COOKIE != 0 {
            let mut cookie = CookieMaps::open(self)?;
            for (key, _, _) in cookie.entries(service.id, None)? {
                cookie.remove(&key)?;
            }
            let slots: Vec<u32> = backends.iter().map(|(slot, _)| *slot).collect();
            cookie.forget_slots(&slots)?;
        }
        for (slot, _) in backends {
            maps.backends
                .set(slot, Backend::default(), 0)
                .map_err(map_ctx("clearing BACKENDS"))?;
        }
        Ok(())
    }

    pub fn services(&self) -> Result<Vec<ServiceInfo>> {
        let maps = Maps::open(self)?;
        let cookie_maps = CookieMaps::open(self)?;
        let backends = maps.backends()?;
        maps.services()?
            .into_iter()
            .map(|(addr, s)| {
                let mine: Vec<_> = backends.iter().filter(|(_, b)| b.service == s.id).collect();
                let cookie = if s.flags & SERVICE_F_COOKIE != 0 {
                    Some(cookie_maps.settings(s.id)?)
                } else {
                    None
                };
                Ok(ServiceInfo {
                    service: addr,
                    id: s.id,
                    backends: mine.len(),
                    active_backends: mine
                        .iter()
                        .filter(|(_, b)| b.state == backend_state::UP)
                        .count(),
                    mode: if cookie.is_some() { "cookie" } else { "nat" },
                    cookie,
                })
            })
            .collect()
    }

    pub fn add_backend(&self, addr: ServiceAddr, spec: BackendSpec) -> Result<BackendInfo> {
        let mut maps = Maps::open(self)?;
        let service = maps.service(&addr)?;
        let all = maps.backends()?;
        let duplicate = all
            .iter()
            .any(|(_, b)| b.service == service.id && endpoint_of(b) == spec.addr);
        if duplicate {
            return Err(Error::DuplicateBackend {
                service: addr.to_string(),
                backend: spec.addr.to_string(),
            });
        }
        let mut cookie_maps = None;
        if let Some(token) = &spec.server_id {
            if service.flags & SERVICE_F_COOKIE == 0 {
                return Err(Error::invalid(
                    "server id",
                    token,
                    format!("service {addr} is not in cookie mode"),
                ));
            }
            let cm = CookieMaps::open(self)?;
            validate_server_id(token, &cm.settings(service.id)?)?;
            cm.check_free(service.id, token, &addr.to_string())?;
            cookie_maps = Some(cm);
        }
        let slot = (0..MAX_BACKENDS)
            .find(|s| all.iter().all(|(used, _)| used != s))
            .ok_or(Error::BackendsFull(MAX_BACKENDS))?;
        zero_backend_stats(self, slot)?;
        let backend = Backend {
            addr: ip_to_map(*spec.addr.ip()),
            port: spec.addr.port().to_be(),
            state: backend_state::UP,
            _pad: 0,
            service: service.id,
            weight: spec.weight.get(),
        };
        if let (Some(cm), Some(token)) = (&mut cookie_maps, &spec.server_id) {
            // A stale failover entry of the slot's previous backend must not apply.
            cm.forget_slots(&[slot])?;
            cm.insert(service.id, token, slot)?;
        }
        maps.update_backend(&service, slot, backend)?;
        self.backend_info(&maps, &addr, &service, slot)
    }

    /// Removes a backend: it gets no new flows; flows already bound to it keep their
    /// translation until they end or time out.
    pub fn remove_backend(&self, addr: ServiceAddr, endpoint: SocketAddrV4) -> Result<()> {
        let mut maps = Maps::open(self)?;
        let service = maps.service(&addr)?;
        let (slot, _) = maps.find_backend(&addr, &service, endpoint)?;
        if service.flags & SERVICE_F_COOKIE != 0 {
            let mut cookie = CookieMaps::open(self)?;
            for (key, _, _) in cookie.entries(service.id, Some(slot))? {
                cookie.remove(&key)?;
            }
            cookie.forget_slots(&[slot])?;
        }
        // An empty slot is not UP: the table drops it before the slot is cleared.
        maps.update_backend(&service, slot, Backend::default())?;
        self.clear_health(slot)
    }

    /// Cookie mode: sends the sessions of `failed` (whose cookies name it as primary) to
    /// `replacement` (the secondary holding their replicated state), or stops doing so
    /// with `None`. Written by the control plane on failover.
    pub fn set_failover(
        &self,
        addr: ServiceAddr,
        failed: SocketAddrV4,
        replacement: Option<SocketAddrV4>,
    ) -> Result<BackendInfo> {
        let maps = Maps::open(self)?;
        let service = maps.service(&addr)?;
        if service.flags & SERVICE_F_COOKIE == 0 {
            return Err(Error::invalid(
                "service",
                addr,
                "failover applies to cookie-mode services",
            ));
        }
        let (slot, _) = maps.find_backend(&addr, &service, failed)?;
        let target = match replacement {
            Some(r) => {
                let (rslot, _) = maps.find_backend(&addr, &service, r)?;
                if rslot == slot {
                    return Err(Error::invalid(
                        "failover",
                        r,
                        "a backend cannot replace itself",
                    ));
                }
                Some(rslot)
            }
            None => None,
        };
        CookieMaps::open(self)?.set_failover(slot, target)?;
        self.backend_info(&maps, &addr, &service, slot)
    }

    pub fn set_backend_state(
        &self,
        addr: ServiceAddr,
        endpoint: SocketAddrV4,
        state: BackendState,
    ) -> Result<BackendInfo> {
        let mut maps = Maps::open(self)?;
        let service = maps.service(&addr)?;
        let (slot, mut backend) = maps.find_backend(&addr, &service, endpoint)?;
        if backend.state != state.code() {
            backend.state = state.code();
            maps.update_backend(&service, slot, backend)?;
        }
        self.backend_info(&maps, &addr, &service, slot)
    }

    pub fn set_backend_weight(
        &self,
        addr: ServiceAddr,
        endpoint: SocketAddrV4,
        weight: Weight,
    ) -> Result<BackendInfo> {
        let mut maps = Maps::open(self)?;
        let service = maps.service(&addr)?;
        let (slot, mut backend) = maps.find_backend(&addr, &service, endpoint)?;
        if backend.weight != weight.get() {
            backend.weight = weight.get();
            maps.update_backend(&service, slot, backend)?;
        }
        self.backend_info(&maps, &addr, &service, slot)
    }

    /// Backends of one service, or of all services.
    pub fn backends(&self, filter: Option<ServiceAddr>) -> Result<Vec<BackendInfo>> {
        let maps = Maps::open(self)?;
        let health = self.health_records()?;
        let services = maps.services()?;
        if let Some(f) = filter {
            if !services.iter().any(|(a, _)| *a == f) {
                return Err(Error::UnknownService(f.to_string()));
            }
        }
        let mut out = Vec::new();
        for (addr, service) in services {
            if filter.is_some_and(|f| f != addr) {
                continue;
            }
            let shares = maglev::shares(&maps.ring_block(&service)?);
            let cookie = CookieDetails::read(self, &maps, &service)?;
            for (slot, b) in maps.backends_of(&service)? {
                let health = health.get(&slot).and_then(HealthInfo::from_record);
                out.push(describe(&addr, slot, &b, &shares, &cookie, health));
            }
        }
        Ok(out)
    }

    fn backend_info(
        &self,
        maps: &Maps,
        addr: &ServiceAddr,
        service: &Service,
        slot: u32,
    ) -> Result<BackendInfo> {
        let b = maps
            .backends
            .get(&slot, 0)
            .map_err(map_ctx("reading BACKENDS"))?;
        let shares = maglev::shares(&maps.ring_block(service)?);
        let cookie = CookieDetails::read(self, maps, service)?;
        let health = HealthInfo::from_record(&self.health_record(slot)?);
        Ok(describe(addr, slot, &b, &shares, &cookie, health))
    }

    /// Service address and backend address of every used backend slot (for counters).
    pub(crate) fn slot_names(
        &self,
    ) -> Result<std::collections::HashMap<u32, (String, SocketAddrV4, &'static str)>> {
        let maps = Maps::open(self)?;
        let services = maps.services()?;
        let mut out = std::collections::HashMap::new();
        for (slot, b) in maps.backends()? {
            let service = services
                .iter()
                .find(|(_, s)| s.id == b.service)
                .map(|(a, _)| a.to_string())
                .unwrap_or_else(|| format!("#{}", b.service));
            let state = BackendState::from_code(b.state).map_or("empty", BackendState::name);
            out.insert(slot, (service, endpoint_of(&b), state));
        }
        Ok(out)
    }
}

fn endpoint_of(b: &Backend) -> SocketAddrV4 {
    SocketAddrV4::new(ip_from_map(b.addr), u16::from_be(b.port))
}

/// Server-ID tokens and failover targets of a cookie-mode service's backends, by slot.
#[derive(Default)]
struct CookieDetails {
    tokens: std::collections::HashMap<u32, String>,
    failover: std::collections::HashMap<u32, SocketAddrV4>,
}

impl CookieDetails {
    fn read(b: &Balancer, maps: &Maps, service: &Service) -> Result<Self> {
        let mut d = CookieDetails::default();
        if service.flags & SERVICE_F_COOKIE == 0 {
            return Ok(d);
        }
        let cm = CookieMaps::open(b)?;
        for (_, token, slot) in cm.entries(service.id, None)? {
            d.tokens.insert(slot, token);
        }
        for (slot, _) in maps.backends_of(service)? {
            let f = cm
                .failover
                .get(&slot, 0)
                .map_err(map_ctx("reading FAILOVER"))?;
            if f.active == 1 {
                if let Ok(r) = maps.backends.get(&f.replacement, 0) {
                    d.failover.insert(slot, endpoint_of(&r));
                }
            }
        }
        Ok(d)
    }
}

fn describe(
    addr: &ServiceAddr,
    slot: u32,
    b: &Backend,
    shares: &std::collections::HashMap<u32, usize>,
    cookie: &CookieDetails,
    health: Option<HealthInfo>,
) -> BackendInfo {
    BackendInfo {
        service: *addr,
        backend: endpoint_of(b),
        slot,
        // Only used slots are described, and the control plane writes only valid codes.
        state: BackendState::from_code(b.state).unwrap_or(BackendState::Down),
        // Likewise: every weight written went through `Weight`.
        weight: Weight::new(b.weight).unwrap_or_default(),
        table_share: *shares.get(&slot).unwrap_or(&0) as f64 / RING_SIZE as f64,
        server_id: cookie.tokens.get(&slot).cloned(),
        failover_to: cookie.failover.get(&slot).cloned(),
        health,
    }
}

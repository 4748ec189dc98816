//! Services and backends: the read-validate-write operations behind `balancer service`
//! and `balancer backend`.
//!
//! Every operation validates its whole input against the current maps before writing
//! anything, and writes in an order that never lets the data plane see a half-made
//! change: a backend slot is filled before the ring points at it, and the ring stops
//! pointing at a backend before its slot is cleared.

use std::net::SocketAddrV4;

use balancer_common::{
    backend_state, Backend, Service, MAX_BACKENDS, MAX_SERVICES, RING_SIZE, SERVICE_F_COOKIE,
};
use serde::Serialize;

use crate::{
    control::backend_health::HealthInfo,
    control::cookie_mode::{validate_server_id, CookieSettings},
    control::maglev::{self, Member, NO_BACKEND},
    control::Control,
    dataplane::MapStore,
    error::{Error, Result},
    model::{
        addr::{ip_from_map, ip_to_map, Proto, ServiceAddr},
        BackendState, Persistence, Weight,
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
    /// How new connections (cookie mode: those the policy binds) pick their backend.
    #[serde(skip_serializing_if = "is_no_persistence")]
    pub persistence: Persistence,
}

fn is_no_persistence(p: &Persistence) -> bool {
    *p == Persistence::None
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

/// A service's table with no backend in it.
fn empty_ring() -> Vec<u32> {
    vec![NO_BACKEND; RING_SIZE as usize]
}

impl<S: MapStore> Control<S> {
    /// Every service, by address.
    fn service_entries(&self) -> Result<Vec<(ServiceAddr, Service)>> {
        let mut out: Vec<(ServiceAddr, Service)> = self
            .store
            .services()?
            .into_iter()
            .filter_map(|(k, v)| Some((ServiceAddr::from_key(&k)?, v)))
            .collect();
        out.sort_by_key(|(a, _)| *a);
        Ok(out)
    }

    fn service(&self, addr: &ServiceAddr) -> Result<Service> {
        self.store
            .service(&addr.key())?
            .ok_or_else(|| Error::UnknownService(addr.to_string()))
    }

    fn backends_of(&self, service: &Service) -> Result<Vec<(u32, Backend)>> {
        Ok(self
            .store
            .used_backends()?
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

    /// The id of the service's block of RING, if the map has one.
    fn ring_id(service: &Service) -> Result<u32> {
        if service.id >= MAX_SERVICES {
            return Err(Error::invalid(
                "service id",
                service.id,
                format!("at most {MAX_SERVICES} services"),
            ));
        }
        Ok(service.id)
    }

    fn ring_block(&self, service: &Service) -> Result<Vec<u32>> {
        self.store.ring(Self::ring_id(service)?)
    }

    /// Empties the service's table.
    fn clear_ring(&mut self, service: &Service) -> Result<()> {
        self.store
            .update_ring(Self::ring_id(service)?, |_| empty_ring())
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
        self.store
            .update_ring(Self::ring_id(service)?, |old| maglev::update(old, &members))
    }

    /// Applies a change to a backend slot in the safe order: a backend that gains new
    /// flows is written before the table names it; one that loses them leaves the table
    /// first.
    fn update_backend(&mut self, service: &Service, slot: u32, new: Backend) -> Result<()> {
        if new.state == backend_state::UP {
            self.store.set_backend(slot, new)?;
            self.rebuild_ring(service, None)
        } else {
            self.rebuild_ring(service, Some((slot, new)))?;
            self.store.set_backend(slot, new)
        }
    }

    pub fn add_service(&mut self, addr: ServiceAddr) -> Result<ServiceInfo> {
        self.add_service_with(addr, None)
    }

    /// Adds a service; with `cookie`, in cookie mode (TCP only).
    pub fn add_service_with(
        &mut self,
        addr: ServiceAddr,
        cookie: Option<CookieSettings>,
    ) -> Result<ServiceInfo> {
        self.add_service_opts(addr, cookie, Persistence::None)
    }

    /// [`Control::add_service_with`], with source-address persistence or without.
    pub fn add_service_opts(
        &mut self,
        addr: ServiceAddr,
        cookie: Option<CookieSettings>,
        persistence: Persistence,
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
        let existing = self.service_entries()?;
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
        } | persistence.flags();
        let service = Service { id, flags };
        // The block may hold entries of a removed service: clear it before the service
        // becomes visible.
        self.clear_ring(&service)?;
        if let Some(config) = &cookie_config {
            self.store.set_cookie_config(id, config)?;
        }
        self.store.insert_service(addr.key(), service)?;
        Ok(ServiceInfo {
            service: addr,
            id,
            backends: 0,
            active_backends: 0,
            mode: if cookie.is_some() { "cookie" } else { "nat" },
            cookie,
            persistence,
        })
    }

    /// Changes how a service's new connections pick their backend. One write of the
    /// service's entry: a packet sees the old way or the new one, and connections already
    /// bound keep their backend either way.
    pub fn set_persistence(&mut self, addr: ServiceAddr, persistence: Persistence) -> Result<()> {
        let service = self.service(&addr)?;
        let flags = service.flags & !Persistence::FLAG_BITS | persistence.flags();
        if flags != service.flags {
            self.store
                .insert_service(addr.key(), Service { flags, ..service })?;
        }
        Ok(())
    }

    /// Removes a service and its backends.
    pub fn remove_service(&mut self, addr: ServiceAddr) -> Result<()> {
        let service = self.service(&addr)?;
        let backends = self.backends_of(&service)?;
        self.store.remove_service(&addr.key())?;
        self.clear_ring(&service)?;
        if service.flags & SERVICE_F_COOKIE != 0 {
            for (key, _, _) in self.server_id_entries(service.id, None)? {
                self.store.remove_server_id(&key)?;
            }
            let slots: Vec<u32> = backends.iter().map(|(slot, _)| *slot).collect();
            self.forget_slots(&slots)?;
        }
        for (slot, _) in backends {
            self.store.clear_backend(slot)?;
        }
        Ok(())
    }

    pub fn services(&self) -> Result<Vec<ServiceInfo>> {
        let backends = self.store.used_backends()?;
        self.service_entries()?
            .into_iter()
            .map(|(addr, s)| {
                let mine: Vec<_> = backends.iter().filter(|(_, b)| b.service == s.id).collect();
                let cookie = if s.flags & SERVICE_F_COOKIE != 0 {
                    Some(self.cookie_settings(s.id)?)
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
                    persistence: Persistence::from_flags(s.flags),
                })
            })
            .collect()
    }

    pub fn add_backend(&mut self, addr: ServiceAddr, spec: BackendSpec) -> Result<BackendInfo> {
        let service = self.service(&addr)?;
        let all = self.store.used_backends()?;
        let duplicate = all
            .iter()
            .any(|(_, b)| b.service == service.id && endpoint_of(b) == spec.addr);
        if duplicate {
            return Err(Error::DuplicateBackend {
                service: addr.to_string(),
                backend: spec.addr.to_string(),
            });
        }
        if let Some(token) = &spec.server_id {
            if service.flags & SERVICE_F_COOKIE == 0 {
                return Err(Error::invalid(
                    "server id",
                    token,
                    format!("service {addr} is not in cookie mode"),
                ));
            }
            validate_server_id(token, &self.cookie_settings(service.id)?)?;
            self.check_server_id_free(service.id, token, &addr.to_string())?;
        }
        let slot = (0..MAX_BACKENDS)
            .find(|s| all.iter().all(|(used, _)| used != s))
            .ok_or(Error::BackendsFull(MAX_BACKENDS))?;
        self.store.zero_backend_stats(slot)?;
        let backend = Backend {
            addr: ip_to_map(*spec.addr.ip()),
            port: spec.addr.port().to_be(),
            state: backend_state::UP,
            _pad: 0,
            service: service.id,
            weight: spec.weight.get(),
        };
        if let Some(token) = &spec.server_id {
            // A stale failover entry of the slot's previous backend must not apply.
            self.forget_slots(&[slot])?;
            self.insert_server_id(service.id, token, slot)?;
        }
        self.update_backend(&service, slot, backend)?;
        self.backend_info(&addr, &service, slot)
    }

    /// Removes a backend; flows already bound to it keep their translation.
    pub fn remove_backend(&mut self, addr: ServiceAddr, endpoint: SocketAddrV4) -> Result<()> {
        let service = self.service(&addr)?;
        let (slot, _) = self.find_backend(&addr, &service, endpoint)?;
        if service.flags & SERVICE_F_COOKIE != 0 {
            for (key, _, _) in self.server_id_entries(service.id, Some(slot))? {
                self.store.remove_server_id(&key)?;
            }
            self.forget_slots(&[slot])?;
        }
        // An empty slot is not UP: the table drops it before the slot is cleared.
        self.update_backend(&service, slot, Backend::default())?;
        self.clear_health(slot)
    }

    /// Cookie mode: sends the sessions of `failed` to `replacement`, or stops with `None`.
    pub fn set_failover(
        &mut self,
        addr: ServiceAddr,
        failed: SocketAddrV4,
        replacement: Option<SocketAddrV4>,
    ) -> Result<BackendInfo> {
        let service = self.service(&addr)?;
        if service.flags & SERVICE_F_COOKIE == 0 {
            return Err(Error::invalid(
                "service",
                addr,
                "failover applies to cookie-mode services",
            ));
        }
        let (slot, _) = self.find_backend(&addr, &service, failed)?;
        let target = match replacement {
            Some(r) => {
                let (rslot, _) = self.find_backend(&addr, &service, r)?;
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
        self.write_failover(slot, target)?;
        self.backend_info(&addr, &service, slot)
    }

    pub fn set_backend_state(
        &mut self,
        addr: ServiceAddr,
        endpoint: SocketAddrV4,
        state: BackendState,
    ) -> Result<BackendInfo> {
        let service = self.service(&addr)?;
        let (slot, mut backend) = self.find_backend(&addr, &service, endpoint)?;
        if backend.state != state.code() {
            backend.state = state.code();
            self.update_backend(&service, slot, backend)?;
        }
        self.backend_info(&addr, &service, slot)
    }

    pub fn set_backend_weight(
        &mut self,
        addr: ServiceAddr,
        endpoint: SocketAddrV4,
        weight: Weight,
    ) -> Result<BackendInfo> {
        let service = self.service(&addr)?;
        let (slot, mut backend) = self.find_backend(&addr, &service, endpoint)?;
        if backend.weight != weight.get() {
            backend.weight = weight.get();
            self.update_backend(&service, slot, backend)?;
        }
        self.backend_info(&addr, &service, slot)
    }

    /// Backends of one service, or of all services.
    pub fn backends(&self, filter: Option<ServiceAddr>) -> Result<Vec<BackendInfo>> {
        let health = self.health_records()?;
        let services = self.service_entries()?;
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
            let shares = maglev::shares(&self.ring_block(&service)?);
            let cookie = self.cookie_details(&service)?;
            for (slot, b) in self.backends_of(&service)? {
                let health = health.get(&slot).and_then(HealthInfo::from_record);
                out.push(describe(&addr, slot, &b, &shares, &cookie, health));
            }
        }
        Ok(out)
    }

    fn backend_info(
        &self,
        addr: &ServiceAddr,
        service: &Service,
        slot: u32,
    ) -> Result<BackendInfo> {
        let b = self.store.backend(slot)?;
        let shares = maglev::shares(&self.ring_block(service)?);
        let cookie = self.cookie_details(service)?;
        let health = HealthInfo::from_record(&self.health_record(slot)?);
        Ok(describe(addr, slot, &b, &shares, &cookie, health))
    }

    /// Service address and backend address of every used backend slot (for counters).
    pub(crate) fn slot_names(
        &self,
    ) -> Result<std::collections::HashMap<u32, (String, SocketAddrV4, &'static str)>> {
        let services = self.service_entries()?;
        let mut out = std::collections::HashMap::new();
        for (slot, b) in self.store.used_backends()? {
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

    /// Server-ID tokens and failover targets of a cookie-mode service's backends.
    fn cookie_details(&self, service: &Service) -> Result<CookieDetails> {
        let mut d = CookieDetails::default();
        if service.flags & SERVICE_F_COOKIE == 0 {
            return Ok(d);
        }
        for (_, token, slot) in self.server_id_entries(service.id, None)? {
            d.tokens.insert(slot, token);
        }
        for (slot, _) in self.backends_of(service)? {
            let f = self.store.failover(slot)?;
            if f.active == 1 {
                if let Ok(r) = self.store.backend(f.replacement) {
                    d.failover.insert(slot, endpoint_of(&r));
                }
            }
        }
        Ok(d)
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

//! The library API on [`Balancer`]: each call runs one [`Control`] operation over the
//! instance's pinned maps ([`PinnedMaps`]), so the CLI stays stateless.

use std::{collections::HashMap, net::SocketAddrV4};

use balancer_common::{syncookie::CookieSecret, BackendHealth, GlobalStats};

use crate::{
    control::{
        cookie_mode::CookieSettings, flows::FlowInfo, stats::Stats, BackendInfo, BackendSpec,
        Control, ServiceInfo,
    },
    dataplane::{Balancer, PinnedMaps},
    error::Result,
    model::{BackendState, Persistence, ServiceAddr, Weight},
};

impl Balancer {
    /// The control operations over this instance's pinned maps, for callers that make
    /// several (the daemon's apply): the maps are opened once for all of them.
    pub fn control(&self) -> Control<PinnedMaps<'_>> {
        Control::new(PinnedMaps::new(self))
    }

    pub fn add_service(&self, addr: ServiceAddr) -> Result<ServiceInfo> {
        self.control().add_service(addr)
    }

    /// Adds a service; with `cookie`, in cookie mode (TCP only).
    pub fn add_service_with(
        &self,
        addr: ServiceAddr,
        cookie: Option<CookieSettings>,
    ) -> Result<ServiceInfo> {
        self.control().add_service_with(addr, cookie)
    }

    /// Adds a service in NAT or cookie mode, with source-address persistence or without.
    pub fn add_service_opts(
        &self,
        addr: ServiceAddr,
        cookie: Option<CookieSettings>,
        persistence: Persistence,
    ) -> Result<ServiceInfo> {
        self.control().add_service_opts(addr, cookie, persistence)
    }

    /// Changes a service's persistence in place (see [`Control::set_persistence`]).
    pub fn set_persistence(&self, addr: ServiceAddr, persistence: Persistence) -> Result<()> {
        self.control().set_persistence(addr, persistence)
    }

    /// Removes a service and its backends. Established flows keep their translation until
    /// they end or time out; new connections to the VIP are no longer answered.
    pub fn remove_service(&self, addr: ServiceAddr) -> Result<()> {
        self.control().remove_service(addr)
    }

    pub fn services(&self) -> Result<Vec<ServiceInfo>> {
        self.control().services()
    }

    pub fn add_backend(&self, addr: ServiceAddr, spec: BackendSpec) -> Result<BackendInfo> {
        self.control().add_backend(addr, spec)
    }

    /// Removes a backend: it gets no new flows; flows already bound to it keep their
    /// translation until they end or time out.
    pub fn remove_backend(&self, addr: ServiceAddr, endpoint: SocketAddrV4) -> Result<()> {
        self.control().remove_backend(addr, endpoint)
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
        self.control().set_failover(addr, failed, replacement)
    }

    pub fn set_backend_state(
        &self,
        addr: ServiceAddr,
        endpoint: SocketAddrV4,
        state: BackendState,
    ) -> Result<BackendInfo> {
        self.control().set_backend_state(addr, endpoint, state)
    }

    pub fn set_backend_weight(
        &self,
        addr: ServiceAddr,
        endpoint: SocketAddrV4,
        weight: Weight,
    ) -> Result<BackendInfo> {
        self.control().set_backend_weight(addr, endpoint, weight)
    }

    /// Backends of one service, or of all services.
    pub fn backends(&self, filter: Option<ServiceAddr>) -> Result<Vec<BackendInfo>> {
        self.control().backends(filter)
    }

    /// Installs `secret` as the current syncookie secret; the current one becomes the
    /// previous one, so cookies handed out just before still validate.
    pub fn rotate_syncookie_secret(&self, secret: CookieSecret) -> Result<()> {
        self.control().rotate_syncookie_secret(secret)
    }

    /// Whether a syncookie secret is installed.
    pub fn has_syncookie_secret(&self) -> Result<bool> {
        self.control().has_syncookie_secret()
    }

    /// Health records of every slot that has one.
    pub fn health_records(&self) -> Result<HashMap<u32, BackendHealth>> {
        self.control().health_records()
    }

    /// Health record of one slot (`state` UNKNOWN when none was written).
    pub fn health_record(&self, slot: u32) -> Result<BackendHealth> {
        self.control().health_record(slot)
    }

    /// Writes a slot's health record (the daemon, after each check).
    pub fn write_health(&self, slot: u32, record: &BackendHealth) -> Result<()> {
        self.control().write_health(slot, record)
    }

    /// Forgets a slot's health (its backend was removed; a new backend may take the slot).
    pub fn clear_health(&self, slot: u32) -> Result<()> {
        self.control().clear_health(slot)
    }

    /// Global counters summed over CPUs, in `Counter` order.
    pub fn global_counters(&self) -> Result<GlobalStats> {
        self.control().global_counters()
    }

    pub fn stats(&self) -> Result<Stats> {
        self.control().stats()
    }

    /// Client-side flow entries (at most `limit`), oldest first.
    pub fn flows(&self, limit: usize) -> Result<Vec<FlowInfo>> {
        self.control().flows(limit)
    }
}

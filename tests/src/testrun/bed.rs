//! The test bed: one pinned balancer instance, its namespace and worker, the services
//! and backends a test configures, raw map readers, and the global counters.

use super::*;

// --- The test bed -------------------------------------------------------------------

/// One pinned balancer instance in its own namespace, ready for single-packet runs.
pub struct TestBed {
    // Dropped in this order after `Drop::drop` (which stops the worker and closes the
    // balancer handle, whose lock `detach` needs): pins, then the namespace.
    pub(super) worker: Option<Worker>,
    pub(super) balancer: Option<Balancer>,
    pub(super) pins: PinGuard,
    pub(super) netns: Netns,
    pub(super) client_ifindex: u32,
    pub(super) backend_ifindex: u32,
}

impl Drop for TestBed {
    fn drop(&mut self) {
        drop(self.worker.take());
        drop(self.balancer.take());
    }
}

impl TestBed {
    /// A bed with a flow table of `flow_capacity` entries and no services.
    pub fn new(flow_capacity: u32) -> Result<TestBed> {
        require_root();
        let netns = Netns::new("tr")?;
        for (k, v) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.forwarding", "1"),
            ("net.ipv4.conf.default.forwarding", "1"),
        ] {
            netns.sysctl(k, v)?;
        }
        for (name, mac, addr) in [
            (CLIENT_IF, CLIENT_IF_MAC, CLIENT_IF_ADDR),
            (BACKEND_IF, BACKEND_IF_MAC, BACKEND_IF_ADDR),
        ] {
            // A veth pair with both ends in the namespace (this kernel has no dummy
            // driver); the peer only has to be up so the device has carrier.
            let mac = fmt_mac(&mac);
            let peer = format!("{name}p");
            netns.ip(&[
                "link", "add", name, "address", &mac, "type", "veth", "peer", "name", &peer,
            ])?;
            netns.ip(&["addr", "add", &format!("{addr}/24"), "dev", name])?;
            netns.ip(&["link", "set", &peer, "up"])?;
            netns.ip(&["link", "set", name, "up"])?;
        }
        // The FIB helper refuses to forward from a device with forwarding off; lo is the
        // ingress of context-less runs.
        for dev in ["lo", CLIENT_IF, BACKEND_IF] {
            let out = netns.exec(
                "sysctl",
                &["-n", &format!("net.ipv4.conf.{dev}.forwarding")],
            )?;
            let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if v != "1" {
                bail!("net.ipv4.conf.{dev}.forwarding is {v:?} in the test namespace, expected 1");
            }
        }

        let dir = Path::new(PIN_ROOT).join(unique_name("tr"));
        let pins = PinGuard(dir.clone());
        // Every cookie pair is reported (no sampling), so counters are deterministic.
        let config = balancer_common::Config {
            pair_sample_mask: 0,
            ..Default::default()
        };
        dataplane::load_pinned(&dir, flow_capacity, &config)
            .with_context(|| format!("loading the data plane under {}", dir.display()))?;
        let balancer = Balancer::open(&dir)?;
        let program = balancer.program()?;
        let worker = Worker::start(&netns, program, dir.clone())?;
        let (client_ifindex, backend_ifindex) =
            worker.call(|p| (p.client_ifindex, p.backend_ifindex))?;
        Ok(TestBed {
            worker: Some(worker),
            balancer: Some(balancer),
            pins,
            netns,
            client_ifindex,
            backend_ifindex,
        })
    }

    pub fn balancer(&self) -> &Balancer {
        self.balancer.as_ref().expect("open while the bed lives")
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pins.0
    }

    pub fn ifindex(&self, ingress: Ingress) -> u32 {
        match ingress {
            Ingress::Loopback => 1,
            Ingress::Client => self.client_ifindex,
            Ingress::Backend => self.backend_ifindex,
        }
    }

    /// Runs `f` on the worker thread (inside the namespace) with the programs.
    pub fn with_programs<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Programs) -> T + Send + 'static,
    ) -> Result<T> {
        self.worker.as_ref().expect("worker running").call(f)
    }

    /// One run of the balancer program on `frame`.
    pub fn run(&self, frame: &[u8], ingress: Ingress) -> Result<RunResult> {
        let frame = frame.to_vec();
        self.with_programs(move |p| run_one(&p.balancer, &frame, p.ifindex(ingress)))?
    }

    /// One run of the `xdp_pass` baseline on `frame`.
    pub fn run_pass(&self, frame: &[u8], ingress: Ingress) -> Result<RunResult> {
        let frame = frame.to_vec();
        self.with_programs(move |p| {
            let ifindex = p.ifindex(ingress);
            run_one(p.pass()?, &frame, ifindex)
        })?
    }

    /// One run of the TC ingress program (`balancer_tc`) on `frame`, as received on
    /// `ingress`. The verdict is a `TC_ACT_*` value.
    pub fn run_tc(&self, frame: &[u8], ingress: Ingress) -> Result<RunResult> {
        let frame = frame.to_vec();
        self.with_programs(move |p| {
            let ifindex = p.ifindex(ingress);
            run_one_tc(p.tc()?, &frame, ifindex)
        })?
    }

    /// Adds a permanent neighbour entry for `addr` on the backend side, with
    /// [`backend_mac`] as its MAC.
    pub fn add_neighbour(&self, addr: Ipv4Addr) -> Result<()> {
        let mac = fmt_mac(&backend_mac(addr));
        self.netns.ip(&[
            "neigh",
            "replace",
            &addr.to_string(),
            "lladdr",
            &mac,
            "dev",
            BACKEND_IF,
            "nud",
            "permanent",
        ])?;
        Ok(())
    }

    pub fn del_neighbour(&self, addr: Ipv4Addr) -> Result<()> {
        self.netns
            .ip(&["neigh", "del", &addr.to_string(), "dev", BACKEND_IF])?;
        Ok(())
    }

    /// Adds a service and its backends (weight 100 each), with a neighbour entry for every
    /// backend address.
    pub fn add_service(
        &self,
        vip: SocketAddrV4,
        proto: Proto,
        backends: &[SocketAddrV4],
    ) -> Result<ServiceAddr> {
        let addr = ServiceAddr {
            addr: *vip.ip(),
            port: vip.port(),
            proto,
        };
        self.balancer().add_service(addr)?;
        for b in backends {
            self.add_backend(addr, *b)?;
        }
        Ok(addr)
    }

    pub fn add_backend(&self, service: ServiceAddr, backend: SocketAddrV4) -> Result<()> {
        self.add_neighbour(*backend.ip())?;
        self.balancer()
            .add_backend(service, BackendSpec::new(backend, Weight::DEFAULT))?;
        Ok(())
    }

    /// Sets a backend's state (`balancer_common::backend_state::*`).
    pub fn set_backend_state(
        &self,
        service: ServiceAddr,
        backend: SocketAddrV4,
        state: u8,
    ) -> Result<()> {
        let state = BackendState::from_code(state)
            .with_context(|| format!("{state} is not the code of a backend state"))?;
        self.balancer().set_backend_state(service, backend, state)?;
        Ok(())
    }

    pub fn remove_backend(&self, service: ServiceAddr, backend: SocketAddrV4) -> Result<()> {
        self.balancer().remove_backend(service, backend)?;
        Ok(())
    }

    /// Adds a cookie-mode service (default cookie settings: `JSESSIONID`, `!`, primary
    /// segment 2, secondary 3) and its backends with their server-ID tokens, with a
    /// neighbour entry for every backend address.
    pub fn add_cookie_service(
        &self,
        vip: SocketAddrV4,
        backends: &[(SocketAddrV4, &str)],
    ) -> Result<ServiceAddr> {
        let addr = ServiceAddr {
            addr: *vip.ip(),
            port: vip.port(),
            proto: Proto::Tcp,
        };
        self.balancer()
            .add_service_with(addr, Some(CookieSettings::default()))?;
        for (b, id) in backends {
            self.add_cookie_backend(addr, *b, id)?;
        }
        Ok(addr)
    }

    /// Adds a backend with server-ID token `server_id` to a cookie-mode service.
    pub fn add_cookie_backend(
        &self,
        service: ServiceAddr,
        backend: SocketAddrV4,
        server_id: &str,
    ) -> Result<()> {
        self.add_neighbour(*backend.ip())?;
        self.balancer().add_backend(
            service,
            BackendSpec {
                server_id: Some(server_id.to_string()),
                ..BackendSpec::new(backend, Weight::DEFAULT)
            },
        )?;
        Ok(())
    }

    /// Cookie mode: sends the sessions of `failed` to `replacement` (or stops with `None`).
    pub fn set_failover(
        &self,
        service: ServiceAddr,
        failed: SocketAddrV4,
        replacement: Option<SocketAddrV4>,
    ) -> Result<()> {
        self.balancer().set_failover(service, failed, replacement)?;
        Ok(())
    }

    /// Installs `secret` as the current syncookie secret (the current one becomes the
    /// previous one).
    pub fn rotate_syncookie_secret(&self, secret: CookieSecret) -> Result<()> {
        self.balancer().rotate_syncookie_secret(secret)?;
        Ok(())
    }

    /// The pinned map `name` as the typed map `M`; `label` names it in errors.
    fn pinned_map<M>(&self, name: &str, label: &str) -> Result<M>
    where
        M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
    {
        self.balancer()
            .map(name)?
            .try_into()
            .with_context(|| format!("{label} map"))
    }

    /// Every entry of the flow table (both directions), raw.
    pub fn flow_entries(&self) -> Result<Vec<(FlowKey, Flow)>> {
        let map: HashMap<MapData, FlowKey, Flow> = self.pinned_map(map_names::FLOWS, "FLOWS")?;
        let mut out = Vec::new();
        for item in map.iter() {
            out.push(item.context("reading FLOWS")?);
        }
        Ok(out)
    }

    /// The flow-table entry of `key`, if any.
    pub fn flow_entry(&self, key: &FlowKey) -> Result<Option<Flow>> {
        Ok(self
            .flow_entries()?
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, f)| f))
    }

    /// Keys of the PENDING map (first segments kept while binding).
    pub fn pending_keys(&self) -> Result<Vec<FlowKey>> {
        let map: HashMap<MapData, FlowKey, PendingSegment> =
            self.pinned_map(map_names::PENDING, "PENDING")?;
        let mut out = Vec::new();
        for k in map.keys() {
            out.push(k.context("reading PENDING")?);
        }
        Ok(out)
    }

    /// The kept first segment (TCP header and payload) under `key` (a binding's reply
    /// key), if any.
    pub fn pending_segment(&self, key: &FlowKey) -> Result<Option<Vec<u8>>> {
        Ok(self.pending(key)?.map(|seg| {
            let len = (seg.len as usize).min(seg.bytes.len());
            seg.bytes[..len].to_vec()
        }))
    }

    /// The reply entry kept with the first segment under `key`, if any.
    pub fn pending_reply(&self, key: &FlowKey) -> Result<Option<Flow>> {
        Ok(self.pending(key)?.map(|seg| seg.reply))
    }

    /// The whole PENDING value under `key`, if any.
    pub fn pending(&self, key: &FlowKey) -> Result<Option<PendingSegment>> {
        let map: HashMap<MapData, FlowKey, PendingSegment> =
            self.pinned_map(map_names::PENDING, "PENDING")?;
        match map.get(key, 0) {
            Ok(seg) => Ok(Some(seg)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("reading PENDING"),
        }
    }

    /// Per-backend counters (summed over CPUs) by backend address.
    pub fn backend_counters(&self) -> Result<BTreeMap<SocketAddrV4, BackendCountersValues>> {
        let mut out = BTreeMap::new();
        for b in self.balancer().stats()?.backends {
            out.insert(b.backend, b.counters);
        }
        Ok(out)
    }

    /// The backend the service's Maglev table gives the client-side 5-tuple `key`
    /// (what cookie mode falls back to), read from the pinned RING and BACKENDS maps and
    /// hashed with the data plane's own choice of hash (`new_flow_hash`: the 5-tuple, or
    /// the client's address under source persistence).
    pub fn policy_backend(&self, service: ServiceAddr, key: &FlowKey) -> Result<SocketAddrV4> {
        let info = self
            .balancer()
            .services()?
            .into_iter()
            .find(|s| s.service == service)
            .with_context(|| format!("no service {service}"))?;
        let id = info.id;
        let hashed = balancer_common::Service {
            id,
            flags: info.persistence.flags(),
        };
        let ring: Array<MapData, u32> = self.pinned_map(map_names::RING, "RING")?;
        let backends: Array<MapData, Backend> = self.pinned_map(map_names::BACKENDS, "BACKENDS")?;
        let index = id * RING_SIZE + balancer_common::hash::new_flow_hash(&hashed, key) % RING_SIZE;
        let slot = ring.get(&index, 0).context("reading RING")?;
        let b = backends.get(&slot, 0).context("reading BACKENDS")?;
        Ok(SocketAddrV4::new(
            Ipv4Addr::from(b.addr.to_ne_bytes()),
            u16::from_be(b.port),
        ))
    }

    /// The global counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        Ok(Counters(self.balancer().global_counters()?))
    }

    /// Client-side flow entries.
    pub fn flows(&self) -> Result<Vec<FlowInfo>> {
        Ok(self.balancer().flows(usize::MAX)?)
    }

    /// The flow of `client` to `service` (as `flows()` reports it), if any.
    pub fn flow_of(
        &self,
        client: SocketAddrV4,
        service: SocketAddrV4,
        proto: Proto,
    ) -> Result<Option<FlowInfo>> {
        let service = ServiceAddr {
            addr: *service.ip(),
            port: service.port(),
            proto,
        };
        Ok(self
            .flows()?
            .into_iter()
            .find(|f| f.client == client && f.service == service))
    }
}

fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A snapshot of the global counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters(pub GlobalStats);

impl Counters {
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }

    /// The counters that changed since `before`, by label, with their increase.
    pub fn delta(&self, before: &Counters) -> BTreeMap<&'static str, u64> {
        Counter::ALL
            .iter()
            .filter_map(|c| {
                let d = self.get(*c).wrapping_sub(before.get(*c));
                (d != 0).then_some((c.label(), d))
            })
            .collect()
    }
}

/// Builds the map [`Counters::delta`] returns, from `(counter, increase)` pairs.
pub fn counter_map(entries: &[(Counter, u64)]) -> BTreeMap<&'static str, u64> {
    entries
        .iter()
        .filter(|(_, n)| *n != 0)
        .map(|(c, n)| (c.label(), *n))
        .collect()
}

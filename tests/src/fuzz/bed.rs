//! The fuzz bed: the services and backends it configures, and raw access to its maps.

use super::*;

pub const VIP_COOKIE: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 2);
/// An address in the VIP range without any service.
pub const NOT_A_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 9);
/// Client addresses the templates use.
pub const CLIENTS: [Ipv4Addr; 4] = [
    CLIENT,
    Ipv4Addr::new(198, 18, 0, 3),
    Ipv4Addr::new(198, 18, 0, 4),
    Ipv4Addr::new(198, 18, 0, 5),
];
/// Bytes of a test run's frame the program sees (the linear part of the page the kernel
/// gives the run: 4096 - 256 bytes of headroom - 320 of `skb_shared_info`, measured on
/// this kernel); longer frames continue in fragments the program does not read, so it
/// sees them cut here.
pub const LINEAR_MAX: usize = 3520;
/// Client ports come mostly from this small pool, so that generated packets meet the
/// flows earlier ones created.
pub(super) const CLIENT_PORT_BASE: u16 = 40000;
pub(super) const CLIENT_PORTS: usize = 32;

/// Indexes into [`Layout::svcs`].
pub(super) const SVC_TCP: usize = 0;
pub(super) const SVC_UDP: usize = 1;
pub(super) const SVC_DOWN: usize = 2;
pub(super) const SVC_COOKIE: usize = 3;

struct BackendDef {
    pub(super) addr: SocketAddrV4,
    pub(super) state: u8,
    server_id: Option<&'static str>,
}

struct ServiceDef {
    pub(super) name: &'static str,
    pub(super) addr: SocketAddrV4,
    pub(super) proto: Proto,
    pub(super) cookie: bool,
    pub(super) backends: Vec<BackendDef>,
}

fn be_def(n: u8, port: u16, state: u8, server_id: Option<&'static str>) -> BackendDef {
    BackendDef {
        addr: SocketAddrV4::new(backend_addr(n), port),
        state,
        server_id,
    }
}

impl ServiceDef {
    /// The service as loaded, with service id `id`.
    fn loaded(&self, id: u32) -> Svc {
        Svc {
            name: self.name,
            addr: self.addr,
            proto: match self.proto {
                Proto::Tcp => PROTO_TCP,
                Proto::Udp => PROTO_UDP,
            },
            cookie: self.cookie,
            id,
        }
    }
}

impl BackendDef {
    /// The backend as loaded: of service index `svc`, in backend slot `slot`.
    fn loaded(&self, svc: usize, slot: u32) -> Be {
        Be {
            addr: self.addr,
            svc,
            slot,
            state: self.state,
            server_id: self.server_id,
        }
    }
}

/// The cookie service's failover (its DOWN backend, the fourth, replaced by the second),
/// as indexes into `bes`.
fn cookie_failover(cookie: &ServiceDef, bes: &[Be]) -> StdMap<usize, usize> {
    let idx = |a: SocketAddrV4| bes.iter().position(|b| b.addr == a).unwrap();
    StdMap::from([(idx(cookie.backends[3].addr), idx(cookie.backends[1].addr))])
}

/// A service without cookie mode.
fn service(
    name: &'static str,
    vip: Ipv4Addr,
    port: u16,
    proto: Proto,
    backends: Vec<BackendDef>,
) -> ServiceDef {
    ServiceDef {
        name,
        addr: SocketAddrV4::new(vip, port),
        proto,
        cookie: false,
        backends,
    }
}

/// The services, in the order of the `SVC_*` indexes.
fn service_defs() -> Vec<ServiceDef> {
    use backend_state::{DOWN, DRAINING, UP};
    let web = |n: u8, state: u8| be_def(n, 8080, state, None);
    let dns = |n: u8, state: u8| be_def(n, 5353, state, None);
    let app = |n: u8, state: u8, id: &'static str| be_def(n, 8080, state, Some(id));
    let nat_tcp = [web(0, UP), web(1, UP), web(2, DRAINING), web(3, DOWN)];
    let nat_udp = [dns(10, UP), dns(11, UP), dns(12, DRAINING)];
    let apps = [
        app(20, UP, "app1"),
        app(21, UP, "app2"),
        app(22, DRAINING, "app3"),
        app(23, DOWN, "app4"),
    ];
    vec![
        service("nat-tcp", VIP, 80, Proto::Tcp, nat_tcp.into()),
        service("nat-udp", VIP, 53, Proto::Udp, nat_udp.into()),
        service("nat-tcp-down", VIP, 81, Proto::Tcp, vec![web(30, DOWN)]),
        ServiceDef {
            cookie: true,
            ..service("cookie", VIP_COOKIE, 80, Proto::Tcp, apps.into())
        },
    ]
}

/// A service of the bed as loaded.
#[derive(Clone, Debug)]
pub struct Svc {
    pub name: &'static str,
    pub addr: SocketAddrV4,
    pub proto: u8,
    pub cookie: bool,
    pub id: u32,
}

/// A backend of the bed as loaded.
#[derive(Clone, Debug)]
pub struct Be {
    pub addr: SocketAddrV4,
    pub svc: usize,
    pub slot: u32,
    pub state: u8,
    pub server_id: Option<&'static str>,
}

/// Services and backends of the bed, with their ids and slots.
#[derive(Clone, Debug)]
pub struct Layout {
    pub svcs: Vec<Svc>,
    pub bes: Vec<Be>,
    /// Cookie failover: backend index -> replacement backend index.
    pub failover: StdMap<usize, usize>,
}

impl Layout {
    pub(super) fn svc_for(&self, dst: SocketAddrV4, proto: u8) -> Option<usize> {
        self.svcs
            .iter()
            .position(|s| s.addr == dst && s.proto == proto)
    }

    pub(super) fn be_by_addr(&self, addr: SocketAddrV4, proto: u8) -> Option<usize> {
        self.bes
            .iter()
            .position(|b| b.addr == addr && self.svcs[b.svc].proto == proto)
    }

    pub(super) fn be_by_slot(&self, slot: u32) -> Option<usize> {
        self.bes.iter().position(|b| b.slot == slot)
    }

    pub(super) fn be_by_token(&self, svc: usize, hash: u64) -> Option<usize> {
        self.bes.iter().position(|b| {
            b.svc == svc
                && b.server_id
                    .is_some_and(|t| token_hash(t.as_bytes()) == hash)
        })
    }

    pub(super) fn backends_of(&self, svc: usize) -> Vec<usize> {
        (0..self.bes.len())
            .filter(|&i| self.bes[i].svc == svc)
            .collect()
    }

    pub(super) fn up(&self, be: usize) -> bool {
        self.bes[be].state == backend_state::UP
    }
}

impl Layout {
    /// The bed's layout without a bed (service ids and backend slots in definition
    /// order): for host-side tests of the generator and the oracle.
    pub fn offline() -> Layout {
        let defs = service_defs();
        let mut svcs = Vec::new();
        let mut bes = Vec::new();
        for (si, def) in defs.iter().enumerate() {
            svcs.push(def.loaded(si as u32));
            for b in &def.backends {
                bes.push(b.loaded(si, bes.len() as u32));
            }
        }
        let failover = cookie_failover(&defs[SVC_COOKIE], &bes);
        Layout {
            svcs,
            bes,
            failover,
        }
    }
}

/// The configured bed: a [`TestBed`] and its layout.
pub struct FuzzBed {
    pub bed: TestBed,
    pub layout: Layout,
}

impl FuzzBed {
    pub fn new(flow_capacity: u32) -> Result<FuzzBed> {
        let bed = TestBed::new(flow_capacity)?;
        let defs = service_defs();
        for def in &defs {
            let addr = ServiceAddr {
                addr: *def.addr.ip(),
                port: def.addr.port(),
                proto: def.proto,
            };
            if def.cookie {
                bed.balancer()
                    .add_service_with(addr, Some(CookieSettings::default()))?;
                for b in &def.backends {
                    bed.add_cookie_backend(addr, b.addr, b.server_id.expect("server id"))?;
                }
            } else {
                bed.balancer().add_service(addr)?;
                for b in &def.backends {
                    bed.add_backend(addr, b.addr)?;
                }
            }
            for b in &def.backends {
                if b.state != backend_state::UP {
                    bed.set_backend_state(addr, b.addr, b.state)?;
                }
            }
        }
        let cookie = &defs[SVC_COOKIE];
        let cookie_addr = ServiceAddr {
            addr: *cookie.addr.ip(),
            port: cookie.addr.port(),
            proto: Proto::Tcp,
        };
        // app4 (down) -> app2 (up).
        bed.set_failover(
            cookie_addr,
            cookie.backends[3].addr,
            Some(cookie.backends[1].addr),
        )?;
        bed.rotate_syncookie_secret(TEST_SECRET)?;

        let infos = bed.balancer().services()?;
        let mut svcs = Vec::new();
        for def in &defs {
            let info = infos
                .iter()
                .find(|s| s.service.addr == *def.addr.ip() && s.service.port == def.addr.port())
                .filter(|s| s.service.proto == def.proto)
                .ok_or_else(|| anyhow!("service {} not loaded", def.name))?;
            svcs.push(def.loaded(info.id));
        }
        let binfos = bed.balancer().backends(None)?;
        let mut bes = Vec::new();
        for (si, def) in defs.iter().enumerate() {
            for b in &def.backends {
                let info = binfos
                    .iter()
                    .find(|i| i.backend == b.addr)
                    .ok_or_else(|| anyhow!("backend {} not loaded", b.addr))?;
                bes.push(b.loaded(si, info.slot));
            }
        }
        let failover = cookie_failover(cookie, &bes);
        Ok(FuzzBed {
            bed,
            layout: Layout {
                svcs,
                bes,
                failover,
            },
        })
    }
}

/// Handles on the pinned maps the fuzzer reads (usable from any thread).
pub(super) struct Maps {
    stats: PerCpuArray<MapData, GlobalStats>,
    backend_stats: PerCpuArray<MapData, BackendStats>,
    pub(super) flows: HashMap<MapData, FlowKey, Flow>,
    pub(super) pending: HashMap<MapData, FlowKey, PendingSegment>,
    pub(super) ring: Array<MapData, u32>,
}

impl Maps {
    pub(super) fn open(bed: &TestBed) -> Result<Maps> {
        let b = bed.balancer();
        Ok(Maps {
            stats: b.map(map_names::STATS)?.try_into().context("STATS")?,
            backend_stats: b
                .map(map_names::BACKEND_STATS)?
                .try_into()
                .context("BACKEND_STATS")?,
            flows: b.map(map_names::FLOWS)?.try_into().context("FLOWS")?,
            pending: b.map(map_names::PENDING)?.try_into().context("PENDING")?,
            ring: b.map(map_names::RING)?.try_into().context("RING")?,
        })
    }

    pub(super) fn counters(&self) -> Result<GlobalStats> {
        let per_cpu = self.stats.get(&0, 0).context("reading STATS")?;
        let mut total = [0u64; Counter::COUNT];
        for cpu in per_cpu.iter() {
            for (t, v) in total.iter_mut().zip(cpu.iter()) {
                *t += v;
            }
        }
        Ok(total)
    }

    pub(super) fn backend_counters(&self, slot: u32) -> Result<BackendStats> {
        let per_cpu = self
            .backend_stats
            .get(&slot, 0)
            .context("reading BACKEND_STATS")?;
        let mut total = BackendStats::default();
        for cpu in per_cpu.iter() {
            total.add(cpu);
        }
        Ok(total)
    }

    /// Deletes every flow entry and kept segment; returns how many.
    pub(super) fn flush(&mut self) -> Result<usize> {
        let keys: Vec<FlowKey> = self.flows.keys().filter_map(|k| k.ok()).collect();
        let mut n = 0;
        for k in &keys {
            if self.flows.remove(k).is_ok() {
                n += 1;
            }
        }
        let keys: Vec<FlowKey> = self.pending.keys().filter_map(|k| k.ok()).collect();
        for k in &keys {
            let _ = self.pending.remove(k);
        }
        Ok(n)
    }
}

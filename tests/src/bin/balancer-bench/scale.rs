//! Scale: per-packet cost with a small vs a big flow table and with few vs many
//! backends, and the memory of the map set.
//!
//! Method (single-shot BPF_PROG_TEST_RUN with the kernel-reported duration, as in
//! `dataplane.rs`):
//! - Three test beds, each a real balancer instance with a flow table of
//!   [`CAPACITY`] entries (2^21: the hash table then has 2^21 buckets, as for any capacity
//!   in (2^20, 2^21]; the LRU map preallocates every element, so 1M entries leave a
//!   million free ones and nothing is evicted):
//!   `small` (4 backends, ~1k entries), `flows_1m` (4 backends, ~1M entries) and
//!   `backends_4096` (4,096 backends, the whole BACKENDS array, ~1k entries). The two
//!   flow-table beds also have a cookie-mode service (3 backends) for the spliced path.
//! - The tables are filled from userspace with `BPF_MAP_UPDATE_BATCH`: both entries of
//!   each flow, exactly as the program builds them (`flow::new_entries`) for a random
//!   client (198.19.0.0/16, random port) and the backend the service's Maglev table
//!   gives its 5-tuple, established, next hop resolved (the backend's MAC on the
//!   backend-side interface).
//! - Paths (every call's verdict checked, a sample of outputs checked byte by byte):
//!   `established_hot` (the same established flow every call: its entry stays in the
//!   cache), `established_random` (each call the ACK of a random one of the pre-filled
//!   flows: the honest figure for a table bigger than the caches), `new_flow_syn` (a new
//!   random 5-tuple each call: flow-table miss, Maglev pick, two inserts, next hop from
//!   the per-CPU cache or the FIB; its entries are deleted after each batch, outside the
//!   measured calls, so the table stays at its size), `spliced_forward` (one spliced
//!   cookie-mode flow, hot).
//! - Beds and paths are interleaved in rounds (order rotated), the worker threads pinned
//!   to one CPU; each scale point's median is compared with the small bed's.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsFd,
    time::Instant,
};

use anyhow::{bail, ensure, Context, Result};
use aya::{
    maps::{Array, HashMap, Map, MapData, MapInfo},
    programs::ProgramInfo,
};
use balancer_ebpf::{
    flow::new_entries,
    flow_state,
    hash::flow_hash,
    map_names,
    parse::{EthHdr, Packet, TCP_SYN},
    Backend, Counter, Flow, FlowKey, DEFAULT_FLOW_CAPACITY, MAX_BACKENDS, NEXT_HOP_TTL_NS,
    RING_SIZE,
};
use balancer_tests::{packet::*, testrun::*};
use balancer_user::{
    addr::ip_to_map,
    control::DEFAULT_WEIGHT,
    dataplane::{PROGRAM_PIN, TC_PROGRAM_PIN},
    maglev::{self, Member, NO_BACKEND},
    BackendSpec, Proto, ServiceAddr,
};
use serde::Serialize;

use crate::{
    dataplane::{splice_one, COOKIE_VIP},
    stats::{expect_growth, iqm, median, percentile, pin_to_cpu, quantum, Machine},
    Target,
};

/// Flow-table capacity of every bed.
const CAPACITY: u32 = 1 << 21;
/// Entries (both directions of each flow) of the small and the big table.
const SMALL_ENTRIES: usize = 1 << 10;
const BIG_ENTRIES: usize = 1 << 20;
const FEW_BACKENDS: usize = 4;
const MANY_BACKENDS: usize = MAX_BACKENDS as usize;
/// Per-packet cost at a scale point over the small point's, at most.
const TARGET_RATIO: f64 = 1.10;

/// Client of the hot established flow.
const EST_CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 250), 40000);
/// The many backends: 198.18.32.1 upwards (on-link route 198.18.32.0/19 on the
/// backend-side interface, one permanent neighbour each).
const MANY_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 32, 1);
const MANY_ROUTE: &str = "198.18.32.0/19";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PathId {
    EstHot,
    EstRandom,
    NewFlow,
    Spliced,
    /// Diagnostic, big table only: random ACKs over only SMALL_ENTRIES/2 of its flows
    /// (the small bed's working set in the big table).
    EstRandomFew,
}

const PATHS: [PathId; 5] = [
    PathId::EstHot,
    PathId::EstRandom,
    PathId::NewFlow,
    PathId::Spliced,
    PathId::EstRandomFew,
];

impl PathId {
    fn name(self) -> &'static str {
        match self {
            PathId::EstHot => "established_hot",
            PathId::EstRandom => "established_random",
            PathId::NewFlow => "new_flow_syn",
            PathId::Spliced => "spliced_forward",
            PathId::EstRandomFew => "established_random_512",
        }
    }

    fn index(self) -> usize {
        PATHS.iter().position(|p| *p == self).expect("in PATHS")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Point {
    Small,
    BigFlows,
    ManyBackends,
}

impl Point {
    fn name(self) -> &'static str {
        match self {
            Point::Small => "small (1k entries, 4 backends)",
            Point::BigFlows => "flows_1m (1M entries, 4 backends)",
            Point::ManyBackends => "backends_4096 (1k entries, 4096 backends)",
        }
    }

    fn entries(self) -> usize {
        if self == Point::BigFlows {
            BIG_ENTRIES
        } else {
            SMALL_ENTRIES
        }
    }

    fn backends(self) -> usize {
        if self == Point::ManyBackends {
            MANY_BACKENDS
        } else {
            FEW_BACKENDS
        }
    }

    fn cookie(self) -> bool {
        self != Point::ManyBackends
    }
}

const POINTS: [Point; 3] = [Point::Small, Point::BigFlows, Point::ManyBackends];

/// How much the scale part measures.
pub struct ScaleOptions {
    pub rounds: usize,
    pub calls: usize,
}

impl ScaleOptions {
    pub fn new(quick: bool) -> ScaleOptions {
        if quick {
            ScaleOptions {
                rounds: 16,
                calls: 2_000,
            }
        } else {
            ScaleOptions {
                rounds: 40,
                calls: 10_000,
            }
        }
    }
}

/// splitmix64: small, deterministic, good enough to spread keys.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// CLOCK_MONOTONIC_COARSE, the clock of `bpf_ktime_get_coarse_ns`.
fn coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One bed at one scale point.
struct Scene {
    point: Point,
    bed: TestBed,
    /// The service's Maglev table and the backends of its slots.
    ring: Vec<u32>,
    slots: StdHashMap<u32, SocketAddrV4>,
    /// Clients of the pre-filled flows (to the VIP).
    clients: Vec<SocketAddrV4>,
    /// Client (address, port) pairs in use, so new flows never meet an entry.
    used: HashSet<u64>,
    hot: Vec<u8>,
    hot_backend: SocketAddrV4,
    spliced: Option<Vec<u8>>,
    setup_seconds: f64,
    /// New-flow calls: coarse time and backend slot, in call order (warm-up included),
    /// and whether the call was measured.
    syn_calls: Vec<(u64, u32, bool)>,
}

impl Scene {
    fn backend_of(&self, client: SocketAddrV4) -> (u32, SocketAddrV4) {
        let key = tcp_key(client, vip());
        let slot = self.ring[(flow_hash(&key) % RING_SIZE) as usize];
        (slot, self.slots[&slot])
    }

    fn random_client(&mut self, rng: &mut Rng) -> SocketAddrV4 {
        loop {
            let r = rng.next();
            let addr = u32::from(Ipv4Addr::new(198, 19, 0, 0)) | (r & 0xffff) as u32;
            let port = 1024 + ((r >> 16) % (65536 - 1024)) as u16;
            if self.used.insert((addr as u64) << 16 | port as u64) {
                return SocketAddrV4::new(Ipv4Addr::from(addr), port);
            }
        }
    }
}

fn open_map(p: &std::path::Path, name: &str) -> Result<Map> {
    let path = p.join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Map::from_map_data(data)?)
}

/// Adds the NAT service with `n` backends. Few: the bed's usual 198.18.1.x backends;
/// many: 198.18.32.1 upwards, with a route and permanent neighbours added in one batch.
fn add_nat_service(bed: &TestBed, n: usize) -> Result<StdHashMap<u32, SocketAddrV4>> {
    let backends: Vec<SocketAddrV4> = if n <= 200 {
        (0..n)
            .map(|i| SocketAddrV4::new(backend_addr(i as u8), 8080))
            .collect()
    } else {
        let base = u32::from(MANY_BASE);
        (0..n)
            .map(|i| SocketAddrV4::new(Ipv4Addr::from(base + i as u32), 8080))
            .collect()
    };
    if n > 200 {
        bed.netns()
            .ip(&["route", "add", MANY_ROUTE, "dev", BACKEND_IF])?;
        let batch: String = backends
            .iter()
            .map(|b| {
                let m = backend_mac(*b.ip());
                format!(
                    "neigh replace {} lladdr {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} dev {BACKEND_IF} nud permanent\n",
                    b.ip(),
                    m[0], m[1], m[2], m[3], m[4], m[5]
                )
            })
            .collect();
        let file = std::env::temp_dir().join(format!("{}.neigh", bed.netns().name()));
        fs::write(&file, batch)?;
        let r = bed.netns().ip(&["-batch", &file.to_string_lossy()]);
        let _ = fs::remove_file(&file);
        r.context("adding the backends' neighbours")?;
    } else {
        for b in &backends {
            bed.add_neighbour(*b.ip())?;
        }
    }
    let addr = ServiceAddr {
        addr: *vip().ip(),
        port: vip().port(),
        proto: Proto::Tcp,
    };
    let service = bed.balancer().add_service(addr)?;
    let mut slots = StdHashMap::new();
    if n <= 200 {
        for b in backends {
            let info = bed.balancer().add_backend(
                addr,
                BackendSpec {
                    addr: *b.ip(),
                    port: b.port(),
                    weight: DEFAULT_WEIGHT,
                    server_id: None,
                },
            )?;
            slots.insert(info.slot, b);
        }
        return Ok(slots);
    }
    // Many: `balancer backend add` one at a time rebuilds the Maglev table after each
    // (about 10 ms each, 40 s for 4,096). Written directly instead, as the control plane
    // would from an empty table with all of them: every slot, then the table computed by
    // the control plane's own `maglev::update`.
    let mut array: Array<MapData, Backend> = bed.balancer().map(map_names::BACKENDS)?.try_into()?;
    let mut members = Vec::with_capacity(n);
    for (slot, b) in backends.iter().enumerate() {
        let slot = slot as u32;
        array.set(
            slot,
            Backend {
                addr: ip_to_map(*b.ip()),
                port: b.port().to_be(),
                state: balancer_ebpf::backend_state::UP,
                _pad: 0,
                service: service.id,
                weight: DEFAULT_WEIGHT,
            },
            0,
        )?;
        members.push(Member {
            slot,
            identity: Member::identity_of(*b.ip(), b.port()),
            weight: DEFAULT_WEIGHT,
        });
        slots.insert(slot, *b);
    }
    let table = maglev::update(&vec![NO_BACKEND; RING_SIZE as usize], &members);
    let mut ring: Array<MapData, u32> = bed.balancer().map(map_names::RING)?.try_into()?;
    for (i, v) in table.iter().enumerate() {
        ring.set(service.id * RING_SIZE + i as u32, *v, 0)?;
    }
    let seen = bed.balancer().backends(None)?;
    ensure!(
        seen.len() == n && seen.iter().all(|b| b.table_share > 0.0),
        "the control plane sees {} backends (expected {n}, each with a share of the table)",
        seen.len()
    );
    Ok(slots)
}

/// The NAT service's Maglev table (service id from the control plane).
fn read_ring(bed: &TestBed) -> Result<Vec<u32>> {
    let id = bed
        .balancer()
        .services()?
        .into_iter()
        .find(|s| s.addr.addr == *vip().ip() && s.addr.port == vip().port())
        .context("NAT service missing")?
        .id;
    let ring: Array<MapData, u32> = bed
        .balancer()
        .map(balancer_ebpf::map_names::RING)?
        .try_into()?;
    (0..RING_SIZE)
        .map(|i| Ok(ring.get(&(id * RING_SIZE + i), 0)?))
        .collect()
}

/// Both entries of an established flow of `client` to the VIP through `slot`, as the
/// program leaves them after the handshake (next hop resolved).
fn established_entries(
    client: SocketAddrV4,
    slot: u32,
    backend: SocketAddrV4,
    client_if: u32,
    backend_if: u32,
    now: u64,
) -> [(FlowKey, Flow); 2] {
    let pkt = Packet {
        l3_off: 14,
        l4_off: 34,
        payload_off: 54,
        ip_end: 54,
        key: tcp_key(client, vip()),
        tcp_flags: TCP_SYN,
        ttl: 64,
        first_fragment: false,
        vlan: false,
    };
    let eth = EthHdr {
        dst: CLIENT_IF_MAC,
        src: CLIENT_MAC,
        ether_type: 0x0800u16.to_be(),
    };
    let b = Backend {
        addr: ip_to_map(*backend.ip()),
        port: backend.port().to_be(),
        state: balancer_ebpf::backend_state::UP,
        _pad: 0,
        service: 0,
        weight: DEFAULT_WEIGHT,
    };
    let (k, mut f, rk, mut r) = new_entries(&pkt, &eth, client_if, slot, &b, now);
    f.state = flow_state::ESTABLISHED;
    r.state = flow_state::ESTABLISHED;
    f.l2_valid = 1;
    f.ifindex = backend_if;
    f.dmac = backend_mac(*backend.ip());
    f.smac = BACKEND_IF_MAC;
    [(k, f), (rk, r)]
}

/// The vmalloc areas of BPF maps (/proc/vmallocinfo, root only): range -> (bytes of
/// pages allocated, caller). Map memory (hash table buckets and preallocated elements,
/// arrays, ring buffers, per-CPU chunks) is allocated there.
type Areas = StdHashMap<String, (u64, String)>;

fn vmalloc_areas() -> Areas {
    let text = fs::read_to_string("/proc/vmallocinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let range = it.next()?.to_string();
            let _size = it.next()?;
            let caller = it.next()?.split('+').next()?.to_string();
            let pages: u64 = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("pages="))?
                .parse()
                .ok()?;
            let map_related = ["map", "lru", "ringbuf", "pcpu", "bpf"]
                .iter()
                .any(|w| caller.contains(w));
            map_related.then_some((range, (pages * 4096, caller)))
        })
        .collect()
}

/// Bytes of the map-related vmalloc areas in `after` that are not in `before`.
fn vmalloc_growth(before: &Areas, after: &Areas) -> i64 {
    after
        .iter()
        .filter(|(k, _)| !before.contains_key(*k))
        .map(|(_, (b, _))| *b as i64)
        .sum()
}

fn scene(point: Point, rng: &mut Rng, progress: &dyn Fn(String)) -> Result<(Scene, i64)> {
    let started = Instant::now();
    let before = vmalloc_areas();
    let bed = TestBed::new(CAPACITY)?;
    let created = vmalloc_growth(&before, &vmalloc_areas());
    let slots = add_nat_service(&bed, point.backends())?;
    let spliced = if point.cookie() {
        let cb: Vec<SocketAddrV4> = (0..3)
            .map(|n| SocketAddrV4::new(backend_addr(20 + n), 8080))
            .collect();
        bed.add_cookie_service(
            COOKIE_VIP,
            &[(cb[0], "be1"), (cb[1], "be2"), (cb[2], "be3")],
        )?;
        bed.rotate_syncookie_secret(TEST_SECRET)?;
        Some(splice_one(&bed, cb[1])?)
    } else {
        None
    };
    for flags in [SYN, ACK] {
        let r = bed.run(
            &Frame::tcp(EST_CLIENT, vip(), flags).build(),
            Ingress::Client,
        )?;
        ensure!(
            r.verdict == XDP_REDIRECT,
            "hot flow setup: {}",
            r.verdict_name()
        );
    }
    let ring = read_ring(&bed)?;
    let mut s = Scene {
        point,
        bed,
        ring,
        slots,
        clients: Vec::new(),
        used: HashSet::new(),
        hot: Frame::tcp(EST_CLIENT, vip(), ACK).build(),
        hot_backend: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        spliced,
        setup_seconds: 0.0,
        syn_calls: Vec::new(),
    };
    s.hot_backend = s.backend_of(EST_CLIENT).1;
    let r = s.bed.run(&s.hot, Ingress::Client)?;
    check_to_backend(&s.hot, &r.output, EST_CLIENT, s.hot_backend)
        .context("hot established flow output")?;

    // Fill the table: both entries of entries/2 random flows, in one batch update.
    let flows = point.entries() / 2;
    let (cif, bif) = (
        s.bed.ifindex(Ingress::Client),
        s.bed.ifindex(Ingress::Backend),
    );
    let now = coarse_ns();
    let mut keys = Vec::with_capacity(flows * 2);
    let mut values = Vec::with_capacity(flows * 2);
    for _ in 0..flows {
        let c = s.random_client(rng);
        let (slot, backend) = s.backend_of(c);
        for (k, v) in established_entries(c, slot, backend, cif, bif, now) {
            keys.push(k);
            values.push(v);
        }
        s.clients.push(c);
    }
    let fill = Instant::now();
    let path = s.bed.pin_dir().join(balancer_ebpf::map_names::FLOWS);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let m0 = vmalloc_areas();
    map_update_batch(data.fd().as_fd(), &keys, &values).context("filling the flow table")?;
    let flows_map: HashMap<MapData, FlowKey, Flow> = Map::from_map_data(data)?.try_into()?;
    let fill_growth = vmalloc_growth(&m0, &vmalloc_areas());
    for _ in 0..64 {
        let k = keys[rng.below(keys.len())];
        flows_map
            .get(&k, 0)
            .context("a pre-filled entry is missing")?;
    }
    s.setup_seconds = started.elapsed().as_secs_f64();
    progress(format!(
        "  {}: {} entries written in {:.2} s (BPF_MAP_UPDATE_BATCH; map vmalloc areas grew {} kB meanwhile: elements are preallocated), setup {:.1} s",
        point.name(),
        keys.len(),
        fill.elapsed().as_secs_f64(),
        fill_growth / 1024,
        s.setup_seconds
    ));
    Ok((s, created))
}

/// The frames of one batch of one path on one bed.
enum Input {
    Same(Vec<u8>, usize),
    Each(Vec<Vec<u8>>),
}

struct Segment {
    path: PathId,
    input: Input,
    /// Calls whose output is checked: (call, client, backend).
    checks: Vec<(usize, SocketAddrV4, SocketAddrV4)>,
    /// Entries to delete after the batch (new flows).
    cleanup: Vec<FlowKey>,
}

fn segment(s: &mut Scene, path: PathId, calls: usize, rng: &mut Rng) -> Segment {
    let sample = |i: usize| i < 2 || i.is_multiple_of(997);
    match path {
        PathId::EstHot => Segment {
            path,
            input: Input::Same(s.hot.clone(), calls),
            checks: (0..calls)
                .filter(|i| sample(*i))
                .map(|i| (i, EST_CLIENT, s.hot_backend))
                .collect(),
            cleanup: Vec::new(),
        },
        PathId::Spliced => Segment {
            path,
            input: Input::Same(s.spliced.clone().expect("cookie bed"), calls),
            checks: Vec::new(),
            cleanup: Vec::new(),
        },
        PathId::EstRandom | PathId::EstRandomFew => {
            let mut frames = Vec::with_capacity(calls);
            let mut checks = Vec::new();
            let n = if path == PathId::EstRandomFew {
                SMALL_ENTRIES / 2
            } else {
                s.clients.len()
            };
            for i in 0..calls {
                let c = s.clients[rng.below(n)];
                frames.push(Frame::tcp(c, vip(), ACK).build());
                if sample(i) {
                    checks.push((i, c, s.backend_of(c).1));
                }
            }
            Segment {
                path,
                input: Input::Each(frames),
                checks,
                cleanup: Vec::new(),
            }
        }
        PathId::NewFlow => {
            let mut frames = Vec::with_capacity(calls);
            let mut checks = Vec::new();
            let mut cleanup = Vec::with_capacity(2 * calls);
            for i in 0..calls {
                let c = s.random_client(rng);
                let (_, b) = s.backend_of(c);
                frames.push(Frame::tcp(c, vip(), SYN).build());
                cleanup.push(tcp_key(c, vip()));
                cleanup.push(tcp_key(b, c));
                if sample(i) {
                    checks.push((i, c, b));
                }
            }
            Segment {
                path,
                input: Input::Each(frames),
                checks,
                cleanup,
            }
        }
    }
}

/// Runs one segment on the bed's worker pinned to `cpu`: durations, and the coarse
/// time of each call.
fn run_segment(s: &Scene, seg: Segment, cpu: usize) -> Result<(Vec<u64>, Vec<u64>)> {
    s.bed.with_programs(move |p| -> Result<(Vec<u64>, Vec<u64>)> {
        pin_to_cpu(cpu);
        let ifx = Some(p.client_ifindex);
        let mut out = vec![0u8; 4096];
        let n = match &seg.input {
            Input::Same(_, n) => *n,
            Input::Each(v) => v.len(),
        };
        let mut durations = Vec::with_capacity(n);
        let mut times = Vec::with_capacity(n);
        let mut checks = seg.checks.iter().peekable();
        for i in 0..n {
            let frame = match &seg.input {
                Input::Same(f, _) => f,
                Input::Each(v) => &v[i],
            };
            times.push(coarse_ns());
            let r = test_run(&p.balancer, frame, ifx, 1, &mut out)?;
            if r.return_value != XDP_REDIRECT {
                bail!(
                    "{}: verdict {} instead of XDP_REDIRECT: the path measured is not the intended one",
                    seg.path.name(),
                    verdict_name(r.return_value)
                );
            }
            durations.push(r.duration.as_nanos() as u64);
            if let Some((_, client, backend)) = checks.next_if(|c| c.0 == i) {
                check_to_backend(frame, &out[..r.data_size_out as usize], *client, *backend)
                    .with_context(|| format!("{} call {i}: output", seg.path.name()))?;
            }
        }
        if !seg.cleanup.is_empty() {
            let mut flows: HashMap<MapData, FlowKey, Flow> =
                open_map(p.pin_dir(), balancer_ebpf::map_names::FLOWS)?.try_into()?;
            for k in &seg.cleanup {
                flows
                    .remove(k)
                    .context("deleting a new flow's entry (it must exist where expected)")?;
            }
        }
        Ok((durations, times))
    })?
}

/// One row of results: a path at a scale point.
#[derive(Serialize, Clone)]
pub struct ScaleResult {
    pub point: String,
    pub path: String,
    pub median_ns: f64,
    pub p10_ns: f64,
    pub p90_ns: f64,
    pub iqm_ns: f64,
    pub calls: usize,
    pub round_medians_ns: Vec<f64>,
}

/// A scale point against the small point, for one path.
#[derive(Serialize, Clone)]
pub struct Comparison {
    pub dimension: String,
    pub path: String,
    pub small_median_ns: f64,
    pub large_median_ns: f64,
    pub ratio: f64,
    pub iqm_ratio: f64,
    /// Lowest and highest ratio of the per-round medians.
    pub round_ratios: (f64, f64),
}

/// New-flow calls split by whether the per-CPU next-hop cache held the backend (replayed
/// from the calls' times and backends with the program's rule: an entry is used for
/// `NEXT_HOP_TTL_NS` after the FIB lookup that filled it).
#[derive(Serialize, Clone)]
pub struct NextHopSplit {
    pub point: String,
    pub cache_hit_calls: usize,
    pub cache_miss_calls: usize,
    pub hit_median_ns: f64,
    pub miss_median_ns: f64,
    /// New-flow calls per backend and second, over the span of the new-flow calls.
    pub calls_per_backend_per_s: f64,
}

#[derive(Serialize, Clone)]
pub struct MapMemory {
    pub name: String,
    pub map_type: String,
    pub max_entries: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub memlock_bytes: u64,
}

#[derive(Serialize, Clone)]
pub struct MemoryReport {
    pub source: String,
    /// Every map of the programs at the default flow capacity.
    pub default_capacity: u32,
    pub maps: Vec<MapMemory>,
    pub total_memlock_bytes: u64,
    pub flows_memlock_default: u64,
    pub flows_bytes_per_entry_default: f64,
    pub flows_memlock_at_capacity: u64,
    pub capacity: u32,
    pub flows_bytes_per_entry_at_capacity: f64,
    /// (memlock at CAPACITY - memlock at the default) / (CAPACITY - default).
    pub flows_marginal_bytes_per_entry: f64,
    pub flow_key_value_bytes: (usize, usize),
    /// Second source: pages of the map-related vmalloc areas (/proc/vmallocinfo) that
    /// appeared while a bed was created (system-wide: a map created meanwhile by another
    /// process would count too).
    pub vmalloc_growth_default_bed: i64,
    pub vmalloc_growth_big_bed: i64,
    pub vmalloc_marginal_bytes_per_entry: f64,
}

#[derive(Serialize)]
pub struct ScaleReport {
    pub method: String,
    pub flow_capacity: u32,
    pub points: Vec<String>,
    pub results: Vec<ScaleResult>,
    pub comparisons: Vec<Comparison>,
    pub new_flow_next_hop: Vec<NextHopSplit>,
    pub memory: MemoryReport,
    pub targets: Vec<Target>,
    pub duration_step_ns: u64,
    pub notes: Vec<String>,
    pub seconds: f64,
}

/// Every map of the bed's programs, with the kernel's memory estimate.
fn map_table(bed: &TestBed) -> Result<Vec<MapMemory>> {
    let mut ids = Vec::new();
    for pin in [PROGRAM_PIN, TC_PROGRAM_PIN] {
        let info = ProgramInfo::from_pin(bed.pin_dir().join(pin))
            .with_context(|| format!("program info of {pin}"))?;
        for id in info.map_ids()?.unwrap_or_default() {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    let mut out = Vec::new();
    for id in ids {
        let m = MapInfo::from_id(id)?;
        let fd = m.fd()?;
        out.push(MapMemory {
            name: m.name_as_str().unwrap_or("?").to_string(),
            map_type: m
                .map_type()
                .map(|t| format!("{t:?}"))
                .unwrap_or_else(|_| "?".into()),
            max_entries: m.max_entries(),
            key_size: m.key_size(),
            value_size: m.value_size(),
            memlock_bytes: map_memlock(fd.as_fd())?,
        });
    }
    out.sort_by_key(|m| std::cmp::Reverse(m.memlock_bytes));
    Ok(out)
}

fn flows_memlock(maps: &[MapMemory]) -> Result<u64> {
    maps.iter()
        .find(|m| m.name.starts_with("BALANCER_FLOWS"))
        .map(|m| m.memlock_bytes)
        .context("no BALANCER_FLOWS among the program's maps")
}

pub fn measure(
    o: &ScaleOptions,
    machine: &Machine,
    progress: &dyn Fn(String),
) -> Result<ScaleReport> {
    let ScaleOptions { rounds, calls } = *o;
    ensure!(rounds > 0 && calls > 0, "rounds and calls must be positive");
    let started = Instant::now();
    let cpu = machine.cpus.saturating_sub(1);
    let mut rng = Rng(0x5ca1_e000_0000_0001);

    progress(format!(
        "scale: memory of the map set at the default flow capacity ({DEFAULT_FLOW_CAPACITY})"
    ));
    let m0 = vmalloc_areas();
    let default_bed = TestBed::new(DEFAULT_FLOW_CAPACITY)?;
    let default_growth = vmalloc_growth(&m0, &vmalloc_areas());
    let maps = map_table(&default_bed)?;
    let flows_default = flows_memlock(&maps)?;

    progress(format!(
        "scale: setting up 3 beds, flow capacity {CAPACITY} each"
    ));
    let mut scenes = Vec::new();
    let mut big_growth = 0;
    for point in POINTS {
        let (s, growth) = scene(point, &mut rng, progress)?;
        if point == Point::Small {
            big_growth = growth;
        }
        scenes.push(s);
    }
    let flows_big = flows_memlock(&map_table(&scenes[0].bed)?)?;
    // Kept until here: a freed map's memory is released later by a work queue and would
    // offset the next bed's growth.
    drop(default_bed);

    let jobs: Vec<(usize, PathId)> = scenes
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            PATHS
                .iter()
                .filter(move |p| match p {
                    PathId::Spliced => s.spliced.is_some(),
                    PathId::EstRandomFew => s.point == Point::BigFlows,
                    _ => true,
                })
                .map(move |p| (i, *p))
        })
        .collect();
    // durations[scene][path], per-round medians likewise.
    let mut all = vec![vec![Vec::<u64>::new(); PATHS.len()]; scenes.len()];
    let mut per_round = vec![vec![Vec::<f64>::new(); PATHS.len()]; scenes.len()];
    let warmup = calls.min(1_000);
    let mut before = Vec::new();
    for r in 0..=rounds {
        if r == 0 {
            progress(format!(
                "scale: warming up ({warmup} calls per bed and path)"
            ));
        } else if r == 1 {
            progress(format!(
                "scale: measuring {rounds} rounds x {calls} single-shot calls per bed and path ({} series), pinned to CPU {cpu}",
                jobs.len()
            ));
        }
        if r == 1 {
            for s in &scenes {
                before.push(s.bed.counters()?);
            }
        }
        let mut order = jobs.clone();
        order.rotate_left(r % jobs.len());
        let n = if r == 0 { warmup } else { calls };
        for (si, path) in order {
            let seg = segment(&mut scenes[si], path, n, &mut rng);
            let slots: Vec<u32> = if path == PathId::NewFlow {
                seg.cleanup
                    .iter()
                    .step_by(2)
                    .map(|k| {
                        let c = SocketAddrV4::new(
                            Ipv4Addr::from(k.src.to_ne_bytes()),
                            u16::from_be(k.sport),
                        );
                        scenes[si].backend_of(c).0
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let (d, times) = run_segment(&scenes[si], seg, cpu)
                .with_context(|| format!("{} at {}", path.name(), scenes[si].point.name()))?;
            if path == PathId::NewFlow {
                for (t, slot) in times.iter().zip(&slots) {
                    scenes[si].syn_calls.push((*t, *slot, r > 0));
                }
            }
            if r > 0 {
                per_round[si][path.index()].push(median(&d));
                all[si][path.index()].extend(d);
            }
        }
    }

    // Counters: every random ACK hit an entry, every SYN created a flow, nothing dropped.
    for (si, s) in scenes.iter().enumerate() {
        let delta = s.bed.counters()?.delta(&before[si]);
        let measured: usize = all[si].iter().map(|v| v.len()).sum();
        let syns = all[si][PathId::NewFlow.index()].len();
        expect_growth(
            &delta,
            &[
                (Counter::NewFlows, syns),
                (Counter::FlowMisses, 0),
                (Counter::TxRedirect, measured),
                (Counter::TxSameInterface, 0),
                (Counter::PassNoNeighbour, 0),
                (Counter::DropFlowTableFull, 0),
                (Counter::DropNoBackend, 0),
                (Counter::DropNoRoute, 0),
            ],
            &format!("{}: ", s.point.name()),
        )?;
    }

    // Next-hop cache replay of the new-flow calls.
    let mut splits = Vec::new();
    for (si, s) in scenes.iter().enumerate() {
        let d = &all[si][PathId::NewFlow.index()];
        let mut expires: StdHashMap<u32, u64> = StdHashMap::new();
        let (mut hit, mut miss) = (Vec::new(), Vec::new());
        let mut measured = d.iter();
        for &(t, slot, m) in &s.syn_calls {
            let e = expires.entry(slot).or_insert(0);
            let is_hit = t < *e;
            if !is_hit {
                *e = t + NEXT_HOP_TTL_NS;
            }
            if m {
                let v = *measured.next().context("new-flow calls out of step")?;
                if is_hit {
                    hit.push(v)
                } else {
                    miss.push(v)
                }
            }
        }
        splits.push(NextHopSplit {
            point: s.point.name().into(),
            cache_hit_calls: hit.len(),
            cache_miss_calls: miss.len(),
            hit_median_ns: median(&hit),
            miss_median_ns: median(&miss),
            calls_per_backend_per_s: {
                let span = match (s.syn_calls.first(), s.syn_calls.last()) {
                    (Some(a), Some(b)) => (b.0 - a.0) as f64 / 1e9,
                    _ => f64::NAN,
                };
                s.syn_calls.len() as f64 / s.slots.len() as f64 / span
            },
        });
    }
    progress("scale: cleaning up".into());
    let setup: Vec<String> = scenes
        .iter()
        .map(|s| {
            format!(
                "{}: flow capacity {CAPACITY}, {} pre-filled entries ({} flows x 2 directions) + 4 of the hot/spliced flows, {} NAT backends{}; set up in {:.1} s",
                s.point.name(),
                s.clients.len() * 2,
                s.clients.len(),
                s.slots.len(),
                if s.spliced.is_some() { " + a cookie-mode service with 3" } else { "" },
                s.setup_seconds
            )
        })
        .collect();
    drop(scenes);
    let seconds = started.elapsed().as_secs_f64();

    // --- Report -------------------------------------------------------------------
    let mut results = Vec::new();
    let sorted = |v: &Vec<u64>| {
        let mut s = v.clone();
        s.sort_unstable();
        s
    };
    for (si, point) in POINTS.iter().enumerate() {
        for path in PATHS {
            let s = sorted(&all[si][path.index()]);
            if s.is_empty() {
                continue;
            }
            results.push(ScaleResult {
                point: point.name().into(),
                path: path.name().into(),
                median_ns: percentile(&s, 0.5),
                p10_ns: percentile(&s, 0.1),
                p90_ns: percentile(&s, 0.9),
                iqm_ns: iqm(&s),
                calls: s.len(),
                round_medians_ns: per_round[si][path.index()].clone(),
            });
        }
    }
    let mut comparisons = Vec::new();
    let mut targets = Vec::new();
    for (large, dimension) in [
        (Point::BigFlows, "flow table 1M / 1k entries"),
        (Point::ManyBackends, "backends 4096 / 4"),
    ] {
        let li = POINTS.iter().position(|p| *p == large).expect("point");
        for path in PATHS {
            // The diagnostic is compared with the small bed's random path.
            let small_path = if path == PathId::EstRandomFew {
                PathId::EstRandom
            } else {
                path
            };
            let (a, b) = (
                sorted(&all[0][small_path.index()]),
                sorted(&all[li][path.index()]),
            );
            if a.is_empty() || b.is_empty() {
                continue;
            }
            let rr: Vec<f64> = per_round[li][path.index()]
                .iter()
                .zip(&per_round[0][small_path.index()])
                .map(|(x, y)| x / y)
                .collect();
            let c = Comparison {
                dimension: dimension.into(),
                path: path.name().into(),
                small_median_ns: percentile(&a, 0.5),
                large_median_ns: percentile(&b, 0.5),
                ratio: percentile(&b, 0.5) / percentile(&a, 0.5),
                iqm_ratio: iqm(&b) / iqm(&a),
                round_ratios: (
                    rr.iter().copied().fold(f64::INFINITY, f64::min),
                    rr.iter().copied().fold(0.0, f64::max),
                ),
            };
            if path == PathId::EstRandomFew {
                comparisons.push(c);
                continue;
            }
            targets.push(Target::at_most(
                &format!("scale: {}, {dimension} (single-shot medians)", path.name()),
                TARGET_RATIO,
                c.ratio,
                "x",
            ));
            comparisons.push(c);
        }
    }
    let total: u64 = maps.iter().map(|m| m.memlock_bytes).sum();
    let memory = MemoryReport {
        source: "memlock of /proc/self/fdinfo/<map fd> (the kernel's map_mem_usage estimate; the same figure as bpftool's memlock), for every map the XDP and TC programs use".into(),
        default_capacity: DEFAULT_FLOW_CAPACITY,
        maps,
        total_memlock_bytes: total,
        flows_memlock_default: flows_default,
        flows_bytes_per_entry_default: flows_default as f64 / DEFAULT_FLOW_CAPACITY as f64,
        flows_memlock_at_capacity: flows_big,
        capacity: CAPACITY,
        flows_bytes_per_entry_at_capacity: flows_big as f64 / CAPACITY as f64,
        flows_marginal_bytes_per_entry: (flows_big - flows_default) as f64
            / (CAPACITY - DEFAULT_FLOW_CAPACITY) as f64,
        flow_key_value_bytes: (size_of::<FlowKey>(), size_of::<Flow>()),
        vmalloc_growth_default_bed: default_growth,
        vmalloc_growth_big_bed: big_growth,
        vmalloc_marginal_bytes_per_entry: (big_growth - default_growth) as f64
            / (CAPACITY - DEFAULT_FLOW_CAPACITY) as f64,
    };
    let step = quantum(&all[0][PathId::EstHot.index()]);
    let mut notes = setup;
    notes.push(
        "Checked: every call's verdict (XDP_REDIRECT); the output frame of a sample of calls (the first two of each batch and every 997th) byte by byte against the expected rewrite to the backend the service's Maglev table gives the 5-tuple; per bed, new_flows grew by exactly the new-flow calls, flow_misses by 0 (every random ACK hit its pre-filled entry), tx_redirect by every measured call, and no drop or pass_no_neighbour counter moved; every new flow's two entries were found where expected and deleted after its batch."
            .into(),
    );
    notes.push(format!(
        "Durations come in steps of about {step} ns, so a median can move by a step; compare with the iqm ratios."
    ));
    let ratio_of = |dim: &str, path: PathId| {
        comparisons
            .iter()
            .find(|c| c.dimension.starts_with(dim) && c.path == path.name())
            .map(|c| c.ratio)
            .unwrap_or(f64::NAN)
    };
    notes.push(format!(
        "established_random at 1M entries ({:.2}x) is a cache and TLB effect, not a longer code path: the instructions are the same at every point (established_hot, the same path through the same verifier-inlined LRU lookup `__htab_map_lookup_elem` + reference bit, is {:.2}x), and random ACKs over only 512 flows of the same 1M table (established_random_512) cost {:.2}x the small bed's. A hit on an entry not in cache pays misses on its bucket (2^21 buckets x 16 B = 32 MiB), on the element (htab_elem header 48 B + key 16 B + value 80 B = 144 B stride, so the 128 bytes a hit reads span 2 or 3 cache lines) and on the TLB entries of both (4 KiB vmalloc pages, nested paging on this VM). No hardware counters here (perf: cycles/instructions not supported; `bpftool prog profile` not supported by this bpftool build), so the attribution rests on these controlled comparisons.",
        ratio_of("flow", PathId::EstRandom),
        ratio_of("flow", PathId::EstHot),
        ratio_of("flow", PathId::EstRandomFew),
    ));
    notes.push(format!(
        "new_flow_syn at 1M entries ({:.2}x): its flow-table miss and its two inserts each walk a bucket chain, which in the small table is almost always empty and in the big one holds 0.5 elements on average (1M entries in 2^21 buckets), each a cache miss; the LRU's list maintenance (rotating the active list every 128 allocations) also touches nodes spread over the big table.",
        ratio_of("flow", PathId::NewFlow)
    ));
    if let (Some(small), Some(many)) = (splits.first(), splits.last()) {
        notes.push(format!(
            "new_flow_syn with 4096 backends ({:.2}x): {} of {} calls went to a backend whose per-CPU next hop had expired (NEXT_HOP_TTL 1 s) and paid a FIB lookup (median {:.0} ns vs {:.0} ns); calls that found the next hop cached cost {:.2}x the small bed's. The share of misses depends on the call rate per backend (here about {:.1} new flows per backend per second while the new-flow calls ran, warm-up included); with 4 backends every backend is looked up again only once a second. The rest is the 4096-slot BACKENDS, NEXT_HOPS and BACKEND_STATS entries not being in cache.",
            ratio_of("backends", PathId::NewFlow),
            many.cache_miss_calls,
            many.cache_hit_calls + many.cache_miss_calls,
            many.miss_median_ns,
            many.hit_median_ns,
            many.hit_median_ns / small.hit_median_ns,
            many.calls_per_backend_per_s,
        ));
    }
    Ok(ScaleReport {
        method: format!(
            "BPF_PROG_TEST_RUN, single-shot (repeat=1), kernel-reported duration per call; {rounds} rounds x {calls} calls per bed and path after {warmup} warm-up calls, beds and paths interleaved (order rotated each round), worker pinned to CPU {cpu}; each bed's flow table has {CAPACITY} entries (2^21 hash buckets) and is filled with BPF_MAP_UPDATE_BATCH"
        ),
        flow_capacity: CAPACITY,
        points: POINTS.iter().map(|p| p.name().to_string()).collect(),
        results,
        comparisons,
        new_flow_next_hop: splits,
        memory,
        targets,
        duration_step_ns: step,
        notes,
        seconds,
    })
}

pub fn print(r: &ScaleReport) {
    println!(
        "\nScale: per-packet cost at scale points, {:.1} s",
        r.seconds
    );
    println!("{}\n", r.method);
    println!(
        "{:<44} {:<20} {:>9} {:>7} {:>7} {:>8} {:>7}",
        "point", "path", "median ns", "p10", "p90", "iqm ns", "calls"
    );
    for x in &r.results {
        println!(
            "{:<44} {:<20} {:>9.1} {:>7.1} {:>7.1} {:>8.1} {:>7}",
            x.point, x.path, x.median_ns, x.p10_ns, x.p90_ns, x.iqm_ns, x.calls
        );
    }
    println!(
        "\n{:<28} {:<20} {:>8} {:>8} {:>7} {:>7} {:>15}",
        "comparison", "path", "small", "large", "ratio", "iqm x", "round ratios"
    );
    for c in &r.comparisons {
        println!(
            "{:<28} {:<20} {:>8.1} {:>8.1} {:>6.2}x {:>6.2}x {:>6.2}..{:.2}",
            c.dimension,
            c.path,
            c.small_median_ns,
            c.large_median_ns,
            c.ratio,
            c.iqm_ratio,
            c.round_ratios.0,
            c.round_ratios.1
        );
    }
    println!("\nnew_flow_syn by next-hop cache state (replayed):");
    for s in &r.new_flow_next_hop {
        println!(
            "  {:<44} hits {:>6} (median {:>6.1} ns)  misses {:>6} (median {:>6.1} ns)",
            s.point, s.cache_hit_calls, s.hit_median_ns, s.cache_miss_calls, s.miss_median_ns
        );
    }
    let m = &r.memory;
    println!(
        "\nmemory ({}):\n{:<18} {:<12} {:>11} {:>5} {:>6} {:>13}",
        m.source, "map", "type", "max_entries", "key", "value", "memlock"
    );
    for x in &m.maps {
        println!(
            "{:<18} {:<12} {:>11} {:>5} {:>6} {:>13}",
            x.name, x.map_type, x.max_entries, x.key_size, x.value_size, x.memlock_bytes
        );
    }
    println!(
        "total at the default flow capacity ({}): {} bytes ({:.1} MiB)",
        m.default_capacity,
        m.total_memlock_bytes,
        m.total_memlock_bytes as f64 / 1048576.0
    );
    println!(
        "flow table: {:.1} bytes per entry at {} ({} bytes), {:.1} at {} ({} bytes), marginal {:.1}; key {} + value {} bytes",
        m.flows_bytes_per_entry_default,
        m.default_capacity,
        m.flows_memlock_default,
        m.flows_bytes_per_entry_at_capacity,
        m.capacity,
        m.flows_memlock_at_capacity,
        m.flows_marginal_bytes_per_entry,
        m.flow_key_value_bytes.0,
        m.flow_key_value_bytes.1
    );
    println!(
        "second source (/proc/vmallocinfo: map-related vmalloc pages that appeared while a bed was created): default bed {} kB, 2^21 bed {} kB, marginal {:.1} bytes per entry",
        m.vmalloc_growth_default_bed / 1024,
        m.vmalloc_growth_big_bed / 1024,
        m.vmalloc_marginal_bytes_per_entry
    );
    for n in &r.notes {
        println!("- {n}");
    }
}

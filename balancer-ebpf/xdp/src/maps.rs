//! Every map of the data plane, pinned by name in the instance's pin directory (see
//! `balancer_common::map_names` and the README's "Maps" table).

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use balancer_common::{
    cookie::{CookieConfig, ScanScratch},
    flow::FlowPair,
    syncookie::SyncookieKeys,
    Backend, BackendHealth, BackendStats, CachedNextHop, Config, Failover, Flow, FlowKey,
    GlobalStats, PendingSegment, ServerId, ServerIdKey, Service, ServiceKey, DEFAULT_FLOW_CAPACITY,
    MAX_BACKENDS, MAX_SERVICES, PAIRS_RING_BYTES, PENDING_CAPACITY, RING_SIZE,
};

#[map(name = "BALANCER_CONFIG")]
pub static CONFIG: Array<Config> = Array::pinned(1, 0);

#[map(name = "BALANCER_SERVICES")]
pub static SERVICES: HashMap<ServiceKey, Service> = HashMap::pinned(MAX_SERVICES, 0);

/// Memory-mappable: the control plane reads the whole table as memory.
#[map(name = "BALANCER_BACKENDS")]
pub static BACKENDS: Array<Backend> = Array::pinned(MAX_BACKENDS, BPF_F_MMAPABLE);

/// One Maglev table of `RING_SIZE` backend slots per service, service `id` at
/// `id * RING_SIZE`. Memory-mappable: the control plane reads and rewrites tables in
/// place rather than with one syscall per entry.
#[map(name = "BALANCER_RING")]
pub static RING: Array<u32> = Array::pinned(MAX_SERVICES * RING_SIZE, BPF_F_MMAPABLE);

/// Both directions of every flow; the capacity is set at load time.
#[map(name = "BALANCER_FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::pinned(DEFAULT_FLOW_CAPACITY, 0);

#[map(name = "BALANCER_STATS")]
pub static STATS: PerCpuArray<GlobalStats> = PerCpuArray::pinned(1, 0);

#[map(name = "BALANCER_BACKEND_STATS")]
pub static BACKEND_STATS: PerCpuArray<BackendStats> = PerCpuArray::pinned(MAX_BACKENDS, 0);

/// Cookie settings per service id.
#[map(name = "BALANCER_COOKIE_CONFIG")]
pub static COOKIE_CONFIG: Array<CookieConfig> = Array::pinned(MAX_SERVICES, 0);

/// (service id, token hash) -> backend slot.
#[map(name = "BALANCER_SERVER_IDS")]
pub static SERVER_IDS: HashMap<ServerIdKey, ServerId> = HashMap::pinned(MAX_BACKENDS, 0);

/// Backend slot -> the slot that takes over its cookie sessions.
#[map(name = "BALANCER_FAILOVER")]
pub static FAILOVER: Array<Failover> = Array::pinned(MAX_BACKENDS, 0);

#[map(name = "BALANCER_SYNCOOKIE_KEYS")]
pub static SYNCOOKIE_KEYS: Array<SyncookieKeys> = Array::pinned(1, 0);

/// First data segments of connections being bound (TCP header and payload as received,
/// already addressed to the chosen backend).
#[map(name = "BALANCER_PENDING")]
pub static PENDING: LruHashMap<FlowKey, PendingSegment> = LruHashMap::pinned(PENDING_CAPACITY, 0);

/// Sampled primary/secondary token pairs from session cookies, for the daemon.
#[map(name = "BALANCER_PAIRS")]
pub static PAIRS: RingBuf = RingBuf::pinned(PAIRS_RING_BYTES, 0);

/// Backend health written by the daemon. The program never reads it; it is defined here
/// so that it is created and pinned with the other maps and outlives the daemon.
#[map(name = "BALANCER_HEALTH")]
pub static HEALTH: Array<BackendHealth> = Array::pinned(MAX_BACKENDS, BPF_F_MMAPABLE);

/// Per-CPU cache of the next hop towards each backend slot (see `CachedNextHop`). Not pinned:
/// it is rebuilt from the FIB.
#[map(name = "BALANCER_NEXT_HOPS")]
pub static NEXT_HOPS: PerCpuArray<CachedNextHop> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Per-CPU scratch for building a PENDING value (too large for the BPF stack). Not
/// pinned: it holds nothing between packets.
#[map(name = "BALANCER_SEG_SCRATCH")]
pub static SEGMENT_SCRATCH: PerCpuArray<PendingSegment> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch of the cookie scanner (payload copy and scanner state). Not pinned.
#[map(name = "BALANCER_SCAN")]
pub static SCAN: PerCpuArray<ScanScratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch where a cookie-mode flow's two entries are built (too large for the
/// BPF stack next to the rest of the binding path). Not pinned.
#[map(name = "BALANCER_ENTRY_SCRATCH")]
pub static ENTRY_SCRATCH: PerCpuArray<FlowPair> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch of the TCP option walk and edit (see options.rs).
#[map(name = "BALANCER_OPT_SCRATCH")]
pub static OPTION_SCRATCH: PerCpuArray<crate::options::OptionScratch> =
    PerCpuArray::with_max_entries(1, 0);

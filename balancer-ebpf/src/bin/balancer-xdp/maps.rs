//! Every map of the data plane, pinned by name in the instance's pin directory (see
//! `balancer_ebpf::map_names` and the README's "Maps" table).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use balancer_ebpf::{
    Backend, BackendStats, Config, Flow, FlowKey, GlobalStats, Service, ServiceKey,
    DEFAULT_FLOW_CAPACITY, MAX_BACKENDS, MAX_SERVICES, RING_SIZE,
};

#[map(name = "BALANCER_CONFIG")]
pub static CONFIG: Array<Config> = Array::pinned(1, 0);

#[map(name = "BALANCER_SERVICES")]
pub static SERVICES: HashMap<ServiceKey, Service> = HashMap::pinned(MAX_SERVICES, 0);

#[map(name = "BALANCER_BACKENDS")]
pub static BACKENDS: Array<Backend> = Array::pinned(MAX_BACKENDS, 0);

/// One Maglev table of `RING_SIZE` backend slots per service, service `id` at
/// `id * RING_SIZE`.
#[map(name = "BALANCER_RING")]
pub static RING: Array<u32> = Array::pinned(MAX_SERVICES * RING_SIZE, 0);

/// Both directions of every flow; the capacity is set at load time.
#[map(name = "BALANCER_FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::pinned(DEFAULT_FLOW_CAPACITY, 0);

#[map(name = "BALANCER_STATS")]
pub static STATS: PerCpuArray<GlobalStats> = PerCpuArray::pinned(1, 0);

#[map(name = "BALANCER_BACKEND_STATS")]
pub static BACKEND_STATS: PerCpuArray<BackendStats> = PerCpuArray::pinned(MAX_BACKENDS, 0);

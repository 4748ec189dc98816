//! Backend selection for new flows: the service's Maglev table, filled by the control plane.

use balancer_common::{backend_state, hash::new_flow_hash, Backend, FlowKey, Service, RING_SIZE};

use crate::maps::{BACKENDS, RING};

/// Slot value for "no backend" (the control plane's `maglev::NO_BACKEND`).
const NO_BACKEND: u32 = u32::MAX;

/// Picks the backend for a new flow of `service`: `None` when the table is empty or the
/// backend it names can no longer take new flows.
#[inline(always)]
pub fn pick(service: &Service, key: &FlowKey) -> Option<(u32, Backend)> {
    let index = service.id * RING_SIZE + new_flow_hash(service, key) % RING_SIZE;
    let slot = *RING.get(index)?;
    if slot == NO_BACKEND {
        return None;
    }
    // The control plane removes draining and down backends from the table before it
    // changes their state, but a flow can race with that update: check again.
    up(slot, service).map(|backend| (slot, backend))
}

/// Whether the backend in `slot` takes new flows.
#[inline(always)]
pub fn takes_new_flows(slot: u32) -> bool {
    BACKENDS
        .get(slot)
        .is_some_and(|b| b.state == backend_state::UP)
}

/// The backend in `slot` if it belongs to `service` and takes new flows.
#[inline(always)]
pub fn up(slot: u32, service: &Service) -> Option<Backend> {
    let backend = *BACKENDS.get(slot)?;
    (backend.state == backend_state::UP && backend.service == service.id).then_some(backend)
}

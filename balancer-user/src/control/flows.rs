//! The flow table as operators see it: one row per connection (the client-side entry),
//! with the backend it is bound to.

use std::net::SocketAddrV4;

use balancer_common::{direction, flow_state, ns_since_tick, phase};
use serde::Serialize;

use crate::{
    control::Control,
    dataplane::MapStore,
    error::Result,
    model::addr::{ip_from_map, Proto, ServiceAddr},
};

#[derive(Clone, Debug, Serialize)]
pub struct FlowInfo {
    pub proto: Proto,
    pub client: SocketAddrV4,
    pub service: ServiceAddr,
    pub backend: SocketAddrV4,
    pub backend_slot: u32,
    /// State of the client -> backend direction.
    pub state: &'static str,
    /// `nat` (plain service), `binding` (cookie mode, waiting for the backend) or
    /// `spliced` (cookie mode, bound).
    pub phase: &'static str,
    pub age_s: f64,
    pub idle_s: f64,
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_coarse_ns` reads.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// `clock` (a `CLOCK_*` id) in nanoseconds.
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn endpoint(addr: u32, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip_from_map(addr), u16::from_be(port))
}

impl<S: MapStore> Control<S> {
    /// Client-side flow entries (at most `limit`), oldest first.
    pub fn flows(&self, limit: usize) -> Result<Vec<FlowInfo>> {
        let now = monotonic_ns();
        let mut out = Vec::new();
        self.store.visit_flows(|k, f| {
            if f.direction != direction::TO_BACKEND {
                return true;
            }
            let Some(proto) = Proto::from_number(k.proto) else {
                return true;
            };
            out.push(FlowInfo {
                proto,
                client: endpoint(k.src, k.sport),
                service: ServiceAddr {
                    addr: ip_from_map(k.dst),
                    port: u16::from_be(k.dport),
                    proto,
                },
                backend: endpoint(f.new_dst, f.new_dport),
                backend_slot: f.backend_slot(),
                state: flow_state::name(f.state),
                phase: match f.phase {
                    phase::BINDING => "binding",
                    phase::SPLICED => "spliced",
                    _ => "nat",
                },
                age_s: ns_since_tick(now, f.created_tick) as f64 / 1e9,
                idle_s: ns_since_tick(now, f.last_seen_tick) as f64 / 1e9,
            });
            out.len() < limit
        })?;
        out.sort_by(|a, b| b.age_s.total_cmp(&a.age_s));
        Ok(out)
    }
}

//! The balancer's XDP program.
//!
//! One entry (`balancer`) per packet: parse, look the 5-tuple up in the flow table, and
//! either apply the entry, or, for a packet to a service without one, pick a backend with
//! the service's Maglev table and create the entries of both directions. Everything that
//! is not for a service is passed to the kernel untouched, so the gateway keeps routing.
#![no_std]
#![no_main]
// aya-ebpf's map methods take `impl Borrow<K>`: passing a key by value would copy the
// struct onto the 512-byte BPF stack at every call, so references stay.
#![allow(clippy::needless_borrows_for_generic_args)]

mod bind;
mod counters;
mod forward;
mod maps;
mod options;
mod select;
mod tc;

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_ktime_get_coarse_ns, macros::xdp,
    programs::XdpContext,
};
use balancer_common::{
    direction,
    flow::{is_syn, new_entries_into, still_valid, track},
    flow_flags,
    parse::{
        parse_packet, ptr_at, read, EthHdr, Packet, ParseError, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
    },
    phase, Config, Counter, Service, ServiceKey, PROTO_TCP, SERVICE_F_COOKIE,
};

use crate::{
    counters::Counters,
    maps::{CONFIG, ENTRY_SCRATCH, FLOWS, PENDING, SERVICES},
};

#[xdp]
pub fn balancer(ctx: XdpContext) -> u32 {
    match try_balancer(&ctx) {
        Ok(action) => action,
        // Only a missing per-CPU counter block gets here: never drop for our own fault.
        Err(()) => xdp_action::XDP_PASS,
    }
}

/// Returns `XDP_PASS`: attached to a veth peer of an interface the balancer sends
/// `XDP_TX` frames on, so that the kernel polls the peer for them (`veth_xdp_flush` only
/// kicks a peer that has an XDP program; see balancer-user's dataplane/veth.rs).
#[xdp]
pub fn veth_peer_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[inline(always)]
fn try_balancer(ctx: &XdpContext) -> Result<u32, ()> {
    let stats = Counters::get().ok_or(())?;
    stats.inc(Counter::RxPackets);

    let start = ctx.data();
    let end = ctx.data_end();
    let pkt = match parse_packet(start, end) {
        Ok(p) => p,
        Err(ParseError::NotIpv4 | ParseError::NotTcpUdp) => {
            stats.inc(Counter::PassNotService);
            return Ok(xdp_action::XDP_PASS);
        }
        Err(ParseError::NonFirstFragment) => {
            stats.inc(Counter::PassFragment);
            return Ok(xdp_action::XDP_PASS);
        }
        Err(ParseError::Truncated | ParseError::Invalid) => {
            stats.inc(Counter::PassMalformed);
            return Ok(xdp_action::XDP_PASS);
        }
    };

    if let Some(entry) = FLOWS.get_ptr_mut(&pkt.key) {
        // SAFETY: a pointer to the map value, valid for this program run.
        let flow = unsafe { &mut *entry };
        let now = now();
        let config = match CONFIG.get(0) {
            Some(c) => *c,
            None => Config::default(),
        };
        let cookie_flow = flow.phase != phase::NAT && flow.direction == direction::TO_BACKEND;
        if cookie_flow && is_syn(&pkt) {
            // A duplicate of the connection's SYN, a new connection reusing the client
            // port, or a blind attack: answered statelessly, and the live connection is
            // left alone until a handshake proves otherwise.
            return Ok(bind::syn_on_cookie_flow(ctx, &pkt, flow, &stats));
        }
        if cookie_flow
            && flow.has(flow_flags::REUSE_PENDING)
            && bind::proves_new_connection(ctx, &pkt, flow)
        {
            // The client completed a new syncookie handshake on this 5-tuple: the old
            // connection is over. Bound afresh below, like any new connection.
            bind::forget(&pkt.key, flow);
        } else if cookie_flow && bind::backend_left(ctx, &pkt, flow, &stats) {
            // The client retransmits its first segment, and the backend it was being
            // bound to no longer takes new flows: bound afresh below.
            bind::forget(&pkt.key, flow);
        } else if still_valid(flow, &pkt, now, &config) {
            if flow.phase == phase::BINDING {
                return Ok(bind::binding(ctx, &pkt, flow, now, &stats));
            }
            track(flow, &pkt, now);
            return Ok(forward::forward_established(ctx, &pkt, flow, &stats));
        }
    }

    let service_key = ServiceKey {
        addr: pkt.key.dst,
        port: pkt.key.dport,
        proto: pkt.key.proto,
        _pad: 0,
    };
    // SAFETY: the value is copied out right away.
    let Some(service) = (unsafe { SERVICES.get(&service_key) }).copied() else {
        return Ok(not_to_a_service(ctx, &pkt, &stats));
    };
    // Refuse what forwarding would refuse before any state is created for it.
    if let Some(action) = forward::refuse(&pkt, &stats) {
        return Ok(action);
    }
    if service.flags & SERVICE_F_COOKIE != 0 && pkt.key.proto == PROTO_TCP {
        if is_plain_syn(&pkt) {
            return Ok(bind::answer_syn(ctx, &pkt, &stats));
        }
        let verdict = bind::new_connection(ctx, &pkt, &service, &stats);
        if verdict == bind::ENTRIES_READY {
            return Ok(bind::start_binding(ctx, &pkt, &stats));
        }
        return Ok(verdict);
    }
    Ok(new_flow(ctx, &pkt, &service, &stats))
}

/// A packet without a flow entry and not to a service: a backend's answer to a cookie-mode
/// connection being bound (whose reply entry waits in PENDING with the first segment),
/// or none of ours.
#[inline(always)]
fn not_to_a_service(ctx: &XdpContext, pkt: &Packet, stats: &Counters) -> u32 {
    if pkt.key.proto == PROTO_TCP {
        if let Some(seg) = PENDING.get_ptr_mut(&pkt.key) {
            // SAFETY: a pointer to the map value, valid for this program run.
            let seg = unsafe { &mut *seg };
            let config = CONFIG.get(0).copied().unwrap_or_default();
            if seg.reply.phase == phase::BINDING
                && seg.reply.direction == direction::TO_CLIENT
                && still_valid(&seg.reply, pkt, now(), &config)
            {
                return bind::backend_answer(ctx, pkt, seg, stats);
            }
        }
    }
    stats.inc(Counter::PassNotService);
    xdp_action::XDP_PASS
}

/// A packet to a plain (NAT) service without a flow entry: pick the backend, create the
/// entries of both directions, forward. Not inlined, so the entries being built do not
/// weigh on the stack frame of the established path.
#[inline(never)]
fn new_flow(ctx: &XdpContext, pkt: &Packet, service: &Service, stats: &Counters) -> u32 {
    let Some((slot, backend)) = select::pick(service, &pkt.key) else {
        stats.inc(Counter::DropNoBackend);
        return xdp_action::XDP_DROP;
    };
    if pkt.key.proto == PROTO_TCP && !is_syn(pkt) {
        // Mid-connection packet without an entry (evicted, expired, or the table was
        // lost): the consistent hash gives the same backend as long as the backend set
        // did not change, so the connection survives.
        stats.inc(Counter::FlowMisses);
    } else {
        stats.inc(Counter::NewFlows);
        if let Some(b) = counters::backend(slot) {
            b.new_flows += 1;
        }
    }

    let eth = match ptr_at::<EthHdr>(ctx.data(), ctx.data_end(), 0) {
        // SAFETY: bounds-checked by ptr_at.
        Some(p) => unsafe { read(p) },
        None => return xdp_action::XDP_PASS,
    };
    // SAFETY: reading the context field of the running program.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    // Built in a per-CPU map value: two entries are too large for the BPF stack next to
    // the forwarding path.
    let Some(pair) = ENTRY_SCRATCH.get_ptr_mut(0) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: per-CPU scratch, used by this CPU only while the program runs.
    let pair = unsafe { &mut *pair };
    new_entries_into(pair, pkt, &eth, ingress, slot, &backend, now());
    if FLOWS.insert(&pair.reply_key, &pair.reply, 0).is_err() {
        stats.inc(Counter::DropFlowTableFull);
        return xdp_action::XDP_DROP;
    }
    let action = forward::forward(ctx, pkt, &mut pair.forward, stats);
    // Inserted after forwarding so the next hop resolved there is stored with it.
    if FLOWS.insert(&pair.key, &pair.forward, 0).is_err() {
        stats.inc(Counter::DropFlowTableFull);
        return xdp_action::XDP_DROP;
    }
    action
}

/// SYN set; ACK, RST and FIN clear (a SYN+FIN is dropped by TCP stacks in LISTEN too).
#[inline(always)]
fn is_plain_syn(pkt: &Packet) -> bool {
    pkt.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN
}

/// CLOCK_MONOTONIC, coarse (tick resolution is plenty for second-granularity timeouts,
/// and it is cheaper than the precise clock).
#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

balancer_common::bpf_object!();

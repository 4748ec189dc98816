//! TC ingress program: the one step of delayed binding XDP cannot always do.
//!
//! Turning a backend's SYN-ACK into the client's kept first segment needs the frame to
//! grow by the segment's size. XDP can grow a frame only within the driver's buffer
//! (`bpf_xdp_adjust_tail`); veth hands XDP small skbs as they are, and some NIC drivers
//! use buffers barely larger than the MTU. When XDP cannot grow the frame it passes the
//! SYN-ACK up the stack, and this program, attached at TC ingress of the same interfaces,
//! grows the skb (`bpf_skb_change_tail` reallocates as needed), writes the segment, and
//! sends it back out of the interface towards the backend. Every other packet passes
//! through untouched.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::{bpf_redirect, bpf_skb_change_tail, bpf_skb_store_bytes},
    macros::classifier,
    programs::TcContext,
};
use balancer_ebpf::{
    direction,
    parse::{parse_packet, PROTO_TCP_FLAGS_SYNACK},
    phase,
    tcp_reply::{set_ack, synack_to_segment_headers},
    Counter, PROTO_TCP,
};

use crate::{
    bind::{complete_binding, segment_len, synack_for_binding},
    counters::Counters,
    maps::{FLOWS, PENDING},
};

/// Bytes made linear for header access before parsing.
const HEADERS_LEN: u32 = 128;

#[classifier]
pub fn balancer_tc(ctx: TcContext) -> i32 {
    try_balancer_tc(&ctx).unwrap_or(TC_ACT_OK as i32)
}

#[inline(always)]
fn try_balancer_tc(ctx: &TcContext) -> Option<i32> {
    let len = ctx.len();
    let _ = ctx.pull_data(if len < HEADERS_LEN { len } else { HEADERS_LEN });
    let pkt = parse_packet(ctx.data(), ctx.data_end()).ok()?;
    if pkt.key.proto != PROTO_TCP
        || pkt.tcp_flags & PROTO_TCP_FLAGS_SYNACK != PROTO_TCP_FLAGS_SYNACK
    {
        return None;
    }
    let entry = FLOWS.get_ptr_mut(&pkt.key)?;
    // SAFETY: pointer into the map value, valid during this run.
    let reply = unsafe { &mut *entry };
    if reply.phase != phase::BINDING || reply.direction != direction::TO_CLIENT {
        return None;
    }
    // From here the packet is ours: never let the SYN-ACK reach the client.
    let stats = Counters::get()?;
    let Some(done) = splice(ctx, &pkt, reply, &stats) else {
        stats.inc(Counter::DropWhileBinding);
        return Some(TC_ACT_SHOT as i32);
    };
    Some(done)
}

#[inline(always)]
fn splice(
    ctx: &TcContext,
    pkt: &balancer_ebpf::parse::Packet,
    reply: &mut balancer_ebpf::Flow,
    stats: &Counters,
) -> Option<i32> {
    let (key, backend_isn) = synack_for_binding(ctx.data(), ctx.data_end(), pkt, reply)?;
    // SAFETY: pointer into the map value, valid during this run.
    let seg = unsafe { PENDING.get(&key) }?;
    let n = segment_len(seg)?;
    let new_len = pkt.l3_off as u32 + 20 + n;
    // SAFETY: plain helper calls on the running program's skb; store_bytes reads n bytes
    // of the map value, n <= its size.
    unsafe {
        if bpf_skb_change_tail(ctx.skb.skb, new_len, 0) != 0 {
            return None;
        }
    }
    ctx.pull_data(new_len).ok()?;
    let l4_off = synack_to_segment_headers(ctx.data(), ctx.data_end(), pkt, n as usize)?;
    // SAFETY: as above.
    unsafe {
        if bpf_skb_store_bytes(
            ctx.skb.skb,
            l4_off as u32,
            seg.bytes.as_ptr() as *const _,
            n,
            0,
        ) != 0
        {
            return None;
        }
    }
    ctx.pull_data(new_len).ok()?;
    set_ack(
        ctx.data(),
        ctx.data_end(),
        l4_off,
        backend_isn.wrapping_add(1),
    )?;
    complete_binding(reply, &key, backend_isn, new_len as u64, stats);
    stats.inc(Counter::SplicedByTc);
    stats.inc(Counter::TxRedirect);
    // SAFETY: reading the skb's ingress interface; redirect to its egress side.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    Some(unsafe { bpf_redirect(ifindex, 0) } as i32)
}

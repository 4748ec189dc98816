//! TC ingress program: the one step of delayed binding XDP cannot always do.
//!
//! Turning a backend's SYN-ACK into the client's kept first segment needs the frame to
//! grow by the segment's size. XDP can grow a frame only within the driver's buffer
//! (`bpf_xdp_adjust_tail`); veth hands XDP small skbs as they are, and some NIC drivers
//! use buffers barely larger than the MTU. When XDP cannot grow the frame it passes the
//! SYN-ACK up the stack, and this program, attached at TC ingress of the same interfaces,
//! grows the skb (`bpf_skb_change_tail` reallocates as needed), writes the segment, and
//! sends it back out of the interface towards the backend.
//!
//! It also answers a backend's stale ACK to the binding SYN (its TIME-WAIT of an earlier
//! connection on the same addresses and ports), which XDP passes up once per binding:
//! that takes two packets, the RST that ends the TIME-WAIT and the SYN sent again, and
//! XDP can send only one (see `bind::stale_ack`). Every other packet passes through
//! untouched.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::{
        bpf_clone_redirect, bpf_redirect, bpf_skb_change_tail, bpf_skb_store_bytes,
    },
    macros::classifier,
    programs::TcContext,
};
use balancer_common::{
    direction, flow_flags,
    parse::{
        parse_packet, ptr_at_mut, Packet, TcpHdr, PROTO_TCP_FLAGS_SYNACK, TCP_ACK, TCP_FIN,
        TCP_RST, TCP_SYN,
    },
    phase,
    tcp_reply::{
        backend_syn_len, data_to_backend_syn, rst_for, set_ack, synack_to_segment_headers,
        tcp_seq_ack,
    },
    Counter, PendingSegment, PROTO_TCP,
};

use crate::{
    bind::{
        complete_binding, negotiate, pending_offer, segment_len, synack_for_binding,
        translate_kept_segment,
    },
    counters::Counters,
    maps::PENDING,
};

/// Bytes made linear for header access before parsing.
const HEADERS_LEN: u32 = 128;

#[classifier]
pub fn balancer_tc(ctx: TcContext) -> i32 {
    try_balancer_tc(&ctx).unwrap_or(TC_ACT_OK)
}

#[inline(always)]
fn try_balancer_tc(ctx: &TcContext) -> Option<i32> {
    let len = ctx.len();
    let _ = ctx.pull_data(if len < HEADERS_LEN { len } else { HEADERS_LEN });
    let pkt = parse_packet(ctx.data(), ctx.data_end()).ok()?;
    let flags = pkt.tcp_flags;
    let synack = flags & PROTO_TCP_FLAGS_SYNACK == PROTO_TCP_FLAGS_SYNACK;
    let pure_ack = flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_ACK;
    if pkt.key.proto != PROTO_TCP || !(synack || pure_ack) {
        return None;
    }
    // A binding's reply entry waits in PENDING, with the first segment.
    let seg = PENDING.get_ptr_mut(&pkt.key)?;
    // SAFETY: pointer into the map value, valid during this run.
    let seg = unsafe { &mut *seg };
    if seg.reply.phase != phase::BINDING || seg.reply.direction != direction::TO_CLIENT {
        return None;
    }
    if pure_ack {
        return stale_ack(ctx, &pkt, seg);
    }
    // From here the packet is ours: never let the SYN-ACK reach the client.
    let stats = Counters::get()?;
    let Some(done) = verdict(splice_step(ctx, &pkt, seg, &stats)) else {
        stats.inc(Counter::DropWhileBinding);
        return Some(TC_ACT_SHOT);
    };
    Some(done)
}

/// A non-inlined step's verdict: BPF functions return one register, so `None` travels as
/// [`NO_VERDICT`] (an `Option<i32>` would come back through a stack pointer, which the
/// verifier refuses).
const NO_VERDICT: i64 = i64::MIN;

#[inline(always)]
fn verdict(v: i64) -> Option<i32> {
    if v == NO_VERDICT {
        None
    } else {
        Some(v as i32)
    }
}

/// [`splice`] on its own stack frame.
#[inline(never)]
fn splice_step(ctx: &TcContext, pkt: &Packet, seg: &mut PendingSegment, stats: &Counters) -> i64 {
    splice(ctx, pkt, seg, stats).map_or(NO_VERDICT, i64::from)
}

#[inline(always)]
fn splice(
    ctx: &TcContext,
    pkt: &balancer_common::parse::Packet,
    seg: &mut PendingSegment,
    stats: &Counters,
) -> Option<i32> {
    let (client_key, backend_isn) =
        synack_for_binding(ctx.data(), ctx.data_end(), pkt, &seg.reply)?;
    let n = segment_len(seg)?;
    // Read before the SYN-ACK is overwritten.
    let options = negotiate(ctx.data(), ctx.data_end(), pkt, seg)?;
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
    let seq_delta = seg.reply.cookie_isn().wrapping_sub(backend_isn);
    translate_kept_segment(ctx.data(), ctx.data_end(), l4_off, seg, seq_delta)?;
    if !complete_binding(
        &mut seg.reply,
        &pkt.key,
        &client_key,
        backend_isn,
        options,
        new_len as u64,
        stats,
    ) {
        return None;
    }
    stats.inc(Counter::SplicedByTc);
    stats.inc(Counter::TxRedirect);
    // SAFETY: reading the skb's ingress interface; redirect to its egress side.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    Some(unsafe { bpf_redirect(ifindex, 0) } as i32)
}

/// Passed by XDP (once per binding, marked STALE_ACK_PASSED in the reply entry): a
/// backend's ACK of an earlier connection answering the binding SYN. Sends it
/// `<SEQ=SEG.ACK><CTL=RST>` (RFC 9293 3.10.7.3), which ends the backend's TIME-WAIT, then
/// turns the packet into the SYN (the client's ISN, MSS and window, as the first one) and
/// sends that too, so the binding goes on without waiting for the client's retransmission.
#[inline(always)]
fn stale_ack(ctx: &TcContext, pkt: &Packet, seg: &mut PendingSegment) -> Option<i32> {
    let reply = &mut seg.reply;
    if !reply.has(flow_flags::STALE_ACK_PASSED) || reply.has(flow_flags::STALE_ACK_RESENT) {
        return None;
    }
    let stats = Counters::get()?;
    let (_, ack) = tcp_seq_ack(ctx.data(), ctx.data_end(), pkt)?;
    if ack == reply.client_isn.wrapping_add(1) {
        return None;
    }
    reply.set(flow_flags::STALE_ACK_RESENT);
    match verdict(resend_step(ctx, pkt, seg, &stats)) {
        Some(verdict) => Some(verdict),
        None => {
            stats.inc(Counter::DropWhileBinding);
            Some(TC_ACT_SHOT)
        }
    }
}

/// [`resend`] on its own stack frame.
#[inline(never)]
fn resend_step(ctx: &TcContext, pkt: &Packet, seg: &PendingSegment, stats: &Counters) -> i64 {
    resend(ctx, pkt, seg, stats).map_or(NO_VERDICT, i64::from)
}

#[inline(always)]
fn resend(ctx: &TcContext, pkt: &Packet, seg: &PendingSegment, stats: &Counters) -> Option<i32> {
    let reply = &seg.reply;
    // The client's window, from its kept first segment (the SYN carries it, as the first).
    let window = u16::from_ne_bytes([seg.bytes[14], seg.bytes[15]]);
    // SAFETY: reading the skb's ingress interface; both packets leave by its egress side.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };

    let rst_len = rst_for(ctx.data(), ctx.data_end(), pkt)?;
    // SAFETY: plain helper calls on the running program's skb. bpf_clone_redirect sends a
    // copy and leaves this skb writable (the kernel unclones its head).
    unsafe {
        if bpf_skb_change_tail(ctx.skb.skb, rst_len as u32, 0) != 0
            || bpf_clone_redirect(ctx.skb.skb, ifindex, 0) != 0
        {
            return None;
        }
    }
    stats.inc(Counter::BindStaleAcks);

    // The RST is now client -> backend with the MACs towards the backend: what the SYN
    // needs too. It offers what the first SYN did.
    let offer = pending_offer(seg);
    let syn_len = backend_syn_len(pkt, &offer);
    // SAFETY: as above.
    unsafe {
        if bpf_skb_change_tail(ctx.skb.skb, syn_len as u32, 0) != 0 {
            return None;
        }
    }
    ctx.pull_data(syn_len as u32).ok()?;
    let rst = parse_packet(ctx.data(), ctx.data_end()).ok()?;
    let tcp = ptr_at_mut::<TcpHdr>(ctx.data(), ctx.data_end(), rst.l4_off)?;
    // SAFETY: bounds-checked by ptr_at_mut; headers in a frame may sit unaligned. The
    // window is read by the SYN builder below.
    unsafe { core::ptr::write_unaligned(core::ptr::addr_of_mut!((*tcp).window), window) };
    let len = data_to_backend_syn(
        ctx.data(),
        ctx.data_end(),
        &rst,
        rst.key.dst,
        rst.key.dport,
        reply.client_isn,
        &offer,
    )?;
    if len != syn_len {
        return None;
    }
    stats.inc(Counter::BindRetransmits);
    // SAFETY: redirect to the egress side of the interface the ACK came in on.
    Some(unsafe { bpf_redirect(ifindex, 0) } as i32)
}

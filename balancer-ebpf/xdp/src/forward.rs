//! Applying a flow entry to a packet: NAT rewrite with incremental checksums, TTL, next-hop
//! MACs, and the way out (same interface or redirect).

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::generated::{bpf_fib_lookup, bpf_ktime_get_coarse_ns, bpf_redirect},
    programs::XdpContext,
    EbpfContext,
};
use balancer_common::{
    csum::{apply_delta, apply_delta_udp, ttl_restore_delta, u32_delta},
    direction, flow_flags,
    parse::{ptr_at_mut, read, write, EthHdr, Ipv4Hdr, Packet, TCP_CHECK_OFF, UDP_CHECK_OFF},
    phase,
    tcp_opts::{edit_flags, Edit},
    Counter, Flow, NEXT_HOP_TTL_NS, PROTO_TCP,
};

use crate::{
    counters::{self, Counters},
    maps::NEXT_HOPS,
};

const AF_INET: u8 = 2;
/// Offsets of the sequence and acknowledgement numbers in the TCP header.
const TCP_SEQ_OFF: usize = 4;
const TCP_ACK_OFF: usize = 8;

/// The verdict for a service packet that must not be translated, if it is one: a first
/// fragment (the rest of the datagram arrives without ports and could not be
/// translated), or a TTL that would expire here (the kernel answers with ICMP).
#[inline(always)]
pub fn refuse(pkt: &Packet, stats: &Counters) -> Option<u32> {
    if pkt.first_fragment {
        stats.inc(Counter::DropFragment);
        return Some(xdp_action::XDP_DROP);
    }
    if pkt.ttl <= 1 {
        stats.inc(Counter::PassTtlExceeded);
        return Some(xdp_action::XDP_PASS);
    }
    None
}

/// Rewrites the packet as `flow` says and returns the XDP verdict. `flow` may point into
/// the flow table; a next hop resolved here is stored in it.
#[inline(always)]
pub fn forward(ctx: &XdpContext, pkt: &Packet, flow: &mut Flow, stats: &Counters) -> u32 {
    if let Some(action) = refuse(pkt, stats) {
        return action;
    }
    forward_translated(ctx, pkt, flow, 0, stats)
}

/// [`forward`] for a flow-table hit, which may be spliced: the TCP options and window are
/// translated first, so that a segment that cannot be translated is dropped before
/// anything in it changed. (Only here: no other caller forwards a spliced flow, and the
/// verifier checks the translation once per call site.)
#[inline(always)]
pub fn forward_established(
    ctx: &XdpContext,
    pkt: &Packet,
    flow: &mut Flow,
    stats: &Counters,
) -> u32 {
    if let Some(action) = refuse(pkt, stats) {
        return action;
    }
    let mut options_delta = 0;
    if flow.phase == phase::SPLICED && (flow.flags & edit_flags::ANY != 0 || flow.win_shift != 0) {
        match translate_options(ctx.data(), ctx.data_end(), pkt, flow) {
            Some(d) => options_delta = d,
            None => {
                stats.inc(Counter::DropUntranslatableOptions);
                return xdp_action::XDP_DROP;
            }
        }
    }
    forward_translated(ctx, pkt, flow, options_delta, stats)
}

/// The rest of [`forward`], once the options are translated (`options_delta`: their
/// checksum change).
#[inline(always)]
fn forward_translated(
    ctx: &XdpContext,
    pkt: &Packet,
    flow: &mut Flow,
    options_delta: u32,
    stats: &Counters,
) -> u32 {
    if !flow.has(flow_flags::L2_VALID) {
        match resolve_next_hop(ctx, pkt, flow) {
            NextHop::Resolved => {}
            NextHop::NoNeighbour => {
                // The kernel forwards the translated packet (taking the TTL off itself)
                // and resolves the neighbour; later packets find it in the table.
                if rewrite(ctx, pkt, flow, false, options_delta).is_none() {
                    stats.inc(Counter::PassMalformed);
                    return xdp_action::XDP_PASS;
                }
                stats.inc(Counter::PassNoNeighbour);
                return xdp_action::XDP_PASS;
            }
            NextHop::NoRoute => {
                stats.inc(Counter::DropNoRoute);
                return xdp_action::XDP_DROP;
            }
        }
    }
    if rewrite(ctx, pkt, flow, true, options_delta).is_none() {
        // Headers were checked by the parser; only a changed frame gets here.
        stats.inc(Counter::PassMalformed);
        return xdp_action::XDP_PASS;
    }
    out(ctx, flow, stats)
}

/// Sends a frame that was built for `flow` from scratch (the SYN to a backend): resolves
/// the next hop if needed, then as [`forward`].
#[inline(always)]
pub fn send_built(ctx: &XdpContext, pkt: &Packet, flow: &mut Flow, stats: &Counters) -> u32 {
    if !flow.has(flow_flags::L2_VALID) {
        match resolve_next_hop_inline(ctx, pkt, flow) {
            NextHop::Resolved => {}
            NextHop::NoNeighbour => {
                stats.inc(Counter::PassNoNeighbour);
                return xdp_action::XDP_PASS;
            }
            NextHop::NoRoute => {
                stats.inc(Counter::DropNoRoute);
                return xdp_action::XDP_DROP;
            }
        }
    }
    out(ctx, flow, stats)
}

/// Sets the next hop's MACs, counts, and sends the frame out.
#[inline(always)]
fn out(ctx: &XdpContext, flow: &Flow, stats: &Counters) -> u32 {
    let start = ctx.data();
    let end = ctx.data_end();
    let Some(eth) = ptr_at_mut::<EthHdr>(start, end, 0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: bounds-checked by ptr_at_mut; the flow entry and the packet never overlap.
    // (Plain assignment of the arrays compiles to memmove calls; a non-overlapping copy
    // of 6 bytes is inlined.)
    unsafe {
        core::ptr::copy_nonoverlapping(flow.dmac.as_ptr(), (*eth).dst.as_mut_ptr(), 6);
        core::ptr::copy_nonoverlapping(flow.smac.as_ptr(), (*eth).src.as_mut_ptr(), 6);
    }

    let bytes = (end - start) as u64;
    if let Some(b) = counters::backend(flow.backend_slot()) {
        if flow.direction == direction::TO_BACKEND {
            b.packets_to += 1;
            b.bytes_to += bytes;
        } else {
            b.packets_from += 1;
            b.bytes_from += bytes;
        }
    }
    stats.add(Counter::TxBytes, bytes);
    // SAFETY: reading the context field of the running program.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    if flow.ifindex == ingress {
        stats.inc(Counter::TxSameInterface);
        xdp_action::XDP_TX
    } else {
        stats.inc(Counter::TxRedirect);
        // SAFETY: plain helper call; returns XDP_REDIRECT, or XDP_ABORTED on a bad ifindex.
        unsafe { bpf_redirect(flow.ifindex, 0) as u32 }
    }
}

/// The option and window translation of a spliced flow's segment
/// ([`balancer_common::tcp_opts::translate`]); the TCP checksum delta, or `None` with the
/// packet untouched. Not inlined: it keeps the option buffer off the stack frame of the
/// other paths. (The frame's bounds come as arguments: see `bind::segment_timestamps`.)
#[inline(never)]
fn translate_options(start: usize, end: usize, pkt: &Packet, flow: &Flow) -> Option<u32> {
    let edit = Edit {
        flags: flow.flags & edit_flags::ANY,
        to_client: flow.direction == direction::TO_CLIENT,
        ts_offset: flow.ts_offset,
        sack_delta: flow.seq_delta,
        win_shift: flow.win_shift,
    };
    let opt_len = pkt.payload_off.saturating_sub(pkt.l4_off + 20);
    crate::options::translate(start, end, pkt.l4_off, opt_len, &edit)
}

/// Writes the new addresses and ports, takes one off the TTL (unless the kernel will),
/// and updates the IPv4 and TCP/UDP checksums with the flow's precomputed deltas (and
/// `options_delta`, what [`translate_options`] changed in the TCP header).
#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    pkt: &Packet,
    flow: &Flow,
    decrement_ttl: bool,
    options_delta: u32,
) -> Option<()> {
    let start = ctx.data();
    let end = ctx.data_end();
    let ip = ptr_at_mut::<Ipv4Hdr>(start, end, pkt.l3_off)?;
    // SAFETY: every pointer below is bounds-checked by ptr_at_mut right before use.
    unsafe {
        let mut h: Ipv4Hdr = read(ip);
        h.src = flow.new_src;
        h.dst = flow.new_dst;
        if decrement_ttl {
            h.ttl -= 1;
            h.check = apply_delta(h.check, flow.ip_csum_delta as u32);
        } else {
            h.check = apply_delta(h.check, flow.ip_csum_delta as u32 + ttl_restore_delta());
        }
        write(ip, h);

        let ports = ptr_at_mut::<[u16; 2]>(start, end, pkt.l4_off)?;
        write(ports, [flow.new_sport, flow.new_dport]);
        if pkt.key.proto == PROTO_TCP {
            let mut delta = flow.l4_csum_delta as u32 + options_delta;
            if flow.phase == phase::SPLICED {
                // The client saw the syncookie ISN, the backend chose its own: shift
                // the backend's sequence numbers and the client's acknowledgements.
                let (off, shift) = if flow.direction == direction::TO_CLIENT {
                    (TCP_SEQ_OFF, flow.seq_delta)
                } else {
                    (TCP_ACK_OFF, flow.seq_delta.wrapping_neg())
                };
                let field = ptr_at_mut::<u32>(start, end, pkt.l4_off + off)?;
                let old = read(field);
                let new = u32::from_be(old).wrapping_add(shift).to_be();
                write(field, new);
                delta += u32_delta(old, new);
            }
            let check = ptr_at_mut::<u16>(start, end, pkt.l4_off + TCP_CHECK_OFF)?;
            write(check, apply_delta(read(check), delta));
        } else {
            let check = ptr_at_mut::<u16>(start, end, pkt.l4_off + UDP_CHECK_OFF)?;
            write(
                check,
                apply_delta_udp(read(check), flow.l4_csum_delta as u32),
            );
        }
    }
    Some(())
}

enum NextHop {
    Resolved,
    NoNeighbour,
    NoRoute,
}

/// The next hop of a flow: towards a backend from the per-CPU cache when it holds a fresh
/// answer for this backend address and ingress, else from the FIB (and cached). Stored
/// in the flow either way. (Not inlined into the forwarding path: the FIB lookup's
/// parameters would weigh on the program entry's stack frame, which adds to every call
/// chain's; see [`resolve_next_hop_inline`].)
#[inline(never)]
fn resolve_next_hop(ctx: &XdpContext, pkt: &Packet, flow: &mut Flow) -> NextHop {
    resolve_next_hop_inline(ctx, pkt, flow)
}

/// [`resolve_next_hop`], inlined into [`send_built`]: as a frame of its own on top of the
/// SYN builder's, it would pass the verifier's limit on a call chain's stack.
#[inline(always)]
fn resolve_next_hop_inline(ctx: &XdpContext, pkt: &Packet, flow: &mut Flow) -> NextHop {
    // SAFETY: reading the context field of the running program.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let cache = if flow.direction == direction::TO_BACKEND {
        NEXT_HOPS.get_ptr_mut(flow.backend_slot())
    } else {
        None
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if let Some(c) = cache {
        // SAFETY: per-CPU value, used by this CPU only while the program runs.
        let c = unsafe { &*c };
        if c.addr == flow.new_dst && c.ingress == ingress && now < c.expires_ns {
            flow.ifindex = c.ifindex;
            flow.dmac = c.dmac;
            flow.smac = c.smac;
            flow.set(flow_flags::L2_VALID);
            return NextHop::Resolved;
        }
    }
    let found = fib_next_hop(ctx, pkt, flow);
    if let (NextHop::Resolved, Some(c)) = (&found, cache) {
        // SAFETY: as above.
        let c = unsafe { &mut *c };
        c.addr = flow.new_dst;
        c.ingress = ingress;
        c.ifindex = flow.ifindex;
        c.dmac = flow.dmac;
        c.smac = flow.smac;
        c.expires_ns = now + NEXT_HOP_TTL_NS;
    }
    found
}

/// Asks the kernel's FIB for the egress interface and MACs towards the packet's (new)
/// destination, and stores the answer in the flow.
#[inline(always)]
fn fib_next_hop(ctx: &XdpContext, pkt: &Packet, flow: &mut Flow) -> NextHop {
    // SAFETY: an all-zero bpf_fib_lookup is a valid (empty) request.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = pkt.key.proto;
    params.sport = flow.new_sport;
    params.dport = flow.new_dport;
    // SAFETY: reading the context field of the running program.
    params.ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    params.__bindgen_anon_3.ipv4_src = flow.new_src;
    params.__bindgen_anon_4.ipv4_dst = flow.new_dst;
    // SAFETY: params is a valid bpf_fib_lookup of the size passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut params,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            flow.ifindex = params.ifindex;
            flow.dmac = params.dmac;
            flow.smac = params.smac;
            flow.set(flow_flags::L2_VALID);
            NextHop::Resolved
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => NextHop::NoNeighbour,
        _ => NextHop::NoRoute,
    }
}

//! Delayed binding for cookie-mode services (docs/delayed-binding.md): the handshake is
//! answered here with syncookies, the first data segment picks the backend from the
//! session cookie, the connection to the backend is opened with the client's ISN, and
//! the backend's SYN-ACK is turned into the kept first segment.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{
        bpf_get_prandom_u32, bpf_ktime_get_coarse_ns, bpf_ktime_get_tai_ns, bpf_loop,
        bpf_xdp_adjust_tail, bpf_xdp_load_bytes, bpf_xdp_store_bytes,
    },
    programs::XdpContext,
};
use balancer_common::{
    cookie::{CookieConfig, CookieOutcome, MAX_BURSTS, SCAN_MAX},
    direction,
    flow::{new_entries_into, other_key},
    flow_flags, flow_state, ns_since_tick,
    parse::{ptr_at, read, EthHdr, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    phase,
    syncookie::{
        check_cookie, cookie_data, decode_mss, encode_mss, make_cookie, time_window, CookieData,
        CookieLayout,
    },
    tcp_opts::{synack_tsval, ClientOptions, SpliceOptions, SynOffer, OFFERED_WSCALE},
    tcp_reply::{
        backend_syn_len, data_to_backend_syn, rst_for, set_ack, set_seq, syn_to_synack, synack_len,
        synack_to_segment_headers, tcp_seq_ack, DEFAULT_MSS,
    },
    CookiePair, Counter, Flow, FlowKey, PendingSegment, ServerIdKey, Service, PENDING_SEGMENT_MAX,
};

use crate::{
    counters::{self, Counters},
    forward,
    maps::{
        BACKENDS, CONFIG, COOKIE_CONFIG, ENTRY_SCRATCH, FAILOVER, FLOWS, PAIRS, PENDING, SCAN,
        SEGMENT_SCRATCH, SERVER_IDS, SYNCOOKIE_KEYS,
    },
    options::{self, option_len},
    select,
};

/// MSS the SYN-ACK offers at most (what clients may send towards the backends).
const MAX_OFFERED_MSS: u16 = 1460;
/// A backend that has not answered the SYN within this time gets the client a RST at
/// the client's next retransmission.
const BIND_TIMEOUT_NS: u64 = 3_000_000_000;

/// A packet to a cookie-mode service without a flow entry, other than a plain SYN (see
/// [`answer_syn`]).
///
/// Not inlined, and neither are [`choose`] and [`create_binding`]: the cookie scan runs
/// in a `bpf_loop` callback, whose stack frame adds to those of every function on the
/// call chain (512 bytes in all). Keeping the large flow entries in `create_binding`,
/// which runs after the scan has returned, keeps that chain short.
#[inline(never)]
pub fn new_connection(ctx: &XdpContext, pkt: &Packet, service: &Service, stats: &Counters) -> u32 {
    let flags = pkt.tcp_flags;
    // Nothing to answer for a connection we do not know: a RST (counted apart: a client
    // resetting a late SYN-ACK is not an invalid syncookie), or an odd segment.
    if flags & TCP_RST != 0 {
        stats.inc(Counter::RstNoFlow);
        return xdp_action::XDP_DROP;
    }
    if flags & TCP_SYN != 0 || flags & TCP_ACK == 0 {
        stats.inc(Counter::DropOddNoFlow);
        return xdp_action::XDP_DROP;
    }
    let start = ctx.data();
    let end = ctx.data_end();
    let Some((seq, ack)) = tcp_seq_ack(start, end, pkt) else {
        stats.inc(Counter::PassMalformed);
        return xdp_action::XDP_PASS;
    };
    let client_isn = seq.wrapping_sub(1);
    let cookie = ack.wrapping_sub(1);
    // The layout of the cookie, and the client's options, follow from its timestamps.
    // They go straight into the segment's scratch value (kept with the segment, for the
    // SYN to the backend): held in registers or on this frame, they would make the
    // verifier check the cookie scan's loop once per combination, and the stack of this
    // call chain is at its limit.
    let Some(kept) = SEGMENT_SCRATCH.get_ptr_mut(0) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: per-CPU scratch, used by this CPU only while the program runs.
    let has_ts = segment_timestamps(ctx.data(), ctx.data_end(), pkt, unsafe {
        &mut (*kept).tsvals
    });
    let layout = CookieLayout::of_segment(has_ts);
    let Some(data) = validate(pkt, client_isn, cookie, layout) else {
        stats.inc(Counter::SyncookiesInvalid);
        return xdp_action::XDP_DROP;
    };
    stats.inc(Counter::SyncookiesValid);
    if pkt.ip_end <= pkt.payload_off {
        // The handshake ACK (or a bare FIN): nothing to bind on yet, and no state kept.
        return xdp_action::XDP_DROP;
    }
    // SAFETY: as above.
    unsafe {
        let options = match layout {
            CookieLayout::Timestamps => ClientOptions::from_bits((*kept).tsvals[1], true),
            CookieLayout::Options => ClientOptions::from_bits(data.option_bits, false),
        };
        (*kept).mss = data.mss;
        (*kept).client_options = options.to_byte();
    }
    let choice = choose(ctx, pkt, service, stats);
    create_binding(ctx, pkt, service, choice, stats)
}

/// [`new_connection`]'s "go on": the entries are in ENTRY_SCRATCH, the reply entry and
/// the segment are stored in PENDING; the caller goes on with [`start_binding`]. Not an
/// XDP verdict.
pub const ENTRIES_READY: u32 = u32::MAX;

/// Sends the SYN to the backend of the binding [`new_connection`] prepared and stores its
/// client-side entry. Called by the program's entry, not by `new_connection`: the stack
/// frames of a call chain add up, and `new_connection`'s with `send_backend_syn`'s would
/// pass the verifier's limit.
#[inline(never)]
pub fn start_binding(ctx: &XdpContext, pkt: &Packet, stats: &Counters) -> u32 {
    let (Some(pair), Some(kept)) = (ENTRY_SCRATCH.get_ptr_mut(0), SEGMENT_SCRATCH.get_ptr(0))
    else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: per-CPU scratch filled by new_connection during this run.
    let (pair, kept) = unsafe { (&mut *pair, &*kept) };
    let action = send_backend_syn(ctx, pkt, &mut pair.forward, kept, stats);
    if FLOWS.insert(&pair.key, &pair.forward, 0).is_err() {
        stats.inc(Counter::DropFlowTableFull);
        return xdp_action::XDP_DROP;
    }
    stats.inc(Counter::BindingsStarted);
    action
}

/// What the SYN to the backend offers: the client's own options (its MSS from the
/// cookie, its window scale, SACK-permitted, and timestamps with the TSval of its first
/// segment).
#[inline(always)]
fn backend_offer(mss: u16, client: ClientOptions, client_tsval: u32) -> SynOffer {
    SynOffer {
        mss,
        wscale: client.wscale,
        sack_ok: client.sack_ok,
        timestamps: if client.timestamps {
            Some((client_tsval, 0))
        } else {
            None
        },
    }
}

/// The timestamps of a client segment in `[start, end)` into `out` (`[TSval, TSecr]`);
/// false if it has none. (Not inlined: keeps the option work out of [`new_connection`]'s
/// frame. The frame's bounds come as arguments: given the context, LLVM passes its
/// 32-bit fields instead and widens `data_end` in here, which the verifier refuses.)
#[inline(never)]
fn segment_timestamps(start: usize, end: usize, pkt: &Packet, out: &mut [u32; 2]) -> bool {
    // No options, no timestamps: not worth the walk (the bind path of every client that
    // sends none).
    if option_len(pkt) == 0 {
        return false;
    }
    let Some(s) = options::walk(start, end, pkt.l4_off, option_len(pkt)) else {
        return false;
    };
    match s.walk.timestamps(&s.options) {
        Some((val, ecr)) => {
            *out = [val, ecr];
            true
        }
        None => false,
    }
}

/// Answers a SYN with a SYN-ACK whose ISN is a syncookie; keeps nothing. (Not inlined:
/// see [`new_connection`]. Called by the program's entry for a SYN rather than from
/// `new_connection`, so that the two frames never add up on one call chain.)
#[inline(never)]
pub fn answer_syn(ctx: &XdpContext, pkt: &Packet, stats: &Counters) -> u32 {
    let Some(keys) = SYNCOOKIE_KEYS.get(0) else {
        stats.inc(Counter::DropNoSyncookieKey);
        return xdp_action::XDP_DROP;
    };
    if !keys.current.is_set() {
        stats.inc(Counter::DropNoSyncookieKey);
        return xdp_action::XDP_DROP;
    }
    let start = ctx.data();
    let end = ctx.data_end();
    let Some((client_isn, _)) = tcp_seq_ack(start, end, pkt) else {
        stats.inc(Counter::PassMalformed);
        return xdp_action::XDP_PASS;
    };
    // Read in place in the scratch map value: a copy on the stack (or a default for the
    // case without options) would carry the uninitialised payloads of `None` fields, and
    // the verifier refuses to read those.
    let Some(s) = options::walk_or_none(start, end, pkt.l4_off, option_len(pkt)) else {
        stats.inc(Counter::DropWhileBinding);
        return xdp_action::XDP_DROP;
    };
    let w = &s.walk;
    let client_ts = w.timestamps(&s.options);
    let client = ClientOptions::of_syn(w);
    let index = encode_mss(match w.mss {
        Some(m) => m,
        None => DEFAULT_MSS,
    });
    let mss = match decode_mss(index) {
        Some(m) if m < MAX_OFFERED_MSS => m,
        _ => MAX_OFFERED_MSS,
    };
    let layout = CookieLayout::of_segment(client.timestamps);
    let k = pkt.key;
    // SAFETY: helper without arguments.
    let tai = unsafe { bpf_ktime_get_tai_ns() };
    let cookie = make_cookie(
        &keys.current,
        k.src,
        k.dst,
        k.sport,
        k.dport,
        client_isn,
        time_window(tai),
        cookie_data(layout, index, client.bits()),
        layout,
    );
    // The SYN-ACK mirrors what the client offered; its TSval (a clock of 2^20 ns ticks)
    // carries the options the cookie has no room for.
    let offer = SynOffer {
        mss,
        wscale: client.wscale.map(|_| OFFERED_WSCALE),
        sack_ok: client.sack_ok,
        timestamps: client_ts
            .map(|(client_tsval, _)| (synack_tsval((tai >> 20) as u32, &client), client_tsval)),
    };
    let built = grow_to(ctx, synack_len(pkt, &offer))
        .and_then(|()| syn_to_synack(ctx.data(), ctx.data_end(), pkt, cookie, &offer))
        .and_then(|len| set_len(ctx, len));
    if built.is_none() {
        // The frame could not be resized for the SYN-ACK.
        stats.inc(Counter::DropWhileBinding);
        return xdp_action::XDP_DROP;
    }
    stats.inc(Counter::SyncookiesSent);
    xdp_action::XDP_TX
}

/// The cookie's data if `cookie` is a valid syncookie of `layout` for this client and
/// ISN. (Not inlined: see [`new_connection`].)
#[inline(never)]
fn validate(
    pkt: &Packet,
    client_isn: u32,
    cookie: u32,
    layout: CookieLayout,
) -> Option<CookieData> {
    let keys = SYNCOOKIE_KEYS.get(0)?;
    let k = pkt.key;
    // SAFETY: helper without arguments.
    let t = time_window(unsafe { bpf_ktime_get_tai_ns() });
    check_cookie(
        keys, k.src, k.dst, k.sport, k.dport, client_isn, cookie, t, layout,
    )
}

/// Grows the frame to at least `needed` bytes.
#[inline(always)]
fn grow_to(ctx: &XdpContext, needed: usize) -> Option<()> {
    let have = ctx.data_end() - ctx.data();
    if have < needed {
        adjust_tail(ctx, needed as i32 - have as i32)?;
    }
    Some(())
}

/// Sets the frame to `len` bytes.
#[inline(always)]
fn set_len(ctx: &XdpContext, len: usize) -> Option<()> {
    let have = ctx.data_end() - ctx.data();
    if len != have {
        adjust_tail(ctx, len as i32 - have as i32)?;
    }
    Some(())
}

/// `len` as a helper argument the verifier can bound: checked against `1..=max` right
/// before the call, on a value LLVM cannot replace by an unchecked copy.
#[inline(always)]
fn bounded(len: usize, max: usize) -> Option<u32> {
    // SAFETY: a volatile read of a local.
    let len = unsafe { core::ptr::read_volatile(&len) };
    if len == 0 || len > max {
        return None;
    }
    Some(len as u32)
}

#[inline(always)]
fn adjust_tail(ctx: &XdpContext, delta: i32) -> Option<()> {
    // SAFETY: plain helper call on the running program's context.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return None;
    }
    Some(())
}

/// How the first segment's cookie chose the backend, as [`choose`] returns it: the kind
/// in the high half, the backend slot in the low half (a scalar keeps the call cheap for
/// the verifier and the stack).
const POLICY: u64 = 0;
const HIT: u64 = 1 << 32;
const FAILOVER_REDIRECT: u64 = 2 << 32;

/// First data segment with a valid syncookie, backend chosen (`choice`, from [`choose`]):
/// build the flow entries in ENTRY_SCRATCH, keep the segment with the reply entry in
/// PENDING. Returns [`ENTRIES_READY`] or the verdict for a packet that cannot be bound.
#[inline(never)]
fn create_binding(
    ctx: &XdpContext,
    pkt: &Packet,
    service: &Service,
    choice: u64,
    stats: &Counters,
) -> u32 {
    let chosen = match choice & 0xffff_ffff_0000_0000 {
        HIT | FAILOVER_REDIRECT => {
            let slot = choice as u32;
            BACKENDS.get(slot).map(|backend| (slot, *backend))
        }
        _ => None,
    };
    let (slot, backend) = match chosen {
        Some((slot, backend)) => {
            if let Some(c) = counters::backend(slot) {
                if choice & HIT != 0 {
                    c.cookie_hits += 1;
                } else {
                    c.failover_redirects += 1;
                }
            }
            (slot, backend)
        }
        None => match select::pick(service, &pkt.key) {
            Some((slot, backend)) => {
                if let Some(c) = counters::backend(slot) {
                    c.cookie_misses += 1;
                }
                (slot, backend)
            }
            None => {
                stats.inc(Counter::DropNoBackend);
                return xdp_action::XDP_DROP;
            }
        },
    };
    // The ISN and the cookie again from the segment (checked by new_connection): cheaper
    // than carrying them on the stack of the call chain.
    let Some((seq, ack)) = tcp_seq_ack(ctx.data(), ctx.data_end(), pkt) else {
        return xdp_action::XDP_PASS;
    };
    let (client_isn, cookie) = (seq.wrapping_sub(1), ack.wrapping_sub(1));
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };

    let start = ctx.data();
    let end = ctx.data_end();
    let Some(eth) = ptr_at::<EthHdr>(start, end, 0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: bounds-checked by ptr_at.
    let eth = unsafe { read(eth) };
    // SAFETY: reading the context field of the running program.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let Some(pair) = ENTRY_SCRATCH.get_ptr_mut(0) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: per-CPU scratch, used by this CPU only while the program runs.
    let pair = unsafe { &mut *pair };
    new_entries_into(pair, pkt, &eth, ingress, slot, &backend, now);
    for e in [&mut pair.forward, &mut pair.reply] {
        e.phase = phase::BINDING;
        e.state = flow_state::SYN;
        e.client_isn = client_isn;
        // The syncookie ISN, until the backend's SYN-ACK turns it into the shift.
        e.seq_delta = cookie;
    }
    if keep_segment(ctx, pkt, &pair.reply_key, &pair.forward, &pair.reply).is_none() {
        stats.inc(Counter::DropWhileBinding);
        return xdp_action::XDP_DROP;
    }
    stats.inc(Counter::NewFlows);
    if let Some(c) = counters::backend(slot) {
        c.new_flows += 1;
    }
    ENTRIES_READY
}

/// Reads the session cookie of the first segment and picks its backend: the primary if
/// it is up, else the backend the control plane moved its sessions to, else the policy.
#[inline(never)]
fn choose(ctx: &XdpContext, pkt: &Packet, service: &Service, stats: &Counters) -> u64 {
    let Some(cfg) = COOKIE_CONFIG.get(service.id) else {
        return POLICY;
    };
    let primary = match scan(ctx, pkt, cfg) {
        CookieOutcome::Found { primary, secondary } => {
            if let Some(secondary) = secondary {
                report_pair(service.id, primary, secondary, stats);
            }
            primary
        }
        CookieOutcome::NotHttp => {
            stats.inc(Counter::CookieNotHttp);
            return POLICY;
        }
        CookieOutcome::NoCookieHeader => {
            stats.inc(Counter::CookieNoHeader);
            return POLICY;
        }
        CookieOutcome::CookieNameAbsent => {
            stats.inc(Counter::CookieNameAbsent);
            return POLICY;
        }
        CookieOutcome::SegmentMissing => {
            stats.inc(Counter::CookieNoToken);
            return POLICY;
        }
        CookieOutcome::HeaderIncomplete => {
            stats.inc(Counter::CookieBeyondFirstSegment);
            return POLICY;
        }
    };
    let key = ServerIdKey {
        service: service.id,
        _pad: 0,
        token_hash: primary,
    };
    // SAFETY: the value is copied out right away.
    let Some(slot) = (unsafe { SERVER_IDS.get(&key) }).map(|id| id.slot) else {
        stats.inc(Counter::CookieUnknownToken);
        return POLICY;
    };
    if select::up(slot, service).is_some() {
        return HIT | slot as u64;
    }
    match FAILOVER.get(slot) {
        Some(f) if f.active == 1 && select::up(f.replacement, service).is_some() => {
            FAILOVER_REDIRECT | f.replacement as u64
        }
        _ => POLICY,
    }
}

/// Reports a sampled primary/secondary token pair to the daemon, which learns
/// replication pairs from them. Sampling keeps the ring-buffer cost off most binds; a
/// full ring loses the sample (counted), never the connection.
#[inline(always)]
fn report_pair(service: u32, primary: u64, secondary: u64, stats: &Counters) {
    let mask = CONFIG.get(0).map_or(u32::MAX, |c| c.pair_sample_mask);
    // SAFETY: helper without arguments.
    if unsafe { bpf_get_prandom_u32() } & mask != 0 {
        return;
    }
    let pair = CookiePair {
        service,
        _pad: 0,
        primary,
        secondary,
    };
    if PAIRS.output::<CookiePair>(&pair, 0).is_ok() {
        stats.inc(Counter::CookiePairsReported);
    } else {
        stats.inc(Counter::CookiePairsLost);
    }
}

extern "C" fn scan_burst(_index: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    match SCAN.get_ptr_mut(0) {
        // SAFETY: per-CPU scratch, used by this CPU only while the program runs.
        Some(s) => {
            if unsafe { (*s).burst() } {
                0
            } else {
                1
            }
        }
        None => 1,
    }
}

/// Copies the payload into the per-CPU scan buffer and runs the cookie scanner on it.
#[inline(always)]
fn scan(ctx: &XdpContext, pkt: &Packet, cfg: &CookieConfig) -> CookieOutcome {
    let Some(s) = SCAN.get_ptr_mut(0) else {
        return CookieOutcome::HeaderIncomplete;
    };
    let len = pkt.ip_end - pkt.payload_off;
    let Some(len) = bounded(if len > SCAN_MAX { SCAN_MAX } else { len }, SCAN_MAX) else {
        return CookieOutcome::HeaderIncomplete;
    };
    // SAFETY: the scratch value is SCAN_MAX + sentinel bytes long and len <= SCAN_MAX;
    // the helper checks the packet range itself.
    unsafe {
        if bpf_xdp_load_bytes(
            ctx.ctx,
            pkt.payload_off as u32,
            (*s).buf.bytes.as_mut_ptr() as *mut _,
            len,
        ) != 0
        {
            return CookieOutcome::HeaderIncomplete;
        }
        if (*s).start(len as usize, cfg) {
            bpf_loop(MAX_BURSTS, scan_burst as *mut _, core::ptr::null_mut(), 0);
        }
        (*s).outcome()
    }
}

/// Keeps the first segment (TCP header and payload) in PENDING, already addressed to
/// the backend: destination port and checksum translated like the packets that will
/// follow it; with it the reply entry, under the reply entry's key (`reply_key`), where
/// the backend's answers find it.
#[inline(always)]
fn keep_segment(
    ctx: &XdpContext,
    pkt: &Packet,
    reply_key: &FlowKey,
    flow: &Flow,
    reply: &Flow,
) -> Option<()> {
    let seg = SEGMENT_SCRATCH.get_ptr_mut(0)?;
    let len = tcp_segment_len(pkt.ip_end - pkt.l4_off)?;
    // SAFETY: per-CPU scratch; len <= PENDING_SEGMENT_MAX; offsets below are constants
    // inside the 20-byte TCP header the length check guarantees.
    unsafe {
        if bpf_xdp_load_bytes(
            ctx.ctx,
            pkt.l4_off as u32,
            (*seg).bytes.as_mut_ptr() as *mut _,
            len,
        ) != 0
        {
            return None;
        }
        // The MSS, options and timestamps are in the scratch value already (see
        // `new_connection`).
        (*seg).len = len as u16;
        (*seg).reply = *reply;
        let bytes = &mut (*seg).bytes;
        let port = flow.new_dport.to_ne_bytes();
        bytes[2] = port[0];
        bytes[3] = port[1];
        let check = u16::from_ne_bytes([bytes[16], bytes[17]]);
        let check =
            balancer_common::csum::apply_delta(check, flow.l4_csum_delta as u32).to_ne_bytes();
        bytes[16] = check[0];
        bytes[17] = check[1];
        PENDING.insert(reply_key, &*seg, 0).ok()
    }
}

/// Turns the client's first segment into the SYN to the backend, offering what `kept`
/// (the binding's PENDING value, or its scratch) says, and sends it. (Not inlined: keeps
/// the header building out of its callers' stack frames.)
#[inline(never)]
fn send_backend_syn(
    ctx: &XdpContext,
    pkt: &Packet,
    flow: &mut Flow,
    kept: &PendingSegment,
    stats: &Counters,
) -> u32 {
    let offer = &pending_offer(kept);
    let built = grow_to(ctx, backend_syn_len(pkt, offer))
        .and_then(|()| {
            data_to_backend_syn(
                ctx.data(),
                ctx.data_end(),
                pkt,
                flow.new_dst,
                flow.new_dport,
                flow.client_isn,
                offer,
            )
        })
        .and_then(|len| set_len(ctx, len));
    if built.is_none() {
        stats.inc(Counter::DropWhileBinding);
        return xdp_action::XDP_DROP;
    }
    forward::send_built(ctx, pkt, flow, stats)
}

/// A packet of a flow in the binding phase.
#[inline(never)]
pub fn binding(ctx: &XdpContext, pkt: &Packet, flow: &mut Flow, now: u64, stats: &Counters) -> u32 {
    // Client side (a binding's reply entry is in PENDING, not in FLOWS): only a
    // retransmission of the first segment means anything here.
    if flow.direction != direction::TO_BACKEND {
        stats.inc(Counter::DropWhileBinding);
        return xdp_action::XDP_DROP;
    }
    let start = ctx.data();
    let end = ctx.data_end();
    let Some((seq, _)) = tcp_seq_ack(start, end, pkt) else {
        stats.inc(Counter::DropWhileBinding);
        return xdp_action::XDP_DROP;
    };
    if seq != flow.client_isn.wrapping_add(1) || pkt.ip_end <= pkt.payload_off {
        stats.inc(Counter::DropWhileBinding);
        return xdp_action::XDP_DROP;
    }
    if ns_since_tick(now, flow.created_tick) > BIND_TIMEOUT_NS {
        return reset_client(ctx, pkt, flow, stats);
    }
    // The SYN offers what the first one did: kept with the segment.
    let Some(seg) = PENDING.get_ptr(&other_key(&pkt.key, flow)) else {
        stats.inc(Counter::DropWhileBinding);
        return xdp_action::XDP_DROP;
    };
    stats.inc(Counter::BindRetransmits);
    // SAFETY: a pointer to the map value, valid for this program run.
    send_backend_syn(ctx, pkt, flow, unsafe { &*seg }, stats)
}

/// The SYN to the backend of a connection being bound, from its PENDING value.
#[inline(always)]
pub fn pending_offer(seg: &PendingSegment) -> SynOffer {
    backend_offer(
        seg.mss,
        ClientOptions::from_byte(seg.client_options),
        seg.client_tsval(),
    )
}

/// How the splice of a connection being bound (`seg`) translates options, from the
/// backend's SYN-ACK in `[start, end)` (parsed as `pkt`): into the option scratch value's
/// `splice` (kept off the callers' stack frames, which are at the verifier's limit), which
/// this returns. (Not inlined: keeps the walk off its callers' frames too.)
#[inline(never)]
pub fn negotiate(
    start: usize,
    end: usize,
    pkt: &Packet,
    seg: &PendingSegment,
) -> Option<&'static SpliceOptions> {
    // Options that cannot be read count as none offered.
    let s = options::walk_or_none(start, end, pkt.l4_off, option_len(pkt))?;
    let client = ClientOptions::from_byte(seg.client_options);
    s.splice = SpliceOptions::negotiate(&client, seg.synack_tsval(), &s.walk, &s.options);
    Some(&s.splice)
}

/// Translates the kept first segment of `seg`, now at `l4_off` of the frame towards the
/// backend, as the splice's client -> backend entry will translate every later segment
/// (its TSecr into the backend's clock, its options stripped where the backend refused
/// them, its window rescaled; `seq_delta` is the splice's `K - B`), and fixes its
/// checksum. (Inlined, with the edit in the scratch value: a frame of its own between its
/// caller's and the option edit's would pass the verifier's limit on a call chain's
/// stack.)
#[inline(always)]
pub fn translate_kept_segment(
    start: usize,
    end: usize,
    l4_off: usize,
    seg: &PendingSegment,
    seq_delta: u32,
) -> Option<()> {
    let s = options::scratch()?;
    s.edit = s.splice.to_backend(seq_delta);
    let delta = options::translate_by_scratch(start, end, l4_off, kept_option_len(seg))?;
    if delta != 0 {
        let check = balancer_common::parse::ptr_at_mut::<u16>(start, end, l4_off + 16)?;
        // SAFETY: bounds-checked by ptr_at_mut.
        unsafe {
            balancer_common::parse::write(
                check,
                balancer_common::csum::apply_delta(balancer_common::parse::read(check), delta),
            )
        };
    }
    Some(())
}

/// Option bytes of a kept segment (its data offset, as the client sent it).
#[inline(always)]
pub fn kept_option_len(seg: &PendingSegment) -> usize {
    ((seg.bytes[12] >> 4) as usize * 4).saturating_sub(20)
}

/// Whether a client segment on a binding flow is its first segment again while the
/// backend it is being bound to has stopped taking new flows (failed or drained while the
/// client waited): then the connection is bound again, and the session goes where the
/// control plane now sends it.
#[inline(never)]
pub fn backend_left(ctx: &XdpContext, pkt: &Packet, flow: &Flow, stats: &Counters) -> bool {
    if flow.phase != phase::BINDING
        || pkt.ip_end <= pkt.payload_off
        || select::takes_new_flows(flow.backend_slot())
    {
        return false;
    }
    let first_again = tcp_seq_ack(ctx.data(), ctx.data_end(), pkt)
        .is_some_and(|(seq, _)| seq == flow.client_isn.wrapping_add(1));
    if first_again {
        stats.inc(Counter::BindsRedone);
    }
    first_again
}

/// A SYN on the client side of a cookie-mode flow. A copy of the connection's own SYN is
/// answered like the original (the syncookie is the same) and changes nothing; a SYN with
/// another ISN is answered statelessly too, and its ISN noted: if it is a new connection
/// reusing the client port, its handshake ACK or first segment proves it
/// ([`proves_new_connection`]) and only then replaces the old connection. A blind SYN,
/// whose sender never sees the syncookie, cannot tear the connection down.
#[inline(never)]
pub fn syn_on_cookie_flow(
    ctx: &XdpContext,
    pkt: &Packet,
    flow: &mut Flow,
    stats: &Counters,
) -> u32 {
    if let Some((isn, _)) = tcp_seq_ack(ctx.data(), ctx.data_end(), pkt) {
        if isn != flow.client_isn {
            flow.reuse_isn = isn;
            flow.set(flow_flags::REUSE_PENDING);
        }
    }
    answer_syn(ctx, pkt, stats)
}

/// Whether a client segment on a cookie-mode flow with a noted SYN completes that SYN's
/// syncookie handshake: `seq - 1` is the noted ISN and `ack - 1` a valid syncookie for it.
#[inline(never)]
pub fn proves_new_connection(ctx: &XdpContext, pkt: &Packet, flow: &Flow) -> bool {
    if pkt.tcp_flags & (TCP_ACK | TCP_SYN | TCP_RST) != TCP_ACK {
        return false;
    }
    let Some((seq, ack)) = tcp_seq_ack(ctx.data(), ctx.data_end(), pkt) else {
        return false;
    };
    if seq.wrapping_sub(1) != flow.reuse_isn {
        return false;
    }
    let mut ts = [0u32; 2];
    let has_ts = segment_timestamps(ctx.data(), ctx.data_end(), pkt, &mut ts);
    validate(
        pkt,
        flow.reuse_isn,
        ack.wrapping_sub(1),
        CookieLayout::of_segment(has_ts),
    )
    .is_some()
}

/// Removes both entries of a cookie-mode flow (client side `key`, `flow` its entry) and its
/// kept segment (under the reply entry's key, while binding).
#[inline(always)]
pub fn forget(key: &FlowKey, flow: &Flow) {
    let reply_key = other_key(key, flow);
    let _ = FLOWS.remove(&reply_key);
    let _ = FLOWS.remove(key);
    let _ = PENDING.remove(&reply_key);
}

/// The backend never answered: reset the client (RST from the VIP) and forget the
/// connection.
#[inline(never)]
fn reset_client(ctx: &XdpContext, pkt: &Packet, flow: &Flow, stats: &Counters) -> u32 {
    forget(&pkt.key, flow);
    stats.inc(Counter::BindingsTimedOut);
    match rst_for(ctx.data(), ctx.data_end(), pkt).and_then(|len| set_len(ctx, len)) {
        Some(()) => xdp_action::XDP_TX,
        None => xdp_action::XDP_DROP,
    }
}

/// A RST from the backend while binding. If it answers the SYN we sent (it acknowledges
/// the client's ISN: nothing listens on the backend, or it refuses), the client learns at
/// once rather than after the bind timeout: the RST goes to the client, in the client's
/// sequence space (the syncookie's), and the connection is forgotten. Any other RST
/// (blind, or stale) is dropped.
#[inline(never)]
fn backend_refused(ctx: &XdpContext, pkt: &Packet, reply: &mut Flow, stats: &Counters) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    // RST|ACK acknowledging the client's ISN; a RST with SYN set is malformed.
    let answers_our_syn = pkt.tcp_flags & (TCP_ACK | TCP_SYN) == TCP_ACK
        && tcp_seq_ack(start, end, pkt).map(|(_, ack)| ack)
            == Some(reply.client_isn.wrapping_add(1));
    if !answers_our_syn {
        stats.inc(Counter::DropWhileBinding);
        return xdp_action::XDP_DROP;
    }
    // What forwarding would refuse (TTL running out, a fragment) is refused before the
    // packet or the binding is touched.
    if let Some(action) = forward::refuse(pkt, stats) {
        return action;
    }
    if set_seq(start, end, pkt.l4_off, reply.cookie_isn().wrapping_add(1)).is_none() {
        stats.inc(Counter::DropWhileBinding);
        return xdp_action::XDP_DROP;
    }
    let client_key = other_key(&pkt.key, reply);
    stats.inc(Counter::BindingsRefused);
    let verdict = forward::forward(ctx, pkt, reply, stats);
    // `reply` lives in the PENDING value removed here: not used after.
    let _ = FLOWS.remove(&client_key);
    let _ = PENDING.remove(&pkt.key);
    verdict
}

/// An ACK without SYN from the backend while binding. One that does not acknowledge our
/// SYN is, in practice, the backend's TIME-WAIT of an earlier connection with the same
/// addresses and ports answering our SYN (Linux does this when the client's ISN is not
/// above the old connection's, e.g. when that connection did not come through this VIP):
/// as a TCP in SYN-SENT must (RFC 9293 3.10.7.3), answer it with
/// `<SEQ=SEG.ACK><CTL=RST>`, which ends the TIME-WAIT. The SYN must then go out again:
/// the first time per binding the ACK is passed to the TC program (`tc.rs`), which can
/// send two packets (the RST, then the SYN) where XDP sends one; after that, XDP sends
/// the RST alone and the client's retransmission of its first segment sends the SYN
/// (bounding what a backend that keeps answering so can cause). An ACK of our SYN
/// without SYN is dropped.
#[inline(never)]
fn stale_ack(ctx: &XdpContext, pkt: &Packet, reply: &mut Flow, stats: &Counters) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    let acks_our_syn =
        tcp_seq_ack(start, end, pkt).map(|(_, ack)| ack) == Some(reply.client_isn.wrapping_add(1));
    if acks_our_syn {
        stats.inc(Counter::DropWhileBinding);
        return xdp_action::XDP_DROP;
    }
    // The TC program takes a pure ACK only (as a TIME-WAIT sends): the same test here, or
    // a packet passed for it would go on to the client.
    if !reply.has(flow_flags::STALE_ACK_PASSED) && pkt.tcp_flags & TCP_FIN == 0 {
        reply.set(flow_flags::STALE_ACK_PASSED);
        stats.inc(Counter::PassStaleAckToTc);
        return xdp_action::XDP_PASS;
    }
    // Like the syncookie SYN-ACK and the bind-timeout RST, an answer built here is
    // counted by its own counter, not as forwarded traffic.
    match rst_for(start, end, pkt).and_then(|len| set_len(ctx, len)) {
        Some(()) => {
            stats.inc(Counter::BindStaleAcks);
            xdp_action::XDP_TX
        }
        None => {
            stats.inc(Counter::DropWhileBinding);
            xdp_action::XDP_DROP
        }
    }
}

/// Checks that a backend packet for a reply entry in the binding phase is the SYN-ACK
/// acknowledging the client's ISN; returns the client side's flow key and the backend's
/// ISN. Shared by the XDP path and the TC fallback.
#[inline(always)]
pub fn synack_for_binding(
    start: usize,
    end: usize,
    pkt: &Packet,
    reply: &Flow,
) -> Option<(FlowKey, u32)> {
    let synack = pkt.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN | TCP_ACK;
    let (backend_isn, ack) = tcp_seq_ack(start, end, pkt)?;
    if !synack || ack != reply.client_isn.wrapping_add(1) {
        return None;
    }
    Some((other_key(&pkt.key, reply), backend_isn))
}

/// Length of a kept segment, bounded for the verifier.
#[inline(always)]
pub fn segment_len(seg: &PendingSegment) -> Option<u32> {
    tcp_segment_len(seg.len as usize)
}

/// A TCP segment length (header and payload) that fits a kept segment, bounded for the
/// verifier.
#[inline(always)]
fn tcp_segment_len(len: usize) -> Option<u32> {
    if len < 20 {
        return None;
    }
    bounded(len, PENDING_SEGMENT_MAX)
}

/// The kept segment has been copied into the frame for the backend: both entries of the
/// flow are spliced from now on, shifting sequence numbers by `K - B`; the reply entry
/// (`reply`, in the PENDING value under `reply_key`) moves into the flow table and the
/// segment is released. (Should that frame be lost, the backend repeats its SYN-ACK,
/// which reaches the client through the splice; the client acknowledges it and
/// retransmits its first segment, which the splice delivers.) False, with nothing
/// changed, when the reply entry cannot be stored: the backend's next SYN-ACK tries again.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn complete_binding(
    reply: &mut Flow,
    reply_key: &FlowKey,
    client_key: &FlowKey,
    backend_isn: u32,
    options: &SpliceOptions,
    frame_len: u64,
    stats: &Counters,
) -> bool {
    let binding = (
        reply.phase,
        reply.seq_delta,
        reply.state,
        reply.flags,
        reply.win_shift,
        reply.ts_offset,
    );
    let delta = reply.cookie_isn().wrapping_sub(backend_isn);
    let splice = |f: &mut Flow, edit_flags: u8, win_shift: i8| {
        f.phase = phase::SPLICED;
        f.seq_delta = delta;
        f.state = flow_state::ESTABLISHED;
        f.flags |= edit_flags;
        f.win_shift = win_shift;
        f.ts_offset = options.ts_offset;
    };
    let slot = reply.backend_slot();
    // Spliced in place and copied into the flow table before the PENDING value goes: the
    // backend's next packet finds one or the other.
    splice(reply, options.to_client_flags, options.to_client_shift);
    if FLOWS.insert(reply_key, &*reply, 0).is_err() {
        // Put back as it was, for the backend's next SYN-ACK.
        (
            reply.phase,
            reply.seq_delta,
            reply.state,
            reply.flags,
            reply.win_shift,
            reply.ts_offset,
        ) = binding;
        return false;
    }
    // `reply` points into the value removed here: not used after.
    let _ = PENDING.remove(reply_key);
    // The frame now carries the client's first segment to the backend.
    stats.add(Counter::TxBytes, frame_len);
    if let Some(b) = counters::backend(slot) {
        b.packets_to += 1;
        b.bytes_to += frame_len;
    }
    if let Some(f) = FLOWS.get_ptr_mut(client_key) {
        // SAFETY: pointer into the map value, valid during this run.
        splice(
            unsafe { &mut *f },
            options.to_backend_flags,
            options.to_backend_shift,
        );
    }
    stats.inc(Counter::BindingsCompleted);
    true
}

/// A backend packet for a connection being bound (`seg`: its PENDING value, found under
/// the packet's key): the SYN-ACK acknowledging the client's ISN is turned into the
/// client's kept first segment and sent back to the backend.
///
/// The frame must grow from a SYN-ACK to the segment's size. Where the driver's frame has
/// no room for that (veth hands XDP small skbs as they are; some NIC drivers use
/// buffers barely larger than the MTU), the SYN-ACK is passed on, and the TC ingress
/// program (`tc.rs`), which can grow an skb, does this one step.
#[inline(never)]
pub fn backend_answer(
    ctx: &XdpContext,
    pkt: &Packet,
    seg: &mut PendingSegment,
    stats: &Counters,
) -> u32 {
    let start = ctx.data();
    let end = ctx.data_end();
    if pkt.tcp_flags & TCP_RST != 0 {
        return backend_refused(ctx, pkt, &mut seg.reply, stats);
    }
    if pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_ACK {
        return stale_ack(ctx, pkt, &mut seg.reply, stats);
    }
    let Some((client_key, backend_isn)) = synack_for_binding(start, end, pkt, &seg.reply) else {
        stats.inc(Counter::DropWhileBinding);
        return xdp_action::XDP_DROP;
    };
    let Some(n) = segment_len(seg) else {
        stats.inc(Counter::DropWhileBinding);
        return xdp_action::XDP_DROP;
    };
    // Read before the SYN-ACK is overwritten.
    let Some(options) = negotiate(start, end, pkt, seg) else {
        stats.inc(Counter::DropWhileBinding);
        return xdp_action::XDP_DROP;
    };
    let needed = pkt.l3_off + 20 + n as usize;
    let have = end - start;
    if adjust_tail(ctx, needed as i32 - have as i32).is_none() {
        return xdp_action::XDP_PASS;
    }
    let Some(l4_off) = synack_to_segment_headers(ctx.data(), ctx.data_end(), pkt, n as usize)
    else {
        stats.inc(Counter::DropWhileBinding);
        return xdp_action::XDP_DROP;
    };
    // SAFETY: n <= the kept bytes' size; the helper checks the packet range itself.
    let stored =
        unsafe { bpf_xdp_store_bytes(ctx.ctx, l4_off as u32, seg.bytes.as_ptr() as *mut _, n) };
    let seq_delta = seg.reply.cookie_isn().wrapping_sub(backend_isn);
    if stored != 0
        || set_ack(
            ctx.data(),
            ctx.data_end(),
            l4_off,
            backend_isn.wrapping_add(1),
        )
        .is_none()
        || translate_kept_segment(ctx.data(), ctx.data_end(), l4_off, seg, seq_delta).is_none()
        || !complete_binding(
            &mut seg.reply,
            &pkt.key,
            &client_key,
            backend_isn,
            options,
            needed as u64,
            stats,
        )
    {
        stats.inc(Counter::DropWhileBinding);
        return xdp_action::XDP_DROP;
    }
    stats.inc(Counter::TxSameInterface);
    xdp_action::XDP_TX
}

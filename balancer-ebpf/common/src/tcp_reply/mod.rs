//! TCP answers built in place over the client's own frame: the SYN-ACK of a syncookie
//! handshake ([`syn_to_synack`]) and a RST ([`rst_for`]), both sent back with `XDP_TX`.
//!
//! The answer reuses the frame's first bytes: the Ethernet header (MACs swapped, a VLAN
//! tag kept as it is), a fresh 20-byte IPv4 header and a fresh TCP header. Its length is
//! fixed by the link header and the options it carries (see [`synack_len`], [`rst_len`]);
//! the functions return
//! it and the XDP program then sets the frame to that length with
//! `bpf_xdp_adjust_tail(ctx, new_len - (data_end - data))`.
//!
//! **IP options are dropped**: the answer always has IHL 5. Echoing a client's options
//! (record route, timestamps, source routes) back without interpreting them would be
//! wrong, the kernel's own SYN-ACKs do not carry them either, and a fixed header length
//! keeps every offset below constant relative to the link header.
//!
//! **Room**: the functions write only inside `[start, end)` and never need the frame to
//! grow for a RST (every TCP segment is at least as long as one). A SYN-ACK needs
//! [`synack_len`] bytes, which a SYN that offers the same options (the SYN-ACK mirrors
//! them) nearly always has. A shorter SYN (e.g. no options, not padded, over veth) makes
//! [`syn_to_synack`] return `None` without touching the frame; the caller grows the frame
//! first (`bpf_xdp_adjust_tail` by `synack_len(&pkt) - (data_end - data)`), reloads
//! `data`/`data_end` and calls again with the same [`Packet`] (its offsets are relative to
//! `data`, which growing the tail does not move).
//!
//! Every access is bounds-checked with [`ptr_at`]/[`ptr_at_mut`] right before it; all
//! checks that can fail happen before the first write, so `None` always means "frame
//! untouched". The fit check compares against `data_end` passed through a volatile stack
//! slot, so LLVM cannot drop it as implied by earlier checks the verifier does not relate
//! to these offsets (the parser's variable-offset TCP header check, or a caller's
//! `data_end - data >= len`). Checked by loading a test program that calls every
//! function here on kernel 6.18 (about 10K instructions processed). Checksums are computed from the values written (straight-line sums over a
//! fixed number of words), not read back from the packet.

use core::mem::size_of;

use crate::{
    csum::fold,
    parse::{
        ptr_at, ptr_at_mut, read, write, EthHdr, Ipv4Hdr, Packet, TcpHdr, TCP_ACK, TCP_FIN,
        TCP_RST, TCP_SYN,
    },
    tcp_opts::{walk, OptionBytes, SynOffer},
    PROTO_TCP,
};

pub use crate::tcp_opts::{MAX_OPTION_BYTES as MAX_TCP_OPTION_BYTES, MAX_OPTION_STEPS};

/// TTL of the answers.
pub const REPLY_TTL: u8 = 64;
/// Receive window of the SYN-ACK (never scaled: RFC 7323 2.2).
pub const SYNACK_WINDOW: u16 = 65535;
/// MSS assumed for a SYN without an MSS option (RFC 9293, 3.7.1: 536 for IPv4).
pub const DEFAULT_MSS: u16 = 536;

const IPV4_LEN: usize = size_of::<Ipv4Hdr>();
const TCP_LEN: usize = size_of::<TcpHdr>();
/// IPv4 "don't fragment", host order.
const IP_DF: u16 = 0x4000;

/// Frame length of the SYN-ACK [`syn_to_synack`] builds for `pkt` with `offer`: link
/// header, 20-byte IPv4 header, TCP header with the offer's options (24 to 40 bytes).
#[inline(always)]
pub fn synack_len(pkt: &Packet, offer: &SynOffer) -> usize {
    pkt.l3_off + IPV4_LEN + TCP_LEN + 4 * offer.words().1
}

/// Frame length of the RST [`rst_for`] builds for `pkt`: link header, 20-byte IPv4 header,
/// 20-byte TCP header.
#[inline(always)]
pub fn rst_len(pkt: &Packet) -> usize {
    pkt.l3_off + IPV4_LEN + TCP_LEN
}

/// Sequence and acknowledgement numbers of the TCP segment (host order).
#[inline(always)]
pub fn tcp_seq_ack(start: usize, end: usize, pkt: &Packet) -> Option<(u32, u32)> {
    if pkt.key.proto != PROTO_TCP {
        return None;
    }
    // SAFETY: bounds-checked by ptr_at.
    let tcp = unsafe { read(ptr_at::<TcpHdr>(start, end, pkt.l4_off)?) };
    Some((u32::from_be(tcp.seq), u32::from_be(tcp.ack_seq)))
}

/// The option bytes of the parsed TCP segment `pkt` (see [`OptionBytes::load`]).
#[inline(always)]
pub fn segment_options(start: usize, end: usize, pkt: &Packet) -> OptionBytes {
    let opt_len = pkt.payload_off.saturating_sub(pkt.l4_off + TCP_LEN);
    OptionBytes::load(start, end, pkt.l4_off, opt_len)
}

/// The MSS option of a SYN, or [`DEFAULT_MSS`] if it has none (or its options are
/// malformed before the MSS option). The value is returned as sent, even if below 536;
/// [`crate::syncookie::encode_mss`] rounds it into the cookie's table.
///
/// Looks at the first [`MAX_OPTION_STEPS`] options only (see [`crate::tcp_opts::walk`]):
/// a SYN whose MSS option comes later (say, behind NOP padding) gets the default, and
/// works, with smaller segments. Only whole option words inside the frame are read.
#[inline(always)]
pub fn client_mss(start: usize, end: usize, pkt: &Packet) -> u16 {
    match walk(&segment_options(start, end, pkt)).mss {
        Some(m) => m,
        None => DEFAULT_MSS,
    }
}

/// Turns the client's SYN in `[start, end)` (parsed into `pkt`) into the SYN-ACK from the
/// service: MACs, addresses and ports swapped, `seq = isn` (the cookie), `ack = SYN.seq +
/// 1`, flags SYN|ACK, window [`SYNACK_WINDOW`], the options of `offer` (the MSS the
/// balancer offers the client, not the client's, and the options it mirrors). IPv4:
/// IHL 5 (options dropped), TOS 0, id 0, DF, TTL [`REPLY_TTL`]. Both checksums are
/// computed in full.
///
/// Returns the new frame length ([`synack_len`]), or `None`, with the frame untouched, if
/// the packet is not a plain SYN (SYN set; ACK, RST and FIN clear; a SYN+FIN is dropped by
/// TCP stacks in LISTEN too), or the frame is shorter than [`synack_len`] (the caller grows
/// it and calls again; see the module documentation).
#[inline(always)]
pub fn syn_to_synack(
    start: usize,
    end: usize,
    pkt: &Packet,
    isn: u32,
    offer: &SynOffer,
) -> Option<usize> {
    if pkt.key.proto != PROTO_TCP
        || pkt.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) != TCP_SYN
    {
        return None;
    }
    // SAFETY: bounds-checked by ptr_at.
    let syn = unsafe { read(ptr_at::<TcpHdr>(start, end, pkt.l4_off)?) };
    let client_isn = u32::from_be(syn.seq);
    reply_in_place(
        start,
        end,
        pkt,
        Reply {
            seq: isn,
            ack: client_isn.wrapping_add(1),
            flags: TCP_SYN | TCP_ACK,
            window: SYNACK_WINDOW,
            options: offer.words(),
        },
    )
}

/// Turns a client segment in `[start, end)` into a RST from the service (the segment's
/// destination) to the client, following RFC 9293 3.10.7.1 (RFC 793 "Reset Generation"):
/// - the segment has ACK: `seq = SEG.ACK`, flags RST;
/// - otherwise: `seq = 0`, `ack = SEG.SEQ + SEG.LEN` (payload, plus one each for SYN and
///   FIN), flags RST|ACK.
///
/// Window 0, no options, IPv4 as in [`syn_to_synack`]. Returns the new frame length
/// ([`rst_len`]), or `None`, with the frame untouched, for a segment that is itself a RST
/// (never answered) or a truncated frame. A RST is never longer than the segment.
#[inline(always)]
pub fn rst_for(start: usize, end: usize, pkt: &Packet) -> Option<usize> {
    let flags = pkt.tcp_flags;
    if pkt.key.proto != PROTO_TCP || flags & TCP_RST != 0 {
        return None;
    }
    // SAFETY: bounds-checked by ptr_at.
    let seg = unsafe { read(ptr_at::<TcpHdr>(start, end, pkt.l4_off)?) };
    let r = if flags & TCP_ACK != 0 {
        Reply {
            seq: u32::from_be(seg.ack_seq),
            ack: 0,
            flags: TCP_RST,
            window: 0,
            options: NO_OPTIONS,
        }
    } else {
        let mut seg_len = pkt.ip_end.saturating_sub(pkt.payload_off) as u32;
        if flags & TCP_SYN != 0 {
            seg_len += 1;
        }
        if flags & TCP_FIN != 0 {
            seg_len += 1;
        }
        Reply {
            seq: 0,
            ack: u32::from_be(seg.seq).wrapping_add(seg_len),
            flags: TCP_RST | TCP_ACK,
            window: 0,
            options: NO_OPTIONS,
        }
    };
    reply_in_place(start, end, pkt, r)
}

/// TCP fields of an answer, host order.
#[derive(Clone, Copy)]
struct Reply {
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    /// Option words (memory order) and how many of them to write.
    options: ([u32; 5], usize),
}

const NO_OPTIONS: ([u32; 5], usize) = ([0; 5], 0);

/// Where a built segment goes: back to the sender (addresses, ports and MACs swapped), or
/// onwards from the sender to another destination (the MACs are left for the caller's
/// next-hop resolution).
#[derive(Clone, Copy)]
enum Route {
    Back,
    Onwards { dst: u32, dport: u16 },
}

/// Writes the answer over the frame: Ethernet with MACs swapped, IPv4 header without
/// options from the service to the client, TCP header with the answer's options.
/// Checks the whole answer fits before writing anything.
#[inline(always)]
fn reply_in_place(start: usize, end: usize, pkt: &Packet, r: Reply) -> Option<usize> {
    build_in_place(start, end, pkt, r, Route::Back)
}

/// [`reply_in_place`] with a choice of [`Route`].
#[inline(always)]
fn build_in_place(start: usize, end: usize, pkt: &Packet, r: Reply, route: Route) -> Option<usize> {
    let (words, n_words) = r.options;
    let n_words = if n_words > 5 { 5 } else { n_words };
    let tcp_len = TCP_LEN + 4 * n_words;
    let l3_off = pkt.l3_off;
    let l4_off = l3_off + IPV4_LEN;
    let new_len = l4_off + tcp_len;
    // The answer fits in any frame that holds the TCP header behind an option-less IPv4
    // header, and the parser has checked that the real TCP header fits; LLVM can prove
    // this and would drop the checks below. The verifier cannot (the parser's check was
    // on a pointer with a variable offset, these writes are at fixed offsets from the link
    // header), so `end` is passed through memory to make it opaque to LLVM.
    let end = opaque(end);
    if start + new_len > end {
        return None;
    }
    // SAFETY: bounds-checked by ptr_at.
    let eth = unsafe { read(ptr_at::<EthHdr>(start, end, 0)?) };

    let key = pkt.key;
    let (src, dst, sport, dport) = match route {
        Route::Back => (key.dst, key.src, key.dport, key.sport),
        Route::Onwards { dst, dport } => (key.src, dst, key.sport, dport),
    };
    let ip = reply_ip_header(IPV4_LEN + tcp_len, src, dst);
    let mut tcp = TcpHdr {
        sport,
        dport,
        seq: r.seq.to_be(),
        ack_seq: r.ack.to_be(),
        doff_res: ((tcp_len / 4) as u8) << 4,
        flags: r.flags,
        window: r.window.to_be(),
        check: 0,
        urg_ptr: 0,
    };
    // Unused option words are zero and add nothing to the sum.
    tcp.check = tcp_checksum(&ip, &tcp, tcp_len as u16, &words);

    if let Route::Back = route {
        swap_macs(start, end, &eth)?;
    }
    let p = ptr_at_mut::<Ipv4Hdr>(start, end, l3_off)?;
    // SAFETY: as above.
    unsafe { write(p, ip) };
    let p = ptr_at_mut::<TcpHdr>(start, end, l4_off)?;
    // SAFETY: as above.
    unsafe { write(p, tcp) };
    for (i, word) in words.iter().enumerate() {
        if i >= n_words {
            break;
        }
        let p = ptr_at_mut::<u32>(start, end, l4_off + TCP_LEN + 4 * i)?;
        // SAFETY: as above.
        unsafe { write(p, *word) };
    }
    Some(new_len)
}

/// `x`, through a volatile stack slot: LLVM knows nothing about the result, so bounds
/// checks against it are neither dropped nor merged with earlier ones. (The verifier
/// tracks the spilled `data_end` pointer.)
/// Writes `eth`'s source MAC as destination and its destination MAC as source.
#[inline(always)]
fn swap_macs(start: usize, end: usize, eth: &EthHdr) -> Option<()> {
    let p = ptr_at_mut::<EthHdr>(start, end, 0)?;
    // SAFETY: bounds-checked by ptr_at_mut. The MACs are copied from the local copy
    // (non-overlapping, 6 bytes: inlined, no memmove).
    unsafe {
        core::ptr::copy_nonoverlapping(
            eth.src.as_ptr(),
            core::ptr::addr_of_mut!((*p).dst) as *mut u8,
            6,
        );
        core::ptr::copy_nonoverlapping(
            eth.dst.as_ptr(),
            core::ptr::addr_of_mut!((*p).src) as *mut u8,
            6,
        );
    }
    Some(())
}

/// Frame length of the SYN [`data_to_backend_syn`] builds (same layout as a SYN-ACK).
#[inline(always)]
pub fn backend_syn_len(pkt: &Packet, offer: &SynOffer) -> usize {
    synack_len(pkt, offer)
}

/// Turns a client's first data segment (client -> VIP) into the SYN that opens the
/// connection to the chosen backend: client -> backend, `seq` = the client's ISN, the
/// client's window, the options of `offer` (the client's own), no payload. Returns the
/// new frame length (the caller sets the frame to it and resolves the next hop); `None`
/// leaves the frame untouched (not TCP, or fewer than [`backend_syn_len`] bytes: grow it
/// and call again).
#[inline(always)]
pub fn data_to_backend_syn(
    start: usize,
    end: usize,
    pkt: &Packet,
    backend_addr: u32,
    backend_port: u16,
    client_isn: u32,
    offer: &SynOffer,
) -> Option<usize> {
    if pkt.key.proto != PROTO_TCP {
        return None;
    }
    // SAFETY: bounds-checked by ptr_at.
    let seg = unsafe { read(ptr_at::<TcpHdr>(start, end, pkt.l4_off)?) };
    build_in_place(
        start,
        end,
        pkt,
        Reply {
            seq: client_isn,
            ack: 0,
            flags: TCP_SYN,
            window: u16::from_be(seg.window),
            options: offer.words(),
        },
        Route::Onwards {
            dst: backend_addr,
            dport: backend_port,
        },
    )
}

/// Rewrites the link and IPv4 headers of a backend's SYN-ACK (backend -> client, parsed
/// as `pkt`) to carry the client's kept first segment back to the backend; the caller
/// then stores the segment at the returned L4 offset. MACs swapped (the frame returns
/// towards the backend), a fresh 20-byte IPv4 header client -> backend sized for
/// `segment_len` TCP bytes. The frame must already be `pkt.l3_off + 20 + segment_len`
/// bytes long; `None` leaves it untouched.
#[inline(always)]
pub fn synack_to_segment_headers(
    start: usize,
    end: usize,
    pkt: &Packet,
    segment_len: usize,
) -> Option<usize> {
    let l4_off = pkt.l3_off + IPV4_LEN;
    let end = opaque(end);
    if !(TCP_LEN..=0xffff - IPV4_LEN).contains(&segment_len) || start + l4_off + segment_len > end {
        return None;
    }
    // SAFETY: bounds-checked by ptr_at.
    let eth = unsafe { read(ptr_at::<EthHdr>(start, end, 0)?) };
    let ip = reply_ip_header(IPV4_LEN + segment_len, pkt.key.dst, pkt.key.src);
    swap_macs(start, end, &eth)?;
    let p = ptr_at_mut::<Ipv4Hdr>(start, end, pkt.l3_off)?;
    // SAFETY: bounds-checked by ptr_at_mut.
    unsafe { write(p, ip) };
    Some(l4_off)
}

/// Sets the acknowledgement number of the TCP header at `l4_off`, updating its checksum
/// incrementally.
#[inline(always)]
pub fn set_ack(start: usize, end: usize, l4_off: usize, ack: u32) -> Option<()> {
    set_seq_field(start, end, l4_off, ack, true)
}

/// Sets the sequence number of the TCP header at `l4_off`, updating its checksum
/// incrementally.
#[inline(always)]
pub fn set_seq(start: usize, end: usize, l4_off: usize, seq: u32) -> Option<()> {
    set_seq_field(start, end, l4_off, seq, false)
}

#[inline(always)]
fn set_seq_field(start: usize, end: usize, l4_off: usize, value: u32, ack: bool) -> Option<()> {
    let p = ptr_at_mut::<TcpHdr>(start, end, l4_off)?;
    // SAFETY: bounds-checked by ptr_at_mut.
    unsafe {
        let mut h = read(p);
        let new = value.to_be();
        let old = if ack { h.ack_seq } else { h.seq };
        h.check = crate::csum::apply_delta(h.check, crate::csum::u32_delta(old, new));
        if ack {
            h.ack_seq = new;
        } else {
            h.seq = new;
        }
        write(p, h);
    }
    Some(())
}

#[inline(always)]
fn opaque(x: usize) -> usize {
    // SAFETY: reading a live local.
    unsafe { core::ptr::read_volatile(&x) }
}

/// The two 16-bit words of a 32-bit field, summed (memory order, like [`crate::csum`]).
#[inline(always)]
fn halves(x: u32) -> u32 {
    (x & 0xffff) + (x >> 16)
}

/// Full checksum of an option-less IPv4 header (its `check` field ignored).
#[inline(always)]
fn ipv4_checksum(h: &Ipv4Hdr) -> u16 {
    let sum = u16::from_ne_bytes([h.version_ihl, h.tos]) as u32
        + h.tot_len as u32
        + h.id as u32
        + h.frag_off as u32
        + u16::from_ne_bytes([h.ttl, h.proto]) as u32
        + halves(h.src)
        + halves(h.dst);
    !fold(sum)
}

/// Full TCP checksum of a header without payload: pseudo-header (addresses, protocol,
/// `tcp_len`), the 20-byte header (its `check` field ignored) and the option words
/// (zero where there are none).
#[inline(always)]
fn tcp_checksum(ip: &Ipv4Hdr, t: &TcpHdr, tcp_len: u16, options: &[u32; 5]) -> u16 {
    let sum = halves(ip.src)
        + halves(ip.dst)
        + u16::from_ne_bytes([0, ip.proto]) as u32
        + tcp_len.to_be() as u32
        + t.sport as u32
        + t.dport as u32
        + halves(t.seq)
        + halves(t.ack_seq)
        + u16::from_ne_bytes([t.doff_res, t.flags]) as u32
        + t.window as u32
        + t.urg_ptr as u32
        + halves(options[0])
        + halves(options[1])
        + halves(options[2])
        + halves(options[3])
        + halves(options[4]);
    !fold(sum)
}

/// The IPv4 header of a segment the balancer sends itself: no options, DF, the reply
/// TTL, `tot_len` bytes in all, checksum filled in.
#[inline(always)]
fn reply_ip_header(tot_len: usize, src: u32, dst: u32) -> Ipv4Hdr {
    let mut ip = Ipv4Hdr {
        version_ihl: 0x45,
        tos: 0,
        tot_len: (tot_len as u16).to_be(),
        id: 0,
        frag_off: IP_DF.to_be(),
        ttl: REPLY_TTL,
        proto: PROTO_TCP,
        check: 0,
        src,
        dst,
    };
    ip.check = ipv4_checksum(&ip);
    ip
}

#[cfg(test)]
mod tests;

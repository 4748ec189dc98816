//! TCP answers built in place over the client's own frame: the SYN-ACK of a syncookie
//! handshake ([`syn_to_synack`]) and a RST ([`rst_for`]), both sent back with `XDP_TX`.
//!
//! The answer reuses the frame's first bytes: the Ethernet header (MACs swapped, a VLAN
//! tag kept as it is), a fresh 20-byte IPv4 header and a fresh TCP header. Its length is
//! fixed by the link header alone (see [`synack_len`], [`rst_len`]); the functions return
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
//! [`synack_len`] bytes: a SYN with at least 4 bytes of TCP or IP options always has
//! them, and so does a minimum-size Ethernet frame (60 bytes, padded by the sender's NIC)
//! without a VLAN tag. A shorter SYN (no options, not padded, e.g. over veth) makes
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
    PROTO_TCP,
};

/// TTL of the answers.
pub const REPLY_TTL: u8 = 64;
/// Receive window offered in the SYN-ACK (no window scaling is offered).
pub const SYNACK_WINDOW: u16 = 65535;
/// MSS assumed for a SYN without an MSS option (RFC 9293, 3.7.1: 536 for IPv4).
pub const DEFAULT_MSS: u16 = 536;
/// Most option bytes a TCP header can carry (data offset 15).
pub const MAX_TCP_OPTION_BYTES: usize = 40;
/// Options [`client_mss`] looks at before giving up.
pub const MAX_OPTION_STEPS: usize = 8;

const IPV4_LEN: usize = size_of::<Ipv4Hdr>();
const TCP_LEN: usize = size_of::<TcpHdr>();
/// The SYN-ACK's only option: MSS (kind 2, length 4).
const MSS_OPTION_LEN: usize = 4;
const OPT_EOL: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;
/// IPv4 "don't fragment", host order.
const IP_DF: u16 = 0x4000;

/// Frame length of the SYN-ACK [`syn_to_synack`] builds for `pkt`: link header, 20-byte
/// IPv4 header, 24-byte TCP header (20 + MSS option).
#[inline(always)]
pub fn synack_len(pkt: &Packet) -> usize {
    pkt.l3_off + IPV4_LEN + TCP_LEN + MSS_OPTION_LEN
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

/// The MSS option of a SYN, or [`DEFAULT_MSS`] if it has none (or its options are
/// malformed before the MSS option). The value is returned as sent, even if below 536;
/// [`crate::syncookie::encode_mss`] rounds it into the cookie's table.
///
/// Looks at the first [`MAX_OPTION_STEPS`] options only (a NOP counts as one). Linux,
/// Windows, macOS and the BSDs send MSS first and at most 8 options in a SYN; a SYN whose
/// MSS option comes later (say, behind NOP padding) gets the default, and works, with
/// smaller segments. The limit keeps verification cheap: the verifier walks every path
/// through the loop and their number grows exponentially with the steps (measured on
/// 6.18: 8 steps, 3.9K instructions processed; 16, 36K; 40, 147K and 4.7 s).
///
/// Each step reads 4 bytes at the option's start, bounds-checked: an option that starts
/// less than 4 bytes before the end of the frame cannot be followed by a (4-byte) MSS
/// option inside it, so stopping there is exact. (A 1-byte read would need a check the
/// verifier cannot use: LLVM rewrites `p + 1 > end` to `p >= end`, which proves no
/// readable byte for a `p` with a variable offset.)
#[inline(always)]
pub fn client_mss(start: usize, end: usize, pkt: &Packet) -> u16 {
    let opt_start = pkt.l4_off + TCP_LEN;
    let mut opt_len = pkt.payload_off.saturating_sub(opt_start);
    if opt_len > MAX_TCP_OPTION_BYTES {
        opt_len = MAX_TCP_OPTION_BYTES;
    }
    let mut off = 0usize;
    for _ in 0..MAX_OPTION_STEPS {
        if off >= opt_len {
            break;
        }
        let Some(p) = ptr_at::<[u8; 4]>(start, end, opt_start + off) else {
            break;
        };
        // SAFETY: bounds-checked by ptr_at.
        let o = unsafe { read(p) };
        let kind = o[0];
        if kind == OPT_EOL {
            break;
        }
        if kind == OPT_NOP {
            off += 1;
            continue;
        }
        let len = o[1] as usize;
        if len < 2 || off + len > opt_len {
            break;
        }
        if kind == OPT_MSS {
            if len != MSS_OPTION_LEN {
                break;
            }
            return u16::from_be_bytes([o[2], o[3]]);
        }
        off += len;
    }
    DEFAULT_MSS
}

/// Turns the client's SYN in `[start, end)` (parsed into `pkt`) into the SYN-ACK from the
/// service: MACs, addresses and ports swapped, `seq = isn` (the cookie), `ack = SYN.seq +
/// 1`, flags SYN|ACK, window [`SYNACK_WINDOW`], one option: MSS `mss` (the MSS the
/// balancer offers the client, not the client's). IPv4: IHL 5 (options dropped), TOS 0,
/// id 0, DF, TTL [`REPLY_TTL`]. Both checksums are computed in full.
///
/// Returns the new frame length ([`synack_len`]), or `None`, with the frame untouched, if
/// the packet is not a plain SYN (SYN set; ACK, RST and FIN clear; a SYN+FIN is dropped by
/// TCP stacks in LISTEN too), or the frame is shorter than [`synack_len`] (the caller grows
/// it and calls again; see the module documentation).
#[inline(always)]
pub fn syn_to_synack(start: usize, end: usize, pkt: &Packet, isn: u32, mss: u16) -> Option<usize> {
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
            mss: Some(mss),
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
            mss: None,
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
            mss: None,
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
    /// MSS option to include, if any.
    mss: Option<u16>,
}

/// Where a built segment goes: back to the sender (addresses, ports and MACs swapped), or
/// onwards from the sender to another destination (the MACs are left for the caller's
/// next-hop resolution).
#[derive(Clone, Copy)]
enum Route {
    Back,
    Onwards { dst: u32, dport: u16 },
}

/// Writes the answer over the frame: Ethernet with MACs swapped, IPv4 header without
/// options from the service to the client, TCP header (with the MSS option if asked).
/// Checks the whole answer fits before writing anything.
#[inline(always)]
fn reply_in_place(start: usize, end: usize, pkt: &Packet, r: Reply) -> Option<usize> {
    build_in_place(start, end, pkt, r, Route::Back)
}

/// [`reply_in_place`] with a choice of [`Route`].
#[inline(always)]
fn build_in_place(start: usize, end: usize, pkt: &Packet, r: Reply, route: Route) -> Option<usize> {
    let tcp_len = match r.mss {
        Some(_) => TCP_LEN + MSS_OPTION_LEN,
        None => TCP_LEN,
    };
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
    let mut ip = Ipv4Hdr {
        version_ihl: 0x45,
        tos: 0,
        tot_len: ((IPV4_LEN + tcp_len) as u16).to_be(),
        id: 0,
        frag_off: IP_DF.to_be(),
        ttl: REPLY_TTL,
        proto: PROTO_TCP,
        check: 0,
        src,
        dst,
    };
    ip.check = ipv4_checksum(&ip);
    let option = match r.mss {
        Some(mss) => {
            let m = mss.to_be_bytes();
            u32::from_ne_bytes([OPT_MSS, MSS_OPTION_LEN as u8, m[0], m[1]])
        }
        None => 0,
    };
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
    // A zero option word adds nothing to the sum, so this covers both lengths.
    tcp.check = tcp_checksum(&ip, &tcp, tcp_len as u16, option);

    if let Route::Back = route {
        swap_macs(start, end, &eth)?;
    }
    let p = ptr_at_mut::<Ipv4Hdr>(start, end, l3_off)?;
    // SAFETY: as above.
    unsafe { write(p, ip) };
    let p = ptr_at_mut::<TcpHdr>(start, end, l4_off)?;
    // SAFETY: as above.
    unsafe { write(p, tcp) };
    if r.mss.is_some() {
        let p = ptr_at_mut::<u32>(start, end, l4_off + TCP_LEN)?;
        // SAFETY: as above.
        unsafe { write(p, option) };
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
pub fn backend_syn_len(pkt: &Packet) -> usize {
    synack_len(pkt)
}

/// Turns a client's first data segment (client -> VIP) into the SYN that opens the
/// connection to the chosen backend: client -> backend, `seq` = the client's ISN, the
/// client's window, one option (MSS), no payload. Returns the new frame length (the
/// caller sets the frame to it and resolves the next hop); `None` leaves the frame
/// untouched (not TCP, or fewer than [`backend_syn_len`] bytes: grow it and call again).
#[inline(always)]
pub fn data_to_backend_syn(
    start: usize,
    end: usize,
    pkt: &Packet,
    backend_addr: u32,
    backend_port: u16,
    client_isn: u32,
    mss: u16,
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
            mss: Some(mss),
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
    let mut ip = Ipv4Hdr {
        version_ihl: 0x45,
        tos: 0,
        tot_len: ((IPV4_LEN + segment_len) as u16).to_be(),
        id: 0,
        frag_off: IP_DF.to_be(),
        ttl: REPLY_TTL,
        proto: PROTO_TCP,
        check: 0,
        src: pkt.key.dst,
        dst: pkt.key.src,
    };
    ip.check = ipv4_checksum(&ip);
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
/// `tcp_len`), the 20-byte header (its `check` field ignored) and one 4-byte option word
/// (0 if there is none).
#[inline(always)]
fn tcp_checksum(ip: &Ipv4Hdr, t: &TcpHdr, tcp_len: u16, option: u32) -> u16 {
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
        + halves(option);
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{csum::checksum, parse::parse_slice};
    use etherparse::{
        LinkHeader, NetHeaders, PacketBuilder, PacketHeaders, TcpOptionElement, TransportHeader,
        VlanHeader,
    };
    use std::vec::Vec;

    const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const CLIENT: [u8; 4] = [198, 18, 0, 2];
    const VIP: [u8; 4] = [198, 18, 100, 1];
    const CLIENT_ISN: u32 = 0xffff_fffe;
    const COOKIE: u32 = 0x1234_5678;

    struct Syn<'a> {
        vlan: bool,
        options: &'a [TcpOptionElement],
        /// NOP bytes inserted as IPv4 options (a multiple of 4).
        ip_options: usize,
        payload: &'a [u8],
        flags: &'a str,
    }

    impl Default for Syn<'_> {
        fn default() -> Self {
            Syn {
                vlan: false,
                options: &[TcpOptionElement::MaximumSegmentSize(1400)],
                ip_options: 0,
                payload: &[],
                flags: "syn",
            }
        }
    }

    fn frame(s: &Syn) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC);
        let ip = if s.vlan {
            eth.single_vlan(42.try_into().unwrap())
                .ipv4(CLIENT, VIP, 57)
        } else {
            eth.ipv4(CLIENT, VIP, 57)
        };
        let tcp = ip.tcp(40000, 80, CLIENT_ISN, 29200);
        let tcp = match s.flags {
            "syn" => tcp.syn(),
            "synack" => tcp.syn().ack(5),
            "synfin" => tcp.syn().fin(),
            "synrst" => tcp.syn().rst(),
            "ack" => tcp.ack(0xaabb_ccdd),
            "psh" => tcp.psh(),
            "fin" => tcp.fin(),
            "rst" => tcp.rst(),
            _ => unreachable!(),
        };
        let tcp = tcp.options(s.options).unwrap();
        let mut f = Vec::new();
        tcp.write(&mut f, s.payload).unwrap();
        if s.ip_options > 0 {
            let l3 = if s.vlan { 18 } else { 14 };
            f.splice(l3 + 20..l3 + 20, std::vec![1u8; s.ip_options]);
            f[l3] = 0x40 | (5 + s.ip_options / 4) as u8;
            let tot = u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]) + s.ip_options as u16;
            f[l3 + 2..l3 + 4].copy_from_slice(&tot.to_be_bytes());
            f[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
            let c = checksum(&f[l3..l3 + 20 + s.ip_options], 0);
            f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        }
        f
    }

    fn range(f: &mut [u8]) -> (usize, usize) {
        let start = f.as_mut_ptr() as usize;
        (start, start + f.len())
    }

    /// Parses an answer with etherparse and checks everything that does not depend on the
    /// kind of answer; returns the TCP header and the link header length.
    fn check_answer(f: &[u8], vlan: bool, tcp_len: usize) -> etherparse::TcpHeader {
        let l3 = if vlan { 18 } else { 14 };
        assert_eq!(f.len(), l3 + 20 + tcp_len);
        let h = PacketHeaders::from_ethernet_slice(f).unwrap();
        let Some(LinkHeader::Ethernet2(eth)) = h.link else {
            panic!("no Ethernet header")
        };
        assert_eq!(eth.source, GW_MAC);
        assert_eq!(eth.destination, CLIENT_MAC);
        match h.vlan {
            Some(VlanHeader::Single(v)) => {
                assert!(vlan);
                assert_eq!(v.vlan_id.value(), 42);
            }
            None => assert!(!vlan),
            other => panic!("{other:?}"),
        }
        let Some(NetHeaders::Ipv4(ip, _)) = h.net else {
            panic!("no IPv4 header")
        };
        assert_eq!(ip.ihl(), 5);
        assert!(ip.options.is_empty());
        assert_eq!(ip.dscp.value(), 0);
        assert_eq!(ip.ecn.value(), 0);
        assert_eq!(ip.total_len as usize, 20 + tcp_len);
        assert_eq!(ip.identification, 0);
        assert!(ip.dont_fragment);
        assert!(!ip.more_fragments);
        assert_eq!(ip.fragment_offset.value(), 0);
        assert_eq!(ip.time_to_live, REPLY_TTL);
        assert_eq!(ip.protocol, etherparse::IpNumber::TCP);
        assert_eq!(ip.source, VIP);
        assert_eq!(ip.destination, CLIENT);
        assert_eq!(ip.header_checksum, ip.calc_header_checksum());
        assert_eq!(checksum(&f[l3..l3 + 20], 0), 0);
        let Some(TransportHeader::Tcp(tcp)) = h.transport else {
            panic!("no TCP header")
        };
        assert_eq!(tcp.source_port, 80);
        assert_eq!(tcp.destination_port, 40000);
        assert_eq!(tcp.header_len(), tcp_len);
        assert_eq!(tcp.urgent_pointer, 0);
        assert!(!(tcp.ns || tcp.psh || tcp.urg || tcp.ece || tcp.cwr || tcp.fin));
        assert!(h.payload.slice().is_empty());
        assert_eq!(tcp.checksum, tcp.calc_checksum_ipv4(&ip, &[]).unwrap());
        // Independently: pseudo-header + segment sums to zero.
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&VIP);
        pseudo.extend_from_slice(&CLIENT);
        pseudo.extend_from_slice(&[0, 6, 0, tcp_len as u8]);
        pseudo.extend_from_slice(&f[l3 + 20..]);
        assert_eq!(checksum(&pseudo, 0), 0);
        tcp
    }

    fn synack(s: &Syn) -> Vec<u8> {
        let mut f = frame(s);
        let pkt = parse_slice(&f).unwrap();
        let (start, end) = range(&mut f);
        let len = syn_to_synack(start, end, &pkt, COOKIE, 1460).expect("SYN-ACK");
        assert_eq!(len, synack_len(&pkt));
        f.truncate(len);
        f
    }

    fn check_synack(f: &[u8], vlan: bool) {
        let tcp = check_answer(f, vlan, 24);
        assert!(tcp.syn && tcp.ack && !tcp.rst);
        assert_eq!(tcp.sequence_number, COOKIE);
        assert_eq!(tcp.acknowledgment_number, CLIENT_ISN.wrapping_add(1));
        assert_eq!(tcp.window_size, SYNACK_WINDOW);
        let opts: Vec<_> = tcp.options_iterator().map(|o| o.unwrap()).collect();
        assert_eq!(opts, [TcpOptionElement::MaximumSegmentSize(1460)]);
        assert_eq!(&f[f.len() - 4..], &[2, 4, 0x05, 0xb4]);
    }

    #[test]
    fn synack_from_syn_with_mss() {
        let f = synack(&Syn::default());
        check_synack(&f, false);
    }

    #[test]
    fn synack_from_syn_with_all_common_options() {
        use TcpOptionElement::*;
        let options = [
            MaximumSegmentSize(1460),
            SelectiveAcknowledgementPermitted,
            Timestamp(0x0102_0304, 0),
            Noop,
            WindowScale(7),
        ];
        let f = synack(&Syn {
            options: &options,
            ..Syn::default()
        });
        check_synack(&f, false);
    }

    #[test]
    fn synack_keeps_the_vlan_tag() {
        let f = synack(&Syn {
            vlan: true,
            ..Syn::default()
        });
        check_synack(&f, true);
    }

    #[test]
    fn synack_drops_ip_options() {
        for vlan in [false, true] {
            let s = Syn {
                vlan,
                ip_options: 8,
                ..Syn::default()
            };
            let f = frame(&s);
            assert_eq!(
                parse_slice(&f).unwrap().l4_off,
                if vlan { 18 } else { 14 } + 28
            );
            check_synack(&synack(&s), vlan);
        }
        // IP options make room for a SYN without TCP options.
        let f = synack(&Syn {
            options: &[],
            ip_options: 4,
            ..Syn::default()
        });
        check_synack(&f, false);
    }

    #[test]
    fn synack_from_syn_with_payload_drops_it() {
        let f = synack(&Syn {
            payload: b"fast open data",
            ..Syn::default()
        });
        check_synack(&f, false);
    }

    #[test]
    fn synack_without_options_needs_padding_or_growth() {
        let s = Syn {
            options: &[],
            ..Syn::default()
        };
        let mut f = frame(&s);
        assert_eq!(f.len(), 54);
        let pkt = parse_slice(&f).unwrap();
        assert_eq!(synack_len(&pkt), 58);
        let orig = f.clone();
        let (start, end) = range(&mut f);
        assert_eq!(syn_to_synack(start, end, &pkt, COOKIE, 1460), None);
        assert_eq!(f, orig);
        // Padded to the Ethernet minimum (as received from a NIC), or grown by the caller:
        // the same Packet still applies.
        f.resize(60, 0);
        let (start, end) = range(&mut f);
        let len = syn_to_synack(start, end, &pkt, COOKIE, 1460).unwrap();
        f.truncate(len);
        check_synack(&f, false);

        // Behind a VLAN tag the padded minimum frame is 2 bytes short.
        let s = Syn {
            vlan: true,
            options: &[],
            ..Syn::default()
        };
        let mut f = frame(&s);
        f.resize(60, 0);
        let pkt = parse_slice(&f).unwrap();
        let (start, end) = range(&mut f);
        assert_eq!(syn_to_synack(start, end, &pkt, COOKIE, 1460), None);
        f.resize(synack_len(&pkt), 0);
        let (start, end) = range(&mut f);
        assert!(syn_to_synack(start, end, &pkt, COOKIE, 1460).is_some());
        check_synack(&f, true);
    }

    #[test]
    fn synack_mss_is_encoded_big_endian() {
        for mss in [536u16, 1220, 1460, 8960, 0xabcd] {
            let mut f = frame(&Syn::default());
            let pkt = parse_slice(&f).unwrap();
            let (start, end) = range(&mut f);
            let len = syn_to_synack(start, end, &pkt, COOKIE, mss).unwrap();
            f.truncate(len);
            let tcp = check_answer(&f, false, 24);
            let opts: Vec<_> = tcp.options_iterator().map(|o| o.unwrap()).collect();
            assert_eq!(opts, [TcpOptionElement::MaximumSegmentSize(mss)]);
        }
    }

    #[test]
    fn synack_only_for_plain_syns() {
        for flags in ["synack", "synfin", "synrst", "ack", "psh", "fin", "rst"] {
            let mut f = frame(&Syn {
                flags,
                ..Syn::default()
            });
            let orig = f.clone();
            let pkt = parse_slice(&f).unwrap();
            let (start, end) = range(&mut f);
            assert_eq!(
                syn_to_synack(start, end, &pkt, COOKIE, 1460),
                None,
                "{flags}"
            );
            assert_eq!(f, orig, "{flags}");
        }
    }

    #[test]
    fn truncated_frames_are_left_untouched() {
        for vlan in [false, true] {
            let s = Syn {
                vlan,
                ip_options: 4,
                ..Syn::default()
            };
            let full = frame(&s);
            let pkt = parse_slice(&full).unwrap();
            for cut in 0..synack_len(&pkt) {
                let mut f = full.clone();
                let start = f.as_mut_ptr() as usize;
                assert_eq!(syn_to_synack(start, start + cut, &pkt, COOKIE, 1460), None);
                assert_eq!(f, full, "SYN-ACK, cut at {cut}");
            }
            for cut in 0..rst_len(&pkt) {
                let mut f = full.clone();
                let start = f.as_mut_ptr() as usize;
                assert_eq!(rst_for(start, start + cut, &pkt), None);
                assert_eq!(f, full, "RST, cut at {cut}");
            }
            // The TCP header itself cut off (it starts after the IP options).
            for cut in 0..pkt.l4_off + 20 {
                let mut f = full.clone();
                let start = f.as_mut_ptr() as usize;
                assert_eq!(tcp_seq_ack(start, start + cut, &pkt), None);
            }
        }
    }

    #[test]
    fn not_tcp_is_refused() {
        let b = PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
            .ipv4(CLIENT, VIP, 64)
            .udp(5353, 53);
        let mut f = Vec::new();
        b.write(&mut f, &[0u8; 64]).unwrap();
        let orig = f.clone();
        let pkt = parse_slice(&f).unwrap();
        let (start, end) = range(&mut f);
        assert_eq!(syn_to_synack(start, end, &pkt, COOKIE, 1460), None);
        assert_eq!(rst_for(start, end, &pkt), None);
        assert_eq!(tcp_seq_ack(start, end, &pkt), None);
        assert_eq!(f, orig);
    }

    fn rst(s: &Syn) -> Vec<u8> {
        let mut f = frame(s);
        let pkt = parse_slice(&f).unwrap();
        let (start, end) = range(&mut f);
        let len = rst_for(start, end, &pkt).expect("RST");
        assert_eq!(len, rst_len(&pkt));
        f.truncate(len);
        f
    }

    #[test]
    fn rst_for_segment_with_ack_uses_its_ack_number() {
        for vlan in [false, true] {
            let f = rst(&Syn {
                vlan,
                flags: "ack",
                options: &[],
                ip_options: 8,
                payload: b"GET / HTTP/1.1\r\n\r\n",
            });
            let tcp = check_answer(&f, vlan, 20);
            assert!(tcp.rst && !tcp.ack && !tcp.syn);
            assert_eq!(tcp.sequence_number, 0xaabb_ccdd);
            assert_eq!(tcp.acknowledgment_number, 0);
            assert_eq!(tcp.window_size, 0);
        }
    }

    #[test]
    fn rst_for_segment_without_ack_acknowledges_it() {
        // (flags, payload, expected SEG.LEN)
        let cases: [(&str, &[u8], u32); 4] = [
            ("syn", b"", 1),
            ("syn", b"tfo", 4),
            ("psh", b"hello", 5),
            ("fin", b"bye", 4),
        ];
        for (flags, payload, seg_len) in cases {
            let f = rst(&Syn {
                flags,
                payload,
                ..Syn::default()
            });
            let tcp = check_answer(&f, false, 20);
            assert!(tcp.rst && tcp.ack && !tcp.syn, "{flags}");
            assert_eq!(tcp.sequence_number, 0);
            assert_eq!(
                tcp.acknowledgment_number,
                CLIENT_ISN.wrapping_add(seg_len),
                "{flags}"
            );
        }
    }

    #[test]
    fn rst_is_never_answered() {
        for flags in ["rst", "synrst"] {
            let mut f = frame(&Syn {
                flags,
                ..Syn::default()
            });
            let orig = f.clone();
            let pkt = parse_slice(&f).unwrap();
            let (start, end) = range(&mut f);
            assert_eq!(rst_for(start, end, &pkt), None);
            assert_eq!(f, orig);
        }
    }

    #[test]
    fn seq_and_ack_numbers() {
        let mut f = frame(&Syn {
            flags: "ack",
            ..Syn::default()
        });
        let pkt = parse_slice(&f).unwrap();
        let (start, end) = range(&mut f);
        assert_eq!(
            tcp_seq_ack(start, end, &pkt),
            Some((CLIENT_ISN, 0xaabb_ccdd))
        );
    }

    fn mss_of(options: &[TcpOptionElement]) -> u16 {
        let mut f = frame(&Syn {
            options,
            ..Syn::default()
        });
        let pkt = parse_slice(&f).unwrap();
        let (start, end) = range(&mut f);
        client_mss(start, end, &pkt)
    }

    /// Frame with raw TCP option bytes (padded with EOL to a multiple of 4).
    fn raw_options_frame(opts: &[u8]) -> Vec<u8> {
        let mut f = frame(&Syn {
            options: &[],
            ..Syn::default()
        });
        let mut o = opts.to_vec();
        while !o.len().is_multiple_of(4) {
            o.push(0);
        }
        f.extend_from_slice(&o);
        f[14 + 20 + 12] = ((5 + o.len() / 4) as u8) << 4;
        let tot = (20 + 20 + o.len()) as u16;
        f[16..18].copy_from_slice(&tot.to_be_bytes());
        f
    }

    fn raw_mss(opts: &[u8]) -> u16 {
        let mut f = raw_options_frame(opts);
        let pkt = parse_slice(&f).unwrap();
        let (start, end) = range(&mut f);
        client_mss(start, end, &pkt)
    }

    #[test]
    fn client_mss_option_parsing() {
        use TcpOptionElement::*;
        assert_eq!(mss_of(&[MaximumSegmentSize(1460)]), 1460);
        assert_eq!(mss_of(&[]), DEFAULT_MSS);
        // Linux's SYN: MSS, SACK permitted, timestamps, NOP, window scale.
        assert_eq!(
            mss_of(&[
                MaximumSegmentSize(8960),
                SelectiveAcknowledgementPermitted,
                Timestamp(1, 0),
                Noop,
                WindowScale(7),
            ]),
            8960
        );
        // MSS last, behind every other kind.
        assert_eq!(
            mss_of(&[
                Noop,
                WindowScale(7),
                SelectiveAcknowledgementPermitted,
                Timestamp(1, 0),
                Noop,
                Noop,
                MaximumSegmentSize(1220),
            ]),
            1220
        );
        assert_eq!(
            mss_of(&[WindowScale(7), SelectiveAcknowledgementPermitted]),
            DEFAULT_MSS
        );
        // Values below 536 are returned as sent.
        assert_eq!(mss_of(&[MaximumSegmentSize(100)]), 100);
    }

    #[test]
    fn client_mss_looks_at_the_first_8_options() {
        // MSS as the 8th option: found.
        let mut o = std::vec![1u8; 7];
        o.extend_from_slice(&[2, 4, 0x05, 0xb4]);
        assert_eq!(raw_mss(&o), 1460);
        // As the 9th (behind 8 NOPs, or behind other options): not looked at.
        let mut o = std::vec![1u8; 8];
        o.extend_from_slice(&[2, 4, 0x05, 0xb4]);
        assert_eq!(raw_mss(&o), DEFAULT_MSS);
        let mut o = std::vec![];
        for _ in 0..4 {
            o.extend_from_slice(&[1, 3, 3, 7]); // NOP, window scale
        }
        o.extend_from_slice(&[2, 4, 0x05, 0xb4]);
        assert_eq!(raw_mss(&o), DEFAULT_MSS);
        o.drain(0..4);
        assert_eq!(raw_mss(&o), 1460);
        // 40 NOPs: no MSS, and the walk ends.
        assert_eq!(raw_mss(&[1u8; 40]), DEFAULT_MSS);
        // MSS in the last word of a full 40-byte option area, behind long options.
        let mut o = std::vec![254u8, 18];
        o.extend_from_slice(&[0u8; 16]);
        o.extend_from_slice(&[254u8, 18]);
        o.extend_from_slice(&[0u8; 16]);
        o.extend_from_slice(&[2, 4, 0x23, 0x28]);
        assert_eq!(o.len(), 40);
        assert_eq!(raw_mss(&o), 9000);
    }

    #[test]
    fn client_mss_malformed_options() {
        // EOL before MSS ends the list.
        assert_eq!(raw_mss(&[0, 2, 4, 5, 0xb4]), DEFAULT_MSS);
        // Length 0 and 1 would loop forever or go backwards: stop.
        assert_eq!(raw_mss(&[3, 0, 2, 4, 5, 0xb4]), DEFAULT_MSS);
        assert_eq!(raw_mss(&[3, 1, 2, 4, 5, 0xb4]), DEFAULT_MSS);
        // An option running past the header.
        assert_eq!(raw_mss(&[1, 1, 8, 10, 2, 4, 5, 0xb4]), DEFAULT_MSS);
        // MSS with a wrong length.
        assert_eq!(raw_mss(&[2, 3, 5, 0, 2, 4, 5, 0xb4]), DEFAULT_MSS);
        // MSS kind in the last byte, length cut off by the header's end.
        let mut o = std::vec![254u8, 37];
        o.extend_from_slice(&[0u8; 35]);
        o.extend_from_slice(&[1, 1, 2]);
        assert_eq!(o.len(), 40);
        assert_eq!(raw_mss(&o), DEFAULT_MSS);
        // Well-formed unknown option before MSS is skipped.
        assert_eq!(raw_mss(&[254, 6, 1, 2, 3, 4, 2, 4, 0x23, 0x28]), 9000);
    }

    #[test]
    fn client_mss_never_reads_past_the_frame() {
        let full = raw_options_frame(&[1, 1, 1, 1, 2, 4, 0x05, 0xb4]);
        let pkt = parse_slice(&full).unwrap();
        assert_eq!(pkt.payload_off, full.len());
        for cut in 0..full.len() {
            let start = full.as_ptr() as usize;
            let mss = client_mss(start, start + cut, &pkt);
            assert_eq!(mss, DEFAULT_MSS, "cut at {cut}");
        }
        let start = full.as_ptr() as usize;
        assert_eq!(client_mss(start, start + full.len(), &pkt), 1460);
    }
    #[test]
    fn first_data_segment_becomes_the_backend_syn() {
        const BACKEND: [u8; 4] = [198, 18, 1, 10];
        let payload = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut f = frame(&Syn {
            options: &[],
            payload,
            flags: "ack",
            ..Syn::default()
        });
        let pkt = parse_slice(&f).unwrap();
        let (start, end) = range(&mut f);
        let backend = u32::from_ne_bytes(BACKEND);
        let len = data_to_backend_syn(start, end, &pkt, backend, 8080u16.to_be(), CLIENT_ISN, 1440)
            .expect("SYN");
        assert_eq!(len, backend_syn_len(&pkt));
        f.truncate(len);
        let h = PacketHeaders::from_ethernet_slice(&f).unwrap();
        let Some(LinkHeader::Ethernet2(eth)) = h.link else {
            panic!("no Ethernet header")
        };
        // MACs are the caller's (next-hop resolution): untouched.
        assert_eq!((eth.source, eth.destination), (CLIENT_MAC, GW_MAC));
        let Some(NetHeaders::Ipv4(ip, _)) = h.net else {
            panic!("no IPv4 header")
        };
        assert_eq!((ip.source, ip.destination), (CLIENT, BACKEND));
        assert_eq!(ip.total_len, 44);
        assert_eq!(ip.header_checksum, ip.calc_header_checksum());
        let Some(TransportHeader::Tcp(tcp)) = h.transport else {
            panic!("no TCP header")
        };
        assert!(tcp.syn && !tcp.ack && !tcp.psh && !tcp.fin && !tcp.rst);
        assert_eq!((tcp.source_port, tcp.destination_port), (40000, 8080));
        assert_eq!(tcp.sequence_number, CLIENT_ISN);
        assert_eq!(tcp.window_size, 29200);
        let opts: Vec<_> = tcp.options_iterator().map(|o| o.unwrap()).collect();
        assert_eq!(opts, [TcpOptionElement::MaximumSegmentSize(1440)]);
        assert!(h.payload.slice().is_empty());
        assert_eq!(tcp.checksum, tcp.calc_checksum_ipv4(&ip, &[]).unwrap());
    }

    #[test]
    fn short_data_segment_needs_growth_for_the_backend_syn() {
        let mut f = frame(&Syn {
            options: &[],
            payload: b"x",
            flags: "ack",
            ..Syn::default()
        });
        let before = f.clone();
        let pkt = parse_slice(&f).unwrap();
        let (start, end) = range(&mut f);
        assert_eq!(data_to_backend_syn(start, end, &pkt, 1, 2, 3, 1460), None);
        assert_eq!(f, before);
    }

    #[test]
    fn synack_headers_and_ack_carry_the_kept_segment() {
        // The backend's SYN-ACK (backend -> client), grown to hold the client's segment.
        const BACKEND: [u8; 4] = [198, 18, 1, 10];
        let synack = PacketBuilder::ethernet2([2, 0, 0, 0, 1, 10], GW_MAC)
            .ipv4(BACKEND, CLIENT, 64)
            .tcp(8080, 40000, 777, 64240)
            .syn()
            .ack(CLIENT_ISN.wrapping_add(1));
        let mut f = Vec::new();
        synack.write(&mut f, &[]).unwrap();
        let pkt = parse_slice(&f).unwrap();
        // The kept segment, already translated to the backend's address and port.
        let payload = b"GET / HTTP/1.1\r\n\r\n";
        let seg_builder = PacketBuilder::ipv4(CLIENT, BACKEND, 64)
            .tcp(40000, 8080, CLIENT_ISN.wrapping_add(1), 29200)
            .ack(COOKIE.wrapping_add(1))
            .psh();
        let mut ip_seg = Vec::new();
        seg_builder.write(&mut ip_seg, payload).unwrap();
        let segment = &ip_seg[20..];
        f.resize(pkt.l3_off + 20 + segment.len(), 0);
        let (start, end) = range(&mut f);
        let l4 = synack_to_segment_headers(start, end, &pkt, segment.len()).expect("headers");
        f[l4..].copy_from_slice(segment);
        let (start, end) = range(&mut f);
        set_ack(start, end, l4, 778).unwrap();
        let h = PacketHeaders::from_ethernet_slice(&f).unwrap();
        let Some(LinkHeader::Ethernet2(eth)) = h.link else {
            panic!("no Ethernet header")
        };
        assert_eq!((eth.source, eth.destination), (GW_MAC, [2, 0, 0, 0, 1, 10]));
        let Some(NetHeaders::Ipv4(ip, _)) = h.net else {
            panic!("no IPv4 header")
        };
        assert_eq!((ip.source, ip.destination), (CLIENT, BACKEND));
        assert_eq!(ip.header_checksum, ip.calc_header_checksum());
        let Some(TransportHeader::Tcp(tcp)) = h.transport else {
            panic!("no TCP header")
        };
        assert_eq!(tcp.acknowledgment_number, 778);
        assert_eq!(tcp.sequence_number, CLIENT_ISN.wrapping_add(1));
        assert_eq!(h.payload.slice(), payload);
        assert_eq!(tcp.checksum, tcp.calc_checksum_ipv4(&ip, payload).unwrap());
        // The sequence number likewise (a refused binding's RST gets the client's).
        let (start, end) = range(&mut f);
        set_seq(start, end, l4, 0xdead_beef).unwrap();
        let h = PacketHeaders::from_ethernet_slice(&f).unwrap();
        let Some(TransportHeader::Tcp(tcp)) = h.transport else {
            panic!("no TCP header")
        };
        assert_eq!(
            (tcp.sequence_number, tcp.acknowledgment_number),
            (0xdead_beef, 778)
        );
        assert_eq!(tcp.checksum, tcp.calc_checksum_ipv4(&ip, payload).unwrap());
        // Too short a frame: untouched.
        let mut short = std::vec![0u8; 40];
        let (start, end) = range(&mut short);
        assert_eq!(
            synack_to_segment_headers(start, end, &pkt, segment.len()),
            None
        );
    }
}

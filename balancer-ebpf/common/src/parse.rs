//! Ethernet / 802.1Q / IPv4 / TCP / UDP parsing over a raw packet range.
//!
//! The functions take the packet as two addresses, `start` and `end` (what XDP calls
//! `data` and `data_end`), and check `start + offset + size <= end` right before every
//! header access, in the form the BPF verifier accepts. On the host the same functions
//! run over a byte slice's address range, which is how they are unit-tested and fuzzed.

use core::mem::size_of;

use crate::{FlowKey, PROTO_TCP, PROTO_UDP};

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
/// SYN and ACK (a SYN-ACK).
pub const PROTO_TCP_FLAGS_SYNACK: u8 = TCP_SYN | TCP_ACK;

/// IPv4 "more fragments" flag and fragment-offset mask, in host order.
const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Network byte order.
    pub ether_type: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VlanHdr {
    pub tci: u16,
    pub ether_type: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub src: u32,
    pub dst: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TcpHdr {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack_seq: u32,
    /// Data offset (high nibble) and reserved bits.
    pub doff_res: u8,
    pub flags: u8,
    pub window: u16,
    pub check: u16,
    pub urg_ptr: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UdpHdr {
    pub sport: u16,
    pub dport: u16,
    pub len: u16,
    pub check: u16,
}

/// Offsets of the checksum fields the NAT rewrite updates, from the start of the L4 header.
pub const TCP_CHECK_OFF: usize = 16;
pub const UDP_CHECK_OFF: usize = 6;

/// Returns a pointer to a `T` at `start + offset` if the whole `T` lies before `end`.
#[inline(always)]
pub fn ptr_at<T>(start: usize, end: usize, offset: usize) -> Option<*const T> {
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Mutable variant of [`ptr_at`].
#[inline(always)]
pub fn ptr_at_mut<T>(start: usize, end: usize, offset: usize) -> Option<*mut T> {
    ptr_at::<T>(start, end, offset).map(|p| p as *mut T)
}

/// Reads a header that [`ptr_at`] has bounds-checked.
///
/// In the XDP program headers sit at arbitrary alignment (the IPv4 header is 2 bytes off a
/// word boundary after Ethernet); the BPF JIT handles unaligned loads, so a plain load is
/// used there. On the host the same read must not assume alignment.
///
/// # Safety
/// `p` must come from [`ptr_at`] (or point to `size_of::<T>()` readable bytes).
#[inline(always)]
pub unsafe fn read<T: Copy>(p: *const T) -> T {
    #[cfg(target_arch = "bpf")]
    {
        unsafe { *p }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        unsafe { core::ptr::read_unaligned(p) }
    }
}

/// Writes through a pointer from [`ptr_at_mut`], with the same alignment rule as [`read`].
///
/// # Safety
/// `p` must come from [`ptr_at_mut`].
#[inline(always)]
pub unsafe fn write<T: Copy>(p: *mut T, value: T) {
    #[cfg(target_arch = "bpf")]
    {
        unsafe { *p = value }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        unsafe { core::ptr::write_unaligned(p, value) }
    }
}

/// Why a packet was not parsed down to a TCP or UDP header. Each maps to one rule in the
/// data plane (see the README's "Packet handling rules").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not IPv4 (ARP, IPv6, ...): not ours, passed.
    NotIpv4,
    /// IPv4 but neither TCP nor UDP: passed.
    NotTcpUdp,
    /// A fragment other than the first: it has no L4 header, passed.
    NonFirstFragment,
    /// A header is cut short by the end of the frame: passed untouched.
    Truncated,
    /// A header field is impossible (IHL < 5, TCP data offset < 5, total length shorter
    /// than the headers, ...): passed untouched.
    Invalid,
}

/// Where the headers are and the fields the balancer needs, all offsets from `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Offset of the IPv4 header (14, or 18 behind one VLAN tag).
    pub l3_off: usize,
    /// Offset of the TCP/UDP header.
    pub l4_off: usize,
    /// Offset of the L4 payload.
    pub payload_off: usize,
    /// Offset where the IP datagram ends (`l3_off + tot_len`); bytes after it are link
    /// padding.
    pub ip_end: usize,
    /// The 5-tuple as on the wire (network byte order).
    pub key: FlowKey,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
    pub ttl: u8,
    /// True for a first fragment (MF set, offset 0): L4 header present, rest elsewhere.
    pub first_fragment: bool,
    /// 802.1Q/802.1ad tag present.
    pub vlan: bool,
}

/// Parses Ethernet (with at most one VLAN tag), IPv4 (with options) and the TCP or UDP
/// header of the packet in `[start, end)`.
#[inline(always)]
pub fn parse_packet(start: usize, end: usize) -> Result<Packet, ParseError> {
    let eth = ptr_at::<EthHdr>(start, end, 0).ok_or(ParseError::Truncated)?;
    let mut ether_type = u16::from_be(unsafe { read(eth) }.ether_type);
    let mut l3_off = size_of::<EthHdr>();
    let mut vlan = false;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let tag = ptr_at::<VlanHdr>(start, end, l3_off).ok_or(ParseError::Truncated)?;
        ether_type = u16::from_be(unsafe { read(tag) }.ether_type);
        l3_off += size_of::<VlanHdr>();
        vlan = true;
    }
    if ether_type != ETH_P_IPV4 {
        return Err(ParseError::NotIpv4);
    }

    let ip = unsafe { read(ptr_at::<Ipv4Hdr>(start, end, l3_off).ok_or(ParseError::Truncated)?) };
    if ip.version_ihl >> 4 != 4 {
        return Err(ParseError::Invalid);
    }
    // Masked to 4 bits so the verifier knows the header length is at most 60.
    let ihl = ((ip.version_ihl & 0x0f) as usize) * 4;
    if ihl < size_of::<Ipv4Hdr>() {
        return Err(ParseError::Invalid);
    }
    let tot_len = u16::from_be(ip.tot_len) as usize;
    if tot_len < ihl {
        return Err(ParseError::Invalid);
    }
    if start + l3_off + tot_len > end {
        return Err(ParseError::Truncated);
    }
    if ip.proto != PROTO_TCP && ip.proto != PROTO_UDP {
        return Err(ParseError::NotTcpUdp);
    }
    let frag = u16::from_be(ip.frag_off);
    if frag & IP_OFFSET_MASK != 0 {
        return Err(ParseError::NonFirstFragment);
    }
    let first_fragment = frag & IP_MF != 0;

    let l4_off = l3_off + ihl;
    let ip_end = l3_off + tot_len;
    let (sport, dport, tcp_flags, payload_off) = if ip.proto == PROTO_TCP {
        let tcp =
            unsafe { read(ptr_at::<TcpHdr>(start, end, l4_off).ok_or(ParseError::Truncated)?) };
        let doff = ((tcp.doff_res >> 4) as usize) * 4;
        if doff < size_of::<TcpHdr>() {
            return Err(ParseError::Invalid);
        }
        if l4_off + doff > ip_end {
            return Err(if first_fragment {
                ParseError::Truncated
            } else {
                ParseError::Invalid
            });
        }
        (tcp.sport, tcp.dport, tcp.flags, l4_off + doff)
    } else {
        let udp =
            unsafe { read(ptr_at::<UdpHdr>(start, end, l4_off).ok_or(ParseError::Truncated)?) };
        if l4_off + size_of::<UdpHdr>() > ip_end {
            return Err(ParseError::Invalid);
        }
        (udp.sport, udp.dport, 0, l4_off + size_of::<UdpHdr>())
    };

    Ok(Packet {
        l3_off,
        l4_off,
        payload_off,
        ip_end,
        key: FlowKey::new(ip.src, ip.dst, sport, dport, ip.proto),
        tcp_flags,
        ttl: ip.ttl,
        first_fragment,
        vlan,
    })
}

/// Convenience for host code: parses a byte slice.
pub fn parse_slice(frame: &[u8]) -> Result<Packet, ParseError> {
    let start = frame.as_ptr() as usize;
    parse_packet(start, start + frame.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;
    use std::vec::Vec;

    const CLIENT: [u8; 4] = [198, 18, 0, 2];
    const VIP: [u8; 4] = [198, 18, 100, 1];

    fn tcp_frame(payload: &[u8], syn: bool) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(CLIENT, VIP, 64)
            .tcp(40000, 80, 1000, 65535);
        let b = if syn { b.syn() } else { b.ack(1) };
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn parses_tcp_syn() {
        let f = tcp_frame(&[], true);
        let p = parse_slice(&f).unwrap();
        assert_eq!(p.l3_off, 14);
        assert_eq!(p.l4_off, 34);
        assert_eq!(p.payload_off, 54);
        assert_eq!(p.ip_end, f.len());
        assert_eq!(p.key.src, u32::from_ne_bytes(CLIENT));
        assert_eq!(p.key.dst, u32::from_ne_bytes(VIP));
        assert_eq!(u16::from_be(p.key.sport), 40000);
        assert_eq!(u16::from_be(p.key.dport), 80);
        assert_eq!(p.key.proto, PROTO_TCP);
        assert_eq!(p.tcp_flags & TCP_SYN, TCP_SYN);
        assert_eq!(p.ttl, 64);
        assert!(!p.vlan && !p.first_fragment);
    }

    #[test]
    fn parses_udp_behind_vlan_tag() {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .single_vlan(42.try_into().unwrap())
            .ipv4(CLIENT, VIP, 5)
            .udp(5353, 53);
        let mut f = Vec::new();
        b.write(&mut f, b"query").unwrap();
        let p = parse_slice(&f).unwrap();
        assert!(p.vlan);
        assert_eq!(p.l3_off, 18);
        assert_eq!(p.l4_off, 38);
        assert_eq!(p.payload_off, 46);
        assert_eq!(p.key.proto, PROTO_UDP);
        assert_eq!(u16::from_be(p.key.dport), 53);
    }

    #[test]
    fn parses_ip_options() {
        let mut f = tcp_frame(b"hi", false);
        // Insert 8 bytes of options (NOP x 8) after the 20-byte IPv4 header.
        let opts = [1u8; 8];
        f.splice(34..34, opts);
        f[14] = 0x47; // IHL 7
        let tot = u16::from_be_bytes([f[16], f[17]]) + 8;
        f[16..18].copy_from_slice(&tot.to_be_bytes());
        let p = parse_slice(&f).unwrap();
        assert_eq!(p.l4_off, 14 + 28);
        assert_eq!(p.payload_off, 14 + 28 + 20);
        assert_eq!(u16::from_be(p.key.sport), 40000);
    }

    #[test]
    fn every_truncation_is_rejected_without_reading_past_the_end() {
        let f = tcp_frame(b"GET / HTTP/1.1\r\n\r\n", false);
        let headers_end = 54;
        for len in 0..headers_end {
            let cut = &f[..len];
            let r = parse_slice(cut);
            assert!(matches!(r, Err(ParseError::Truncated)), "len {len}: {r:?}");
        }
        // Cut inside the payload: the IP total length no longer fits.
        assert_eq!(parse_slice(&f[..f.len() - 1]), Err(ParseError::Truncated));
        assert!(parse_slice(&f).is_ok());
    }

    #[test]
    fn link_padding_after_the_datagram_is_allowed() {
        let mut f = tcp_frame(&[], true);
        f.extend_from_slice(&[0u8; 6]);
        let p = parse_slice(&f).unwrap();
        assert_eq!(p.ip_end, f.len() - 6);
    }

    #[test]
    fn classifies_non_ip_and_other_protocols() {
        let mut f = tcp_frame(&[], true);
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        assert_eq!(parse_slice(&f), Err(ParseError::NotIpv4));
        let mut f = tcp_frame(&[], true);
        f[23] = 1; // ICMP
        assert_eq!(parse_slice(&f), Err(ParseError::NotTcpUdp));
    }

    #[test]
    fn rejects_impossible_fields() {
        let mut f = tcp_frame(&[], true);
        f[14] = 0x44; // IHL 4
        assert_eq!(parse_slice(&f), Err(ParseError::Invalid));
        let mut f = tcp_frame(&[], true);
        f[14] = 0x65; // version 6 in an IPv4 ethertype
        assert_eq!(parse_slice(&f), Err(ParseError::Invalid));
        let mut f = tcp_frame(&[], true);
        f[14 + 20 + 12] = 0x40; // TCP data offset 4
        assert_eq!(parse_slice(&f), Err(ParseError::Invalid));
        let mut f = tcp_frame(&[], true);
        f[16..18].copy_from_slice(&10u16.to_be_bytes()); // total length < IHL
        assert_eq!(parse_slice(&f), Err(ParseError::Invalid));
        let mut f = tcp_frame(&[], true);
        f[14 + 20 + 12] = 0xf0; // TCP header claims 60 bytes, datagram has 20
        assert_eq!(parse_slice(&f), Err(ParseError::Invalid));
    }

    #[test]
    fn fragments() {
        let mut f = tcp_frame(b"data", false);
        f[20..22].copy_from_slice(&0x2000u16.to_be_bytes()); // MF, offset 0
        let p = parse_slice(&f).unwrap();
        assert!(p.first_fragment);
        f[20..22].copy_from_slice(&0x0010u16.to_be_bytes()); // offset 16*8, last
        assert_eq!(parse_slice(&f), Err(ParseError::NonFirstFragment));
    }
}

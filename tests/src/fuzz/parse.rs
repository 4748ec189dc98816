//! An independent parser of the frames (from the README's packet handling rules) and
//! the checksum residuals the oracle compares.

use super::*;

/// Why a frame is not a parsed TCP/UDP packet, per the README's rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    NotIpv4,
    NotTcpUdp,
    NonFirstFragment,
    Malformed,
}

impl Refused {
    pub(super) fn counter(self) -> Counter {
        match self {
            Refused::NotIpv4 | Refused::NotTcpUdp => Counter::PassNotService,
            Refused::NonFirstFragment => Counter::PassFragment,
            Refused::Malformed => Counter::PassMalformed,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Refused::NotIpv4 => "not IPv4",
            Refused::NotTcpUdp => "IPv4, not TCP/UDP",
            Refused::NonFirstFragment => "non-first fragment",
            Refused::Malformed => "malformed",
        }
    }
}

/// A parsed Ethernet (+ one tag) / IPv4 / TCP|UDP frame: offsets and fields.
#[derive(Clone, Debug)]
pub struct Pkt {
    pub l3: usize,
    pub l4: usize,
    pub payload: usize,
    pub ip_end: usize,
    pub proto: u8,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub ttl: u8,
    /// Flags and fragment offset.
    pub frag: u16,
    pub tos: u8,
    pub id: u16,
    /// TCP only (0 for UDP).
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
}

pub(super) const F_FIN: u8 = 0x01;
pub(super) const F_SYN: u8 = 0x02;
pub(super) const F_RST: u8 = 0x04;
pub(super) const F_ACK: u8 = 0x10;

impl Pkt {
    pub(super) fn key(&self) -> FlowKey {
        FlowKey::new(
            ip_to_map(*self.src.ip()),
            ip_to_map(*self.dst.ip()),
            self.src.port().to_be(),
            self.dst.port().to_be(),
            self.proto,
        )
    }

    pub(super) fn first_fragment(&self) -> bool {
        self.frag & 0x2000 != 0
    }

    pub(super) fn payload_len(&self) -> usize {
        self.ip_end - self.payload
    }

    pub(super) fn tcp(&self) -> bool {
        self.proto == PROTO_TCP
    }
}

fn be16(f: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([f[o], f[o + 1]])
}

pub(super) fn be32(f: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([f[o], f[o + 1], f[o + 2], f[o + 3]])
}

fn addr_at(f: &[u8], o: usize) -> Ipv4Addr {
    Ipv4Addr::new(f[o], f[o + 1], f[o + 2], f[o + 3])
}

/// Offset of the IPv4 header if the link header says IPv4 (one 802.1Q/802.1ad tag).
pub(super) fn l3_of(f: &[u8]) -> Option<usize> {
    if f.len() < 14 {
        return None;
    }
    let et = be16(f, 12);
    if et == 0x8100 || et == 0x88a8 {
        if f.len() < 18 || be16(f, 16) != 0x0800 {
            return None;
        }
        return Some(18);
    }
    (et == 0x0800).then_some(14)
}

/// Parses a frame the way the README's rules describe, in the data plane's order.
pub fn parse(f: &[u8]) -> std::result::Result<Pkt, Refused> {
    use Refused::*;
    if f.len() < 14 {
        return Err(Malformed);
    }
    let mut l3 = 14;
    let mut et = be16(f, 12);
    if et == 0x8100 || et == 0x88a8 {
        if f.len() < 18 {
            return Err(Malformed);
        }
        et = be16(f, 16);
        l3 = 18;
    }
    if et != 0x0800 {
        return Err(NotIpv4);
    }
    if f.len() < l3 + 20 || f[l3] >> 4 != 4 {
        return Err(Malformed);
    }
    let ihl = (f[l3] & 0x0f) as usize * 4;
    let tot = be16(f, l3 + 2) as usize;
    if ihl < 20 || tot < ihl || l3 + tot > f.len() {
        return Err(Malformed);
    }
    let proto = f[l3 + 9];
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(NotTcpUdp);
    }
    let frag = be16(f, l3 + 6);
    if frag & 0x1fff != 0 {
        return Err(NonFirstFragment);
    }
    let l4 = l3 + ihl;
    let ip_end = l3 + tot;
    let (payload, flags, seq, ack, window) = if proto == PROTO_TCP {
        if l4 + 20 > f.len() {
            return Err(Malformed);
        }
        let doff = (f[l4 + 12] >> 4) as usize * 4;
        if doff < 20 || l4 + doff > ip_end {
            return Err(Malformed);
        }
        (
            l4 + doff,
            f[l4 + 13],
            be32(f, l4 + 4),
            be32(f, l4 + 8),
            be16(f, l4 + 14),
        )
    } else {
        if l4 + 8 > f.len() || l4 + 8 > ip_end {
            return Err(Malformed);
        }
        (l4 + 8, 0, 0, 0, 0)
    };
    Ok(Pkt {
        l3,
        l4,
        payload,
        ip_end,
        proto,
        src: SocketAddrV4::new(addr_at(f, l3 + 12), be16(f, l4)),
        dst: SocketAddrV4::new(addr_at(f, l3 + 16), be16(f, l4 + 2)),
        ttl: f[l3 + 8],
        frag,
        tos: f[l3 + 1],
        id: be16(f, l3 + 4),
        flags,
        seq,
        ack,
        window,
    })
}

// --- Checksums ---------------------------------------------------------------------------

/// One's-complement sum of the IPv4 header, checksum included: 0xffff when valid.
pub(super) fn ip_residual(f: &[u8], p: &Pkt) -> u16 {
    !csum::checksum(&f[p.l3..p.l4], 0)
}

/// One's-complement sum of the L4 segment and its pseudo-header (length from the IPv4
/// header), checksum included: 0xffff when valid.
pub(super) fn l4_residual(f: &[u8], p: &Pkt) -> u16 {
    let (src, dst) = (addr_at(f, p.l3 + 12), addr_at(f, p.l3 + 16));
    !l4_checksum(src, dst, p.proto, &f[p.l4..p.ip_end])
}

/// Residuals compared as one's-complement values (0 and 0xffff are both zero).
pub(super) fn same_residual(a: u16, b: u16) -> bool {
    let n = |x: u16| if x == 0 { 0xffff } else { x };
    n(a) == n(b)
}

pub(super) fn udp_no_checksum(f: &[u8], p: &Pkt) -> bool {
    p.proto == PROTO_UDP && f[p.l4 + 6] == 0 && f[p.l4 + 7] == 0
}

pub(super) fn l4_valid(f: &[u8], p: &Pkt) -> bool {
    udp_no_checksum(f, p) || same_residual(l4_residual(f, p), 0xffff)
}

/// Recomputes the IPv4 header checksum (a bogus IHL is clamped to what the frame holds).
pub(super) fn fix_ip_checksum(f: &mut [u8]) {
    let Some(l3) = l3_of(f) else { return };
    if f.len() < l3 + 20 {
        return;
    }
    fix_ipv4_checksum(f, l3);
}

/// Recomputes the TCP/UDP checksum of a parseable frame.
pub(super) fn fix_l4_checksum(f: &mut [u8]) {
    let Ok(p) = parse(f) else { return };
    let off = p.l4 + if p.tcp() { 16 } else { 6 };
    if off + 2 > p.ip_end {
        return;
    }
    f[off] = 0;
    f[off + 1] = 0;
    let mut c = !l4_residual(f, &p);
    if !p.tcp() && c == 0 {
        c = 0xffff;
    }
    f[off..off + 2].copy_from_slice(&c.to_be_bytes());
}

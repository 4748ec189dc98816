//! The one packet builder of the tests: a [`Frame`] describes an Ethernet (+ optional
//! 802.1Q) / IPv4 / TCP-or-UDP frame field by field, and builds both the frames a test
//! sends and the frames it expects back (compared with [`check_frame`]), so input and
//! expectation cannot drift apart. [`Frame::write_ipv4`] writes the same packet without its
//! link layer (raw IP sockets). Checksums come from the product's own arithmetic
//! ([`balancer_common::csum::checksum`]); the decoder ([`decode_checked`]) verifies them with
//! it and etherparse parses the headers, so a wrong rewrite is caught by two parsers.
//!
//! The defaults (MACs, addresses) are the test bed's address plan ([`crate::testrun`]).

mod check;

use std::net::{Ipv4Addr, SocketAddrV4};

use balancer_common::csum;
use etherparse::{IpHeaders, PacketBuilder, PacketBuilderStep, TcpHeader};

pub use check::*;

use crate::testrun::{
    backend_mac, client, vip, BACKEND_IF_MAC, CLIENT, CLIENT_IF_MAC, CLIENT_MAC, VIP, VIP_PORT,
};

/// TCP flag set of a built segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
    pub psh: bool,
}

pub const SYN: TcpFlags = TcpFlags {
    syn: true,
    ack: false,
    fin: false,
    rst: false,
    psh: false,
};
pub const SYN_ACK: TcpFlags = TcpFlags {
    syn: true,
    ack: true,
    fin: false,
    rst: false,
    psh: false,
};
pub const ACK: TcpFlags = TcpFlags {
    syn: false,
    ack: true,
    fin: false,
    rst: false,
    psh: false,
};
pub const PSH_ACK: TcpFlags = TcpFlags {
    syn: false,
    ack: true,
    fin: false,
    rst: false,
    psh: true,
};
pub const FIN_ACK: TcpFlags = TcpFlags {
    syn: false,
    ack: true,
    fin: true,
    rst: false,
    psh: false,
};
pub const RST: TcpFlags = TcpFlags {
    syn: false,
    ack: false,
    fin: false,
    rst: true,
    psh: false,
};
pub const RST_ACK: TcpFlags = TcpFlags {
    syn: false,
    ack: true,
    fin: false,
    rst: true,
    psh: false,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp { flags: TcpFlags, seq: u32, ack: u32 },
    Udp,
}

/// Description of an Ethernet (+ optional 802.1Q) / IPv4 / TCP-or-UDP frame.
#[derive(Clone, Debug)]
pub struct Frame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub ttl: u8,
    pub l4: L4,
    /// TCP receive window (64240 unless set).
    pub window: u16,
    /// Raw TCP options (padded with EOL to a multiple of 4 bytes by [`Frame::build`]).
    pub tcp_options: Vec<u8>,
    pub payload: Vec<u8>,
    /// Raw IPv4 options (padded to a multiple of 4 bytes by [`Frame::build`]).
    pub ip_options: Vec<u8>,
    /// Send the UDP datagram without a checksum (field 0).
    pub udp_zero_checksum: bool,
    /// Write the acknowledgement number also without the ACK flag (as a raw client may).
    pub ack_without_flag: bool,
}

impl Frame {
    /// A TCP segment from the client's MAC to the balancer's client-side MAC.
    pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: TcpFlags) -> Frame {
        Frame {
            src_mac: CLIENT_MAC,
            dst_mac: CLIENT_IF_MAC,
            vlan: None,
            src,
            dst,
            ttl: 64,
            l4: L4::Tcp {
                flags,
                seq: 1000,
                ack: if flags.ack { 5000 } else { 0 },
            },
            window: 64240,
            tcp_options: Vec::new(),
            payload: Vec::new(),
            ip_options: Vec::new(),
            udp_zero_checksum: false,
            ack_without_flag: false,
        }
    }

    /// A UDP datagram from the client's MAC to the balancer's client-side MAC.
    pub fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Frame {
        Frame {
            l4: L4::Udp,
            payload: payload.to_vec(),
            ..Frame::tcp(src, dst, SYN)
        }
    }

    /// Client `CLIENT:sport` to `VIP:80`.
    pub fn to_vip(sport: u16, flags: TcpFlags) -> Frame {
        Frame::tcp(client(sport), vip(), flags)
    }

    /// A backend's answer to the client, as the backend sends it: from the backend's MAC
    /// to the balancer's backend-side MAC.
    pub fn reply(backend: SocketAddrV4, client: SocketAddrV4, flags: TcpFlags) -> Frame {
        Frame {
            src_mac: backend_mac(*backend.ip()),
            dst_mac: BACKEND_IF_MAC,
            l4: L4::Tcp {
                flags,
                seq: 9000,
                ack: if flags.ack { 1001 } else { 0 },
            },
            ..Frame::tcp(backend, client, flags)
        }
    }

    pub fn payload(mut self, p: &[u8]) -> Frame {
        self.payload = p.to_vec();
        self
    }

    pub fn ttl(mut self, ttl: u8) -> Frame {
        self.ttl = ttl;
        self
    }

    pub fn vlan(mut self, id: u16) -> Frame {
        self.vlan = Some(id);
        self
    }

    pub fn ip_options(mut self, opts: &[u8]) -> Frame {
        self.ip_options = opts.to_vec();
        self
    }

    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Frame {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    pub fn seq(mut self, seq: u32) -> Frame {
        if let L4::Tcp { seq: s, .. } = &mut self.l4 {
            *s = seq;
        }
        self
    }

    /// The acknowledgement number (written only if the ACK flag is set).
    pub fn ack(mut self, ack: u32) -> Frame {
        if let L4::Tcp { ack: a, .. } = &mut self.l4 {
            *a = ack;
        }
        self
    }

    pub fn flags(mut self, flags: TcpFlags) -> Frame {
        if let L4::Tcp { flags: f, .. } = &mut self.l4 {
            *f = flags;
        }
        self
    }

    pub fn window(mut self, window: u16) -> Frame {
        self.window = window;
        self
    }

    pub fn tcp_options(mut self, opts: &[u8]) -> Frame {
        self.tcp_options = opts.to_vec();
        self
    }

    /// Moves the frame to other link addresses and IPv4 endpoints (what a rewrite does).
    pub fn addressed(
        mut self,
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        src: SocketAddrV4,
        dst: SocketAddrV4,
    ) -> Frame {
        self.src_mac = src_mac;
        self.dst_mac = dst_mac;
        self.src = src;
        self.dst = dst;
        self
    }

    /// The acknowledgement number, written whatever the flags are.
    pub fn ack_field(mut self, ack: u32) -> Frame {
        self.ack_without_flag = true;
        self.ack(ack)
    }

    pub fn udp_zero_checksum(mut self) -> Frame {
        self.udp_zero_checksum = true;
        self
    }

    /// Offset of the IPv4 header in the built frame.
    pub fn l3_off(&self) -> usize {
        if self.vlan.is_some() {
            18
        } else {
            14
        }
    }

    /// The frame's bytes: Ethernet (+ VLAN tag), IPv4 (+ options), TCP or UDP, payload.
    pub fn build(&self) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(self.src_mac, self.dst_mac);
        let (s, d) = (self.src.ip().octets(), self.dst.ip().octets());
        let ip = match self.vlan {
            Some(id) => eth
                .single_vlan(id.try_into().expect("VLAN id < 4096"))
                .ipv4(s, d, self.ttl),
            None => eth.ipv4(s, d, self.ttl),
        };
        let mut out = Vec::new();
        self.write_l4(ip, self.l3_off(), &mut out);
        out
    }

    /// Writes the frame's IPv4 packet without its link layer into `out` (cleared first):
    /// what a raw IP socket sends.
    pub fn write_ipv4(&self, out: &mut Vec<u8>) {
        out.clear();
        let ip = PacketBuilder::ipv4(self.src.ip().octets(), self.dst.ip().octets(), self.ttl);
        self.write_l4(ip, 0, out);
    }

    /// Writes the transport header and payload after the IPv4 header `ip` starting at
    /// offset `l3` of `out`, then inserts the IPv4 options.
    fn write_l4(&self, ip: PacketBuilderStep<IpHeaders>, l3: usize, out: &mut Vec<u8>) {
        match self.l4 {
            L4::Tcp { flags, seq, ack } => {
                let mut h = TcpHeader::new(self.src.port(), self.dst.port(), seq, self.window);
                if !self.tcp_options.is_empty() {
                    let mut opts = self.tcp_options.clone();
                    opts.resize(opts.len().div_ceil(4) * 4, 0);
                    h.set_options_raw(&opts)
                        .expect("at most 40 bytes of TCP options");
                }
                (h.syn, h.ack, h.fin, h.rst, h.psh) =
                    (flags.syn, flags.ack, flags.fin, flags.rst, flags.psh);
                if flags.ack || self.ack_without_flag {
                    h.acknowledgment_number = ack;
                }
                ip.tcp_header(h)
                    .write(out, &self.payload)
                    .expect("building a TCP frame");
            }
            L4::Udp => {
                ip.udp(self.src.port(), self.dst.port())
                    .write(out, &self.payload)
                    .expect("building a UDP frame");
                if self.udp_zero_checksum {
                    let off = l3 + 20 + 6;
                    out[off..off + 2].copy_from_slice(&[0, 0]);
                }
            }
        }
        if !self.ip_options.is_empty() {
            let mut opts = self.ip_options.clone();
            opts.resize(opts.len().div_ceil(4) * 4, 0);
            assert!(opts.len() <= 40, "at most 40 bytes of IPv4 options");
            out.splice(l3 + 20..l3 + 20, opts.iter().copied());
            out[l3] = 0x40 | ((20 + opts.len()) / 4) as u8;
            let tot = u16::from_be_bytes([out[l3 + 2], out[l3 + 3]]) + opts.len() as u16;
            out[l3 + 2..l3 + 4].copy_from_slice(&tot.to_be_bytes());
            fix_ipv4_checksum(out, l3);
        }
    }
}

/// The TCP/UDP checksum of `segment` (its checksum field included: 0 when that field is
/// right) under the IPv4 pseudo-header of `src`, `dst` and `proto`.
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = proto;
    pseudo[10..].copy_from_slice(&(segment.len() as u16).to_be_bytes());
    // The pseudo-header's sum (the complement of its checksum) starts the segment's.
    csum::checksum(segment, !csum::checksum(&pseudo, 0) as u32)
}

/// An MSS option (kind 2).
pub fn mss_option(mss: u16) -> Vec<u8> {
    let m = mss.to_be_bytes();
    vec![2, 4, m[0], m[1]]
}

/// The options of a Linux SYN: MSS, SACK permitted, timestamps, NOP, window scale 7
/// (20 bytes).
pub fn linux_syn_options(mss: u16) -> Vec<u8> {
    let mut o = mss_option(mss);
    o.extend_from_slice(&[4, 2, 8, 10, 0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0, 1, 3, 3, 7]);
    o
}

/// A timestamps option behind two NOPs, as Linux sends it in every segment after the SYN
/// (12 bytes).
pub fn ts_option(tsval: u32, tsecr: u32) -> Vec<u8> {
    let mut o = vec![1, 1, 8, 10];
    o.extend_from_slice(&tsval.to_be_bytes());
    o.extend_from_slice(&tsecr.to_be_bytes());
    o
}

/// A SACK option with `blocks` (left and right edges) behind two NOPs.
pub fn sack_option(blocks: &[(u32, u32)]) -> Vec<u8> {
    let mut o = vec![1, 1, 5, (2 + 8 * blocks.len()) as u8];
    for (l, r) in blocks {
        o.extend_from_slice(&l.to_be_bytes());
        o.extend_from_slice(&r.to_be_bytes());
    }
    o
}

/// The options of a SYN or SYN-ACK laid out as Linux lays them out: MSS; SACK-permitted
/// and timestamps (NOP-padded when only one of them is there); NOP and window scale.
pub fn syn_options(
    mss: u16,
    sack_ok: bool,
    timestamps: Option<(u32, u32)>,
    wscale: Option<u8>,
) -> Vec<u8> {
    let mut o = mss_option(mss);
    match (timestamps, sack_ok) {
        (Some((val, ecr)), sack) => {
            o.extend_from_slice(if sack { &[4, 2] } else { &[1, 1] });
            o.extend_from_slice(&[8, 10]);
            o.extend_from_slice(&val.to_be_bytes());
            o.extend_from_slice(&ecr.to_be_bytes());
        }
        (None, true) => o.extend_from_slice(&[1, 1, 4, 2]),
        (None, false) => {}
    }
    if let Some(ws) = wscale {
        o.extend_from_slice(&[1, 3, 3, ws]);
    }
    o
}

/// Recomputes the IPv4 header checksum of the header at `l3`.
pub fn fix_ipv4_checksum(frame: &mut [u8], l3: usize) {
    // Bogus IHLs (tests build them) are clamped to what the frame holds.
    let ihl = ((frame[l3] & 0x0f) as usize * 4).clamp(20, frame.len() - l3);
    frame[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
    let c = csum::checksum(&frame[l3..l3 + ihl], 0);
    frame[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
}

/// An ARP request frame (not IPv4: must be passed untouched).
pub fn arp_frame() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&CLIENT.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&VIP.octets());
    f.resize(60, 0);
    f
}

/// A TCP SYN over IPv6 to port 80.
pub fn ipv6_syn_frame() -> Vec<u8> {
    let mut v6_vip = [0u8; 16];
    v6_vip[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    v6_vip[15] = 1;
    let mut v6_client = v6_vip;
    v6_client[15] = 2;
    let mut f = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, CLIENT_IF_MAC)
        .ipv6(v6_client, v6_vip, 64)
        .tcp(40000, VIP_PORT, 1, 64240)
        .syn()
        .write(&mut f, &[])
        .unwrap();
    f
}

/// An ICMP echo request to the VIP.
pub fn icmp_echo_frame() -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, CLIENT_IF_MAC)
        .ipv4(CLIENT.octets(), VIP.octets(), 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut f, b"ping")
        .unwrap();
    f
}

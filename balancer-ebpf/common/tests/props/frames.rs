//! Frame generation shared by the property tests: a frame description that the
//! strategies below fill in, its serialisation (checksums computed with etherparse's
//! checksum code, not the crate's), mutations of serialised frames, and a buffer that
//! puts guard bytes around a frame to catch reads and writes outside `[start, end)`.

use proptest::prelude::*;
use proptest::sample::{select, Index};
use std::{vec, vec::Vec};

use etherparse::checksum::Sum16BitWords;

pub const ETH_IPV4: u16 = 0x0800;
pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;
/// Old QinQ TPID: etherparse reads it as a VLAN tag, the production parser does not.
pub const TPID_9100: u16 = 0x9100;

#[derive(Clone, Debug)]
pub enum Vlan {
    None,
    One {
        tpid: u16,
        tci: u16,
    },
    Two {
        outer: u16,
        tci: u16,
        inner: u16,
        tci2: u16,
    },
}

impl Vlan {
    pub fn len(&self) -> usize {
        match self {
            Vlan::None => 0,
            Vlan::One { .. } => 4,
            Vlan::Two { .. } => 8,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Ip {
    pub tos: u8,
    pub id: u16,
    /// Flags and fragment offset, host order (0x4000 DF, 0x2000 MF, 0x1fff offset).
    pub frag: u16,
    pub ttl: u8,
    pub proto: u8,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// Option bytes, a multiple of 4, at most 40.
    pub options: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct Tcp {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    /// Byte 13 (CWR ECE URG ACK PSH RST SYN FIN).
    pub flags: u8,
    /// Low nibble of byte 12 (reserved bits and NS).
    pub res: u8,
    pub window: u16,
    pub urg: u16,
    /// Option bytes, a multiple of 4, at most 40.
    pub options: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct Udp {
    pub sport: u16,
    pub dport: u16,
    /// Length field; `None` writes the right one.
    pub len: Option<u16>,
    /// Sends checksum 0 ("none").
    pub no_checksum: bool,
}

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp(Tcp),
    Udp(Udp),
    /// Whatever the IP protocol number says, these bytes follow the IP header (before the
    /// payload).
    Raw(Vec<u8>),
}

#[derive(Clone, Debug)]
pub struct Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub vlan: Vlan,
    pub ether_type: u16,
    pub ip: Ip,
    pub l4: L4,
    pub payload: Vec<u8>,
    /// Link-layer padding after the IP datagram.
    pub padding: Vec<u8>,
}

/// Offsets of a serialised frame.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub l3: usize,
    pub l4: usize,
    pub ip_end: usize,
}

/// Internet checksum of the concatenated parts, as a number (write it with
/// `to_be_bytes`).
pub fn inet_checksum(parts: &[&[u8]]) -> u16 {
    // Sum16BitWords works on 16-bit words of each slice: concatenate first so an
    // odd-length part does not shift the words of the next.
    let mut all = Vec::new();
    for p in parts {
        all.extend_from_slice(p);
    }
    Sum16BitWords::new()
        .add_slice(&all)
        .ones_complement()
        .to_be()
}

impl Frame {
    pub fn layout(&self) -> Layout {
        let l3 = 14 + self.vlan.len();
        let l4 = l3 + 20 + self.ip.options.len();
        let l4_len = match &self.l4 {
            L4::Tcp(t) => 20 + t.options.len(),
            L4::Udp(_) => 8,
            L4::Raw(b) => b.len(),
        };
        Layout {
            l3,
            l4,
            ip_end: l4 + l4_len + self.payload.len(),
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        match self.vlan {
            Vlan::None => {}
            Vlan::One { tpid, tci } => {
                f.extend_from_slice(&tpid.to_be_bytes());
                f.extend_from_slice(&tci.to_be_bytes());
            }
            Vlan::Two {
                outer,
                tci,
                inner,
                tci2,
            } => {
                f.extend_from_slice(&outer.to_be_bytes());
                f.extend_from_slice(&tci.to_be_bytes());
                f.extend_from_slice(&inner.to_be_bytes());
                f.extend_from_slice(&tci2.to_be_bytes());
            }
        }
        f.extend_from_slice(&self.ether_type.to_be_bytes());

        let layout = self.layout();
        let ip = &self.ip;
        let ihl = 5 + ip.options.len() / 4;
        let tot_len = (layout.ip_end - layout.l3) as u16;
        let mut h = vec![0x40 | ihl as u8, ip.tos];
        h.extend_from_slice(&tot_len.to_be_bytes());
        h.extend_from_slice(&ip.id.to_be_bytes());
        h.extend_from_slice(&ip.frag.to_be_bytes());
        h.extend_from_slice(&[ip.ttl, ip.proto, 0, 0]);
        h.extend_from_slice(&ip.src);
        h.extend_from_slice(&ip.dst);
        h.extend_from_slice(&ip.options);
        let c = inet_checksum(&[&h]);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&h);

        let l4_len = (layout.ip_end - layout.l4) as u16;
        let pseudo = |proto: u8| {
            let mut p = Vec::new();
            p.extend_from_slice(&ip.src);
            p.extend_from_slice(&ip.dst);
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&l4_len.to_be_bytes());
            p
        };
        match &self.l4 {
            L4::Tcp(t) => {
                let mut h = Vec::new();
                h.extend_from_slice(&t.sport.to_be_bytes());
                h.extend_from_slice(&t.dport.to_be_bytes());
                h.extend_from_slice(&t.seq.to_be_bytes());
                h.extend_from_slice(&t.ack.to_be_bytes());
                let doff = (5 + t.options.len() / 4) as u8;
                h.extend_from_slice(&[doff << 4 | (t.res & 0x0f), t.flags]);
                h.extend_from_slice(&t.window.to_be_bytes());
                h.extend_from_slice(&[0, 0]);
                h.extend_from_slice(&t.urg.to_be_bytes());
                h.extend_from_slice(&t.options);
                let c = inet_checksum(&[&pseudo(ip.proto), &h, &self.payload]);
                h[16..18].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&h);
            }
            L4::Udp(u) => {
                let mut h = Vec::new();
                h.extend_from_slice(&u.sport.to_be_bytes());
                h.extend_from_slice(&u.dport.to_be_bytes());
                h.extend_from_slice(&u.len.unwrap_or(l4_len).to_be_bytes());
                h.extend_from_slice(&[0, 0]);
                if !u.no_checksum {
                    let mut c = inet_checksum(&[&pseudo(ip.proto), &h, &self.payload]);
                    if c == 0 {
                        c = 0xffff;
                    }
                    h[6..8].copy_from_slice(&c.to_be_bytes());
                }
                f.extend_from_slice(&h);
            }
            L4::Raw(b) => f.extend_from_slice(b),
        }
        f.extend_from_slice(&self.payload);
        f.extend_from_slice(&self.padding);
        f
    }
}

pub fn words(max_words: usize) -> impl Strategy<Value = Vec<u8>> {
    (0..=max_words).prop_flat_map(|n| proptest::collection::vec(any::<u8>(), 4 * n))
}

/// TCP option areas: random bytes, or well-formed lists of the options real stacks send
/// (in random order, NOP-padded), sometimes with an unknown kind.
pub fn tcp_options() -> impl Strategy<Value = Vec<u8>> {
    let option = prop_oneof![
        2 => any::<u16>().prop_map(|m| {
            let b = m.to_be_bytes();
            vec![2, 4, b[0], b[1]]
        }),
        1 => any::<u8>().prop_map(|s| vec![3, 3, s]),
        1 => Just(vec![4, 2]),
        1 => (any::<u32>(), any::<u32>()).prop_map(|(a, b)| {
            let mut o = vec![8, 10];
            o.extend_from_slice(&a.to_be_bytes());
            o.extend_from_slice(&b.to_be_bytes());
            o
        }),
        3 => Just(vec![1]),
        1 => (any::<u8>(), 0usize..6).prop_map(|(k, n)| {
            let mut o = vec![k | 0x80, 2 + n as u8];
            o.extend(std::iter::repeat_n(0xaa, n));
            o
        }),
    ];
    prop_oneof![
        1 => words(10),
        // NOPs, then MSS: around the parser's 8-option limit.
        1 => (0usize..12, any::<[u8; 2]>()).prop_map(|(n, m)| {
            let mut o = vec![1u8; n];
            o.extend_from_slice(&[2, 4, m[0], m[1]]);
            while !o.len().is_multiple_of(4) {
                o.push(0);
            }
            o
        }),
        2 => proptest::collection::vec(option, 0..12).prop_map(|opts| {
            let mut o: Vec<u8> = opts.concat();
            o.truncate(40);
            while !o.len().is_multiple_of(4) {
                o.push(0);
            }
            o
        }),
    ]
}

pub fn tcp_flags() -> impl Strategy<Value = u8> {
    prop_oneof![
        select(vec![
            0x02u8, 0x12, 0x10, 0x18, 0x11, 0x01, 0x04, 0x14, 0x03, 0x06, 0x00
        ]),
        any::<u8>(),
    ]
}

pub fn tcp() -> impl Strategy<Value = Tcp> {
    (
        (any::<u16>(), any::<u16>(), any::<u32>(), any::<u32>()),
        (tcp_flags(), prop_oneof![3 => Just(0u8), 1 => 0u8..16]),
        (any::<u16>(), any::<u16>(), tcp_options()),
    )
        .prop_map(
            |((sport, dport, seq, ack), (flags, res), (window, urg, options))| Tcp {
                sport,
                dport,
                seq,
                ack,
                flags,
                res,
                window,
                urg,
                options,
            },
        )
}

pub fn udp() -> impl Strategy<Value = Udp> {
    (
        any::<u16>(),
        any::<u16>(),
        prop_oneof![4 => Just(None), 1 => any::<u16>().prop_map(Some)],
        prop::bool::weighted(0.2),
    )
        .prop_map(|(sport, dport, len, no_checksum)| Udp {
            sport,
            dport,
            len,
            no_checksum,
        })
}

pub fn addr() -> impl Strategy<Value = [u8; 4]> {
    any::<[u8; 4]>()
}

pub fn frag() -> impl Strategy<Value = u16> {
    prop_oneof![
        6 => Just(0u16),
        3 => Just(0x4000u16),
        2 => Just(0x2000u16),
        1 => (1u16..0x2000).prop_map(|o| o | 0x2000),
        1 => 1u16..0x2000,
        1 => any::<u16>(),
    ]
}

pub fn ip(proto: u8) -> impl Strategy<Value = Ip> {
    (
        (any::<u8>(), any::<u16>(), frag(), any::<u8>()),
        (addr(), addr(), words(10)),
    )
        .prop_map(move |((tos, id, frag, ttl), (src, dst, options))| Ip {
            tos,
            id,
            frag,
            ttl,
            proto,
            src,
            dst,
            options,
        })
}

pub fn vlan() -> impl Strategy<Value = Vlan> {
    let tpid = || select(vec![TPID_8021Q, TPID_8021AD, TPID_9100]);
    prop_oneof![
        6 => Just(Vlan::None),
        3 => (select(vec![TPID_8021Q, TPID_8021AD]), any::<u16>())
            .prop_map(|(tpid, tci)| Vlan::One { tpid, tci }),
        1 => any::<u16>().prop_map(|tci| Vlan::One { tpid: TPID_9100, tci }),
        1 => (tpid(), any::<u16>(), tpid(), any::<u16>())
            .prop_map(|(outer, tci, inner, tci2)| Vlan::Two { outer, tci, inner, tci2 }),
    ]
}

pub fn payload(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..=max)
}

pub fn padding() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![3 => Just(Vec::new()), 1 => proptest::collection::vec(any::<u8>(), 1..24)]
}

/// Any kind of frame: mostly IPv4 TCP/UDP, sometimes other protocols and ethertypes, VLAN
/// tags (none, one, two, 0x9100), IP options, fragments, link padding.
pub fn frame() -> impl Strategy<Value = Frame> {
    let l4 = prop_oneof![
        5 => tcp().prop_map(|t| (6u8, L4::Tcp(t))),
        3 => udp().prop_map(|u| (17u8, L4::Udp(u))),
        2 => (
            prop_oneof![select(vec![1u8, 2, 6, 17, 47, 50, 51, 132]), any::<u8>()],
            proptest::collection::vec(any::<u8>(), 0..48),
        )
            .prop_map(|(p, b)| (p, L4::Raw(b))),
    ];
    let ether_type = prop_oneof![
        12 => Just(ETH_IPV4),
        1 => select(vec![0x86ddu16, 0x0806, TPID_8021Q, TPID_8021AD, TPID_9100]),
        1 => any::<u16>(),
    ];
    (
        (any::<[u8; 6]>(), any::<[u8; 6]>(), vlan(), ether_type),
        l4.prop_flat_map(|(proto, l4)| (ip(proto), Just(l4))),
        (payload(64), padding()),
    )
        .prop_map(
            |((dst_mac, src_mac, vlan, ether_type), (ip, l4), (payload, padding))| Frame {
                dst_mac,
                src_mac,
                vlan,
                ether_type,
                ip,
                l4,
                payload,
                padding,
            },
        )
}

/// A change to a serialised frame, aimed at the fields the parser checks.
#[derive(Clone, Debug)]
pub enum Mutation {
    Truncate(Index),
    FlipBit(Index, u8),
    SetByte(Index, u8),
    /// IHL nibble.
    Ihl(u8),
    TotLen(u16),
    TotLenDelta(i8),
    /// TCP data offset nibble (byte 12 of whatever follows the IP header).
    Doff(u8),
    /// UDP length field.
    UdpLen(u16),
    Frag(u16),
    EtherType(u16),
    Version(u8),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => any::<Index>().prop_map(Mutation::Truncate),
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::SetByte(i, v)),
        1 => (0u8..16).prop_map(Mutation::Ihl),
        1 => any::<u16>().prop_map(Mutation::TotLen),
        1 => any::<i8>().prop_map(Mutation::TotLenDelta),
        1 => (0u8..16).prop_map(Mutation::Doff),
        1 => any::<u16>().prop_map(Mutation::UdpLen),
        1 => frag().prop_map(Mutation::Frag),
        1 => select(vec![0x0800u16, 0x86dd, 0x8100, 0x88a8, 0x9100, 0x0806]).prop_map(Mutation::EtherType),
        1 => (0u8..16).prop_map(Mutation::Version),
    ]
}

fn set(f: &mut [u8], at: usize, v: u8) {
    if let Some(b) = f.get_mut(at) {
        *b = v;
    }
}

fn set16(f: &mut [u8], at: usize, v: u16) {
    let b = v.to_be_bytes();
    set(f, at, b[0]);
    set(f, at + 1, b[1]);
}

/// Applies `m` to the frame serialised from a frame with layout `l`. Field mutations
/// use the layout of the unmutated frame (a previous mutation may have moved things:
/// that is fine, the result is just another odd frame).
pub fn mutate(f: &mut Vec<u8>, l: &Layout, m: &Mutation) {
    match *m {
        Mutation::Truncate(i) => {
            let n = i.index(f.len() + 1);
            f.truncate(n);
        }
        Mutation::FlipBit(i, bit) => {
            if !f.is_empty() {
                let at = i.index(f.len());
                f[at] ^= 1 << bit;
            }
        }
        Mutation::SetByte(i, v) => {
            if !f.is_empty() {
                let at = i.index(f.len());
                f[at] = v;
            }
        }
        Mutation::Ihl(n) => {
            if let Some(b) = f.get_mut(l.l3) {
                *b = (*b & 0xf0) | n;
            }
        }
        Mutation::Version(n) => {
            if let Some(b) = f.get_mut(l.l3) {
                *b = (*b & 0x0f) | n << 4;
            }
        }
        Mutation::TotLen(v) => set16(f, l.l3 + 2, v),
        Mutation::TotLenDelta(d) => {
            if f.len() >= l.l3 + 4 {
                let v = u16::from_be_bytes([f[l.l3 + 2], f[l.l3 + 3]]);
                set16(f, l.l3 + 2, v.wrapping_add(d as i16 as u16));
            }
        }
        Mutation::Doff(n) => {
            if let Some(b) = f.get_mut(l.l4 + 12) {
                *b = (*b & 0x0f) | n << 4;
            }
        }
        Mutation::UdpLen(v) => set16(f, l.l4 + 4, v),
        Mutation::Frag(v) => set16(f, l.l3 + 6, v),
        Mutation::EtherType(v) => set16(f, l.l3 - 2, v),
    }
}

/// Bytes kept before and after the frame in a [`Guarded`] buffer.
pub const GUARD: usize = 64;

/// A frame at offset [`GUARD`] of a buffer, with `GUARD` bytes of `fill` on each side.
/// Functions get `[start, end)` of the frame only: a result that changes with `fill`
/// means a read outside the range, a changed guard byte a write outside it.
pub struct Guarded {
    pub buf: Vec<u8>,
    pub len: usize,
    pub fill: u8,
}

impl Guarded {
    pub fn new(frame: &[u8], fill: u8) -> Self {
        let mut buf = vec![fill; GUARD];
        buf.extend_from_slice(frame);
        buf.extend(std::iter::repeat_n(fill, GUARD));
        Guarded {
            buf,
            len: frame.len(),
            fill,
        }
    }

    /// `(start, end)` of the frame, from a mutable pointer (the functions may write).
    pub fn range(&mut self) -> (usize, usize) {
        let start = self.buf.as_mut_ptr() as usize + GUARD;
        (start, start + self.len)
    }

    pub fn frame(&self) -> &[u8] {
        &self.buf[GUARD..GUARD + self.len]
    }

    pub fn guards_intact(&self) -> bool {
        self.buf[..GUARD].iter().all(|&b| b == self.fill)
            && self.buf[GUARD + self.len..].iter().all(|&b| b == self.fill)
    }
}

/// The two fills every guarded check runs with: a read past the end sees zeros in one run
/// and 0xff in the other (every length, flag and data-offset field differs).
pub const FILLS: [u8; 2] = [0x00, 0xff];

/// Frames the data plane handles: Ethernet, no tag or one 802.1Q / 802.1ad tag, IPv4
/// with options (not fragmented, DF or not), then `l4` and up to `max_payload` bytes,
/// maybe link padding.
pub fn clean_frame(
    l4: impl Strategy<Value = (u8, L4)>,
    max_payload: usize,
) -> impl Strategy<Value = Frame> {
    let vlan = prop_oneof![
        Just(Vlan::None),
        (select(vec![TPID_8021Q, TPID_8021AD]), any::<u16>())
            .prop_map(|(tpid, tci)| Vlan::One { tpid, tci }),
    ];
    (
        (any::<[u8; 6]>(), any::<[u8; 6]>(), vlan),
        l4.prop_flat_map(|(proto, l4)| (ip(proto), Just(l4))),
        (payload(max_payload), padding(), prop::bool::ANY),
    )
        .prop_map(
            |((dst_mac, src_mac, vlan), (mut ip, l4), (payload, padding, df))| {
                ip.frag = if df { 0x4000 } else { 0 };
                Frame {
                    dst_mac,
                    src_mac,
                    vlan,
                    ether_type: ETH_IPV4,
                    ip,
                    l4,
                    payload,
                    padding,
                }
            },
        )
}

/// A [`clean_frame`] with a TCP segment.
pub fn tcp_frame(max_payload: usize) -> impl Strategy<Value = Frame> {
    clean_frame(tcp().prop_map(|t| (6u8, L4::Tcp(t))), max_payload)
}

/// A [`clean_frame`] with a UDP datagram (right length field, checksum or none).
pub fn udp_frame(max_payload: usize) -> impl Strategy<Value = Frame> {
    let udp = udp().prop_map(|mut u| {
        u.len = None;
        (17u8, L4::Udp(u))
    });
    clean_frame(udp, max_payload)
}

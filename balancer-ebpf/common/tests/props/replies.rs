//! `tcp_reply`: the frames built in place over a client's (or backend's) frame.
//!
//! Client segments are random [`frames::tcp_frame`]s: no tag or one tag, 0..40 bytes of
//! IP options, random TCP options (well-formed lists or random bytes), flags, sequence
//! numbers, payload and link padding. Each function is called with `end` at the frame's
//! end or cut anywhere before it, on the bytes before `end` in a [`Guarded`] buffer
//! (guard bytes from `end` on), once for each guard fill. Every call must:
//! - give the same result whatever the bytes outside `[start, end)` (no read outside);
//! - leave the guard bytes alone (no write outside);
//! - return `None` exactly in the documented cases, and then leave the frame untouched;
//! - return `Some` otherwise, having written nothing beyond the answer it reports, and
//!   the answer must be a well-formed frame that etherparse accepts, with correct IPv4
//!   and TCP checksums (computed by etherparse) and the fields RFC 9293 and the
//!   function's documentation require.

use etherparse::{
    LinkHeader, NetHeaders, PacketHeaders, TcpHeader, TcpOptionElement, TransportHeader,
};
use proptest::prelude::*;
use proptest::sample::Index;
use std::{format, vec, vec::Vec};

use super::frames::{self, Frame, Guarded, FILLS, L4};
use balancer_common::parse::{parse_slice, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use balancer_common::tcp_opts::SynOffer;
use balancer_common::tcp_reply::*;
use balancer_common::PROTO_TCP;

/// A client frame, its parse, and where `end` is put (`None`: at the frame's end).
#[derive(Clone, Debug)]
struct Case {
    frame: Vec<u8>,
    pkt: Packet,
    cut: Option<Index>,
}

impl Case {
    fn end_len(&self) -> usize {
        match self.cut {
            None => self.frame.len(),
            Some(i) => i.index(self.frame.len() + 1),
        }
    }

    fn tcp(&self) -> &[u8] {
        &self.frame[self.pkt.l4_off..]
    }

    fn seq(&self) -> u32 {
        u32::from_be_bytes(self.tcp()[4..8].try_into().unwrap())
    }

    fn ack(&self) -> u32 {
        u32::from_be_bytes(self.tcp()[8..12].try_into().unwrap())
    }

    fn window(&self) -> u16 {
        u16::from_be_bytes([self.tcp()[14], self.tcp()[15]])
    }
}

fn case_of(frame: impl Strategy<Value = Frame>) -> impl Strategy<Value = Case> {
    (
        frame,
        prop_oneof![2 => Just(None), 1 => any::<Index>().prop_map(Some)],
    )
        .prop_map(|(fr, cut)| {
            let frame = fr.build();
            let pkt = parse_slice(&frame).expect("generated frame parses");
            Case { frame, pkt, cut }
        })
}

/// Client segments, with flags biased towards what the function at hand acts on.
fn segments(flags: impl Strategy<Value = u8>) -> impl Strategy<Value = Case> {
    let frame = (frames::tcp_frame(80), flags).prop_map(|(mut fr, flags)| {
        if let L4::Tcp(t) = &mut fr.l4 {
            t.flags = flags;
        }
        fr
    });
    case_of(frame)
}

fn syn_flags() -> impl Strategy<Value = u8> {
    prop_oneof![
        // Plain SYNs, with the bits a SYN may carry besides (ECN setup, PSH, URG).
        3 => select_flags(&[0x02, 0xc2, 0x0a, 0x22, 0x42, 0x82]),
        1 => frames::tcp_flags(),
    ]
}

fn select_flags(f: &[u8]) -> impl Strategy<Value = u8> {
    proptest::sample::select(f.to_vec())
}

/// Runs `f` over the first `end_len` bytes of `frame`, put in a guarded buffer (both
/// fills), so that the guard starts at `end`; checks that the result does not depend on
/// the fill and the guards are intact, and returns the result and the whole frame
/// afterwards (its bytes from `end` on are out of the function's reach).
fn run<R: PartialEq + core::fmt::Debug>(
    frame: &[u8],
    end_len: usize,
    f: impl Fn(usize, usize) -> R,
) -> Result<(R, Vec<u8>), TestCaseError> {
    let mut out = Vec::new();
    for fill in FILLS {
        let mut g = Guarded::new(&frame[..end_len], fill);
        let (start, end) = g.range();
        let r = f(start, end);
        prop_assert!(g.guards_intact(), "write outside [start, end)");
        let mut after = g.frame().to_vec();
        after.extend_from_slice(&frame[end_len..]);
        out.push((r, after));
    }
    let (b, a) = (out.pop().unwrap(), out.pop().unwrap());
    prop_assert_eq!(&a, &b, "result depends on bytes outside [start, end)");
    Ok(a)
}

/// What every answer shares: etherparse accepts it; IPv4 without options, TOS 0, id 0,
/// DF, not a fragment, TTL 64, TCP, the right total length and a correct header
/// checksum; the TCP checksum correct, the reserved bits and NS clear, no payload.
/// The VLAN tag (if any) is the client's, unchanged.
fn check_answer(
    answer: &[u8],
    orig: &[u8],
    pkt: &Packet,
    tcp_len: usize,
) -> Result<(etherparse::Ipv4Header, TcpHeader), TestCaseError> {
    prop_assert_eq!(answer.len(), pkt.l3_off + 20 + tcp_len);
    prop_assert_eq!(
        &answer[12..pkt.l3_off],
        &orig[12..pkt.l3_off],
        "link type / tag"
    );
    let h = PacketHeaders::from_ethernet_slice(answer)
        .map_err(|e| TestCaseError::fail(format!("etherparse: {e:?}")))?;
    prop_assert!(matches!(h.link, Some(LinkHeader::Ethernet2(_))));
    prop_assert_eq!(h.vlan.is_some(), pkt.vlan);
    let Some(NetHeaders::Ipv4(ip, exts)) = h.net else {
        return Err(TestCaseError::fail("no IPv4 header"));
    };
    prop_assert!(exts.auth.is_none());
    prop_assert_eq!(ip.ihl(), 5);
    prop_assert_eq!((ip.dscp.value(), ip.ecn.value()), (0, 0));
    prop_assert_eq!(ip.identification, 0);
    prop_assert!(ip.dont_fragment && !ip.more_fragments);
    prop_assert_eq!(ip.fragment_offset.value(), 0);
    prop_assert_eq!(ip.time_to_live, REPLY_TTL);
    prop_assert_eq!(ip.protocol.0, PROTO_TCP);
    prop_assert_eq!(usize::from(ip.total_len), 20 + tcp_len);
    prop_assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "IPv4 checksum"
    );
    let Some(TransportHeader::Tcp(tcp)) = h.transport else {
        return Err(TestCaseError::fail("no TCP header"));
    };
    prop_assert_eq!(tcp.header_len(), tcp_len);
    prop_assert!(h.payload.slice().is_empty());
    prop_assert_eq!(answer[pkt.l3_off + 20 + 12] & 0x0f, 0, "reserved bits / NS");
    prop_assert_eq!(tcp.urgent_pointer, 0);
    prop_assert_eq!(
        tcp.checksum,
        tcp.calc_checksum_ipv4(&ip, &[]).unwrap(),
        "TCP checksum"
    );
    Ok((ip, tcp))
}

/// The TCP checksum of a frame and the one etherparse computes over the raw segment
/// (`TcpSlice`: etherparse's owned `TcpHeader` drops the reserved bits, so its checksum
/// is wrong for segments that have any set).
fn tcp_checksum(f: &[u8]) -> Result<(u16, u16), TestCaseError> {
    let sliced = etherparse::SlicedPacket::from_ethernet(f)
        .map_err(|e| TestCaseError::fail(format!("etherparse: {e:?}")))?;
    let (Some(etherparse::NetSlice::Ipv4(ip)), Some(etherparse::TransportSlice::Tcp(tcp))) =
        (&sliced.net, &sliced.transport)
    else {
        return Err(TestCaseError::fail("not TCP/IPv4"));
    };
    let h = ip.header();
    Ok((
        tcp.checksum(),
        tcp.calc_checksum_ipv4(h.source(), h.destination()).unwrap(),
    ))
}

fn flags_byte(answer: &[u8], pkt: &Packet) -> u8 {
    answer[pkt.l3_off + 20 + 13]
}

fn options(tcp: &TcpHeader) -> Vec<TcpOptionElement> {
    tcp.options_iterator().map(|o| o.unwrap()).collect()
}

/// Bytes of the client frame at these offsets, as numbers.
fn addr(f: &[u8], at: usize) -> [u8; 4] {
    f[at..at + 4].try_into().unwrap()
}

fn port(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// The MSS option as RFC 9293 (3.1, 3.7.1) reads it, looking at the first
/// `MAX_OPTION_STEPS` options: EOL ends the list, NOP is one byte, every other option
/// has a length byte (at least 2, within the option area); an MSS option must have
/// length 4. Only options starting at least 4 bytes before `visible` (bytes of the option
/// area readable in the frame) are looked at: none that starts later can be a whole MSS
/// option.
fn reference_mss(opts: &[u8], visible: usize) -> u16 {
    // The options are read whole or not at all (only whole areas are loaded).
    if visible < opts.len() {
        return DEFAULT_MSS;
    }
    let mut i = 0;
    let (mut ts, mut sack) = (false, false);
    for _ in 0..MAX_OPTION_STEPS {
        if i >= opts.len() {
            break;
        }
        match opts[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let Some(&len) = opts.get(i + 1) else {
                    break;
                };
                let len = usize::from(len);
                if len < 2 || i + len > opts.len() {
                    break;
                }
                // A known kind with the wrong length, or a second timestamps or SACK
                // option, ends the walk.
                let fits = match kind {
                    2 => len == 4,
                    3 => len == 3,
                    4 => len == 2,
                    8 => len == 10,
                    5 => len >= 10 && (len - 2) % 8 == 0,
                    _ => true,
                };
                if !fits || (kind == 8 && ts) || (kind == 5 && sack) {
                    break;
                }
                ts |= kind == 8;
                sack |= kind == 5;
                if kind == 2 {
                    return u16::from_be_bytes([opts[i + 2], opts[i + 3]]);
                }
                i += len;
            }
        }
    }
    DEFAULT_MSS
}

proptest! {
    #![proptest_config(super::config(2_000))]

    /// SYN -> SYN-ACK: RFC 9293 3.5 / 3.10.7.2 (LISTEN, SYN): `<SEQ=ISS><ACK=RCV.NXT>
    /// <CTL=SYN,ACK>` with RCV.NXT = SEG.SEQ + 1; addresses, ports and MACs swapped; one
    /// option, MSS; window 65535.
    #[test]
    fn synack_from_syn(c in segments(syn_flags()), isn in any::<u32>(), mss in any::<u16>()) {
        let end_len = c.end_len();
        let pkt = c.pkt;
        let (r, after) = run(&c.frame, end_len, |s, e| syn_to_synack(s, e, &pkt, isn, &SynOffer::mss_only(mss)))?;
        let plain_syn = pkt.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN;
        let fits = end_len >= synack_len(&pkt, &SynOffer::mss_only(mss)).max(pkt.l4_off + 20);
        let Some(n) = r else {
            prop_assert!(!(plain_syn && fits), "refused a plain SYN that fits");
            prop_assert_eq!(&after, &c.frame, "None but the frame changed");
            return Ok(());
        };
        prop_assert!(plain_syn && fits, "answered flags {:#x} / end {}", pkt.tcp_flags, end_len);
        prop_assert_eq!(n, synack_len(&pkt, &SynOffer::mss_only(mss)));
        prop_assert_eq!(&after[n..], &c.frame[n..], "wrote beyond the answer");
        let (ip, tcp) = check_answer(&after[..n], &c.frame, &pkt, 24)?;
        let l3 = pkt.l3_off;
        prop_assert_eq!(&after[0..6], &c.frame[6..12]);
        prop_assert_eq!(&after[6..12], &c.frame[0..6]);
        prop_assert_eq!(ip.source, addr(&c.frame, l3 + 16));
        prop_assert_eq!(ip.destination, addr(&c.frame, l3 + 12));
        prop_assert_eq!(tcp.source_port, port(&c.frame, pkt.l4_off + 2));
        prop_assert_eq!(tcp.destination_port, port(&c.frame, pkt.l4_off));
        prop_assert_eq!(flags_byte(&after, &pkt), TCP_SYN | TCP_ACK);
        prop_assert_eq!(tcp.sequence_number, isn);
        prop_assert_eq!(tcp.acknowledgment_number, c.seq().wrapping_add(1));
        prop_assert_eq!(tcp.window_size, SYNACK_WINDOW);
        prop_assert_eq!(options(&tcp), vec![TcpOptionElement::MaximumSegmentSize(mss)]);
    }

    /// RST for a segment, RFC 9293 3.10.7.1 ("If the incoming segment has the ACK bit
    /// set, the reset takes its sequence number from the ACK field of the segment;
    /// otherwise, the reset has sequence number zero and the ACK field is set to the sum
    /// of the sequence number and segment length of the incoming segment"), SEG.LEN
    /// counting the payload (not the link padding) and one each for SYN and FIN; never
    /// for a RST.
    #[test]
    fn rst_for_segment(c in segments(frames::tcp_flags())) {
        let end_len = c.end_len();
        let pkt = c.pkt;
        let (r, after) = run(&c.frame, end_len, |s, e| rst_for(s, e, &pkt))?;
        let answerable = pkt.tcp_flags & TCP_RST == 0;
        let fits = end_len >= rst_len(&pkt).max(pkt.l4_off + 20);
        let Some(n) = r else {
            prop_assert!(!(answerable && fits), "no RST for flags {:#x}", pkt.tcp_flags);
            prop_assert_eq!(&after, &c.frame, "None but the frame changed");
            return Ok(());
        };
        prop_assert!(answerable && fits, "RST for flags {:#x} / end {}", pkt.tcp_flags, end_len);
        prop_assert_eq!(n, rst_len(&pkt));
        prop_assert!(n <= c.frame.len(), "a RST never needs the frame to grow");
        prop_assert_eq!(&after[n..], &c.frame[n..], "wrote beyond the answer");
        let (ip, tcp) = check_answer(&after[..n], &c.frame, &pkt, 20)?;
        let l3 = pkt.l3_off;
        prop_assert_eq!(&after[0..6], &c.frame[6..12]);
        prop_assert_eq!(&after[6..12], &c.frame[0..6]);
        prop_assert_eq!(ip.source, addr(&c.frame, l3 + 16));
        prop_assert_eq!(ip.destination, addr(&c.frame, l3 + 12));
        prop_assert_eq!(tcp.source_port, port(&c.frame, pkt.l4_off + 2));
        prop_assert_eq!(tcp.destination_port, port(&c.frame, pkt.l4_off));
        prop_assert_eq!(tcp.window_size, 0);
        if pkt.tcp_flags & TCP_ACK != 0 {
            prop_assert_eq!(flags_byte(&after, &pkt), TCP_RST);
            prop_assert_eq!(tcp.sequence_number, c.ack());
            prop_assert_eq!(tcp.acknowledgment_number, 0);
        } else {
            let payload = (pkt.ip_end - pkt.payload_off) as u32;
            let seg_len = payload
                + u32::from(pkt.tcp_flags & TCP_SYN != 0)
                + u32::from(pkt.tcp_flags & TCP_FIN != 0);
            prop_assert_eq!(flags_byte(&after, &pkt), TCP_RST | TCP_ACK);
            prop_assert_eq!(tcp.sequence_number, 0);
            prop_assert_eq!(tcp.acknowledgment_number, c.seq().wrapping_add(seg_len));
        }
    }

    /// First data segment -> SYN to the backend: client -> backend, SEQ = the client's
    /// ISN, no ACK (RFC 9293: a SYN opening a connection carries no acknowledgement),
    /// the client's window, MSS option, no payload; MACs left for the caller.
    #[test]
    fn backend_syn_from_data_segment(
        c in segments(select_flags(&[0x10, 0x18, 0x11, 0x19])),
        backend in any::<[u8; 4]>(), bport in any::<u16>(), isn in any::<u32>(), mss in any::<u16>(),
    ) {
        let end_len = c.end_len();
        let pkt = c.pkt;
        let baddr = u32::from_ne_bytes(backend);
        let (r, after) = run(&c.frame, end_len, |s, e| {
            data_to_backend_syn(s, e, &pkt, baddr, bport.to_be(), isn, &SynOffer::mss_only(mss))
        })?;
        let fits = end_len >= backend_syn_len(&pkt, &SynOffer::mss_only(mss)).max(pkt.l4_off + 20);
        let Some(n) = r else {
            prop_assert!(!fits, "refused a segment that fits");
            prop_assert_eq!(&after, &c.frame, "None but the frame changed");
            return Ok(());
        };
        prop_assert!(fits);
        prop_assert_eq!(n, backend_syn_len(&pkt, &SynOffer::mss_only(mss)));
        prop_assert_eq!(&after[n..], &c.frame[n..], "wrote beyond the answer");
        prop_assert_eq!(&after[..12], &c.frame[..12], "MACs are the caller's");
        let (ip, tcp) = check_answer(&after[..n], &c.frame, &pkt, 24)?;
        let l3 = pkt.l3_off;
        prop_assert_eq!(ip.source, addr(&c.frame, l3 + 12));
        prop_assert_eq!(ip.destination, backend);
        prop_assert_eq!(tcp.source_port, port(&c.frame, pkt.l4_off));
        prop_assert_eq!(tcp.destination_port, bport);
        prop_assert_eq!(flags_byte(&after, &pkt), TCP_SYN);
        prop_assert_eq!(tcp.sequence_number, isn);
        prop_assert_eq!(tcp.acknowledgment_number, 0);
        prop_assert_eq!(tcp.window_size, c.window());
        prop_assert_eq!(options(&tcp), vec![TcpOptionElement::MaximumSegmentSize(mss)]);
    }

    /// `tcp_seq_ack` reads what etherparse reads, and only with the whole fixed header in
    /// `[start, end)`.
    #[test]
    fn seq_ack_numbers(c in segments(frames::tcp_flags())) {
        let end_len = c.end_len();
        let pkt = c.pkt;
        let (r, after) = run(&c.frame, end_len, |s, e| tcp_seq_ack(s, e, &pkt))?;
        prop_assert_eq!(&after, &c.frame);
        if end_len >= pkt.l4_off + 20 {
            prop_assert_eq!(r, Some((c.seq(), c.ack())));
        } else {
            prop_assert_eq!(r, None);
        }
    }

    /// `client_mss` is the reference option walk (exact, also with `end` cut inside the
    /// options, which then count as none), and agrees with etherparse's option iterator wherever that one reads the
    /// options up to the MSS option (it stops at kinds it does not know).
    #[test]
    fn client_mss_matches_references(c in segments(select_flags(&[0x02, 0xc2]))) {
        let end_len = c.end_len();
        let pkt = c.pkt;
        let (got, after) = run(&c.frame, end_len, |s, e| client_mss(s, e, &pkt))?;
        prop_assert_eq!(&after, &c.frame);
        let opt_start = pkt.l4_off + 20;
        let opts = &c.frame[opt_start..pkt.payload_off];
        prop_assert_eq!(got, reference_mss(opts, end_len.saturating_sub(opt_start)));
        if end_len == c.frame.len() {
            // Looking at the bytes past the option area changes nothing: the walk is exact.
            prop_assert_eq!(got, reference_mss(opts, usize::MAX));
            let mut expected = Some(DEFAULT_MSS);
            let (mut ts, mut sack) = (false, false);
            for (step, o) in etherparse::TcpOptionsIterator::from_slice(opts).enumerate() {
                match o {
                    Ok(TcpOptionElement::MaximumSegmentSize(m)) => {
                        expected = (step < MAX_OPTION_STEPS).then_some(m).or(Some(DEFAULT_MSS));
                        break;
                    }
                    // A second timestamps or SACK option ends the data plane's walk.
                    Ok(TcpOptionElement::Timestamp(..)) if ts => break,
                    Ok(TcpOptionElement::SelectiveAcknowledgement(..)) if sack => break,
                    Ok(TcpOptionElement::Timestamp(..)) => ts = true,
                    Ok(TcpOptionElement::SelectiveAcknowledgement(..)) => sack = true,
                    Ok(_) => {}
                    Err(_) => {
                        expected = None; // etherparse cannot tell
                        break;
                    }
                }
            }
            if let Some(m) = expected {
                prop_assert_eq!(got, m, "etherparse options {:?}", opts);
            }
        }
    }

    /// `set_seq` / `set_ack` on a real segment: the field takes the value, the TCP
    /// checksum stays correct (etherparse), nothing else changes; with `end` before the
    /// header's end: `None`, untouched.
    #[test]
    fn set_seq_and_ack(c in segments(frames::tcp_flags()), value in any::<u32>(), ack in prop::bool::ANY) {
        let end_len = c.end_len();
        let l4 = c.pkt.l4_off;
        let (r, after) = run(&c.frame, end_len, |s, e| {
            if ack { set_ack(s, e, l4, value) } else { set_seq(s, e, l4, value) }
        })?;
        if end_len < l4 + 20 {
            prop_assert_eq!(r, None);
            prop_assert_eq!(&after, &c.frame);
            return Ok(());
        }
        prop_assert_eq!(r, Some(()));
        let field = l4 + if ack { 8 } else { 4 };
        let mut expected = c.frame.clone();
        expected[field..field + 4].copy_from_slice(&value.to_be_bytes());
        expected[l4 + 16..l4 + 18].copy_from_slice(&after[l4 + 16..l4 + 18]);
        prop_assert_eq!(&after, &expected, "changed more than the field and the checksum");
        let (stored, computed) = tcp_checksum(&after)?;
        prop_assert_eq!(stored, computed, "TCP checksum");
    }

    /// `set_seq` / `set_ack` on anything: only the field and the checksum may change,
    /// and the one's-complement sum of the header is kept (the checksum stays as right or
    /// as wrong as it was).
    #[test]
    fn set_seq_and_ack_on_garbage(
        f in proptest::collection::vec(any::<u8>(), 0..100),
        l4 in 0usize..120, value in any::<u32>(), ack in prop::bool::ANY,
    ) {
        let (r, after) = run(&f, f.len(), |s, e| {
            if ack { set_ack(s, e, l4, value) } else { set_seq(s, e, l4, value) }
        })?;
        if l4 + 20 > f.len() {
            prop_assert_eq!(r, None);
            prop_assert_eq!(&after, &f);
            return Ok(());
        }
        prop_assert_eq!(r, Some(()));
        let field = l4 + if ack { 8 } else { 4 };
        for (i, (a, b)) in after.iter().zip(&f).enumerate() {
            let allowed = (field..field + 4).contains(&i) || (l4 + 16..l4 + 18).contains(&i);
            prop_assert!(allowed || a == b, "byte {} changed", i);
        }
        prop_assert_eq!(&after[field..field + 4], &value.to_be_bytes()[..]);
        let sum = |h: &[u8]| {
            let s: u32 = h.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
            balancer_common::csum::fold(s) % 0xffff
        };
        prop_assert_eq!(sum(&after[l4..l4 + 20]), sum(&f[l4..l4 + 20]));
    }
}

/// A backend's SYN-ACK (backend -> client) and the client's kept first segment, already
/// addressed client -> backend with a correct checksum.
#[derive(Clone, Debug)]
struct Splice {
    synack: Vec<u8>,
    pkt: Packet,
    segment: Vec<u8>,
}

fn splice() -> impl Strategy<Value = Splice> {
    let synack = frames::tcp_frame(0).prop_map(|mut fr| {
        if let L4::Tcp(t) = &mut fr.l4 {
            t.flags = TCP_SYN | TCP_ACK;
        }
        fr
    });
    (synack, frames::tcp(), frames::payload(200)).prop_map(|(synack_frame, mut seg, payload)| {
        let synack = synack_frame.build();
        let pkt = parse_slice(&synack).unwrap();
        // The segment: client -> backend, i.e. the SYN-ACK's addresses and ports
        // reversed.
        seg.sport = u16::from_be(pkt.key.dport);
        seg.dport = u16::from_be(pkt.key.sport);
        let ip = frames::Ip {
            tos: 0,
            id: 0,
            frag: 0x4000,
            ttl: 64,
            proto: PROTO_TCP,
            src: pkt.key.dst.to_ne_bytes(),
            dst: pkt.key.src.to_ne_bytes(),
            options: Vec::new(),
        };
        let seg_frame = Frame {
            dst_mac: [0; 6],
            src_mac: [0; 6],
            vlan: frames::Vlan::None,
            ether_type: frames::ETH_IPV4,
            ip,
            l4: L4::Tcp(seg),
            payload,
            padding: Vec::new(),
        };
        let segment = seg_frame.build()[14 + 20..].to_vec();
        Splice {
            synack,
            pkt,
            segment,
        }
    })
}

proptest! {
    #![proptest_config(super::config(1_000))]

    /// Backend SYN-ACK -> kept segment to the backend: MACs swapped, fresh IPv4 header
    /// client -> backend sized for the segment; with the segment stored behind it the
    /// frame is a valid TCP/IPv4 frame; then `set_ack` / `set_seq` keep it valid. Too
    /// small a frame or a segment length out of range: `None`, untouched.
    #[test]
    fn synack_becomes_kept_segment(s in splice(), ack in any::<u32>(), seq in any::<u32>(),
                                   short in 0usize..4, len_off in any::<Index>()) {
        let pkt = s.pkt;
        let need = pkt.l3_off + 20 + s.segment.len();
        let mut frame = s.synack.clone();
        frame.resize(need, 0x5a);
        // The frame as the caller has it: grown to `need`, or (short > 0) too short.
        let frame_len = if short == 0 { need } else { need - short };
        let (r, after) = run(&frame[..frame_len], frame_len, |st, e| {
            synack_to_segment_headers(st, e, &pkt, s.segment.len())
        })?;
        if short > 0 {
            prop_assert_eq!(r, None);
            prop_assert_eq!(&after[..], &frame[..frame_len]);
            return Ok(());
        }
        let l4 = pkt.l3_off + 20;
        prop_assert_eq!(r, Some(l4));
        prop_assert_eq!(&after[l4..], &frame[l4..], "wrote beyond the headers");
        prop_assert_eq!(&after[0..6], &frame[6..12]);
        prop_assert_eq!(&after[6..12], &frame[0..6]);
        prop_assert_eq!(&after[12..pkt.l3_off], &frame[12..pkt.l3_off]);
        let mut f = after;
        f[l4..].copy_from_slice(&s.segment);
        let check = |f: &[u8], seq: u32, ack: u32| -> Result<(), TestCaseError> {
            let h = PacketHeaders::from_ethernet_slice(f)
                .map_err(|e| TestCaseError::fail(format!("etherparse: {e:?}")))?;
            let (Some(NetHeaders::Ipv4(ip, _)), Some(TransportHeader::Tcp(tcp))) = (h.net, h.transport) else {
                return Err(TestCaseError::fail("not TCP/IPv4"));
            };
            prop_assert_eq!(ip.ihl(), 5);
            prop_assert_eq!(usize::from(ip.total_len), 20 + s.segment.len());
            prop_assert_eq!(ip.header_checksum, ip.calc_header_checksum());
            prop_assert_eq!(ip.source, pkt.key.dst.to_ne_bytes());
            prop_assert_eq!(ip.destination, pkt.key.src.to_ne_bytes());
            prop_assert!(ip.dont_fragment && !ip.more_fragments && ip.fragment_offset.value() == 0);
            prop_assert_eq!(ip.time_to_live, REPLY_TTL);
            prop_assert_eq!((tcp.sequence_number, tcp.acknowledgment_number), (seq, ack));
            let (stored, computed) = tcp_checksum(f)?;
            prop_assert_eq!(stored, computed, "TCP checksum");
            Ok(())
        };
        let seg_seq = u32::from_be_bytes(s.segment[4..8].try_into().unwrap());
        let seg_ack = u32::from_be_bytes(s.segment[8..12].try_into().unwrap());
        check(&f, seg_seq, seg_ack)?;
        let (r, f) = run(&f, f.len(), |st, e| set_ack(st, e, l4, ack))?;
        prop_assert_eq!(r, Some(()));
        check(&f, seg_seq, ack)?;
        let (r, f) = run(&f, f.len(), |st, e| set_seq(st, e, l4, seq))?;
        prop_assert_eq!(r, Some(()));
        check(&f, seq, ack)?;

        // Segment lengths outside 20..=65515: refused, whatever the frame's size.
        let bad = bad_segment_len(len_off);
        let mut big = s.synack.clone();
        big.resize(pkt.l3_off + 20 + bad.max(20), 0);
        let (r, after) = run(&big, big.len(), |st, e| synack_to_segment_headers(st, e, &pkt, bad))?;
        prop_assert_eq!(r, None, "segment length {}", bad);
        prop_assert_eq!(&after, &big);
    }

}

proptest! {
    #![proptest_config(super::config(4_000))]

    /// Garbage: random bytes and a `Packet` with random offsets (within a page) and
    /// fields. Whatever the functions return, they read and write only inside
    /// `[start, end)`, and `None` leaves the frame untouched.
    #[test]
    fn garbage_input_stays_in_bounds(
        f in proptest::collection::vec(any::<u8>(), 0..120),
        offs in (0usize..100, 0usize..100, 0usize..100, 0usize..100),
        key in (any::<u32>(), any::<u32>(), any::<u16>(), any::<u16>(), prop_oneof![Just(6u8), any::<u8>()]),
        (flags, vlan, seg_len) in (any::<u8>(), prop::bool::ANY, 0usize..200),
        (isn, mss, value) in (any::<u32>(), any::<u16>(), any::<u32>()),
    ) {
        let pkt = Packet {
            l3_off: offs.0,
            l4_off: offs.0 + offs.1,
            payload_off: offs.0 + offs.1 + offs.2,
            ip_end: offs.0 + offs.1 + offs.2 + offs.3,
            key: balancer_common::FlowKey::new(key.0, key.1, key.2, key.3, key.4),
            tcp_flags: flags,
            ttl: 64,
            first_fragment: false,
            vlan,
        };
        let n = f.len();
        // `None`: untouched. `Some(len)`: the answer fits in the frame.
        let answer = |r: Option<usize>, after: &[u8]| -> Result<(), TestCaseError> {
            match r {
                None => prop_assert_eq!(after, &f[..]),
                Some(len) => prop_assert!(len <= n, "answer of {} bytes in {}", len, n),
            }
            Ok(())
        };
        let (r, after) = run(&f, n, |s, e| syn_to_synack(s, e, &pkt, isn, &SynOffer::mss_only(mss)))?;
        answer(r, &after)?;
        let (r, after) = run(&f, n, |s, e| rst_for(s, e, &pkt))?;
        answer(r, &after)?;
        let (r, after) = run(&f, n, |s, e| data_to_backend_syn(s, e, &pkt, value, 80, isn, &SynOffer::mss_only(mss)))?;
        answer(r, &after)?;
        let (r, after) = run(&f, n, |s, e| synack_to_segment_headers(s, e, &pkt, seg_len))?;
        answer(r.map(|l4| l4 + seg_len), &after)?;
        let (_, after) = run(&f, n, |s, e| tcp_seq_ack(s, e, &pkt))?;
        prop_assert_eq!(&after, &f);
        let (_, after) = run(&f, n, |s, e| client_mss(s, e, &pkt))?;
        prop_assert_eq!(&after, &f);
    }
}

/// A segment length `synack_to_segment_headers` must refuse: below 20 or above 65515.
fn bad_segment_len(i: Index) -> usize {
    let k = i.index(40);
    if k < 20 {
        k
    } else {
        0xffff - 20 + 1 + (k - 20) * 1000
    }
}

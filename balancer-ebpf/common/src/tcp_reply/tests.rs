//! Unit tests of the tcp_reply module.

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
    let len = syn_to_synack(start, end, &pkt, COOKIE, &SynOffer::mss_only(1460)).expect("SYN-ACK");
    assert_eq!(len, synack_len(&pkt, &SynOffer::mss_only(1460)));
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
    assert_eq!(synack_len(&pkt, &SynOffer::mss_only(1460)), 58);
    let orig = f.clone();
    let (start, end) = range(&mut f);
    assert_eq!(
        syn_to_synack(start, end, &pkt, COOKIE, &SynOffer::mss_only(1460)),
        None
    );
    assert_eq!(f, orig);
    // Padded to the Ethernet minimum (as received from a NIC), or grown by the caller:
    // the same Packet still applies.
    f.resize(60, 0);
    let (start, end) = range(&mut f);
    let len = syn_to_synack(start, end, &pkt, COOKIE, &SynOffer::mss_only(1460)).unwrap();
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
    assert_eq!(
        syn_to_synack(start, end, &pkt, COOKIE, &SynOffer::mss_only(1460)),
        None
    );
    f.resize(synack_len(&pkt, &SynOffer::mss_only(1460)), 0);
    let (start, end) = range(&mut f);
    assert!(syn_to_synack(start, end, &pkt, COOKIE, &SynOffer::mss_only(1460)).is_some());
    check_synack(&f, true);
}

#[test]
fn synack_mss_is_encoded_big_endian() {
    for mss in [536u16, 1220, 1460, 8960, 0xabcd] {
        let mut f = frame(&Syn::default());
        let pkt = parse_slice(&f).unwrap();
        let (start, end) = range(&mut f);
        let len = syn_to_synack(start, end, &pkt, COOKIE, &SynOffer::mss_only(mss)).unwrap();
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
            syn_to_synack(start, end, &pkt, COOKIE, &SynOffer::mss_only(1460)),
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
        for cut in 0..synack_len(&pkt, &SynOffer::mss_only(1460)) {
            let mut f = full.clone();
            let start = f.as_mut_ptr() as usize;
            assert_eq!(
                syn_to_synack(start, start + cut, &pkt, COOKIE, &SynOffer::mss_only(1460)),
                None
            );
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
    assert_eq!(
        syn_to_synack(start, end, &pkt, COOKIE, &SynOffer::mss_only(1460)),
        None
    );
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
    let len = data_to_backend_syn(
        start,
        end,
        &pkt,
        backend,
        8080u16.to_be(),
        CLIENT_ISN,
        &SynOffer::mss_only(1440),
    )
    .expect("SYN");
    assert_eq!(len, backend_syn_len(&pkt, &SynOffer::mss_only(1440)));
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
    assert_eq!(
        data_to_backend_syn(start, end, &pkt, 1, 2, 3, &SynOffer::mss_only(1460)),
        None
    );
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

//! Decoding and checking output frames: every header field and both checksums, compared
//! with the input (a rewrite) or with the frame a test expects ([`check_frame`]).

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{anyhow, bail, Context, Result};
use etherparse::{NetHeaders, PacketHeaders, TransportHeader, VlanHeader};

use super::{Frame, TcpFlags};
use crate::testrun::{backend_mac, BACKEND_IF_MAC, CLIENT_IF_MAC, CLIENT_MAC};
use balancer_common::csum;

#[derive(Clone, Debug)]
pub struct Decoded {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub ttl: u8,
    pub proto: u8,
    pub ip_options: Vec<u8>,
    pub tcp_flags: Option<TcpFlags>,
    pub seq: Option<u32>,
    pub ack: Option<u32>,
    pub window: Option<u16>,
    pub tcp_options: Vec<u8>,
    pub ip_id: u16,
    pub dont_fragment: bool,
    /// DSCP and ECN (the old TOS byte).
    pub tos: u8,
    /// The checksum fields as found (UDP 0 = "no checksum").
    pub ip_checksum: u16,
    pub l4_checksum: u16,
    pub payload: Vec<u8>,
}

/// Decodes `frame` with etherparse and checks that the IPv4 header checksum and the
/// TCP/UDP checksum are correct (a UDP checksum of 0 means "none" and is accepted).
pub fn decode_checked(frame: &[u8]) -> Result<Decoded> {
    let h = PacketHeaders::from_ethernet_slice(frame).map_err(|e| anyhow!("etherparse: {e}"))?;
    let Some(etherparse::LinkHeader::Ethernet2(eth)) = h.link else {
        bail!("no Ethernet header");
    };
    let vlan = match h.vlan {
        None => None,
        Some(VlanHeader::Single(v)) => Some(v.vlan_id.value()),
        Some(VlanHeader::Double(_)) => bail!("double VLAN tag"),
    };
    let Some(NetHeaders::Ipv4(ip, _)) = h.net else {
        bail!("not IPv4");
    };
    let l3 = if vlan.is_some() { 18 } else { 14 };
    let ihl = (frame[l3] & 0x0f) as usize * 4;
    if csum::checksum(&frame[l3..l3 + ihl], 0) != 0 {
        bail!(
            "bad IPv4 header checksum {:#06x} (expected {:#06x})",
            ip.header_checksum,
            ip.calc_header_checksum()
        );
    }
    if ip.calc_header_checksum() != ip.header_checksum {
        bail!("etherparse disagrees on the IPv4 header checksum");
    }
    let ip_end = l3 + ip.total_len as usize;
    let segment = &frame[l3 + ihl..ip_end];
    let mut tcp_fields = (None, None, None, Vec::new());
    let (sport, dport, flags, l4_checksum, payload) = match h.transport {
        Some(TransportHeader::Tcp(t)) => {
            tcp_fields = (
                Some(t.sequence_number),
                Some(t.acknowledgment_number),
                Some(t.window_size),
                t.options.as_slice().to_vec(),
            );
            (
                t.source_port,
                t.destination_port,
                Some(TcpFlags {
                    syn: t.syn,
                    ack: t.ack,
                    fin: t.fin,
                    rst: t.rst,
                    psh: t.psh,
                }),
                t.checksum,
                segment[t.header_len()..].to_vec(),
            )
        }
        Some(TransportHeader::Udp(u)) => (
            u.source_port,
            u.destination_port,
            None,
            u.checksum,
            segment[8..].to_vec(),
        ),
        _ => bail!("neither TCP nor UDP"),
    };
    let (seq, ack, window, tcp_options) = tcp_fields;
    let proto = ip.protocol.0;
    let (src, dst) = (Ipv4Addr::from(ip.source), Ipv4Addr::from(ip.destination));
    if !(proto == 17 && l4_checksum == 0) && super::l4_checksum(src, dst, proto, segment) != 0 {
        bail!(
            "bad {} checksum {l4_checksum:#06x}",
            if proto == 6 { "TCP" } else { "UDP" }
        );
    }
    Ok(Decoded {
        src_mac: eth.source,
        dst_mac: eth.destination,
        vlan,
        src: SocketAddrV4::new(Ipv4Addr::from(ip.source), sport),
        dst: SocketAddrV4::new(Ipv4Addr::from(ip.destination), dport),
        ttl: ip.time_to_live,
        proto,
        ip_options: ip.options.as_slice().to_vec(),
        tcp_flags: flags,
        seq,
        ack,
        window,
        tcp_options,
        ip_id: ip.identification,
        dont_fragment: ip.dont_fragment,
        tos: frame[l3 + 1],
        ip_checksum: ip.header_checksum,
        l4_checksum,
        payload,
    })
}

/// Checks that `out` is `input` with exactly the rewrite of a forwarded packet applied:
/// new addresses/ports, TTL - 1, new MACs, valid checksums, everything else unchanged
/// (payload, options, flags, sequence numbers, VLAN tag).
pub fn check_forwarded(
    input: &[u8],
    out: &[u8],
    new_src: SocketAddrV4,
    new_dst: SocketAddrV4,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
) -> Result<Decoded> {
    let i = decode_checked(input).context("input frame")?;
    let o = decode_checked(out).context("output frame")?;
    if out.len() != input.len() {
        bail!("length changed: {} -> {}", input.len(), out.len());
    }
    let want = (new_src, new_dst, src_mac, dst_mac, i.ttl.wrapping_sub(1));
    let got = (o.src, o.dst, o.src_mac, o.dst_mac, o.ttl);
    if want != got {
        bail!("rewrite differs: want (src, dst, smac, dmac, ttl) = {want:?}, got {got:?}");
    }
    let (same, o_same) = (unchanged_by_rewrite(&i), unchanged_by_rewrite(&o));
    if same != o_same {
        bail!("fields that must not change changed: {same:?} -> {o_same:?}");
    }
    if i.proto == 17 && (i.l4_checksum == 0) != (o.l4_checksum == 0) {
        bail!(
            "UDP checksum presence changed: {:#06x} -> {:#06x}",
            i.l4_checksum,
            o.l4_checksum
        );
    }
    Ok(o)
}

type UnchangedByRewrite<'a> = (
    Option<u16>,
    u8,
    &'a [u8],
    Option<TcpFlags>,
    (Option<u32>, Option<u32>, Option<u16>, &'a [u8]),
    (u16, bool, u8),
    &'a [u8],
);

/// The fields a NAT rewrite must leave as they were: VLAN tag, protocol, IP options, TCP
/// flags, sequence numbers, window and options, IPv4 id, DF and TOS, payload.
fn unchanged_by_rewrite(d: &Decoded) -> UnchangedByRewrite<'_> {
    (
        d.vlan,
        d.proto,
        &d.ip_options,
        d.tcp_flags,
        (d.seq, d.ack, d.window, &d.tcp_options),
        (d.ip_id, d.dont_fragment, d.tos),
        &d.payload,
    )
}

/// [`check_forwarded`] for the forward direction: from `client` to `backend`, leaving the
/// backend-side interface ([`BACKEND_IF_MAC`]) for the backend's MAC ([`backend_mac`]).
pub fn check_to_backend(
    input: &[u8],
    out: &[u8],
    client: SocketAddrV4,
    backend: SocketAddrV4,
) -> Result<Decoded> {
    check_forwarded(
        input,
        out,
        client,
        backend,
        BACKEND_IF_MAC,
        backend_mac(*backend.ip()),
    )
}

/// [`check_forwarded`] for a reply translated back: from the `service` address to
/// `client`, leaving the client-side interface ([`CLIENT_IF_MAC`]) for [`CLIENT_MAC`].
pub fn check_to_client(
    input: &[u8],
    out: &[u8],
    service: SocketAddrV4,
    client: SocketAddrV4,
) -> Result<Decoded> {
    check_forwarded(input, out, service, client, CLIENT_IF_MAC, CLIENT_MAC)
}

/// Checks that `out` is exactly the frame `want` describes: decodes it with its checksums
/// verified by recomputation ([`decode_checked`]), reports every header field that
/// differs, then compares the bytes (which also covers what [`Decoded`] leaves out:
/// header lengths, urgent pointer, padding, the checksum values themselves).
pub fn check_frame(out: &[u8], want: &Frame) -> Result<Decoded> {
    let o = decode_checked(out).context("output frame")?;
    let want_bytes = want.build();
    let w = decode_checked(&want_bytes).context("expected frame")?;
    let mut diffs = Vec::new();
    macro_rules! compare {
        ($($field:ident),*) => {
            $(
                if o.$field != w.$field {
                    diffs.push(format!(
                        "{}: want {:?}, got {:?}",
                        stringify!($field),
                        w.$field,
                        o.$field
                    ));
                }
            )*
        };
    }
    compare!(
        src_mac,
        dst_mac,
        vlan,
        src,
        dst,
        ttl,
        proto,
        ip_options,
        tcp_flags,
        seq,
        ack,
        window,
        tcp_options,
        ip_id,
        dont_fragment,
        tos
    );
    if o.payload != w.payload {
        let at = o
            .payload
            .iter()
            .zip(&w.payload)
            .position(|(a, b)| a != b)
            .unwrap_or(o.payload.len().min(w.payload.len()));
        diffs.push(format!(
            "payload: want {} bytes, got {} (first difference at byte {at})",
            w.payload.len(),
            o.payload.len()
        ));
    }
    if !diffs.is_empty() {
        bail!(
            "frame differs from the expected one:\n  {}",
            diffs.join("\n  ")
        );
    }
    if out != want_bytes {
        bail!(
            "frame bytes differ although the decoded fields agree:\n  want {want_bytes:02x?}\n  got  {out:02x?}"
        );
    }
    Ok(o)
}

//! The templates of valid frames a case starts from, and the random pieces they are
//! made of (flags, options, HTTP requests).

use super::*;

/// Kinds of base frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Template {
    NatSyn,
    NatAck,
    NatData,
    NatFin,
    NatRst,
    NatOddFlags,
    NatReply,
    UdpRequest,
    UdpReply,
    DownServiceSyn,
    CookieSyn,
    CookieHandshakeAck,
    CookieFirstSegment,
    CookieBadCookie,
    CookieBackendSynAck,
    CookieBackendRst,
    CookieBackendAck,
    CookieSplicedClient,
    CookieSplicedBackend,
    CookieClientClose,
    OtherTcp,
    OtherUdp,
    Icmp,
    Arp,
    Ipv6,
    Garbage,
}

/// Templates with their relative weights.
pub(super) const TEMPLATES: [(Template, usize); 26] = [
    (Template::NatSyn, 8),
    (Template::NatAck, 4),
    (Template::NatData, 5),
    (Template::NatFin, 2),
    (Template::NatRst, 2),
    (Template::NatOddFlags, 2),
    (Template::NatReply, 8),
    (Template::UdpRequest, 5),
    (Template::UdpReply, 3),
    (Template::DownServiceSyn, 1),
    (Template::CookieSyn, 6),
    (Template::CookieHandshakeAck, 3),
    (Template::CookieFirstSegment, 12),
    (Template::CookieBadCookie, 3),
    (Template::CookieBackendSynAck, 8),
    (Template::CookieBackendRst, 2),
    (Template::CookieBackendAck, 2),
    (Template::CookieSplicedClient, 5),
    (Template::CookieSplicedBackend, 5),
    (Template::CookieClientClose, 2),
    (Template::OtherTcp, 2),
    (Template::OtherUdp, 1),
    (Template::Icmp, 1),
    (Template::Arp, 1),
    (Template::Ipv6, 1),
    (Template::Garbage, 1),
];

impl Template {
    pub fn name(self) -> &'static str {
        match self {
            Template::NatSyn => "nat_syn",
            Template::NatAck => "nat_ack",
            Template::NatData => "nat_data",
            Template::NatFin => "nat_fin",
            Template::NatRst => "nat_rst",
            Template::NatOddFlags => "nat_odd_flags",
            Template::NatReply => "nat_reply",
            Template::UdpRequest => "udp_request",
            Template::UdpReply => "udp_reply",
            Template::DownServiceSyn => "down_service_syn",
            Template::CookieSyn => "cookie_syn",
            Template::CookieHandshakeAck => "cookie_handshake_ack",
            Template::CookieFirstSegment => "cookie_first_segment",
            Template::CookieBadCookie => "cookie_bad_cookie",
            Template::CookieBackendSynAck => "cookie_backend_synack",
            Template::CookieBackendRst => "cookie_backend_rst",
            Template::CookieBackendAck => "cookie_backend_ack",
            Template::CookieSplicedClient => "cookie_spliced_client",
            Template::CookieSplicedBackend => "cookie_spliced_backend",
            Template::CookieClientClose => "cookie_client_close",
            Template::OtherTcp => "other_tcp",
            Template::OtherUdp => "other_udp",
            Template::Icmp => "icmp",
            Template::Arp => "arp",
            Template::Ipv6 => "ipv6",
            Template::Garbage => "garbage",
        }
    }

    pub(super) fn pick(rng: &mut Rng) -> Template {
        let total: usize = TEMPLATES.iter().map(|(_, w)| w).sum();
        let mut x = rng.below(total);
        for (t, w) in TEMPLATES {
            if x < w {
                return t;
            }
            x -= w;
        }
        Template::NatSyn
    }
}

/// One generated frame.
#[derive(Clone, Debug)]
pub struct Case {
    pub template: Template,
    pub frame: Vec<u8>,
    pub ingress: Ingress,
    pub mutations: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    Client,
    Backend,
}

pub(super) enum Base {
    Frame(Frame, Origin),
    Raw(Vec<u8>, Origin),
}

pub(super) const fn flags(syn: bool, ack: bool, fin: bool, rst: bool, psh: bool) -> TcpFlags {
    TcpFlags {
        syn,
        ack,
        fin,
        rst,
        psh,
    }
}

pub(super) fn random_flags(rng: &mut Rng) -> TcpFlags {
    let b = rng.u8();
    flags(b & 1 != 0, b & 2 != 0, b & 4 != 0, b & 8 != 0, b & 16 != 0)
}

pub(super) fn client_addr(rng: &mut Rng) -> SocketAddrV4 {
    let ip = *rng.pick(&CLIENTS);
    let port = if rng.one_in(8) {
        rng.u16().max(1)
    } else {
        CLIENT_PORT_BASE + rng.below(CLIENT_PORTS) as u16
    };
    SocketAddrV4::new(ip, port)
}

/// A frame from the backend `from` to `to` (the backend's MAC to the balancer's
/// backend-side MAC).
pub(super) fn from_backend(f: Frame) -> Frame {
    let mac = backend_mac(*f.src.ip());
    f.macs(mac, BACKEND_IF_MAC)
}

pub(super) fn tcp_to(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    fl: TcpFlags,
    seq: u32,
    ack: u32,
) -> Frame {
    Frame::tcp(src, dst, fl).seq(seq).ack(ack)
}

pub(super) fn mss_choice(rng: &mut Rng) -> u16 {
    *rng.pick(&[536, 1220, 1440, 1460, 1460, 4312, 8960, 100, 0, 65535, 1400])
}

/// SYN options: Linux-like, another mix of MSS, SACK-permitted, timestamps and window
/// scale, MSS only, or none.
pub(super) fn syn_options(rng: &mut Rng, mss: u16) -> Vec<u8> {
    match rng.below(6) {
        0 | 1 => linux_syn_options(mss),
        2 => {
            let o = client_options(rng);
            let ts = o.timestamps.then(|| (rng.u32(), 0));
            // Sometimes a window scale above 14, which the data plane clamps.
            let ws = o.wscale.map(|s| if rng.one_in(8) { 15 + s } else { s });
            syn_option_bytes(mss, o.sack_ok, ts, ws)
        }
        3 => mss_option(mss),
        _ => Vec::new(),
    }
}

/// Options of a segment after the SYN, as real stacks send them (none; timestamps;
/// timestamps and 1 to 3 SACK blocks near `ack`), for the splice's translation.
pub(super) fn spliced_segment_options(rng: &mut Rng, ack: u32) -> Vec<u8> {
    match rng.below(4) {
        0 => Vec::new(),
        1 => ts_option(rng.u32(), rng.u32()),
        _ => {
            let blocks: Vec<(u32, u32)> = (0..rng.range(1, 4))
                .map(|i| {
                    let l = ack.wrapping_add(1000 * (i as u32 + 1));
                    (l, l.wrapping_add(500))
                })
                .collect();
            [ts_option(rng.u32(), rng.u32()), sack_option(&blocks)].concat()
        }
    }
}

/// Random SYN options besides the MSS.
pub(super) fn client_options(rng: &mut Rng) -> ClientOptions {
    ClientOptions {
        wscale: if rng.one_in(3) {
            None
        } else {
            Some(rng.below(15) as u8)
        },
        sack_ok: rng.one_in(2),
        timestamps: rng.one_in(2),
    }
}

/// TCP option soup: up to 40 bytes of valid, odd and broken options.
pub(super) fn option_soup(rng: &mut Rng) -> Vec<u8> {
    let mut o = Vec::new();
    let n = rng.range(1, 12);
    for _ in 0..n {
        let room = 40 - o.len();
        if room == 0 {
            break;
        }
        let opt: Vec<u8> = match rng.below(12) {
            0 => vec![1],
            1 => vec![0],
            2 => {
                let m = rng.u16().to_be_bytes();
                vec![2, 4, m[0], m[1]]
            }
            3 => vec![2, *rng.pick(&[0, 1, 2, 3, 5, 40, 255]), 5, 0xb4],
            4 => vec![3, 3, rng.u8()],
            5 => vec![4, 2],
            6 => {
                let mut v = vec![8, 10];
                v.extend(rng.bytes(8));
                v
            }
            7 => {
                let n = 2 + 8 * rng.range(1, 5);
                let mut v = vec![5, n as u8];
                v.extend(rng.bytes(n - 2));
                v
            }
            8 => vec![rng.u8(), 0],
            9 => vec![rng.u8(), 1],
            10 => {
                let n = rng.range(2, 12);
                let mut v = vec![rng.u8(), n as u8];
                v.extend(rng.bytes(n - 2));
                v
            }
            _ => vec![rng.u8(), rng.u8()],
        };
        o.extend_from_slice(&opt[..opt.len().min(room)]);
    }
    o
}

pub(super) fn ip_options(rng: &mut Rng) -> Vec<u8> {
    let mut o = match rng.below(6) {
        0 => vec![1; rng.range(1, 41)],
        1 => {
            // Record route with room for n addresses.
            let n = rng.range(1, 10);
            let mut v = vec![7, (3 + 4 * n) as u8, 4];
            v.resize(3 + 4 * n, 0);
            v
        }
        2 => {
            let n = rng.range(1, 9);
            let mut v = vec![68, (4 + 4 * n) as u8, 5, 0];
            v.resize(4 + 4 * n, 0);
            v
        }
        3 => vec![148, 4, 0, 0],
        4 => vec![0; rng.range(1, 41)],
        _ => rng.bytes_in(1, 41),
    };
    o.truncate(40);
    o
}

/// An HTTP request head with a session cookie in one of many shapes (or none).
pub(super) fn http_request(rng: &mut Rng) -> Vec<u8> {
    let tokens: [&[u8]; 12] = [
        b"app1",
        b"app2",
        b"app3",
        b"app4",
        b"app1",
        b"app2",
        b"APP1",
        b"zz9",
        b"",
        b"app1 ",
        b"\"app2\"",
        b"app\x001",
    ];
    let mut primary: Vec<u8> = rng.pick(&tokens).to_vec();
    if rng.one_in(20) {
        primary = vec![b'a'; rng.range(60, 70)];
    }
    let secondary: Option<Vec<u8>> = if rng.one_in(3) {
        None
    } else {
        Some(rng.pick(&tokens).to_vec())
    };
    let session: &[u8] = pick_b(
        rng,
        &[
            b"a1b2c3d4",
            b"",
            b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            b"s",
        ],
    );
    let name: &[u8] = pick_b(
        rng,
        &[
            b"JSESSIONID",
            b"JSESSIONID",
            b"JSESSIONID",
            b"JSESSIONID",
            b"jsessionid",
            b"XJSESSIONID",
            b"JSESSIONID2",
            b"JSESSIONID ",
        ],
    );
    let eol: &[u8] = pick_b(
        rng,
        &[b"\r\n", b"\r\n", b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r"],
    );
    let method: &[u8] = pick_b(
        rng,
        &[
            b"GET", b"GET", b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"DELETE", b"PATCH",
            b"get", b"GETX", b"G", b"PRI", b"CONNECT",
        ],
    );
    let header: &[u8] = pick_b(
        rng,
        &[
            b"Cookie",
            b"Cookie",
            b"Cookie",
            b"cookie",
            b"COOKIE",
            b"Cookie2",
            b"X-Cookie",
            b"Set-Cookie",
        ],
    );
    let sep: &[u8] = pick_b(rng, &[b": ", b": ", b":", b":\t", b" : ", b":   "]);

    let mut value = Vec::new();
    value.extend_from_slice(session);
    if !rng.one_in(15) {
        value.push(b'!');
        value.extend_from_slice(&primary);
        if let Some(s) = &secondary {
            value.push(b'!');
            value.extend_from_slice(s);
        }
    }
    if rng.one_in(6) {
        value.insert(0, b'"');
        value.push(b'"');
    }
    let mut pair = Vec::new();
    pair.extend_from_slice(name);
    pair.extend_from_slice(pick_b(rng, &[b"=", b"=", b"=", b" = ", b"= "]));
    pair.extend_from_slice(&value);
    let mut cookie_line = Vec::new();
    cookie_line.extend_from_slice(header);
    cookie_line.extend_from_slice(sep);
    if rng.one_in(2) {
        cookie_line.extend_from_slice(b"theme=dark; ");
    }
    cookie_line.extend_from_slice(&pair);
    if rng.one_in(3) {
        cookie_line.extend_from_slice(b"; lang=en");
    }
    if rng.one_in(10) {
        cookie_line.extend_from_slice(b"; JSESSIONID=zzz!app2!app1");
    }

    let mut h = Vec::new();
    h.extend_from_slice(method);
    h.extend_from_slice(b" /app/cart?item=42 HTTP/1.1");
    h.extend_from_slice(eol);
    h.extend_from_slice(b"Host: shop.example.test");
    h.extend_from_slice(eol);
    let cookie_at = rng.below(4);
    for i in 0..4 {
        if i == cookie_at && !rng.one_in(10) {
            h.extend_from_slice(&cookie_line);
            h.extend_from_slice(eol);
        }
        match rng.below(6) {
            0 => h.extend_from_slice(b"Accept: */*"),
            1 => h.extend_from_slice(b"User-Agent: fuzz/1.0"),
            2 => {
                // A long header line, sometimes beyond the scanned 2048 bytes.
                let n = *rng.pick(&[100, 600, 1500, 2100, 2600]);
                h.extend_from_slice(b"X-Long: ");
                h.extend((0..n).map(|i| b'a' + (i % 26) as u8));
            }
            3 => h.extend_from_slice(b"Cookie: other=1"),
            _ => continue,
        }
        h.extend_from_slice(eol);
    }
    if !rng.one_in(8) {
        h.extend_from_slice(eol);
    }
    h
}

/// First-segment payloads: HTTP heads in many shapes, long heads, TLS, binary.
pub(super) fn first_payload(rng: &mut Rng) -> Vec<u8> {
    let mut p = match rng.below(20) {
        0..=12 => http_request(rng),
        13 | 14 => {
            let len = rng.range(600, 2600);
            let tokens = ["app1", "app2", "app3", "app4", "zz9"];
            request_head(
                len,
                rng.below(101) as f64 / 100.0,
                tokens[rng.below(tokens.len())],
                tokens[rng.below(tokens.len())],
            )
        }
        15 | 16 => {
            let mut v = vec![
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
            ];
            v.extend(rng.bytes_in(20, 500));
            v
        }
        17 => rng.bytes_in(1, 300),
        18 => b"GET / HTTP/1.1\r\n".to_vec(),
        _ => vec![b'G'],
    };
    // Odd bytes.
    if rng.one_in(4) && !p.is_empty() {
        for _ in 0..rng.range(1, 6) {
            let i = rng.below(p.len());
            p[i] = *rng.pick(&[
                0, 0xff, 0x80, b'"', b';', b' ', b'\t', b'!', b'=', b'\r', b'\n',
            ]);
        }
    }
    p
}

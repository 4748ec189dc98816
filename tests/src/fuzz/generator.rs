//! Turning a template into a case: the frame, against the flows the shadow knows.

use super::*;

/// The generator: templates filled from the fuzzer's knowledge of the flows.
pub(super) struct Generator<'a> {
    pub(super) layout: &'a Layout,
    pub(super) shadow: &'a Shadow,
}

impl Generator<'_> {
    fn svc_addr(&self, svc: usize) -> SocketAddrV4 {
        self.layout.svcs[svc].addr
    }

    fn random_backend(&self, rng: &mut Rng, svc: usize) -> SocketAddrV4 {
        let bes = self.layout.backends_of(svc);
        self.layout.bes[*rng.pick(&bes)].addr
    }

    /// A connection of `svc` the fuzzer saw bound, with its backend, if any.
    pub(super) fn bound(&self, rng: &mut Rng, svc: usize) -> Option<(SocketAddrV4, SocketAddrV4)> {
        let list = &self.shadow.recent_bound[svc];
        if list.is_empty() {
            return None;
        }
        let (client, backend) = *rng.pick(list);
        Some((client, backend))
    }

    pub(super) fn pending(&self, rng: &mut Rng) -> Option<(SocketAddrV4, Pending)> {
        let (c, key) = self.recent_cookie_conn(rng, &self.shadow.recent_pending)?;
        self.shadow.pending.get(&key).map(|p| (c, p.clone()))
    }

    pub(super) fn spliced(&self, rng: &mut Rng) -> Option<(SocketAddrV4, Spliced)> {
        let (c, key) = self.recent_cookie_conn(rng, &self.shadow.recent_spliced)?;
        self.shadow.spliced.get(&key).map(|s| (c, *s))
    }

    /// A client picked from `list` (recent cookie-mode clients) and the key of its
    /// connection to the cookie service; none from an empty list.
    fn recent_cookie_conn(
        &self,
        rng: &mut Rng,
        list: &[SocketAddrV4],
    ) -> Option<(SocketAddrV4, (SocketAddrV4, SocketAddrV4, u8))> {
        if list.is_empty() {
            return None;
        }
        let c = *rng.pick(list);
        Some((c, (c, self.svc_addr(SVC_COOKIE), PROTO_TCP)))
    }

    /// A handshake ACK or first segment of a new cookie-mode connection from `client`,
    /// with a valid syncookie (`odd` picks a variant: another MSS index, the previous,
    /// the next or an expired window, a wrong cookie).
    pub(super) fn cookie_segment(
        &self,
        rng: &mut Rng,
        client: SocketAddrV4,
        fl: TcpFlags,
        odd: bool,
    ) -> Frame {
        let vip = self.svc_addr(SVC_COOKIE);
        let isn = rng.u32();
        let mss = mss_choice(rng);
        let options = client_options(rng);
        let mut t = cookie_window();
        let mut cookie = syncookie_with(&TEST_SECRET, client, vip, isn, mss, &options, t);
        if odd {
            match rng.below(6) {
                0 => cookie = (cookie & !7) | rng.below(8) as u32,
                1 => t -= 1,
                2 => t += 1,
                3 => t -= 2,
                4 => cookie ^= 1 << rng.range(3, 32),
                _ => cookie = rng.u32(),
            }
            if matches!(rng.below(6), 1..=3) {
                cookie = syncookie_with(&TEST_SECRET, client, vip, isn, mss, &options, t);
            }
        }
        let f = tcp_to(client, vip, fl, isn.wrapping_add(1), cookie.wrapping_add(1))
            .ttl(rng.range(2, 65) as u8);
        if !options.timestamps {
            return f;
        }
        // The SYN-ACK's TSval carries the options; the client echoes it.
        let tsecr = (rng.u32() & !0x1f) | options.bits();
        f.tcp_options(&ts_option(rng.u32(), tsecr))
    }

    pub(super) fn base(&self, rng: &mut Rng, t: Template) -> Base {
        use Template::*;
        let nat = self.svc_addr(SVC_TCP);
        let udp = self.svc_addr(SVC_UDP);
        let cookie_vip = self.svc_addr(SVC_COOKIE);
        const SYN: TcpFlags = flags(true, false, false, false, false);
        const ACK: TcpFlags = flags(false, true, false, false, false);
        const PSH_ACK: TcpFlags = flags(false, true, false, false, true);
        const FIN_ACK: TcpFlags = flags(false, true, true, false, false);
        const RST: TcpFlags = flags(false, false, false, true, false);
        const RST_ACK: TcpFlags = flags(false, true, false, true, false);
        const SYN_ACK: TcpFlags = flags(true, true, false, false, false);
        let c = client_addr(rng);
        let frame = match t {
            NatSyn => {
                let mss = mss_choice(rng);
                tcp_to(c, nat, SYN, rng.u32(), 0).tcp_options(&syn_options(rng, mss))
            }
            NatAck => tcp_to(c, nat, ACK, rng.u32(), rng.u32()),
            NatData => {
                let p = if rng.one_in(2) {
                    http_request(rng)
                } else {
                    rng.bytes_in(1, 1400)
                };
                tcp_to(c, nat, PSH_ACK, rng.u32(), rng.u32()).payload(&p)
            }
            NatFin => tcp_to(c, nat, FIN_ACK, rng.u32(), rng.u32()),
            NatRst => tcp_to(
                c,
                nat,
                if rng.one_in(2) { RST } else { RST_ACK },
                rng.u32(),
                rng.u32(),
            ),
            NatOddFlags => tcp_to(c, nat, random_flags(rng), rng.u32(), rng.u32()),
            NatReply => {
                let (client, backend) = self
                    .bound(rng, SVC_TCP)
                    .filter(|_| !rng.one_in(8))
                    .unwrap_or_else(|| (c, self.random_backend(rng, SVC_TCP)));
                let fl = *rng.pick(&[SYN_ACK, ACK, ACK, PSH_ACK, FIN_ACK, RST, RST_ACK]);
                let mut f = from_backend(tcp_to(backend, client, fl, rng.u32(), rng.u32()));
                if fl.psh {
                    f = f.payload(&rng.bytes_in(1, 1400));
                }
                return Base::Frame(f, Origin::Backend);
            }
            UdpRequest => Frame::udp(c, udp, &rng.bytes_in(0, 600)),
            UdpReply => {
                let (client, backend) = self
                    .bound(rng, SVC_UDP)
                    .filter(|_| !rng.one_in(8))
                    .unwrap_or_else(|| (c, self.random_backend(rng, SVC_UDP)));
                let f = from_backend(Frame::udp(backend, client, &rng.bytes_in(0, 600)));
                return Base::Frame(f, Origin::Backend);
            }
            DownServiceSyn => tcp_to(c, self.svc_addr(SVC_DOWN), SYN, rng.u32(), 0),
            CookieSyn => {
                let mss = mss_choice(rng);
                // Sometimes the port of a live connection (a duplicate SYN or port reuse).
                let client = self
                    .spliced(rng)
                    .map(|(c, _)| c)
                    .filter(|_| rng.one_in(3))
                    .unwrap_or(c);
                tcp_to(client, cookie_vip, SYN, rng.u32(), 0)
                    .ttl(rng.range(2, 65) as u8)
                    .tcp_options(&syn_options(rng, mss))
            }
            CookieHandshakeAck => self.cookie_segment(rng, c, ACK, false),
            CookieFirstSegment => {
                let fl = if rng.one_in(8) { ACK } else { PSH_ACK };
                let odd = rng.one_in(10);
                let mut f = self.cookie_segment(rng, c, fl, odd);
                if rng.one_in(4) {
                    let mut ts = vec![1, 1, 8, 10];
                    ts.extend(rng.bytes(8));
                    f = f.tcp_options(&ts);
                }
                // Sometimes a retransmission of a binding in progress.
                if let Some((client, p)) = self.pending(rng).filter(|_| rng.one_in(4)) {
                    f = tcp_to(
                        client,
                        cookie_vip,
                        fl,
                        p.isn.wrapping_add(1),
                        p.cookie.wrapping_add(1),
                    );
                }
                f.payload(&first_payload(rng))
            }
            CookieBadCookie => {
                let fl = *rng.pick(&[ACK, PSH_ACK, FIN_ACK, RST_ACK, RST]);
                let mut f = self.cookie_segment(rng, c, fl, true);
                if fl.psh {
                    f = f.payload(&http_request(rng));
                }
                f
            }
            CookieBackendSynAck | CookieBackendRst | CookieBackendAck => {
                let (client, backend, isn) = match self.pending(rng) {
                    Some((client, p)) if !rng.one_in(10) => (client, p.backend, p.isn),
                    _ => (c, self.random_backend(rng, SVC_COOKIE), rng.u32()),
                };
                let ack = if rng.one_in(6) {
                    rng.u32()
                } else {
                    isn.wrapping_add(1)
                };
                let f = match t {
                    CookieBackendSynAck => tcp_to(backend, client, SYN_ACK, rng.u32(), ack)
                        .window(65160)
                        .tcp_options(&syn_options(rng, 1460)),
                    CookieBackendRst => {
                        let fl = *rng.pick(&[
                            RST_ACK,
                            RST_ACK,
                            RST,
                            flags(true, true, false, true, false),
                        ]);
                        tcp_to(backend, client, fl, 0, ack).window(0)
                    }
                    _ => tcp_to(backend, client, ACK, rng.u32(), ack),
                };
                return Base::Frame(from_backend(f), Origin::Backend);
            }
            CookieSplicedClient | CookieClientClose => {
                let Some((client, s)) = self.spliced(rng) else {
                    return self.base(rng, CookieFirstSegment);
                };
                let fl = if t == CookieClientClose {
                    *rng.pick(&[FIN_ACK, RST, RST_ACK])
                } else {
                    *rng.pick(&[ACK, PSH_ACK, PSH_ACK])
                };
                let seq = s.isn.wrapping_add(1 + rng.below(5000) as u32);
                let ack = s.cookie.wrapping_add(1 + rng.below(5000) as u32);
                let mut f = tcp_to(client, cookie_vip, fl, seq, ack);
                if fl.psh {
                    f = f.payload(&first_payload(rng));
                }
                f.tcp_options(&spliced_segment_options(rng, ack))
            }
            CookieSplicedBackend => {
                let Some((client, s)) = self.spliced(rng) else {
                    return self.base(rng, CookieBackendSynAck);
                };
                let fl = *rng.pick(&[ACK, PSH_ACK, PSH_ACK, FIN_ACK, RST_ACK, SYN_ACK]);
                let seq = s.bisn.wrapping_add(1 + rng.below(5000) as u32);
                let ack = s.isn.wrapping_add(1 + rng.below(5000) as u32);
                let mut f = tcp_to(s.backend, client, fl, seq, ack)
                    .tcp_options(&spliced_segment_options(rng, ack));
                if fl.psh {
                    f = f.payload(&rng.bytes_in(1, 1400));
                }
                return Base::Frame(from_backend(f), Origin::Backend);
            }
            OtherTcp => {
                let dst = *rng.pick(&[
                    SocketAddrV4::new(NOT_A_VIP, 80),
                    SocketAddrV4::new(VIP, 8080),
                    SocketAddrV4::new(VIP_COOKIE, 443),
                    SocketAddrV4::new(CLIENTS[1], 80),
                ]);
                tcp_to(c, dst, random_flags(rng), rng.u32(), rng.u32())
            }
            OtherUdp => {
                let dst = *rng.pick(&[
                    SocketAddrV4::new(NOT_A_VIP, 53),
                    SocketAddrV4::new(VIP, 80),
                    SocketAddrV4::new(VIP_COOKIE, 80),
                ]);
                Frame::udp(c, dst, &rng.bytes_in(0, 100))
            }
            Icmp => return Base::Raw(icmp_echo_frame(), Origin::Client),
            Arp => return Base::Raw(arp_frame(), Origin::Client),
            Ipv6 => return Base::Raw(ipv6_syn_frame(), Origin::Client),
            Garbage => {
                let mut f = rng.bytes_in(14, 200);
                if rng.one_in(2) {
                    f[12] = 0x08;
                    f[13] = 0x00;
                    if f.len() > 14 && rng.one_in(2) {
                        f[14] = 0x45;
                    }
                }
                return Base::Raw(f, Origin::Client);
            }
        };
        Base::Frame(frame, Origin::Client)
    }

    /// A case of template `t`; `clean` leaves the frame unmutated.
    pub(super) fn case(&self, rng: &mut Rng, t: Template, clean: bool) -> Case {
        let mut log = Vec::new();
        let (mut bytes, origin) = match self.base(rng, t) {
            Base::Frame(mut f, origin) => {
                if !clean && rng.percent(55) {
                    for _ in 0..rng.range(1, 3) {
                        mutate_frame(rng, &mut f, &mut log);
                    }
                }
                (build_frame(&f, rng, &log), origin)
            }
            Base::Raw(b, origin) => (b, origin),
        };
        if !clean {
            if rng.percent(25) {
                mutate_consistent(rng, &mut bytes, &mut log);
            }
            if rng.percent(35) {
                for _ in 0..rng.range(1, 4) {
                    mutate_raw(rng, &mut bytes, &mut log);
                }
                if rng.one_in(2) {
                    fix_ip_checksum(&mut bytes);
                    log.push("fix-ip-csum".into());
                }
                if rng.one_in(2) {
                    fix_l4_checksum(&mut bytes);
                    log.push("fix-l4-csum".into());
                }
            }
        }
        let ingress = match (rng.below(10), origin) {
            (0, _) => Ingress::Loopback,
            (1, Origin::Client) | (2..=9, Origin::Backend) => Ingress::Backend,
            _ => Ingress::Client,
        };
        Case {
            template: t,
            frame: bytes,
            ingress,
            mutations: log,
        }
    }
}

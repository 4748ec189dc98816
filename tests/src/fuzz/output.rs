//! The oracle's checks of the frames the data plane builds: SYN-ACKs, SYNs to a
//! backend, kept segments.

use super::*;

impl Oracle {
    /// The output of a TX/REDIRECT run.
    pub(super) fn check_output(
        &mut self,
        r: &Run,
        p: &Pkt,
        svc: Option<usize>,
        from_be: Option<usize>,
    ) -> Result<(), Finding> {
        let o = parse(r.out).map_err(|e| Finding {
            check: "output.unparseable",
            detail: format!("the output is {}", e.name()),
        })?;
        ensure_that!(
            o.frag & 0x3fff == 0,
            "output.fragment",
            "the output is a fragment (flags/offset {:#06x})",
            o.frag
        );
        ensure_that!(o.ttl >= 1, "output.ttl", "output TTL 0");
        ensure_that!(
            o.l3 == p.l3 && r.out[12..o.l3] == r.input[12..p.l3],
            "output.link",
            "the link header (ethertype, VLAN tag) changed"
        );
        if r.c(Counter::SyncookiesSent) {
            ensure_that!(
                svc == Some(SVC_COOKIE) && p.flags & (F_SYN | F_ACK | F_RST | F_FIN) == F_SYN,
                "output.synack",
                "syncookie SYN-ACK for a packet that is not a SYN to the cookie service"
            );
            return self.check_synack(r, p, &o);
        }
        if r.c(Counter::BindingsTimedOut) {
            ensure_that!(
                svc == Some(SVC_COOKIE),
                "output.reset_client",
                "bind timeout RST for a packet not to the cookie service"
            );
            self.count(PATH_RESET_CLIENT);
            return check_rst(r, p, &o);
        }
        if r.c(Counter::BindStaleAcks) {
            let key = (p.dst, self.layout.svcs[SVC_COOKIE].addr, PROTO_TCP);
            let binding = self.shadow.pending.get(&key).map(|b| b.backend);
            ensure_that!(
                binding == Some(p.src),
                "output.reset_backend",
                "stale-ACK RST to {} whose binding the fuzzer knows as {binding:?}",
                p.src
            );
            self.count(PATH_RESET_BACKEND);
            return check_rst(r, p, &o);
        }
        if r.c(Counter::BindingsCompleted) {
            return self.check_segment(r, p, &o);
        }
        if r.c(Counter::BindingsStarted) || r.c(Counter::BindRetransmits) {
            ensure_that!(
                svc == Some(SVC_COOKIE),
                "output.backend_syn",
                "SYN to a backend for a packet not to the cookie service"
            );
            return self.check_backend_syn(r, p, &o);
        }
        if o.src == p.src && o.dst != p.dst {
            self.check_nat_forward(r, p, &o, svc)
        } else {
            self.check_nat_reply(r, p, &o, from_be)
        }
    }

    /// A syncookie SYN-ACK (for a SYN to the cookie service).
    fn check_synack(&mut self, r: &Run, p: &Pkt, o: &Pkt) -> Result<(), Finding> {
        let start = r.input.as_ptr() as usize;
        let pk = parse_slice(r.input).map_err(|e| Finding {
            check: "output.synack",
            detail: format!("the data plane's parser refuses the SYN on the host: {e:?}"),
        })?;
        let o_syn = segment_options(start, start + r.input.len(), &pk);
        let w = walk(&o_syn);
        let client = ClientOptions::of_syn(&w);
        let index = encode_mss(w.mss.unwrap_or(536));
        let layout = CookieLayout::of_segment(client.timestamps);
        let k = p.key();
        let candidates: Vec<u32> = r
            .windows
            .iter()
            .map(|t| {
                make_cookie(
                    &TEST_SECRET,
                    k.src,
                    k.dst,
                    k.sport,
                    k.dport,
                    p.seq,
                    *t,
                    cookie_data(layout, index, client.bits()),
                    layout,
                )
            })
            .collect();
        let offered = match decode_mss(index) {
            Some(m) if m < 1460 => m,
            _ => 1460,
        };
        check_built(r, o, p.dst, p.src, true)?;
        ensure_that!(
            o.flags == F_SYN | F_ACK && o.ack == p.seq.wrapping_add(1) && o.window == 65535,
            "output.synack",
            "SYN-ACK flags {:#04x} ack {:#x} window {} (SYN seq {:#x})",
            o.flags,
            o.ack,
            o.window,
            p.seq
        );
        ensure_that!(
            candidates.contains(&o.seq),
            "output.synack",
            "SYN-ACK ISN {:#010x} is not the syncookie {candidates:#010x?}",
            o.seq
        );
        // The options mirror the client's; the TSval is the data plane's clock with the
        // client's options in its low 5 bits.
        let out_start = r.out.as_ptr() as usize;
        let out_pk = parse_slice(r.out).ok();
        let out_ts = out_pk
            .map(|pk| segment_options(out_start, out_start + r.out.len(), &pk))
            .and_then(|oo| walk(&oo).timestamps(&oo));
        let offer = SynOffer {
            mss: offered,
            wscale: client.wscale.map(|_| tcp_opts::OFFERED_WSCALE),
            sack_ok: client.sack_ok,
            timestamps: w
                .timestamps(&o_syn)
                .map(|(val, _)| (out_ts.map_or(0, |t| t.0), val)),
        };
        let want = offer_bytes(&offer);
        ensure_that!(
            r.out[o.l4 + 20..o.payload] == want[..] && o.payload == o.ip_end,
            "output.synack",
            "SYN-ACK options {} (expected {})",
            hex(&r.out[o.l4 + 20..o.payload]),
            hex(&want)
        );
        ensure_that!(
            out_ts.is_none_or(|(val, _)| val & 0x1f == client.bits()),
            "output.synack",
            "SYN-ACK TSval {out_ts:x?} does not carry the client's options {:#x}",
            client.bits()
        );
        self.count(PATH_SYNACK);
        Ok(())
    }

    /// The SYN the data plane sends a backend (for a segment to the cookie service).
    fn check_backend_syn(&mut self, r: &Run, p: &Pkt, o: &Pkt) -> Result<(), Finding> {
        let key = (p.src, p.dst, p.proto);
        let Some(b) = self.shadow.pending.get(&key).cloned() else {
            return Err(Finding {
                check: "output.backend_syn",
                detail: "SYN to a backend for a connection with no binding in progress".into(),
            });
        };
        let be = self.layout.be_by_addr(o.dst, PROTO_TCP);
        ensure_that!(
            o.dst == b.backend && be.is_some_and(|i| self.layout.bes[i].svc == SVC_COOKIE),
            "output.backend_syn",
            "SYN sent to {}, the binding is to {}",
            o.dst,
            b.backend
        );
        check_built(r, o, p.src, b.backend, false)?;
        ensure_that!(
            r.sent_to_backend_mac(*b.backend.ip()),
            "output.backend_syn",
            "SYN to {} with MACs {} -> {}",
            b.backend,
            hex(&r.out[6..12]),
            hex(&r.out[0..6])
        );
        ensure_that!(
            o.flags == F_SYN
                && o.seq == b.isn
                && o.seq == p.seq.wrapping_sub(1)
                && o.ack == 0
                && o.window == p.window,
            "output.backend_syn",
            "SYN flags {:#04x} seq {:#x} ack {:#x} window {} (client ISN {:#x}, window {})",
            o.flags,
            o.seq,
            o.ack,
            o.window,
            b.isn,
            p.window
        );
        let want = offer_bytes(&SynOffer {
            mss: b.mss,
            wscale: b.options.wscale,
            sack_ok: b.options.sack_ok,
            timestamps: b.options.timestamps.then_some((b.client_tsval, 0)),
        });
        ensure_that!(
            r.out[o.l4 + 20..o.payload] == want[..] && o.payload == o.ip_end,
            "output.backend_syn",
            "SYN options {} (expected {})",
            hex(&r.out[o.l4 + 20..o.payload]),
            hex(&want)
        );
        check_verdict(r, r.to_backend_verdict(), "SYN to the backend")?;
        self.count(if r.c(Counter::BindingsStarted) {
            PATH_BACKEND_SYN
        } else {
            PATH_BACKEND_SYN_AGAIN
        });
        Ok(())
    }

    fn check_segment(&mut self, r: &Run, p: &Pkt, o: &Pkt) -> Result<(), Finding> {
        let vip = self.layout.svcs[SVC_COOKIE].addr;
        let key = (p.dst, vip, PROTO_TCP);
        let Some(b) = self.shadow.pending.remove(&key) else {
            return Err(Finding {
                check: "output.segment",
                detail: "binding completed for a connection with no binding in progress".into(),
            });
        };
        ensure_that!(
            p.src == b.backend && p.flags & (F_SYN | F_ACK | F_RST) == F_SYN | F_ACK,
            "output.segment",
            "binding completed by {} flags {:#04x}, the binding is to {}",
            p.src,
            p.flags,
            b.backend
        );
        ensure_that!(
            o.src == p.dst && o.dst == p.src,
            "output.segment",
            "kept segment from {} to {}",
            o.src,
            o.dst
        );
        ensure_that!(
            r.out[0..6] == r.input[6..12] && r.out[6..12] == r.input[0..6],
            "output.segment",
            "kept segment MACs not swapped"
        );
        let ip = &r.out[o.l3..o.l4];
        ensure_that!(
            ip[0] == 0x45
                && ip[1] == 0
                && ip[4..6] == [0, 0]
                && ip[6..8] == [0x40, 0]
                && ip[8] == 64,
            "output.segment",
            "kept segment IPv4 header {}",
            hex(ip)
        );
        ensure_that!(
            same_residual(ip_residual(r.out, o), 0xffff),
            "output.checksum",
            "kept segment IPv4 checksum invalid"
        );
        let seg = &r.out[o.l4..];
        ensure_that!(
            r.out.len() == o.ip_end && seg.len() == b.segment.len(),
            "output.segment",
            "kept segment of {} bytes (frame {}, datagram end {}), the client sent {}",
            seg.len(),
            r.out.len(),
            o.ip_end,
            b.segment.len()
        );
        // As the client sent it, translated like every later segment of the splice.
        let backend_opts = input_options(r).ok_or_else(|| Finding {
            check: "output.segment",
            detail: "the backend's SYN-ACK does not parse".into(),
        })?;
        let splice =
            SpliceOptions::negotiate(&b.options, b.synack_tsval, &backend_opts.0, &backend_opts.1);
        let shift = b.cookie.wrapping_sub(p.seq);
        let want =
            translated_segment(&b.segment, &splice.to_backend(shift)).ok_or_else(|| Finding {
                check: "output.segment",
                detail: "a kept segment whose options cannot be translated was sent".into(),
            })?;
        let diff = same_except(seg, &want, &[2..4, 8..12, 16..18]);
        ensure_that!(
            diff.is_none(),
            "output.segment",
            "kept segment differs from the client's at TCP byte {diff:?}"
        );
        ensure_that!(
            o.dst.port() == b.backend.port() && o.ack == p.seq.wrapping_add(1),
            "output.segment",
            "kept segment port {} ack {:#x} (backend ISN {:#x})",
            o.dst.port(),
            o.ack,
            p.seq
        );
        ensure_that!(
            same_residual(l4_residual(r.out, o), b.residual),
            "output.checksum",
            "kept segment TCP checksum residual {:#06x}, the client's was {:#06x}",
            l4_residual(r.out, o),
            b.residual
        );
        ensure_that!(
            r.verdict == XDP_TX,
            "output.verdict",
            "kept segment with {}",
            verdict_name(r.verdict)
        );
        self.shadow.spliced.insert(
            key,
            Spliced {
                backend: b.backend,
                isn: b.isn,
                cookie: b.cookie,
                bisn: p.seq,
                options: splice,
            },
        );
        self.shadow.tick += 1;
        remember(&mut self.shadow.recent_spliced, p.dst, self.shadow.tick);
        self.count(PATH_SEGMENT);
        Ok(())
    }
}

/// The option bytes of a SYN or SYN-ACK the data plane builds with `offer`.
fn offer_bytes(offer: &SynOffer) -> Vec<u8> {
    let (words, n) = offer.words();
    words[..n].iter().flat_map(|w| w.to_ne_bytes()).collect()
}

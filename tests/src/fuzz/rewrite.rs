//! The oracle's checks of rewritten frames (NAT in both directions) and of built RSTs.

use super::*;

impl Oracle {
    /// The NAT rewrite rules shared by both directions: TTL - 1, every byte outside the
    /// rewritten fields unchanged, checksum errors preserved.
    fn check_rewrite(
        &mut self,
        r: &Run,
        p: &Pkt,
        o: &Pkt,
        // The sequence or acknowledgement number, for a splice's shift.
        shifted: Option<std::ops::Range<usize>>,
    ) -> Result<(), Finding> {
        self.check_rewrite_of(r, r.input, p, o, shifted)
    }

    /// [`Oracle::check_rewrite`] against `input`: the run's input, or for a splice the
    /// input with its TCP options and window translated.
    fn check_rewrite_of(
        &mut self,
        r: &Run,
        input: &[u8],
        p: &Pkt,
        o: &Pkt,
        shifted: Option<std::ops::Range<usize>>,
    ) -> Result<(), Finding> {
        ensure_that!(
            p.ttl >= 2 && o.ttl == p.ttl - 1,
            "output.ttl",
            "forwarded with TTL {} -> {}",
            p.ttl,
            o.ttl
        );
        let (l3, l4) = (p.l3, p.l4);
        let csum = if p.tcp() {
            l4 + 16..l4 + 18
        } else {
            l4 + 6..l4 + 8
        };
        let mut ranges = vec![0..12, l3 + 8..l3 + 9, l3 + 10..l3 + 20, l4..l4 + 4, csum];
        ranges.extend(shifted);
        let diff = same_except(input, r.out, &ranges);
        ensure_that!(
            diff.is_none(),
            "output.rewrite",
            "a byte outside the rewritten fields changed (byte {diff:?})"
        );
        let (iv, ov) = (ip_residual(input, p), ip_residual(r.out, o));
        ensure_that!(
            same_residual(iv, ov),
            "output.checksum",
            "IPv4 checksum residual {iv:#06x} in, {ov:#06x} out"
        );
        if udp_no_checksum(r.input, p) {
            ensure_that!(
                udp_no_checksum(r.out, o),
                "output.checksum",
                "UDP without checksum got one"
            );
        } else {
            let (il, ol) = (l4_residual(r.input, p), l4_residual(r.out, o));
            ensure_that!(
                same_residual(il, ol),
                "output.checksum",
                "L4 checksum residual {il:#06x} in, {ol:#06x} out"
            );
            ensure_that!(
                !udp_no_checksum(r.out, o),
                "output.checksum",
                "UDP checksum became 0 (none)"
            );
        }
        if !same_residual(iv, 0xffff) || !l4_valid(r.input, p) {
            self.forwarded_bad_checksum += 1;
        }
        Ok(())
    }

    /// A segment through the splice of `key` to its backend (the output's destination
    /// to the backend, the input's source from it): `field` shifted by `K - B`, the rest
    /// as any rewrite. `missing` describes the finding (given the splice the fuzzer knows,
    /// if any) when there is no such splice.
    fn check_spliced(
        &mut self,
        r: &Run,
        p: &Pkt,
        o: &Pkt,
        key: &(SocketAddrV4, SocketAddrV4, u8),
        field: Shifted,
        missing: impl FnOnce(Option<Spliced>) -> String,
    ) -> Result<(), Finding> {
        let backend = match field {
            Shifted::Ack => o.dst,
            Shifted::Seq => p.src,
        };
        let sp = self.shadow.spliced.get(key).copied();
        let Some(sp) = sp.filter(|sp| sp.backend == backend) else {
            return Err(Finding {
                check: "output.spliced",
                detail: missing(sp),
            });
        };
        let shift = sp.cookie.wrapping_sub(sp.bisn);
        let (name, before, after, want, at) = match field {
            Shifted::Ack => ("ack", p.ack, o.ack, p.ack.wrapping_sub(shift), p.l4 + 8),
            Shifted::Seq => ("seq", p.seq, o.seq, p.seq.wrapping_add(shift), p.l4 + 4),
        };
        ensure_that!(
            after == want,
            "output.spliced",
            "{name} {before:#x} -> {after:#x}, expected the shift by K - B = {shift:#x}"
        );
        // The options and window as the splice translates them.
        let opts = sp.options;
        let edit = match field {
            Shifted::Ack => opts.to_backend(shift),
            Shifted::Seq => tcp_opts::Edit {
                flags: opts.to_client_flags,
                to_client: true,
                ts_offset: opts.ts_offset,
                sack_delta: shift,
                win_shift: opts.to_client_shift,
            },
        };
        let mut input = r.input.to_vec();
        let segment =
            translated_segment(&r.input[p.l4..p.ip_end], &edit).ok_or_else(|| Finding {
                check: "output.spliced",
                detail: "a segment whose options cannot be translated was forwarded".into(),
            })?;
        input[p.l4..p.ip_end].copy_from_slice(&segment);
        self.check_rewrite_of(r, &input, p, o, Some(at..at + 4))
    }

    pub(super) fn check_nat_forward(
        &mut self,
        r: &Run,
        p: &Pkt,
        o: &Pkt,
        svc: Option<usize>,
    ) -> Result<(), Finding> {
        let Some(s) = svc else {
            return Err(Finding {
                check: "output.nat_forward",
                detail: format!("rewritten to {} for a packet not to a service", o.dst),
            });
        };
        let be = self.layout.be_by_addr(o.dst, p.proto);
        ensure_that!(
            be.is_some_and(|b| self.layout.bes[b].svc == s),
            "output.nat_forward",
            "forwarded to {}, not a backend of {}",
            o.dst,
            self.layout.svcs[s].name
        );
        let key = (p.src, p.dst, p.proto);
        let bound = self.shadow.bound.get(&key);
        ensure_that!(
            bound.is_some_and(|l| l.contains(&o.dst)),
            "output.nat_forward",
            "forwarded to {}, but the connection was bound to {:?}",
            o.dst,
            bound
        );
        ensure_that!(
            r.sent_to_backend_mac(*o.dst.ip()),
            "output.nat_forward",
            "forwarded with MACs {} -> {}",
            hex(&r.out[6..12]),
            hex(&r.out[0..6])
        );
        check_verdict(r, r.to_backend_verdict(), "forwarded to a backend")?;
        if self.layout.svcs[s].cookie {
            self.check_spliced(r, p, o, &key, Shifted::Ack, |sp| {
                format!("forwarded to {} without a splice to it ({sp:?})", o.dst)
            })?;
            self.count(PATH_SPLICED_FORWARD);
        } else {
            self.check_rewrite(r, p, o, None)?;
            self.count(PATH_NAT_FORWARD);
        }
        Ok(())
    }

    pub(super) fn check_nat_reply(
        &mut self,
        r: &Run,
        p: &Pkt,
        o: &Pkt,
        from_be: Option<usize>,
    ) -> Result<(), Finding> {
        let Some(b) = from_be else {
            return Err(Finding {
                check: "output.nat_reply",
                detail: format!(
                    "rewritten {} -> {} for a packet not from a backend",
                    o.src, o.dst
                ),
            });
        };
        let s = self.layout.bes[b].svc;
        let vip = self.layout.svcs[s].addr;
        ensure_that!(
            o.src == vip && o.dst == p.dst,
            "output.nat_reply",
            "reply of {} rewritten {} -> {}, expected {} -> {}",
            p.src,
            o.src,
            o.dst,
            vip,
            p.dst
        );
        let key = (p.dst, vip, p.proto);
        let bound = self.shadow.bound.get(&key);
        ensure_that!(
            bound.is_some_and(|l| l.contains(&p.src)),
            "output.nat_reply",
            "reply of {} to {} forwarded, but the connection was bound to {:?}",
            p.src,
            p.dst,
            bound
        );
        if let Some(c) = self.shadow.created.get(&key).copied() {
            let want = verdict_out_of(r.ingress, c.ingress);
            ensure_that!(
                r.verdict == want,
                "output.verdict",
                "reply with {}, expected {} (received on {}, the client's packet on {})",
                verdict_name(r.verdict),
                verdict_name(want),
                r.ingress,
                c.ingress
            );
            ensure_that!(
                r.out[0..6] == c.client_mac && r.out[6..12] == c.our_mac,
                "output.nat_reply",
                "reply MACs {} -> {}, the client's packet came {} -> {}",
                hex(&r.out[6..12]),
                hex(&r.out[0..6]),
                hex(&c.client_mac),
                hex(&c.our_mac)
            );
        }
        if self.layout.svcs[s].cookie {
            if r.c(Counter::BindingsRefused) {
                let Some(pb) = self.shadow.pending.remove(&key) else {
                    return Err(Finding {
                        check: "output.refused",
                        detail: "bind refusal relayed for no binding in progress".into(),
                    });
                };
                ensure_that!(
                    pb.backend == p.src
                        && p.flags & (F_RST | F_ACK | F_SYN) == F_RST | F_ACK
                        && p.ack == pb.isn.wrapping_add(1)
                        && o.seq == pb.cookie.wrapping_add(1),
                    "output.refused",
                    "refusal RST seq {:#x} (cookie {:#x}), backend's ack {:#x} (ISN {:#x})",
                    o.seq,
                    pb.cookie,
                    p.ack,
                    pb.isn
                );
                self.check_rewrite(r, p, o, Some(p.l4 + 4..p.l4 + 8))?;
                self.count(PATH_REFUSED);
            } else {
                self.check_spliced(r, p, o, &key, Shifted::Seq, |sp| {
                    format!("reply of {} forwarded without a splice ({sp:?})", p.src)
                })?;
                self.count(PATH_SPLICED_REPLY);
            }
        } else {
            self.check_rewrite(r, p, o, None)?;
            self.count(PATH_NAT_REPLY);
        }
        Ok(())
    }
}

/// The TCP field a splice shifts: the acknowledgement number of the client's segments
/// (to the backend), the sequence number of the backend's (to the client).
#[derive(Clone, Copy)]
enum Shifted {
    Ack,
    Seq,
}

/// The verdict that sends a frame out of `egress` when it came in on `ingress`: `XDP_TX`
/// back out of the same interface, `XDP_REDIRECT` to the other one.
pub(super) fn verdict_out_of(ingress: u32, egress: u32) -> u32 {
    if ingress == egress {
        XDP_TX
    } else {
        XDP_REDIRECT
    }
}

/// The run's verdict is `want`; `what` names the frame in the finding.
pub(super) fn check_verdict(r: &Run, want: u32, what: &str) -> Result<(), Finding> {
    ensure_that!(
        r.verdict == want,
        "output.verdict",
        "{what} with {}, expected {}",
        verdict_name(r.verdict),
        verdict_name(want)
    );
    Ok(())
}

/// A frame the data plane built: fresh IPv4 header (IHL 5, TOS 0, id 0, DF, TTL 64),
/// valid checksums, no padding, from `src` to `dst`, MACs swapped when it goes back.
pub(super) fn check_built(
    r: &Run,
    o: &Pkt,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    back: bool,
) -> Result<(), Finding> {
    ensure_that!(
        o.src == src && o.dst == dst,
        "output.built",
        "built frame {} -> {}, expected {} -> {}",
        o.src,
        o.dst,
        src,
        dst
    );
    ensure_that!(
        o.l4 == o.l3 + 20 && o.tos == 0 && o.id == 0 && o.frag == 0x4000 && o.ttl == 64,
        "output.built",
        "built IPv4 header {}",
        hex(&r.out[o.l3..o.l4])
    );
    ensure_that!(
        r.out.len() == o.ip_end,
        "output.built",
        "built frame of {} bytes for a datagram ending at {}",
        r.out.len(),
        o.ip_end
    );
    ensure_that!(
        same_residual(ip_residual(r.out, o), 0xffff) && l4_valid(r.out, o),
        "output.checksum",
        "built frame with a bad checksum (IPv4 residual {:#06x}, TCP {:#06x})",
        ip_residual(r.out, o),
        l4_residual(r.out, o)
    );
    if back {
        ensure_that!(
            r.out[0..6] == r.input[6..12] && r.out[6..12] == r.input[0..6],
            "output.built",
            "answer MACs not swapped"
        );
    }
    Ok(())
}

/// A RST built per RFC 9293 3.10.7.1 for the segment `p`, back to its sender.
pub(super) fn check_rst(r: &Run, p: &Pkt, o: &Pkt) -> Result<(), Finding> {
    check_built(r, o, p.dst, p.src, true)?;
    let (seq, ack, fl) = if p.flags & F_ACK != 0 {
        (p.ack, 0, F_RST)
    } else {
        let len =
            p.payload_len() as u32 + (p.flags & F_SYN != 0) as u32 + (p.flags & F_FIN != 0) as u32;
        (0, p.seq.wrapping_add(len), F_RST | F_ACK)
    };
    ensure_that!(
        o.flags == fl && o.seq == seq && o.ack == ack && o.window == 0 && o.payload == o.ip_end,
        "output.rst",
        "RST flags {:#04x} seq {:#x} ack {:#x} window {}, expected flags {fl:#04x} seq {seq:#x} ack {ack:#x}",
        o.flags,
        o.seq,
        o.ack,
        o.window
    );
    ensure_that!(
        r.verdict == XDP_TX,
        "output.verdict",
        "RST with {}",
        verdict_name(r.verdict)
    );
    Ok(())
}

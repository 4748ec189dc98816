//! The oracle: the counter signatures of each verdict, and the checks of every run's
//! outcome.

use super::*;

pub(super) type Delta = [u64; Counter::COUNT];

/// A violated invariant: check id and details.
pub(super) struct Finding {
    pub(super) check: &'static str,
    pub(super) detail: String,
}

const PASS_TERMINALS: [Counter; 6] = [
    Counter::PassNotService,
    Counter::PassMalformed,
    Counter::PassFragment,
    Counter::PassTtlExceeded,
    Counter::PassNoNeighbour,
    Counter::PassStaleAckToTc,
];
const DROP_TERMINALS: [Counter; 10] = [
    Counter::DropFragment,
    Counter::DropNoBackend,
    Counter::DropNoRoute,
    Counter::DropFlowTableFull,
    Counter::SyncookiesInvalid,
    Counter::RstNoFlow,
    Counter::DropOddNoFlow,
    Counter::DropNoSyncookieKey,
    Counter::DropWhileBinding,
    Counter::DropUntranslatableOptions,
];
const TX_TERMINALS: [Counter; 5] = [
    Counter::TxSameInterface,
    Counter::TxRedirect,
    Counter::SyncookiesSent,
    Counter::BindingsTimedOut,
    Counter::BindStaleAcks,
];
const COOKIE_OUTCOMES: [Counter; 6] = [
    Counter::CookieNotHttp,
    Counter::CookieNoHeader,
    Counter::CookieNameAbsent,
    Counter::CookieNoToken,
    Counter::CookieBeyondFirstSegment,
    Counter::CookieUnknownToken,
];

pub(super) fn d(delta: &Delta, c: Counter) -> u64 {
    delta[c as usize]
}

pub(super) fn delta_map(delta: &Delta) -> BTreeMap<&'static str, u64> {
    Counter::ALL
        .iter()
        .filter(|c| delta[**c as usize] != 0)
        .map(|c| (c.label(), delta[*c as usize]))
        .collect()
}

/// The counter signature of one run (see the module docs).
/// A `tx_bytes` mismatch goes to `deferred`, so that the packet's other checks still run.
pub(super) fn check_signature(
    verdict: u32,
    delta: &Delta,
    out_len: usize,
    deferred: &mut Vec<Finding>,
) -> Result<(), Finding> {
    ensure_that!(
        d(delta, Counter::RxPackets) == 1,
        "counters.rx_packets",
        "rx_packets moved by {}",
        d(delta, Counter::RxPackets)
    );
    for c in Counter::ALL {
        ensure_that!(
            c == Counter::TxBytes || delta[c as usize] <= 1,
            "counters.signature",
            "{} moved by {} in one run",
            c.label(),
            delta[c as usize]
        );
    }
    let terminals: Vec<Counter> = PASS_TERMINALS
        .iter()
        .chain(&DROP_TERMINALS)
        .chain(&TX_TERMINALS)
        .copied()
        .filter(|c| d(delta, *c) != 0)
        .collect();
    let one_of = |set: &[Counter]| terminals.len() == 1 && set.contains(&terminals[0]);
    let ok = match verdict {
        XDP_PASS => one_of(&PASS_TERMINALS),
        XDP_REDIRECT => terminals == [Counter::TxRedirect],
        XDP_TX => one_of(&[
            Counter::TxSameInterface,
            Counter::SyncookiesSent,
            Counter::BindingsTimedOut,
            Counter::BindStaleAcks,
        ]),
        XDP_DROP => {
            one_of(&DROP_TERMINALS)
                || one_of(&[Counter::BindingsTimedOut])
                || (terminals.is_empty() && d(delta, Counter::SyncookiesValid) == 1)
                || (terminals.len() == 2
                    && terminals.contains(&Counter::DropFlowTableFull)
                    && (terminals.contains(&Counter::TxRedirect)
                        || terminals.contains(&Counter::TxSameInterface)))
        }
        _ => false,
    };
    ensure_that!(
        ok,
        "counters.signature",
        "verdict {} with terminal counters {:?}",
        verdict_name(verdict),
        terminals.iter().map(|c| c.label()).collect::<Vec<_>>()
    );
    let sent = d(delta, Counter::TxSameInterface) + d(delta, Counter::TxRedirect);
    // The program counts the bytes it sees: the linear part of a longer test-run frame.
    let want_bytes = if sent > 0 {
        out_len.min(LINEAR_MAX) as u64
    } else {
        0
    };
    if d(delta, Counter::TxBytes) != want_bytes {
        deferred.push(Finding {
            check: "counters.tx_bytes",
            detail: format!(
                "tx_bytes moved by {} for a {out_len}-byte output counted as {sent} transmitted",
                d(delta, Counter::TxBytes)
            ),
        });
    }
    ensure_that!(
        d(delta, Counter::NewFlows) + d(delta, Counter::FlowMisses) <= 1,
        "counters.signature",
        "new_flows and flow_misses in one run"
    );
    let outcomes: u64 = COOKIE_OUTCOMES.iter().map(|c| d(delta, *c)).sum();
    ensure_that!(
        outcomes <= 1 && (outcomes == 0 || d(delta, Counter::SyncookiesValid) == 1),
        "counters.signature",
        "cookie outcome counters without a valid syncookie, or more than one"
    );
    ensure_that!(
        d(delta, Counter::BindingsStarted) == 0
            || (d(delta, Counter::SyncookiesValid) == 1 && d(delta, Counter::NewFlows) == 1),
        "counters.signature",
        "bindings_started without syncookies_valid and new_flows"
    );
    ensure_that!(
        d(delta, Counter::BindingsCompleted) == 0
            || (verdict == XDP_TX && d(delta, Counter::TxSameInterface) == 1),
        "counters.signature",
        "bindings_completed without a transmit"
    );
    ensure_that!(
        d(delta, Counter::BindStaleAcks) == 0 || verdict == XDP_TX,
        "counters.signature",
        "bind_stale_acks without a transmit"
    );
    Ok(())
}

/// Output kinds (for the report).
pub(super) const PATH_NAT_FORWARD: &str = "nat rewrite to backend";
pub(super) const PATH_NAT_REPLY: &str = "nat rewrite to client";
pub(super) const PATH_SPLICED_FORWARD: &str = "spliced rewrite to backend";
pub(super) const PATH_SPLICED_REPLY: &str = "spliced rewrite to client";
pub(super) const PATH_REFUSED: &str = "backend RST relayed (bind refused)";
pub(super) const PATH_SYNACK: &str = "syncookie SYN-ACK";
pub(super) const PATH_RESET_CLIENT: &str = "RST to client (bind timed out)";
pub(super) const PATH_RESET_BACKEND: &str = "RST to backend (stale ACK)";
const PATH_STALE_ACK_TO_TC: &str = "stale ACK passed to TC (RST and SYN again there)";
pub(super) const PATH_BACKEND_SYN: &str = "SYN to backend (binding)";
pub(super) const PATH_BACKEND_SYN_AGAIN: &str = "SYN to backend (retransmission)";
pub(super) const PATH_SEGMENT: &str = "kept segment to backend";

/// Everything about one run that the checks need.
pub(super) struct Run<'a> {
    pub(super) input: &'a [u8],
    pub(super) inp: std::result::Result<Pkt, Refused>,
    pub(super) verdict: u32,
    pub(super) out: &'a [u8],
    pub(super) delta: &'a Delta,
    pub(super) ingress: u32,
    pub(super) backend_ifindex: u32,
    pub(super) windows: [u32; 2],
    /// The template, if the frame was left as built (no mutation, not cut).
    pub(super) clean: Option<Template>,
}

impl Run<'_> {
    pub(super) fn c(&self, c: Counter) -> bool {
        d(self.delta, c) != 0
    }

    /// The verdict that sends this run's frame to a backend (out of the backend side).
    pub(super) fn to_backend_verdict(&self) -> u32 {
        verdict_out_of(self.ingress, self.backend_ifindex)
    }

    /// The output is addressed from the balancer's backend-side interface to `backend`'s MAC.
    pub(super) fn sent_to_backend_mac(&self, backend: Ipv4Addr) -> bool {
        self.out[0..6] == backend_mac(backend) && self.out[6..12] == BACKEND_IF_MAC
    }
}

/// Bytes of `a` and `b` equal outside `skip` (ranges), same lengths.
pub(super) fn same_except(a: &[u8], b: &[u8], skip: &[std::ops::Range<usize>]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    (0..a.len()).find(|i| a[*i] != b[*i] && !skip.iter().any(|r| r.contains(i)))
}

pub(super) struct Oracle {
    pub(super) layout: Layout,
    pub(super) shadow: Shadow,
    pub(super) paths: BTreeMap<&'static str, u64>,
    pub(super) forwarded_bad_checksum: u64,
    pub(super) keys: SyncookieKeys,
    pub(super) cookie_cfg: CookieConfig,
    /// Findings of the current packet that did not stop its checks.
    pub(super) deferred: Vec<Finding>,
    /// The kind of output the current packet's check found.
    pub(super) last_path: Option<&'static str>,
    /// Liveness expectations checked, by template.
    pub(super) liveness: BTreeMap<&'static str, u64>,
}

impl Oracle {
    fn ring_pick(&self, maps: &Maps, svc: usize, key: &FlowKey) -> Result<Option<usize>> {
        let s = &self.layout.svcs[svc];
        let index = s.id * RING_SIZE + flow_hash(key) % RING_SIZE;
        let slot = maps.ring.get(&index, 0).context("reading RING")?;
        if slot == u32::MAX {
            return Ok(None);
        }
        Ok(self
            .layout
            .be_by_slot(slot)
            .filter(|&b| self.layout.bes[b].svc == svc && self.layout.up(b)))
    }

    /// Valid under the test secret in the window before or after the run (`[t0, t1]`).
    fn cookie_valid(&self, r: &Run, p: &Pkt, t: u32) -> bool {
        self.cookie_data(r, p, t).is_some()
    }

    /// The data of the packet's cookie in window `t`, in the layout its timestamps (or
    /// their absence) say, with those timestamps.
    fn cookie_data(&self, r: &Run, p: &Pkt, t: u32) -> Option<(CookieData, Option<(u32, u32)>)> {
        let k = p.key();
        let ts = input_timestamps(r);
        check_cookie(
            &self.keys,
            k.src,
            k.dst,
            k.sport,
            k.dport,
            p.seq.wrapping_sub(1),
            p.ack.wrapping_sub(1),
            t,
            CookieLayout::of_segment(ts.is_some()),
        )
        .map(|d| (d, ts))
    }

    /// The backend a first segment must bind to, with the scan's outcome counter and
    /// whether a token pair is reported.
    fn predict_binding(
        &self,
        maps: &Maps,
        p: &Pkt,
        payload: &[u8],
    ) -> Result<(Option<Counter>, bool, Option<usize>)> {
        let svc = SVC_COOKIE;
        let (outcome, pair, token) = match scan_payload(payload, &self.cookie_cfg) {
            CookieOutcome::NotHttp => (Some(Counter::CookieNotHttp), false, None),
            CookieOutcome::NoCookieHeader => (Some(Counter::CookieNoHeader), false, None),
            CookieOutcome::CookieNameAbsent => (Some(Counter::CookieNameAbsent), false, None),
            CookieOutcome::SegmentMissing => (Some(Counter::CookieNoToken), false, None),
            CookieOutcome::HeaderIncomplete => {
                (Some(Counter::CookieBeyondFirstSegment), false, None)
            }
            CookieOutcome::Found { primary, secondary } => {
                match self.layout.be_by_token(svc, primary) {
                    Some(b) => (None, secondary.is_some(), Some(b)),
                    None => (Some(Counter::CookieUnknownToken), secondary.is_some(), None),
                }
            }
        };
        let chosen = match token {
            Some(b) if self.layout.up(b) => Some(b),
            Some(b) => self
                .layout
                .failover
                .get(&b)
                .copied()
                .filter(|&r| self.layout.up(r)),
            None => None,
        };
        let backend = match chosen {
            Some(b) => Some(b),
            None => self.ring_pick(maps, svc, &p.key())?,
        };
        Ok((outcome, pair, backend))
    }

    /// Checks one run and updates the shadow. `created` is the forward entry read back
    /// after a run that created one.
    pub(super) fn check(
        &mut self,
        maps: &Maps,
        r: &Run,
        created: Option<Flow>,
    ) -> Result<(), Finding> {
        ensure_that!(
            matches!(r.verdict, XDP_PASS | XDP_DROP | XDP_TX | XDP_REDIRECT),
            "verdict.unexpected",
            "verdict {} ({})",
            r.verdict,
            verdict_name(r.verdict)
        );
        check_signature(r.verdict, r.delta, r.out.len(), &mut self.deferred)?;
        if r.verdict == XDP_PASS {
            ensure_that!(
                !r.c(Counter::PassNoNeighbour),
                "pass.no_neighbour",
                "pass_no_neighbour, although every backend has a permanent neighbour entry"
            );
            ensure_that!(
                r.out == r.input,
                "pass.modified",
                "XDP_PASS with a modified frame (first difference at byte {:?})",
                same_except(r.input, r.out, &[])
            );
        }
        ensure_that!(
            !r.c(Counter::BindingsRefused) || matches!(r.verdict, XDP_TX | XDP_REDIRECT),
            "refused.not_relayed",
            "bindings_refused, but the backend's RST is not relayed to the client ({})",
            verdict_name(r.verdict)
        );
        ensure_that!(
            !r.c(Counter::DropNoRoute),
            "drop.no_route",
            "drop_no_route, although every backend is routed"
        );
        ensure_that!(
            !r.c(Counter::DropNoSyncookieKey),
            "drop.no_syncookie_key",
            "drop_no_syncookie_key, although a secret is set"
        );
        let p = match &r.inp {
            Err(refused) => {
                let want = refused.counter();
                ensure_that!(
                    r.verdict == XDP_PASS && r.c(want),
                    "input.refused",
                    "a frame the rules call {} got {} (expected XDP_PASS, untouched, {})",
                    refused.name(),
                    verdict_name(r.verdict),
                    want.label()
                );
                return Ok(());
            }
            Ok(p) => p,
        };
        let svc = self.layout.svc_for(p.dst, p.proto);
        let from_be = self.layout.be_by_addr(p.src, p.proto);
        if svc.is_none() && from_be.is_none() {
            ensure_that!(
                r.verdict == XDP_PASS && r.c(Counter::PassNotService),
                "input.not_service",
                "a packet neither to a service nor from a backend got {} (expected pass_not_service)",
                verdict_name(r.verdict)
            );
        }
        if svc.is_some() {
            ensure_that!(
                !r.c(Counter::PassNotService),
                "input.service_passed",
                "a packet to a service counted pass_not_service"
            );
        }
        ensure_that!(
            !r.c(Counter::DropFragment) || p.first_fragment(),
            "drop.fragment",
            "drop_fragment for a packet that is not a first fragment"
        );
        ensure_that!(
            !r.c(Counter::PassTtlExceeded) || p.ttl <= 1,
            "pass.ttl",
            "pass_ttl_exceeded for TTL {}",
            p.ttl
        );
        if r.c(Counter::PassStaleAckToTc) {
            // Handed to the TC program, which resets the backend's old connection and sends
            // the SYN again: only a pure ACK from the backend of a binding in progress.
            let key = (p.dst, self.layout.svcs[SVC_COOKIE].addr, PROTO_TCP);
            let binding = self.shadow.pending.get(&key).map(|b| b.backend);
            let pure_ack = p.tcp() && p.flags & (F_ACK | F_SYN | F_RST | F_FIN) == F_ACK;
            ensure_that!(
                pure_ack && binding == Some(p.src),
                "pass.stale_ack",
                "pass_stale_ack_to_tc for a packet from {} (flags {:#04x}) whose binding the fuzzer knows as {binding:?}",
                p.src,
                p.flags
            );
            self.count(PATH_STALE_ACK_TO_TC);
        }

        // The shadow holds every flow created since the last flush (and more).
        let known_flow = self.shadow.bound.contains_key(&(p.src, p.dst, p.proto));
        self.last_path = None;

        // Syncookies, checked on the host.
        let ack_only = p.tcp() && p.flags & (F_ACK | F_SYN | F_RST) == F_ACK;
        if r.c(Counter::SyncookiesValid) {
            ensure_that!(
                ack_only && svc == Some(SVC_COOKIE),
                "syncookie.valid",
                "syncookies_valid for a packet that is not an ACK to the cookie service"
            );
            ensure_that!(
                r.windows.iter().any(|t| self.cookie_valid(r, p, *t)),
                "syncookie.valid",
                "syncookies_valid but the cookie {:#010x} is invalid under the test secret",
                p.ack.wrapping_sub(1)
            );
        }
        // A spliced segment dropped for its options: they must really not walk.
        if r.c(Counter::DropUntranslatableOptions) {
            ensure_that!(
                !input_walkable(r),
                "options.untranslatable",
                "drop_untranslatable_options for a segment whose options walk to their end"
            );
        }
        // What a cookie service drops without a flow, by the segment's flags.
        let rst = p.tcp() && p.flags & F_RST != 0;
        for (counter, fits, what) in [
            (
                Counter::SyncookiesInvalid,
                ack_only,
                "an ACK without SYN or RST",
            ),
            (Counter::RstNoFlow, rst, "a RST"),
            (
                Counter::DropOddNoFlow,
                p.tcp() && !rst && !ack_only,
                "a segment with SYN or without ACK (and no RST)",
            ),
        ] {
            if r.c(counter) {
                ensure_that!(
                    fits && svc == Some(SVC_COOKIE),
                    "syncookie.no_flow",
                    "{} for a packet that is not {what} to the cookie service",
                    counter.label()
                );
            }
        }
        if r.c(Counter::SyncookiesInvalid) && ack_only {
            ensure_that!(
                !r.windows.iter().all(|t| self.cookie_valid(r, p, *t)),
                "syncookie.invalid",
                "syncookies_invalid for the valid cookie {:#010x}",
                p.ack.wrapping_sub(1)
            );
        }

        // New flows and bindings: the backend chosen.
        let key = (p.src, p.dst, p.proto);
        let creates = r.c(Counter::NewFlows) || r.c(Counter::FlowMisses);
        let mut expected_binding = None;
        if r.c(Counter::SyncookiesValid) && p.payload_len() > 0 {
            let payload = &r.input[p.payload..p.ip_end];
            let (outcome, pair, backend) =
                self.predict_binding(maps, p, payload)
                    .map_err(|e| Finding {
                        check: "harness",
                        detail: format!("{e:#}"),
                    })?;
            for c in COOKIE_OUTCOMES {
                let want = outcome == Some(c);
                ensure_that!(
                    r.c(c) == want,
                    "cookie.outcome",
                    "scan outcome: host scanner says {:?}, counters {:?}",
                    outcome.map(|c| c.label()),
                    delta_map(r.delta)
                );
            }
            let reported =
                d(r.delta, Counter::CookiePairsReported) + d(r.delta, Counter::CookiePairsLost);
            ensure_that!(
                reported == pair as u64,
                "cookie.pair",
                "token pair reports {reported}, expected {}",
                pair as u64
            );
            match backend {
                Some(b) => expected_binding = Some(b),
                None => ensure_that!(
                    r.c(Counter::DropNoBackend),
                    "cookie.no_backend",
                    "no backend can take the binding, but no drop_no_backend"
                ),
            }
        }
        if r.c(Counter::DropNoBackend) {
            let none = match svc {
                Some(SVC_COOKIE) => expected_binding.is_none(),
                Some(s) => self.ring_pick(maps, s, &p.key()).ok().flatten().is_none(),
                None => false,
            };
            ensure_that!(
                none,
                "drop.no_backend",
                "drop_no_backend although the host finds a backend"
            );
        }
        if creates || r.c(Counter::BindingsStarted) {
            let s = svc.ok_or_else(|| Finding {
                check: "flow.created",
                detail: "a flow was created for a packet not addressed to a service".into(),
            })?;
            let Some(f) = created else {
                ensure_that!(
                    r.c(Counter::DropFlowTableFull),
                    "flow.created",
                    "counted a new flow, but the flow table has no entry for the packet"
                );
                return Ok(());
            };
            ensure_that!(
                f.direction == direction::TO_BACKEND,
                "flow.created",
                "the new entry is not a client -> backend entry"
            );
            let backend = SocketAddrV4::new(
                Ipv4Addr::from(f.new_dst.to_ne_bytes()),
                u16::from_be(f.new_dport),
            );
            let want = if self.layout.svcs[s].cookie {
                expected_binding
            } else {
                self.ring_pick(maps, s, &p.key()).map_err(|e| Finding {
                    check: "harness",
                    detail: format!("{e:#}"),
                })?
            };
            let want = want.map(|b| self.layout.bes[b].addr);
            ensure_that!(
                want == Some(backend),
                "flow.backend",
                "new flow bound to {backend}, the host expects {want:?}"
            );
            let mut macs = ([0u8; 6], [0u8; 6]);
            macs.0.copy_from_slice(&r.input[6..12]);
            macs.1.copy_from_slice(&r.input[0..6]);
            self.shadow.bind(
                s,
                key,
                backend,
                Created {
                    ingress: r.ingress,
                    client_mac: macs.0,
                    our_mac: macs.1,
                },
            );
            if r.c(Counter::BindingsStarted) {
                let segment = r.input[p.l4..p.ip_end].to_vec();
                let cookie = p.ack.wrapping_sub(1);
                let (data, ts) = r
                    .windows
                    .iter()
                    .find_map(|t| self.cookie_data(r, p, *t))
                    .unwrap_or((
                        CookieData {
                            mss: 0,
                            option_bits: 0,
                        },
                        None,
                    ));
                let options = match ts {
                    Some((_, ecr)) => ClientOptions::from_bits(ecr, true),
                    None => ClientOptions::from_bits(data.option_bits, false),
                };
                self.shadow.spliced.remove(&key);
                self.shadow.pending.insert(
                    key,
                    Pending {
                        backend,
                        isn: p.seq.wrapping_sub(1),
                        cookie,
                        mss: decode_mss(cookie & 7).unwrap_or(0),
                        options,
                        client_tsval: ts.map_or(0, |t| t.0),
                        synack_tsval: ts.map_or(0, |t| t.1),
                        segment,
                        residual: l4_residual(r.input, p),
                    },
                );
                self.shadow.tick += 1;
                remember(&mut self.shadow.recent_pending, p.src, self.shadow.tick);
            }
        }
        if r.c(Counter::BindingsTimedOut) {
            self.shadow.pending.remove(&key);
        }

        if r.verdict == XDP_TX || r.verdict == XDP_REDIRECT {
            self.check_output(r, p, svc, from_be)?;
        }
        self.check_liveness(r, p, known_flow)
    }

    pub(super) fn count(&mut self, path: &'static str) {
        *self.paths.entry(path).or_default() += 1;
        self.last_path = Some(path);
    }

    /// Valid traffic whose outcome is certain must get it: a checker that accepts every
    /// output it sees would not notice a data plane that serves nothing.
    fn check_liveness(&mut self, r: &Run, p: &Pkt, known_flow: bool) -> Result<(), Finding> {
        use Template::*;
        let Some(t) = r.clean else { return Ok(()) };
        if matches!(
            t,
            NatSyn | NatAck | NatData | NatFin | NatRst | UdpRequest | DownServiceSyn | CookieSyn
        ) || (t == CookieHandshakeAck && !known_flow)
        {
            *self.liveness.entry(t.name()).or_default() += 1;
        }
        match t {
            NatSyn | NatAck | NatData | NatFin | NatRst | UdpRequest => ensure_that!(
                self.last_path == Some(PATH_NAT_FORWARD),
                "liveness.nat",
                "an unmutated {} to a NAT service got {} (output {:?}), not forwarded to a backend",
                t.name(),
                verdict_name(r.verdict),
                self.last_path
            ),
            DownServiceSyn => ensure_that!(
                r.verdict == XDP_DROP && r.c(Counter::DropNoBackend),
                "liveness.no_backend",
                "a SYN to the service without backends got {}",
                verdict_name(r.verdict)
            ),
            CookieSyn => ensure_that!(
                self.last_path == Some(PATH_SYNACK),
                "liveness.synack",
                "an unmutated SYN to the cookie service got {}, not a syncookie SYN-ACK",
                verdict_name(r.verdict)
            ),
            CookieHandshakeAck if !known_flow => {
                let only_valid = Counter::ALL.iter().all(|c| {
                    let n = d(r.delta, *c);
                    match c {
                        Counter::RxPackets | Counter::SyncookiesValid => n == 1,
                        _ => n == 0,
                    }
                });
                ensure_that!(
                    r.verdict == XDP_DROP && only_valid,
                    "liveness.handshake_ack",
                    "a handshake ACK with a valid syncookie (cookie {:#010x}) and no flow got {}",
                    p.ack.wrapping_sub(1),
                    verdict_name(r.verdict)
                );
            }
            _ => {}
        }
        Ok(())
    }
}

/// The option walk of the run's input frame (the data plane's walk, run on the host).
pub(super) fn input_options(r: &Run) -> Option<(Walk, OptionBytes)> {
    let pk = parse_slice(r.input).ok()?;
    let start = r.input.as_ptr() as usize;
    let o = segment_options(start, start + r.input.len(), &pk);
    Some((walk(&o), o))
}

/// Whether the run's input frame has all its TCP options in the frame and they walk to
/// their end.
pub(super) fn input_walkable(r: &Run) -> bool {
    let Ok(pk) = parse_slice(r.input) else {
        return false;
    };
    let opt_len = pk.payload_off.saturating_sub(pk.l4_off + 20);
    input_options(r).is_some_and(|(w, o)| w.complete && o.len == opt_len)
}

/// The timestamps of the run's input frame, if it has them.
pub(super) fn input_timestamps(r: &Run) -> Option<(u32, u32)> {
    let (w, o) = input_options(r)?;
    w.timestamps(&o)
}

/// `segment` (a TCP header and payload) translated by `edit` as the splice translates it,
/// checksum included; `None` when its options cannot be walked.
pub(super) fn translated_segment(segment: &[u8], edit: &tcp_opts::Edit) -> Option<Vec<u8>> {
    let mut s = segment.to_vec();
    if s.len() < 20 {
        return None;
    }
    let opt_len = ((s[12] >> 4) as usize * 4).saturating_sub(20);
    let start = s.as_mut_ptr() as usize;
    let delta = tcp_opts::translate(start, start + s.len(), 0, opt_len, edit)?;
    let check = u16::from_ne_bytes([s[16], s[17]]);
    let check = csum::apply_delta(check, delta).to_ne_bytes();
    s[16..18].copy_from_slice(&check);
    Some(s)
}

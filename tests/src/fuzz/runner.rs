//! The runner: chunks of cases through the program, resyncs, the report.

use super::*;

/// The fuzzer: state moved onto the bed's worker thread for each chunk of packets.
struct Fuzzer {
    pub(super) cfg: FuzzConfig,
    pub(super) maps: Maps,
    pub(super) oracle: Oracle,
    pub(super) last: GlobalStats,
    start_counters: GlobalStats,
    pub(super) sweep: Vec<Case>,
    pub(super) report: FuzzReport,
    pub(super) iteration: u64,
}

impl Fuzzer {
    pub(super) fn new(fb: &FuzzBed, cfg: &FuzzConfig) -> Result<Fuzzer> {
        let maps = Maps::open(&fb.bed)?;
        let last = maps.counters()?;
        let oracle = Oracle {
            layout: fb.layout.clone(),
            shadow: Shadow::default(),
            paths: BTreeMap::new(),
            forwarded_bad_checksum: 0,
            keys: SyncookieKeys {
                current: TEST_SECRET,
                previous: CookieSecret::default(),
            },
            cookie_cfg: CookieConfig::default(),
            deferred: Vec::new(),
            last_path: None,
            liveness: BTreeMap::new(),
        };
        let sweep = truncation_sweep(&oracle.layout, cfg.seed);
        Ok(Fuzzer {
            cfg: cfg.clone(),
            maps,
            oracle,
            last,
            start_counters: last,
            sweep,
            report: FuzzReport {
                seed: cfg.seed,
                ..Default::default()
            },
            iteration: 0,
        })
    }

    fn next_case(&mut self) -> Case {
        let i = self.iteration as usize;
        if i < self.sweep.len() {
            return self.sweep[i].clone();
        }
        let mut rng = Rng::for_iteration(self.cfg.seed, self.iteration);
        let t = Template::pick(&mut rng);
        let gen = Generator {
            layout: &self.oracle.layout,
            shadow: &self.oracle.shadow,
        };
        let clean = rng.percent(35);
        gen.case(&mut rng, t, clean)
    }

    fn record(&mut self, f: Failure) {
        *self.report.failure_counts.entry(f.check).or_default() += 1;
        if let Some(k) = f.known_bug() {
            *self.report.known_bug_hits.entry(k.name).or_default() += 1;
            if self.report.failures.iter().any(|x| x.check == f.check) {
                return;
            }
        }
        if self.report.failures.len() < self.cfg.max_failures {
            if self.cfg.progress {
                eprintln!("finding:\n{f}");
            }
            self.report.failures.push(f);
        }
    }

    pub(super) fn failed(&self) -> bool {
        self.report.new_failures() >= self.cfg.max_failures as u64
    }

    /// Runs `n` packets on the worker thread.
    fn run_chunk(&mut self, p: &Programs, n: u64) {
        let mut out = Vec::new();
        for _ in 0..n {
            if self.failed() {
                return;
            }
            let case = self.next_case();
            let iteration = self.iteration;
            self.iteration += 1;
            self.report.packets += 1;
            *self
                .report
                .templates
                .entry(case.template.name())
                .or_default() += 1;
            let ifindex = p.ifindex(case.ingress);
            let ingress = ifindex.unwrap_or(1);
            let t0 = cookie_window();
            // Room for the frame and what the program may grow it by (the kernel fails the
            // call with ENOSPC, after running the program, if the output does not fit).
            out.resize(case.frame.len() + 4096, 0);
            let res = test_run(&p.balancer, &case.frame, ifindex, 1, &mut out);
            let t1 = cookie_window();
            let seed = self.cfg.seed;
            let failure = |check: &'static str,
                           detail: String,
                           verdict: u32,
                           output: &[u8],
                           delta: &Delta| Failure {
                check,
                detail,
                seed,
                iteration,
                template: case.template.name(),
                mutations: case.mutations.clone(),
                ingress: case.ingress,
                verdict,
                input: case.frame.clone(),
                output: output.to_vec(),
                counters: delta_map(delta),
            };
            let r = match res {
                Ok(r) => r,
                Err(e) => {
                    if case.frame.len() < 14 {
                        self.report.refused += 1;
                    } else {
                        let f = failure(
                            "kernel.refused",
                            format!("{e:#}"),
                            u32::MAX,
                            &[],
                            &[0; Counter::COUNT],
                        );
                        self.record(f);
                        // The program may have run: start over from the maps' state.
                        self.resync();
                    }
                    continue;
                }
            };
            if case.frame.len() < 14 {
                let f = failure(
                    "kernel.accepted_short",
                    "the kernel ran the program on a frame shorter than an Ethernet header".into(),
                    r.return_value,
                    &[],
                    &[0; Counter::COUNT],
                );
                self.record(f);
            }
            self.report.runs += 1;
            let output = &out[..(r.data_size_out as usize).min(out.len())];
            *self
                .report
                .verdicts
                .entry(verdict_name(r.return_value))
                .or_default() += 1;
            let now = match self.maps.counters() {
                Ok(c) => c,
                Err(e) => {
                    let f = failure(
                        "harness",
                        format!("{e:#}"),
                        r.return_value,
                        output,
                        &[0; Counter::COUNT],
                    );
                    self.record(f);
                    return;
                }
            };
            let mut delta = [0u64; Counter::COUNT];
            for (i, v) in delta.iter_mut().enumerate() {
                *v = now[i].wrapping_sub(self.last[i]);
            }
            self.last = now;
            // The program sees the linear part of the test run's buffer only.
            let inp = parse(&case.frame[..case.frame.len().min(LINEAR_MAX)]);
            *self
                .report
                .classes
                .entry(match &inp {
                    Ok(_) => "parsed TCP/UDP",
                    Err(e) => e.name(),
                })
                .or_default() += 1;
            let created = match &inp {
                Ok(pk)
                    if d(&delta, Counter::NewFlows) + d(&delta, Counter::FlowMisses) > 0
                        || d(&delta, Counter::BindingsStarted) > 0 =>
                {
                    self.maps.flows.get(&pk.key(), 0).ok()
                }
                _ => None,
            };
            let run = Run {
                input: &case.frame,
                inp,
                verdict: r.return_value,
                out: output,
                delta: &delta,
                ingress,
                backend_ifindex: p.backend_ifindex,
                windows: [t0, t1],
                clean: case.mutations.is_empty().then_some(case.template),
            };
            let result = self.oracle.check(&self.maps, &run, created);
            let stopped = result.is_err();
            let mut findings = std::mem::take(&mut self.oracle.deferred);
            findings.extend(result.err());
            for fd in findings {
                let f = failure(fd.check, fd.detail, r.return_value, output, &delta);
                self.record(f);
            }
            if stopped {
                // The checks stopped before the shadow learnt what this packet did.
                self.resync();
            }
        }
    }

    /// After a packet whose effects the shadow may have missed: empties the flow table
    /// and the shadow, and re-reads the counters.
    fn resync(&mut self) {
        self.report.resyncs += 1;
        let flushed = self.maps.flush();
        self.oracle.shadow = Shadow::default();
        let counters = self.maps.counters();
        match (flushed, counters) {
            (Ok(_), Ok(c)) => self.last = c,
            (Err(e), _) | (_, Err(e)) => {
                self.record(Failure {
                    check: "harness",
                    detail: format!("resynchronising: {e:#}"),
                    seed: self.cfg.seed,
                    iteration: self.iteration,
                    template: "(resync)",
                    mutations: Vec::new(),
                    ingress: Ingress::Loopback,
                    verdict: u32::MAX,
                    input: Vec::new(),
                    output: Vec::new(),
                    counters: BTreeMap::new(),
                });
            }
        }
    }

    /// Empties the flow table and the kept segments, and the shadow with them.
    pub(super) fn flush(&mut self) -> Result<()> {
        self.maps.flush()?;
        self.oracle.shadow = Shadow::default();
        self.report.flushes += 1;
        Ok(())
    }

    /// End-of-run checks on the accumulated counters.
    fn finish(mut self, elapsed: Duration) -> Result<FuzzReport> {
        let now = self.maps.counters()?;
        let mut total = [0u64; Counter::COUNT];
        for (i, v) in total.iter_mut().enumerate() {
            *v = now[i] - self.start_counters[i];
        }
        self.report.counters = delta_map(&total);
        self.report.paths = std::mem::take(&mut self.oracle.paths);
        self.report.liveness = std::mem::take(&mut self.oracle.liveness);
        self.report.forwarded_bad_checksum = self.oracle.forwarded_bad_checksum;
        self.report.elapsed = elapsed;
        let g = |c: Counter| total[c as usize];
        let mut checks = Vec::new();
        let fail = |check: &'static str, detail: String| Failure {
            check,
            detail,
            seed: self.cfg.seed,
            iteration: self.iteration,
            template: "(end of run)",
            mutations: Vec::new(),
            ingress: Ingress::Loopback,
            verdict: u32::MAX,
            input: Vec::new(),
            output: Vec::new(),
            counters: delta_map(&total),
        };
        let mut failures = Vec::new();
        if g(Counter::RxPackets) == self.report.runs {
            checks.push(format!("rx_packets = runs = {}", self.report.runs));
        } else {
            failures.push(fail(
                "end.rx_packets",
                format!(
                    "rx_packets {} for {} runs",
                    g(Counter::RxPackets),
                    self.report.runs
                ),
            ));
        }
        // Per-backend counters against the global ones.
        let mut sum = BackendStats::default();
        let layout = self.oracle.layout.clone();
        for b in &layout.bes {
            let s = self.maps.backend_counters(b.slot)?;
            if b.state != backend_state::UP
                && (s.new_flows != 0 || s.cookie_hits != 0 || s.cookie_misses != 0)
            {
                failures.push(fail(
                    "end.backend_state",
                    format!(
                        "backend {} ({}) got new flows {} / cookie hits {} / misses {}",
                        b.addr,
                        balancer_user::BackendState::from_code(b.state)
                            .map_or("empty", balancer_user::BackendState::name),
                        s.new_flows,
                        s.cookie_hits,
                        s.cookie_misses
                    ),
                ));
            }
            let replacement = layout
                .failover
                .values()
                .any(|&r| layout.bes[r].addr == b.addr);
            if s.failover_redirects != 0 && !replacement {
                failures.push(fail(
                    "end.backend_failover",
                    format!(
                        "backend {} got {} failover redirects",
                        b.addr, s.failover_redirects
                    ),
                ));
            }
            sum.add(&s);
        }
        let sent = g(Counter::TxSameInterface) + g(Counter::TxRedirect);
        let packets = sum.packets_to + sum.packets_from;
        if packets == sent {
            checks.push(format!(
                "per-backend packets to + from = tx_same_interface + tx_redirect = {sent}"
            ));
        } else {
            let stale = g(Counter::BindStaleAcks);
            let why = if sent.checked_sub(packets) == Some(stale) {
                " (all of it bind_stale_acks)"
            } else {
                ""
            };
            failures.push(fail(
                "end.backend_packets",
                format!(
                    "per-backend packets to + from {packets}, tx_same_interface + tx_redirect {sent}, differs by {}{why}",
                    sent.abs_diff(packets)
                ),
            ));
        }
        let bytes = sum.bytes_to + sum.bytes_from;
        if bytes == g(Counter::TxBytes) {
            checks.push(format!("per-backend bytes to + from = tx_bytes = {bytes}"));
        } else {
            failures.push(fail(
                "end.backend_bytes",
                format!(
                    "per-backend bytes {bytes}, tx_bytes {}",
                    g(Counter::TxBytes)
                ),
            ));
        }
        if sum.new_flows == g(Counter::NewFlows) {
            checks.push(format!(
                "per-backend new flows = new_flows = {}",
                sum.new_flows
            ));
        } else {
            failures.push(fail(
                "end.backend_new_flows",
                format!(
                    "per-backend new flows {}, new_flows {}",
                    sum.new_flows,
                    g(Counter::NewFlows)
                ),
            ));
        }
        let choices = sum.cookie_hits + sum.cookie_misses + sum.failover_redirects;
        if choices >= g(Counter::BindingsStarted) {
            checks.push(format!(
                "cookie hits + misses + failover redirects ({choices}) >= bindings_started ({})",
                g(Counter::BindingsStarted)
            ));
        } else {
            failures.push(fail(
                "end.cookie_choices",
                format!(
                    "{choices} backend choices for {} bindings",
                    g(Counter::BindingsStarted)
                ),
            ));
        }
        checks.push("no new flow or cookie choice for a draining or down backend".into());
        for f in failures {
            self.record(f);
        }
        self.report.end_checks = checks;
        Ok(self.report)
    }
}

/// Every template (and variants with a VLAN tag, IPv4 and TCP options) cut at every
/// offset.
fn truncation_sweep(layout: &Layout, seed: u64) -> Vec<Case> {
    let shadow = Shadow::default();
    let gen = Generator {
        layout,
        shadow: &shadow,
    };
    let mut rng = Rng::new(seed ^ 0x5eed_5eed);
    let mut bases: Vec<(Template, Vec<u8>, Ingress)> = Vec::new();
    for (t, _) in TEMPLATES {
        let c = gen.case(&mut rng, t, true);
        bases.push((t, c.frame, c.ingress));
    }
    // Variants: a tagged data segment with IPv4 and TCP options, a tagged datagram, a
    // first segment with IPv4 options.
    let nat = layout.svcs[SVC_TCP].addr;
    let tagged = Frame::tcp(
        SocketAddrV4::new(CLIENT, 40000),
        nat,
        flags(false, true, false, false, true),
    )
    .vlan(42)
    .ip_options(&[7, 7, 4, 0, 0, 0, 0])
    .tcp_options(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])
    .payload(b"GET / HTTP/1.1\r\n\r\n");
    bases.push((Template::NatData, tagged.build(), Ingress::Client));
    let udp = Frame::udp(
        SocketAddrV4::new(CLIENT, 40001),
        layout.svcs[SVC_UDP].addr,
        b"query",
    )
    .vlan(7);
    bases.push((Template::UdpRequest, udp.build(), Ingress::Client));
    let first = gen
        .cookie_segment(
            &mut rng,
            SocketAddrV4::new(CLIENT, 40002),
            flags(false, true, false, false, true),
            false,
        )
        .ip_options(&[148, 4, 0, 0])
        .payload(b"GET / HTTP/1.1\r\nCookie: JSESSIONID=s!app1!app2\r\n\r\n");
    bases.push((Template::CookieFirstSegment, first.build(), Ingress::Client));
    let mut out = Vec::new();
    for (t, frame, ingress) in bases {
        for len in 0..frame.len() {
            out.push(Case {
                template: t,
                frame: frame[..len].to_vec(),
                ingress,
                mutations: vec![format!("sweep-trunc@{len}")],
            });
        }
    }
    out
}

/// Runs the fuzzer as configured (needs root). The report lists what was found; the run
/// itself fails only when the bed cannot be set up or read.
pub fn run(cfg: &FuzzConfig) -> Result<FuzzReport> {
    let fb = FuzzBed::new(cfg.flow_capacity).context("setting up the fuzz bed")?;
    let mut fuzzer = Fuzzer::new(&fb, cfg)?;
    if cfg.progress {
        eprintln!(
            "fuzz seed {}: {} packets ({} in the truncation sweep), flush every {}",
            cfg.seed,
            cfg.packets,
            fuzzer.sweep.len().min(cfg.packets as usize),
            cfg.epoch
        );
    }
    let start = Instant::now();
    let mut done = 0u64;
    let mut aged = !cfg.age_bindings;
    while done < cfg.packets && !fuzzer.failed() {
        let n = cfg.epoch.max(1).min(cfg.packets - done);
        fuzzer = fb.bed.with_programs(move |p| {
            fuzzer.run_chunk(p, n);
            fuzzer
        })?;
        done += n;
        if !aged && done < cfg.packets {
            // The bindings in progress outlive the bind timeout: their retransmissions
            // get the client a RST (`bindings_timed_out`).
            aged = true;
            std::thread::sleep(AGING_PAUSE);
            fuzzer.report.aging_pause = AGING_PAUSE;
        } else {
            fuzzer.flush()?;
        }
        if cfg.progress {
            let secs = start.elapsed().as_secs_f64();
            eprintln!(
                "  {done} packets, {:.0} packets/s, new findings {}, known bugs hit {}",
                done as f64 / secs.max(1e-9),
                fuzzer.report.new_failures(),
                fuzzer.report.known_bug_hits.values().sum::<u64>()
            );
        }
    }
    fuzzer.finish(start.elapsed())
}

/// Longer than the data plane's bind timeout (3 s).
const AGING_PAUSE: Duration = Duration::from_millis(3200);

/// A seed from the clock and the pid, for runs that want a new one.
pub fn random_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    Rng::new(t ^ ((std::process::id() as u64) << 32)).next_u64()
}

//! Segments out of order, overlapping and rewritten while a connection is being bound.

use super::*;

// --- 3. Segments out of order, overlapping, rewritten while binding ----------------

const BODY_LEN: usize = 1500;

/// `len` bytes of a deterministic pseudo-random stream.
fn body(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// Head of a `Connection: close` upload of `len` bytes, with `cookie` if any.
fn upload_head(cookie: Option<&str>, len: usize) -> Vec<u8> {
    let mut h = format!("POST /upload HTTP/1.1\r\nHost: {VIP}\r\n");
    if let Some(c) = cookie {
        h.push_str(&format!("Cookie: {c}\r\n"));
    }
    h.push_str(&format!(
        "Content-Length: {len}\r\nConnection: close\r\n\r\n"
    ));
    h.into_bytes()
}

/// The ways the request reaches the balancer in [`binding_scenario`]. "While binding":
/// the link to the backend the cookie names (be4, behind a [`CutLink`]) is cut while
/// the first segment and what follows it arrive, so the connection stays in the binding
/// phase (its SYN to the backend lost) until the link is back and the client
/// retransmits.
const SCENARIOS: [&str; 7] = [
    "a later segment before the first",
    "overlapping out-of-order pieces after the first segment",
    "head cut after the cookie, overlapping continuation while binding",
    "first segment retransmitted with other bytes while binding",
    "first segment retransmitted with other bytes after binding",
    "first segment retransmitted longer (repacketized) while binding",
    "partial head without the cookie, overlapping continuation",
];

/// Scenarios that bind to the backend behind the cut link.
fn while_binding(kind: usize) -> bool {
    matches!(kind, 2 | 3 | 5)
}

/// What one scenario must end with: the backend named (`None`: the policy chooses) and
/// the body the backend must have read.
struct Expect {
    backend: Option<String>,
    body: Vec<u8>,
}

/// Backend `i`'s link to the bridge, through a userspace relay ([`Relay`]) in a
/// namespace of its own, so that a test can cut it (every IPv4 frame lost) and restore
/// it. The relay goes before its namespace.
struct CutLink {
    relay: Relay,
    _ns: Netns,
}

impl CutLink {
    fn insert(t: &Topology, i: usize) -> CutLink {
        let ns = Netns::new("lbr").expect("relay namespace");
        // The relay's namespace sends nothing itself.
        ns.exec(
            "sysctl",
            &[
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        )
        .unwrap();
        // The backend's port on the bridge moves into the relay's namespace; a new
        // veth takes its place on the bridge.
        let port = format!("be{i}");
        let bridged = format!("rl{i}");
        t.lan
            .ip(&["link", "set", &port, "netns", ns.name()])
            .unwrap();
        netns::veth(&ns, "up0", &t.lan, &bridged).unwrap();
        t.lan
            .ip(&["link", "set", &bridged, "master", "br0"])
            .unwrap();
        ns.ip(&["link", "set", &port, "up"]).unwrap();
        // The relay needs wire-sized frames (see `impair`).
        let off = [
            "gro", "off", "gso", "off", "tso", "off", "tx", "off", "rx", "off",
        ];
        for dev in [port.as_str(), "up0"] {
            let mut args = vec!["-K", dev];
            args.extend(off);
            ns.exec("ethtool", &args).unwrap();
        }
        let mut args = vec!["-K", "eth0"];
        args.extend(off);
        t.backends[i].ns.exec("ethtool", &args).unwrap();
        let relay = Relay::start(&ns, &port, "up0", Impairment::NONE).expect("starting the relay");
        CutLink { relay, _ns: ns }
    }

    fn cut(&self, cut: bool) {
        self.relay.set(if cut {
            Impairment::new(1.0, 0.0, 7)
        } else {
            Impairment::NONE
        });
    }
}

/// One raw connection from `src` whose upload (cookie naming `named`, `BODY_LEN` bytes)
/// reaches the balancer as scenario `kind` says; returns the response. `other` names
/// another server (same length as `named`) for the rewritten copies.
fn binding_scenario(
    kind: usize,
    i: usize,
    src: Ipv4Addr,
    (named, other): (&str, &str),
    link: &CutLink,
) -> (Expect, anyhow::Result<http::Response>) {
    let mut rng = Rng::new(0xb1d0 + i as u64);
    let data = body(BODY_LEN, rng.next_u64());
    let cookie = (kind != 6).then(|| session_cookie(i, named));
    let head = upload_head(cookie.as_deref(), BODY_LEN);
    let h = head.len();
    let req = [head.clone(), data.clone()].concat();
    let expect = Expect {
        backend: cookie.is_some().then(|| named.to_string()),
        body: data.clone(),
    };
    // The same request naming another server with other body bytes.
    let alt = [
        upload_head(Some(&session_cookie(i, other)), BODY_LEN),
        body(BODY_LEN, rng.next_u64()),
    ]
    .concat();
    assert!(
        kind == 6 || alt.len() == req.len(),
        "{named} and {other} differ in length"
    );
    let wait = Duration::from_secs(3);
    let mut run = || -> anyhow::Result<http::Response> {
        let sport = 20_000 + rng.below(40_000) as u16;
        let mut c = RawTcp::connect("eth0", (src, sport), (VIP, SERVICE_PORT), rng.u32(), wait)?;
        let cut = |on| {
            if while_binding(kind) {
                link.cut(on);
            }
        };
        cut(true);
        let sent = (|| -> anyhow::Result<()> {
            match kind {
                0 => {
                    // No flow yet: `seq - 1` is not the ISN the syncookie was made for.
                    c.send(h, &data[..700])?;
                    c.poll(Duration::from_millis(30))?;
                    c.deliver(&[(0, &head)], wait)?;
                    c.deliver(&[(h + 700, &data[700..]), (h, &data[..700])], wait)
                }
                1 => {
                    c.deliver(&[(0, &head)], wait)?;
                    c.deliver(
                        &[
                            (h + 900, &data[900..]),
                            (h, &data[..600]),
                            (h + 400, &data[400..1100]),
                        ],
                        wait,
                    )
                }
                2 => {
                    // Up to the end of the cookie line: the token is known, the head is
                    // not complete.
                    let cut_at = req
                        .windows(2)
                        .enumerate()
                        .skip(req.windows(7).position(|w| w == b"Cookie:").unwrap_or(0))
                        .find(|(_, w)| *w == b"\r\n")
                        .map(|(k, _)| k + 2)
                        .unwrap_or(40);
                    c.burst(&[
                        (0, &req[..cut_at]),
                        (cut_at - 10, &req[cut_at - 10..h + 200]),
                    ])?;
                    c.poll(Duration::from_millis(50))?;
                    link.cut(false);
                    c.deliver(
                        &[
                            (0, &req[..cut_at]),
                            (cut_at - 10, &req[cut_at - 10..h + 200]),
                            (h + 200, &req[h + 200..]),
                        ],
                        wait,
                    )
                }
                3 => {
                    let first = h + 300;
                    c.burst(&[(0, &req[..first]), (0, &alt[..first])])?;
                    c.poll(Duration::from_millis(50))?;
                    link.cut(false);
                    // The client keeps retransmitting the other bytes.
                    c.deliver(&[(0, &alt[..first])], wait)?;
                    c.deliver(&[(first, &req[first..])], wait)
                }
                4 => {
                    let first = h + 300;
                    c.deliver(&[(0, &req[..first])], wait)?;
                    c.send(0, &alt[..first])?;
                    c.poll(Duration::from_millis(20))?;
                    c.deliver(&[(first, &req[first..])], wait)
                }
                5 => {
                    c.burst(&[(0, &req[..h + 300]), (0, &req[..h + 800])])?;
                    c.poll(Duration::from_millis(50))?;
                    link.cut(false);
                    c.deliver(&[(0, &req[..h + 800]), (h + 800, &req[h + 800..])], wait)
                }
                _ => {
                    // 40 bytes: no end of head and no cookie, so the policy binds; the next
                    // piece overlaps it.
                    c.burst(&[(0, &req[..40]), (30, &req[30..300])])?;
                    c.deliver(
                        &[(0, &req[..40]), (30, &req[30..300]), (300, &req[300..])],
                        wait,
                    )
                }
            }
        })();
        cut(false);
        sent?;
        let r = c.response(wait);
        let _ = c.abort();
        r
    };
    let r = run();
    (expect, r)
}

/// Whether a response shows the backend read exactly the intended request.
fn consistent(e: &Expect, r: &http::Response) -> Result<String, String> {
    let who = r.header("x-backend").unwrap_or_default().to_string();
    let fnv = Fnv64::of(&e.body).hex();
    let len = e.body.len().to_string();
    let ok = r.status == 200
        && e.backend.as_ref().is_none_or(|b| *b == who)
        && r.header("x-body-len") == Some(len.as_str())
        && r.header("x-body-fnv") == Some(fnv.as_str());
    if ok {
        Ok(who)
    } else {
        Err(format!(
            "status {} from {who:?} (expected {:?}), body {:?} bytes with digest {:?} (sent {len}, {fnv})",
            r.status,
            e.backend,
            r.header("x-body-len"),
            r.header("x-body-fnv")
        ))
    }
}

/// Raw clients complete the syncookie handshake and then send their first request in
/// pieces the data plane must not mix up: a later segment before the first (no flow yet:
/// its `seq - 1` is not the ISN the syncookie was made for, so it is dropped as an
/// invalid syncookie), overlapping and out-of-order pieces, a head cut after the cookie
/// followed by an overlapping piece while binding (dropped while binding: only the first
/// segment means anything then), the first segment retransmitted with other bytes (a
/// cookie naming another server, another body) while or after binding, or retransmitted
/// longer, and a partial head without the cookie (bound by the policy) with an
/// overlapping continuation. The backend must read exactly the request the client meant
/// first (its digest of the body, and the backend the first copy named), or the
/// connection fails; never a mix. While binding, the data plane keeps the first copy and
/// only re-sends its SYN for a retransmission; after binding, the backend's TCP keeps
/// the bytes it already has. Legit clients meanwhile (naming be1-be3): 100%.
#[test]
fn segments_out_of_order_or_rewritten_while_binding_never_mix() {
    const ROUNDS: usize = 3;
    let _g = topology::machine_shared();
    let t = setup(4, &[]);
    let link = CutLink::insert(&t, 3);
    let names: Vec<String> = t.backends.iter().map(|b| b.name.clone()).collect();
    let legit_names = &names[..3];
    let before = Stats::read(&t);
    let started = Instant::now();
    let (outcomes, legit) = during_naming(&t, legit_names, 2, || {
        let mut out = Vec::new();
        for i in 0..ROUNDS * SCENARIOS.len() {
            let kind = i % SCENARIOS.len();
            let src = Ipv4Addr::new(198, 18, 0, 40 + i as u8);
            let (named, other) = if while_binding(kind) {
                (&names[3], &names[i % 3])
            } else {
                (&names[i % 3], &names[(i + 1) % 3])
            };
            let (e, r) = binding_scenario(kind, i, src, (named, other), &link);
            out.push((kind, e, r));
        }
        out
    });
    let elapsed = started.elapsed();
    let after = Stats::read(&t);
    let ctx = after.summary();
    let d = |c: &str| after.global(c) - before.global(c);
    let mut inconsistent = Vec::new();
    let mut completed = [0usize; SCENARIOS.len()];
    let mut failed = Vec::new();
    for (kind, e, r) in &outcomes {
        match r {
            Ok(resp) => match consistent(e, resp) {
                Ok(_) => completed[*kind] += 1,
                Err(why) => inconsistent.push(format!("{}: {why}", SCENARIOS[*kind])),
            },
            Err(err) => failed.push(format!("{}: {err:#}", SCENARIOS[*kind])),
        }
    }
    eprintln!(
        "binding with hostile segments: {} raw connections in {:.2} s; completed per scenario {:?} of {ROUNDS} ({:?}); failed (reset or no answer, allowed) {:?}; inconsistent {:?}; {}; syncookies_invalid +{}, drop_while_binding +{}, bind_retransmits +{}, cookie_beyond_first_segment +{}; be4 link {}",
        outcomes.len(),
        elapsed.as_secs_f64(),
        completed,
        SCENARIOS,
        failed,
        inconsistent,
        legit.summary(),
        d("syncookies_invalid"),
        d("drop_while_binding"),
        d("bind_retransmits"),
        d("cookie_beyond_first_segment"),
        link.relay.summary()
    );
    legit.assert_all_ok(&ctx);
    assert!(
        inconsistent.is_empty(),
        "the backend read something other than what the client meant: {inconsistent:?}; {ctx}"
    );
    // The raw client works: every scenario completed at least once.
    for (k, n) in completed.iter().enumerate() {
        assert!(
            *n > 0,
            "{} never completed: {failed:?}; {ctx}",
            SCENARIOS[k]
        );
    }
    // The later segments sent before the first found no flow and no valid syncookie.
    assert!(d("syncookies_invalid") >= ROUNDS as u64, "{ctx}");
    // The binding phase was exercised: overlapping pieces dropped while binding, the
    // repeated first segments re-sent the SYN (twice each: once cut, once restored).
    assert!(d("drop_while_binding") >= ROUNDS as u64, "{ctx}");
    assert!(d("bind_retransmits") >= 4 * ROUNDS as u64, "{ctx}");
    assert_eq!(d("cookie_beyond_first_segment"), ROUNDS as u64, "{ctx}");
    for c in [
        "drop_flow_table_full",
        "bindings_timed_out",
        "pass_malformed",
    ] {
        assert_eq!(d(c), 0, "{c}: {ctx}");
    }
}

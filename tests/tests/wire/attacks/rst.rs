//! RST floods with out-of-window sequence numbers on live spliced connections.

use super::*;

// --- 2. RST flood on live spliced connections --------------------------------------

/// Idle timeout of TCP flows in SYN, FIN or RST state in the RST test (the default is
/// 30 s; short here so that the test can idle past it).
const TRANSIENT_TIMEOUT_S: u64 = 3;

struct LiveConn {
    conn: Conn,
    isn: u32,
    port: u16,
    backend: String,
    cookie: String,
}

impl LiveConn {
    fn request(&mut self) -> Result<String, String> {
        match self
            .conn
            .request("GET", "/", &[("Cookie", &self.cookie)], &[])
        {
            Ok(r) if r.status == 200 && r.text() == self.backend => Ok(r.text()),
            Ok(r) => Err(format!("status {} from {}", r.status, r.text())),
            Err(e) => Err(format!("{e:#}")),
        }
    }
}

/// The TCP challenge-ACK and reset counters of a backend's stack (`nstat`), for the
/// report.
fn backend_tcp_counters(t: &Topology, i: usize) -> String {
    match t.backends[i].ns.exec("nstat", &["-asz"]) {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| {
                ["Challenge", "EstabResets", "AttemptFails", "BeyondWindow"]
                    .iter()
                    .any(|k| l.contains(k))
            })
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join("="))
            .collect::<Vec<_>>()
            .join(" "),
        Err(e) => format!("nstat: {e:#}"),
    }
}

/// An attacker who knows the 4-tuples of live keep-alive connections (client address
/// and port) but not their sequence numbers floods RSTs (and RST|ACKs) on them; the
/// sequence numbers here are kept at least 2^28 away from the connection's window
/// (random ones are out of window but for one in 65536, which would earn a challenge
/// ACK, and exact with odds 2^-32). The connections must go on serving requests
/// throughout, keep their flow entries, and still work after idling.
///
/// What the data plane does with a RST on a spliced flow: it NATs it to the backend
/// like any packet of the connection (the client's sequence space is the backend's, so
/// the sequence number passes unchanged), and the backend's kernel checks it (RFC 5961
/// section 3: a RST out of the window is dropped, one in the window but not exact earns
/// a challenge ACK, only `seq == rcv_nxt` resets). The connection is never torn down by
/// the balancer itself. The flow-state tracking (`flow::next_state`) notes the RST
/// (state closed) without a sequence check, so a closed spliced entry keeps the
/// established idle timeout (`flow::still_valid`): were it to expire after the short
/// `tcp-transient-timeout`, a keep-alive connection idling longer than that would lose
/// its entry, and in cookie mode a lost entry cannot be re-created (its next segment
/// has no valid syncookie), black-holing the connection. The test idles the attacked
/// connections past the transient timeout and uses them again.
#[test]
fn rst_flood_out_of_window_spares_live_spliced_connections() {
    const TARGETS: usize = 4;
    const RATE: u64 = 150_000;
    const TIME: Duration = Duration::from_secs(2);
    let _g = topology::machine_exclusive();
    let transient = TRANSIENT_TIMEOUT_S.to_string();
    let t = setup(3, &["--tcp-transient-timeout", &transient]);
    let names: Vec<String> = t.backends.iter().map(|b| b.name.clone()).collect();
    // TARGETS attacked connections and one control connection, each bound by a first
    // request.
    let mut conns = t
        .client
        .run(move || -> anyhow::Result<Vec<LiveConn>> {
            (0..=TARGETS)
                .map(|k| {
                    let (conn, isn) = attack::connect_reading_isn("eth0", vip())?;
                    let port = conn.local_addr()?.port();
                    let backend = names[k % names.len()].clone();
                    let mut c = LiveConn {
                        conn,
                        isn,
                        port,
                        cookie: session_cookie(100 + k, &backend),
                        backend,
                    };
                    c.request().map_err(anyhow::Error::msg)?;
                    Ok(c)
                })
                .collect()
        })
        .unwrap()
        .expect("opening the keep-alive connections");
    let control = conns.pop().unwrap();
    let mut targets = conns;
    let tuples: Vec<(u16, u32)> = targets.iter().map(|c| (c.port, c.isn)).collect();
    let ports: BTreeSet<u16> = targets.iter().map(|c| c.port).collect();
    let before = Stats::read(&t);
    let table_before = Table::read(&t);
    let ((flood, kept), legit) = during(&t, 1, || {
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            // The attacked connections stay in use throughout.
            let user = s.spawn(|| {
                let mut out = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let c = &mut targets[i % TARGETS];
                    out.push((c.port, c.request()));
                    i += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                out
            });
            let flood = attack::flood(TIME, RATE, 0x5e7, |rng, buf| {
                let (port, isn) = tuples[rng.below(TARGETS)];
                let mut s = Segment::between(CLIENT_ADDR, port, VIP, SERVICE_PORT);
                // At least 2^28 from the window on either side.
                s.seq = isn
                    .wrapping_add(1 + 0x1000_0000)
                    .wrapping_add(rng.below(0xe000_0000) as u32);
                s.window = 0;
                s.flags = TCP_RST;
                if rng.below(2) == 0 {
                    s.flags |= TCP_ACK;
                    s.ack = rng.u32();
                }
                build_into(&s, buf);
            });
            stop.store(true, Ordering::Relaxed);
            (flood, user.join().expect("connection user panicked"))
        })
    });
    let flood = flood.expect("flooding from the client namespace");
    let after_flood = Stats::read(&t);
    let table = Table::read(&t);
    let rows: Vec<(String, String, String)> = table
        .rows_of_ports(&ports)
        .iter()
        .map(|r| {
            (
                r["client"].as_str().unwrap_or_default().to_string(),
                r["phase"].as_str().unwrap_or_default().to_string(),
                r["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    // Idle past the transient timeout, then use every connection again.
    let idle = Duration::from_millis(TRANSIENT_TIMEOUT_S * 1000 + 1500);
    std::thread::sleep(idle);
    let mut all = targets;
    all.push(control);
    let after_idle: Vec<(u16, bool, Result<String, String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = all
            .iter_mut()
            .enumerate()
            .map(|(k, c)| {
                s.spawn(move || {
                    let _ = c
                        .conn
                        .stream()
                        .set_read_timeout(Some(Duration::from_secs(3)));
                    (c.port, k == TARGETS, c.request())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let after = Stats::read(&t);
    let sent_to: u64 = t
        .backends
        .iter()
        .map(|b| {
            after_flood.backend(&b.endpoint(), "packets_to")
                - before.backend(&b.endpoint(), "packets_to")
        })
        .sum();
    let kept_ok = kept.iter().filter(|(_, r)| r.is_ok()).count();
    eprintln!(
        "RST flood: {} RSTs on {TARGETS} live connections in {:.2} s = {:.0}/s sent (bound {RATE}/s, {} send errors); {} packets NATed to the backends during it; keep-alive requests on the attacked connections {}/{} ok; {}; flows of the attacked connections after the flood {:?}; after idling {:.1} s (transient timeout {TRANSIENT_TIMEOUT_S} s): {:?}; table {} -> {}; backend TCP counters: {}",
        flood.sent,
        flood.elapsed.as_secs_f64(),
        flood.rate(),
        flood.errors,
        sent_to,
        kept_ok,
        kept.len(),
        legit.summary(),
        rows,
        idle.as_secs_f64(),
        after_idle,
        table_before.summary(),
        table.summary(),
        (0..t.backends.len())
            .map(|i| format!("be{}: {}", i + 1, backend_tcp_counters(&t, i)))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let ctx = after.summary();
    legit.assert_all_ok(&ctx);
    let mut violations = Vec::new();
    for (port, r) in &kept {
        if let Err(e) = r {
            violations.push(format!(
                "request on attacked port {port} during the flood: {e}"
            ));
        }
    }
    if kept.len() < 10 {
        violations.push(format!("only {} requests during the flood", kept.len()));
    }
    if rows.len() != TARGETS {
        violations.push(format!("flow rows of the attacked connections: {rows:?}"));
    }
    // The entries may show the RSTs (state closed): what matters is that they stay
    // spliced and keep the established idle timeout, which the idling below checks.
    for (client, phase, _) in &rows {
        if phase != "spliced" {
            violations.push(format!(
                "flow of {client} is {phase} after the RST flood (was spliced)"
            ));
        }
    }
    for (port, control, r) in &after_idle {
        if let Err(e) = r {
            violations.push(format!(
                "{} connection (port {port}) after idling {:.1} s: {e}",
                if *control { "control" } else { "attacked" },
                idle.as_secs_f64()
            ));
        }
    }
    let d = |c: &str| after.global(c) - before.global(c);
    if d("syncookies_invalid") != 0 {
        violations.push(format!(
            "{} segments of the live connections found no flow entry and were dropped as invalid syncookies",
            d("syncookies_invalid")
        ));
    }
    if (sent_to as f64) < 0.5 * flood.sent as f64 {
        violations.push(format!(
            "only {sent_to} of {} RSTs were NATed to the backends",
            flood.sent
        ));
    }
    assert!(
        violations.is_empty(),
        "RST flood with out-of-window sequence numbers:\n  {}\ncounters: {ctx}",
        violations.join("\n  ")
    );
}

//! Floods that must cost no state: ACKs with invalid syncookies, handshakes that never send
//! data, slowloris first segments.

use super::*;

// --- 1. ACK flood -------------------------------------------------------------------

/// ACKs from spoofed sources with random sequence and acknowledgement numbers (so
/// `ack - 1` is no valid syncookie), a quarter of them carrying a request whose cookie
/// names a backend, as a "first data segment" would: each is counted in
/// `syncookies_invalid` and dropped before anything is looked up or stored; legit
/// clients keep getting through.
#[test]
fn ack_flood_with_invalid_syncookies_is_dropped_without_state() {
    const RATE: u64 = 200_000;
    const TIME: Duration = Duration::from_secs(2);
    let _g = topology::machine_exclusive();
    let t = setup(3, &[]);
    let table_before = Table::read(&t);
    let before = Stats::read(&t);
    let dropped_before = t.client_tx_dropped();
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {VIP}\r\nCookie: {}\r\n\r\n",
        session_cookie(1, "be1")
    );
    let (flood, legit) = during(&t, 2, || {
        attack::flood(TIME, RATE, 0xacf1, |rng, buf| {
            let (src, sport) = spoofed(rng);
            let mut s = Segment::between(src, sport, VIP, SERVICE_PORT);
            s.seq = rng.u32();
            s.ack = rng.u32();
            s.flags = TCP_ACK;
            if rng.below(4) == 0 {
                s.flags |= TCP_PSH;
                s.payload = request.as_bytes();
            }
            build_into(&s, buf);
        })
    });
    let flood = flood.expect("flooding from the client namespace");
    std::thread::sleep(Duration::from_millis(200));
    let after = Stats::read(&t);
    let table = Table::read(&t);
    let dropped = t.client_tx_dropped() - dropped_before;
    let delta = |c: &str| after.global(c) - before.global(c);
    let invalid = delta("syncookies_invalid");
    eprintln!(
        "ACK flood: {} ACKs in {:.2} s = {:.0}/s sent (bound {RATE}/s, {} send errors), {} dropped at the client's veth, {} counted invalid at the gateway ({:.0}/s); {}; table {} -> {}",
        flood.sent,
        flood.elapsed.as_secs_f64(),
        flood.rate(),
        flood.errors,
        dropped,
        invalid,
        invalid as f64 / flood.elapsed.as_secs_f64(),
        legit.summary(),
        table_before.summary(),
        table.summary()
    );
    let ctx = after.summary();
    legit.assert_all_ok(&ctx);
    let n = legit.total() as u64;
    // Every flood packet that reached the gateway is an invalid syncookie, nothing else.
    assert!(invalid <= flood.sent, "{ctx}");
    assert!(
        invalid + dropped >= flood.sent && invalid as f64 >= 0.5 * flood.sent as f64,
        "sent {}, counted invalid {invalid}, dropped on the way {dropped}: {ctx}",
        flood.sent
    );
    // No state: the legit connections are the only new flows and entries.
    assert_eq!(table.attacker_entries(), 0, "{}", table.summary());
    assert_eq!(delta("new_flows"), n, "{ctx}");
    assert_eq!(delta("bindings_started"), n, "{ctx}");
    assert_eq!(delta("bindings_completed"), n, "{ctx}");
    assert_eq!(
        table.rows.len() - table_before.rows.len(),
        legit.ports().len(),
        "{ctx}"
    );
    table.assert_quiet_and_consistent();
    for c in [
        "drop_flow_table_full",
        "drop_no_backend",
        "bindings_timed_out",
    ] {
        assert_eq!(delta(c), 0, "{c}: {ctx}");
    }
}

// --- 4. Handshakes that never send data -----------------------------------------

/// Thousands of spoofed clients complete the syncookie handshake (SYN, SYN-ACK, ACK)
/// and never send a byte, plus kernel clients that connect and keep their sockets open
/// without writing: the data plane drops each handshake ACK after checking it and keeps
/// nothing, so the flow table holds the legit connections only.
#[test]
fn completed_handshakes_without_data_keep_no_state() {
    const RATE: u64 = 30_000;
    const TIME: Duration = Duration::from_secs(2);
    const IDLE_CLIENTS: usize = 20;
    let _g = topology::machine_exclusive();
    let t = setup(3, &[]);
    let table_before = Table::read(&t);
    let before = Stats::read(&t);
    let ((flood, idle, mid), legit) = during(&t, 2, || {
        let idle: Vec<TcpStream> = (0..IDLE_CLIENTS)
            .map(|_| TcpStream::connect_timeout(&vip(), Duration::from_secs(3)))
            .collect::<Result<_, _>>()
            .expect("connecting the idle clients");
        let flood = HandshakeFlood {
            ifname: "eth0",
            dst: VIP,
            dport: SERVICE_PORT,
            duration: TIME,
            pps: RATE,
            seed: 0x4a5d,
        }
        .run(spoofed, is_spoofed)
        .expect("handshake flood");
        // While the idle clients are still connected.
        let mid = Table::read(&t);
        (flood, idle, mid)
    });
    let idle_ports: BTreeSet<u16> = idle
        .iter()
        .map(|s| s.local_addr().unwrap().port())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let after = Stats::read(&t);
    let table = Table::read(&t);
    drop(idle);
    let ctx = after.summary();
    let d = |c: &str| after.global(c) - before.global(c);
    let n = legit.total() as u64;
    eprintln!(
        "handshakes without data: {} SYNs, {} SYN-ACKs, {} handshakes completed in {:.2} s = {:.0}/s (bound {RATE} SYNs/s, {} send errors), plus {IDLE_CLIENTS} idle kernel clients; syncookies_sent +{}, syncookies_valid +{}; {}; table {} -> {} (mid-flood {})",
        flood.syns,
        flood.synacks,
        flood.acks,
        flood.elapsed.as_secs_f64(),
        flood.rate(),
        flood.errors,
        d("syncookies_sent"),
        d("syncookies_valid"),
        legit.summary(),
        table_before.summary(),
        table.summary(),
        mid.summary()
    );
    legit.assert_all_ok(&ctx);
    assert!(
        flood.acks >= 1000,
        "only {} handshakes completed",
        flood.acks
    );
    // Every handshake ACK that arrived was checked (valid) and dropped.
    assert!(
        d("syncookies_valid") >= 2 * n + flood.acks / 2,
        "{} handshakes, {n} legit requests: {ctx}",
        flood.acks
    );
    for tb in [&mid, &table] {
        assert_eq!(tb.attacker_entries(), 0, "{}", tb.summary());
        assert_eq!(
            tb.entries_of_ports(&idle_ports),
            0,
            "idle clients have flows: {:?}",
            tb.rows_of_ports(&idle_ports)
        );
        // Legit connections being bound at that moment, at most one per legit client.
        assert!(tb.pending <= 2, "{}", tb.summary());
    }
    table.assert_quiet_and_consistent();
    assert_eq!(
        table.rows.len() - table_before.rows.len(),
        legit.ports().len(),
        "{ctx}"
    );
    assert_eq!(d("new_flows"), n, "{ctx}");
    assert_eq!(d("bindings_started"), n, "{ctx}");
    for c in [
        "drop_flow_table_full",
        "syncookies_invalid",
        "bindings_timed_out",
    ] {
        assert_eq!(d(c), 0, "{c}: {ctx}");
    }
}

// --- 5. Slowloris ---------------------------------------------------------------------

/// Many connections send a partial request head (no blank line) as their first
/// segment, then dribble the rest a byte every 100 ms, including a `Cookie:` header
/// naming be1. The head continues beyond the first segment, so the policy binds each
/// connection (`cookie_beyond_first_segment`; the late cookie is not read) and it is
/// spliced to its backend, whose own timeouts govern it from then on: the balancer keeps
/// exactly one spliced flow (two entries) per connection and no kept segment, and legit
/// clients keep getting through. In the end each request completes and is answered.
#[test]
fn slowloris_first_segments_cost_one_spliced_flow_each() {
    const N: usize = 200;
    const DRIBBLE: &[u8] = b"Cookie: JSESSIONID=slow!be1\r\n";
    let _g = topology::machine_shared();
    let t = setup(3, &[]);
    let before = Stats::read(&t);
    let table_before = Table::read(&t);
    let started = Instant::now();
    let (out, legit) = during(&t, 2, || -> anyhow::Result<_> {
        let mut conns = Vec::with_capacity(N);
        let head = format!("GET / HTTP/1.1\r\nHost: {VIP}\r\n");
        for _ in 0..N {
            let s = TcpStream::connect_timeout(&vip(), Duration::from_secs(5))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            (&s).write_all(head.as_bytes())?;
            conns.push(s);
        }
        let ports: BTreeSet<u16> = conns
            .iter()
            .map(|s| s.local_addr().map(|a| a.port()))
            .collect::<Result<_, _>>()?;
        let mut mid = None;
        for (k, b) in DRIBBLE.iter().enumerate() {
            for s in &conns {
                (&*s).write_all(&[*b])?;
            }
            if k == DRIBBLE.len() / 2 {
                mid = Some(Table::read(&t));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut answers = Vec::with_capacity(N);
        for s in &conns {
            (&*s).write_all(b"Connection: close\r\n\r\n")?;
        }
        for s in conns {
            let mut r = BufReader::new(s);
            let resp = http::read_response(&mut r, false)?;
            anyhow::ensure!(resp.status == 200, "status {}", resp.status);
            let mut rest = Vec::new();
            let _ = r.read_to_end(&mut rest);
            answers.push(resp.text());
        }
        Ok((ports, mid.expect("mid-dribble table"), answers))
    });
    let elapsed = started.elapsed();
    let after = Stats::read(&t);
    let ctx = after.summary();
    let (ports, mid, answers) = out.unwrap_or_else(|e| panic!("slowloris clients: {e:#}; {ctx}"));
    let d = |c: &str| after.global(c) - before.global(c);
    let mut spread = BTreeMap::new();
    for a in &answers {
        *spread.entry(a.clone()).or_insert(0usize) += 1;
    }
    let rows = mid.rows_of_ports(&ports);
    let spliced = rows
        .iter()
        .filter(|r| r["phase"] == "spliced" && r["state"] == "established")
        .count();
    eprintln!(
        "slowloris: {N} connections dribbling {} bytes each over {:.1} s; mid-dribble {} flows of theirs ({spliced} spliced/established), table {} -> {} (mid); answered by {spread:?}; {}",
        DRIBBLE.len(),
        elapsed.as_secs_f64(),
        rows.len(),
        table_before.summary(),
        mid.summary(),
        legit.summary()
    );
    legit.assert_all_ok(&ctx);
    assert_eq!(answers.len(), N);
    // One spliced flow per connection, both entries, nothing kept.
    assert_eq!(rows.len(), N, "{ctx}");
    assert_eq!(spliced, N, "{rows:?}");
    assert_eq!(mid.entries_of_ports(&ports), 2 * N, "{}", mid.summary());
    // Legit connections being bound at that moment, at most one per legit client.
    assert!(mid.pending <= 2, "{}", mid.summary());
    // Bound by the policy: the cookie came after the first segment.
    assert_eq!(d("cookie_beyond_first_segment"), N as u64, "{ctx}");
    assert_eq!(
        after.backends_sum("cookie_misses") - before.backends_sum("cookie_misses"),
        N as u64,
        "{ctx}"
    );
    assert_eq!(
        after.backends_sum("cookie_hits") - before.backends_sum("cookie_hits"),
        legit.total() as u64,
        "{ctx}"
    );
    assert!(
        spread.len() > 1,
        "the policy sent them all to one backend: {spread:?}"
    );
    for c in [
        "drop_flow_table_full",
        "syncookies_invalid",
        "bindings_timed_out",
    ] {
        assert_eq!(d(c), 0, "{c}: {ctx}");
    }
}

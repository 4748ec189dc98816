//! A SYN flood creates no state and legit clients still get through.

use super::*;

/// Result of [`syn_flood`].
struct Flood {
    sent: u64,
    errors: u64,
    elapsed: Duration,
}

/// Sends SYNs to the VIP from random spoofed addresses of the client's subnet
/// (198.18.0.16-239) and random ports through a raw socket, in batches, for `duration`
/// or `max` packets. Runs on the calling thread's namespace.
fn syn_flood(duration: Duration, max: u64, seed: u64) -> anyhow::Result<Flood> {
    const BATCH: usize = 64;
    let tx = RawSender::new()?;
    let mut rng = balancer_tests::rng::Rng::new(seed);
    let mut packets: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(64)).collect();
    let (mut sent, mut errors) = (0u64, 0u64);
    let started = Instant::now();
    while sent < max && started.elapsed() < duration {
        for p in packets.iter_mut() {
            let r = rng.next_u64();
            let src = Ipv4Addr::new(198, 18, 0, 16 + (r % 224) as u8);
            let sport = 1024 + ((r >> 8) % 64000) as u16;
            let seg = syn(
                src,
                sport,
                topology::VIP,
                topology::SERVICE_PORT,
                (r >> 32) as u32,
            );
            attack::build_into(&seg, p);
        }
        let (s, e) = tx.send_batch(&mut packets);
        sent += s;
        errors += e;
    }
    Ok(Flood {
        sent,
        errors,
        elapsed: started.elapsed(),
    })
}

/// Client-side entries in the flow table.
fn flow_count(t: &Topology) -> usize {
    t.balancer_json(&["flows", "--json", "--limit", "10000000"])
        .unwrap()
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn syn_flood_creates_no_state_and_legit_clients_get_through() {
    const FLOOD_TIME: Duration = Duration::from_secs(2);
    const FLOOD_MAX: u64 = 1_000_000;
    let _g = topology::machine_exclusive();
    let t = setup(3);
    let flows_before = flow_count(&t);
    let before = Stats::read(&t);
    let dropped_before = t.client_tx_dropped();
    let names: Vec<String> = t.backends.iter().map(|b| b.name.clone()).collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    // Thread 0 floods; threads 1 and 2 are legit clients until the flood ends.
    let results = in_parallel(&t.client, 3, |k| {
        if k == 0 {
            let f = syn_flood(FLOOD_TIME, FLOOD_MAX, 0xf100d);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            return (Some(f), Vec::new());
        }
        let mut legit = Vec::new();
        let mut i = k;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let want = names[i % names.len()].clone();
            let t0 = Instant::now();
            let got =
                get_with_cookie_from(Some(&session_cookie(i, &want)), Duration::from_secs(10))
                    .map_err(|e| format!("{e:#}"));
            let port = got.as_ref().map(|(_, p)| *p).unwrap_or(0);
            legit.push((want, got.map(|(name, _)| name), t0.elapsed(), port));
            i += 2;
        }
        (None, legit)
    });
    std::thread::sleep(Duration::from_millis(200));
    let after = Stats::read(&t);
    let flows_after = flow_count(&t);
    let dropped = t.client_tx_dropped() - dropped_before;
    let flood = results[0]
        .0
        .as_ref()
        .unwrap()
        .as_ref()
        .expect("flooding from the client namespace");
    let legit: Vec<_> = results.iter().flat_map(|r| r.1.iter()).collect();
    let delta = |c: &str| after.global(c) - before.global(c);
    let rate = flood.sent as f64 / flood.elapsed.as_secs_f64();
    let answered = delta("syncookies_sent");
    let slowest = legit.iter().map(|l| l.2).max().unwrap_or_default();
    // Client ports repeat over a couple of thousand connections (the server closes first,
    // so the client keeps no TIME_WAIT); a reused 5-tuple replaces its old flow entries.
    let tuples: std::collections::BTreeSet<u16> = legit.iter().map(|l| l.3).collect();
    eprintln!(
        "SYN flood: {} SYNs in {:.2} s = {:.0}/s sent ({} send errors), {} answered with syncookies ({:.0}/s), {} dropped at the client's veth; {} legit requests during the flood, slowest {:.2} s; flows {} -> {}",
        flood.sent,
        flood.elapsed.as_secs_f64(),
        rate,
        flood.errors,
        answered,
        answered as f64 / flood.elapsed.as_secs_f64(),
        dropped,
        legit.len(),
        slowest.as_secs_f64(),
        flows_before,
        flows_after
    );
    let ctx = after.summary();
    for (want, got, _, _) in &legit {
        assert_eq!(got.as_deref(), Ok(want.as_str()), "{ctx}");
    }
    assert!(legit.len() >= 4, "only {} legit requests", legit.len());
    let n = legit.len() as u64;
    // SYNs keep no state: the flow table holds the legit connections only (one entry per
    // distinct client 5-tuple).
    assert_eq!(flows_after - flows_before, tuples.len(), "{ctx}");
    assert_eq!(delta("new_flows"), n, "{ctx}");
    assert_eq!(delta("bindings_completed"), n, "{ctx}");
    // Every SYN that reached the gateway was answered (legit ones included; those the
    // veth queue dropped never arrived).
    assert!(
        answered + dropped >= flood.sent + n && answered <= flood.sent + 2 * n + dropped,
        "sent {} + {n} legit, answered {answered}, dropped {dropped}: {ctx}",
        flood.sent
    );
    assert!(
        answered as f64 >= 0.5 * flood.sent as f64,
        "most SYNs were lost before the gateway: {ctx}"
    );
    assert_no_failures(&after);
}

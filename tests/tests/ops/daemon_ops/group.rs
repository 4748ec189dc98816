//! Group membership: only signed, fresh host messages are trusted.

use super::*;

// ---- 3. Group membership ------------------------------------------------------------

fn group_addr() -> SocketAddr {
    SocketAddr::from((GATEWAY_SERVER_ADDR, GROUP_PORT))
}

/// `balancer members --json`: (rows, counters).
fn members(d: &Daemon) -> (Vec<Value>, Value) {
    let v = d.ctl_json(&["members"]).unwrap();
    (
        v["members"].as_array().cloned().unwrap_or_default(),
        v["counters"].clone(),
    )
}

fn row<'a>(rows: &'a [Value], name: &str, trusted: bool) -> Option<&'a Value> {
    rows.iter()
        .find(|m| m["name"] == name && m["trusted"] == trusted)
}

fn counter(counters: &Value, name: &str) -> u64 {
    counters[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}: {counters}"))
}

/// A host message as an agent would send it, stamped `timestamp_ms`.
fn host_message(name: &str, addr: [u8; 4], timestamp_ms: u64, seq: u64) -> HostMessage {
    HostMessage {
        name: name.into(),
        addr: addr.into(),
        interfaces: vec![InterfaceInfo {
            name: "eth0".into(),
            ip: addr.into(),
            prefix_len: 24,
        }],
        load: 0.5,
        timestamp_ms,
        seq,
        role: Role::Agent,
        server_id: None,
        secondary: None,
    }
}

/// Agents announce themselves with signed host messages; the daemon trusts those
/// signed with the group key only, learns their replication pairs, rejects replayed,
/// truncated, oversized, malformed, future and forged datagrams (each counted) without
/// ever trusting them, keeps its health-check schedule under a flood of junk, and marks
/// a member down once it is silent for member_timeout.
#[test]
fn group_membership_trusts_only_signed_fresh_messages() {
    let mut t = topology();
    let mut d = Daemon::new(&mut t).unwrap();
    let key_file = d.write_file("group.key", GROUP_KEY, 0o600).unwrap();
    let other_key_file = d.write_file("other.key", OTHER_KEY, 0o600).unwrap();
    let group = format!(
        "[group]\nkey_file = \"{}\"\nname = \"lb-test\"\nlisten = \"{}\"\ninterval = \"500ms\"\nmember_timeout = \"1.5s\"\npeers = [\"{}\"]\n",
        key_file.display(),
        group_addr(),
        group_addr()
    );
    let config = daemon_config(
        &t,
        &ConfigOptions {
            extra: group.clone(),
            ..ConfigOptions::default()
        },
    );
    d.write_config(&config).unwrap();
    d.spawn().unwrap();
    wait_healthy(&d, 3);

    // Port where the test captures what app-be1's agent sends (besides the balancer).
    const CAPTURE: &str = "127.0.0.1:7999";
    let bin = t.balancer_bin().to_string_lossy().to_string();
    let dir = d.dir.clone();
    let agent = |i: usize, key: &Path, name: &str, sid: &str, sec: &str, extra: &[&str]| {
        let mut cmd = t.backends[i].ns.command(&bin);
        cmd.arg("agent")
            .arg("--group-key")
            .arg(key)
            .args(["--send-to", &group_addr().to_string()])
            .args(["--name", name, "--server-id", sid, "--secondary", sec])
            .args(["--interval", "300ms"])
            .args(extra)
            .env("RUST_LOG", "info");
        Background::spawn(cmd, &dir.join(format!("{name}.log"))).unwrap()
    };
    let mut good = agent(
        0,
        &key_file,
        "app-be1",
        "be1",
        "be2",
        &["--send-to", CAPTURE],
    );
    let mut evil = agent(1, &other_key_file, "app-evil", "be2", "be3", &[]);

    let be1_addr = t.backends[0].addr.to_string();
    let m = d
        .wait_for("app-be1 trusted and up", Duration::from_secs(5), || {
            let (rows, _) = members(&d);
            Ok(row(&rows, "app-be1", true)
                .filter(|m| m["up"] == true)
                .cloned())
        })
        .unwrap();
    assert_eq!(m["role"], "agent", "{m}");
    assert_eq!(m["addr"], be1_addr.as_str(), "{m}");
    assert_eq!(
        (&m["server_id"], &m["secondary"]),
        (&Value::from("be1"), &Value::from("be2"))
    );
    let ifaces = m["interfaces"].as_array().unwrap();
    assert!(
        ifaces
            .iter()
            .any(|i| i["name"] == "eth0" && i["ip"] == be1_addr.as_str() && i["prefix_len"] == 24),
        "{m}"
    );
    d.wait_for("the balancer's own message", Duration::from_secs(5), || {
        let (rows, _) = members(&d);
        Ok(row(&rows, "lb-test", true)
            .filter(|m| m["role"] == "balancer" && m["up"] == true)
            .map(|_| ()))
    })
    .unwrap();
    let pair = wait_pair(&d, "be1", "be2", Duration::from_secs(5)).unwrap();
    assert_eq!(pair["source"], "agent", "{pair}");
    assert_eq!(pair["service"], "198.18.100.1:80/tcp", "{pair}");
    let evil_row = d
        .wait_for(
            "app-evil listed as untrusted",
            Duration::from_secs(5),
            || {
                let (rows, _) = members(&d);
                Ok(row(&rows, "app-evil", false).cloned())
            },
        )
        .unwrap();
    assert_eq!(evil_row["up"], false, "{evil_row}");
    assert!(evil.is_running(), "{}", evil.log());

    // Raw datagrams from backend 0's namespace: a genuine message captured from the
    // agent and replayed, and broken or forged ones.
    let key = GroupKey::from_file(&key_file).unwrap();
    let other = GroupKey::from_bytes(OTHER_KEY.as_bytes()).unwrap();
    let (_, c0) = members(&d);
    let target = group_addr();
    let (k, o) = (key.clone(), other.clone());
    let captured: Vec<u8> = t.backends[0]
        .ns
        .run(move || -> anyhow::Result<Vec<u8>> {
            let cap = UdpSocket::bind(CAPTURE)?;
            cap.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut buf = [0u8; 2048];
            let (n, _) = cap.recv_from(&mut buf)?;
            let first = buf[..n].to_vec();
            let msg = HostMessage::decode(&first, &k).expect("a genuine host message");
            assert_eq!(msg.name, "app-be1");
            // The next one: the balancer has accepted `first` (and likely this one) by now.
            cap.recv_from(&mut buf)?;
            let tx = UdpSocket::bind("0.0.0.0:0")?;
            let send = |d: &[u8]| tx.send_to(d, target).map(|_| ());
            send(&first)?; // replayed
            send(&first)?; // replayed
            send(&first[..20])?; // truncated
            let mut big = MAGIC.to_vec();
            big.resize(1500, b'x');
            send(&big)?; // oversized
            send(&[b'j'; 64])?; // malformed: no magic
            let now = unix_ms();
            let hour = 3_600_000;
            let future = host_message("future-probe", [198, 18, 1, 10], now + hour, now + hour);
            send(&future.encode(&k)?)?;
            let stale = host_message("stale-probe", [198, 18, 1, 10], now - hour, now);
            send(&stale.encode(&k)?)?;
            // Forged: app-be1 moved elsewhere, signed with another key.
            let forged = host_message("app-be1", [198, 18, 1, 99], now, u64::MAX - 1);
            send(&forged.encode(&o)?)?;
            Ok(first)
        })
        .unwrap()
        .unwrap();
    let delta = |c: &Value, name: &str| counter(c, name) - counter(&c0, name);
    let c1 = d
        .wait_for("every probe counted", Duration::from_secs(5), || {
            let (_, c) = members(&d);
            let done = delta(&c, "replayed") >= 2
                && delta(&c, "truncated") >= 1
                && delta(&c, "oversized") >= 1
                && delta(&c, "malformed") >= 1
                && delta(&c, "future") >= 1
                && delta(&c, "stale") >= 1;
            Ok(done.then_some(c))
        })
        .unwrap();
    eprintln!("after the probes: {c1}");
    assert!(delta(&c1, "bad_signature") >= 1, "{c1}");
    let (rows, _) = members(&d);
    for name in ["future-probe", "stale-probe"] {
        assert!(rows.iter().all(|m| m["name"] != name), "{name}: {rows:?}");
    }
    let trusted = row(&rows, "app-be1", true).expect("app-be1 still trusted");
    assert_eq!(
        trusted["addr"],
        be1_addr.as_str(),
        "a forged message moved it: {trusted}"
    );
    assert_eq!(trusted["up"], true, "{trusted}");
    let forged_row = row(&rows, "app-be1", false).expect("the forged message as an untrusted row");
    assert_eq!(forged_row["addr"], "198.18.1.99", "{forged_row}");

    // A flood of ~20k junk datagrams from backend 1's namespace: random bytes, messages
    // signed with another key under ever new names, future-dated and replayed genuine
    // ones. Sent in bursts of 1000 every 100 ms (2 s), while the health checks go on.
    let mut rng = Rng::new(1);
    let now = unix_ms();
    let flood: Vec<Vec<u8>> = (0..20_000u64)
        .map(|i| match i % 4 {
            0 => {
                let len = 1 + rng.below(1400);
                (0..len).map(|_| rng.next_u64() as u8).collect()
            }
            1 => host_message(&format!("flood-{i}"), [198, 18, 1, 11], now, i)
                .encode(&other)
                .unwrap(),
            2 => host_message("flood-future", [198, 18, 1, 11], now + 3_600_000, i)
                .encode(&key)
                .unwrap(),
            _ => captured.clone(),
        })
        .collect();
    let checks_before = health_checks(&d);
    let flood_started = Instant::now();
    let (burst_rate, sent) = t.backends[1]
        .ns
        .run(move || -> anyhow::Result<(f64, usize)> {
            let tx = UdpSocket::bind("0.0.0.0:0")?;
            let start = Instant::now();
            let mut burst_time = Duration::ZERO;
            let mut sent = 0;
            for (n, chunk) in flood.chunks(1000).enumerate() {
                let b = Instant::now();
                for dgram in chunk {
                    // A full socket buffer is the flood's problem, not the test's.
                    if tx.send_to(dgram, target).is_ok() {
                        sent += 1;
                    }
                }
                burst_time += b.elapsed();
                let next = start + Duration::from_millis(100) * (n as u32 + 1);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            Ok((sent as f64 / burst_time.as_secs_f64(), sent))
        })
        .unwrap()
        .unwrap();
    let flood_time = flood_started.elapsed();
    let checks_after = health_checks(&d);
    let window = flood_started.elapsed();
    assert!(d.is_running(), "{}", d.log());
    let (rows, c2) = members(&d);
    let handled: u64 = [
        "accepted",
        "oversized",
        "truncated",
        "malformed",
        "bad_signature",
        "stale",
        "future",
        "replayed",
        "invalid",
    ]
    .iter()
    .map(|n| counter(&c2, n) - counter(&c1, n))
    .sum();
    eprintln!(
        "flood: {sent} datagrams sent in {flood_time:?} (bursts at {burst_rate:.0}/s), {handled} seen by the daemon: {c2}"
    );
    assert!(handled > 1000, "{c2}");
    let expected = (window.as_millis() / HEALTH_INTERVAL.as_millis()) as u64;
    for ((ep, before), (_, after)) in checks_before.iter().zip(&checks_after) {
        eprintln!(
            "{ep}: {} checks during the {window:?} flood window (schedule: {expected})",
            after - before
        );
        assert!(
            after - before + 3 >= expected,
            "{ep}: {} checks in {window:?}, every {HEALTH_INTERVAL:?} expected",
            after - before
        );
    }
    for m in &rows {
        if m["trusted"] == true {
            assert!(
                ["app-be1", "lb-test"].contains(&m["name"].as_str().unwrap_or("")),
                "trusted: {m}"
            );
        }
    }
    let untrusted = rows.iter().filter(|m| m["trusted"] == false).count();
    assert!(untrusted <= 256, "{untrusted} untrusted rows");
    assert!(counter(&c2, "untrusted_evicted") > 0, "{c2}");

    // The agent dies: its member is down once unheard for member_timeout, its pair goes.
    // (The flood may have crowded out some of its messages: the helper waits for a
    // fresh one first.)
    kill_and_wait_down(&d, &mut good, "app-be1", 1.5);
    d.wait_for("agent pair gone", Duration::from_secs(2), || {
        let pairs = d.ctl_json(&["pairs"])?;
        Ok(pairs
            .as_array()
            .is_some_and(|a| a.iter().all(|p| p["source"] != "agent"))
            .then_some(()))
    })
    .unwrap();
    assert!(d.is_running());

    // A reload that changes group settings but not the listen address applies them (the
    // group socket is bound anew while the old one still holds the address).
    let changed = edit(
        &config,
        "member_timeout = \"1.5s\"",
        "member_timeout = \"2.5s\"",
    );
    d.write_config(&changed).unwrap();
    let out = d.ctl(&["reload"]).unwrap();
    assert!(out.status.success(), "{}\n{}", stderr(&out), d.log());
    let mut again = agent(0, &key_file, "app-be1", "be1", "be2", &[]);
    d.wait_for("app-be1 up again", Duration::from_secs(5), || {
        let (rows, _) = members(&d);
        Ok(row(&rows, "app-be1", true)
            .filter(|m| m["up"] == true)
            .map(|_| ()))
    })
    .unwrap();
    kill_and_wait_down(&d, &mut again, "app-be1", 2.5);
    assert!(evil.is_running(), "{}", evil.log());
}

/// Kills `agent`, announcing itself as `name`, and checks that its member goes down
/// once it has not been heard from for `member_timeout_s`, by the daemon's clock
/// (`last_seen_s`) and by ours.
fn kill_and_wait_down(d: &Daemon, agent: &mut Background, name: &str, member_timeout_s: f64) {
    let queried = Instant::now();
    let age_at_query = d
        .wait_for("member heard from lately", Duration::from_secs(5), || {
            let (rows, _) = members(d);
            Ok(row(&rows, name, true)
                .filter(|m| m["up"] == true)
                .and_then(|m| m["last_seen_s"].as_f64())
                .filter(|s| *s < 0.5))
        })
        .unwrap();
    agent.kill().unwrap();
    let killed = Instant::now();
    let age_at_kill = age_at_query + killed.duration_since(queried).as_secs_f64();
    let mut last_up_age = 0.0;
    let down_age = d
        .wait_for("member down", Duration::from_secs(10), || {
            let (rows, _) = members(d);
            let m = row(&rows, name, true).expect("the member's row").clone();
            let age = m["last_seen_s"].as_f64().unwrap();
            if m["up"] == true {
                last_up_age = age;
                return Ok(None);
            }
            Ok(Some(age))
        })
        .unwrap();
    let down_after = killed.elapsed();
    eprintln!(
        "{name} down {down_after:?} after its agent was killed (last heard {age_at_kill:.2} s before; member_timeout {member_timeout_s} s)"
    );
    // Up while heard from within member_timeout, down after: by the daemon's own clock.
    assert!(
        last_up_age <= member_timeout_s,
        "up after {last_up_age} s of silence"
    );
    assert!(
        down_age > member_timeout_s,
        "down after only {down_age} s of silence"
    );
    // And by ours: not before member_timeout counted from the last message.
    assert!(
        down_after.as_secs_f64() + age_at_kill >= member_timeout_s,
        "down {down_after:?} after the kill, last heard {age_at_kill} s before it"
    );
}

//! Key files, the sender's sequence numbers and log limits, local facts, agent options
//! and the UDP tasks.

use super::*;

fn key_file(name: &str, text: &str, mode: u32) -> PathBuf {
    let path = std::env::temp_dir().join(format!("balancer-group-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn key_file_rules() {
    let secret = "s3cret-s3cret-s3cret-s3cret-s3cret";
    let good = key_file("good", &format!("  {secret}\n"), 0o600);
    let k = GroupKey::from_file(&good).unwrap();
    // Whitespace around the key is not part of it.
    let d = msg("app1", 1, NOW_MS).encode(&k).unwrap();
    let same = GroupKey::from_bytes(secret.as_bytes()).unwrap();
    assert!(HostMessage::decode(&d, &same).is_ok());
    assert!(!format!("{k:?}").contains("s3cret"));

    let open = key_file("open", secret, 0o644);
    let e = GroupKey::from_file(&open).unwrap_err();
    assert!(matches!(e, GroupError::KeyPermissions { mode: 0o644, .. }));
    assert!(e.to_string().contains("chmod 600"), "{e}");

    let short = key_file("short", "tooshort\n", 0o600);
    let e = GroupKey::from_file(&short).unwrap_err();
    assert!(matches!(e, GroupError::KeyTooShort { len: 8, .. }), "{e}");
    assert!(e.to_string().contains("at least 32"), "{e}");

    let missing = std::env::temp_dir().join("balancer-group-no-such-key");
    assert!(matches!(
        GroupKey::from_file(&missing),
        Err(GroupError::KeyRead { .. })
    ));
    assert!(GroupKey::from_bytes(b"short").is_err());
    for p in [good, open, short] {
        std::fs::remove_file(p).unwrap();
    }
}

#[test]
fn seq_increases_and_starts_from_the_clock() {
    let a = next_seq(NOW_MS);
    let b = next_seq(NOW_MS);
    assert!(a >= NOW_MS && b > a);
    assert!(next_seq(0) > b, "never goes back when the clock does");
}

#[test]
fn log_limiter_lets_a_burst_through_per_window() {
    let t0 = Instant::now();
    let mut l = LogLimiter::new(t0);
    let allowed = (0..1000).filter(|_| l.allow(t0, "test")).count();
    assert_eq!(allowed, LOG_BURST as usize);
    assert!(l.allow(t0 + LOG_WINDOW, "test"));
}

#[test]
fn local_facts() {
    for i in local_interfaces() {
        assert!(!i.ip.is_loopback(), "{i:?}");
        assert!(i.prefix_len <= 32 && is_visible_ascii(&i.name, MAX_IFNAME_LEN));
    }
    let load = load_average();
    assert!(load.is_finite() && load >= 0.0);
    assert!(!hostname().contains('\0'));
}

#[test]
fn agent_options_are_checked_before_sending() {
    assert!(matches!(check_targets(&[]), Err(GroupError::NoTargets)));
    let v6: SocketAddr = "[::1]:7000".parse().unwrap();
    assert!(matches!(
        check_targets(&[v6]),
        Err(GroupError::Ipv6Target(_))
    ));
    for bad in [
        "0.0.0.0:7946",
        "127.0.0.1:0",
        "255.255.255.255:1",
        "224.0.0.1:1",
    ] {
        assert!(
            matches!(
                check_targets(&[bad.parse().unwrap()]),
                Err(GroupError::BadTarget(_))
            ),
            "{bad}"
        );
    }
    assert!(check_interval(Duration::ZERO).is_err());
    assert!(check_interval(MIN_INTERVAL).is_ok());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let opts = AgentOptions {
        name: "app1".into(),
        group_key: std::env::temp_dir().join("balancer-group-no-such-key"),
        send_to: vec!["127.0.0.1:9".parse().unwrap()],
        interval: Duration::from_secs(1),
        server_id: None,
        secondary: None,
        addr: None,
    };
    assert!(matches!(
        rt.block_on(run_agent(opts)),
        Err(GroupError::KeyRead { .. })
    ));
}

#[test]
fn tasks_can_be_spawned() {
    fn assert_send<T: Send + 'static>(_: T) {}
    let opts = AgentOptions {
        name: "app1".into(),
        group_key: PathBuf::new(),
        send_to: Vec::new(),
        interval: Duration::from_secs(1),
        server_id: None,
        secondary: None,
        addr: None,
    };
    assert_send(run_agent(opts));
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_nonblocking(true).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let socket = UdpSocket::from_std(socket).unwrap();
    assert_send(run_listener(
        Arc::new(socket),
        Arc::new(Mutex::new(table())),
    ));
}

#[tokio::test]
async fn loopback_sender_becomes_trusted_and_wrong_key_never_does() {
    let interval = Duration::from_millis(250);
    let listen = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target = listen.local_addr().unwrap();
    let table = Arc::new(Mutex::new(table()));
    let listener = tokio::spawn(run_listener(Arc::new(listen), table.clone()));

    let spawn_sender = |name: &'static str, key: GroupKey| {
        let build = move || HostMessage {
            addr: Ipv4Addr::LOCALHOST,
            ..msg(name, 0, 0)
        };
        tokio::spawn(async move {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            run_sender(socket, vec![target], key, interval, build).await;
        })
    };
    let start = Instant::now();
    let good = spawn_sender("good", key());
    let intruder = spawn_sender("intruder", other_key());

    // Messages go out at once and then every interval; allow a couple of them.
    let deadline = start + 2 * interval;
    while !lock(&table).is_up("good", Instant::now()) {
        assert!(Instant::now() < deadline, "not trusted within 2 intervals");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    // A few more rounds: the intruder stays untrusted, the good member stays up.
    tokio::time::sleep(2 * interval).await;
    {
        let t = lock(&table);
        let now = Instant::now();
        assert_eq!(trusted_names(&t, now), ["good"]);
        let rows = t.members(now);
        let intruder_row = view(&rows, "intruder", false);
        assert!(!intruder_row.up);
        assert!(!rows.iter().any(|r| r.name == "intruder" && r.trusted));
        assert!(t.counters().accepted >= 3, "{:?}", t.counters());
        assert_eq!(t.counters().replayed, 0);
        assert!(t.counters().bad_signature >= 2, "{:?}", t.counters());
    }
    eprintln!("trusted after {elapsed:?}");
    for task in [good, intruder, listener] {
        task.abort();
    }
}

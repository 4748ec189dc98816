//! Reloads of bad and good configurations.

use super::*;

// ---- 1. Reloads ---------------------------------------------------------------------

/// A rejected configuration never changes what runs: for each bad file, `balancer
/// reload` fails with one line saying why, the daemon keeps running, and the pinned
/// state is what it was; the same through SIGHUP, counted on the metrics endpoint; then
/// a good file is applied.
#[test]
fn bad_configuration_on_reload_keeps_the_running_state() {
    let mut t = topology();
    let base = daemon_config(&t, &ConfigOptions::default());
    let mut d = Daemon::start(&mut t, &base).expect("starting the daemon");
    wait_healthy(&d, 3);
    let before = d.state_dump().unwrap();
    let be = |i: usize| t.backends[i].endpoint();
    let address = |i: usize| format!("  address = \"{}\"\n", be(i));
    let with_weight = |w: u32| {
        edit(
            &base,
            &address(0),
            &format!("{}  weight = {w}\n", address(0)),
        )
    };
    let (tok_a, tok_b) = colliding_tokens();
    let readable_key = d
        .write_file("readable.key", GROUP_KEY, 0o644)
        .unwrap()
        .display()
        .to_string();

    // (what, file (None: no file at all), what the one-line error must say)
    let cases: Vec<(&str, Option<String>, String)> = vec![
        (
            "TOML syntax error",
            Some(format!("{base}  [[service.backend]\n")),
            format!("{}: line ", d.config.display()),
        ),
        (
            "unknown key",
            Some(edit(&base, "  server_id = \"be1\"\n", "  server_id = \"be1\"\n  wieght = 5\n")),
            "unknown field `wieght`".into(),
        ),
        (
            "duplicate backend",
            Some(format!("{base}  [[service.backend]]\n{}  server_id = \"dup\"\n", address(0))),
            format!("backend {}: configured twice in this service", be(0)),
        ),
        (
            "server_id used twice",
            Some(edit(&base, "server_id = \"be2\"", "server_id = \"be1\"")),
            "server_id \"be1\" is also used by backend".into(),
        ),
        (
            "server_ids with colliding hashes",
            Some(edit(
                &edit(&base, "server_id = \"be1\"", &format!("server_id = \"{tok_a}\"")),
                "server_id = \"be2\"",
                &format!("server_id = \"{tok_b}\""),
            )),
            format!("server_id \"{tok_b}\" hashes like \"{tok_a}\""),
        ),
        ("weight 0", Some(with_weight(0)), "weight 0 is not in 1..=10000".into()),
        (
            "weight 100000",
            Some(with_weight(100_000)),
            "weight 100000 is not in 1..=10000".into(),
        ),
        (
            "cookie mode on UDP",
            Some(edit(&base, "mode = \"cookie\"\n", "mode = \"cookie\"\nproto = \"udp\"\n")),
            "cookie mode needs proto = \"tcp\"".into(),
        ),
        (
            "secondary naming an unknown server_id",
            Some(edit(&base, "  server_id = \"be1\"\n", "  server_id = \"be1\"\n  secondary = \"be9\"\n")),
            "secondary \"be9\" is not the server_id of any backend of this service".into(),
        ),
        (
            "unknown interface",
            Some(edit(&base, "\"srv0\"]", "\"srv0\", \"nosuch0\"]")),
            "interface \"nosuch0\" does not exist in this network namespace".into(),
        ),
        (
            "bad duration",
            Some(edit(&base, "interval = \"200ms\"", "interval = \"200\"")),
            "health.interval: invalid duration \"200\"".into(),
        ),
        (
            "instance changed",
            Some(edit(
                &base,
                &format!("instance = \"{}\"", t.instance()),
                "instance = \"lbother\"",
            )),
            "daemon.instance cannot change on reload".into(),
        ),
        (
            "group key readable by others",
            Some(format!(
                "{base}[group]\nkey_file = \"{readable_key}\"\nlisten = \"{GATEWAY_SERVER_ADDR}:{GROUP_PORT}\"\n"
            )),
            "may be accessed by group or others (mode 644)".into(),
        ),
        (
            "metrics address not on this host",
            Some(edit(&base, "pair_sample = 1\n", "pair_sample = 1\nmetrics = \"192.0.2.1:9469\"\n")),
            "daemon.metrics 192.0.2.1:9469: ".into(),
        ),
        (
            "interface that cannot take the program, with be2 drained",
            Some(edit(
                &edit(&base, "\"srv0\"]", "\"srv0\", \"lo\"]"),
                &address(1),
                &format!("{}  drain = true\n", address(1)),
            )),
            "attaching to lo: ".into(),
        ),
        (
            "file missing",
            None,
            format!("cannot read {}", d.config.display()),
        ),
    ];
    for (what, file, expected) in &cases {
        match file {
            Some(text) => d.write_config(text).unwrap(),
            None => std::fs::remove_file(&d.config).unwrap(),
        }
        let out = d.ctl(&["reload"]).unwrap();
        let err = stderr(&out);
        eprintln!("{what}: {err}");
        assert!(
            !out.status.success(),
            "{what}: reload succeeded\n{}",
            d.log()
        );
        assert_eq!(err.lines().count(), 1, "{what}: not one line: {err}");
        assert!(
            err.starts_with("balancer: error: reload rejected, running state kept: "),
            "{what}: {err}"
        );
        assert!(
            err.contains(expected.as_str()),
            "{what}: {err:?} lacks {expected:?}"
        );
        assert!(out.stdout.is_empty(), "{what}");
    }

    // The same through SIGHUP: the log says why.
    d.write_config(&with_weight(0)).unwrap();
    let rejections = |log: &str| log.matches("reload rejected, running state kept").count();
    let seen = rejections(&d.log());
    assert_eq!(seen, cases.len(), "{}", d.log());
    let log_at = d.log_len();
    d.signal(libc::SIGHUP).unwrap();
    d.wait_for("SIGHUP reload rejected", Duration::from_secs(5), || {
        Ok((rejections(&d.log()) > seen).then_some(()))
    })
    .unwrap();
    let hup_log = d.log_since(log_at);
    assert!(
        hup_log.contains("weight 0 is not in 1..=10000"),
        "{hup_log}"
    );
    assert!(d.is_running());

    let text = metrics(&t).unwrap();
    assert_eq!(
        metric(&text, "balancer_config_reload_failures_total"),
        Some((cases.len() + 1) as f64),
        "{text}"
    );
    assert_eq!(metric(&text, "balancer_config_reloads_total"), Some(0.0));
    // A rejected file must not leak into what the daemon plans on its own (it re-plans
    // every tick): compare after a few ticks.
    std::thread::sleep(DAEMON_TICK * 3);
    assert!(d.is_running(), "{}", d.log());
    assert_eq!(d.state_dump().unwrap(), before, "{}", d.log());

    // A good change: be1's weight, be2 drained, be3 removed.
    let good = daemon_config(
        &t,
        &ConfigOptions {
            without: vec![2],
            ..ConfigOptions::default()
        },
    );
    let good = edit(
        &good,
        &address(0),
        &format!("{}  weight = 50\n", address(0)),
    );
    let good = edit(
        &good,
        &address(1),
        &format!("{}  drain = true\n", address(1)),
    );
    d.write_config(&good).unwrap();
    let log_at = d.log_len();
    let out = d.ctl(&["reload"]).unwrap();
    assert!(out.status.success(), "{}\n{}", stderr(&out), d.log());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("reloaded: "), "{stdout}");
    let list = d.backends().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    let e1 = backend_entry(&list, &be(0)).expect("be1");
    assert_eq!(
        (e1["weight"].as_u64(), e1["state"].as_str()),
        (Some(50), Some("up")),
        "{e1}"
    );
    let e2 = backend_entry(&list, &be(1)).expect("be2");
    assert_eq!(e2["state"], "draining", "{e2}");
    assert!(backend_entry(&list, &be(2)).is_none(), "{list:?}");
    let services = d.ctl_json(&["service", "list"]).unwrap();
    assert_eq!(services[0]["backends"], 2, "{services}");
    assert_eq!(services[0]["active_backends"], 1, "{services}");
    let log = d.log_since(log_at);
    for line in [
        format!("backend {} removed", be(2)),
        format!("backend {} weight 100 -> 50", be(0)),
        format!("backend {} up -> draining", be(1)),
        "configuration reloaded".to_string(),
    ] {
        assert!(log.contains(&line), "{line:?} not in\n{log}");
    }
    assert_eq!(
        metric(&metrics(&t).unwrap(), "balancer_config_reloads_total"),
        Some(1.0)
    );
}

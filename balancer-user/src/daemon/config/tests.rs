use std::path::Path;

use balancer_common::{cookie::token_hash, Config, MAX_BACKENDS, MAX_SERVICES};

use super::{services::check_tokens, *};
use crate::{
    control::cookie_mode::CookieSettings,
    dataplane::Mode,
    model::{Proto, Weight},
};

/// The example of the module documentation, so the documentation stays true.
fn doc_example() -> String {
    let source = include_str!("mod.rs");
    let doc: Vec<&str> = source
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .map(|l| {
            l.strip_prefix("//! ")
                .unwrap_or(l.trim_start_matches("//!"))
        })
        .collect();
    let start = doc
        .iter()
        .position(|l| *l == "```toml")
        .expect("toml example")
        + 1;
    let len = doc[start..]
        .iter()
        .position(|l| *l == "```")
        .expect("end of example");
    doc[start..start + len].join("\n")
}

#[test]
fn documented_example_parses() {
    let c = DaemonConfig::parse(&doc_example()).unwrap();
    assert_eq!(c.daemon.instance, "default");
    assert_eq!(c.daemon.interfaces, ["eth0", "eth1"]);
    assert_eq!(c.daemon.xdp_mode, Mode::Native);
    assert_eq!(c.daemon.flow_capacity, 262_144);
    assert_eq!(c.daemon.flow_timeouts, Config::default());
    assert_eq!(c.daemon.metrics, DEFAULT_METRICS_ADDR);
    assert_eq!(c.daemon.failover_hold_down, Duration::from_secs(10));
    assert_eq!(c.daemon.pair_sample, 16);
    let g = c.group.as_ref().unwrap();
    assert_eq!(g.key_file, Path::new("/etc/balancer/group.key"));
    assert_eq!(g.listen, DEFAULT_GROUP_LISTEN);
    assert_eq!(g.member_timeout, Duration::from_secs(3));
    assert_eq!(g.peers, ["10.0.0.2:7946".parse::<SocketAddr>().unwrap()]);
    assert_eq!(c.health, HealthConfig::default());

    assert_eq!(c.services.len(), 2);
    let web = &c.services[0];
    assert_eq!(web.addr.to_string(), "198.18.0.10:80/tcp");
    assert_eq!(web.mode(), "cookie");
    assert_eq!(web.cookie, Some(CookieSettings::default()));
    assert_eq!(web.health.kind, HealthKind::Http);
    assert_eq!(web.health.path, "/health");
    assert_eq!(
        web.health.timeout,
        Duration::from_millis(200),
        "merged from [health]"
    );
    assert_eq!(web.backends[0].addr.to_string(), "198.18.1.2:8080");
    assert_eq!(web.backends[1].weight, Weight::DEFAULT);
    assert_eq!(
        web.backend_by_server_id("b1").unwrap().addr.to_string(),
        "198.18.1.3:8080"
    );
    let spec = web.backends[0].spec();
    assert_eq!(
        (
            spec.addr.port(),
            spec.weight.get(),
            spec.server_id.as_deref()
        ),
        (8080, 100, Some("a1"))
    );

    let dns = &c.services[1];
    assert_eq!(dns.addr.proto, Proto::Udp);
    assert_eq!(dns.mode(), "nat");
    assert_eq!(dns.health, HealthConfig::default());

    let web_addr = web.addr;
    assert_eq!(
        c.replication_pairs(),
        [
            (web_addr, "a1".into(), "b1".into()),
            (web_addr, "b1".into(), "a1".into())
        ]
    );
    assert!(c.service(&web_addr).is_some());
}

#[test]
fn defaults_fill_a_minimal_file() {
    let c = DaemonConfig::parse(
        "[daemon]\ninterfaces = [\"eth0\"]\nmetrics = \"\"\n\n[[service]]\naddress = \"198.18.0.10:80\"\n\n[[service.backend]]\naddress = \"198.18.1.2:8080\"\n",
    )
    .unwrap();
    let d = &c.daemon;
    assert_eq!(d.instance, DEFAULT_INSTANCE);
    assert_eq!(d.xdp_mode, Mode::Native);
    assert_eq!(d.flow_capacity, balancer_common::DEFAULT_FLOW_CAPACITY);
    assert_eq!(d.metrics, DEFAULT_METRICS_ADDR);
    assert_eq!(d.failover_hold_down, DEFAULT_HOLD_DOWN);
    assert_eq!(d.pair_sample, DEFAULT_PAIR_SAMPLE);
    assert_eq!(
        d.pin_dir(Path::new("/sys/fs/bpf/balancer")),
        Path::new("/sys/fs/bpf/balancer/default")
    );
    assert_eq!(d.attach_options().interfaces, ["eth0"]);
    assert!(c.group.is_none());
    let s = &c.services[0];
    assert_eq!(s.addr.proto, Proto::Tcp);
    assert!(s.cookie.is_none());
    assert_eq!(s.health, HealthConfig::default());
    let b = &s.backends[0];
    assert_eq!(
        (b.weight, b.drain, &b.server_id, &b.secondary),
        (Weight::DEFAULT, false, &None, &None)
    );
    assert!(c.replication_pairs().is_empty());
}

#[test]
fn settings_override_defaults() {
    let c = DaemonConfig::parse(
        r#"
        [daemon]
        instance = "edge-1"
        interfaces = ["veth0"]
        xdp_mode = "generic"
        tcp_timeout = "2m"
        metrics = "[::1]:9000"
        failover_hold_down = "0s"
        pair_sample = 1
        [group]
        key_file = "k"
        interval = "250ms"
        member_timeout = "1.5s"
        [health]
        kind = "http"
        expect_status = 204
        host = "app.example"
        rise = 1
        [[service]]
        address = "198.18.0.10:443"
        mode = "cookie"
        cookie_name = "SID"
        delimiter = ":"
        primary_segment = 1
        secondary_segment = 0
        health = { kind = "tcp", interval = "5s", timeout = "2s" }
        [[service.backend]]
        address = "198.18.1.2:443"
        server_id = "x"
        weight = 10000
        drain = true
        "#,
    )
    .unwrap();
    assert_eq!(c.daemon.xdp_mode, Mode::Generic);
    assert_eq!(c.daemon.flow_timeouts.tcp_established_timeout_s, 120);
    assert_eq!(
        c.daemon.metrics,
        "[::1]:9000".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.daemon.failover_hold_down, Duration::ZERO);
    assert_eq!(c.group.unwrap().interval, Duration::from_millis(250));
    assert_eq!(c.health.kind, HealthKind::Http);
    let s = &c.services[0];
    let cookie = s.cookie.as_ref().unwrap();
    assert_eq!(
        (
            cookie.name.as_str(),
            cookie.delimiter,
            cookie.primary_segment,
            cookie.secondary_segment
        ),
        ("SID", ':', 1, 0)
    );
    let h = &s.health;
    assert_eq!(h.kind, HealthKind::Tcp);
    assert_eq!(
        (h.interval, h.timeout),
        (Duration::from_secs(5), Duration::from_secs(2))
    );
    assert_eq!(
        (h.expect_status, h.rise, h.host.as_deref()),
        (204, 1, Some("app.example"))
    );
    assert!(s.backends[0].drain);
}

#[test]
fn durations() {
    let ok = [
        ("250ms", Duration::from_millis(250)),
        ("1s", Duration::from_secs(1)),
        ("1.5s", Duration::from_millis(1500)),
        ("0.001s", Duration::from_millis(1)),
        ("2m", Duration::from_secs(120)),
        ("1h", Duration::from_secs(3600)),
        ("0s", Duration::ZERO),
        ("1.000000001s", Duration::new(1, 1)),
    ];
    for (s, d) in ok {
        assert_eq!(parse_duration(s), Ok(d), "{s}");
    }
    for bad in [
        "",
        "1",
        "s",
        "1 s",
        "1.s",
        ".5s",
        "1.2.3s",
        "-1s",
        "1sec",
        "1d",
        "1.0000000001s",
        "99999999999999999999h",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}

/// A valid `daemon` table, for files that test other sections.
const DAEMON: &str = r#"daemon = { interfaces = ["eth0"] }"#;

fn assert_rejected(text: &str, expected: &str) {
    match DaemonConfig::parse(text) {
        Ok(_) => panic!("accepted, expected {expected:?}:\n{text}"),
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.contains(expected),
                "expected {expected:?} in {message:?}\n{text}"
            );
            assert!(!message.contains('\n'), "not one line: {message:?}");
        }
    }
}

#[test]
fn rejects_bad_toml_with_its_position() {
    let cases = [
        (
            "[daemon\ninterfaces = []",
            "line 1, column 8: unclosed table",
        ),
        (
            "[daemon]\ninterfaces = [\"eth0\"]\nbogus = 1",
            "line 3, column 1: unknown field `bogus`, expected one of `instance`",
        ),
        (
            "[daemon]\ninterfaces = \"eth0\"",
            "line 2, column 14: invalid type: string \"eth0\", expected a sequence",
        ),
        ("[[service]]\nwieght = 3", "unknown field `wieght`"),
        (
            "[[service]]\nproto = \"tcp\"",
            "line 1, column 1: missing field `address`",
        ),
        (
            "[[service]]\naddress = \"a\"\nproto = \"sctp\"",
            "unknown variant `sctp`",
        ),
        (
            "[[service]]\naddress = \"a\"\n[[service.backend]]\naddress = \"b\"\nweight = -1",
            "line 5, column 10: invalid value: integer `-1`, expected u32",
        ),
    ];
    for (text, expected) in cases {
        assert_rejected(text, expected);
    }
}

#[test]
fn rejects_bad_daemon_settings() {
    let interfaces = [
        ("", "daemon.interfaces: list at least one interface"),
        (
            "interfaces = []",
            "daemon.interfaces: list at least one interface",
        ),
        (
            r#"interfaces = ["eth0", "eth0"]"#,
            r#"daemon.interfaces: "eth0" is listed twice"#,
        ),
        (
            r#"interfaces = ["a/b"]"#,
            r#"daemon.interfaces: "a/b" is not an interface name"#,
        ),
    ];
    for (keys, expected) in interfaces {
        assert_rejected(&format!("daemon = {{ {keys} }}"), expected);
    }
    let others = [
        (
            r#"instance = "../x""#,
            "daemon.instance: invalid instance name '../x'",
        ),
        (r#"xdp_mode = "offload""#, "unknown variant `offload`"),
        (
            r#"metrics = "localhost""#,
            r#"daemon.metrics: "localhost" is not an address"#,
        ),
        ("flow_capacity = 1", "daemon.flow_capacity: 1 is too small"),
        (
            r#"udp_timeout = "1.5s""#,
            "daemon.udp_timeout: 1.5s is not a whole number",
        ),
        (
            r#"tcp_timeout = "0s""#,
            "daemon.tcp_timeout: must be at least 1s",
        ),
        (
            r#"tcp_timeout = "169h""#,
            "daemon.tcp_timeout: 608400s is too long (at most 168h)",
        ),
        (
            r#"failover_hold_down = "10 seconds""#,
            r#"daemon.failover_hold_down: invalid duration "10 seconds": expected"#,
        ),
        (
            r#"failover_hold_down = "2h""#,
            "daemon.failover_hold_down: 7200s is longer than the limit of 3600s",
        ),
        (
            "pair_sample = 12",
            "daemon.pair_sample: 12 is not a power of two",
        ),
        (
            "pair_sample = 0",
            "daemon.pair_sample: 0 is not a power of two",
        ),
        (
            "pair_sample = 2048",
            "daemon.pair_sample: 2048 is not a power of two",
        ),
    ];
    for (keys, expected) in others {
        assert_rejected(
            &format!(r#"daemon = {{ interfaces = ["eth0"], {keys} }}"#),
            expected,
        );
    }
}

#[test]
fn rejects_bad_group_settings() {
    let cases = [
        (r#"listen = "0.0.0.0:7946""#, "group.key_file: required"),
        (
            r#"key_file = "k", listen = "0.0.0.0""#,
            "group.listen: \"0.0.0.0\" is not",
        ),
        (
            r#"key_file = "k", listen = "0.0.0.0:0""#,
            "group.listen: port 0",
        ),
        (
            r#"key_file = "k", name = "a b""#,
            "group.name: \"a b\" is not 1-64 visible",
        ),
        (
            r#"key_file = "k", interval = "0s""#,
            "group.interval: host message interval 0ns is too short",
        ),
        (
            r#"key_file = "k", interval = "3s", member_timeout = "3s""#,
            "group.member_timeout: 3s must be longer than group.interval (3s)",
        ),
        (
            r#"key_file = "k", peers = ["10.0.0.2"]"#,
            "group.peers: \"10.0.0.2\" is not",
        ),
        (
            r#"key_file = "k", peers = ["0.0.0.0:1"]"#,
            "not a host address and port",
        ),
        (
            r#"key_file = "k", peers = ["10.0.0.2:7946", "10.0.0.2:7946"]"#,
            "group.peers: 10.0.0.2:7946 is listed twice",
        ),
    ];
    for (keys, expected) in cases {
        assert_rejected(&format!("{DAEMON}\ngroup = {{ {keys} }}"), expected);
    }
}

#[test]
fn rejects_bad_health_settings() {
    let cases = [
        (
            r#"interval = "fast""#,
            r#"health.interval: invalid duration "fast""#,
        ),
        (
            r#"timeout = "2s""#,
            "health: invalid health-check timeout '2s': must not exceed the interval (250ms)",
        ),
        (
            r#"interval = "10ms", timeout = "5ms""#,
            "health: invalid health-check interval '10ms'",
        ),
        ("rise = 0", "health: invalid health-check rise '0'"),
        ("fall = 101", "health: invalid health-check fall '101'"),
        (
            r#"kind = "http", path = "health""#,
            "health: invalid health-check HTTP path 'health'",
        ),
        (
            r#"kind = "http", expect_status = 999"#,
            "health: invalid health-check expected status '999'",
        ),
        (
            r#"kind = "icmp""#,
            "unknown variant `icmp`, expected `tcp` or `http`",
        ),
    ];
    for (keys, expected) in cases {
        assert_rejected(&format!("{DAEMON}\nhealth = {{ {keys} }}"), expected);
    }
    // A per-service override is checked merged over [health].
    assert_rejected(
        &format!(
            r#"{DAEMON}
            health = {{ interval = "2s", timeout = "1s" }}
            service = [{{ address = "198.18.0.10:80", health = {{ interval = "500ms" }} }}]"#
        ),
        "service 198.18.0.10:80/tcp, health: invalid health-check timeout '1s': must not exceed the interval (500ms)",
    );
}

#[test]
fn rejects_bad_services() {
    let cases = [
        (
            r#"address = "198.18.0.10""#,
            "service #1: invalid service address '198.18.0.10'",
        ),
        (
            r#"address = "198.18.0.10:80", mode = "l7""#,
            "unknown variant `l7`",
        ),
        (
            r#"address = "198.18.0.10:53", proto = "udp", mode = "cookie""#,
            r#"service 198.18.0.10:53/udp: cookie mode needs proto = "tcp""#,
        ),
        (
            r#"address = "198.18.0.10:80", cookie_name = "SID""#,
            "service 198.18.0.10:80/tcp: cookie_name applies to cookie mode only",
        ),
        (
            r#"address = "198.18.0.10:80", mode = "cookie", delimiter = "!!""#,
            r#"delimiter "!!" must be exactly one character"#,
        ),
        (
            r#"address = "198.18.0.10:80", mode = "cookie", cookie_name = "a b""#,
            "service 198.18.0.10:80/tcp: invalid cookie name 'a b'",
        ),
        (
            r#"address = "198.18.0.10:80", mode = "cookie", secondary_segment = 2"#,
            "service 198.18.0.10:80/tcp: invalid cookie segments '2/2'",
        ),
    ];
    for (keys, expected) in cases {
        assert_rejected(&format!("{DAEMON}\nservice = [{{ {keys} }}]"), expected);
    }
    assert_rejected(
        &format!(
            r#"{DAEMON}
            service = [{{ address = "198.18.0.10:80" }}, {{ address = "198.18.0.10:80" }}]"#
        ),
        "service 198.18.0.10:80/tcp: configured twice",
    );
}

#[test]
fn rejects_more_services_or_backends_than_the_data_plane_holds() {
    let services: Vec<String> = (1..=MAX_SERVICES + 1)
        .map(|i| format!(r#"{{ address = "198.18.0.{i}:80" }}"#))
        .collect();
    assert_rejected(
        &format!("{DAEMON}\nservice = [{}]", services.join(", ")),
        "service: 65 services configured, the data plane holds at most 64",
    );
    let backends: Vec<String> = (0..=MAX_BACKENDS)
        .map(|i| {
            format!(
                r#"{{ address = "198.18.{}.{}:80" }}"#,
                1 + i / 250,
                1 + i % 250
            )
        })
        .collect();
    assert_rejected(
        &format!(
            r#"{DAEMON}
            service = [{{ address = "198.18.0.1:80", backend = [{}] }}]"#,
            backends.join(", ")
        ),
        "service.backend: 4097 backends configured, the data plane holds at most 4096",
    );
}

#[test]
fn rejects_bad_backends() {
    let nat = [
        (
            r#"{ address = "198.18.1.2:8080" }, { address = "198.18.1.2:8080" }"#,
            "service 198.18.0.10:80/tcp, backend 198.18.1.2:8080: configured twice",
        ),
        (
            r#"{ address = "198.18.1.2:0" }"#,
            "service 198.18.0.10:80/tcp, backend #1: invalid backend address '198.18.1.2:0'",
        ),
        (
            r#"{ address = "198.18.1.2:8080", weight = 0 }"#,
            "backend 198.18.1.2:8080: weight 0 is not in 1..=10000",
        ),
        (
            r#"{ address = "198.18.1.2:8080", weight = 10001 }"#,
            "backend 198.18.1.2:8080: weight 10001 is not in 1..=10000",
        ),
        (
            r#"{ address = "198.18.1.2:8080", server_id = "a1" }"#,
            "backend 198.18.1.2:8080: server_id applies to cookie-mode services only",
        ),
        (
            r#"{ address = "198.18.1.2:8080", secondary = "a1" }"#,
            "backend 198.18.1.2:8080: secondary applies to cookie-mode services only",
        ),
    ];
    for (backends, expected) in nat {
        assert_rejected(
            &format!(
                r#"{DAEMON}
                service = [{{ address = "198.18.0.10:80", backend = [{backends}] }}]"#
            ),
            expected,
        );
    }
    let cookie = [
        (
            r#"{ address = "198.18.1.2:8080" }"#,
            "backend 198.18.1.2:8080: server_id is required in cookie mode",
        ),
        (
            r#"{ address = "198.18.1.2:8080", server_id = "a!1" }"#,
            "backend 198.18.1.2:8080: invalid server id 'a!1'",
        ),
        (
            r#"{ address = "198.18.1.2:8080", server_id = "a1" },
               { address = "198.18.1.3:8080", server_id = "a1" }"#,
            r#"service 198.18.0.10:80/tcp, backend 198.18.1.3:8080: server_id "a1" is also used by backend 198.18.1.2:8080"#,
        ),
        (
            r#"{ address = "198.18.1.2:8080", server_id = "a1", secondary = "a1" }"#,
            r#"backend 198.18.1.2:8080: secondary "a1" is this backend's own server_id"#,
        ),
        (
            r#"{ address = "198.18.1.2:8080", server_id = "a1", secondary = "zz" }"#,
            r#"secondary "zz" is not the server_id of any backend of this service"#,
        ),
    ];
    for (backends, expected) in cookie {
        assert_rejected(
            &format!(
                r#"{DAEMON}
                service = [{{ address = "198.18.0.10:80", mode = "cookie", backend = [{backends}] }}]"#
            ),
            expected,
        );
    }
}

#[test]
fn tokens_with_equal_hashes_collide() {
    let backend = |addr: &str, token: &str| BackendConfig {
        addr: addr.parse().unwrap(),
        weight: Weight::new(1).unwrap(),
        server_id: Some(token.into()),
        secondary: None,
        drain: false,
    };
    let backends = [
        backend("198.18.1.2:80", "a1"),
        backend("198.18.1.3:80", "b2"),
    ];
    assert!(check_tokens("service s", &backends, token_hash).is_ok());
    let e = check_tokens("service s", &backends, |_| 7).unwrap_err();
    assert_eq!(
        e.to_string(),
        "service s, backend 198.18.1.3:80: server_id \"b2\" hashes like \"a1\" of backend 198.18.1.2:80 (the data plane looks tokens up by hash); choose another token"
    );
}

#[test]
fn load_names_the_file() {
    let dir = std::env::temp_dir().join(format!("balancer-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[daemon]\ninterfaces = [\"eth0\"]\npair_sample = 3\n",
    )
    .unwrap();
    let e = DaemonConfig::load(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}: daemon.pair_sample: 3", path.display())),
        "{e}"
    );
    std::fs::write(&path, "[daemon]\ninterfaces = [\"eth0\"]\n").unwrap();
    assert!(DaemonConfig::load(&path).is_ok());
    let missing = dir.join("missing.toml");
    let e = DaemonConfig::load(&missing).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("cannot read {}: ", missing.display())),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn interfaces_must_exist() {
    let mut c = DaemonConfig::parse("[daemon]\ninterfaces = [\"lo\"]\n").unwrap();
    assert!(c.check_interfaces().is_ok());
    c.daemon.interfaces.push("nosuchif0".into());
    let e = c.check_interfaces().unwrap_err().to_string();
    assert_eq!(
        e,
        "daemon.interfaces: interface \"nosuchif0\" does not exist in this network namespace"
    );
}

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use balancer_common::{health_state, BackendHealth};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::mpsc::{self, Receiver},
    task::JoinHandle,
    time::{sleep, timeout},
};

use super::*;

/// Upper bound for anything that should happen "soon": generous so that a loaded CI
/// machine does not make the tests flaky.
const SOON: Duration = Duration::from_secs(5);

async fn listen() -> (TcpListener, SocketAddrV4) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = match listener.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("not IPv4: {other}"),
    };
    (listener, addr)
}

/// A port with nothing listening on it.
async fn closed_port() -> SocketAddrV4 {
    let (listener, addr) = listen().await;
    drop(listener);
    addr
}

/// Accepts connections and drops them, until the returned task is aborted.
fn accept_forever(listener: TcpListener) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    })
}

/// An HTTP server that reads each request head, answers `reply` and closes. The
/// first request head is sent on the returned channel.
async fn http_server(reply: &'static [u8]) -> (SocketAddrV4, Receiver<String>) {
    let (listener, addr) = listen().await;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let head = read_head(&mut stream).await;
            let _ = tx.try_send(head);
            let _ = stream.write_all(reply).await;
        }
    });
    (addr, rx)
}

async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A server that accepts and then says nothing, keeping the connections open.
async fn silent_server() -> SocketAddrV4 {
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    addr
}

fn tcp_settings() -> CheckSettings {
    CheckSettings {
        interval: Duration::from_millis(500),
        timeout: Duration::from_millis(400),
        ..CheckSettings::default()
    }
}

fn http_settings(path: &str, expect_status: u16) -> CheckSettings {
    CheckSettings {
        kind: CheckKind::Http {
            path: path.into(),
            expect_status,
            host: None,
        },
        ..tcp_settings()
    }
}

fn outcome(ok: bool) -> CheckOutcome {
    CheckOutcome {
        ok,
        elapsed: Duration::from_millis(3),
        detail: if ok { "connected" } else { "connect refused" }.into(),
    }
}

#[tokio::test]
async fn tcp_check_up() {
    let (listener, addr) = listen().await;
    let _server = accept_forever(listener);
    let out = check_once(addr, &tcp_settings()).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.detail, "connected");
    assert!(out.elapsed < SOON);
}

#[tokio::test]
async fn tcp_check_refused() {
    let out = check_once(closed_port().await, &tcp_settings()).await;
    assert!(!out.ok);
    assert_eq!(out.detail, "connect refused");
}

#[tokio::test]
async fn http_check_expected_status_and_request_format() {
    let (addr, mut requests) = http_server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
    let out = check_once(addr, &http_settings("/healthz?full=1", 200)).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.detail, "HTTP 200");
    let head = requests.recv().await.unwrap();
    assert_eq!(
        head,
        format!(
            "GET /healthz?full=1 HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: balancer-health\r\n\r\n"
        )
    );
}

#[tokio::test]
async fn http_check_sends_configured_host() {
    let (addr, mut requests) = http_server(b"HTTP/1.0 204 No Content\r\n\r\n").await;
    let settings = CheckSettings {
        kind: CheckKind::Http {
            path: "/".into(),
            expect_status: 204,
            host: Some("app.example".into()),
        },
        ..tcp_settings()
    };
    let out = check_once(addr, &settings).await;
    assert!(out.ok, "{out:?}");
    assert!(requests
        .recv()
        .await
        .unwrap()
        .contains("\r\nHost: app.example\r\n"));
}

#[tokio::test]
async fn http_check_wrong_status_fails() {
    let (addr, _) = http_server(b"HTTP/1.1 500 Internal Server Error\r\n\r\n").await;
    let out = check_once(addr, &http_settings("/", 200)).await;
    assert!(!out.ok);
    assert_eq!(out.detail, "HTTP 500, expected 200");
}

#[tokio::test]
async fn http_check_garbage_fails() {
    let (addr, _) = http_server(b"SSH-2.0-OpenSSH_9.6\r\n").await;
    let out = check_once(addr, &http_settings("/", 200)).await;
    assert!(!out.ok);
    assert_eq!(out.detail, "bad status line");
}

#[tokio::test]
async fn http_check_endless_line_is_bounded() {
    // A status line that looks right and never ends.
    static ENDLESS: [u8; 16384] = {
        let mut line = [b'a'; 16384];
        let start = b"HTTP/1.1 200 ";
        let mut i = 0;
        while i < start.len() {
            line[i] = start[i];
            i += 1;
        }
        line
    };
    let (addr, _) = http_server(&ENDLESS).await;
    let out = check_once(addr, &http_settings("/", 200)).await;
    assert!(!out.ok);
    assert_eq!(out.detail, "bad status line: no head end in 8192 bytes");
}

#[tokio::test]
async fn http_check_closed_without_answer_fails() {
    let (addr, _) = http_server(b"").await;
    let out = check_once(addr, &http_settings("/", 200)).await;
    assert!(!out.ok);
    assert_eq!(out.detail, "connection closed without a response");
}

#[tokio::test]
async fn http_check_silent_backend_times_out() {
    let addr = silent_server().await;
    let settings = CheckSettings {
        timeout: Duration::from_millis(200),
        ..http_settings("/", 200)
    };
    let start = Instant::now();
    let out = check_once(addr, &settings).await;
    assert!(!out.ok);
    assert_eq!(out.detail, "timeout after 200ms");
    assert!(out.elapsed >= Duration::from_millis(200), "{out:?}");
    assert!(start.elapsed() < Duration::from_millis(200) + SOON);
}

/// The status lines the probe accepts and refuses (hyper parses them now).
#[tokio::test]
async fn parses_status_lines() {
    for (reply, detail) in [
        (&b"HTTP/1.1 200 OK\r\n\r\n"[..], "HTTP 200"),
        (b"HTTP/1.0 404\n\n", "HTTP 404, expected 200"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 +20 OK\r\n\r\n", "bad status line"),
        (b"ICY 200 OK\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 200 OK", "connection closed without a response"),
    ] {
        let (addr, _) = http_server(reply).await;
        let out = check_once(addr, &http_settings("/", 200)).await;
        assert_eq!(out.detail, detail, "{:?}", String::from_utf8_lossy(reply));
    }
}

#[test]
fn tracker_falls_after_fall_failures() {
    let mut t = Tracker::new(Health::Up).with_thresholds(2, 3);
    let now = UNIX_EPOCH + Duration::from_secs(1_000);
    assert_eq!(t.record(&outcome(false), now), None);
    assert_eq!(t.record(&outcome(false), now), None);
    assert_eq!(t.health(), Health::Up);
    assert_eq!(
        t.record(&outcome(false), now),
        Some(Transition {
            from: Health::Up,
            to: Health::Down
        })
    );
    assert_eq!(t.health(), Health::Down);
    assert_eq!(t.last_change(), Some(now));
    // Staying down is not another transition.
    assert_eq!(t.record(&outcome(false), now), None);
    let s = t.snapshot();
    assert_eq!((s.checks, s.failures, s.consecutive_failures), (4, 4, 4));
    assert_eq!(
        (s.transitions, s.last_change_unix_ns),
        (1, 1_000_000_000_000)
    );
    assert_eq!(s.last_response_us, 3_000);
}

#[test]
fn tracker_failures_must_be_consecutive() {
    let mut t = Tracker::new(Health::Up).with_thresholds(2, 3);
    let now = SystemTime::now();
    for ok in [false, false, true, false, false, true, false] {
        assert_eq!(t.record(&outcome(ok), now), None);
    }
    let s = t.snapshot();
    assert_eq!(s.health, Health::Up);
    assert_eq!((s.checks, s.failures, s.transitions), (7, 5, 0));
    assert_eq!(t.last_change(), None);
}

#[test]
fn tracker_rises_after_rise_successes() {
    let mut t = Tracker::new(Health::Down).with_thresholds(2, 3);
    let now = SystemTime::now();
    assert_eq!(t.record(&outcome(true), now), None);
    assert_eq!(t.record(&outcome(false), now), None);
    assert_eq!(t.record(&outcome(true), now), None);
    assert_eq!(
        t.record(&outcome(true), now),
        Some(Transition {
            from: Health::Down,
            to: Health::Up
        })
    );
    let s = t.snapshot();
    assert_eq!((s.checks, s.failures, s.consecutive_successes), (4, 1, 2));
    assert_eq!(s.consecutive_failures, 0);
    assert_eq!(s.transitions, 1);
}

#[test]
fn tracker_with_rise_and_fall_of_one_follows_every_check() {
    let mut t = Tracker::new(Health::Up).with_thresholds(1, 1);
    let now = SystemTime::now();
    assert!(t.record(&outcome(false), now).is_some());
    assert!(t.record(&outcome(true), now).is_some());
    assert!(t.record(&outcome(true), now).is_none());
    assert_eq!(t.snapshot().transitions, 2);
}

#[test]
fn tracker_resumes_stored_counters() {
    let mut t = Tracker::resume(Health::Down, 100, 40, 123, 7).with_thresholds(2, 2);
    // Fresh consecutive counts: one success is not enough to come up.
    assert_eq!(t.record(&outcome(true), SystemTime::now()), None);
    let s = t.snapshot();
    assert_eq!((s.health, s.checks, s.failures), (Health::Down, 101, 40));
    assert_eq!((s.transitions, s.last_change_unix_ns), (7, 123));
    assert!(t.record(&outcome(true), SystemTime::now()).is_some());
    assert_eq!(t.snapshot().transitions, 8);
}

#[test]
fn map_value_round_trips() {
    let mut t = Tracker::resume(Health::Up, 10, 2, 55, 3);
    t.record(&outcome(true), SystemTime::now());
    let value = t.snapshot().to_map_value();
    assert_eq!(value.state, health_state::UP);
    assert_eq!(value.last_response_us, 3_000);
    let back = Tracker::from_map_value(&value).unwrap();
    assert_eq!(back.snapshot().checks, 11);
    assert_eq!(back.snapshot().last_response_us, 3_000);
    assert_eq!(
        back.last_change(),
        Some(UNIX_EPOCH + Duration::from_nanos(55))
    );
    assert!(Tracker::from_map_value(&BackendHealth::default()).is_none());
}

#[test]
fn health_displays_and_serializes_lowercase() {
    assert_eq!(Health::Up.to_string(), "up");
    assert_eq!(Health::Down.to_string(), "down");
    assert_eq!(serde_json::to_string(&Health::Down).unwrap(), "\"down\"");
    let json = serde_json::to_value(Tracker::new(Health::Up).snapshot()).unwrap();
    assert_eq!(json["health"], "up");
}

#[test]
fn default_settings_are_valid() {
    let d = CheckSettings::default();
    assert_eq!(d.kind, CheckKind::Tcp);
    assert_eq!(
        (d.interval, d.timeout),
        (Duration::from_millis(250), Duration::from_millis(200))
    );
    assert_eq!((d.rise, d.fall), (2, 2));
    d.validate().unwrap();
    CheckSettings {
        kind: CheckKind::http("/health"),
        ..d
    }
    .validate()
    .unwrap();
}

#[test]
fn settings_validation_table() {
    let http = |path: &str, expect_status: u16, host: Option<&str>| CheckKind::Http {
        path: path.into(),
        expect_status,
        host: host.map(Into::into),
    };
    let ms = Duration::from_millis;
    let cases: Vec<(CheckSettings, &str)> = vec![
        (
            CheckSettings {
                interval: ms(49),
                timeout: ms(10),
                ..Default::default()
            },
            "invalid health-check interval '49ms': must be between 50ms and 1h",
        ),
        (
            CheckSettings {
                interval: Duration::from_secs(3601),
                ..Default::default()
            },
            "invalid health-check interval '3601s': must be between 50ms and 1h",
        ),
        (
            CheckSettings {
                timeout: Duration::ZERO,
                ..Default::default()
            },
            "invalid health-check timeout '0ns': must be more than 0",
        ),
        (
            CheckSettings {
                interval: ms(1000),
                timeout: ms(1001),
                ..Default::default()
            },
            "invalid health-check timeout '1.001s': must not exceed the interval (1s)",
        ),
        (
            CheckSettings {
                rise: 0,
                ..Default::default()
            },
            "invalid health-check rise '0': must be between 1 and 100",
        ),
        (
            CheckSettings {
                fall: 101,
                ..Default::default()
            },
            "invalid health-check fall '101': must be between 1 and 100",
        ),
        (
            CheckSettings {
                kind: http("health", 200, None),
                ..Default::default()
            },
            "invalid health-check HTTP path 'health': must start with '/'",
        ),
        (
            CheckSettings {
                kind: http("/a b", 200, None),
                ..Default::default()
            },
            "invalid health-check HTTP path '/a b': must start with '/'",
        ),
        (
            CheckSettings {
                kind: http("/a\r\nX: y", 200, None),
                ..Default::default()
            },
            "invalid health-check HTTP path '/a\\r\\nX: y'",
        ),
        (
            CheckSettings {
                kind: http("/", 99, None),
                ..Default::default()
            },
            "invalid health-check expected status '99': must be between 100 and 599",
        ),
        (
            CheckSettings {
                kind: http("/", 600, None),
                ..Default::default()
            },
            "invalid health-check expected status '600': must be between 100 and 599",
        ),
        (
            CheckSettings {
                kind: http("/", 200, Some("")),
                ..Default::default()
            },
            "invalid health-check HTTP host '': must be 1-255 visible ASCII characters",
        ),
        (
            CheckSettings {
                kind: http("/", 200, Some("a b")),
                ..Default::default()
            },
            "invalid health-check HTTP host 'a b'",
        ),
    ];
    for (settings, expected) in cases {
        let err = settings.validate().expect_err(expected).to_string();
        assert!(
            err.starts_with(expected),
            "{settings:?}: got {err:?}, want {expected:?}"
        );
    }
    // Edges that are allowed.
    let ok = [
        CheckSettings {
            interval: ms(50),
            timeout: ms(50),
            ..Default::default()
        },
        CheckSettings {
            interval: Duration::from_secs(3600),
            ..Default::default()
        },
        CheckSettings {
            rise: 100,
            fall: 1,
            ..Default::default()
        },
        CheckSettings {
            kind: http("/", 599, Some("example.com:8080")),
            ..Default::default()
        },
    ];
    for settings in ok {
        settings
            .validate()
            .unwrap_or_else(|e| panic!("{settings:?}: {e}"));
    }
}

fn fast_settings() -> CheckSettings {
    CheckSettings {
        kind: CheckKind::Tcp,
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(50),
        rise: 2,
        fall: 2,
    }
}

/// The next report with a transition to `to`; panics if none comes soon.
async fn next_transition(rx: &mut Receiver<HealthReport>, to: Health) -> HealthReport {
    timeout(SOON, async {
        loop {
            let report = rx.recv().await.expect("checker stopped");
            if report.transition.is_some_and(|t| t.to == to) {
                return report;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no transition to {to} within {SOON:?}"))
}

/// Binds `addr` again after its listener was closed (the port is normally free at
/// once; retrying only covers a slow close).
async fn rebind(addr: SocketAddrV4) -> TcpListener {
    for _ in 0..50 {
        if let Ok(listener) = TcpListener::bind(addr).await {
            return listener;
        }
        sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot bind {addr} again");
}

#[tokio::test]
async fn checker_goes_down_and_up_with_the_backend() {
    let (listener, addr) = listen().await;
    let server = accept_forever(listener);
    let (tx, mut rx) = mpsc::channel(64);
    let checker = spawn_checker(7, addr, fast_settings(), Tracker::new(Health::Up), tx);

    let first = timeout(SOON, rx.recv()).await.unwrap().unwrap();
    assert_eq!((first.id, first.target), (7, addr));
    assert!(first.outcome.ok, "{:?}", first.outcome);
    assert_eq!(first.snapshot.checks, 1);
    assert_eq!(first.transition, None);

    server.abort();
    let _ = server.await; // the listener is closed once the task is gone
    let down = next_transition(&mut rx, Health::Down).await;
    assert_eq!(down.outcome.detail, "connect refused");
    assert_eq!(down.snapshot.consecutive_failures, 2);
    assert_eq!(down.snapshot.transitions, 1);
    assert_ne!(down.snapshot.last_change_unix_ns, 0);

    let _server = accept_forever(rebind(addr).await);
    let up = next_transition(&mut rx, Health::Up).await;
    assert_eq!(up.snapshot.consecutive_successes, 2);
    assert_eq!(up.snapshot.transitions, 2);
    assert!(up.snapshot.checks > down.snapshot.checks);
    assert!(up.snapshot.failures >= 2);

    drop(rx);
    timeout(SOON, checker)
        .await
        .expect("checker did not stop")
        .unwrap();
}

#[tokio::test]
async fn checker_reports_every_check_with_growing_counters() {
    let (tx, mut rx) = mpsc::channel(64);
    let target = closed_port().await;
    let _checker = spawn_checker(1, target, fast_settings(), Tracker::new(Health::Down), tx);
    for expected in 1..=4 {
        let report = timeout(SOON, rx.recv()).await.unwrap().unwrap();
        assert_eq!(report.snapshot.checks, expected);
        assert_eq!(report.snapshot.failures, expected);
        assert_eq!(report.snapshot.health, Health::Down);
        assert_eq!(report.transition, None);
    }
}

#[tokio::test]
async fn checker_stops_when_receiver_is_dropped_between_checks() {
    let (listener, addr) = listen().await;
    let _server = accept_forever(listener);
    let settings = CheckSettings {
        interval: Duration::from_secs(3600),
        ..fast_settings()
    };
    let (tx, mut rx) = mpsc::channel(1);
    let checker = spawn_checker(1, addr, settings, Tracker::new(Health::Up), tx);
    timeout(SOON, rx.recv()).await.unwrap().unwrap();
    // The next check is an hour away; the task must not wait for it.
    drop(rx);
    timeout(SOON, checker)
        .await
        .expect("checker did not stop")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_does_not_delay_others() {
    let slow = silent_server().await;
    let (listener, fast) = listen().await;
    let _server = accept_forever(listener);
    let (tx, mut rx) = mpsc::channel(256);
    let slow_settings = CheckSettings {
        kind: CheckKind::http("/"),
        interval: Duration::from_millis(300),
        timeout: Duration::from_millis(300),
        ..fast_settings()
    };
    let _a = spawn_checker(1, slow, slow_settings, Tracker::new(Health::Up), tx.clone());
    let _b = spawn_checker(2, fast, fast_settings(), Tracker::new(Health::Up), tx);
    // The slow backend's first check takes its whole 300 ms timeout; in that time
    // the fast one keeps its 50 ms schedule (about 6 checks, 3 is a loose bound).
    let mut fast_reports = 0;
    let first_slow = timeout(SOON, async {
        loop {
            let report = rx.recv().await.unwrap();
            if report.id == 1 {
                return report;
            }
            fast_reports += 1;
        }
    })
    .await
    .unwrap();
    assert_eq!(first_slow.outcome.detail, "timeout after 300ms");
    assert!(fast_reports >= 3, "only {fast_reports} fast checks");
}

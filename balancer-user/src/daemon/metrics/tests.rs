use std::{collections::HashMap, time::Duration};

use balancer_common::Counter;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::{render::escape_help, *};
use crate::control::{backend_health::HealthInfo, stats::BackendCountersValues};

fn sample_snapshot() -> MetricsSnapshot {
    let counters = BackendCountersValues {
        packets_to: 10,
        bytes_to: 1000,
        packets_from: 9,
        bytes_from: 9000,
        new_flows: 2,
        cookie_hits: 1,
        cookie_misses: 1,
        failover_redirects: 0,
    };
    MetricsSnapshot {
        global: Counter::ALL.iter().map(|&c| (c, c as u64)).collect(),
        daemon: vec![("config_reloads", "Configuration reloads applied.", 3)],
        services: vec![ServiceMetrics {
            service: "198.18.0.10:80/tcp".into(),
            mode: "cookie",
            backends: 2,
            active_backends: 1,
        }],
        backends: vec![
            BackendMetrics {
                service: "198.18.0.10:80/tcp".into(),
                backend: "198.18.1.2:8080".into(),
                server_id: Some("we\"ird\\id\nx".into()),
                state: "up",
                weight: 100,
                counters,
                health: Some(HealthInfo {
                    health: "up",
                    checks: 42,
                    failures: 2,
                    transitions: 3,
                    response_s: 0.0015,
                    last_change_unix_s: Some(1_700_000_000.5),
                }),
            },
            BackendMetrics {
                service: "198.18.0.10:80/tcp".into(),
                backend: "198.18.1.3:8080".into(),
                server_id: None,
                state: "draining",
                weight: u32::MAX,
                counters: BackendCountersValues {
                    bytes_to: u64::MAX,
                    ..counters
                },
                health: None,
            },
        ],
    }
}

/// Checks the structure Prometheus requires: every sample belongs to the family
/// announced just before it (a counter's samples end in `_total`), each family is
/// announced once with HELP then TYPE, and the text ends with `# EOF`.
fn check_structure(text: &str) -> HashMap<String, &str> {
    let text = text.strip_suffix("# EOF\n").expect("ends with # EOF");
    let mut types = HashMap::new();
    let mut current: Option<String> = None;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap().to_string();
            let type_line = lines.next().expect("TYPE after HELP");
            let kind = type_line
                .strip_prefix(&format!("# TYPE {name} "))
                .unwrap_or_else(|| panic!("TYPE of {name}: {type_line}"));
            assert!(types.insert(name.clone(), kind).is_none(), "{name} twice");
            current = Some(name);
        } else {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = current.as_deref().expect("a family before samples");
            let expected = match types[family] {
                "counter" => format!("{family}_total"),
                _ => family.to_string(),
            };
            assert_eq!(name, expected, "sample outside its family: {line}");
        }
    }
    types
}

#[test]
fn renders_every_family_once() {
    let text = render(&sample_snapshot());
    let types = check_structure(&text);
    for c in Counter::ALL {
        assert_eq!(types[&format!("balancer_{}", c.label())], "counter");
        assert!(text.contains(&format!(
            "# HELP balancer_{} {}\n",
            c.label(),
            c.help().trim()
        )));
        assert!(text.contains(&format!("\nbalancer_{}_total {}\n", c.label(), c as u64)));
    }
    assert_eq!(types["balancer_config_reloads"], "counter");
    assert!(text.contains("\nbalancer_config_reloads_total 3\n"));
    assert_eq!(types["balancer_service_active_backends"], "gauge");
    assert!(text.contains("\nbalancer_service_active_backends{service=\"198.18.0.10:80/tcp\"} 1\n"));
    assert!(text
        .contains("\nbalancer_service_info{service=\"198.18.0.10:80/tcp\",mode=\"cookie\"} 1\n"));
    for suffix in [
        "packets_to",
        "bytes_to",
        "packets_from",
        "bytes_from",
        "new_flows",
        "cookie_hits",
        "cookie_misses",
        "failover_redirects",
    ] {
        let name = format!("balancer_backend_{suffix}_total");
        assert_eq!(types[&format!("balancer_backend_{suffix}")], "counter");
        // One series per backend.
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with(&format!("{name}{{")))
                .count(),
            2
        );
    }
    assert_eq!(types["balancer_backend_weight"], "gauge");
    assert!(text.contains(&format!(
        "\nbalancer_backend_weight{{service=\"198.18.0.10:80/tcp\",backend=\"198.18.1.3:8080\"}} {}\n",
        u32::MAX
    )));
    assert!(text.contains(&format!(
        "\nbalancer_backend_bytes_to_total{{service=\"198.18.0.10:80/tcp\",backend=\"198.18.1.3:8080\"}} {}\n",
        u64::MAX
    )));
    assert!(text.contains(
        "\nbalancer_backend_state{service=\"198.18.0.10:80/tcp\",backend=\"198.18.1.3:8080\",state=\"draining\"} 1\n"
    ));
    assert!(text.contains(
        "\nbalancer_backend_state{service=\"198.18.0.10:80/tcp\",backend=\"198.18.1.3:8080\",state=\"up\"} 0\n"
    ));
    for (name, kind) in [
        ("balancer_backend_up", "gauge"),
        ("balancer_backend_health_checks_total", "counter"),
        ("balancer_backend_health_failures_total", "counter"),
        ("balancer_backend_health_response_seconds", "gauge"),
        (
            "balancer_backend_health_last_change_timestamp_seconds",
            "gauge",
        ),
    ] {
        let family = match kind {
            "counter" => name.strip_suffix("_total").unwrap(),
            _ => name,
        };
        assert_eq!(types[family], kind);
        // Only the checked backend has health series.
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with(&format!("{name}{{")))
                .count(),
            1
        );
    }
    assert!(text.contains("} 0.0015\n"));
    assert!(text.contains("} 1700000000.5\n"));
}

/// The per-backend counter families as dashboards know them: names, help, type.
#[test]
fn backend_counter_families_keep_names_and_help() {
    let text = render(&sample_snapshot());
    for (name, help) in [
        ("packets_to", "Packets forwarded to the backend."),
        ("bytes_to", "Bytes forwarded to the backend."),
        (
            "packets_from",
            "Packets forwarded from the backend to clients.",
        ),
        ("bytes_from", "Bytes forwarded from the backend to clients."),
        ("new_flows", "Flows assigned to the backend."),
        (
            "cookie_hits",
            "Cookie mode: connections bound here because the cookie named this backend.",
        ),
        (
            "cookie_misses",
            "Cookie mode: connections bound here by the policy (no usable cookie).",
        ),
        (
            "failover_redirects",
            "Cookie mode: connections bound here because the cookie named a failed \
             primary whose sessions this backend took over.",
        ),
    ] {
        let name = format!("balancer_backend_{name}");
        assert!(
            text.contains(&format!("# HELP {name} {help}\n# TYPE {name} counter\n")),
            "{name}"
        );
        assert!(text.contains(&format!("\n{name}_total{{")), "{name}");
    }
    assert!(text.contains(
        "# HELP balancer_backend_weight Relative share of new flows configured for the backend.\n"
    ));
    // The counters come first, then the weight, as before the table drove them.
    let first = text.find("# HELP balancer_backend_packets_to ").unwrap();
    let last = text
        .find("# HELP balancer_backend_failover_redirects ")
        .unwrap();
    let weight = text.find("# HELP balancer_backend_weight").unwrap();
    assert!(first < last && last < weight);
}

#[test]
fn escapes_label_values_and_help() {
    let text = render(&sample_snapshot());
    assert!(text.contains(
        "balancer_backend_up{service=\"198.18.0.10:80/tcp\",backend=\"198.18.1.2:8080\",server_id=\"we\\\"ird\\\\id\\nx\"} 1\n"
    ));
    assert_eq!(escape_help(" a\\b\nc"), "a\\\\b\\nc");
    let mut snapshot = sample_snapshot();
    snapshot.backends[0].health.as_mut().unwrap().response_s = f64::NAN;
    assert!(render(&snapshot).contains("} NaN\n"));
}

#[test]
fn empty_snapshot_renders_nothing() {
    assert_eq!(render(&MetricsSnapshot::default()), "# EOF\n");
}

/// Starts a server whose snapshot is `result`; returns its address.
async fn start(result: std::result::Result<&'static str, &'static str>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, move || {
        result.map(str::to_string).map_err(str::to_string)
    }));
    addr
}

/// Sends `request` and returns the whole response.
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    String::from_utf8(response).unwrap()
}

#[tokio::test]
async fn serves_metrics_and_nothing_else() {
    let addr = start(Ok("balancer_x_total 1\n")).await;

    let r = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(
        r.contains(&format!("\r\nContent-Type: {CONTENT_TYPE}\r\n")),
        "{r}"
    );
    assert!(r.contains("\r\nContent-Length: 19\r\n"));
    assert!(r.contains("\r\nConnection: close\r\n"));
    assert!(r.ends_with("\r\n\r\nbalancer_x_total 1\n"));

    // An HTTP/1.0 client is answered in HTTP/1.0.
    let r = exchange(addr, b"GET /metrics?name[]=x HTTP/1.0\n\n").await;
    assert!(r.starts_with("HTTP/1.0 200 OK\r\n"), "{r}");

    let r = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(
        r.contains("\r\nContent-Length: 19\r\n") && r.ends_with("\r\n\r\n"),
        "{r}"
    );

    let r = exchange(addr, b"GET /other HTTP/1.1\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");

    let r = exchange(
        addr,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{r}");
    assert!(r.contains("\r\nAllow: GET, HEAD\r\n"), "{r}");

    let r = exchange(addr, b"DELETE /other HTTP/1.1\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 405 "), "{r}");

    let r = exchange(addr, b"GARBAGE\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r}");
}

#[tokio::test]
async fn rejects_oversized_heads() {
    let addr = start(Ok("")).await;
    let mut request = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    request.resize(MAX_HEAD + 100, b'a');
    request.extend_from_slice(b"\r\n\r\n");
    let r = exchange(addr, &request).await;
    assert!(
        r.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{r}"
    );

    // Just within the limit is fine.
    let mut request = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    request.resize(MAX_HEAD - 4, b'a');
    request.extend_from_slice(b"\r\n\r\n");
    let r = exchange(addr, &request).await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
}

#[tokio::test]
async fn snapshot_failure_is_503() {
    let addr = start(Err("instance 'default' is not attached")).await;
    let r = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{r}");
    assert!(
        r.ends_with("\r\n\r\ninstance 'default' is not attached\n"),
        "{r}"
    );
}

#[tokio::test]
async fn slow_clients_time_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limit = Duration::from_millis(200);
    tokio::spawn(serve_endpoints(
        listener,
        vec![Endpoint::metrics(|| Ok(String::new()))],
        limit,
    ));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // A head that never ends.
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    // hyper closes the connection without an answer when the head is late.
    assert!(
        response.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&response)
    );
    assert!(started.elapsed() >= limit);
    assert!(started.elapsed() < limit * 10);
}

#[tokio::test]
async fn serves_static_pages_beside_the_metrics() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let index = Endpoint {
        path: "/",
        content_type: "text/html; charset=utf-8",
        page: Page::Static("<p>hi</p>"),
    };
    tokio::spawn(serve_endpoints(
        listener,
        vec![Endpoint::metrics(|| Ok("m\n".into())), index],
        IO_TIMEOUT,
    ));
    let r = exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(
        r.contains("\r\nContent-Type: text/html; charset=utf-8\r\n"),
        "{r}"
    );
    assert!(r.ends_with("\r\n\r\n<p>hi</p>"), "{r}");
    let r = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert!(r.ends_with("\r\n\r\nm\n"), "{r}");
    let r = exchange(addr, b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
}

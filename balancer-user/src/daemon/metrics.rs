//! Prometheus metrics: the counters and health states in the text exposition format
//! (version 0.0.4), and a small read-only HTTP/1.1 server for them.
//!
//! Families:
//! - `balancer_<counter>_total`: the data plane's global counters (`balancer stats`), and
//!   the daemon's own counters;
//! - `balancer_service_*{service}`: backends configured and taking new flows, and an
//!   info gauge with the service's mode;
//! - `balancer_backend_*{service,backend[,server_id]}`: per-backend traffic counters,
//!   weight, data-plane state, and the health checks' results where the backend is
//!   checked.
//!
//! The server answers `GET /metrics` (and `HEAD`), nothing else: 404 for other paths,
//! 405 for other methods. It reads at most [`MAX_HEAD`] bytes of request head within
//! [`IO_TIMEOUT`], so a slow or oversized request cannot hold a connection, and at most
//! [`MAX_CONNECTIONS`] connections are served at once.

use std::{
    collections::{HashMap, HashSet},
    fmt::{self, Write as _},
    io,
    sync::Arc,
    time::Duration,
};

use balancer_common::{BackendCounter, Counter};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpListener,
    sync::Semaphore,
    time::timeout,
};
use tracing::{debug, warn};

use crate::{
    control::backend_health::HealthInfo,
    control::stats::{BackendCountersValues, Stats},
    control::{BackendInfo, ServiceInfo},
    dataplane::Balancer,
    error::Result,
};

/// Content type of the exposition format served.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Longest request head accepted; a scraper's is a few hundred bytes.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client gets to send its request head, and to take the response.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;

/// Everything one scrape reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// Global data-plane counters.
    pub global: Vec<(Counter, u64)>,
    /// Daemon counters (name, help, value), rendered as `balancer_<name>_total`
    /// counters; `name` is lowercase letters, digits and '_', e.g. `config_reloads`.
    pub daemon: Vec<(&'static str, &'static str, u64)>,
    pub services: Vec<ServiceMetrics>,
    pub backends: Vec<BackendMetrics>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceMetrics {
    /// `198.18.0.10:80/tcp`.
    pub service: String,
    /// `nat` or `cookie`.
    pub mode: &'static str,
    pub backends: usize,
    /// Backends taking new flows.
    pub active_backends: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BackendMetrics {
    /// `198.18.0.10:80/tcp`.
    pub service: String,
    /// `198.18.1.2:8080`.
    pub backend: String,
    /// Cookie mode: the backend's server-ID token.
    pub server_id: Option<String>,
    /// Data-plane state: `up`, `draining` or `down`.
    pub state: &'static str,
    pub weight: u32,
    pub counters: BackendCountersValues,
    /// Health-check results; `None` while the backend is not checked.
    pub health: Option<HealthInfo>,
}

impl MetricsSnapshot {
    /// From what [`Balancer::stats`], [`Balancer::services`] and [`Balancer::backends`]
    /// return (health included).
    pub fn from_dataplane(
        stats: &Stats,
        services: &[ServiceInfo],
        backends: &[BackendInfo],
    ) -> MetricsSnapshot {
        let counters: HashMap<u32, BackendCountersValues> = stats
            .backends
            .iter()
            .map(|b| (b.slot, b.counters))
            .collect();
        MetricsSnapshot {
            global: Counter::ALL.iter().map(|&c| (c, stats.get(c))).collect(),
            daemon: Vec::new(),
            services: services
                .iter()
                .map(|s| ServiceMetrics {
                    service: s.service.to_string(),
                    mode: s.mode,
                    backends: s.backends,
                    active_backends: s.active_backends,
                })
                .collect(),
            // A backend added between the two reads has no counters yet: left out rather
            // than reported as zeros, which Prometheus would take for a counter reset.
            backends: backends
                .iter()
                .filter_map(|b| {
                    Some(BackendMetrics {
                        service: b.service.to_string(),
                        backend: b.backend.to_string(),
                        server_id: b.server_id.clone(),
                        state: b.state.name(),
                        weight: b.weight.get(),
                        counters: *counters.get(&b.slot)?,
                        health: b.health.clone(),
                    })
                })
                .collect(),
        }
    }

    /// Reads the data-plane part of a snapshot from the pinned maps.
    pub fn read(balancer: &Balancer) -> Result<MetricsSnapshot> {
        Ok(MetricsSnapshot::from_dataplane(
            &balancer.stats()?,
            &balancer.services()?,
            &balancer.backends(None)?,
        ))
    }
}

/// A metric family with one sample per item (a service, a backend).
struct Family<T> {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    value: fn(&T) -> Value,
}

const fn counter<T>(name: &'static str, help: &'static str, value: fn(&T) -> Value) -> Family<T> {
    Family {
        name,
        help,
        kind: Kind::Counter,
        value,
    }
}

const fn gauge<T>(name: &'static str, help: &'static str, value: fn(&T) -> Value) -> Family<T> {
    Family {
        name,
        help,
        kind: Kind::Gauge,
        value,
    }
}

const SERVICE_GAUGES: [Family<ServiceMetrics>; 2] = [
    gauge(
        "balancer_service_backends",
        "Backends configured in the service.",
        |s| s.backends.into(),
    ),
    gauge(
        "balancer_service_active_backends",
        "Backends of the service taking new flows.",
        |s| s.active_backends.into(),
    ),
];

/// Per-backend gauges besides the counters (which come from `BackendCounter`'s table).
const BACKEND_GAUGES: [Family<BackendMetrics>; 1] = [gauge(
    "balancer_backend_weight",
    "Relative share of new flows configured for the backend.",
    |b| b.weight.into(),
)];

const HEALTH_FAMILIES: [Family<HealthInfo>; 6] = [
    gauge(
        "balancer_backend_up",
        "Whether the backend passes its health checks (1) or not (0).",
        |h| u8::from(h.health == "up").into(),
    ),
    counter(
        "balancer_backend_health_transitions_total",
        "Health changes of the backend (up to down or down to up).",
        |h| h.transitions.into(),
    ),
    counter(
        "balancer_backend_health_checks_total",
        "Health checks run against the backend.",
        |h| h.checks.into(),
    ),
    counter(
        "balancer_backend_health_failures_total",
        "Health checks of the backend that failed.",
        |h| h.failures.into(),
    ),
    gauge(
        "balancer_backend_health_response_seconds",
        "Duration of the backend's last health check.",
        |h| h.response_s.into(),
    ),
    gauge(
        "balancer_backend_health_last_change_timestamp_seconds",
        "Unix time of the backend's last health change (0: never changed).",
        |h| h.last_change_unix_s.unwrap_or(0.0).into(),
    ),
];

/// Data-plane states a backend can be in, one series each (a Prometheus state set).
const BACKEND_STATES: [&str; 3] = ["up", "draining", "down"];

/// Labels of a sample.
type Labels<'a> = Vec<(&'static str, &'a str)>;

/// Renders a snapshot in the Prometheus text format 0.0.4.
pub fn render(snapshot: &MetricsSnapshot) -> String {
    let mut out = Exposition::default();
    for &(counter, value) in &snapshot.global {
        let name = format!("balancer_{}_total", counter.label());
        if out.family(&name, counter.help(), Kind::Counter) {
            out.sample(&name, &[], value);
        }
    }
    for &(name, help, value) in &snapshot.daemon {
        debug_assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "metric name {name:?}"
        );
        let name = format!("balancer_{name}_total");
        if out.family(&name, help, Kind::Counter) {
            out.sample(&name, &[], value);
        }
    }
    render_services(&mut out, &snapshot.services);
    render_backends(&mut out, &snapshot.backends);
    out.text
}

fn render_services(out: &mut Exposition, services: &[ServiceMetrics]) {
    let items: Vec<(Labels, &ServiceMetrics)> = services
        .iter()
        .map(|s| (vec![("service", s.service.as_str())], s))
        .collect();
    out.families(&SERVICE_GAUGES, &items);
    let name = "balancer_service_info";
    if !items.is_empty()
        && out.family(
            name,
            "Service mode (nat, or cookie: delayed binding on the session cookie); always 1.",
            Kind::Gauge,
        )
    {
        for s in services {
            out.sample(name, &[("service", &s.service), ("mode", s.mode)], 1u8);
        }
    }
}

fn render_backends(out: &mut Exposition, backends: &[BackendMetrics]) {
    let items: Vec<(Labels, &BackendMetrics)> =
        backends.iter().map(|b| (backend_labels(b), b)).collect();
    if !items.is_empty() {
        for counter in BackendCounter::ALL {
            let name = format!("balancer_backend_{}_total", counter.label());
            if out.family(&name, counter.help(), Kind::Counter) {
                for (labels, b) in &items {
                    out.sample(&name, labels, b.counters.get(counter));
                }
            }
        }
    }
    out.families(&BACKEND_GAUGES, &items);
    let name = "balancer_backend_state";
    if !items.is_empty()
        && out.family(
            name,
            "Data-plane state of the backend: 1 for the current one of up, draining, down.",
            Kind::Gauge,
        )
    {
        for (labels, b) in &items {
            for state in BACKEND_STATES {
                let mut labels = labels.clone();
                labels.push(("state", state));
                out.sample(name, &labels, u8::from(b.state == state));
            }
        }
    }
    // Only checked backends have health series.
    let checked: Vec<(Labels, &HealthInfo)> = backends
        .iter()
        .filter_map(|b| Some((backend_labels(b), b.health.as_ref()?)))
        .collect();
    out.families(&HEALTH_FAMILIES, &checked);
}

fn backend_labels(b: &BackendMetrics) -> Labels<'_> {
    let mut labels = vec![
        ("service", b.service.as_str()),
        ("backend", b.backend.as_str()),
    ];
    if let Some(id) = &b.server_id {
        labels.push(("server_id", id.as_str()));
    }
    labels
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// A sample value. Counters stay integers: a u64 printed through f64 would lose
/// precision above 2^53.
enum Value {
    Int(u64),
    Float(f64),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) if v.is_nan() => f.write_str("NaN"),
            Value::Float(v) if v.is_infinite() => {
                f.write_str(if v > 0.0 { "+Inf" } else { "-Inf" })
            }
            Value::Float(v) => write!(f, "{v}"),
        }
    }
}

macro_rules! value_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Value {
                Value::Int(v as u64)
            }
        }
    )*};
}
value_from!(u8, u32, u64, usize);

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}

/// The exposition text being written. Each family's HELP and TYPE lines are written
/// once, followed by all its samples: Prometheus rejects a scrape that repeats a family.
#[derive(Default)]
struct Exposition {
    text: String,
    families: HashSet<String>,
}

impl Exposition {
    /// Starts a family; false (and nothing written) if it was written already, so a
    /// daemon counter named like a data-plane one cannot break the scrape.
    fn family(&mut self, name: &str, help: &str, kind: Kind) -> bool {
        if !self.families.insert(name.to_string()) {
            debug_assert!(false, "metric family {name} written twice");
            return false;
        }
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        // `Counter::help` keeps the doc comment's leading space.
        let help = help.trim().replace('\\', "\\\\").replace('\n', "\\n");
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        true
    }

    /// Writes each of `families` with one sample per item; nothing without items.
    fn families<T>(&mut self, families: &[Family<T>], items: &[(Labels, &T)]) {
        if items.is_empty() {
            return;
        }
        for f in families {
            if self.family(f.name, f.help, f.kind) {
                for (labels, item) in items {
                    self.sample(f.name, labels, (f.value)(item));
                }
            }
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Into<Value>) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", value.into());
    }
}

/// A label value as the exposition format quotes it.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

// ---- HTTP

/// Serves `GET /metrics` on `listener` until the task is dropped. `snapshot` renders
/// the exposition text, or says why it cannot (answered with 503); it runs on the
/// blocking pool, since reading the pinned maps takes the instance lock and makes
/// syscalls.
pub async fn serve(
    listener: TcpListener,
    snapshot: impl Fn() -> std::result::Result<String, String> + Send + Sync + 'static,
) {
    serve_with_timeout(listener, snapshot, IO_TIMEOUT).await
}

/// [`serve`] with another I/O timeout (the tests' is short).
async fn serve_with_timeout(
    listener: TcpListener,
    snapshot: impl Fn() -> std::result::Result<String, String> + Send + Sync + 'static,
    io_timeout: Duration,
) {
    let snapshot = Arc::new(snapshot);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return; // never closed
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: retrying at once would spin.
                warn!("metrics endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let snapshot = snapshot.clone();
        tokio::spawn(async move {
            let snapshot = move || (*snapshot)();
            if let Err(e) = handle(stream, snapshot, io_timeout).await {
                debug!("metrics endpoint: {peer}: {e}");
            }
            drop(slot);
        });
    }
}

/// An HTTP response; every one closes the connection.
struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    allow: bool,
    body: String,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: impl Into<String>) -> Response {
        let mut body = body.into();
        body.push('\n');
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            allow: false,
            body,
        }
    }

    fn bytes(&self, head_only: bool) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            head.push_str("Allow: GET, HEAD\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if !head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

/// What reading a request head gave.
enum Head {
    Complete(Vec<u8>),
    TooLarge,
    /// The client closed the connection before sending a whole head.
    Closed,
}

async fn handle<S, F>(mut stream: S, snapshot: F, io_timeout: Duration) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce() -> std::result::Result<String, String> + Send + 'static,
{
    // One deadline for the whole head, not per read: a client trickling a byte at a
    // time would otherwise keep the connection forever.
    let (response, head_only) = match timeout(io_timeout, read_head(&mut stream)).await {
        Err(_) => (
            Response::text(408, "Request Timeout", "request head not received in time"),
            false,
        ),
        Ok(head) => match head? {
            Head::Closed => return Ok(()),
            Head::TooLarge => (
                Response::text(
                    431,
                    "Request Header Fields Too Large",
                    format!("request head longer than {MAX_HEAD} bytes"),
                ),
                false,
            ),
            Head::Complete(head) => respond(&head, snapshot).await,
        },
    };
    timeout(
        io_timeout,
        send_and_close(&mut stream, &response.bytes(head_only)),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client did not take the response"))?
}

/// Reads until the blank line that ends the head, within [`MAX_HEAD`] bytes.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Head> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    loop {
        if len == buf.len() {
            return Ok(Head::TooLarge);
        }
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        // Only the new bytes and the three before them can complete the terminator.
        let from = len.saturating_sub(3);
        len += n;
        if let Some(end) = find_head_end(&buf[from..len]) {
            buf.truncate(from + end);
            return Ok(Head::Complete(buf));
        }
    }
}

/// Length of the head up to and including its terminating blank line. Bare LF line
/// ends are accepted too, as RFC 9112 allows recipients to.
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    (0..bytes.len()).find_map(|i| {
        if bytes[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if bytes[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// The response to a complete request head, and whether to leave out the body (HEAD).
async fn respond<F>(head: &[u8], snapshot: F) -> (Response, bool)
where
    F: FnOnce() -> std::result::Result<String, String> + Send + 'static,
{
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_ascii_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (
            Response::text(400, "Bad Request", "malformed request line"),
            false,
        );
    };
    if !version.starts_with("HTTP/1.") {
        return (
            Response::text(505, "HTTP Version Not Supported", "HTTP/1.x only"),
            false,
        );
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            let mut r = Response::text(
                405,
                "Method Not Allowed",
                "the metrics endpoint is read-only",
            );
            r.allow = true;
            return (r, false);
        }
    };
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return (
            Response::text(404, "Not Found", "metrics are at /metrics"),
            head_only,
        );
    }
    let response = match tokio::task::spawn_blocking(snapshot).await {
        Ok(Ok(body)) => Response {
            status: 200,
            reason: "OK",
            content_type: CONTENT_TYPE,
            allow: false,
            body,
        },
        Ok(Err(reason)) => Response::text(503, "Service Unavailable", reason),
        Err(e) => Response::text(
            503,
            "Service Unavailable",
            format!("metrics snapshot failed: {e}"),
        ),
    };
    (response, head_only)
}

/// Sends the response and closes, reading what the client still sends for a moment:
/// closing a socket with unread input makes the kernel reset the connection, which can
/// destroy the response before the client has read it (e.g. a 405 to a POST whose body
/// was never read).
async fn send_and_close<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    response: &[u8],
) -> io::Result<()> {
    stream.write_all(response).await?;
    stream.shutdown().await?;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    let _ = timeout(Duration::from_secs(1), async {
        while drained < 64 * 1024 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

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
    /// announced just before it, each family is announced once with HELP then TYPE.
    fn check_structure(text: &str) -> HashMap<String, &str> {
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
                assert_eq!(
                    Some(name),
                    current.as_deref(),
                    "sample outside its family: {line}"
                );
            }
        }
        types
    }

    #[test]
    fn renders_every_family_once() {
        let text = render(&sample_snapshot());
        let types = check_structure(&text);
        for c in Counter::ALL {
            assert_eq!(types[&format!("balancer_{}_total", c.label())], "counter");
            assert!(text.contains(&format!(
                "# HELP balancer_{}_total {}\n",
                c.label(),
                c.help().trim()
            )));
            assert!(text.contains(&format!("\nbalancer_{}_total {}\n", c.label(), c as u64)));
        }
        assert_eq!(types["balancer_config_reloads_total"], "counter");
        assert!(text.contains("\nbalancer_config_reloads_total 3\n"));
        assert_eq!(types["balancer_service_active_backends"], "gauge");
        assert!(
            text.contains("\nbalancer_service_active_backends{service=\"198.18.0.10:80/tcp\"} 1\n")
        );
        assert!(text.contains(
            "\nbalancer_service_info{service=\"198.18.0.10:80/tcp\",mode=\"cookie\"} 1\n"
        ));
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
            assert_eq!(types[&name], "counter");
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
            assert_eq!(types[name], kind);
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
            let name = format!("balancer_backend_{name}_total");
            assert!(
                text.contains(&format!("# HELP {name} {help}\n# TYPE {name} counter\n")),
                "{name}"
            );
        }
        assert!(text.contains(
            "# HELP balancer_backend_weight Relative share of new flows configured for the backend.\n"
        ));
        // The counters come first, then the weight, as before the table drove them.
        let first = text
            .find("# HELP balancer_backend_packets_to_total")
            .unwrap();
        let last = text
            .find("# HELP balancer_backend_failover_redirects_total")
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
        let mut out = Exposition::default();
        out.family("x", "a\\b\nc", Kind::Gauge);
        assert!(out.text.starts_with("# HELP x a\\\\b\\nc\n"));
        assert_eq!(Value::Float(f64::NAN).to_string(), "NaN");
        assert_eq!(Value::Float(f64::NEG_INFINITY).to_string(), "-Inf");
    }

    #[test]
    fn empty_snapshot_renders_nothing() {
        assert_eq!(render(&MetricsSnapshot::default()), "");
    }

    /// Starts a server whose snapshot is `result`; returns its address.
    async fn start(
        result: std::result::Result<&'static str, &'static str>,
    ) -> std::net::SocketAddr {
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
        assert!(r.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(r.contains("\r\nContent-Length: 19\r\n"));
        assert!(r.contains("\r\nConnection: close\r\n"));
        assert!(r.ends_with("\r\n\r\nbalancer_x_total 1\n"));

        let r = exchange(addr, b"GET /metrics?name[]=x HTTP/1.0\n\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");

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
        tokio::spawn(serve_with_timeout(listener, || Ok(String::new()), limit));
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // A head that never ends.
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let r = String::from_utf8(response).unwrap();
        assert!(r.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{r}");
        assert!(started.elapsed() >= limit);
    }
}

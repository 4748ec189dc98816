//! Active health checks of backends, run by `balancer daemon`.
//!
//! Each backend gets one task ([`spawn_checker`]) that probes it every interval with a
//! TCP connect or an HTTP GET ([`check_once`]), feeds the outcome to a rise/fall state
//! machine ([`Tracker`]) and reports every check to the daemon ([`HealthReport`]). The
//! daemon writes the counters to the pinned HEALTH map after each report and acts on
//! transitions (backend state, failover). Keeping one task per backend means a slow or
//! dead backend only ever delays its own schedule.

use std::{
    fmt, io,
    net::SocketAddrV4,
    ops::RangeInclusive,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use balancer_common::{health_state, BackendHealth};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpStream,
    sync::mpsc,
    task::JoinHandle,
    time::{Interval, MissedTickBehavior},
};
use tracing::{debug, info, warn};

use crate::error::{Error, Result};

/// Allowed check intervals: below 50 ms checks become load on the backends; above an hour
/// a failure would go unnoticed for too long to be called health checking.
pub const INTERVAL_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(50)..=Duration::from_secs(3600);
/// Allowed rise and fall counts.
pub const THRESHOLD_RANGE: RangeInclusive<u32> = 1..=100;
/// Status codes an HTTP check may expect.
pub const STATUS_RANGE: RangeInclusive<u16> = 100..=599;
/// Longest status line read from an HTTP backend. The probe only needs the status code,
/// so the read is bounded: a backend answering with an endless line cannot make the
/// checker buffer it.
const MAX_STATUS_LINE: u64 = 4096;
/// Longest HTTP Host header value (a DNS name is at most 253 bytes, plus ":port").
const MAX_HOST_LEN: usize = 255;

/// How a backend is probed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CheckKind {
    /// Healthy when a TCP connection can be opened; it is closed right away.
    #[default]
    Tcp,
    /// Healthy when `GET <path>` is answered with status `expect_status`.
    Http {
        path: String,
        expect_status: u16,
        /// Host header; `None` sends the backend's `ip:port`.
        host: Option<String>,
    },
}

impl CheckKind {
    /// An HTTP check of `path` that expects 200 and sends the backend's address as Host.
    pub fn http(path: impl Into<String>) -> CheckKind {
        CheckKind::Http {
            path: path.into(),
            expect_status: 200,
            host: None,
        }
    }
}

/// Settings of one backend's health checks.
///
/// Defaults: TCP connect, every 250 ms, 200 ms timeout, up after 2 successes, down after
/// 2 failures. A dead backend is therefore noticed within about 0.5-0.7 s, so sessions
/// fail over in under a second (the appliance's point), while one lost SYN or one slow
/// answer does not take a backend out. Four connects a second per backend are nothing
/// to a server; raise the interval for very many backends or slow links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckSettings {
    pub kind: CheckKind,
    /// Time from the start of one check to the start of the next (50 ms to 1 h).
    pub interval: Duration,
    /// Limit for one whole check: connect, and for HTTP the request and status line.
    /// More than 0 and at most `interval`, so checks of a backend never overlap.
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up (1 to 100).
    pub rise: u32,
    /// Consecutive failures that take an up backend down (1 to 100).
    pub fall: u32,
}

impl Default for CheckSettings {
    fn default() -> Self {
        CheckSettings {
            kind: CheckKind::Tcp,
            interval: Duration::from_millis(250),
            timeout: Duration::from_millis(200),
            rise: 2,
            fall: 2,
        }
    }
}

impl CheckSettings {
    /// What is wrong with the settings, if anything.
    pub fn validate(&self) -> Result<()> {
        if !INTERVAL_RANGE.contains(&self.interval) {
            return Err(Error::invalid(
                "health-check interval",
                format!("{:?}", self.interval),
                "must be between 50ms and 1h",
            ));
        }
        if self.timeout.is_zero() {
            return Err(Error::invalid(
                "health-check timeout",
                format!("{:?}", self.timeout),
                "must be more than 0",
            ));
        }
        if self.timeout > self.interval {
            return Err(Error::invalid(
                "health-check timeout",
                format!("{:?}", self.timeout),
                format!("must not exceed the interval ({:?})", self.interval),
            ));
        }
        check_threshold("health-check rise", self.rise)?;
        check_threshold("health-check fall", self.fall)?;
        match &self.kind {
            CheckKind::Tcp => Ok(()),
            CheckKind::Http {
                path,
                expect_status,
                host,
            } => validate_http(path, *expect_status, host.as_deref()),
        }
    }
}

fn check_threshold(what: &'static str, value: u32) -> Result<()> {
    if THRESHOLD_RANGE.contains(&value) {
        Ok(())
    } else {
        Err(Error::invalid(what, value, "must be between 1 and 100"))
    }
}

/// Printable ASCII without space: what may go into the request line and Host header
/// without breaking the request (other bytes must be percent-encoded).
fn is_visible_ascii(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

fn validate_http(path: &str, expect_status: u16, host: Option<&str>) -> Result<()> {
    if !path.starts_with('/') || !is_visible_ascii(path) {
        return Err(Error::invalid(
            "health-check HTTP path",
            path.escape_debug(),
            "must start with '/' and contain only visible ASCII characters (no spaces or control characters; percent-encode others)",
        ));
    }
    if !STATUS_RANGE.contains(&expect_status) {
        return Err(Error::invalid(
            "health-check expected status",
            expect_status,
            "must be between 100 and 599",
        ));
    }
    if let Some(host) = host {
        if host.is_empty() || host.len() > MAX_HOST_LEN || !is_visible_ascii(host) {
            return Err(Error::invalid(
                "health-check HTTP host",
                host.escape_debug(),
                "must be 1-255 visible ASCII characters (no spaces or control characters)",
            ));
        }
    }
    Ok(())
}

/// Result of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOutcome {
    pub ok: bool,
    /// Time the check took (up to the timeout).
    pub elapsed: Duration,
    /// What was seen, for logs: "connected", "HTTP 200", "connect refused",
    /// "timeout after 500ms", "HTTP 500, expected 200", "bad status line", ...
    pub detail: String,
}

/// A probe's verdict: `Ok(detail)` when healthy, `Err(detail)` when not.
type Probe = std::result::Result<String, String>;

/// Runs one check of `target`; never fails, every problem is a failed outcome.
pub async fn check_once(target: SocketAddrV4, settings: &CheckSettings) -> CheckOutcome {
    let start = Instant::now();
    // One timeout around the whole exchange: a backend that accepts and then trickles
    // bytes cannot stretch a check beyond it.
    let verdict = match tokio::time::timeout(settings.timeout, probe(target, &settings.kind)).await
    {
        Ok(verdict) => verdict,
        Err(_) => Err(format!("timeout after {:?}", settings.timeout)),
    };
    let elapsed = start.elapsed();
    match verdict {
        Ok(detail) => CheckOutcome {
            ok: true,
            elapsed,
            detail,
        },
        Err(detail) => CheckOutcome {
            ok: false,
            elapsed,
            detail,
        },
    }
}

async fn probe(target: SocketAddrV4, kind: &CheckKind) -> Probe {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| io_detail("connect", &e))?;
    match kind {
        // Dropping the stream closes it: the connection was the whole test.
        CheckKind::Tcp => Ok("connected".into()),
        CheckKind::Http {
            path,
            expect_status,
            host,
        } => {
            let host = host.clone().unwrap_or_else(|| target.to_string());
            http_probe(stream, path, &host, *expect_status).await
        }
    }
}

/// Sends the request and judges the status line. The rest of the answer is not read:
/// closing with unread data resets the connection, which also spares the checker a
/// TIME_WAIT socket per check.
async fn http_probe(mut stream: TcpStream, path: &str, host: &str, expect: u16) -> Probe {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: balancer-health\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| io_detail("send", &e))?;
    let line = read_status_line(stream).await?;
    match parse_status_line(&line) {
        Some(status) if status == expect => Ok(format!("HTTP {status}")),
        Some(status) => Err(format!("HTTP {status}, expected {expect}")),
        None => Err("bad status line".into()),
    }
}

/// The first line of the answer, with its line end, reading at most [`MAX_STATUS_LINE`]
/// bytes.
async fn read_status_line(stream: TcpStream) -> std::result::Result<Vec<u8>, String> {
    let mut reader = BufReader::new(stream.take(MAX_STATUS_LINE));
    let mut line = Vec::new();
    reader
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| io_detail("receive", &e))?;
    if line.ends_with(b"\n") {
        Ok(line)
    } else if line.is_empty() {
        Err("connection closed without a response".into())
    } else if line.len() as u64 >= MAX_STATUS_LINE {
        Err(format!(
            "bad status line: no line end in {MAX_STATUS_LINE} bytes"
        ))
    } else {
        Err("connection closed in the status line".into())
    }
}

/// The status code of `HTTP/x.y SSS [reason]`, or `None` if the line is not one.
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.splitn(3, |&b| b == b' ');
    let version = parts.next()?;
    let code = parts.next()?;
    if !version.starts_with(b"HTTP/") || code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// Short, stable wording for the common errors; the OS text for the rest.
fn io_detail(op: &str, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => format!("{op} refused"),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        _ => format!("{op}: {e}"),
    }
}

/// Health of a backend as its checks see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Up,
    Down,
}

impl Health {
    /// The value stored in the pinned HEALTH map ([`health_state`]).
    pub fn state_code(self) -> u8 {
        match self {
            Health::Up => health_state::UP,
            Health::Down => health_state::DOWN,
        }
    }

    /// The health stored in the map, `None` for `UNKNOWN` (never checked) or garbage.
    pub fn from_state_code(code: u8) -> Option<Health> {
        match code {
            health_state::UP => Some(Health::Up),
            health_state::DOWN => Some(Health::Down),
            _ => None,
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Up => "up",
            Health::Down => "down",
        })
    }
}

/// A change of health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub from: Health,
    pub to: Health,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.from, self.to)
    }
}

/// A [`Tracker`]'s state and counters, as written to the HEALTH map and shown as JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackerSnapshot {
    pub health: Health,
    /// Checks run.
    pub checks: u64,
    /// Checks failed (in total, not only consecutive ones).
    pub failures: u64,
    /// Successes since the last failure.
    pub consecutive_successes: u32,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Health changes.
    pub transitions: u64,
    /// Wall-clock time of the last health change, Unix nanoseconds; 0 if it never changed.
    pub last_change_unix_ns: u64,
    /// Time the last check took, successful or not (so a timeout shows as the timeout),
    /// in microseconds; 0 before the first check.
    pub last_response_us: u32,
}

impl TrackerSnapshot {
    /// The value of the pinned HEALTH map.
    pub fn to_map_value(&self) -> BackendHealth {
        BackendHealth {
            state: self.health.state_code(),
            last_response_us: self.last_response_us,
            checks: self.checks,
            failures: self.failures,
            last_change_unix_ns: self.last_change_unix_ns,
            transitions: self.transitions,
            ..BackendHealth::default()
        }
    }
}

/// Rise/fall state machine and counters of one backend: an up backend goes down after
/// `fall` consecutive failed checks, a down backend comes up after `rise` consecutive
/// successful ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracker {
    state: TrackerSnapshot,
    rise: u32,
    fall: u32,
}

impl Tracker {
    /// A tracker with no history and the default rise and fall (2 and 2);
    /// [`spawn_checker`] applies its settings' counts.
    pub fn new(initial: Health) -> Tracker {
        let defaults = CheckSettings::default();
        Tracker {
            state: TrackerSnapshot {
                health: initial,
                checks: 0,
                failures: 0,
                consecutive_successes: 0,
                consecutive_failures: 0,
                transitions: 0,
                last_change_unix_ns: 0,
                last_response_us: 0,
            },
            rise: defaults.rise,
            fall: defaults.fall,
        }
    }

    /// Continues from counters stored by an earlier daemon (the pinned HEALTH map), so a
    /// restart neither resets the counters nor flaps the state. The consecutive counts
    /// start over: the new daemon needs `rise`/`fall` fresh checks to change the state.
    pub fn resume(
        health: Health,
        checks: u64,
        failures: u64,
        last_change_unix_ns: u64,
        transitions: u64,
    ) -> Tracker {
        let mut tracker = Tracker::new(health);
        tracker.state.checks = checks;
        tracker.state.failures = failures;
        tracker.state.last_change_unix_ns = last_change_unix_ns;
        tracker.state.transitions = transitions;
        tracker
    }

    /// [`Tracker::resume`] from a HEALTH map value; `None` if it holds no health
    /// (never checked).
    pub fn from_map_value(value: &BackendHealth) -> Option<Tracker> {
        let health = Health::from_state_code(value.state)?;
        let mut tracker = Tracker::resume(
            health,
            value.checks,
            value.failures,
            value.last_change_unix_ns,
            value.transitions,
        );
        tracker.state.last_response_us = value.last_response_us;
        Some(tracker)
    }

    /// Sets the rise and fall counts (values below 1 count as 1).
    pub fn with_thresholds(mut self, rise: u32, fall: u32) -> Tracker {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
        self
    }

    /// Counts one check and returns the health change it caused, if any.
    pub fn record(&mut self, outcome: &CheckOutcome, now: SystemTime) -> Option<Transition> {
        let s = &mut self.state;
        s.checks = s.checks.saturating_add(1);
        s.last_response_us = u32::try_from(outcome.elapsed.as_micros()).unwrap_or(u32::MAX);
        if outcome.ok {
            s.consecutive_successes = s.consecutive_successes.saturating_add(1);
            s.consecutive_failures = 0;
        } else {
            s.failures = s.failures.saturating_add(1);
            s.consecutive_failures = s.consecutive_failures.saturating_add(1);
            s.consecutive_successes = 0;
        }
        let next = match s.health {
            Health::Up if s.consecutive_failures >= self.fall => Health::Down,
            Health::Down if s.consecutive_successes >= self.rise => Health::Up,
            unchanged => unchanged,
        };
        if next == s.health {
            return None;
        }
        let transition = Transition {
            from: s.health,
            to: next,
        };
        s.health = next;
        s.transitions = s.transitions.saturating_add(1);
        s.last_change_unix_ns = unix_ns(now);
        Some(transition)
    }

    pub fn health(&self) -> Health {
        self.state.health
    }

    /// Wall-clock time of the last health change, `None` if it never changed.
    pub fn last_change(&self) -> Option<SystemTime> {
        match self.state.last_change_unix_ns {
            0 => None,
            ns => Some(UNIX_EPOCH + Duration::from_nanos(ns)),
        }
    }

    pub fn rise(&self) -> u32 {
        self.rise
    }

    pub fn fall(&self) -> u32 {
        self.fall
    }

    pub fn snapshot(&self) -> TrackerSnapshot {
        self.state
    }
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// What a checker sends after every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthReport {
    /// The caller's name for the backend (e.g. its slot).
    pub id: u32,
    pub target: SocketAddrV4,
    pub outcome: CheckOutcome,
    /// Counters after this check.
    pub snapshot: TrackerSnapshot,
    /// The health change this check caused, if any.
    pub transition: Option<Transition>,
}

/// Checks `target` every `settings.interval`, the first time right away, and sends a
/// [`HealthReport`] after each check. The tracker's rise and fall are set from
/// `settings`, which should have passed [`CheckSettings::validate`].
///
/// A check never overlaps the next: if one (or a send to a full channel) runs late, the
/// schedule shifts instead of bursting to catch up. The task ends once `tx`'s receiver
/// is dropped, without waiting for the next check.
pub fn spawn_checker(
    id: u32,
    target: SocketAddrV4,
    settings: CheckSettings,
    tracker: Tracker,
    tx: mpsc::Sender<HealthReport>,
) -> JoinHandle<()> {
    let tracker = tracker.with_thresholds(settings.rise, settings.fall);
    let checker = Checker {
        id,
        target,
        settings,
        tracker,
    };
    tokio::spawn(checker.run(tx))
}

/// The state of one checker task.
struct Checker {
    id: u32,
    target: SocketAddrV4,
    settings: CheckSettings,
    tracker: Tracker,
}

impl Checker {
    async fn run(mut self, tx: mpsc::Sender<HealthReport>) {
        // tokio panics on a zero period; validated settings never have one.
        let period = self.settings.interval.max(*INTERVAL_RANGE.start());
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let report = tokio::select! {
                () = tx.closed() => break,
                report = self.next_report(&mut ticks) => report,
            };
            if tx.send(report).await.is_err() {
                break;
            }
        }
        debug!(
            id = self.id,
            "health checks of backend {} stopped", self.target
        );
    }

    async fn next_report(&mut self, ticks: &mut Interval) -> HealthReport {
        ticks.tick().await;
        let outcome = check_once(self.target, &self.settings).await;
        let transition = self.tracker.record(&outcome, SystemTime::now());
        match transition {
            Some(transition) => self.log_transition(transition, &outcome),
            None if !outcome.ok => debug!(
                id = self.id,
                "backend {} failed a check: {}", self.target, outcome.detail
            ),
            None => {}
        }
        HealthReport {
            id: self.id,
            target: self.target,
            outcome,
            snapshot: self.tracker.snapshot(),
            transition,
        }
    }

    fn log_transition(&self, transition: Transition, outcome: &CheckOutcome) {
        let s = self.tracker.snapshot();
        match transition.to {
            Health::Down => warn!(
                id = self.id,
                "backend {} down after {} failed checks: {}",
                self.target,
                s.consecutive_failures,
                outcome.detail
            ),
            Health::Up => info!(
                id = self.id,
                "backend {} up after {} successful checks: {} in {:?}",
                self.target,
                s.consecutive_successes,
                outcome.detail,
                outcome.elapsed
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tokio::{
        io::AsyncReadExt as _,
        net::TcpListener,
        sync::mpsc::Receiver,
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
        let (addr, mut requests) =
            http_server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
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
        static ENDLESS: [u8; 8192] = [b'a'; 8192];
        let (addr, _) = http_server(&ENDLESS).await;
        let out = check_once(addr, &http_settings("/", 200)).await;
        assert!(!out.ok);
        assert_eq!(out.detail, "bad status line: no line end in 4096 bytes");
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

    #[test]
    fn parses_status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 404\n"), Some(404));
        assert_eq!(parse_status_line(b"HTTP/1.1 20 OK\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 2000 OK\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 +20 OK\r\n"), None);
        assert_eq!(parse_status_line(b"ICY 200 OK\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), None);
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
}

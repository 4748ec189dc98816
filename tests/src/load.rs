//! Session load through the VIP for the failover test (`tests/tests/ops/failover.rs`), the
//! demo and the benchmark: clients in one namespace, each with its own session of the
//! replicated app server (`balancer-testsrv --server-id`), each updating its counter in a
//! loop, one new connection per request.
//!
//! Every request carries an `X-Request-Id` (`c<client>-<n>`). A request that fails
//! (connection refused or reset, no answer) is sent again with the same cookie and the
//! same id to the same address, the VIP: the balancer, not the client, decides where it
//! goes, and the app server applies a request id once, so a retry of an update that the
//! dead primary had already replicated is answered without a second increment. Retries
//! are bounded ([`LoadOptions::give_up_after`]).
//!
//! Everything the clients see is logged ([`ClientLog`]); [`check_sessions`] and
//! [`failover_time`] turn the logs into verdicts and figures.
//!
//! [`measure_failover`] is one whole failover run on a fresh topology (the benchmark's
//! measurement, the same steps as the test); [`measure_failover_with`] runs the same
//! measurement with HAProxy in front instead ([`Front::Haproxy`]: same clients, same app
//! servers, same health-check settings).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs::File,
    net::SocketAddr,
    os::fd::AsRawFd,
    path::Path,
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use balancer_user::daemon::config::HealthConfig;

use crate::{
    daemon::{daemon_section, service_section, ConfigOptions, Daemon},
    haproxy::{Haproxy, HaproxyConfig},
    http::{self, Conn},
    netns::Netns,
    session::SessionCookie,
    topology::{vip, Arms, Topology},
};

/// How the clients behave.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub clients: usize,
    /// Pause after each answered request (zero: a tight loop).
    pub think: Duration,
    /// Pause between two attempts of a failed request.
    pub retry_pause: Duration,
    /// An attempt not answered within this time (connect, send, or read the response) is
    /// abandoned and retried with the same request id.
    pub attempt_timeout: Duration,
    /// A request still failing this long after its first attempt is given up (the
    /// client stops, and the checks report it).
    pub give_up_after: Duration,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            clients: 50,
            think: Duration::ZERO,
            retry_pause: Duration::from_millis(10),
            attempt_timeout: Duration::from_secs(1),
            give_up_after: Duration::from_secs(10),
        }
    }
}

/// One answered request (any status).
#[derive(Clone, Debug)]
pub struct Answered {
    /// The client's request number, from 1.
    pub seq: u64,
    pub request_id: String,
    /// When the answer had been read.
    pub at: Instant,
    /// Attempts it took (1: the first connection was answered).
    pub attempts: u32,
    /// The session cookie sent (`None`: the first request, which creates the session).
    pub sent: Option<SessionCookie>,
    pub status: u16,
    /// `X-Backend`: the app server that answered.
    pub backend: String,
    pub counter: Option<u64>,
    /// `new`, `continued`, `takeover` or `lost` (empty if the body had none).
    pub event: String,
    /// The server had already applied this request id and answered it again.
    pub replayed: bool,
    /// `X-Session-Lost` was set.
    pub lost: bool,
    /// The cookie the answer set.
    pub cookie: Option<SessionCookie>,
}

/// Everything one client saw.
#[derive(Clone, Debug, Default)]
pub struct ClientLog {
    pub client: usize,
    pub answers: Vec<Answered>,
    /// Attempts that failed and were retried.
    pub failed_attempts: u64,
    /// Of those, attempts abandoned after [`LoadOptions::attempt_timeout`].
    pub timed_out_attempts: u64,
    /// The first few failures, for reports.
    pub failures: Vec<String>,
    /// The latest failure after those.
    pub last_failure: Option<String>,
    /// Why the client stopped before the load was stopped: a request given up, or an
    /// answer it cannot continue from (not 200, no cookie or counter).
    pub aborted: Option<String>,
    /// The load was aborted (dropped) while a request was being retried: it was not
    /// answered.
    pub interrupted: bool,
}

impl ClientLog {
    /// The last answer read before `t`.
    pub fn last_before(&self, t: Instant) -> Option<&Answered> {
        self.answers.iter().rev().find(|a| a.at < t)
    }

    /// The session id (from the first answer's cookie).
    pub fn session(&self) -> Option<&str> {
        self.answers
            .first()
            .and_then(|a| a.cookie.as_ref())
            .map(|c| c.session.as_str())
    }
}

/// The latest state of a client's session, readable while the load runs.
#[derive(Clone, Debug)]
pub struct Live {
    pub cookie: SessionCookie,
    pub counter: u64,
    /// The server that answered last.
    pub backend: String,
    pub event: String,
    pub at: Instant,
    /// Answers with event `takeover` so far.
    pub takeovers: u32,
}

/// What the clients are told: run, stop (no new request; the one in flight is finished,
/// retries included), abort (no new attempt either).
const RUN: u8 = 0;
const STOP: u8 = 1;
const ABORT: u8 = 2;

/// Running clients; stopping (or dropping, which aborts) ends them and joins their
/// threads.
pub struct Load {
    state: Arc<AtomicU8>,
    live: Arc<Mutex<Vec<Option<Live>>>>,
    answered: Arc<AtomicU64>,
    workers: Vec<JoinHandle<ClientLog>>,
}

impl Load {
    /// Starts `opts.clients` clients on threads that enter namespace `ns`, all sending
    /// to `target`.
    pub fn start(ns: &Netns, target: SocketAddr, opts: &LoadOptions) -> Result<Load> {
        let state = Arc::new(AtomicU8::new(RUN));
        let live = Arc::new(Mutex::new(vec![None; opts.clients]));
        let answered = Arc::new(AtomicU64::new(0));
        let mut load = Load {
            state: state.clone(),
            live: live.clone(),
            answered: answered.clone(),
            workers: Vec::new(),
        };
        for i in 0..opts.clients {
            // Opened here, so that a missing namespace fails the start rather than a
            // client.
            let file = File::open(ns.path()).with_context(|| format!("opening {}", ns.path()))?;
            let (state, live, answered, opts) =
                (state.clone(), live.clone(), answered.clone(), opts.clone());
            let worker = thread::Builder::new()
                .name(format!("load-c{i}"))
                .spawn(move || {
                    // SAFETY: setns on a valid namespace fd; it affects this thread only.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return ClientLog {
                            client: i,
                            aborted: Some(format!("setns: {}", std::io::Error::last_os_error())),
                            ..ClientLog::default()
                        };
                    }
                    drop(file);
                    run_client(i, target, &opts, &state, &live, &answered)
                })
                .context("starting a load client")?;
            load.workers.push(worker);
        }
        Ok(load)
    }

    /// The latest session state of every client (`None`: no answer yet).
    pub fn live(&self) -> Vec<Option<Live>> {
        self.live.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Requests answered so far, all clients.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Stops the clients (each finishes its request in flight, retrying it if need be,
    /// up to [`LoadOptions::give_up_after`]) and returns their logs, indexed by client.
    pub fn stop(mut self) -> Vec<ClientLog> {
        self.end(STOP)
    }

    /// Ends the clients at once: a request being retried is abandoned (Ctrl-C).
    pub fn abort(mut self) -> Vec<ClientLog> {
        self.end(ABORT)
    }

    fn end(&mut self, how: u8) -> Vec<ClientLog> {
        self.state.fetch_max(how, Ordering::SeqCst);
        std::mem::take(&mut self.workers)
            .into_iter()
            .enumerate()
            .map(|(i, w)| {
                w.join().unwrap_or_else(|_| ClientLog {
                    client: i,
                    aborted: Some("the client thread panicked".into()),
                    ..ClientLog::default()
                })
            })
            .collect()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.end(ABORT);
    }
}

fn run_client(
    client: usize,
    target: SocketAddr,
    opts: &LoadOptions,
    state: &AtomicU8,
    live: &Mutex<Vec<Option<Live>>>,
    answered: &AtomicU64,
) -> ClientLog {
    let mut log = ClientLog {
        client,
        ..ClientLog::default()
    };
    let mut cookie: Option<SessionCookie> = None;
    let mut takeovers = 0;
    let load_started = Instant::now();
    for seq in 1.. {
        if state.load(Ordering::SeqCst) != RUN {
            break;
        }
        let id = format!("c{client}-{seq}");
        let first = Instant::now();
        let mut attempts = 0;
        let answer = loop {
            attempts += 1;
            match request(target, cookie.as_ref(), &id, opts.attempt_timeout) {
                Ok(a) => break Some(a),
                Err(e) => {
                    log.failed_attempts += 1;
                    log.timed_out_attempts += u64::from(is_timeout(&e));
                    let line = format!(
                        "{id} attempt {attempts}, {:.3} s into the request, {:.3} s into the load: {e:#}",
                        first.elapsed().as_secs_f64(),
                        load_started.elapsed().as_secs_f64()
                    );
                    if log.failures.len() < 5 {
                        log.failures.push(line);
                    } else {
                        log.last_failure = Some(line);
                    }
                    if state.load(Ordering::SeqCst) == ABORT {
                        log.interrupted = true;
                        break None;
                    }
                    if first.elapsed() >= opts.give_up_after {
                        log.aborted = Some(format!(
                            "{id}: given up after {attempts} attempts in {:?}: {e:#}",
                            first.elapsed()
                        ));
                        break None;
                    }
                    thread::sleep(opts.retry_pause);
                }
            }
        };
        let Some(mut a) = answer else { break };
        answered.fetch_add(1, Ordering::Relaxed);
        a.seq = seq;
        a.attempts = attempts;
        a.sent = cookie.clone();
        let usable = a.status == 200 && a.counter.is_some() && a.cookie.is_some();
        if !usable {
            log.aborted = Some(format!(
                "{id}: status {} from {:?}, counter {:?}, cookie {:?}",
                a.status, a.backend, a.counter, a.cookie
            ));
            log.answers.push(a);
            break;
        }
        takeovers += u32::from(a.event == "takeover");
        let next = a.cookie.clone().expect("checked above");
        if let Ok(mut l) = live.lock() {
            l[client] = Some(Live {
                cookie: next.clone(),
                counter: a.counter.unwrap_or_default(),
                backend: a.backend.clone(),
                event: a.event.clone(),
                at: a.at,
                takeovers,
            });
        }
        cookie = Some(next);
        log.answers.push(a);
        if !opts.think.is_zero() {
            thread::sleep(opts.think);
        }
    }
    log
}

/// `GET /session` on a new connection with the cookie and request id; any HTTP answer is
/// `Ok` (its status and body are in the result), transport failures are errors.
fn request(
    target: SocketAddr,
    cookie: Option<&SessionCookie>,
    id: &str,
    timeout: Duration,
) -> Result<Answered> {
    let cookie_header = cookie.map(|c| format!("JSESSIONID={c}"));
    let mut headers = vec![("Connection", "close"), ("X-Request-Id", id)];
    headers.extend(cookie_header.as_deref().map(|c| ("Cookie", c)));
    let mut conn = Conn::connect_timeout(target, timeout)?;
    conn.stream().set_read_timeout(Some(timeout))?;
    conn.stream().set_write_timeout(Some(timeout))?;
    let local = conn.local_addr()?;
    let r = conn
        .request("GET", "/session", &headers, &[])
        .with_context(|| format!("from {local}"))?;
    let at = Instant::now();
    // Every app server answer names its server: a 502/503/504 without one was made by a
    // proxy in front (HAProxy could not reach the server), which is the same failure as
    // a refused or reset connection through our balancer, and is retried the same way.
    if matches!(r.status, 502..=504) && r.header("x-backend").is_none() {
        bail!(
            "from {local}: status {} from the proxy, not from an app server",
            r.status
        );
    }
    let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    let cookie = r
        .header("set-cookie")
        .and_then(|v| v.split(';').next())
        .and_then(|v| v.trim().strip_prefix("JSESSIONID="))
        .and_then(SessionCookie::parse);
    Ok(Answered {
        seq: 0,
        request_id: id.to_string(),
        at,
        attempts: 0,
        sent: None,
        status: r.status,
        backend: r.header("x-backend").unwrap_or_default().to_string(),
        counter: body["counter"].as_u64(),
        event: body["event"].as_str().unwrap_or_default().to_string(),
        replayed: body["replayed"].as_bool().unwrap_or(false),
        lost: r.header("x-session-lost").is_some(),
        cookie,
    })
}

/// Whether an attempt failed by running out of time (rather than being refused or reset).
fn is_timeout(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        })
    })
}

/// Every way the logs break "each session counts 1, 2, 3, ... on one session id, with no
/// gap, no repeat and no loss": one line per problem (empty: none).
pub fn check_sessions(logs: &[ClientLog]) -> Vec<String> {
    let mut problems = Vec::new();
    for log in logs {
        let c = log.client;
        if let Some(why) = &log.aborted {
            problems.push(format!("client {c}: stopped early: {why}"));
        }
        if log.interrupted {
            problems.push(format!(
                "client {c}: a request was still failing when the load was aborted ({} failed attempts; first: {:?}, last: {:?})",
                log.failed_attempts,
                log.failures.first(),
                log.last_failure.as_ref().or(log.failures.last())
            ));
        }
        let Some(session) = log.session() else {
            problems.push(format!("client {c}: no session"));
            continue;
        };
        let mut expected = 1;
        for a in &log.answers {
            let what = format!("client {c} ({}) from {}", a.request_id, a.backend);
            if a.status != 200 {
                problems.push(format!("{what}: status {}", a.status));
                continue;
            }
            if a.lost {
                problems.push(format!("{what}: X-Session-Lost"));
            }
            let got = a.cookie.as_ref().map(|k| k.session.as_str());
            if got != Some(session) {
                problems.push(format!("{what}: session {got:?} instead of {session}"));
            }
            match a.counter {
                Some(n) if n == expected => {}
                Some(n) => problems.push(format!(
                    "{what}: counter {n}, expected {expected} ({})",
                    if n < expected { "repeated" } else { "gap" }
                )),
                None => problems.push(format!("{what}: no counter")),
            }
            expected = a.counter.unwrap_or(expected) + 1;
            if a.cookie.as_ref().is_some_and(|k| k.primary != a.backend) {
                problems.push(format!(
                    "{what}: the cookie names {} as primary",
                    a.cookie.as_ref().map_or("", |k| k.primary.as_str())
                ));
            }
        }
    }
    problems
}

/// Sessions per primary at `t` (the primary named by each client's last cookie before
/// `t`).
pub fn primaries_at(logs: &[ClientLog], t: Instant) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for log in logs {
        if let Some(k) = log.last_before(t).and_then(|a| a.cookie.as_ref()) {
            *m.entry(k.primary.clone()).or_default() += 1;
        }
    }
    m
}

/// The primary of the most sessions in a live view, and the secondary most of its
/// sessions' cookies name.
pub fn busiest_primary(live: &[Option<Live>]) -> Option<(String, Option<String>)> {
    let mut primaries: BTreeMap<&str, usize> = BTreeMap::new();
    for l in live.iter().flatten() {
        *primaries.entry(l.cookie.primary.as_str()).or_default() += 1;
    }
    let (victim, _) = primaries.iter().max_by_key(|(p, n)| (**n, *p))?;
    let mut secondaries: BTreeMap<&str, usize> = BTreeMap::new();
    for l in live.iter().flatten() {
        if l.cookie.primary == *victim {
            if let Some(s) = &l.cookie.secondary {
                *secondaries.entry(s.as_str()).or_default() += 1;
            }
        }
    }
    let secondary = secondaries
        .iter()
        .max_by_key(|(s, n)| (**n, *s))
        .map(|(s, _)| s.to_string());
    Some((victim.to_string(), secondary))
}

/// The clients whose session `victim` held as primary at `kill` (their last cookie
/// before it names `victim`).
pub fn sessions_of<'a>(logs: &'a [ClientLog], victim: &str, kill: Instant) -> Vec<&'a ClientLog> {
    logs.iter()
        .filter(|l| {
            l.last_before(kill)
                .and_then(|a| a.cookie.as_ref())
                .is_some_and(|k| k.primary == victim)
        })
        .collect()
}

/// Failover time: from `kill` to the first answer, to any session of `victim`, from
/// the secondary its cookie named (with the secondary's own name in `X-Backend`).
pub fn failover_time(logs: &[ClientLog], victim: &str, kill: Instant) -> Option<Duration> {
    logs.iter()
        .flat_map(|l| &l.answers)
        .filter(|a| a.at >= kill && a.status == 200)
        .filter(|a| {
            a.sent.as_ref().is_some_and(|k| {
                k.primary == victim && k.secondary.as_deref() == Some(a.backend.as_str())
            })
        })
        .map(|a| a.at - kill)
        .min()
}

/// What the clients did after `kill` on the sessions of `victim`: per session, the
/// problems with "served by the secondary its cookie named, taken over exactly once,
/// nothing from another server" (empty: none).
pub fn check_takeovers(logs: &[ClientLog], victim: &str, kill: Instant) -> Vec<String> {
    let mut problems = Vec::new();
    for log in sessions_of(logs, victim, kill) {
        let c = log.client;
        let Some(secondary) = log
            .last_before(kill)
            .and_then(|a| a.cookie.as_ref())
            .and_then(|k| k.secondary.clone())
        else {
            problems.push(format!(
                "client {c}: its cookie at the kill named no secondary"
            ));
            continue;
        };
        let after: Vec<&Answered> = log
            .answers
            .iter()
            .filter(|a| a.at >= kill && a.backend != victim)
            .collect();
        if after.is_empty() {
            problems.push(format!("client {c}: no answer after the kill"));
            continue;
        }
        let takeovers = after.iter().filter(|a| a.event == "takeover").count();
        if takeovers != 1 {
            problems.push(format!(
                "client {c}: {takeovers} takeovers after the kill, expected 1"
            ));
        }
        if after[0].event != "takeover" {
            problems.push(format!(
                "client {c}: first answer after the kill is {} from {}, expected takeover",
                after[0].event, after[0].backend
            ));
        }
        for a in &after {
            if a.backend != secondary {
                problems.push(format!(
                    "client {c} ({}): served by {} after the kill, expected {victim}'s secondary {secondary}",
                    a.request_id, a.backend
                ));
            }
        }
    }
    problems
}

/// Totals over all clients.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub answered: usize,
    /// Failed attempts (retried).
    pub failed: u64,
    /// Failed attempts that timed out.
    pub timed_out: u64,
}

pub fn totals(logs: &[ClientLog]) -> Totals {
    Totals {
        answered: logs.iter().map(|l| l.answers.len()).sum(),
        failed: logs.iter().map(|l| l.failed_attempts).sum(),
        timed_out: logs.iter().map(|l| l.timed_out_attempts).sum(),
    }
}

/// The time of a daemon log line: its leading RFC 3339 UTC timestamp
/// (`2026-11-22T12:48:10.306142Z`), after any terminal colour codes.
pub fn log_line_time(line: &str) -> Option<SystemTime> {
    let line = strip_ansi(line);
    let ts = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<u64>().ok()?,
        t.next()?.parse::<u64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let secs = days * 86_400 + h * 3600 + min * 60;
    Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_secs_f64(sec))
}

/// `s` without ANSI escape sequences (the daemon's log has colours).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-byte.
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// What the daemon logged about a failed backend `endpoint` after `since` (wall clock):
/// when it noted the health change, and when it wrote the failover rewrite.
#[derive(Clone, Copy, Debug, Default)]
pub struct DaemonTimes {
    pub down: Option<SystemTime>,
    pub rewrite: Option<SystemTime>,
}

pub fn daemon_times(log: &str, endpoint: &str, since: SystemTime) -> DaemonTimes {
    let mut out = DaemonTimes::default();
    for line in log.lines() {
        let plain = strip_ansi(line);
        let Some(at) = log_line_time(&plain).filter(|t| *t >= since) else {
            continue;
        };
        if out.down.is_none()
            && plain.contains("health up -> down")
            && plain.contains(&format!("backend={endpoint}"))
        {
            out.down = Some(at);
        }
        if out.rewrite.is_none() && plain.contains(&format!("failover rewrite {endpoint} ->")) {
            out.rewrite = Some(at);
        }
    }
    out
}

/// `GET /metrics` of the daemon in `t`'s gateway (default address 127.0.0.1:9469).
pub fn metrics(t: &Topology) -> Result<String> {
    let addr: SocketAddr = "127.0.0.1:9469".parse().expect("an address");
    let r = t.gateway.run(move || http::get(addr, "/metrics"))??;
    anyhow::ensure!(
        r.status == 200,
        "GET /metrics: status {}: {}",
        r.status,
        r.text()
    );
    Ok(r.text())
}

/// The value of the first metric line starting with `line_prefix` (e.g.
/// `balancer_failover_rewrites_total`).
pub fn metric_value(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_prefix) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A daemon configuration for `t` that leaves everything it can to the daemon's
/// defaults: its instance and interfaces, the cookie service at the VIP with every
/// backend (server id = backend name), and `health` (TOML lines) as the `[health]`
/// section when given.
pub fn minimal_config(t: &Topology, health: Option<&str>) -> String {
    let mut s = daemon_section(t, "");
    if let Some(h) = health {
        let _ = writeln!(s, "[health]\n{}\n", h.trim_end());
    }
    s.push_str(&service_section(t, &ConfigOptions::default()));
    s
}

/// Waits until the daemon knows `primary`'s secondary is `secondary` (`balancer pairs`);
/// returns that row of `balancer pairs`.
pub fn wait_pair(d: &Daemon, primary: &str, secondary: &str, timeout: Duration) -> Result<Value> {
    d.wait_for(
        &format!("the pair {primary} -> {secondary}"),
        timeout,
        || {
            let pairs = d.ctl_json(&["pairs"])?;
            Ok(pairs
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["primary"] == primary && p["secondary"] == secondary)
                .cloned())
        },
    )
}

/// Waits until `n` backends report health `up` in `backend list`.
pub fn wait_healthy(d: &Daemon, n: usize, timeout: Duration) -> Result<()> {
    d.wait_for("backends healthy", timeout, || {
        let up = d
            .backends()?
            .iter()
            .filter(|b| b["health"]["health"] == "up")
            .count();
        Ok((up >= n).then_some(()))
    })
}

/// Settings of one [`measure_failover`] run.
#[derive(Clone, Debug)]
pub struct FailoverOptions {
    pub load: LoadOptions,
    /// Load before the kill (plus up to `jitter`, so that the kill falls at any point of
    /// the health checks' cycle).
    pub before: Duration,
    pub jitter: Duration,
    /// Load after the first request served by the secondary.
    pub after: Duration,
    /// Longest wait for that first request.
    pub deadline: Duration,
}

impl Default for FailoverOptions {
    fn default() -> Self {
        FailoverOptions {
            load: LoadOptions::default(),
            before: Duration::from_millis(1500),
            jitter: Duration::from_secs(1),
            after: Duration::from_millis(500),
            deadline: Duration::from_secs(15),
        }
    }
}

/// The outcome of one [`measure_failover`] run.
#[derive(Clone, Debug)]
pub struct FailoverRun {
    pub victim: String,
    pub secondary: String,
    /// Kill -> first request of one of the victim's sessions served by its secondary.
    pub failover: Duration,
    /// Kill -> the daemon noted the victim down / wrote the rewrite (from its log). With
    /// HAProxy: `down` = kill -> HAProxy reported the server DOWN on stderr (time the line
    /// was read); `rewrite` is `None` (HAProxy has none: its `use-server` rule on the
    /// cookie's secondary applies once the primary is down).
    pub down: Option<Duration>,
    pub rewrite: Option<Duration>,
    /// What was in front: `balancer daemon` or `haproxy`.
    pub front: String,
    /// Its configuration file, as run.
    pub front_config: String,
    /// Sessions the victim held at the kill.
    pub victim_sessions: usize,
    pub totals: Totals,
    /// Continuity and takeover problems (see [`check_sessions`], [`check_takeovers`]).
    pub problems: Vec<String>,
}

/// Which balancer [`measure_failover_with`] puts in front of the app servers.
pub enum Front<'a> {
    /// `balancer daemon` (in the gateway namespace) with the configuration this returns
    /// for the topology.
    Daemon {
        config: &'a dyn Fn(&Topology) -> String,
    },
    /// HAProxy in the gateway namespace, listening on the VIP, configured by
    /// [`haproxy_failover_config`] with these health-check settings (those of the daemon's
    /// `[health]` section: kind, interval, timeout, rise, fall).
    Haproxy { health: HealthConfig },
}

/// The HAProxy configuration of a [`Front::Haproxy`] failover run on `t`: cookie routing
/// on the primary then the secondary segment ([`crate::haproxy`]), health checks as
/// `health`, `timeout connect` = the check timeout (the daemon's checks connect within it
/// too), and `retries 0`: a request HAProxy cannot connect to the dead server for is
/// answered 503 at once, and the client retries it as it retries a connection our
/// balancer's path refused (HAProxy's default `retries 3` would first hold the request
/// for up to three turn-around delays of min(timeout connect, 1 s) on the same dead
/// server, adding to its failover time).
pub fn haproxy_failover_config(t: &Topology, health: &HealthConfig) -> HaproxyConfig {
    let mut c = HaproxyConfig::new(
        vip(),
        t.backends
            .iter()
            .map(|b| (b.name.clone(), b.socket_addr()))
            .collect(),
    );
    c.health = health.clone();
    c.connect_timeout = health.timeout;
    c.retries = Some(0);
    c
}

/// One failover measurement on a fresh two-arm topology with three replicated app
/// servers: the daemon runs `config(&topology)`; the clients load their sessions for
/// `before` (+ jitter); the app server of the busiest primary is killed (SIGKILL); the
/// run waits for the first request of one of its sessions served by its secondary, lets
/// the load run `after` more, and checks every session.
pub fn measure_failover(
    balancer: &Path,
    testsrv: &Path,
    config: &dyn Fn(&Topology) -> String,
    o: &FailoverOptions,
) -> Result<FailoverRun> {
    measure_failover_with(&Front::Daemon { config }, balancer, testsrv, o)
}

/// The running front of a failover run.
enum Running {
    Daemon(Daemon),
    Haproxy(Box<Haproxy>),
}

impl Running {
    fn log(&self) -> String {
        match self {
            Running::Daemon(d) => d.log(),
            Running::Haproxy(h) => h.log_text(),
        }
    }
}

/// [`measure_failover`] with `front` in front of the app servers: the same topology,
/// clients, kill and checks. With HAProxy there is no pair to learn (it routes on the
/// cookie's secondary segment directly), so that wait is skipped; the run starts once
/// a request through the VIP is answered.
pub fn measure_failover_with(
    front: &Front,
    balancer: &Path,
    testsrv: &Path,
    o: &FailoverOptions,
) -> Result<FailoverRun> {
    let mut t = Topology::build(Arms::Two, 3, balancer.to_path_buf())?;
    t.start_session_servers(testsrv)?;
    let (running, front_name, front_config) = match front {
        Front::Daemon { config } => {
            let text = config(&t);
            let d = Daemon::start(&mut t, &text)?;
            wait_healthy(&d, t.backends.len(), Duration::from_secs(10))?;
            (Running::Daemon(d), "balancer daemon", text)
        }
        Front::Haproxy { health } => {
            let h = Haproxy::start(&t.gateway, &haproxy_failover_config(&t, health))?;
            let text = h.text.clone();
            let target = vip();
            t.client
                .run(move || http::get(target, "/"))?
                .context("a first request through HAProxy")?;
            (Running::Haproxy(Box::new(h)), "haproxy", text)
        }
    };
    let load = Load::start(&t.client, vip(), &o.load)?;
    thread::sleep(o.before + jitter(o.jitter));
    let Some((victim, Some(secondary))) = busiest_primary(&load.live()) else {
        bail!(
            "no session with a secondary after {:?} of load: {:?}",
            o.before,
            load.live().iter().flatten().next()
        );
    };
    if let Running::Daemon(d) = &running {
        wait_pair(d, &victim, &secondary, Duration::from_secs(10))?;
    }
    let vi = t
        .backend_index(&victim)
        .with_context(|| format!("no backend {victim}"))?;
    let victim_ep = t.backends[vi].endpoint();
    let (kill, kill_wall) = (Instant::now(), SystemTime::now());
    t.stop_server(vi)?;
    let served = loop {
        let live = load.live();
        let first = live
            .iter()
            .flatten()
            .filter(|l| l.takeovers > 0 && l.backend == secondary)
            .map(|l| l.at)
            .min();
        if let Some(at) = first {
            break at;
        }
        if kill.elapsed() > o.deadline {
            bail!(
                "no session of {victim} served by {secondary} within {:?} of the kill; {front_name} log:\n{}",
                o.deadline,
                running.log()
            );
        }
        thread::sleep(Duration::from_millis(5));
    };
    thread::sleep(o.after.saturating_sub(served.elapsed()));
    let logs = load.stop();
    let failover = failover_time(&logs, &victim, kill).context("no failover in the logs")?;
    let mut problems = check_sessions(&logs);
    problems.extend(check_takeovers(&logs, &victim, kill));
    let (down, rewrite) = match &running {
        Running::Daemon(d) => {
            let times = daemon_times(&d.log(), &victim_ep, kill_wall);
            let since_kill =
                |t: Option<SystemTime>| t.and_then(|t| t.duration_since(kill_wall).ok());
            (since_kill(times.down), since_kill(times.rewrite))
        }
        Running::Haproxy(h) => (h.server_down_at(&victim, kill).map(|t| t - kill), None),
    };
    Ok(FailoverRun {
        victim_sessions: sessions_of(&logs, &victim, kill).len(),
        victim,
        secondary,
        failover,
        down,
        rewrite,
        front: front_name.to_string(),
        front_config,
        totals: totals(&logs),
        problems,
    })
}

/// A pseudo-random duration in `[0, max)` from the clock's nanoseconds (spreads kills over
/// the health checks' cycle; need not be a good random number).
fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return max;
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let mixed = nanos.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11;
    Duration::from_nanos(mixed % max.as_nanos().max(1) as u64)
}

//! `balancer-testsrv`: the reference HTTP/1.1 backend of the test bed.
//!
//! Every response names the server (`NAME\n` body and an `X-Backend: NAME` header), so a
//! client sees which backend served it. Routes:
//! - `GET /bytes/N`: N bytes of the deterministic pattern of `balancer_tests::http`
//!   (download tests);
//! - `GET /slow/MS`: waits MS milliseconds, then answers `NAME\n` (holds a request open);
//! - `GET /health`: `ok\n` (the balancer daemon's HTTP health check);
//! - anything else: `NAME\n`. A request body (Content-Length) is read and reported in
//!   `X-Body-Len` and `X-Body-Fnv` (64-bit FNV-1a, hex) (upload tests).
//!
//! A connection whose first byte is not an ASCII letter (a TLS ClientHello, ...) is not
//! HTTP: the server writes `NAME\n` and then echoes every byte it receives until the
//! client closes (tests of non-HTTP traffic see which backend got the bytes, and the
//! bytes themselves).
//!
//! Connections are kept alive (HTTP/1.1 default) unless the client sends
//! `Connection: close` (or speaks HTTP/1.0 without `Connection: keep-alive`).
//! One thread per connection; request parsing ([`read_request`]) and routing ([`route`])
//! are separate so that features such as sessions extend `route` and [`State`] only.
//!
//! **Session mode** (`--server-id ID --peer ID=IP:PORT ...`): a replicated app server, as
//! the balancer's cookie mode expects (the rules are in `balancer_tests::session`):
//! - `GET` or `POST /session` (or any path under `/session/`): increments the counter of
//!   the session named by the `JSESSIONID` cookie (a new session without one), copies the
//!   new state to a secondary peer and only then answers `200` with
//!   `{"server","session","counter","secondary","event","replayed"}` (`secondary` null
//!   when no peer took the copy; `event` new, continued, takeover or lost) and
//!   `Set-Cookie: JSESSIONID=<session>!<ID>!<secondary or NONE>; Path=/`. The cookie
//!   names this server as primary: after a takeover it is re-issued. A session that
//!   cannot be continued here is replaced by a new one with `X-Session-Lost: 1`; one that
//!   another server took over is answered `409` with `X-Session-Owner`. A request that
//!   repeats the session's last `X-Request-Id` is answered again without incrementing.
//! - `POST /_replicate`: a peer's session state (JSON [`Replica`]); `200` stored or
//!   already current, `409` (with `X-Session-Owner`) from a stale primary.
//! - `GET /_sessions`: counters (sessions held as primary and as replica, takeovers,
//!   lost, replications...); `GET /_sessions/SESSION`: what this server holds of one.
//!
//! Replication uses pooled keep-alive connections to the peers with a short timeout
//! (`--replicate-timeout-ms`); no lock is held while a replica is on the wire, so two
//! servers that are each other's secondary cannot deadlock.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, BufWriter, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use balancer_tests::{
    http::{connection_has, fill_pattern, find_header, read_headers, read_line, Conn, Fnv64},
    session::{
        check_server_id, check_token, new_session_id, Begin, Event, Peer, Peers, Received, Replica,
        SecondaryChoice, SessionCookie, Stats, Store, Update, DEFAULT_COOKIE_NAME, FAIL_COOLDOWN,
    },
};
use clap::Parser;
use serde::Serialize;

/// Idle connections are closed after this long without a request.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Request bodies up to this size are kept in memory (for routes that need the content);
/// longer ones are only counted and digested.
const KEEP_BODY: u64 = 64 * 1024;
/// Largest `/slow/MS` wait.
const MAX_SLOW_MS: u64 = 600_000;
/// Idle replication connections kept per peer.
const MAX_POOLED: usize = 16;

#[derive(Parser)]
#[command(
    name = "balancer-testsrv",
    about = "Reference HTTP/1.1 backend for balancer tests"
)]
struct Args {
    /// Address to listen on, IP:PORT.
    #[arg(long)]
    listen: SocketAddr,
    /// Name this server answers with (body and `X-Backend`); defaults to --server-id.
    #[arg(long, required_unless_present = "server_id")]
    name: Option<String>,
    /// Session mode: the server id this server writes into session cookies (the token
    /// given to `balancer backend add --server-id`).
    #[arg(long, value_parser = parse_server_id)]
    server_id: Option<String>,
    /// Session mode: another app server that can hold replicas (repeat for each).
    #[arg(long = "peer", value_name = "ID=IP:PORT", requires = "server_id")]
    peers: Vec<Peer>,
    /// Session mode: name of the session cookie.
    #[arg(long, default_value = DEFAULT_COOKIE_NAME, value_parser = parse_cookie_name)]
    cookie_name: String,
    /// Session mode: what picks a session's secondary (`partner`: one peer for all of
    /// this server's sessions, as the balancer's per-backend failover expects;
    /// `session`: spread by session id).
    #[arg(long, value_enum, default_value_t = SecondaryChoice::Partner)]
    secondary_choice: SecondaryChoice,
    /// Session mode: how long a peer has to connect and acknowledge a replica.
    #[arg(long, default_value_t = 300, value_name = "MS")]
    replicate_timeout_ms: u64,
}

fn parse_server_id(s: &str) -> Result<String, String> {
    check_server_id(s).map(|()| s.to_string())
}

/// A cookie name: 1-31 HTTP token characters (as the balancer's `--cookie-name`).
fn parse_cookie_name(s: &str) -> Result<String, String> {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if (1..=31).contains(&s.len()) && s.chars().all(tchar) {
        Ok(s.to_string())
    } else {
        Err(format!("cookie name {s:?}: 1-31 token characters"))
    }
}

/// Shared by all connections of the server.
struct State {
    name: String,
    requests: AtomicU64,
    /// Present in session mode.
    sessions: Option<Sessions>,
}

/// A parsed request head plus what was read of its body.
struct Request {
    method: String,
    path: String,
    /// HTTP/1.1 or later (keep-alive by default).
    http11: bool,
    headers: Vec<(String, String)>,
    body: Body,
}

#[derive(Default)]
struct Body {
    len: u64,
    fnv: Fnv64,
    /// The body itself when it is at most `KEEP_BODY` bytes.
    data: Option<Vec<u8>>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    fn keep_alive(&self) -> bool {
        if connection_has(&self.headers, "close") {
            false
        } else {
            self.http11 || connection_has(&self.headers, "keep-alive")
        }
    }
}

enum ResponseBody {
    Bytes(Vec<u8>),
    /// `n` bytes of the download pattern, generated while sending.
    Pattern(u64),
}

impl ResponseBody {
    fn len(&self) -> u64 {
        match self {
            ResponseBody::Bytes(b) => b.len() as u64,
            ResponseBody::Pattern(n) => *n,
        }
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: ResponseBody,
}

impl Response {
    fn new(status: u16, body: ResponseBody) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body,
        }
    }

    fn text(status: u16, text: impl Into<String>) -> Self {
        let mut r = Response::new(status, ResponseBody::Bytes(text.into().into_bytes()));
        r.headers.push(("Content-Type".into(), "text/plain".into()));
        r
    }

    fn json(status: u16, value: &impl Serialize) -> Self {
        let body = serde_json::to_vec(value).expect("serialising to JSON cannot fail");
        let mut r = Response::new(status, ResponseBody::Bytes(body));
        r.headers
            .push(("Content-Type".into(), "application/json".into()));
        r
    }

    fn header(mut self, name: &str, value: impl ToString) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// Why a connection stops before a full request was read.
enum ReadError {
    /// The peer closed (or went idle) between requests: not an error.
    Closed,
    /// Unparseable request: answer 400 and close.
    Bad(String),
    /// A request we do not implement: answer with this status and close.
    Unsupported(u16, String),
    Io(std::io::Error),
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::InvalidData => ReadError::Bad(e.to_string()),
            _ => ReadError::Io(e),
        }
    }
}

/// Reads one request (head and body) from the connection.
fn read_request<R: BufRead>(r: &mut R) -> Result<Request, ReadError> {
    let line = match read_line(r) {
        Ok(Some(l)) => l,
        Ok(None) => return Err(ReadError::Closed),
        Err(e) if is_timeout_or_reset(&e) => return Err(ReadError::Closed),
        Err(e) => return Err(e.into()),
    };
    let mut parts = line.split(' ');
    let (method, path, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(p), Some(v), None) if !m.is_empty() && p.starts_with('/') => (m, p, v),
        _ => return Err(ReadError::Bad(format!("bad request line {line:?}"))),
    };
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => {
            return Err(ReadError::Unsupported(
                505,
                format!("unsupported version {version:?}"),
            ))
        }
    };
    let headers = read_headers(r)?;
    let mut req = Request {
        method: method.to_string(),
        path: path.to_string(),
        http11,
        headers,
        body: Body::default(),
    };
    if req.header("transfer-encoding").is_some() {
        return Err(ReadError::Unsupported(
            501,
            "Transfer-Encoding request bodies are not supported; send Content-Length".into(),
        ));
    }
    if let Some(len) = req.header("content-length") {
        let len: u64 = len
            .parse()
            .map_err(|_| ReadError::Bad(format!("bad Content-Length {len:?}")))?;
        req.body = read_body(r, len)?;
    }
    Ok(req)
}

/// Reads exactly `len` body bytes, digesting them as they come.
fn read_body<R: Read>(r: &mut R, len: u64) -> Result<Body, ReadError> {
    let mut body = Body {
        data: (len <= KEEP_BODY).then(|| Vec::with_capacity(len as usize)),
        ..Body::default()
    };
    let mut buf = vec![0u8; 64 * 1024];
    while body.len < len {
        let want = (len - body.len).min(buf.len() as u64) as usize;
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(ReadError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("body ended after {} of {len} bytes", body.len),
            )));
        }
        body.fnv.update(&buf[..n]);
        if let Some(d) = body.data.as_mut() {
            d.extend_from_slice(&buf[..n]);
        }
        body.len += n as u64;
    }
    Ok(body)
}

/// Decides the response to a request.
fn route(state: &State, req: &Request) -> Response {
    let path = req.path.split('?').next().unwrap_or_default();
    let mut segments = path.trim_start_matches('/').splitn(2, '/');
    let (top, rest) = (segments.next(), segments.next());
    let response = state
        .sessions
        .as_ref()
        .and_then(|s| s.route(req, top, rest))
        .unwrap_or_else(|| plain_route(state, &req.method, top, rest));
    let mut response = response.header("X-Backend", &state.name);
    if req.header("content-length").is_some() {
        response = response
            .header("X-Body-Len", req.body.len)
            .header("X-Body-Fnv", req.body.fnv.hex());
    }
    response
}

/// The routes of every mode; `top` and `rest` split the path at its second `/`.
fn plain_route(state: &State, method: &str, top: Option<&str>, rest: Option<&str>) -> Response {
    match (method, top, rest) {
        ("GET", Some("health"), None) => Response::text(200, "ok\n"),
        ("GET", Some("bytes"), Some(n)) => match n.parse::<u64>() {
            Ok(n) => Response::new(200, ResponseBody::Pattern(n)),
            Err(_) => Response::text(400, format!("bad byte count {n:?}\n")),
        },
        ("GET", Some("slow"), Some(ms)) => match ms.parse::<u64>() {
            Ok(ms) if ms <= MAX_SLOW_MS => {
                std::thread::sleep(Duration::from_millis(ms));
                name_response(state)
            }
            _ => Response::text(400, format!("bad delay {ms:?} (0..={MAX_SLOW_MS} ms)\n")),
        },
        _ => name_response(state),
    }
}

fn name_response(state: &State) -> Response {
    Response::text(200, format!("{}\n", state.name))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Writes a response; `keep_alive` selects the `Connection` header.
fn write_response<W: Write>(w: &mut W, resp: &Response, keep_alive: bool) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (n, v) in &resp.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    head.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    w.write_all(head.as_bytes())?;
    match &resp.body {
        ResponseBody::Bytes(b) => w.write_all(b)?,
        ResponseBody::Pattern(n) => {
            let mut buf = vec![0u8; 64 * 1024];
            let mut sent = 0u64;
            while sent < *n {
                let k = (*n - sent).min(buf.len() as u64) as usize;
                fill_pattern(sent, &mut buf[..k]);
                w.write_all(&buf[..k])?;
                sent += k as u64;
            }
        }
    }
    w.flush()
}

fn is_timeout_or_reset(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        WouldBlock | TimedOut | ConnectionReset | ConnectionAborted | BrokenPipe
    )
}

/// Serves one connection until the client closes it or a response says `close`.
fn serve(state: &State, stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut reader = BufReader::with_capacity(64 * 1024, stream.try_clone()?);
    let mut writer = BufWriter::with_capacity(64 * 1024, stream);
    match reader.fill_buf() {
        Ok([]) => return Ok(()),
        Ok([first, ..]) if !first.is_ascii_alphabetic() => {
            return echo(state, &mut reader, &mut writer)
        }
        Ok(_) => {}
        Err(e) if is_timeout_or_reset(&e) => return Ok(()),
        Err(e) => return Err(e),
    }
    loop {
        let (response, keep_alive) = match read_request(&mut reader) {
            Ok(req) => {
                state.requests.fetch_add(1, Ordering::Relaxed);
                (route(state, &req), req.keep_alive())
            }
            Err(ReadError::Closed) => return Ok(()),
            Err(ReadError::Io(e)) if is_timeout_or_reset(&e) => return Ok(()),
            Err(ReadError::Io(e)) => return Err(e),
            Err(ReadError::Bad(why)) => (Response::text(400, format!("{why}\n")), false),
            Err(ReadError::Unsupported(status, why)) => {
                (Response::text(status, format!("{why}\n")), false)
            }
        };
        let response = if response.headers.iter().any(|(n, _)| n == "X-Backend") {
            response
        } else {
            response.header("X-Backend", &state.name)
        };
        write_response(&mut writer, &response, keep_alive)?;
        if !keep_alive {
            return Ok(());
        }
    }
}

/// Not HTTP: `NAME\n`, then everything received is sent back, until the peer closes.
fn echo<R: BufRead, W: Write>(
    state: &State,
    reader: &mut R,
    writer: &mut W,
) -> std::io::Result<()> {
    writer.write_all(format!("{}\n", state.name).as_bytes())?;
    writer.flush()?;
    loop {
        let n = match reader.fill_buf() {
            Ok([]) => return Ok(()),
            Ok(buf) => {
                writer.write_all(buf)?;
                buf.len()
            }
            Err(e) if is_timeout_or_reset(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        reader.consume(n);
        writer.flush()?;
    }
}

/// Locks a mutex, also one a panicking connection thread poisoned: the store's updates
/// are single assignments, never left half done.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Session mode: the replicated app server (see the module documentation).
struct Sessions {
    server_id: String,
    cookie_name: String,
    choice: SecondaryChoice,
    /// Connect, write and read timeout of one replication.
    timeout: Duration,
    store: Mutex<Store>,
    peers: Mutex<Peers>,
    /// Idle keep-alive connections to each peer, by peer id.
    pool: Mutex<HashMap<String, Vec<Conn>>>,
}

/// Where a session update's replica went.
enum Replication {
    /// Acknowledged by this peer, or by none (`None`: answered without a replica).
    Acked(Option<String>),
    /// A peer says `owner` took the session over: this server's copy is stale.
    Refused { owner: String },
}

/// The body of a session answer.
#[derive(Serialize)]
struct Answer<'a> {
    server: &'a str,
    session: &'a str,
    counter: u64,
    secondary: Option<&'a str>,
    event: &'static str,
    replayed: bool,
}

/// `GET /_sessions`.
#[derive(Serialize)]
struct Summary<'a> {
    server: &'a str,
    /// Sessions held as primary.
    primary: usize,
    /// Sessions held as replica.
    replicas: usize,
    #[serde(flatten)]
    stats: &'a Stats,
}

impl Sessions {
    fn new(server_id: &str, args: &Args) -> Result<Sessions> {
        let peers = Peers::new(server_id, args.peers.clone()).map_err(anyhow::Error::msg)?;
        Ok(Sessions {
            server_id: server_id.to_string(),
            cookie_name: args.cookie_name.clone(),
            choice: args.secondary_choice,
            timeout: Duration::from_millis(args.replicate_timeout_ms.max(1)),
            store: Mutex::new(Store::new(server_id)),
            peers: Mutex::new(peers),
            pool: Mutex::new(HashMap::new()),
        })
    }

    /// The session routes; `None` for the others (served as in plain mode).
    fn route(&self, req: &Request, top: Option<&str>, rest: Option<&str>) -> Option<Response> {
        let response = match (req.method.as_str(), top, rest) {
            ("GET" | "POST", Some("session"), _) => self.serve(req),
            (_, Some("session"), _) => Response::text(405, "GET or POST a session\n"),
            ("POST", Some("_replicate"), None) => self.receive(req),
            ("GET", Some("_sessions"), None) => self.summary(),
            ("GET", Some("_sessions"), Some(id)) => self.show(id),
            _ => return None,
        };
        Some(response)
    }

    /// A client request on a session: update, replicate, answer.
    fn serve(&self, req: &Request) -> Response {
        let request_id = req.header("x-request-id");
        if let Some(Err(why)) = request_id.map(|id| check_token("request id", id)) {
            return Response::text(400, format!("{why}\n"));
        }
        let cookie = SessionCookie::from_headers(&req.headers, &self.cookie_name);
        let begun = lock(&self.store).begin(cookie.as_ref(), request_id, new_session_id);
        let update = match begun {
            Begin::Update(u) => u,
            Begin::Moved { owner } => return moved(&owner),
        };
        let exclude = match &update.event {
            // The session came here because its primary did not answer: do not make it
            // the new secondary, nor anyone's for a while.
            Event::Takeover { old_primary } => {
                lock(&self.peers).mark_failed(old_primary, Instant::now());
                Some(old_primary.as_str())
            }
            _ => None,
        };
        let replica = &update.replica;
        match self.replicate(replica, exclude) {
            Replication::Acked(secondary) => {
                lock(&self.store).commit(&replica.session, replica.version(), secondary.as_deref());
                self.answer(&update, secondary)
            }
            Replication::Refused { owner } => {
                lock(&self.store).abandon(&replica.session, replica.version());
                moved(&owner)
            }
        }
    }

    /// The `200` answer to an update whose replica is on `secondary`.
    fn answer(&self, update: &Update, secondary: Option<String>) -> Response {
        let r = &update.replica;
        let body = Answer {
            server: &self.server_id,
            session: &r.session,
            counter: r.counter,
            secondary: secondary.as_deref(),
            event: update.event.name(),
            replayed: update.replayed,
        };
        let response = Response::json(200, &body);
        let cookie = SessionCookie {
            session: r.session.clone(),
            primary: self.server_id.clone(),
            secondary,
        };
        let response = response.header("Set-Cookie", cookie.set_cookie(&self.cookie_name));
        match update.event {
            Event::Lost { .. } => response.header("X-Session-Lost", 1),
            _ => response,
        }
    }

    /// Sends the replica to the first candidate peer that acknowledges it. Each failure
    /// takes that peer out of the candidates for a while (`FAIL_COOLDOWN`).
    fn replicate(&self, replica: &Replica, exclude: Option<&str>) -> Replication {
        let key = match self.choice {
            SecondaryChoice::Partner => &self.server_id,
            SecondaryChoice::Session => &replica.session,
        };
        let candidates = lock(&self.peers).candidates(key, exclude, Instant::now());
        let body = serde_json::to_vec(replica).expect("serialising to JSON cannot fail");
        for peer in candidates {
            match self.send(&peer, &body) {
                Ok(Replication::Acked(_)) => {
                    lock(&self.peers).mark_ok(&peer.id);
                    lock(&self.store).stats.replications_sent += 1;
                    return Replication::Acked(Some(peer.id));
                }
                Ok(refused) => return refused,
                Err(e) => {
                    lock(&self.store).stats.replications_failed += 1;
                    if lock(&self.peers).mark_failed(&peer.id, Instant::now()) {
                        eprintln!(
                            "balancer-testsrv {}: replication to {} ({}) failed, \
                             not using it for {FAIL_COOLDOWN:?}: {e:#}",
                            self.server_id, peer.id, peer.addr
                        );
                    }
                }
            }
        }
        Replication::Acked(None)
    }

    /// One `POST /_replicate` to `peer`, on a pooled connection if there is one.
    fn send(&self, peer: &Peer, body: &[u8]) -> Result<Replication> {
        let pooled = lock(&self.pool).get_mut(&peer.id).and_then(Vec::pop);
        if let Some(conn) = pooled {
            // The peer may have closed it since; replicas are idempotent, so the retry
            // on a fresh connection below is safe even if this one got through.
            if let Ok(outcome) = self.exchange(&peer.id, conn, body) {
                return Ok(outcome);
            }
        }
        let conn = Conn::connect_timeout(peer.addr, self.timeout)?;
        conn.stream().set_read_timeout(Some(self.timeout))?;
        conn.stream().set_write_timeout(Some(self.timeout))?;
        self.exchange(&peer.id, conn, body)
    }

    fn exchange(&self, peer_id: &str, mut conn: Conn, body: &[u8]) -> Result<Replication> {
        let headers = [("Content-Type", "application/json")];
        let resp = conn.request("POST", "/_replicate", &headers, body)?;
        let outcome = match resp.status {
            200 => Replication::Acked(Some(peer_id.to_string())),
            409 => Replication::Refused {
                owner: resp
                    .header("x-session-owner")
                    .unwrap_or_default()
                    .to_string(),
            },
            status => bail!("status {status}: {}", resp.text()),
        };
        if !resp.closes() {
            let mut pool = lock(&self.pool);
            let idle = pool.entry(peer_id.to_string()).or_default();
            if idle.len() < MAX_POOLED {
                idle.push(conn);
            }
        }
        Ok(outcome)
    }

    /// `POST /_replicate`.
    fn receive(&self, req: &Request) -> Response {
        let replica = match parse_replica(req) {
            Ok(r) => r,
            Err(why) => return Response::text(400, format!("{why}\n")),
        };
        match lock(&self.store).receive(&replica) {
            Received::Stored | Received::Current => Response::text(200, "ok\n"),
            Received::Stale { owner } => Response::text(409, format!("session owned by {owner}\n"))
                .header("X-Session-Owner", owner),
        }
    }

    fn summary(&self) -> Response {
        let store = lock(&self.store);
        let (primary, replicas) = store.counts();
        Response::json(
            200,
            &Summary {
                server: &self.server_id,
                primary,
                replicas,
                stats: &store.stats,
            },
        )
    }

    /// `GET /_sessions/SESSION`.
    fn show(&self, session: &str) -> Response {
        match lock(&self.store).get(session) {
            Some(entry) => Response::json(200, entry),
            None => Response::text(404, format!("no session {session:?} here\n")),
        }
    }
}

fn parse_replica(req: &Request) -> Result<Replica, String> {
    let body = req
        .body
        .data
        .as_deref()
        .ok_or("a replica is a small JSON body")?;
    let replica: Replica = serde_json::from_slice(body).map_err(|e| format!("replica: {e}"))?;
    check_token("session id", &replica.session)?;
    check_server_id(&replica.primary)?;
    if let Some(id) = &replica.last_request {
        check_token("request id", id)?;
    }
    Ok(replica)
}

/// `409`: `owner` holds the session now; the client's cookie is out of date.
fn moved(owner: &str) -> Response {
    let body = serde_json::json!({ "error": "session moved", "owner": owner });
    Response::json(409, &body).header("X-Session-Owner", owner)
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("balancer-testsrv: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let listener =
        TcpListener::bind(args.listen).with_context(|| format!("listening on {}", args.listen))?;
    let sessions = match &args.server_id {
        Some(id) => Some(Sessions::new(id, &args)?),
        None => None,
    };
    let state = Arc::new(State {
        name: args.name.or(args.server_id).expect("clap requires one"),
        requests: AtomicU64::new(0),
        sessions,
    });
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            // Transient accept failures (e.g. the peer reset before accept, fd pressure):
            // keep serving.
            Err(e) => {
                eprintln!("balancer-testsrv: accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let state = Arc::clone(&state);
        std::thread::spawn(move || {
            if let Err(e) = serve(&state, stream) {
                if !is_timeout_or_reset(&e) {
                    eprintln!("balancer-testsrv: connection: {e}");
                }
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            name: "be1".into(),
            requests: AtomicU64::new(0),
            sessions: None,
        }
    }

    fn request(raw: &[u8]) -> Request {
        match read_request(&mut BufReader::new(raw)) {
            Ok(r) => r,
            Err(_) => panic!("request did not parse"),
        }
    }

    #[test]
    fn parses_keep_alive_and_bodies() {
        let r = request(b"POST /up HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
        assert!(r.keep_alive());
        assert_eq!(r.body.len, 3);
        assert_eq!(r.body.fnv.hex(), Fnv64::of(b"abc").hex());
        let resp = route(&state(), &r);
        assert!(resp.headers.contains(&("X-Body-Len".into(), "3".into())));
        assert!(!request(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive());
        assert!(!request(b"GET / HTTP/1.0\r\n\r\n").keep_alive());
        assert!(request(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive());
    }

    #[test]
    fn routes() {
        let s = state();
        let r = route(&s, &request(b"GET /bytes/1000 HTTP/1.1\r\n\r\n"));
        assert_eq!((r.status, r.body.len()), (200, 1000));
        let r = route(&s, &request(b"GET /anything HTTP/1.1\r\n\r\n"));
        assert!(matches!(&r.body, ResponseBody::Bytes(b) if b == b"be1\n"));
        let r = route(&s, &request(b"GET /slow/x HTTP/1.1\r\n\r\n"));
        assert_eq!(r.status, 400);
        let mut out = Vec::new();
        let r = route(&s, &request(b"GET /bytes/300 HTTP/1.1\r\n\r\n"));
        write_response(&mut out, &r, true).unwrap();
        let parsed =
            balancer_tests::http::read_response(&mut BufReader::new(&out[..]), false).unwrap();
        assert!(balancer_tests::http::is_pattern(&parsed.body));
        assert_eq!(parsed.body.len(), 300);
        assert_eq!(parsed.header("x-backend"), Some("be1"));
    }

    #[test]
    fn echoes_what_is_not_http() {
        let raw = [0x16u8, 0x03, 0x01, 0x00, 0x02, 0x01, 0x00];
        let mut out = Vec::new();
        echo(&state(), &mut BufReader::new(&raw[..]), &mut out).unwrap();
        assert_eq!(&out[..4], b"be1\n");
        assert_eq!(&out[4..], &raw[..]);
    }

    #[test]
    fn rejects_bad_requests() {
        for raw in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET / HTTP/2.0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        ] {
            assert!(read_request(&mut BufReader::new(raw)).is_err());
        }
    }
}

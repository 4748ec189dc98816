//! `balancer-testsrv`: the reference HTTP/1.1 backend of the test bed.
//!
//! Every response names the server (`NAME\n` body and an `X-Backend: NAME` header), so a
//! client sees which backend served it. Routes:
//! - `GET /bytes/N`: N bytes of the deterministic pattern of `balancer_tests::http`
//!   (download tests);
//! - `GET /slow/MS`: waits MS milliseconds, then answers `NAME\n` (holds a request open);
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

use std::{
    io::{BufRead, BufReader, BufWriter, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use balancer_tests::http::{
    connection_has, fill_pattern, find_header, read_headers, read_line, Fnv64,
};
use clap::Parser;

/// Idle connections are closed after this long without a request.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Request bodies up to this size are kept in memory (for routes that need the content);
/// longer ones are only counted and digested.
const KEEP_BODY: u64 = 64 * 1024;
/// Largest `/slow/MS` wait.
const MAX_SLOW_MS: u64 = 600_000;

#[derive(Parser)]
#[command(
    name = "balancer-testsrv",
    about = "Reference HTTP/1.1 backend for balancer tests"
)]
struct Args {
    /// Address to listen on, IP:PORT.
    #[arg(long)]
    listen: SocketAddr,
    /// Name this server answers with.
    #[arg(long)]
    name: String,
}

/// Shared by all connections of the server.
struct State {
    name: String,
    requests: AtomicU64,
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
    let response = match (req.method.as_str(), segments.next(), segments.next()) {
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
    };
    let mut response = response.header("X-Backend", &state.name);
    if req.header("content-length").is_some() {
        response = response
            .header("X-Body-Len", req.body.len)
            .header("X-Body-Fnv", req.body.fnv.hex());
    }
    response
}

fn name_response(state: &State) -> Response {
    Response::text(200, format!("{}\n", state.name))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
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

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("balancer-testsrv: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let listener =
        TcpListener::bind(args.listen).with_context(|| format!("listening on {}", args.listen))?;
    let state = Arc::new(State {
        name: args.name,
        requests: AtomicU64::new(0),
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

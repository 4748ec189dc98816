//! One check of one backend: a TCP connect, or an HTTP GET (hyper's client) and its
//! status.

use std::{
    io,
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use http_body_util::Empty;
use hyper::{
    body::Bytes,
    client::conn::http1,
    header::{CONNECTION, HOST, USER_AGENT},
    Request,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::settings::{CheckKind, CheckSettings};

/// Longest response head read from an HTTP backend (hyper's smallest read buffer
/// limit). The probe only needs the status code, so the read is bounded: a backend
/// answering with an endless line cannot make the checker buffer it.
const MAX_RESPONSE_HEAD: usize = 8192;

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

/// Sends the request over hyper's HTTP/1.1 client and judges the status. The body is
/// not read: closing with unread data resets the connection, which also spares the
/// checker a TIME_WAIT socket per check.
async fn http_probe(stream: TcpStream, path: &str, host: &str, expect: u16) -> Probe {
    let request = Request::get(path)
        .header(HOST, host)
        .header(CONNECTION, "close")
        .header(USER_AGENT, "balancer-health")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad request: {e}"))?;
    let (mut sender, connection) = http1::Builder::new()
        .title_case_headers(true)
        .max_buf_size(MAX_RESPONSE_HEAD)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http_detail(&e))?;
    // The connection task ends when the response is dropped, with the probe.
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await;
    driver.abort();
    let status = response.map_err(|e| http_detail(&e))?.status().as_u16();
    if status == expect {
        Ok(format!("HTTP {status}"))
    } else {
        Err(format!("HTTP {status}, expected {expect}"))
    }
}

/// What went wrong in an exchange, in the words the logs used before hyper.
fn http_detail(e: &hyper::Error) -> String {
    if e.is_parse_too_large() {
        format!("bad status line: no head end in {MAX_RESPONSE_HEAD} bytes")
    } else if e.is_parse() || e.is_parse_status() {
        "bad status line".into()
    } else if e.is_incomplete_message() {
        "connection closed without a response".into()
    } else if let Some(io) =
        std::error::Error::source(e).and_then(|s| s.downcast_ref::<io::Error>())
    {
        io_detail("receive", io)
    } else {
        format!("HTTP: {e}")
    }
}

/// Short, stable wording for the common errors; the OS text for the rest.
fn io_detail(op: &str, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => format!("{op} refused"),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        _ => format!("{op}: {e}"),
    }
}

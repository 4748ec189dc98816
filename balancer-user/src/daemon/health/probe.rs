//! One check of one backend: a TCP connect, or an HTTP GET and its status line.

use std::{
    io,
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpStream,
};

use super::settings::{CheckKind, CheckSettings};

/// Longest status line read from an HTTP backend. The probe only needs the status code,
/// so the read is bounded: a backend answering with an endless line cannot make the
/// checker buffer it.
const MAX_STATUS_LINE: u64 = 4096;

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
pub(super) fn parse_status_line(line: &[u8]) -> Option<u16> {
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

//! The read-only HTTP/1.1 server of `GET /metrics`.

use std::{io, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpListener,
    sync::Semaphore,
    time::timeout,
};
use tracing::{debug, warn};

/// Content type of the exposition format served.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Longest request head accepted; a scraper's is a few hundred bytes.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client gets to send its request head, and to take the response.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;

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
pub(super) async fn serve_with_timeout(
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

//! Serving a connection: routing requests, echo, keep-alive.

use super::*;

/// Decides the response to a request.
pub(crate) fn route(state: &State, req: &Request) -> Response {
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
pub(crate) fn plain_route(
    state: &State,
    method: &str,
    top: Option<&str>,
    rest: Option<&str>,
) -> Response {
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

pub(crate) fn name_response(state: &State) -> Response {
    Response::text(200, format!("{}\n", state.name))
}

pub(crate) fn reason(status: u16) -> &'static str {
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
pub(crate) fn write_response<W: Write>(
    w: &mut W,
    resp: &Response,
    keep_alive: bool,
) -> std::io::Result<()> {
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

pub(crate) fn is_timeout_or_reset(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        WouldBlock | TimedOut | ConnectionReset | ConnectionAborted | BrokenPipe
    )
}

/// Serves one connection until the client closes it or a response says `close`.
pub(crate) fn serve(state: &State, stream: TcpStream) -> std::io::Result<()> {
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
pub(crate) fn echo<R: BufRead, W: Write>(
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
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

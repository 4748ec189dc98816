//! A minimal blocking HTTP/1.1 client over `std::net::TcpStream`, and the helpers it
//! shares with `balancer-testsrv` (the `/bytes/N` pattern and the body digest).
//!
//! Sockets are opened in the network namespace of the calling thread: tests call these
//! functions inside `Netns::run`. A connected [`Conn`] can then be used from any thread
//! (a socket stays in the namespace it was created in).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{bail, Context, Result};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest status line or header line accepted (client and server).
pub const MAX_LINE: usize = 8192;
/// Most header lines accepted in one message.
pub const MAX_HEADERS: usize = 100;

/// Byte `i` of the body of `GET /bytes/N`: a pattern with period 251 (a prime, so it
/// does not line up with buffer or segment sizes and a shifted or lost chunk shows).
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// Fills `buf` with the pattern bytes starting at `offset`.
pub fn fill_pattern(offset: u64, buf: &mut [u8]) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(offset + k as u64);
    }
}

/// True if `body` is exactly the first `body.len()` pattern bytes.
pub fn is_pattern(body: &[u8]) -> bool {
    body.iter()
        .enumerate()
        .all(|(i, b)| *b == pattern_byte(i as u64))
}

/// 64-bit FNV-1a, fed incrementally: the digest `balancer-testsrv` reports of request
/// bodies in `X-Body-Fnv` (16 lowercase hex digits).
#[derive(Clone, Copy, Debug)]
pub struct Fnv64(pub u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    pub fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }

    /// Digest of one buffer.
    pub fn of(data: &[u8]) -> Fnv64 {
        let mut h = Fnv64::default();
        h.update(data);
        h
    }
}

/// Reads one CRLF- (or LF-) terminated line without the terminator; `None` on a clean
/// end of stream before any byte of the line.
pub fn read_line<R: BufRead>(r: &mut R) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        let kind = if n > MAX_LINE {
            std::io::ErrorKind::InvalidData
        } else {
            std::io::ErrorKind::UnexpectedEof
        };
        return Err(std::io::Error::new(kind, "incomplete or overlong line"));
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "line is not UTF-8"))
}

/// Reads header lines up to the empty line.
pub fn read_headers<R: BufRead>(r: &mut R) -> std::io::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)?.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "end of stream in headers",
            )
        })?;
        if line.is_empty() {
            return Ok(headers);
        }
        if headers.len() >= MAX_HEADERS {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "too many header lines",
            ));
        }
        let (name, value) = line.split_once(':').ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad header line {line:?}"),
            )
        })?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
}

/// Value of the first header called `name` (case-insensitive).
pub fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// True if a `Connection` header lists `token` (case-insensitive).
pub fn connection_has(headers: &[(String, String)], token: &str) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The body as text, trailing newline removed: for `balancer-testsrv`, the name of the
    /// backend that answered.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body)
            .trim_end_matches(['\r', '\n'])
            .to_string()
    }

    /// The name of the test server that answered: the body of a 200, which must agree
    /// with its `X-Backend` header.
    pub fn answering_backend(&self) -> Result<String> {
        anyhow::ensure!(self.status == 200, "status {}", self.status);
        anyhow::ensure!(
            self.header("x-backend") == Some(self.text().as_str()),
            "body {:?} and X-Backend {:?} disagree",
            self.text(),
            self.header("x-backend")
        );
        Ok(self.text())
    }

    /// Whether the server will close the connection after this response.
    pub fn closes(&self) -> bool {
        connection_has(&self.headers, "close")
    }
}

/// One request on a fresh connection (`Connection: close`).
pub fn get(addr: SocketAddr, path: &str) -> Result<Response> {
    let mut conn = Conn::connect(addr)?;
    conn.request("GET", path, &[("Connection", "close")], &[])
}

/// One request with a body on a fresh connection.
pub fn post(addr: SocketAddr, path: &str, body: &[u8]) -> Result<Response> {
    let mut conn = Conn::connect(addr)?;
    conn.request("POST", path, &[("Connection", "close")], body)
}

/// A keep-alive connection: several requests, one after the other.
pub struct Conn {
    addr: SocketAddr,
    reader: BufReader<TcpStream>,
    closed: bool,
}

impl Conn {
    /// Connects (2 s timeout) and sets 5 s read and write timeouts.
    pub fn connect(addr: SocketAddr) -> Result<Conn> {
        Self::connect_timeout(addr, CONNECT_TIMEOUT)
    }

    /// Connects within `timeout` (e.g. longer, for links that lose SYNs) and sets 5 s
    /// read and write timeouts (change them with [`Conn::stream`]).
    pub fn connect_timeout(addr: SocketAddr, timeout: Duration) -> Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connecting to {addr}"))?;
        Self::from_stream(addr, stream)
    }

    /// A connected stream with the read and write timeouts, as a connection.
    fn from_stream(addr: SocketAddr, stream: TcpStream) -> Result<Conn> {
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            addr,
            reader: BufReader::with_capacity(64 * 1024, stream),
            closed: false,
        })
    }

    /// [`Conn::connect_timeout`] from the local address `local` (port chosen by the
    /// kernel): for tests that play several clients from one namespace.
    pub fn connect_from(
        local: std::net::Ipv4Addr,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Conn> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket
            .bind(&SocketAddr::from((local, 0)).into())
            .with_context(|| format!("binding to {local}"))?;
        socket
            .connect_timeout(&addr.into(), timeout)
            .with_context(|| format!("connecting to {addr} from {local}"))?;
        Self::from_stream(addr, socket.into())
    }

    pub fn peer(&self) -> SocketAddr {
        self.addr
    }

    /// Local address of the connection (the client's address and port).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.reader.get_ref().local_addr()?)
    }

    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    pub fn get(&mut self, path: &str) -> Result<Response> {
        self.request("GET", path, &[], &[])
    }

    pub fn post(&mut self, path: &str, body: &[u8]) -> Result<Response> {
        self.request("POST", path, &[], body)
    }

    /// Sends one request and reads its response. `Content-Length` is added when there is
    /// a body (or the method is POST/PUT); `Host` is always added.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response> {
        if self.closed {
            bail!("connection to {} was closed by the server", self.addr);
        }
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        if !body.is_empty() || matches!(method, "POST" | "PUT") {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let what = || format!("{method} {path} to {}", self.addr);
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes()).with_context(what)?;
        stream.write_all(body).with_context(what)?;
        let response = read_response(&mut self.reader, method == "HEAD").with_context(what)?;
        if response.closes()
            || headers.iter().any(|(n, v)| {
                n.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close")
            })
        {
            self.closed = true;
        }
        Ok(response)
    }
}

/// Reads one response: status line, headers, and a body delimited by Content-Length,
/// chunked encoding, or the end of the stream.
pub fn read_response<R: BufRead>(r: &mut R, head_only: bool) -> Result<Response> {
    let line = read_line(r)?.context("connection closed before the response")?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        bail!("bad status line {line:?}");
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))?;
    let headers = read_headers(r)?;
    let mut body = Vec::new();
    let no_body = head_only || status == 204 || status == 304 || (100..200).contains(&status);
    if no_body {
        // Nothing to read.
    } else if find_header(&headers, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        read_chunked(r, &mut body)?;
    } else if let Some(len) = find_header(&headers, "content-length") {
        let len: u64 = len
            .parse()
            .with_context(|| format!("bad Content-Length {len:?}"))?;
        body.reserve(len.min(64 << 20) as usize);
        let n = r.take(len).read_to_end(&mut body)?;
        if (n as u64) < len {
            bail!("body ended after {n} of {len} bytes");
        }
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn read_chunked<R: BufRead>(r: &mut R, body: &mut Vec<u8>) -> Result<()> {
    loop {
        let line = read_line(r)?.context("end of stream in chunked body")?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size =
            u64::from_str_radix(size, 16).with_context(|| format!("bad chunk size {line:?}"))?;
        if size == 0 {
            // Trailers up to the empty line.
            read_headers(r)?;
            return Ok(());
        }
        let n = r.take(size).read_to_end(body)?;
        if (n as u64) < size {
            bail!("chunk ended after {n} of {size} bytes");
        }
        let end = read_line(r)?.unwrap_or_default();
        if !end.is_empty() {
            bail!("missing CRLF after a chunk");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_values() {
        assert_eq!(Fnv64::of(b"").hex(), "cbf29ce484222325");
        assert_eq!(Fnv64::of(b"a").hex(), "af63dc4c8601ec8c");
        let mut h = Fnv64::default();
        h.update(b"foo");
        h.update(b"bar");
        assert_eq!(h.0, Fnv64::of(b"foobar").0);
    }

    #[test]
    fn parses_responses() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Backend: be1\r\n\r\nbe1\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let mut r = BufReader::new(&raw[..]);
        let a = read_response(&mut r, false).unwrap();
        assert_eq!((a.status, a.text().as_str()), (200, "be1"));
        assert_eq!(a.header("x-backend"), Some("be1"));
        let b = read_response(&mut r, false).unwrap();
        assert_eq!(b.body, b"abc");
        assert!(read_response(&mut r, false).is_err());
    }

    #[test]
    fn pattern_round_trip() {
        let mut buf = vec![0u8; 1000];
        fill_pattern(0, &mut buf[..300]);
        fill_pattern(300, &mut buf[300..]);
        assert!(is_pattern(&buf));
        buf[500] ^= 1;
        assert!(!is_pattern(&buf));
    }
}

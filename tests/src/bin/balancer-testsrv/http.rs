//! Requests and responses: reading a request head and body, writing a response.

use super::*;

/// A parsed request head plus what was read of its body.
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) path: String,
    /// HTTP/1.1 or later (keep-alive by default).
    pub(crate) http11: bool,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Body,
}

#[derive(Default)]
pub(crate) struct Body {
    pub(crate) len: u64,
    pub(crate) fnv: Fnv64,
    /// The body itself when it is at most `KEEP_BODY` bytes.
    pub(crate) data: Option<Vec<u8>>,
}

impl Request {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    pub(crate) fn keep_alive(&self) -> bool {
        if connection_has(&self.headers, "close") {
            false
        } else {
            self.http11 || connection_has(&self.headers, "keep-alive")
        }
    }
}

pub(crate) enum ResponseBody {
    Bytes(Vec<u8>),
    /// `n` bytes of the download pattern, generated while sending.
    Pattern(u64),
}

impl ResponseBody {
    pub(crate) fn len(&self) -> u64 {
        match self {
            ResponseBody::Bytes(b) => b.len() as u64,
            ResponseBody::Pattern(n) => *n,
        }
    }
}

pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: ResponseBody,
}

impl Response {
    pub(crate) fn new(status: u16, body: ResponseBody) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body,
        }
    }

    pub(crate) fn text(status: u16, text: impl Into<String>) -> Self {
        let mut r = Response::new(status, ResponseBody::Bytes(text.into().into_bytes()));
        r.headers.push(("Content-Type".into(), "text/plain".into()));
        r
    }

    pub(crate) fn json(status: u16, value: &impl Serialize) -> Self {
        let body = serde_json::to_vec(value).expect("serialising to JSON cannot fail");
        let mut r = Response::new(status, ResponseBody::Bytes(body));
        r.headers
            .push(("Content-Type".into(), "application/json".into()));
        r
    }

    pub(crate) fn header(mut self, name: &str, value: impl ToString) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// Why a connection stops before a full request was read.
pub(crate) enum ReadError {
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
pub(crate) fn read_request<R: BufRead>(r: &mut R) -> Result<Request, ReadError> {
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
pub(crate) fn read_body<R: Read>(r: &mut R, len: u64) -> Result<Body, ReadError> {
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

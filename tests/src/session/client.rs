//! The client side (tests, demo): requests and their parsed answers.

use super::*;

// ---- Client side (tests, demo)

/// The JSON body of a response (panics with the status and body if it is not JSON).
pub fn json(r: &crate::http::Response) -> Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("status {}, body {:?}: {e}", r.status, r.text()))
}

/// A session answer, as the client sees it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub cookie: Option<SessionCookie>,
    /// `X-Session-Lost` was set.
    pub lost: bool,
    /// `X-Backend`: the server that answered.
    pub backend: String,
}

impl Answer {
    pub fn counter(&self) -> u64 {
        self.body["counter"].as_u64().expect("counter")
    }

    pub fn event(&self) -> &str {
        self.body["event"].as_str().expect("event")
    }

    pub fn cookie(&self) -> &SessionCookie {
        self.cookie.as_ref().expect("a session cookie")
    }
}

/// `GET /session` to `addr` on a fresh connection, sending `cookie` and `request_id`
/// if given.
pub fn try_request(
    addr: SocketAddr,
    cookie: Option<&SessionCookie>,
    request_id: Option<&str>,
) -> anyhow::Result<Answer> {
    let cookie_header = cookie.map(|c| format!("JSESSIONID={c}"));
    let mut headers = vec![("Connection", "close")];
    headers.extend(cookie_header.as_deref().map(|c| ("Cookie", c)));
    headers.extend(request_id.map(|id| ("X-Request-Id", id)));
    let r = crate::http::Conn::connect(addr)?.request("GET", "/session", &headers, &[])?;
    let cookie = r.header("set-cookie").map(|v| {
        let value = v.split(';').next().unwrap();
        let value = value.strip_prefix("JSESSIONID=").expect("JSESSIONID");
        SessionCookie::parse(value).expect("a well-formed session cookie")
    });
    Ok(Answer {
        status: r.status,
        body: json(&r),
        cookie,
        lost: r.header("x-session-lost").is_some(),
        backend: r.header("x-backend").unwrap_or_default().to_string(),
    })
}

//! Replicated HTTP sessions of the reference app server (`balancer-testsrv --server-id`),
//! after the primary/secondary scheme the balancer's cookie mode is built for: the server
//! that creates a session is its primary, keeps the state (a counter), copies every update
//! to one secondary before answering, and names both in the session cookie
//! `JSESSIONID=<session>!<primary>!<secondary>`. When the primary dies, the secondary gets
//! the session's next request, takes over as primary and picks a new secondary.
//!
//! This module is the logic without the network: the cookie format, the session store and
//! its rules, the choice of a secondary, and the replication message. The binary wires it
//! to HTTP (`POST /_replicate` carries a [`Replica`] as JSON).
//!
//! State versions are `(epoch, counter)`, compared in that order: the counter counts
//! updates, the epoch counts takeovers. A replica never goes back to an older version, and
//! the epoch settles which of two servers that both believe they are primary is right
//! (the one that took over later), so a stale primary cannot overwrite a newer owner.

mod client;
mod peers;
mod store;
#[cfg(test)]
mod tests;
pub use client::*;
pub use peers::*;
pub use store::*;

use std::{
    collections::HashMap,
    fmt,
    net::SocketAddr,
    str::FromStr,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::http::Fnv64;

/// Default name of the session cookie.
pub const DEFAULT_COOKIE_NAME: &str = "JSESSIONID";
/// Separates the cookie's segments (WebLogic's delimiter, the balancer's default).
pub const DELIMITER: char = '!';
/// Secondary token of a session that has no replica (as WebLogic writes it).
pub const NO_SECONDARY: &str = "NONE";
/// Longest server id, session id or request id accepted.
pub const MAX_TOKEN: usize = 64;
/// A peer whose replication failed is not chosen as secondary for this long, so that
/// requests do not each wait for a dead peer's timeout.
pub const FAIL_COOLDOWN: Duration = Duration::from_secs(2);

/// Checks a token written into the cookie (server id, session id) or sent as request id:
/// 1-64 visible ASCII characters other than the cookie's separators (`;`, `,`, `"`, `=`,
/// `\`) and the delimiter. The same rule as the balancer's `--server-id`, plus `=`.
pub fn check_token(what: &str, token: &str) -> Result<(), String> {
    if token.is_empty() || token.len() > MAX_TOKEN {
        return Err(format!("{what} {token:?}: 1-{MAX_TOKEN} characters"));
    }
    let bad = |c: char| !c.is_ascii_graphic() || matches!(c, ';' | ',' | '"' | '=' | '\\');
    if token.chars().any(|c| bad(c) || c == DELIMITER) {
        return Err(format!(
            "{what} {token:?}: visible ASCII without ; , \" = \\ or {DELIMITER}"
        ));
    }
    Ok(())
}

/// Checks a server id: a token, and not the "no secondary" marker.
pub fn check_server_id(id: &str) -> Result<(), String> {
    check_token("server id", id)?;
    if id == NO_SECONDARY {
        return Err(format!("server id {NO_SECONDARY:?} means \"no secondary\""));
    }
    Ok(())
}

/// The value of the session cookie: `<session>!<primary>!<secondary>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionCookie {
    pub session: String,
    pub primary: String,
    /// `None` is written as [`NO_SECONDARY`].
    pub secondary: Option<String>,
}

impl SessionCookie {
    /// Parses a cookie value. Optional double quotes around it are removed; segments after
    /// the third are ignored (the format allows more); a missing third segment or
    /// [`NO_SECONDARY`] means no secondary. Anything else malformed is `None`.
    pub fn parse(value: &str) -> Option<SessionCookie> {
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        let mut segments = value.split(DELIMITER);
        let session = segments.next()?;
        let primary = segments.next()?;
        let secondary = match segments.next() {
            None | Some(NO_SECONDARY) => None,
            Some(s) => Some(s),
        };
        check_token("session id", session).ok()?;
        check_server_id(primary).ok()?;
        if let Some(s) = secondary {
            check_server_id(s).ok()?;
        }
        Some(SessionCookie {
            session: session.to_string(),
            primary: primary.to_string(),
            secondary: secondary.map(str::to_string),
        })
    }

    /// The first well-formed cookie called `name` (case-sensitive, as cookie names are) in
    /// the `Cookie` headers of a request.
    pub fn from_headers(headers: &[(String, String)], name: &str) -> Option<SessionCookie> {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
            .flat_map(|(_, v)| v.split(';'))
            .filter_map(|pair| pair.split_once('='))
            .filter(|(n, _)| n.trim() == name)
            .find_map(|(_, v)| SessionCookie::parse(v))
    }

    /// The `Set-Cookie` value that issues this cookie.
    pub fn set_cookie(&self, name: &str) -> String {
        format!("{name}={self}; Path=/")
    }
}

impl fmt::Display for SessionCookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secondary = self.secondary.as_deref().unwrap_or(NO_SECONDARY);
        write!(
            f,
            "{}{DELIMITER}{}{DELIMITER}{secondary}",
            self.session, self.primary
        )
    }
}

/// A new session id: 16 hex digits from the kernel's random source, or, should that
/// fail, a hash of the time, the process id and a counter (unique, not secret).
pub fn new_session_id() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut h = Fnv64::default();
        h.update(&nanos.to_le_bytes());
        h.update(&std::process::id().to_le_bytes());
        h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        bytes = mix(h.0).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

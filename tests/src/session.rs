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

/// The order of a session's state versions: takeovers first, then updates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Version {
    pub epoch: u64,
    pub counter: u64,
}

/// What a server knows of a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    #[serde(flatten)]
    pub version: Version,
    /// `X-Request-Id` of the update that produced this version: a retry of that request
    /// gets the same answer instead of a second increment.
    pub last_request: Option<String>,
    #[serde(flatten)]
    pub role: Role,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum Role {
    /// Held here as primary; `secondary` is the peer that acknowledged the latest replica
    /// (`None` while the first replication is in flight, or when no peer took it).
    Primary { secondary: Option<String> },
    /// A copy kept for `primary`.
    Replica { primary: String },
}

/// The replication message: a session's full state (it is one counter, so there are no
/// deltas) as the primary sends it to its secondary in `POST /_replicate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub session: String,
    pub primary: String,
    pub epoch: u64,
    pub counter: u64,
    #[serde(default)]
    pub last_request: Option<String>,
}

impl Replica {
    pub fn version(&self) -> Version {
        Version {
            epoch: self.epoch,
            counter: self.counter,
        }
    }
}

/// How a client request found its session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// No (well-formed) cookie: a new session.
    New,
    /// The session is held here as primary.
    Continued,
    /// The cookie names this server as secondary and it holds the replica: it is primary
    /// now. `old_primary` (named in the cookie) is presumably dead.
    Takeover { old_primary: String },
    /// The cookie names a session this server cannot continue: a new session replaces it.
    Lost { cookie: SessionCookie },
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Event::New => "new",
            Event::Continued => "continued",
            Event::Takeover { .. } => "takeover",
            Event::Lost { .. } => "lost",
        }
    }
}

/// An update made in the store: to replicate, then to [`Store::commit`] (or
/// [`Store::abandon`] if a peer says another server owns the session).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub replica: Replica,
    pub event: Event,
    /// The request repeated the session's last `X-Request-Id`: nothing was incremented.
    pub replayed: bool,
}

/// Outcome of [`Store::begin`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Begin {
    Update(Update),
    /// The cookie names this server as primary, but another server took the session over
    /// since (this server holds a replica for `owner`): serving here would fork the state.
    Moved {
        owner: String,
    },
}

/// Outcome of [`Store::receive`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// Stored: newer than what was held.
    Stored,
    /// Already held, or something newer of the same owner (a duplicate, or replications
    /// of concurrent updates arriving out of order): acknowledged, nothing changed.
    Current,
    /// The sender is not the session's owner any more: `owner` (this server or the one
    /// it holds a replica for) took it over in a later epoch. Refused.
    Stale { owner: String },
}

/// Counters reported by `GET /_sessions`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Sessions created (new or replacing a lost one).
    pub created: u64,
    pub takeovers: u64,
    pub lost: u64,
    /// Requests answered from the last update (same `X-Request-Id`) without incrementing.
    pub replayed: u64,
    /// Requests refused because another server owns their session (409).
    pub conflicts: u64,
    /// Replicas acknowledged by a peer.
    pub replications_sent: u64,
    /// Replications that failed (no answer in time, refused connection, bad status).
    pub replications_failed: u64,
    /// Updates answered without any replica (no peer took it): secondary `NONE`.
    pub unreplicated: u64,
    pub replicas_stored: u64,
    pub replicas_refused: u64,
}

/// The sessions of one server. Not thread-safe by itself: the server keeps it behind a
/// mutex and never holds that while talking to a peer.
pub struct Store {
    server_id: String,
    sessions: HashMap<String, Entry>,
    pub stats: Stats,
}

impl Store {
    pub fn new(server_id: impl Into<String>) -> Store {
        Store {
            server_id: server_id.into(),
            sessions: HashMap::new(),
            stats: Stats::default(),
        }
    }

    pub fn get(&self, session: &str) -> Option<&Entry> {
        self.sessions.get(session)
    }

    /// Sessions held as primary and as replica.
    pub fn counts(&self) -> (usize, usize) {
        let primary = self
            .sessions
            .values()
            .filter(|e| matches!(e.role, Role::Primary { .. }))
            .count();
        (primary, self.sessions.len() - primary)
    }

    /// Applies a client request (its session cookie and `X-Request-Id`) to the store:
    /// - no cookie: a new session (id from `new_id`), counter 1;
    /// - a session held here as primary: the next counter, whatever primary and secondary
    ///   the cookie names (a client retrying with an older cookie);
    /// - a replica, and the cookie names another primary and this server as secondary:
    ///   takeover, next epoch, next counter;
    /// - a replica, and the cookie names this server as primary: [`Begin::Moved`];
    /// - anything else (not held; or a replica the cookie does not name this server as
    ///   secondary for, which may be behind the real one): lost, a new session.
    ///
    /// A request whose id equals the session's last one is not applied again.
    pub fn begin(
        &mut self,
        cookie: Option<&SessionCookie>,
        request_id: Option<&str>,
        new_id: impl FnMut() -> String,
    ) -> Begin {
        let Some(cookie) = cookie else {
            return Begin::Update(self.create(request_id, new_id, Event::New));
        };
        let me = self.server_id.as_str();
        let event = match self.sessions.get(&cookie.session).map(|e| &e.role) {
            Some(Role::Primary { .. }) => Event::Continued,
            Some(Role::Replica { .. })
                if cookie.secondary.as_deref() == Some(me) && cookie.primary != me =>
            {
                Event::Takeover {
                    old_primary: cookie.primary.clone(),
                }
            }
            Some(Role::Replica { primary }) if cookie.primary == me => {
                self.stats.conflicts += 1;
                return Begin::Moved {
                    owner: primary.clone(),
                };
            }
            _ => {
                let event = Event::Lost {
                    cookie: cookie.clone(),
                };
                return Begin::Update(self.create(request_id, new_id, event));
            }
        };
        let entry = self
            .sessions
            .get_mut(&cookie.session)
            .expect("matched above");
        if let Event::Takeover { .. } = event {
            self.stats.takeovers += 1;
            entry.version.epoch += 1;
            entry.role = Role::Primary { secondary: None };
        }
        let replayed = apply(entry, request_id);
        self.stats.replayed += u64::from(replayed);
        let replica = replica_of(&self.server_id, &cookie.session, entry);
        Begin::Update(Update {
            replica,
            event,
            replayed,
        })
    }

    fn create(
        &mut self,
        request_id: Option<&str>,
        mut new_id: impl FnMut() -> String,
        event: Event,
    ) -> Update {
        // Random ids do not collide in practice; the loop makes it a certainty.
        let session = std::iter::repeat_with(&mut new_id)
            .find(|id| !self.sessions.contains_key(id))
            .expect("repeat_with is endless");
        let entry = Entry {
            version: Version {
                epoch: 0,
                counter: 1,
            },
            last_request: request_id.map(str::to_string),
            role: Role::Primary { secondary: None },
        };
        self.stats.created += 1;
        if let Event::Lost { .. } = event {
            self.stats.lost += 1;
        }
        let replica = replica_of(&self.server_id, &session, &entry);
        self.sessions.insert(session, entry);
        Update {
            replica,
            event,
            replayed: false,
        }
    }

    /// Records which peer acknowledged the replica of `version` (`None`: none did). An
    /// entry that moved on meanwhile keeps its own (newer) secondary.
    pub fn commit(&mut self, session: &str, version: Version, secondary: Option<&str>) {
        if secondary.is_none() {
            self.stats.unreplicated += 1;
        }
        if let Some(entry) = self.sessions.get_mut(session) {
            if entry.version == version {
                if let Role::Primary { secondary: s } = &mut entry.role {
                    *s = secondary.map(str::to_string);
                }
            }
        }
    }

    /// A peer refused the replica of `version` because another server owns the session
    /// in a later epoch: this server's copy is stale, so it is dropped (the old primary
    /// keeps no responsibility for a session taken over) unless it was replaced by then.
    pub fn abandon(&mut self, session: &str, version: Version) {
        self.stats.conflicts += 1;
        let stale = self.sessions.get(session).is_some_and(|e| {
            matches!(e.role, Role::Primary { .. }) && e.version.epoch <= version.epoch
        });
        if stale {
            self.sessions.remove(session);
        }
    }

    /// Applies a replica from a peer (the `POST /_replicate` receiver):
    /// - not held, or older than the replica: stored as a replica of the sender, also when
    ///   this server held it as primary in an older epoch (it was taken over: it steps
    ///   down);
    /// - a replica of an older epoch than what is held: refused, the sender is a stale
    ///   primary; so is one of the same epoch for a session held here as primary (two
    ///   owners in one epoch: the holder keeps it);
    /// - otherwise (same or older version of the same epoch): acknowledged, unchanged.
    ///
    /// So a replica never goes back, and receiving the same one twice changes nothing.
    pub fn receive(&mut self, r: &Replica) -> Received {
        let outcome = match self.sessions.get(&r.session) {
            Some(held) if r.epoch < held.version.epoch => Received::Stale {
                owner: owner_of(&self.server_id, held),
            },
            Some(
                held @ Entry {
                    role: Role::Primary { .. },
                    ..
                },
            ) if r.epoch == held.version.epoch => Received::Stale {
                owner: self.server_id.clone(),
            },
            Some(held) if r.version() <= held.version => Received::Current,
            _ => Received::Stored,
        };
        match outcome {
            Received::Stored => {
                self.stats.replicas_stored += 1;
                self.sessions.insert(
                    r.session.clone(),
                    Entry {
                        version: r.version(),
                        last_request: r.last_request.clone(),
                        role: Role::Replica {
                            primary: r.primary.clone(),
                        },
                    },
                );
            }
            Received::Stale { .. } => self.stats.replicas_refused += 1,
            Received::Current => {}
        }
        outcome
    }
}

/// Increments the counter unless `request_id` repeats the entry's last request; returns
/// whether it was such a replay.
fn apply(entry: &mut Entry, request_id: Option<&str>) -> bool {
    if request_id.is_some() && entry.last_request.as_deref() == request_id {
        return true;
    }
    entry.version.counter += 1;
    entry.last_request = request_id.map(str::to_string);
    false
}

fn replica_of(server_id: &str, session: &str, entry: &Entry) -> Replica {
    Replica {
        session: session.to_string(),
        primary: server_id.to_string(),
        epoch: entry.version.epoch,
        counter: entry.version.counter,
        last_request: entry.last_request.clone(),
    }
}

fn owner_of(server_id: &str, entry: &Entry) -> String {
    match &entry.role {
        Role::Primary { .. } => server_id.to_string(),
        Role::Replica { primary } => primary.clone(),
    }
}

/// Another app server of the cluster: its server id and where it listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: String,
    pub addr: SocketAddr,
}

impl FromStr for Peer {
    type Err = String;

    /// `ID=IP:PORT`.
    fn from_str(s: &str) -> Result<Peer, String> {
        let (id, addr) = s
            .split_once('=')
            .ok_or_else(|| format!("peer {s:?}: expected ID=IP:PORT"))?;
        check_server_id(id)?;
        let addr = addr
            .parse()
            .map_err(|e| format!("peer {s:?}: address {addr:?}: {e}"))?;
        Ok(Peer {
            id: id.to_string(),
            addr,
        })
    }
}

/// What a server's secondary choice is keyed on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SecondaryChoice {
    /// The server's own id: all its sessions go to one partner (the first live peer in its
    /// order). This is what the balancer's per-backend failover (`FAILOVER[primary] =
    /// secondary`) expects: every session of a dead primary is on the same peer.
    #[default]
    Partner,
    /// The session id: replicas spread over the peers, so a takeover spreads the dead
    /// server's load; needs a balancer that follows each cookie's secondary.
    Session,
}

/// The peers and when replication to each last failed.
pub struct Peers {
    peers: Vec<Peer>,
    failed: HashMap<String, Instant>,
}

impl Peers {
    /// Fails on duplicate ids or a peer with the server's own id.
    pub fn new(server_id: &str, peers: Vec<Peer>) -> Result<Peers, String> {
        for (i, p) in peers.iter().enumerate() {
            if p.id == server_id {
                return Err(format!("peer {:?} is this server's own id", p.id));
            }
            if peers[..i].iter().any(|q| q.id == p.id) {
                return Err(format!("peer {:?} given twice", p.id));
            }
        }
        Ok(Peers {
            peers,
            failed: HashMap::new(),
        })
    }

    pub fn all(&self) -> &[Peer] {
        &self.peers
    }

    /// Candidates for secondary, best first: the peers by rendezvous hash of `key` (a
    /// deterministic order that keeps the others' order when one drops out), without
    /// `exclude` and without those that failed within [`FAIL_COOLDOWN`] before `now`.
    pub fn candidates(&self, key: &str, exclude: Option<&str>, now: Instant) -> Vec<Peer> {
        let mut live: Vec<&Peer> = self
            .peers
            .iter()
            .filter(|p| Some(p.id.as_str()) != exclude && self.is_live(&p.id, now))
            .collect();
        live.sort_by_cached_key(|p| (std::cmp::Reverse(rendezvous(key, &p.id)), p.id.clone()));
        live.into_iter().cloned().collect()
    }

    /// Takes `id` out of the candidates for [`FAIL_COOLDOWN`] from `now`. Returns whether
    /// that is news (it was a candidate until now), so that concurrent failures of one
    /// dead peer are reported once.
    pub fn mark_failed(&mut self, id: &str, now: Instant) -> bool {
        let was_live = self.is_live(id, now);
        self.failed.insert(id.to_string(), now);
        was_live
    }

    fn is_live(&self, id: &str, now: Instant) -> bool {
        self.failed
            .get(id)
            .is_none_or(|t| now.saturating_duration_since(*t) >= FAIL_COOLDOWN)
    }

    pub fn mark_ok(&mut self, id: &str) {
        self.failed.remove(id);
    }
}

/// Rendezvous (highest random weight) score of `peer` for `key`.
fn rendezvous(key: &str, peer: &str) -> u64 {
    let mut h = Fnv64::default();
    h.update(key.as_bytes());
    // A byte no token contains, so ("ab", "c") and ("a", "bc") differ.
    h.update(&[0]);
    h.update(peer.as_bytes());
    mix(h.0)
}

/// The SplitMix64 finaliser: FNV-1a alone spreads short, similar strings poorly.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn cookie(s: &str) -> SessionCookie {
        SessionCookie::parse(s).unwrap_or_else(|| panic!("{s:?} does not parse"))
    }

    fn ids(list: &[&str]) -> impl FnMut() -> String {
        let mut list: Vec<String> = list.iter().rev().map(|s| s.to_string()).collect();
        move || list.pop().expect("enough ids")
    }

    fn update(b: Begin) -> Update {
        match b {
            Begin::Update(u) => u,
            Begin::Moved { owner } => panic!("moved to {owner}"),
        }
    }

    fn replica(session: &str, primary: &str, epoch: u64, counter: u64) -> Replica {
        Replica {
            session: session.into(),
            primary: primary.into(),
            epoch,
            counter,
            last_request: None,
        }
    }

    fn peers(list: &[&str]) -> Peers {
        let peers = list
            .iter()
            .enumerate()
            .map(|(i, id)| Peer {
                id: id.to_string(),
                addr: SocketAddr::from(([127, 0, 0, 1], 8000 + i as u16)),
            })
            .collect();
        Peers::new("self", peers).unwrap()
    }

    #[test]
    fn cookie_format_round_trip() {
        let c = SessionCookie {
            session: "0123abcd".into(),
            primary: "a".into(),
            secondary: Some("b".into()),
        };
        assert_eq!(c.to_string(), "0123abcd!a!b");
        assert_eq!(
            c.set_cookie("JSESSIONID"),
            "JSESSIONID=0123abcd!a!b; Path=/"
        );
        assert_eq!(cookie(&c.to_string()), c);
        let none = SessionCookie {
            secondary: None,
            ..c
        };
        assert_eq!(none.to_string(), "0123abcd!a!NONE");
        assert_eq!(cookie("0123abcd!a!NONE"), none);
        assert_eq!(cookie("0123abcd!a"), none);
    }

    #[test]
    fn cookie_odd_inputs() {
        assert_eq!(cookie(" \"s1!a!b\" ").session, "s1");
        assert_eq!(
            cookie("s1!a!b!more!segments").secondary.as_deref(),
            Some("b")
        );
        assert_eq!(cookie("s1!app-1.x!app:2").primary, "app-1.x");
        for bad in [
            "",
            "s1",
            "!a!b",
            "s1!!b",
            "s1!a!",
            "s1!NONE!b",
            "s 1!a!b",
            "s1!a b!c",
            "\"s1!a!b",
        ] {
            assert_eq!(SessionCookie::parse(bad), None, "{bad:?}");
        }
        let long = "x".repeat(MAX_TOKEN + 1);
        assert_eq!(SessionCookie::parse(&format!("{long}!a!b")), None);
    }

    #[test]
    fn cookie_from_headers() {
        let h = |v: &str| {
            vec![
                ("Host".to_string(), "x".to_string()),
                ("cookie".into(), v.into()),
            ]
        };
        let found = |v: &str| SessionCookie::from_headers(&h(v), "JSESSIONID");
        assert_eq!(found("JSESSIONID=s!a!b").unwrap().session, "s");
        assert_eq!(found("x=1; JSESSIONID = s!a!b ;y=2").unwrap().primary, "a");
        // Names are case-sensitive and whole; a malformed one does not hide a good one.
        assert_eq!(found("jsessionid=s!a!b"), None);
        assert_eq!(found("XJSESSIONID=s!a!b"), None);
        assert_eq!(
            found("JSESSIONID=junk; JSESSIONID=t!a!b").unwrap().session,
            "t"
        );
        assert_eq!(found("other=s!a!b"), None);
        let two = vec![
            ("Cookie".to_string(), "a=1".to_string()),
            ("Cookie".to_string(), "SID=s!a!b".to_string()),
        ];
        assert_eq!(
            SessionCookie::from_headers(&two, "SID").unwrap().session,
            "s"
        );
    }

    #[test]
    fn tokens_and_peers() {
        assert!(check_server_id("app1").is_ok());
        for bad in ["", "NONE", "a!b", "a;b", "a b", "a=b", "é"] {
            assert!(check_server_id(bad).is_err(), "{bad:?}");
        }
        let p: Peer = "b=127.0.0.1:8080".parse().unwrap();
        assert_eq!((p.id.as_str(), p.addr.port()), ("b", 8080));
        for bad in ["b", "b=", "=127.0.0.1:1", "b=127.0.0.1", "NONE=127.0.0.1:1"] {
            assert!(bad.parse::<Peer>().is_err(), "{bad:?}");
        }
        let two = |a: &str, b: &str| {
            let p = |id: &str| Peer {
                id: id.into(),
                addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            };
            Peers::new("self", vec![p(a), p(b)]).is_ok()
        };
        assert!(two("a", "b"));
        assert!(!two("a", "a"));
        assert!(!two("a", "self"));
    }

    #[test]
    fn session_ids_are_unique_hex() {
        let a = new_session_id();
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_session_id());
    }

    #[test]
    fn secondary_choice_is_deterministic_and_skips() {
        let p = peers(&["a", "b", "c", "d", "e"]);
        let now = Instant::now();
        fn order(p: &Peers, key: &str, exclude: Option<&str>, now: Instant) -> Vec<String> {
            p.candidates(key, exclude, now)
                .into_iter()
                .map(|p| p.id)
                .collect()
        }
        let full = order(&p, "s1", None, now);
        assert_eq!(full.len(), 5);
        assert_eq!(full, order(&p, "s1", None, now));
        // Different keys give different orders (spread); the peers' list order does not
        // matter.
        let firsts: std::collections::HashSet<String> = (0..50)
            .map(|i| order(&p, &format!("s{i}"), None, now)[0].clone())
            .collect();
        assert!(firsts.len() >= 4, "{firsts:?}");
        let mut reversed = p.all().to_vec();
        reversed.reverse();
        let r = Peers::new("self", reversed).unwrap();
        assert_eq!(order(&r, "s1", None, now), full);
        // Excluding or failing one keeps the others' order.
        let without_first: Vec<String> = full[1..].to_vec();
        assert_eq!(order(&p, "s1", Some(&full[0]), now), without_first);
        let mut q = peers(&["a", "b", "c", "d", "e"]);
        assert!(q.mark_failed(&full[0], now), "news");
        assert!(!q.mark_failed(&full[0], now), "known");
        assert_eq!(order(&q, "s1", None, now), without_first);
        assert_eq!(
            order(&q, "s1", None, now + FAIL_COOLDOWN),
            full,
            "back after the cooldown"
        );
        assert!(q.mark_failed(&full[0], now + FAIL_COOLDOWN), "news again");
        q.mark_ok(&full[0]);
        assert_eq!(order(&q, "s1", None, now), full);
    }

    #[test]
    fn new_and_continued_sessions() {
        let mut s = Store::new("a");
        let u = update(s.begin(None, None, ids(&["s1"])));
        assert_eq!(u.event, Event::New);
        assert_eq!(u.replica, replica("s1", "a", 0, 1));
        s.commit("s1", u.replica.version(), Some("b"));
        let c = cookie("s1!a!b");
        for n in 2..=5 {
            let u = update(s.begin(Some(&c), None, ids(&[])));
            assert_eq!((u.event.clone(), u.replica.counter), (Event::Continued, n));
        }
        // A cookie with another primary and secondary still continues a session held
        // here as primary (an older cookie, after a takeover by this server).
        let u = update(s.begin(Some(&cookie("s1!x!y")), None, ids(&[])));
        assert_eq!((u.event, u.replica.counter), (Event::Continued, 6));
        assert_eq!(
            s.get("s1").unwrap().role,
            Role::Primary {
                secondary: Some("b".into())
            }
        );
        assert_eq!(s.counts(), (1, 0));
        assert_eq!(s.stats.created, 1);
    }

    #[test]
    fn request_ids_make_retries_idempotent() {
        let mut s = Store::new("a");
        let u = update(s.begin(None, Some("r1"), ids(&["s1"])));
        assert_eq!(u.replica.last_request.as_deref(), Some("r1"));
        let c = cookie("s1!a!b");
        let again = update(s.begin(Some(&c), Some("r1"), ids(&[])));
        assert!(again.replayed);
        assert_eq!(again.replica.counter, 1);
        let next = update(s.begin(Some(&c), Some("r2"), ids(&[])));
        assert_eq!((next.replayed, next.replica.counter), (false, 2));
        // Without ids every request counts.
        let u = update(s.begin(Some(&c), None, ids(&[])));
        assert_eq!(u.replica.counter, 3);
        let u = update(s.begin(Some(&c), None, ids(&[])));
        assert_eq!(u.replica.counter, 4);
        assert_eq!(s.stats.replayed, 1);
    }

    #[test]
    fn takeover_only_by_the_named_secondary() {
        let mut b = Store::new("b");
        let mut r = replica("s1", "a", 0, 7);
        r.last_request = Some("r7".into());
        assert_eq!(b.receive(&r), Received::Stored);
        // Cookie names another secondary: this replica may be behind the real one.
        let u = update(b.begin(Some(&cookie("s1!a!c")), None, ids(&["n1"])));
        assert!(matches!(u.event, Event::Lost { .. }));
        assert_eq!((u.replica.session.as_str(), u.replica.counter), ("n1", 1));
        assert_eq!(b.stats.lost, 1);
        // Named secondary: takeover, next epoch, counter continues.
        let u = update(b.begin(Some(&cookie("s1!a!b")), Some("r8"), ids(&[])));
        assert_eq!(
            u.event,
            Event::Takeover {
                old_primary: "a".into()
            }
        );
        assert_eq!((u.replica.epoch, u.replica.counter), (1, 8));
        assert_eq!(u.replica.primary, "b");
        assert_eq!(b.stats.takeovers, 1);
        assert_eq!(b.get("s1").unwrap().role, Role::Primary { secondary: None });
        // The old cookie again (the client retried): now a normal update.
        let u = update(b.begin(Some(&cookie("s1!a!b")), None, ids(&[])));
        assert_eq!((u.event, u.replica.counter), (Event::Continued, 9));
        assert_eq!(b.stats.takeovers, 1);
    }

    #[test]
    fn takeover_replays_the_request_the_old_primary_replicated() {
        // The primary replicated r8 and died before answering; the client retries r8 at
        // the secondary, which answers counter 8 again instead of 9.
        let mut b = Store::new("b");
        let mut r = replica("s1", "a", 0, 8);
        r.last_request = Some("r8".into());
        b.receive(&r);
        let u = update(b.begin(Some(&cookie("s1!a!b")), Some("r8"), ids(&[])));
        assert!(matches!(u.event, Event::Takeover { .. }));
        assert_eq!(
            (u.replayed, u.replica.epoch, u.replica.counter),
            (true, 1, 8)
        );
    }

    #[test]
    fn unknown_sessions_are_lost() {
        let mut a = Store::new("a");
        for c in ["zz!a!b", "zz!b!a", "zz!b!c"] {
            let u = update(a.begin(Some(&cookie(c)), None, ids(&["n"])));
            assert_eq!(u.event, Event::Lost { cookie: cookie(c) }, "{c}");
            assert_ne!(u.replica.session, "zz");
            a.sessions.clear();
        }
        assert_eq!(a.stats.lost, 3);
    }

    #[test]
    fn stepped_down_primary_sends_clients_to_the_owner() {
        let mut a = Store::new("a");
        update(a.begin(None, None, ids(&["s1"])));
        // b took over (epoch 1) and replicates to a, which steps down.
        assert_eq!(a.receive(&replica("s1", "b", 1, 5)), Received::Stored);
        assert_eq!(
            a.begin(Some(&cookie("s1!a!b")), None, ids(&[])),
            Begin::Moved { owner: "b".into() }
        );
        assert_eq!(a.stats.conflicts, 1);
    }

    #[test]
    fn replicas_never_go_back() {
        let mut b = Store::new("b");
        assert_eq!(b.receive(&replica("s1", "a", 0, 3)), Received::Stored);
        assert_eq!(b.receive(&replica("s1", "a", 0, 3)), Received::Current);
        assert_eq!(b.receive(&replica("s1", "a", 0, 2)), Received::Current);
        assert_eq!(b.get("s1").unwrap().version.counter, 3);
        assert_eq!(b.receive(&replica("s1", "a", 0, 4)), Received::Stored);
        // A new owner (takeover elsewhere) replaces the replica even with a lower counter
        // (it cannot have one, but the epoch decides).
        assert_eq!(b.receive(&replica("s1", "c", 1, 4)), Received::Stored);
        assert_eq!(
            b.get("s1").unwrap().role,
            Role::Replica {
                primary: "c".into()
            }
        );
        // The old primary of epoch 0 is refused and told the owner.
        assert_eq!(
            b.receive(&replica("s1", "a", 0, 9)),
            Received::Stale { owner: "c".into() }
        );
        assert_eq!(
            b.get("s1").unwrap().version,
            Version {
                epoch: 1,
                counter: 4
            }
        );
        assert_eq!(b.stats.replicas_stored, 3);
        assert_eq!(b.stats.replicas_refused, 1);
        assert_eq!(b.counts(), (0, 1));
    }

    #[test]
    fn replica_of_a_session_held_as_primary() {
        // b took over s1 (epoch 1); the old primary a, cut off but alive, replicates its
        // epoch-0 state to b: refused, and a drops its stale copy.
        let mut b = Store::new("b");
        b.receive(&replica("s1", "a", 0, 4));
        update(b.begin(Some(&cookie("s1!a!b")), None, ids(&[])));
        assert_eq!(
            b.receive(&replica("s1", "a", 0, 9)),
            Received::Stale { owner: "b".into() }
        );
        // Same epoch, two owners: the holder keeps it.
        assert_eq!(
            b.receive(&replica("s1", "c", 1, 9)),
            Received::Stale { owner: "b".into() }
        );
        assert_eq!(
            b.get("s1").unwrap().version,
            Version {
                epoch: 1,
                counter: 5
            }
        );

        let mut a = Store::new("a");
        let u = update(a.begin(None, None, ids(&["s1"])));
        a.abandon("s1", u.replica.version());
        assert_eq!(a.get("s1"), None);
        assert_eq!(a.stats.conflicts, 1);
    }

    #[test]
    fn commit_keeps_the_newest_secondary() {
        let mut a = Store::new("a");
        let first = update(a.begin(None, None, ids(&["s1"])));
        let c = cookie("s1!a!b");
        let second = update(a.begin(Some(&c), None, ids(&[])));
        // The second update's replication finished first.
        a.commit("s1", second.replica.version(), Some("c"));
        a.commit("s1", first.replica.version(), Some("b"));
        assert_eq!(
            a.get("s1").unwrap().role,
            Role::Primary {
                secondary: Some("c".into())
            }
        );
        a.commit("s1", second.replica.version(), None);
        assert_eq!(a.get("s1").unwrap().role, Role::Primary { secondary: None });
        assert_eq!(a.stats.unreplicated, 1);
    }
}

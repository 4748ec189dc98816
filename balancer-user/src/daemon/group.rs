//! Signed group membership, after the "group manager" of Sun's highly available
//! computational service: every member (a backend agent started with `balancer agent`, or
//! a peer balancer) periodically sends a *host message* over UDP saying who it is, where
//! it is and how loaded it is. Receivers keep a table of the hosts heard from; a member
//! is TRUSTED when its messages are signed with the shared group key, and down when it
//! has not been heard from (with a trusted message) for longer than a limit.
//!
//! # Group key
//!
//! A text file holding at least [`MIN_KEY_LEN`] characters (surrounding whitespace is
//! trimmed), identical on every member, readable by its owner only (`chmod 600`): a file
//! that group or others may access is refused. `head -c 32 /dev/urandom | base64 > FILE`
//! makes one. [`GroupKey`] keeps only the HMAC state derived from it and never prints it.
//!
//! # Wire format
//!
//! One UDP datagram per message, at most [`MAX_DATAGRAM`] bytes (it fits an Ethernet MTU,
//! so it is never fragmented):
//!
//! ```text
//! b"BHM1" | payload: JSON of HostMessage | tag: HMAC-SHA256(key, b"BHM1" | payload), 32 bytes
//! ```
//!
//! The payload is the JSON of [`HostMessage`]; unknown fields are ignored so newer senders
//! can add fields. Fields are bounded so a message cannot bloat the table: name 1-64
//! visible ASCII characters, at most 16 interfaces with 1-15-character names and
//! prefixes 0-32, a load that is finite and non-negative, server tokens 1-64 visible
//! ASCII characters without `;`, `"` or `,`, a secondary token only next to a different
//! own token, and an address that is not unspecified, broadcast or multicast.
//! [`HostMessage::encode`] refuses to build what a receiver would reject; an agent with
//! too many interfaces drops the last ones ([`HostMessage::truncate_to_fit`]).
//!
//! `seq` is strictly increasing per sending process: [`run_sender`] stamps
//! `max(previous + 1, unix time in ms)`, so a restarted sender normally starts above
//! what its previous incarnation sent.
//!
//! # Trust rules ([`MemberTable::observe`])
//!
//! Checks, in order, each with its own [`Rejected`] reason and counter:
//! 1. size: over [`MAX_DATAGRAM`] is `Oversized`; shorter than magic + tag is
//!    `Truncated`; another magic is `Malformed`;
//! 2. signature, compared in constant time: a mismatch is `BadSignature`;
//! 3. payload: JSON that does not parse is `Malformed`, a field out of bounds `Invalid`;
//! 4. freshness: `timestamp_ms` more than `max_skew` behind the local clock is `Stale`,
//!    more than `max_skew` ahead is `Future`;
//! 5. replay: `seq` not above the last accepted one from that name is `Replayed`. The one
//!    exception is a sender restarted with a lower seq (its clock stepped back): once
//!    nothing was accepted from the name for `2 × max_skew`, every message accepted
//!    before is stale and cannot be replayed, so any fresh seq is accepted again.
//!
//! UDP has no challenge-response, so a genuine message that was captured before it
//! arrived can still be delivered late, but only within `max_skew` of its timestamp and
//! only once: the seq check stops repeats of anything already accepted.
//!
//! Only a message that passes all five makes a member trusted, refreshes its last-seen
//! and updates its facts (address, interfaces, tokens). A badly signed (or unsigned)
//! message never touches a trusted member: an attacker can neither keep a dead member
//! alive nor move it. If such a message still parses, it is kept as a separate
//! *untrusted* row for visibility (a member with the wrong key shows up instead of being
//! silently ignored, as in the Sun design where host messages are always accepted but
//! only signed ones are TRUSTED). Untrusted rows are bounded by `max_untrusted`, the
//! least recently seen one is evicted first, and a trusted message from the same name and
//! source address removes the row (the member's key was fixed). Messages from key holders
//! are not bounded: the key is what grants the right to be in the table.
//!
//! A member is *up* when it is trusted and its last-seen age is at most `limit`. The time
//! offset shown is the sender's timestamp minus the local clock at receipt.

use std::{
    collections::{BTreeMap, HashMap},
    ffi::CStr,
    fs::File,
    io::{self, Read as _},
    net::{Ipv4Addr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::{net::UdpSocket, time::MissedTickBehavior};
use tracing::{debug, info, warn};

/// Leading bytes of every host message (format version 1).
pub const MAGIC: &[u8; 4] = b"BHM1";
/// Length of the HMAC-SHA256 tag that ends every host message.
pub const TAG_LEN: usize = 32;
/// Largest datagram sent or accepted.
pub const MAX_DATAGRAM: usize = 1400;
/// Shortest group key, in characters.
pub const MIN_KEY_LEN: usize = 32;
/// Longest member name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Longest interface name, in bytes (Linux's IFNAMSIZ less the NUL).
pub const MAX_IFNAME_LEN: usize = 15;
/// Most interfaces in one message.
pub const MAX_INTERFACES: usize = 16;
/// Longest server-ID token, in bytes (the data plane's limit).
pub const MAX_TOKEN_LEN: usize = 64;
/// Highest load average accepted; anything above is a broken sender.
const MAX_LOAD: f32 = 1.0e6;
/// Receive buffer: larger than [`MAX_DATAGRAM`] so an oversized datagram is seen as
/// oversized rather than silently cut to an acceptable length.
const RECV_BUFFER: usize = 2048;
/// Pause after a receive error, so a persistent error does not spin the listener.
const RECV_ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// Rejections logged one by one per window; the rest are summed up.
const LOG_BURST: u32 = 5;
const LOG_WINDOW: Duration = Duration::from_secs(10);

type HmacSha256 = Hmac<Sha256>;

/// Errors of group membership, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("cannot read group key file {}: {source}", path.display())]
    KeyRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "group key file {} may be accessed by group or others (mode {mode:03o}): run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("group key file {} is not text: write the key as text, e.g. `head -c 32 /dev/urandom | base64 > {}`", path.display(), path.display())]
    KeyNotText { path: PathBuf },
    #[error("{what} is {len} characters long: a group key needs at least {MIN_KEY_LEN} (make one with `head -c 32 /dev/urandom | base64`)")]
    KeyTooShort { what: String, len: usize },
    #[error("invalid {field} in host message: {rule}")]
    InvalidMessage {
        field: &'static str,
        rule: &'static str,
    },
    #[error("host message is {len} bytes encoded, over the {MAX_DATAGRAM}-byte limit: shorten the name or tokens, or announce fewer interfaces")]
    MessageTooLarge { len: usize },
    #[error("encoding the host message: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("no address to send host messages to: give at least one balancer address")]
    NoTargets,
    #[error("cannot send host messages to {0}: only IPv4 addresses are supported")]
    Ipv6Target(SocketAddr),
    #[error("cannot send host messages to {0}: not a host address and port")]
    BadTarget(SocketAddr),
    #[error("host message interval {0:?} is too short: at least {MIN_INTERVAL:?}")]
    IntervalTooShort(std::time::Duration),
    #[error("no IPv4 address on a non-loopback interface to announce: give the agent's address explicitly")]
    NoAddress,
    #[error("binding a UDP socket for host messages: {0}")]
    Bind(#[source] io::Error),
}

/// The daemon's group membership errors travel through the library's one `Result` (the library
/// sits below the daemon and does not know this type).
impl From<GroupError> for crate::Error {
    fn from(e: GroupError) -> Self {
        crate::Error::Upper(Box::new(e))
    }
}

// ---------------------------------------------------------------------------------------
// Group key

/// The shared secret of the group. Holds the HMAC state derived from the key, not the
/// key text, and never shows either in `Debug`.
#[derive(Clone)]
pub struct GroupKey {
    mac: HmacSha256,
}

impl std::fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupKey(<redacted>)")
    }
}

impl GroupKey {
    /// Reads the key from a text file that only its owner may access.
    pub fn from_file(path: &Path) -> Result<GroupKey, GroupError> {
        let read_err = |source| GroupError::KeyRead {
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(read_err)?;
        // The mode of the opened file (fstat), so it cannot be swapped after the check.
        let mode = file.metadata().map_err(read_err)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(GroupError::KeyPermissions {
                path: path.to_owned(),
                mode,
            });
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(read_err)?;
        let text = String::from_utf8(bytes).map_err(|_| GroupError::KeyNotText {
            path: path.to_owned(),
        })?;
        Self::from_text(text.trim(), || format!("group key in {}", path.display()))
    }

    /// A key from bytes (tests, or keys from elsewhere); same minimum length as a file.
    pub fn from_bytes(bytes: &[u8]) -> Result<GroupKey, GroupError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(GroupError::KeyTooShort {
                what: "group key".into(),
                len: bytes.len(),
            });
        }
        Self::new(bytes)
    }

    fn from_text(text: &str, what: impl FnOnce() -> String) -> Result<GroupKey, GroupError> {
        let len = text.chars().count();
        if len < MIN_KEY_LEN {
            return Err(GroupError::KeyTooShort { what: what(), len });
        }
        Self::new(text.as_bytes())
    }

    fn new(bytes: &[u8]) -> Result<GroupKey, GroupError> {
        // HMAC takes keys of any length; this error cannot happen, but is not worth a panic.
        let mac = HmacSha256::new_from_slice(bytes).map_err(|_| GroupError::KeyTooShort {
            what: "group key".into(),
            len: bytes.len(),
        })?;
        Ok(GroupKey { mac })
    }

    fn tag(&self, signed: &[u8]) -> [u8; TAG_LEN] {
        self.mac
            .clone()
            .chain_update(signed)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Whether two keys are the same secret (compared through their tags of a fixed text,
    /// so neither key is exposed).
    pub fn same_as(&self, other: &GroupKey) -> bool {
        const PROBE: &[u8] = b"balancer group key comparison";
        self.tag(PROBE) == other.tag(PROBE)
    }

    /// Constant-time comparison, so the time taken tells nothing about the right tag.
    fn verifies(&self, signed: &[u8], tag: &[u8]) -> bool {
        self.mac
            .clone()
            .chain_update(signed)
            .verify_slice(tag)
            .is_ok()
    }
}

// ---------------------------------------------------------------------------------------
// Host message

/// Which kind of member sent a host message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A backend agent (`balancer agent`) next to an app server.
    Agent,
    /// A peer balancer.
    Balancer,
}

/// One IPv4 address of a member's interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceInfo {
    pub name: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
}

/// What a member announces about itself (the payload of a datagram).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostMessage {
    /// Member name, unique in the group (host name by default).
    pub name: String,
    /// Primary address of the member.
    pub addr: Ipv4Addr,
    pub interfaces: Vec<InterfaceInfo>,
    /// One-minute load average.
    pub load: f32,
    /// Sender's clock when sent, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Strictly increasing per sending process (replay protection).
    pub seq: u64,
    pub role: Role,
    /// Agents: the server-ID token the app server writes into session cookies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// Agents: the token of the server holding this server's replicated sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<String>,
}

/// A field out of bounds: which one and the rule it breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FieldError {
    field: &'static str,
    rule: &'static str,
}

impl From<FieldError> for GroupError {
    fn from(e: FieldError) -> Self {
        GroupError::InvalidMessage {
            field: e.field,
            rule: e.rule,
        }
    }
}

fn is_visible_ascii(s: &str, max_len: usize) -> bool {
    !s.is_empty() && s.len() <= max_len && s.bytes().all(|b| b.is_ascii_graphic())
}

/// A token must be writable into a cookie value, like a backend's `--server-id`.
fn is_token(s: &str) -> bool {
    is_visible_ascii(s, MAX_TOKEN_LEN) && !s.bytes().any(|b| matches!(b, b';' | b'"' | b','))
}

fn require(ok: bool, field: &'static str, rule: &'static str) -> Result<(), FieldError> {
    if ok {
        Ok(())
    } else {
        Err(FieldError { field, rule })
    }
}

impl HostMessage {
    /// Whether receivers would accept the fields (freshness and replay aside).
    pub fn validate(&self) -> Result<(), GroupError> {
        Ok(self.check()?)
    }

    fn check(&self) -> Result<(), FieldError> {
        require(
            is_visible_ascii(&self.name, MAX_NAME_LEN),
            "name",
            "use 1-64 visible ASCII characters",
        )?;
        let a = self.addr;
        require(
            !(a.is_unspecified() || a.is_broadcast() || a.is_multicast()),
            "addr",
            "must be a unicast address",
        )?;
        require(
            self.interfaces.len() <= MAX_INTERFACES,
            "interfaces",
            "at most 16 interfaces",
        )?;
        for i in &self.interfaces {
            require(
                is_visible_ascii(&i.name, MAX_IFNAME_LEN),
                "interface name",
                "use 1-15 visible ASCII characters",
            )?;
            require(i.prefix_len <= 32, "prefix_len", "must be 0-32")?;
        }
        require(
            self.load.is_finite() && (0.0..=MAX_LOAD).contains(&self.load),
            "load",
            "must be a finite, non-negative load average",
        )?;
        self.check_tokens()
    }

    fn check_tokens(&self) -> Result<(), FieldError> {
        const TOKEN_RULE: &str = "use 1-64 visible ASCII characters without ; \" or ,";
        if let Some(id) = &self.server_id {
            require(is_token(id), "server_id", TOKEN_RULE)?;
        }
        if let Some(secondary) = &self.secondary {
            require(is_token(secondary), "secondary", TOKEN_RULE)?;
            // A pair needs both ends, and a server cannot back itself up.
            require(
                self.server_id.as_ref().is_some_and(|id| id != secondary),
                "secondary",
                "needs a server_id, different from the secondary",
            )?;
        }
        Ok(())
    }

    /// The signed datagram, or why it cannot be sent.
    pub fn encode(&self, key: &GroupKey) -> Result<Vec<u8>, GroupError> {
        self.validate()?;
        let payload = serde_json::to_vec(self)?;
        let len = MAGIC.len() + payload.len() + TAG_LEN;
        if len > MAX_DATAGRAM {
            return Err(GroupError::MessageTooLarge { len });
        }
        let mut datagram = Vec::with_capacity(len);
        datagram.extend_from_slice(MAGIC);
        datagram.extend_from_slice(&payload);
        let tag = key.tag(&datagram);
        datagram.extend_from_slice(&tag);
        Ok(datagram)
    }

    /// The message in a datagram, if it is well formed and signed with `key`. Does not
    /// judge freshness or replay: that needs the receiver's state ([`MemberTable`]).
    pub fn decode(datagram: &[u8], key: &GroupKey) -> Result<HostMessage, Rejected> {
        let frame = Frame::split(datagram)?;
        if !key.verifies(frame.signed, frame.tag) {
            return Err(Rejected::BadSignature);
        }
        parse(frame.payload)
    }

    /// Drops interfaces (last first) until the message fits a datagram whatever the
    /// timestamp and seq stamped later, so an agent on a host with many interfaces still
    /// announces itself.
    pub fn truncate_to_fit(&mut self) {
        self.interfaces.truncate(MAX_INTERFACES);
        while self.worst_case_len() > MAX_DATAGRAM && self.interfaces.pop().is_some() {}
    }

    fn worst_case_len(&self) -> usize {
        let widest = HostMessage {
            timestamp_ms: u64::MAX,
            seq: u64::MAX,
            ..self.clone()
        };
        let payload = serde_json::to_vec(&widest).map_or(usize::MAX, |p| p.len());
        payload.saturating_add(MAGIC.len() + TAG_LEN)
    }
}

/// The parts of a datagram, before anything in it is trusted.
struct Frame<'a> {
    /// Magic and payload: what the tag covers.
    signed: &'a [u8],
    payload: &'a [u8],
    tag: &'a [u8],
}

impl<'a> Frame<'a> {
    fn split(datagram: &'a [u8]) -> Result<Frame<'a>, Rejected> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(Rejected::Oversized);
        }
        if datagram.len() < MAGIC.len() + TAG_LEN {
            return Err(Rejected::Truncated);
        }
        let (signed, tag) = datagram.split_at(datagram.len() - TAG_LEN);
        let Some(payload) = signed.strip_prefix(MAGIC.as_slice()) else {
            return Err(Rejected::Malformed);
        };
        Ok(Frame {
            signed,
            payload,
            tag,
        })
    }
}

fn parse(payload: &[u8]) -> Result<HostMessage, Rejected> {
    let msg: HostMessage = serde_json::from_slice(payload).map_err(|_| Rejected::Malformed)?;
    msg.check().map_err(|e| Rejected::Invalid(e.field))?;
    Ok(msg)
}

// ---------------------------------------------------------------------------------------
// Member table

/// Why a datagram was not accepted; each has a counter in [`Counters`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("datagram over {MAX_DATAGRAM} bytes")]
    Oversized,
    #[error("datagram too short for a signed host message")]
    Truncated,
    #[error("not a well-formed host message")]
    Malformed,
    #[error("bad signature (unsigned, or signed with another group key)")]
    BadSignature,
    #[error("timestamp too far behind the local clock")]
    Stale,
    #[error("timestamp too far ahead of the local clock")]
    Future,
    #[error("sequence number not above the last accepted one (replay)")]
    Replayed,
    #[error("field {0} out of bounds")]
    Invalid(&'static str),
}

/// What the table saw, by outcome, since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub accepted: u64,
    pub oversized: u64,
    pub truncated: u64,
    pub malformed: u64,
    pub bad_signature: u64,
    pub stale: u64,
    pub future: u64,
    pub replayed: u64,
    pub invalid: u64,
    /// Untrusted rows dropped to make room for newer ones.
    pub untrusted_evicted: u64,
}

impl Counters {
    fn count(&mut self, r: Rejected) {
        let c = match r {
            Rejected::Oversized => &mut self.oversized,
            Rejected::Truncated => &mut self.truncated,
            Rejected::Malformed => &mut self.malformed,
            Rejected::BadSignature => &mut self.bad_signature,
            Rejected::Stale => &mut self.stale,
            Rejected::Future => &mut self.future,
            Rejected::Replayed => &mut self.replayed,
            Rejected::Invalid(_) => &mut self.invalid,
        };
        *c += 1;
    }
}

/// Limits of a [`MemberTable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberSettings {
    /// A member is down once its last trusted message is older than this.
    pub limit: Duration,
    /// Largest accepted difference between a message's timestamp and the local clock.
    pub max_skew: Duration,
    /// Most untrusted rows kept (0: none).
    pub max_untrusted: usize,
}

impl Default for MemberSettings {
    fn default() -> Self {
        MemberSettings {
            // Sun's example limit.
            limit: Duration::from_secs(60),
            max_skew: Duration::from_secs(30),
            max_untrusted: 256,
        }
    }
}

/// An accepted message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub name: String,
    /// The member was not up before this message (new, or back after being down).
    pub became_up: bool,
}

/// One row of `balancer members`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberView {
    pub name: String,
    pub addr: Ipv4Addr,
    pub role: Role,
    /// Seconds since the row's last message.
    pub last_seen_s: f64,
    /// Sender's timestamp minus the local clock at receipt.
    pub time_offset_ms: i64,
    /// Signed with the group key; false for rows from badly signed messages.
    pub trusted: bool,
    /// Trusted and last seen within the limit.
    pub up: bool,
    pub load: f32,
    pub interfaces: Vec<InterfaceInfo>,
    pub server_id: Option<String>,
    pub secondary: Option<String>,
    /// Socket address the last message came from.
    pub source: SocketAddr,
}

/// What is known of a member from its last message.
#[derive(Clone, Debug)]
struct Member {
    msg: HostMessage,
    source: SocketAddr,
    last_seen: Instant,
    offset_ms: i64,
}

impl Member {
    fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_seen)
    }

    fn view(&self, trusted: bool, limit: Duration, now: Instant) -> MemberView {
        let m = &self.msg;
        MemberView {
            name: m.name.clone(),
            addr: m.addr,
            role: m.role,
            last_seen_s: self.age(now).as_secs_f64(),
            time_offset_ms: self.offset_ms,
            trusted,
            up: trusted && self.age(now) <= limit,
            load: m.load,
            interfaces: m.interfaces.clone(),
            server_id: m.server_id.clone(),
            secondary: m.secondary.clone(),
            source: self.source,
        }
    }
}

/// Rows from badly signed messages, bounded, least recently seen evicted first.
#[derive(Debug, Default)]
struct Untrusted {
    /// name -> (tick of the last update, member)
    rows: HashMap<String, (u64, Member)>,
    /// tick -> name, oldest first: O(log n) eviction even with a large bound.
    order: BTreeMap<u64, String>,
    next_tick: u64,
}

impl Untrusted {
    /// Records a row; returns how many rows were evicted to make room.
    fn record(&mut self, member: Member, cap: usize) -> u64 {
        if cap == 0 {
            return 0;
        }
        let name = member.msg.name.clone();
        if let Some((tick, _)) = self.rows.remove(&name) {
            self.order.remove(&tick);
        }
        let mut evicted = 0;
        while self.rows.len() >= cap {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.rows.remove(&oldest);
            evicted += 1;
        }
        let tick = self.next_tick;
        self.next_tick += 1;
        self.order.insert(tick, name.clone());
        self.rows.insert(name, (tick, member));
        evicted
    }

    /// Forgets `name`'s row if it came from `source`: the member now signs correctly.
    fn forget_from(&mut self, name: &str, source: SocketAddr) {
        if self.rows.get(name).is_some_and(|(_, m)| m.source == source) {
            if let Some((tick, _)) = self.rows.remove(name) {
                self.order.remove(&tick);
            }
        }
    }
}

/// The members heard from, with the trust rules of the module documentation.
#[derive(Debug)]
pub struct MemberTable {
    key: GroupKey,
    settings: MemberSettings,
    trusted: HashMap<String, Member>,
    untrusted: Untrusted,
    counters: Counters,
}

impl MemberTable {
    pub fn new(key: GroupKey, settings: MemberSettings) -> Self {
        MemberTable {
            key,
            settings,
            trusted: HashMap::new(),
            untrusted: Untrusted::default(),
            counters: Counters::default(),
        }
    }

    pub fn settings(&self) -> &MemberSettings {
        &self.settings
    }

    /// New settings and key (a reload). Members stay; with another key, nobody is
    /// trusted any more until they sign with it.
    pub fn reconfigure(&mut self, key: GroupKey, settings: MemberSettings) {
        if !self.key.same_as(&key) {
            self.trusted.clear();
            self.key = key;
        }
        self.settings = settings;
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Takes one received datagram. `now_unix_ms` is the local clock (for the sender's
    /// timestamp), `now` the monotonic clock (for last-seen ages).
    pub fn observe(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now_unix_ms: u64,
        now: Instant,
    ) -> Result<Observed, Rejected> {
        let result = self.try_accept(from, datagram, now_unix_ms, now);
        match result {
            Ok(_) => self.counters.accepted += 1,
            Err(r) => self.counters.count(r),
        }
        result
    }

    fn try_accept(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now_unix_ms: u64,
        now: Instant,
    ) -> Result<Observed, Rejected> {
        let frame = Frame::split(datagram)?;
        if !self.key.verifies(frame.signed, frame.tag) {
            self.record_untrusted(from, frame.payload, now_unix_ms, now);
            return Err(Rejected::BadSignature);
        }
        let msg = parse(frame.payload)?;
        let offset_ms = offset_ms(msg.timestamp_ms, now_unix_ms);
        self.check_fresh(offset_ms)?;
        self.check_new(&msg, now)?;
        Ok(self.accept(msg, from, offset_ms, now))
    }

    fn check_fresh(&self, offset_ms: i64) -> Result<(), Rejected> {
        let max = i64::try_from(self.settings.max_skew.as_millis()).unwrap_or(i64::MAX);
        if offset_ms < -max {
            Err(Rejected::Stale)
        } else if offset_ms > max {
            Err(Rejected::Future)
        } else {
            Ok(())
        }
    }

    fn check_new(&self, msg: &HostMessage, now: Instant) -> Result<(), Rejected> {
        let Some(last) = self.trusted.get(&msg.name) else {
            return Ok(());
        };
        // After 2 × max_skew of silence every accepted message is stale, so a lower seq
        // cannot be one of them replayed: it is the sender restarted (module docs).
        let replays_expired = last.age(now) > self.settings.max_skew.saturating_mul(2);
        if msg.seq > last.msg.seq || replays_expired {
            Ok(())
        } else {
            Err(Rejected::Replayed)
        }
    }

    fn accept(
        &mut self,
        msg: HostMessage,
        from: SocketAddr,
        offset_ms: i64,
        now: Instant,
    ) -> Observed {
        let became_up = !self.is_up(&msg.name, now);
        self.untrusted.forget_from(&msg.name, from);
        let name = msg.name.clone();
        let member = Member {
            msg,
            source: from,
            last_seen: now,
            offset_ms,
        };
        self.trusted.insert(name.clone(), member);
        Observed { name, became_up }
    }

    /// Keeps a badly signed message that still parses as a row for the operator to see.
    fn record_untrusted(
        &mut self,
        from: SocketAddr,
        payload: &[u8],
        now_unix_ms: u64,
        now: Instant,
    ) {
        let Ok(msg) = parse(payload) else {
            return;
        };
        let member = Member {
            offset_ms: offset_ms(msg.timestamp_ms, now_unix_ms),
            msg,
            source: from,
            last_seen: now,
        };
        self.counters.untrusted_evicted +=
            self.untrusted.record(member, self.settings.max_untrusted);
    }

    /// Whether `name` is trusted and seen within the limit.
    pub fn is_up(&self, name: &str, now: Instant) -> bool {
        self.trusted
            .get(name)
            .is_some_and(|m| m.age(now) <= self.settings.limit)
    }

    /// Every row, trusted and untrusted, sorted by name (a trusted row before an
    /// untrusted one of the same name).
    pub fn members(&self, now: Instant) -> Vec<MemberView> {
        let limit = self.settings.limit;
        let trusted = self.trusted.values().map(|m| m.view(true, limit, now));
        let untrusted = self
            .untrusted
            .rows
            .values()
            .map(|(_, m)| m.view(false, limit, now));
        let mut rows: Vec<MemberView> = trusted.chain(untrusted).collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name).then(b.trusted.cmp(&a.trusted)));
        rows
    }

    /// The last message of every member that is up (trusted, seen within the limit).
    pub fn trusted_up(&self, now: Instant) -> impl Iterator<Item = &HostMessage> + '_ {
        let limit = self.settings.limit;
        self.trusted
            .values()
            .filter(move |m| m.age(now) <= limit)
            .map(|m| &m.msg)
    }

    /// Replication pairs (primary token, secondary token) announced by agents that are
    /// up, sorted and without duplicates.
    pub fn announced_pairs(&self, now: Instant) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = self
            .trusted_up(now)
            .filter(|m| m.role == Role::Agent)
            .filter_map(|m| Some((m.server_id.clone()?, m.secondary.clone()?)))
            .collect();
        pairs.sort();
        pairs.dedup();
        pairs
    }
}

/// Sender's timestamp minus the local clock, saturated to i64.
fn offset_ms(timestamp_ms: u64, now_unix_ms: u64) -> i64 {
    let diff = i128::from(timestamp_ms) - i128::from(now_unix_ms);
    i64::try_from(diff).unwrap_or(if diff < 0 { i64::MIN } else { i64::MAX })
}

/// The local clock in ms since the Unix epoch (0 if it is set before 1970).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

// ---------------------------------------------------------------------------------------
// Network I/O

/// Lets a few log lines through per window and counts the rest, so a flood of junk
/// cannot flood the logs.
struct LogLimiter {
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

impl LogLimiter {
    fn new(now: Instant) -> Self {
        LogLimiter {
            window_start: now,
            logged: 0,
            suppressed: 0,
        }
    }

    /// Whether to log one more line now; closes the window (reporting what was
    /// suppressed in it) once it has passed.
    fn allow(&mut self, now: Instant, what: &str) -> bool {
        if now.saturating_duration_since(self.window_start) >= LOG_WINDOW {
            if self.suppressed > 0 {
                debug!(
                    suppressed = self.suppressed,
                    "{what}: more not logged in the last {LOG_WINDOW:?}"
                );
            }
            *self = LogLimiter::new(now);
        }
        if self.logged < LOG_BURST {
            self.logged += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

fn lock(table: &Mutex<MemberTable>) -> MutexGuard<'_, MemberTable> {
    // A panic elsewhere while holding the lock leaves a table that is still consistent
    // (observe only inserts whole rows), so keep going rather than panic too.
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Receives host messages forever and feeds them to `table`. Never returns; bad
/// datagrams and receive errors are counted or logged at debug level, rate-limited.
pub async fn run_listener(socket: Arc<UdpSocket>, table: Arc<Mutex<MemberTable>>) {
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut rejections = LogLimiter::new(Instant::now());
    let mut errors = LogLimiter::new(Instant::now());
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                if errors.allow(Instant::now(), "receive errors") {
                    debug!(error = %e, "receiving a host message");
                }
                tokio::time::sleep(RECV_ERROR_BACKOFF).await;
                continue;
            }
        };
        let now = Instant::now();
        let datagram = &buf[..len];
        let result = lock(&table).observe(from, datagram, unix_ms(), now);
        match result {
            Ok(o) if o.became_up => info!(member = %o.name, %from, "group member is up"),
            Ok(_) => {}
            Err(reason) => {
                if rejections.allow(now, "rejected host messages") {
                    debug!(%from, %reason, "rejected host message");
                }
            }
        }
    }
}

/// Next sequence number of this process: above the previous one and at least the
/// current Unix time in ms, so a restarted process starts above its predecessor.
fn next_seq(now_unix_ms: u64) -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let next = |prev: u64| prev.saturating_add(1).max(now_unix_ms);
    match LAST.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| Some(next(p))) {
        Ok(prev) | Err(prev) => next(prev),
    }
}

/// Logs the first failure after a success as a warning (and recovery as info), the
/// repeats at debug level only, so a dead target does not fill the logs.
fn report_send(failing: &mut bool, target: SocketAddr, result: io::Result<usize>) {
    match result {
        Ok(_) if *failing => {
            info!(%target, "sending host messages works again");
            *failing = false;
        }
        Ok(_) => {}
        Err(e) if *failing => debug!(%target, error = %e, "sending a host message"),
        Err(e) => {
            warn!(%target, error = %e, "sending a host message (repeats logged at debug level)");
            *failing = true;
        }
    }
}

/// Sends a host message to every target every `interval`, forever, starting at once.
/// `build` supplies the facts; the timestamp and seq are stamped here. Errors are logged
/// and sending goes on.
pub async fn run_sender(
    socket: UdpSocket,
    targets: Vec<SocketAddr>,
    key: GroupKey,
    interval: Duration,
    build: impl Fn() -> HostMessage,
) {
    // tokio's interval panics on a zero period.
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = vec![false; targets.len()];
    let mut encode_failing = false;
    loop {
        ticker.tick().await;
        let mut msg = build();
        msg.timestamp_ms = unix_ms();
        msg.seq = next_seq(msg.timestamp_ms);
        let datagram = match msg.encode(&key) {
            Ok(d) => {
                encode_failing = false;
                d
            }
            Err(e) => {
                if !std::mem::replace(&mut encode_failing, true) {
                    warn!(error = %e, "cannot build the host message; retrying every interval");
                }
                continue;
            }
        };
        for (target, failing) in targets.iter().zip(&mut failing) {
            let result = socket.send_to(&datagram, target).await;
            report_send(failing, *target, result);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Agent

/// IPv4 addresses of the local interfaces, loopback excluded, in kernel order. Names
/// that a host message cannot carry are skipped.
pub fn local_interfaces() -> Vec<InterfaceInfo> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list that we free with freeifaddrs below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        // SAFETY: the node's pointers come from getifaddrs and are valid or null.
        if let Some(info) = unsafe { interface_info(ifa) } {
            out.push(info);
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and nothing borrowed from it outlives this.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// # Safety
/// The pointers of `ifa` must be null or valid, as getifaddrs returns them.
unsafe fn interface_info(ifa: &libc::ifaddrs) -> Option<InterfaceInfo> {
    if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
        return None;
    }
    // SAFETY: a non-null ifa_addr points to a sockaddr, which starts with its family.
    if i32::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_INET
        || ifa.ifa_flags & libc::IFF_LOOPBACK as libc::c_uint != 0
    {
        return None;
    }
    // SAFETY: an AF_INET address is a sockaddr_in.
    let ip = unsafe { ipv4_of(ifa.ifa_addr) };
    let prefix_len = if ifa.ifa_netmask.is_null() {
        32
    } else {
        // SAFETY: the netmask of an AF_INET address is a sockaddr_in too.
        u32::from(unsafe { ipv4_of(ifa.ifa_netmask) }).count_ones() as u8
    };
    // SAFETY: ifa_name is a NUL-terminated string.
    let name = unsafe { CStr::from_ptr(ifa.ifa_name) }.to_str().ok()?;
    if !is_visible_ascii(name, MAX_IFNAME_LEN) || ip.is_loopback() {
        return None;
    }
    Some(InterfaceInfo {
        name: name.to_owned(),
        ip,
        prefix_len,
    })
}

/// # Safety
/// `sa` must point to a `sockaddr_in`.
unsafe fn ipv4_of(sa: *const libc::sockaddr) -> Ipv4Addr {
    // read_unaligned: a sockaddr is not guaranteed to be aligned as a sockaddr_in.
    let sin = unsafe { std::ptr::read_unaligned(sa.cast::<libc::sockaddr_in>()) };
    Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))
}

/// The one-minute load average from /proc/loadavg (0 if unreadable: a missing load
/// must not stop the member from announcing itself).
pub fn load_average() -> f32 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .filter(|l: &f32| l.is_finite() && *l >= 0.0)
        .unwrap_or(0.0)
}

/// The host name, as the default member name (empty if unavailable).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its length; the name is NUL-terminated when it
    // fits, and the last byte stays 0 otherwise.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if rc != 0 {
        return String::new();
    }
    CStr::from_bytes_until_nul(&buf)
        .ok()
        .and_then(|c| c.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// What `balancer agent` runs with.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Member name (see [`hostname`] for a default).
    pub name: String,
    /// File holding the group key.
    pub group_key: PathBuf,
    /// Balancers to send host messages to.
    pub send_to: Vec<SocketAddr>,
    pub interval: Duration,
    /// The app server's server-ID token.
    pub server_id: Option<String>,
    /// The token of the app server's replication secondary.
    pub secondary: Option<String>,
    /// Address to announce; by default that of the first non-loopback interface.
    pub addr: Option<Ipv4Addr>,
}

/// Runs a backend agent: checks the options and the key, then announces the local host
/// forever. Returns only on a configuration error, before anything is sent.
pub async fn run_agent(opts: AgentOptions) -> Result<(), GroupError> {
    let key = GroupKey::from_file(&opts.group_key)?;
    check_targets(&opts.send_to)?;
    check_interval(opts.interval)?;
    let addr = match opts.addr {
        Some(a) => a,
        None => local_interfaces()
            .first()
            .map(|i| i.ip)
            .ok_or(GroupError::NoAddress)?,
    };
    let template = HostMessage {
        name: opts.name,
        addr,
        interfaces: Vec::new(),
        load: 0.0,
        timestamp_ms: 0,
        seq: 0,
        role: Role::Agent,
        server_id: opts.server_id,
        secondary: opts.secondary,
    };
    template.validate()?;
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .await
        .map_err(GroupError::Bind)?;
    info!(name = %template.name, %addr, targets = ?opts.send_to, "agent announcing itself");
    // Interfaces and load are read afresh for every message: they change.
    let build = move || {
        let mut msg = template.clone();
        msg.interfaces = local_interfaces();
        msg.load = load_average();
        msg.truncate_to_fit();
        msg
    };
    run_sender(socket, opts.send_to, key, opts.interval, build).await;
    Ok(())
}

/// Shortest interval between host messages: shorter is a flood, not a heartbeat.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

fn check_targets(targets: &[SocketAddr]) -> Result<(), GroupError> {
    if targets.is_empty() {
        return Err(GroupError::NoTargets);
    }
    targets.iter().try_for_each(|t| check_target(*t))
}

/// A balancer address host messages can be sent to: IPv4, a host (not unspecified,
/// broadcast or multicast), a port.
pub fn check_target(t: SocketAddr) -> Result<(), GroupError> {
    let SocketAddr::V4(v4) = t else {
        return Err(GroupError::Ipv6Target(t));
    };
    let ip = v4.ip();
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || v4.port() == 0 {
        return Err(GroupError::BadTarget(t));
    }
    Ok(())
}

/// A sending interval that is a heartbeat, not a flood.
pub fn check_interval(interval: Duration) -> Result<(), GroupError> {
    if interval < MIN_INTERVAL {
        return Err(GroupError::IntervalTooShort(interval));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The local clock of most tests, in ms since the epoch.
    const NOW_MS: u64 = 1_700_000_000_000;

    fn key() -> GroupKey {
        GroupKey::from_bytes(b"correct horse battery staple 0123456789").unwrap()
    }

    fn other_key() -> GroupKey {
        GroupKey::from_bytes(b"another group, another secret, 0123456789").unwrap()
    }

    fn src() -> SocketAddr {
        "10.0.0.5:40000".parse().unwrap()
    }

    fn msg(name: &str, seq: u64, timestamp_ms: u64) -> HostMessage {
        HostMessage {
            name: name.into(),
            addr: Ipv4Addr::new(10, 0, 0, 5),
            interfaces: vec![InterfaceInfo {
                name: "eth0".into(),
                ip: Ipv4Addr::new(10, 0, 0, 5),
                prefix_len: 24,
            }],
            load: 0.25,
            timestamp_ms,
            seq,
            role: Role::Agent,
            server_id: Some("app1".into()),
            secondary: Some("app2".into()),
        }
    }

    fn datagram(name: &str, seq: u64, timestamp_ms: u64) -> Vec<u8> {
        msg(name, seq, timestamp_ms).encode(&key()).unwrap()
    }

    fn table() -> MemberTable {
        MemberTable::new(key(), MemberSettings::default())
    }

    /// A correctly signed frame around any payload (encode refuses invalid messages).
    fn sign_raw(payload: &[u8]) -> Vec<u8> {
        let mut d = MAGIC.to_vec();
        d.extend_from_slice(payload);
        let tag = key().tag(&d);
        d.extend_from_slice(&tag);
        d
    }

    fn trusted_names(t: &MemberTable, now: Instant) -> Vec<String> {
        let mut names: Vec<String> = t.trusted_up(now).map(|m| m.name.clone()).collect();
        names.sort();
        names
    }

    fn view<'a>(rows: &'a [MemberView], name: &str, trusted: bool) -> &'a MemberView {
        rows.iter()
            .find(|r| r.name == name && r.trusted == trusted)
            .unwrap()
    }

    /// xorshift64: deterministic pseudo-random bytes without a crate.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    #[test]
    fn round_trip() {
        let m = msg("app1", 7, NOW_MS);
        let d = m.encode(&key()).unwrap();
        assert!(d.starts_with(MAGIC) && d.len() <= MAX_DATAGRAM);
        assert_eq!(HostMessage::decode(&d, &key()).unwrap(), m);

        let mut t = table();
        let now = Instant::now();
        let o = t.observe(src(), &d, NOW_MS - 1500, now).unwrap();
        assert_eq!(
            o,
            Observed {
                name: "app1".into(),
                became_up: true
            }
        );
        let rows = t.members(now);
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert!(r.trusted && r.up);
        assert_eq!((r.addr, r.role, r.source), (m.addr, Role::Agent, src()));
        assert_eq!(r.time_offset_ms, 1500, "sender's clock minus ours");
        assert_eq!(r.interfaces, m.interfaces);
        assert_eq!(r.server_id.as_deref(), Some("app1"));
        assert_eq!(t.counters().accepted, 1);
        // The view is what `balancer members --json` prints.
        let json = serde_json::to_value(&rows).unwrap();
        assert_eq!(json[0]["role"], "agent");
        assert_eq!(json[0]["addr"], "10.0.0.5");
    }

    #[test]
    fn reconfiguring_keeps_members_unless_the_key_changes() {
        let mut t = table();
        let now = Instant::now();
        t.observe(src(), &datagram("app1", 1, NOW_MS), NOW_MS, now)
            .unwrap();
        let longer = MemberSettings {
            limit: Duration::from_secs(90),
            ..MemberSettings::default()
        };
        t.reconfigure(key(), longer);
        assert_eq!(trusted_names(&t, now), ["app1"]);
        assert_eq!(t.settings().limit, Duration::from_secs(90));
        assert!(key().same_as(&key()) && !key().same_as(&other_key()));
        t.reconfigure(other_key(), longer);
        assert!(trusted_names(&t, now).is_empty(), "trust needs the new key");
        let d = msg("app1", 2, NOW_MS).encode(&other_key()).unwrap();
        t.observe(src(), &d, NOW_MS, now).unwrap();
        assert_eq!(trusted_names(&t, now), ["app1"]);
    }

    #[test]
    fn wrong_key_is_bad_signature_and_never_trusted() {
        let d = msg("app1", 1, NOW_MS).encode(&other_key()).unwrap();
        assert_eq!(HostMessage::decode(&d, &key()), Err(Rejected::BadSignature));
        let mut t = table();
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(
                t.observe(src(), &d, NOW_MS, now),
                Err(Rejected::BadSignature)
            );
        }
        assert!(trusted_names(&t, now).is_empty());
        assert!(!t.is_up("app1", now));
        assert!(t.announced_pairs(now).is_empty());
        // Visible, but as an untrusted row that is not up.
        let rows = t.members(now);
        assert_eq!(rows.len(), 1);
        assert!(!rows[0].trusted && !rows[0].up);
        assert_eq!(t.counters().bad_signature, 3);
        assert_eq!(t.counters().accepted, 0);
    }

    #[test]
    fn unsigned_and_truncated_are_rejected_at_every_length() {
        let d = datagram("app1", 1, NOW_MS);
        let mut t = table();
        let now = Instant::now();
        for len in 0..d.len() {
            let r = t.observe(src(), &d[..len], NOW_MS, now);
            assert!(r.is_err(), "accepted a datagram cut to {len} bytes");
        }
        // The payload without any tag.
        let unsigned = &d[..d.len() - TAG_LEN];
        assert!(t.observe(src(), unsigned, NOW_MS, now).is_err());
        // A zeroed tag.
        let mut zero_tag = d.clone();
        zero_tag[d.len() - TAG_LEN..].fill(0);
        assert_eq!(
            t.observe(src(), &zero_tag, NOW_MS, now),
            Err(Rejected::BadSignature)
        );
        assert!(trusted_names(&t, now).is_empty());
        assert!(t.counters().truncated >= (MAGIC.len() + TAG_LEN) as u64);
        // The intact datagram is still good: nothing above consumed its seq.
        assert!(t.observe(src(), &d, NOW_MS, now).is_ok());
    }

    #[test]
    fn oversized_is_rejected_and_never_built() {
        let mut t = table();
        let now = Instant::now();
        for len in [MAX_DATAGRAM + 1, RECV_BUFFER, 65_507] {
            let mut d = datagram("app1", 1, NOW_MS);
            d.resize(len, b' ');
            assert_eq!(t.observe(src(), &d, NOW_MS, now), Err(Rejected::Oversized));
        }
        assert_eq!(t.counters().oversized, 3);

        // The largest message the bounds allow does not fit: encode refuses it...
        let mut big = msg(&"n".repeat(MAX_NAME_LEN), u64::MAX, u64::MAX);
        big.server_id = Some("s".repeat(MAX_TOKEN_LEN));
        big.secondary = Some("t".repeat(MAX_TOKEN_LEN));
        big.interfaces = (0..MAX_INTERFACES)
            .map(|i| InterfaceInfo {
                name: format!("{i:0>15}"),
                ip: Ipv4Addr::new(255, 255, 255, 254),
                prefix_len: 32,
            })
            .collect();
        big.load = 123_456.79;
        assert!(matches!(
            big.encode(&key()),
            Err(GroupError::MessageTooLarge { len }) if len > MAX_DATAGRAM
        ));
        // ...and truncate_to_fit drops just enough interfaces.
        big.truncate_to_fit();
        assert!(big.interfaces.len() < MAX_INTERFACES && !big.interfaces.is_empty());
        let d = big.encode(&key()).unwrap();
        assert!(d.len() <= MAX_DATAGRAM);
        assert_eq!(HostMessage::decode(&d, &key()).unwrap(), big);
    }

    #[test]
    fn same_datagram_twice_is_replayed() {
        let d = datagram("app1", 5, NOW_MS);
        let mut t = table();
        let now = Instant::now();
        assert!(t.observe(src(), &d, NOW_MS, now).is_ok());
        let later = now + Duration::from_secs(1);
        assert_eq!(
            t.observe(src(), &d, NOW_MS + 1000, later),
            Err(Rejected::Replayed)
        );
        assert_eq!(t.counters().replayed, 1);
        // The replay did not refresh the member.
        let rows = t.members(later);
        assert_eq!(rows[0].last_seen_s, 1.0);
    }

    #[test]
    fn older_seq_is_replayed_newer_is_accepted() {
        let mut t = table();
        let now = Instant::now();
        assert!(t
            .observe(src(), &datagram("app1", 10, NOW_MS), NOW_MS, now)
            .is_ok());
        let older = datagram("app1", 9, NOW_MS + 1);
        assert_eq!(
            t.observe(src(), &older, NOW_MS, now),
            Err(Rejected::Replayed)
        );
        let newer = datagram("app1", 11, NOW_MS + 2);
        let o = t.observe(src(), &newer, NOW_MS, now).unwrap();
        assert!(!o.became_up, "it was up already");
        // Another name has its own sequence.
        assert!(t
            .observe(src(), &datagram("app2", 1, NOW_MS), NOW_MS, now)
            .is_ok());
    }

    #[test]
    fn restarted_sender_with_lower_seq_is_accepted_after_replays_expire() {
        let mut t = table();
        let t0 = Instant::now();
        assert!(t
            .observe(src(), &datagram("app1", 1000, NOW_MS), NOW_MS, t0)
            .is_ok());
        // Within 2 x max_skew of the last accepted message, a lower seq may be a replay.
        let t1 = t0 + Duration::from_secs(59);
        let early = datagram("app1", 5, NOW_MS + 59_000);
        assert_eq!(
            t.observe(src(), &early, NOW_MS + 59_000, t1),
            Err(Rejected::Replayed)
        );
        // After that, every accepted message is stale: a lower seq is a restart.
        let t2 = t0 + Duration::from_secs(61);
        let late = datagram("app1", 6, NOW_MS + 61_000);
        assert!(t.observe(src(), &late, NOW_MS + 61_000, t2).is_ok());
        // And the old incarnation's messages are stale by now.
        let old = datagram("app1", 1001, NOW_MS);
        assert_eq!(
            t.observe(src(), &old, NOW_MS + 61_000, t2),
            Err(Rejected::Stale)
        );
    }

    #[test]
    fn far_future_and_stale_timestamps_are_rejected() {
        let mut t = table();
        let now = Instant::now();
        let cases = [
            (NOW_MS + 31_000, Err(Rejected::Future)),
            (u64::MAX, Err(Rejected::Future)),
            (NOW_MS - 31_000, Err(Rejected::Stale)),
            (0, Err(Rejected::Stale)),
        ];
        for (seq, (ts, expected)) in cases.into_iter().enumerate() {
            let d = datagram("app1", seq as u64 + 1, ts);
            assert_eq!(
                t.observe(src(), &d, NOW_MS, now).map(|_| ()),
                expected,
                "{ts}"
            );
        }
        assert!(trusted_names(&t, now).is_empty());
        assert_eq!((t.counters().future, t.counters().stale), (2, 2));
        // Within the skew either way is fine.
        assert!(t
            .observe(src(), &datagram("app1", 10, NOW_MS + 29_000), NOW_MS, now)
            .is_ok());
        assert!(t
            .observe(src(), &datagram("app1", 11, NOW_MS - 29_000), NOW_MS, now)
            .is_ok());
    }

    #[test]
    fn bad_signature_does_not_refresh_nor_move_a_trusted_member() {
        let mut t = table();
        let t0 = Instant::now();
        assert!(t
            .observe(src(), &datagram("app1", 1, NOW_MS), NOW_MS, t0)
            .is_ok());

        let attacker: SocketAddr = "192.0.2.66:1234".parse().unwrap();
        let t1 = t0 + Duration::from_secs(50);
        let mut forged = msg("app1", 2, NOW_MS + 50_000);
        forged.addr = Ipv4Addr::new(192, 0, 2, 66);
        let d = forged.encode(&other_key()).unwrap();
        assert_eq!(
            t.observe(attacker, &d, NOW_MS + 50_000, t1),
            Err(Rejected::BadSignature)
        );

        let rows = t.members(t1);
        let good = view(&rows, "app1", true);
        assert_eq!(good.last_seen_s, 50.0);
        assert_eq!(good.addr, Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(good.source, src());
        // The forgery is visible as a separate, untrusted row.
        let bad = view(&rows, "app1", false);
        assert_eq!(
            (bad.addr, bad.source, bad.up),
            (forged.addr, attacker, false)
        );
        // Forgeries cannot keep the member alive past the limit.
        let t2 = t0 + Duration::from_secs(61);
        let d = msg("app1", 3, NOW_MS + 61_000)
            .encode(&other_key())
            .unwrap();
        assert!(t.observe(attacker, &d, NOW_MS + 61_000, t2).is_err());
        assert!(!t.is_up("app1", t2));
    }

    #[test]
    fn member_goes_down_after_the_limit_and_comes_back() {
        let mut t = table();
        let t0 = Instant::now();
        assert!(t
            .observe(src(), &datagram("app1", 1, NOW_MS), NOW_MS, t0)
            .is_ok());
        assert!(t.is_up("app1", t0 + Duration::from_secs(60)));
        assert_eq!(t.announced_pairs(t0), vec![("app1".into(), "app2".into())]);

        let t1 = t0 + Duration::from_secs(61);
        assert!(!t.is_up("app1", t1));
        let rows = t.members(t1);
        assert!(
            rows[0].trusted && !rows[0].up,
            "still known to be in the group"
        );
        assert!(trusted_names(&t, t1).is_empty());
        assert!(t.announced_pairs(t1).is_empty());

        let d = datagram("app1", 2, NOW_MS + 61_000);
        let o = t.observe(src(), &d, NOW_MS + 61_000, t1).unwrap();
        assert!(o.became_up);
        assert!(t.is_up("app1", t1));
    }

    #[test]
    fn untrusted_rows_stay_bounded_under_a_flood() {
        let mut t = table();
        let now = Instant::now();
        let max = t.settings().max_untrusted;
        for i in 0..10_000u64 {
            let from = SocketAddr::from(([192, 0, 2, (i % 250) as u8], 1000 + (i % 60_000) as u16));
            let d = msg(&format!("junk{i}"), i, NOW_MS)
                .encode(&other_key())
                .unwrap();
            assert_eq!(
                t.observe(from, &d, NOW_MS, now),
                Err(Rejected::BadSignature)
            );
        }
        assert_eq!(t.untrusted.rows.len(), max);
        assert_eq!(t.untrusted.order.len(), max);
        assert_eq!(t.counters().untrusted_evicted, 10_000 - max as u64);
        assert!(trusted_names(&t, now).is_empty());
        // The most recent ones are kept.
        let rows = t.members(now);
        assert!(rows.iter().any(|r| r.name == "junk9999"));
        assert!(!rows.iter().any(|r| r.name == "junk0"));

        let mut none = MemberTable::new(
            key(),
            MemberSettings {
                max_untrusted: 0,
                ..MemberSettings::default()
            },
        );
        let d = msg("junk", 1, NOW_MS).encode(&other_key()).unwrap();
        assert!(none.observe(src(), &d, NOW_MS, now).is_err());
        assert!(none.members(now).is_empty());
    }

    #[test]
    fn untrusted_row_is_dropped_once_the_same_sender_signs_correctly() {
        let mut t = table();
        let now = Instant::now();
        let wrong = msg("app1", 1, NOW_MS).encode(&other_key()).unwrap();
        assert!(t.observe(src(), &wrong, NOW_MS, now).is_err());
        assert_eq!(t.members(now).len(), 1);
        assert!(t
            .observe(src(), &datagram("app1", 2, NOW_MS), NOW_MS, now)
            .is_ok());
        let rows = t.members(now);
        assert_eq!(rows.len(), 1);
        assert!(rows[0].trusted);
    }

    #[test]
    fn signed_but_malformed_or_invalid_payloads_are_rejected() {
        let mut t = table();
        let now = Instant::now();
        let junk = sign_raw(b"{not json");
        assert_eq!(
            t.observe(src(), &junk, NOW_MS, now),
            Err(Rejected::Malformed)
        );
        let mut other_magic = datagram("app1", 1, NOW_MS);
        other_magic[3] = b'2';
        assert_eq!(
            t.observe(src(), &other_magic, NOW_MS, now),
            Err(Rejected::Malformed)
        );

        type Breaker = fn(&mut HostMessage);
        let invalid: [(&str, Breaker); 9] = [
            ("name", |m| m.name = "two words".into()),
            ("name", |m| m.name = "x".repeat(65)),
            ("name", |m| m.name = String::new()),
            ("addr", |m| m.addr = Ipv4Addr::UNSPECIFIED),
            ("interfaces", |m| {
                m.interfaces = vec![m.interfaces[0].clone(); 17]
            }),
            ("prefix_len", |m| m.interfaces[0].prefix_len = 33),
            ("load", |m| m.load = -1.0),
            ("server_id", |m| m.server_id = Some("a;b".into())),
            ("secondary", |m| m.server_id = None),
        ];
        for (i, (field, break_it)) in invalid.into_iter().enumerate() {
            let mut m = msg("app1", 100 + i as u64, NOW_MS);
            break_it(&mut m);
            assert!(matches!(
                m.encode(&key()),
                Err(GroupError::InvalidMessage { .. })
            ));
            let d = sign_raw(&serde_json::to_vec(&m).unwrap());
            assert_eq!(
                t.observe(src(), &d, NOW_MS, now),
                Err(Rejected::Invalid(field))
            );
        }
        let mut same = msg("app1", 1, NOW_MS);
        same.secondary = same.server_id.clone();
        assert!(same.validate().is_err(), "a server cannot back itself up");
        assert!(trusted_names(&t, now).is_empty());
        assert_eq!(t.counters().invalid, 9);
        assert_eq!(t.counters().malformed, 2);
    }

    #[test]
    fn random_bytes_never_panic_nor_trust() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut t = table();
        let now = Instant::now();
        let valid = datagram("app1", 1, NOW_MS);
        for i in 0..20_000 {
            let d = match i % 3 {
                // Pure noise, any length up to beyond the limit.
                0 => {
                    let len = rng.below(MAX_DATAGRAM + 100);
                    rng.bytes(len)
                }
                // Noise behind the right magic, to get past the first check.
                1 => {
                    let len = rng.below(MAX_DATAGRAM);
                    let mut d = MAGIC.to_vec();
                    d.extend(rng.bytes(len));
                    d
                }
                // A valid datagram with a few bytes flipped.
                _ => {
                    let mut d = valid.clone();
                    for _ in 0..1 + rng.below(4) {
                        let at = rng.below(d.len());
                        d[at] ^= 1 + rng.below(255) as u8;
                    }
                    // Two flips of one byte can cancel out: keep it changed.
                    if d == valid {
                        d[0] ^= 1;
                    }
                    d
                }
            };
            let r = t.observe(src(), &d, NOW_MS, now);
            assert!(r.is_err(), "accepted {d:?}");
        }
        assert!(trusted_names(&t, now).is_empty());
        assert!(t.untrusted.rows.len() <= t.settings().max_untrusted);
        let c = t.counters();
        let rejected = c.oversized + c.truncated + c.malformed + c.bad_signature + c.invalid;
        assert_eq!(rejected + c.stale + c.future + c.replayed, 20_000);
    }

    #[test]
    fn announced_pairs_come_from_trusted_agents_only() {
        let mut t = table();
        let now = Instant::now();
        let mut balancer = msg("lb2", 1, NOW_MS);
        balancer.role = Role::Balancer;
        let mut lone = msg("app3", 1, NOW_MS);
        lone.secondary = None;
        let mut second = msg("app2", 1, NOW_MS);
        (second.server_id, second.secondary) = (Some("app2".into()), Some("app1".into()));
        for m in [msg("app1", 1, NOW_MS), second, balancer, lone] {
            assert!(t
                .observe(src(), &m.encode(&key()).unwrap(), NOW_MS, now)
                .is_ok());
        }
        let forged = msg("app9", 1, NOW_MS).encode(&other_key()).unwrap();
        assert!(t.observe(src(), &forged, NOW_MS, now).is_err());
        assert_eq!(
            t.announced_pairs(now),
            vec![
                ("app1".into(), "app2".into()),
                ("app2".into(), "app1".into())
            ]
        );
        let names: Vec<String> = t.members(now).into_iter().map(|r| r.name).collect();
        assert_eq!(
            names,
            ["app1", "app2", "app3", "app9", "lb2"],
            "sorted by name"
        );
    }

    fn key_file(name: &str, text: &str, mode: u32) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("balancer-group-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn key_file_rules() {
        let secret = "s3cret-s3cret-s3cret-s3cret-s3cret";
        let good = key_file("good", &format!("  {secret}\n"), 0o600);
        let k = GroupKey::from_file(&good).unwrap();
        // Whitespace around the key is not part of it.
        let d = msg("app1", 1, NOW_MS).encode(&k).unwrap();
        let same = GroupKey::from_bytes(secret.as_bytes()).unwrap();
        assert!(HostMessage::decode(&d, &same).is_ok());
        assert!(!format!("{k:?}").contains("s3cret"));

        let open = key_file("open", secret, 0o644);
        let e = GroupKey::from_file(&open).unwrap_err();
        assert!(matches!(e, GroupError::KeyPermissions { mode: 0o644, .. }));
        assert!(e.to_string().contains("chmod 600"), "{e}");

        let short = key_file("short", "tooshort\n", 0o600);
        let e = GroupKey::from_file(&short).unwrap_err();
        assert!(matches!(e, GroupError::KeyTooShort { len: 8, .. }), "{e}");
        assert!(e.to_string().contains("at least 32"), "{e}");

        let missing = std::env::temp_dir().join("balancer-group-no-such-key");
        assert!(matches!(
            GroupKey::from_file(&missing),
            Err(GroupError::KeyRead { .. })
        ));
        assert!(GroupKey::from_bytes(b"short").is_err());
        for p in [good, open, short] {
            std::fs::remove_file(p).unwrap();
        }
    }

    #[test]
    fn seq_increases_and_starts_from_the_clock() {
        let a = next_seq(NOW_MS);
        let b = next_seq(NOW_MS);
        assert!(a >= NOW_MS && b > a);
        assert!(next_seq(0) > b, "never goes back when the clock does");
    }

    #[test]
    fn log_limiter_lets_a_burst_through_per_window() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(t0);
        let allowed = (0..1000).filter(|_| l.allow(t0, "test")).count();
        assert_eq!(allowed, LOG_BURST as usize);
        assert!(l.allow(t0 + LOG_WINDOW, "test"));
    }

    #[test]
    fn local_facts() {
        for i in local_interfaces() {
            assert!(!i.ip.is_loopback(), "{i:?}");
            assert!(i.prefix_len <= 32 && is_visible_ascii(&i.name, MAX_IFNAME_LEN));
        }
        let load = load_average();
        assert!(load.is_finite() && load >= 0.0);
        assert!(!hostname().contains('\0'));
    }

    #[test]
    fn agent_options_are_checked_before_sending() {
        assert!(matches!(check_targets(&[]), Err(GroupError::NoTargets)));
        let v6: SocketAddr = "[::1]:7000".parse().unwrap();
        assert!(matches!(
            check_targets(&[v6]),
            Err(GroupError::Ipv6Target(_))
        ));
        for bad in [
            "0.0.0.0:7946",
            "127.0.0.1:0",
            "255.255.255.255:1",
            "224.0.0.1:1",
        ] {
            assert!(
                matches!(
                    check_targets(&[bad.parse().unwrap()]),
                    Err(GroupError::BadTarget(_))
                ),
                "{bad}"
            );
        }
        assert!(check_interval(Duration::ZERO).is_err());
        assert!(check_interval(MIN_INTERVAL).is_ok());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let opts = AgentOptions {
            name: "app1".into(),
            group_key: std::env::temp_dir().join("balancer-group-no-such-key"),
            send_to: vec!["127.0.0.1:9".parse().unwrap()],
            interval: Duration::from_secs(1),
            server_id: None,
            secondary: None,
            addr: None,
        };
        assert!(matches!(
            rt.block_on(run_agent(opts)),
            Err(GroupError::KeyRead { .. })
        ));
    }

    #[test]
    fn tasks_can_be_spawned() {
        fn assert_send<T: Send + 'static>(_: T) {}
        let opts = AgentOptions {
            name: "app1".into(),
            group_key: PathBuf::new(),
            send_to: Vec::new(),
            interval: Duration::from_secs(1),
            server_id: None,
            secondary: None,
            addr: None,
        };
        assert_send(run_agent(opts));
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let socket = UdpSocket::from_std(socket).unwrap();
        assert_send(run_listener(
            Arc::new(socket),
            Arc::new(Mutex::new(table())),
        ));
    }

    #[tokio::test]
    async fn loopback_sender_becomes_trusted_and_wrong_key_never_does() {
        let interval = Duration::from_millis(250);
        let listen = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let target = listen.local_addr().unwrap();
        let table = Arc::new(Mutex::new(table()));
        let listener = tokio::spawn(run_listener(Arc::new(listen), table.clone()));

        let spawn_sender = |name: &'static str, key: GroupKey| {
            let build = move || HostMessage {
                addr: Ipv4Addr::LOCALHOST,
                ..msg(name, 0, 0)
            };
            tokio::spawn(async move {
                let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                run_sender(socket, vec![target], key, interval, build).await;
            })
        };
        let start = Instant::now();
        let good = spawn_sender("good", key());
        let intruder = spawn_sender("intruder", other_key());

        // Messages go out at once and then every interval; allow a couple of them.
        let deadline = start + 2 * interval;
        while !lock(&table).is_up("good", Instant::now()) {
            assert!(Instant::now() < deadline, "not trusted within 2 intervals");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = start.elapsed();
        // A few more rounds: the intruder stays untrusted, the good member stays up.
        tokio::time::sleep(2 * interval).await;
        {
            let t = lock(&table);
            let now = Instant::now();
            assert_eq!(trusted_names(&t, now), ["good"]);
            let rows = t.members(now);
            let intruder_row = view(&rows, "intruder", false);
            assert!(!intruder_row.up);
            assert!(!rows.iter().any(|r| r.name == "intruder" && r.trusted));
            assert!(t.counters().accepted >= 3, "{:?}", t.counters());
            assert_eq!(t.counters().replayed, 0);
            assert!(t.counters().bad_signature >= 2, "{:?}", t.counters());
        }
        eprintln!("trusted after {elapsed:?}");
        for task in [good, intruder, listener] {
            task.abort();
        }
    }
}

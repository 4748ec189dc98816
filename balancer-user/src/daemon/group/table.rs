//! The member table: the trust rules applied to each datagram, and who is up.

use std::{
    collections::{BTreeMap, HashMap},
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::{
    message::{parse, Frame},
    *,
};

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
    pub(super) fn count(&mut self, r: Rejected) {
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
pub(super) struct Member {
    msg: HostMessage,
    source: SocketAddr,
    last_seen: Instant,
    offset_ms: i64,
}

impl Member {
    fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_seen)
    }

    pub(super) fn view(&self, trusted: bool, limit: Duration, now: Instant) -> MemberView {
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
pub(super) struct Untrusted {
    /// name -> (tick of the last update, member)
    pub(super) rows: HashMap<String, (u64, Member)>,
    /// tick -> name, oldest first: O(log n) eviction even with a large bound.
    pub(super) order: BTreeMap<u64, String>,
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
    pub(super) untrusted: Untrusted,
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

//! The session store of one app server: versions, owners and replicas, updates and takeovers.

use super::*;

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
    pub(super) sessions: HashMap<String, Entry>,
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
pub(crate) fn apply(entry: &mut Entry, request_id: Option<&str>) -> bool {
    if request_id.is_some() && entry.last_request.as_deref() == request_id {
        return true;
    }
    entry.version.counter += 1;
    entry.last_request = request_id.map(str::to_string);
    false
}

pub(crate) fn replica_of(server_id: &str, session: &str, entry: &Entry) -> Replica {
    Replica {
        session: session.to_string(),
        primary: server_id.to_string(),
        epoch: entry.version.epoch,
        counter: entry.version.counter,
        last_request: entry.last_request.clone(),
    }
}

pub(crate) fn owner_of(server_id: &str, entry: &Entry) -> String {
    match &entry.role {
        Role::Primary { .. } => server_id.to_string(),
        Role::Replica { primary } => primary.clone(),
    }
}

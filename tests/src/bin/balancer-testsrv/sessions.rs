//! The session endpoints, replication to peers and takeovers.

use super::*;

/// Session mode: the replicated app server (see the module documentation).
pub(crate) struct Sessions {
    pub(crate) server_id: String,
    pub(crate) cookie_name: String,
    pub(crate) choice: SecondaryChoice,
    /// Connect, write and read timeout of one replication.
    pub(crate) timeout: Duration,
    pub(crate) store: Mutex<Store>,
    pub(crate) peers: Mutex<Peers>,
    /// Idle keep-alive connections to each peer, by peer id.
    pub(crate) pool: Mutex<HashMap<String, Vec<Conn>>>,
}

/// Where a session update's replica went.
pub(crate) enum Replication {
    /// Acknowledged by this peer, or by none (`None`: answered without a replica).
    Acked(Option<String>),
    /// A peer says `owner` took the session over: this server's copy is stale.
    Refused { owner: String },
}

/// The body of a session answer.
#[derive(Serialize)]
pub(crate) struct Answer<'a> {
    pub(crate) server: &'a str,
    pub(crate) session: &'a str,
    pub(crate) counter: u64,
    pub(crate) secondary: Option<&'a str>,
    pub(crate) event: &'static str,
    pub(crate) replayed: bool,
}

/// `GET /_sessions`.
#[derive(Serialize)]
pub(crate) struct Summary<'a> {
    pub(crate) server: &'a str,
    /// Sessions held as primary.
    pub(crate) primary: usize,
    /// Sessions held as replica.
    pub(crate) replicas: usize,
    #[serde(flatten)]
    pub(crate) stats: &'a Stats,
}

impl Sessions {
    pub(crate) fn new(server_id: &str, args: &Args) -> Result<Sessions> {
        let peers = Peers::new(server_id, args.peers.clone()).map_err(anyhow::Error::msg)?;
        Ok(Sessions {
            server_id: server_id.to_string(),
            cookie_name: args.cookie_name.clone(),
            choice: args.secondary_choice,
            timeout: Duration::from_millis(args.replicate_timeout_ms.max(1)),
            store: Mutex::new(Store::new(server_id)),
            peers: Mutex::new(peers),
            pool: Mutex::new(HashMap::new()),
        })
    }

    /// The session routes; `None` for the others (served as in plain mode).
    pub(crate) fn route(
        &self,
        req: &Request,
        top: Option<&str>,
        rest: Option<&str>,
    ) -> Option<Response> {
        let response = match (req.method.as_str(), top, rest) {
            ("GET" | "POST", Some("session"), _) => self.serve(req),
            (_, Some("session"), _) => Response::text(405, "GET or POST a session\n"),
            ("POST", Some("_replicate"), None) => self.receive(req),
            ("GET", Some("_sessions"), None) => self.summary(),
            ("GET", Some("_sessions"), Some(id)) => self.show(id),
            _ => return None,
        };
        Some(response)
    }

    /// A client request on a session: update, replicate, answer.
    pub(crate) fn serve(&self, req: &Request) -> Response {
        let request_id = req.header("x-request-id");
        if let Some(Err(why)) = request_id.map(|id| check_token("request id", id)) {
            return Response::text(400, format!("{why}\n"));
        }
        let cookie = SessionCookie::from_headers(&req.headers, &self.cookie_name);
        let begun = lock(&self.store).begin(cookie.as_ref(), request_id, new_session_id);
        let update = match begun {
            Begin::Update(u) => u,
            Begin::Moved { owner } => return moved(&owner),
        };
        let exclude = match &update.event {
            // The session came here because its primary did not answer: do not make it
            // the new secondary, nor anyone's for a while.
            Event::Takeover { old_primary } => {
                lock(&self.peers).mark_failed(old_primary, Instant::now());
                Some(old_primary.as_str())
            }
            _ => None,
        };
        let replica = &update.replica;
        match self.replicate(replica, exclude) {
            Replication::Acked(secondary) => {
                lock(&self.store).commit(&replica.session, replica.version(), secondary.as_deref());
                self.answer(&update, secondary)
            }
            Replication::Refused { owner } => {
                lock(&self.store).abandon(&replica.session, replica.version());
                moved(&owner)
            }
        }
    }

    /// The `200` answer to an update whose replica is on `secondary`.
    pub(crate) fn answer(&self, update: &Update, secondary: Option<String>) -> Response {
        let r = &update.replica;
        let body = Answer {
            server: &self.server_id,
            session: &r.session,
            counter: r.counter,
            secondary: secondary.as_deref(),
            event: update.event.name(),
            replayed: update.replayed,
        };
        let response = Response::json(200, &body);
        let cookie = SessionCookie {
            session: r.session.clone(),
            primary: self.server_id.clone(),
            secondary,
        };
        let response = response.header("Set-Cookie", cookie.set_cookie(&self.cookie_name));
        match update.event {
            Event::Lost { .. } => response.header("X-Session-Lost", 1),
            _ => response,
        }
    }

    /// Sends the replica to the first candidate peer that acknowledges it. Each failure
    /// takes that peer out of the candidates for a while (`FAIL_COOLDOWN`).
    pub(crate) fn replicate(&self, replica: &Replica, exclude: Option<&str>) -> Replication {
        let key = match self.choice {
            SecondaryChoice::Partner => &self.server_id,
            SecondaryChoice::Session => &replica.session,
        };
        let candidates = lock(&self.peers).candidates(key, exclude, Instant::now());
        let body = serde_json::to_vec(replica).expect("serialising to JSON cannot fail");
        for peer in candidates {
            match self.send(&peer, &body) {
                Ok(Replication::Acked(_)) => {
                    lock(&self.peers).mark_ok(&peer.id);
                    lock(&self.store).stats.replications_sent += 1;
                    return Replication::Acked(Some(peer.id));
                }
                Ok(refused) => return refused,
                Err(e) => {
                    lock(&self.store).stats.replications_failed += 1;
                    if lock(&self.peers).mark_failed(&peer.id, Instant::now()) {
                        eprintln!(
                            "balancer-testsrv {}: replication to {} ({}) failed, \
                             not using it for {FAIL_COOLDOWN:?}: {e:#}",
                            self.server_id, peer.id, peer.addr
                        );
                    }
                }
            }
        }
        Replication::Acked(None)
    }

    /// One `POST /_replicate` to `peer`, on a pooled connection if there is one.
    pub(crate) fn send(&self, peer: &Peer, body: &[u8]) -> Result<Replication> {
        let pooled = lock(&self.pool).get_mut(&peer.id).and_then(Vec::pop);
        if let Some(conn) = pooled {
            // The peer may have closed it since; replicas are idempotent, so the retry
            // on a fresh connection below is safe even if this one got through.
            if let Ok(outcome) = self.exchange(&peer.id, conn, body) {
                return Ok(outcome);
            }
        }
        let conn = Conn::connect_timeout(peer.addr, self.timeout)?;
        conn.stream().set_read_timeout(Some(self.timeout))?;
        conn.stream().set_write_timeout(Some(self.timeout))?;
        self.exchange(&peer.id, conn, body)
    }

    pub(crate) fn exchange(
        &self,
        peer_id: &str,
        mut conn: Conn,
        body: &[u8],
    ) -> Result<Replication> {
        let headers = [("Content-Type", "application/json")];
        let resp = conn.request("POST", "/_replicate", &headers, body)?;
        let outcome = match resp.status {
            200 => Replication::Acked(Some(peer_id.to_string())),
            409 => Replication::Refused {
                owner: resp
                    .header("x-session-owner")
                    .unwrap_or_default()
                    .to_string(),
            },
            status => bail!("status {status}: {}", resp.text()),
        };
        if !resp.closes() {
            let mut pool = lock(&self.pool);
            let idle = pool.entry(peer_id.to_string()).or_default();
            if idle.len() < MAX_POOLED {
                idle.push(conn);
            }
        }
        Ok(outcome)
    }

    /// `POST /_replicate`.
    pub(crate) fn receive(&self, req: &Request) -> Response {
        let replica = match parse_replica(req) {
            Ok(r) => r,
            Err(why) => return Response::text(400, format!("{why}\n")),
        };
        match lock(&self.store).receive(&replica) {
            Received::Stored | Received::Current => Response::text(200, "ok\n"),
            Received::Stale { owner } => Response::text(409, format!("session owned by {owner}\n"))
                .header("X-Session-Owner", owner),
        }
    }

    pub(crate) fn summary(&self) -> Response {
        let store = lock(&self.store);
        let (primary, replicas) = store.counts();
        Response::json(
            200,
            &Summary {
                server: &self.server_id,
                primary,
                replicas,
                stats: &store.stats,
            },
        )
    }

    /// `GET /_sessions/SESSION`.
    pub(crate) fn show(&self, session: &str) -> Response {
        match lock(&self.store).get(session) {
            Some(entry) => Response::json(200, entry),
            None => Response::text(404, format!("no session {session:?} here\n")),
        }
    }
}

pub(crate) fn parse_replica(req: &Request) -> Result<Replica, String> {
    let body = req
        .body
        .data
        .as_deref()
        .ok_or("a replica is a small JSON body")?;
    let replica: Replica = serde_json::from_slice(body).map_err(|e| format!("replica: {e}"))?;
    check_token("session id", &replica.session)?;
    check_server_id(&replica.primary)?;
    if let Some(id) = &replica.last_request {
        check_token("request id", id)?;
    }
    Ok(replica)
}

/// `409`: `owner` holds the session now; the client's cookie is out of date.
pub(crate) fn moved(owner: &str) -> Response {
    let body = serde_json::json!({ "error": "session moved", "owner": owner });
    Response::json(409, &body).header("X-Session-Owner", owner)
}

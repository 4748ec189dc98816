//! The other app servers of a cluster and the choice of a session's secondary.

use super::*;

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
pub(crate) fn rendezvous(key: &str, peer: &str) -> u64 {
    let mut h = Fnv64::default();
    h.update(key.as_bytes());
    // A byte no token contains, so ("ab", "c") and ("a", "bc") differ.
    h.update(&[0]);
    h.update(peer.as_bytes());
    mix(h.0)
}

/// The SplitMix64 finaliser: FNV-1a alone spreads short, similar strings poorly.
pub(crate) fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

//! The failover rewrite, as a pure function of health, drain flags and replication
//! pairs (so that every rule here is unit-tested without a data plane).
//!
//! Rules:
//! - A backend takes new flows (state UP) only when its health checks pass, it is not
//!   drained, and it is not in hold-down. A failed backend is DOWN, a drained one
//!   DRAINING; both leave the Maglev tables, which the library rebuilds with minimal
//!   disruption.
//! - A cookie-mode backend P that does not take new flows has its sessions rewritten to
//!   its secondary S (the replication partner holding their state) when S takes new
//!   flows; otherwise no rewrite, and the policy picks a server for P's sessions.
//! - When P passes its checks again while its sessions are rewritten, it stays out of
//!   service for the hold-down time and the rewrite stays: sessions still naming P are
//!   served by S, which holds their state, and P gets no new sessions that the rewrite
//!   would then send elsewhere. After the hold-down P is UP and the rewrite goes.

use std::{
    collections::HashMap,
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use crate::model::{BackendState, ServiceAddr};

use super::pairs::PairTable;

/// A backend as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendView {
    pub service: ServiceAddr,
    pub endpoint: SocketAddrV4,
    /// Server-ID token (cookie-mode services).
    pub token: Option<String>,
    /// Health checks pass (backends not yet checked count as healthy).
    pub healthy: bool,
    /// Drained by the operator (configuration).
    pub drain: bool,
}

pub type BackendKey = (ServiceAddr, SocketAddrV4);

/// What the data plane should hold for one backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub state: BackendState,
    /// The backend that takes this one's cookie sessions.
    pub failover_to: Option<SocketAddrV4>,
    /// In hold-down after recovering (for logs and `status`).
    pub held: bool,
}

/// Remembers rewrites and recoveries between plans.
#[derive(Debug)]
pub struct Planner {
    hold_down: Duration,
    /// Backends whose sessions are rewritten, and since when they pass their checks again.
    rewritten: HashMap<BackendKey, Option<Instant>>,
}

impl Planner {
    /// `adopted`: backends whose sessions the data plane already rewrites (a restarted
    /// daemon continues their hold-down rather than dropping the rewrite).
    pub fn new(hold_down: Duration, adopted: impl IntoIterator<Item = BackendKey>) -> Self {
        Planner {
            hold_down,
            rewritten: adopted.into_iter().map(|k| (k, None)).collect(),
        }
    }

    pub fn set_hold_down(&mut self, hold_down: Duration) {
        self.hold_down = hold_down;
    }

    /// The earliest time a hold-down ends, so the daemon can plan again then.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.rewritten
            .values()
            .flatten()
            .map(|since| *since + self.hold_down)
            .min()
    }

    pub fn plan(
        &mut self,
        now: Instant,
        backends: &[BackendView],
        pairs: &PairTable,
    ) -> HashMap<BackendKey, Desired> {
        let key = |b: &BackendView| (b.service, b.endpoint);
        self.rewritten
            .retain(|k, _| backends.iter().any(|b| key(b) == *k));
        let mut out: HashMap<BackendKey, Desired> = HashMap::new();
        for b in backends {
            let held = self.held(key(b), b.healthy, now);
            let state = if !b.healthy {
                BackendState::Down
            } else if b.drain {
                BackendState::Draining
            } else if held {
                BackendState::Down
            } else {
                BackendState::Up
            };
            out.insert(
                key(b),
                Desired {
                    state,
                    failover_to: None,
                    held,
                },
            );
        }
        for b in backends {
            if out[&key(b)].state == BackendState::Up {
                self.rewritten.remove(&key(b));
                continue;
            }
            let target = secondary_of(b, backends, pairs)
                .filter(|s| out[&(s.service, s.endpoint)].state == BackendState::Up)
                .map(|s| s.endpoint);
            match target {
                Some(_) => {
                    self.rewritten.entry(key(b)).or_insert(None);
                }
                None => {
                    self.rewritten.remove(&key(b));
                }
            }
            if let Some(d) = out.get_mut(&key(b)) {
                d.failover_to = target;
            }
        }
        out
    }

    /// Whether a backend is kept out after recovering: it passes its checks, its sessions
    /// are rewritten, and the hold-down since it recovered has not passed.
    fn held(&mut self, key: BackendKey, healthy: bool, now: Instant) -> bool {
        let Some(since) = self.rewritten.get_mut(&key) else {
            return false;
        };
        if !healthy {
            *since = None;
            return false;
        }
        let recovered = *since.get_or_insert(now);
        if now.duration_since(recovered) < self.hold_down {
            return true;
        }
        self.rewritten.remove(&key);
        false
    }
}

/// The backend of the same service whose token is `b`'s secondary.
fn secondary_of<'a>(
    b: &BackendView,
    backends: &'a [BackendView],
    pairs: &PairTable,
) -> Option<&'a BackendView> {
    let token = b.token.as_deref()?;
    let (secondary, _) = pairs.secondary(b.service, token)?;
    backends.iter().find(|o| {
        o.service == b.service && o.endpoint != b.endpoint && o.token.as_deref() == Some(secondary)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::addr::Proto;
    use BackendState::{Down as DOWN, Draining as DRAINING, Up as UP};

    const HOLD: Duration = Duration::from_secs(10);

    fn svc() -> ServiceAddr {
        ServiceAddr::parse("198.18.0.10:80", Proto::Tcp).unwrap()
    }

    fn ep(n: u8) -> SocketAddrV4 {
        SocketAddrV4::new([198, 18, 1, n].into(), 8080)
    }

    fn view(n: u8, token: &str) -> BackendView {
        BackendView {
            service: svc(),
            endpoint: ep(n),
            token: Some(token.into()),
            healthy: true,
            drain: false,
        }
    }

    /// a -> b -> c -> a.
    fn ring_pairs() -> PairTable {
        let mut p = PairTable::default();
        p.set_config([
            (svc(), "a".to_string(), "b".to_string()),
            (svc(), "b".to_string(), "c".to_string()),
            (svc(), "c".to_string(), "a".to_string()),
        ]);
        p
    }

    fn three() -> Vec<BackendView> {
        vec![view(1, "a"), view(2, "b"), view(3, "c")]
    }

    fn get(plan: &HashMap<BackendKey, Desired>, n: u8) -> &Desired {
        &plan[&(svc(), ep(n))]
    }

    #[test]
    fn healthy_backends_are_up_without_rewrites() {
        let mut p = Planner::new(HOLD, []);
        let plan = p.plan(Instant::now(), &three(), &ring_pairs());
        for n in 1..=3 {
            assert_eq!(get(&plan, n).state, UP);
            assert_eq!(get(&plan, n).failover_to, None);
        }
        assert_eq!(p.next_deadline(), None);
    }

    #[test]
    fn failed_primary_goes_to_its_secondary_then_hold_down_then_back() {
        let t0 = Instant::now();
        let mut p = Planner::new(HOLD, []);
        let pairs = ring_pairs();
        let mut bs = three();
        bs[0].healthy = false;
        let plan = p.plan(t0, &bs, &pairs);
        assert_eq!(get(&plan, 1).state, DOWN);
        assert_eq!(get(&plan, 1).failover_to, Some(ep(2)));
        assert_eq!(get(&plan, 2).failover_to, None);

        // Recovered: held for HOLD with the rewrite in place.
        bs[0].healthy = true;
        let t1 = t0 + Duration::from_secs(5);
        let plan = p.plan(t1, &bs, &pairs);
        assert!(get(&plan, 1).held);
        assert_eq!(get(&plan, 1).state, DOWN);
        assert_eq!(get(&plan, 1).failover_to, Some(ep(2)));
        assert_eq!(p.next_deadline(), Some(t1 + HOLD));
        let plan = p.plan(t1 + HOLD - Duration::from_millis(1), &bs, &pairs);
        assert!(get(&plan, 1).held);

        // Hold-down over: up, rewrite removed.
        let plan = p.plan(t1 + HOLD, &bs, &pairs);
        assert_eq!(get(&plan, 1).state, UP);
        assert_eq!(get(&plan, 1).failover_to, None);
        assert_eq!(p.next_deadline(), None);
    }

    #[test]
    fn failing_again_during_hold_down_restarts_it() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut p = Planner::new(HOLD, []);
        let pairs = ring_pairs();
        let mut bs = three();
        for (t, healthy) in [(0, false), (1, true), (2, false), (3, true)] {
            bs[0].healthy = healthy;
            p.plan(at(t), &bs, &pairs);
        }
        // The hold-down counts from the last recovery (3 s), not the first (1 s).
        let plan = p.plan(at(3) + HOLD - Duration::from_millis(1), &bs, &pairs);
        assert!(get(&plan, 1).held);
        let plan = p.plan(at(3) + HOLD, &bs, &pairs);
        assert_eq!(get(&plan, 1).state, UP);
    }

    #[test]
    fn no_healthy_secondary_means_no_rewrite_and_no_hold_down() {
        let t0 = Instant::now();
        let mut p = Planner::new(HOLD, []);
        let pairs = ring_pairs();
        let mut bs = three();
        bs[0].healthy = false;
        bs[1].healthy = false;
        let plan = p.plan(t0, &bs, &pairs);
        // a's secondary b is down: the policy decides for a's sessions.
        assert_eq!(get(&plan, 1).failover_to, None);
        // b's secondary c is up.
        assert_eq!(get(&plan, 2).failover_to, Some(ep(3)));
        bs[0].healthy = true;
        let plan = p.plan(t0 + Duration::from_secs(1), &bs, &pairs);
        assert_eq!(
            get(&plan, 1).state,
            UP,
            "nothing rewritten, nothing to hold"
        );
    }

    #[test]
    fn secondary_failing_drops_the_rewrite() {
        let t0 = Instant::now();
        let mut p = Planner::new(HOLD, []);
        let pairs = ring_pairs();
        let mut bs = three();
        bs[0].healthy = false;
        assert_eq!(get(&p.plan(t0, &bs, &pairs), 1).failover_to, Some(ep(2)));
        bs[1].healthy = false;
        let plan = p.plan(t0, &bs, &pairs);
        assert_eq!(get(&plan, 1).failover_to, None);
        assert_eq!(get(&plan, 2).failover_to, Some(ep(3)));
    }

    #[test]
    fn drained_primary_hands_its_sessions_to_its_secondary() {
        let mut p = Planner::new(HOLD, []);
        let mut bs = three();
        bs[2].drain = true;
        let plan = p.plan(Instant::now(), &bs, &ring_pairs());
        assert_eq!(get(&plan, 3).state, DRAINING);
        assert_eq!(get(&plan, 3).failover_to, Some(ep(1)));
        bs[2].healthy = false;
        let plan = p.plan(Instant::now(), &bs, &ring_pairs());
        assert_eq!(get(&plan, 3).state, DOWN);
    }

    #[test]
    fn adopted_rewrites_get_a_hold_down() {
        let t0 = Instant::now();
        let mut p = Planner::new(HOLD, [(svc(), ep(1))]);
        let plan = p.plan(t0, &three(), &ring_pairs());
        assert!(get(&plan, 1).held);
        assert_eq!(get(&plan, 1).failover_to, Some(ep(2)));
        assert_eq!(
            get(&p.plan(t0 + HOLD, &three(), &ring_pairs()), 1).state,
            UP
        );
    }

    #[test]
    fn backends_without_pairs_or_tokens_get_no_rewrite() {
        let mut p = Planner::new(HOLD, []);
        let mut bs = three();
        bs[0].healthy = false;
        bs[0].token = None;
        bs[1].healthy = false;
        let plan = p.plan(Instant::now(), &bs, &PairTable::default());
        assert_eq!(get(&plan, 1).failover_to, None);
        assert_eq!(get(&plan, 2).failover_to, None);
    }
}

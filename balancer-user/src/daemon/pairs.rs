//! Replication pairs: which server holds the replicated sessions of which primary.
//!
//! A pair (service, primary token) -> secondary token comes from one of three sources,
//! in order of precedence: the daemon's configuration (`secondary = ...` on a backend),
//! the announcements of trusted agents (`balancer agent --secondary`), and the session
//! cookies seen in traffic (the data plane samples cookie primary/secondary pairs into
//! the PAIRS ring buffer, read by [`PairReader`]). The failover rewrite asks [`PairTable::secondary`]
//! for the server that takes a failed primary's sessions.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use balancer_common::CookiePair;
use serde::{Deserialize, Serialize};

pub use crate::dataplane::pair_ring::PairReader;
use crate::model::addr::ServiceAddr;

/// Where a pair was learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PairSource {
    Config,
    Agent,
    Traffic,
}

/// One pair as listed by `balancer pairs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairInfo {
    pub service: String,
    pub primary: String,
    pub secondary: String,
    pub source: PairSource,
    /// Traffic pairs: cookies seen naming this pair (sampled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples: Option<u64>,
    /// Traffic and agent pairs: seconds since the pair was last seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen_s: Option<f64>,
}

/// Traffic pairs not seen for this long are forgotten: the app servers may have chosen
/// other secondaries since.
pub const TRAFFIC_PAIR_TTL: Duration = Duration::from_secs(600);

#[derive(Clone, Debug)]
struct Learned {
    secondary: String,
    samples: u64,
    last_seen: Instant,
}

type PairKey = (ServiceAddr, String);

/// Replication pairs from all sources.
#[derive(Debug, Default)]
pub struct PairTable {
    config: HashMap<PairKey, String>,
    agent: HashMap<PairKey, Learned>,
    traffic: HashMap<PairKey, Learned>,
}

impl PairTable {
    /// Replaces the configured pairs (on start and on every reload).
    pub fn set_config(&mut self, pairs: impl IntoIterator<Item = (ServiceAddr, String, String)>) {
        self.config = pairs
            .into_iter()
            .map(|(service, primary, secondary)| ((service, primary), secondary))
            .collect();
    }

    /// Replaces the pairs announced by agents that are up and trusted. An agent names
    /// tokens, not services: its pair applies to every cookie service where the primary
    /// token is a backend (`services_with`). True if a pair changed.
    pub fn set_announced(
        &mut self,
        announced: &[(String, String)],
        services_with: impl Fn(&str) -> Vec<ServiceAddr>,
        now: Instant,
    ) -> bool {
        let mut next = HashMap::new();
        for (primary, secondary) in announced {
            for service in services_with(primary) {
                let key = (service, primary.clone());
                let samples = self.agent.get(&key).map_or(0, |l| l.samples) + 1;
                next.insert(
                    key,
                    Learned {
                        secondary: secondary.clone(),
                        samples,
                        last_seen: now,
                    },
                );
            }
        }
        let changed = next.len() != self.agent.len()
            || next
                .iter()
                .any(|(k, l)| self.agent.get(k).is_none_or(|o| o.secondary != l.secondary));
        self.agent = next;
        changed
    }

    /// Records a pair seen in a cookie. The latest secondary wins: after a takeover the
    /// app servers re-issue cookies naming the new pair. True if the pair is new or
    /// changed.
    pub fn observe_traffic(
        &mut self,
        service: ServiceAddr,
        primary: &str,
        secondary: &str,
        now: Instant,
    ) -> bool {
        if primary == secondary {
            return false;
        }
        let mut changed = false;
        let entry = self
            .traffic
            .entry((service, primary.to_string()))
            .or_insert_with(|| {
                changed = true;
                Learned {
                    secondary: secondary.to_string(),
                    samples: 0,
                    last_seen: now,
                }
            });
        if entry.secondary != secondary {
            entry.secondary = secondary.to_string();
            entry.samples = 0;
            changed = true;
        }
        entry.samples += 1;
        entry.last_seen = now;
        changed
    }

    /// Forgets traffic pairs not seen for [`TRAFFIC_PAIR_TTL`]. True if any went.
    pub fn expire(&mut self, now: Instant) -> bool {
        let before = self.traffic.len();
        self.traffic
            .retain(|_, l| now.duration_since(l.last_seen) < TRAFFIC_PAIR_TTL);
        self.traffic.len() != before
    }

    /// The secondary of `primary` in `service`, by precedence config > agent > traffic.
    pub fn secondary(&self, service: ServiceAddr, primary: &str) -> Option<(&str, PairSource)> {
        let key = (service, primary.to_string());
        if let Some(s) = self.config.get(&key) {
            return Some((s, PairSource::Config));
        }
        if let Some(l) = self.agent.get(&key) {
            return Some((&l.secondary, PairSource::Agent));
        }
        self.traffic
            .get(&key)
            .map(|l| (l.secondary.as_str(), PairSource::Traffic))
    }

    /// Every known pair, sorted by service, primary and source.
    pub fn list(&self, now: Instant) -> Vec<PairInfo> {
        let age = |t: Instant| Some(now.duration_since(t).as_secs_f64());
        let mut out: Vec<PairInfo> = self
            .config
            .iter()
            .map(|((service, primary), secondary)| PairInfo {
                service: service.to_string(),
                primary: primary.clone(),
                secondary: secondary.clone(),
                source: PairSource::Config,
                samples: None,
                last_seen_s: None,
            })
            .collect();
        for (source, table) in [
            (PairSource::Agent, &self.agent),
            (PairSource::Traffic, &self.traffic),
        ] {
            out.extend(table.iter().map(|((service, primary), l)| PairInfo {
                service: service.to_string(),
                primary: primary.clone(),
                secondary: l.secondary.clone(),
                source,
                samples: (source == PairSource::Traffic).then_some(l.samples),
                last_seen_s: age(l.last_seen),
            }));
        }
        out.sort_by(|a, b| {
            (&a.service, &a.primary, a.source).cmp(&(&b.service, &b.primary, b.source))
        });
        out
    }
}

/// Resolves the hashes of a [`CookiePair`] to tokens: `tokens` maps (service id, token
/// hash) to (service, token), built from the backends' server IDs. Pairs naming a token
/// that no backend of the service has are of no use to the failover rewrite.
pub fn resolve(
    pair: &CookiePair,
    tokens: &HashMap<(u32, u64), (ServiceAddr, String)>,
) -> Option<(ServiceAddr, String, String)> {
    let (service, primary) = tokens.get(&(pair.service, pair.primary))?;
    let (_, secondary) = tokens.get(&(pair.service, pair.secondary))?;
    Some((*service, primary.clone(), secondary.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::addr::Proto;

    fn svc() -> ServiceAddr {
        ServiceAddr::parse("198.18.0.10:80", Proto::Tcp).unwrap()
    }

    #[test]
    fn config_beats_agent_beats_traffic() {
        let now = Instant::now();
        let mut t = PairTable::default();
        t.observe_traffic(svc(), "a", "c", now);
        assert_eq!(t.secondary(svc(), "a"), Some(("c", PairSource::Traffic)));
        assert!(t.set_announced(&[("a".into(), "b".into())], |_| vec![svc()], now));
        assert!(!t.set_announced(&[("a".into(), "b".into())], |_| vec![svc()], now));
        assert_eq!(t.secondary(svc(), "a"), Some(("b", PairSource::Agent)));
        t.set_config([(svc(), "a".to_string(), "d".to_string())]);
        assert_eq!(t.secondary(svc(), "a"), Some(("d", PairSource::Config)));
        assert_eq!(t.list(now).len(), 3);
        t.set_config([]);
        t.set_announced(&[], |_| vec![svc()], now);
        assert_eq!(t.secondary(svc(), "a"), Some(("c", PairSource::Traffic)));
    }

    #[test]
    fn latest_traffic_pair_wins_and_expires() {
        let now = Instant::now();
        let mut t = PairTable::default();
        assert!(t.observe_traffic(svc(), "a", "b", now));
        assert!(!t.observe_traffic(svc(), "a", "b", now));
        assert!(t.observe_traffic(svc(), "a", "c", now));
        assert!(!t.observe_traffic(svc(), "x", "x", now));
        let list = t.list(now);
        assert_eq!(list.len(), 1);
        assert_eq!(
            (list[0].secondary.as_str(), list[0].samples),
            ("c", Some(1))
        );
        assert!(t.expire(now + TRAFFIC_PAIR_TTL));
        assert!(t.list(now).is_empty());
    }

    #[test]
    fn pairs_resolve_only_to_known_tokens() {
        let mut tokens = HashMap::new();
        tokens.insert((1, 11), (svc(), "a".to_string()));
        tokens.insert((1, 22), (svc(), "b".to_string()));
        let pair = |p, s| CookiePair {
            service: 1,
            _pad: 0,
            primary: p,
            secondary: s,
        };
        assert_eq!(
            resolve(&pair(11, 22), &tokens),
            Some((svc(), "a".into(), "b".into()))
        );
        assert_eq!(resolve(&pair(11, 33), &tokens), None);
        assert_eq!(resolve(&pair(33, 22), &tokens), None);
    }
}

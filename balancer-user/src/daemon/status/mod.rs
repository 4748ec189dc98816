//! The status page: a read-only HTML page at `/` on the metrics address, and the JSON it
//! polls at `/status.json` (also meant for scripts).
//!
//! Rates come from successive reads: every read of `/status.json` is kept for the
//! charts (at most one a second, the last [`HISTORY`] of them), and a backend's rates
//! are its counters' growth since the newest kept read at least a second older. So the
//! charts cover the time something has been polling, up to about five minutes.

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use balancer_common::BackendCounter;
use serde::Serialize;

use super::metrics::{Endpoint, Page};
use crate::{
    control::{stats::BackendCountersValues, BackendInfo, ServiceInfo},
    dataplane::Balancer,
};

#[cfg(test)]
mod tests;

/// The page, its style and its script, built into the binary (no CDN: the machine
/// may have no internet).
pub const INDEX_HTML: &str = include_str!("page.html");
pub const STYLE_CSS: &str = include_str!("page.css");
pub const SCRIPT_JS: &str = include_str!("page.js");

/// Reads kept for the charts.
pub const HISTORY: usize = 300;
/// Health transitions kept for the page.
pub const TRANSITIONS: usize = 50;
/// Shortest time between two kept reads, and the least a rate is measured over.
const MIN_INTERVAL_S: f64 = 1.0;

/// A backend: (service, backend address), as the page shows them.
type Key = (String, String);

/// One read of the per-backend counters.
struct Sample {
    at: f64,
    counters: HashMap<Key, BackendCountersValues>,
}

/// A health change the daemon saw.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TransitionEvent {
    /// Unix time, seconds.
    pub at: f64,
    pub service: String,
    pub backend: String,
    pub from: String,
    pub to: String,
    /// What the deciding check found, e.g. "connect refused".
    pub detail: String,
}

/// What the status endpoint remembers between reads; shared by the daemon (which
/// records transitions) and the HTTP server.
#[derive(Default)]
pub struct StatusBoard {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    history: VecDeque<Sample>,
    transitions: VecDeque<TransitionEvent>,
}

/// The JSON of `/status.json`.
#[derive(Debug, Serialize)]
pub struct StatusView {
    /// Unix time of this read, seconds.
    pub time: f64,
    pub services: Vec<ServiceView>,
    pub backends: Vec<BackendView>,
    /// Failover rewrites in force: `from`'s sessions go to `to`.
    pub failover: Vec<FailoverView>,
    /// Recent health changes, newest last.
    pub transitions: Vec<TransitionEvent>,
}

#[derive(Debug, Serialize)]
pub struct ServiceView {
    pub service: String,
    pub mode: &'static str,
    pub backends: usize,
    pub active_backends: usize,
}

#[derive(Debug, Serialize)]
pub struct BackendView {
    pub service: String,
    pub backend: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// Data-plane state: `up`, `draining` or `down`.
    pub state: &'static str,
    /// Health-check verdict `up` or `down`; absent when the backend is not checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<&'static str>,
    pub weight: u32,
    /// Fraction of the service's new flows the backend gets (0..1).
    pub share: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover_to: Option<String>,
    /// Per second, one key per counter label (new_flows, packets_to, bytes_to,
    /// packets_from, bytes_from, cookie_hits, cookie_misses, failover_redirects);
    /// empty until two reads a second apart exist.
    pub rates: serde_json::Map<String, serde_json::Value>,
    /// The counters' totals, same keys.
    pub totals: serde_json::Map<String, serde_json::Value>,
    /// For the charts, oldest first: new flows/s and bytes/s (both directions) between
    /// successive kept reads, with their Unix times.
    pub chart: Vec<ChartPoint>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ChartPoint {
    pub t: f64,
    pub new_flows: f64,
    pub bytes: f64,
}

#[derive(Debug, Serialize)]
pub struct FailoverView {
    pub service: String,
    pub from: String,
    pub to: String,
}

/// The status page's endpoints for the instance pinned at `dir`: `/`, its style and
/// script, and `/status.json`.
pub fn endpoints(dir: PathBuf, board: Arc<StatusBoard>) -> Vec<Endpoint> {
    let fixed = |path, content_type, text| Endpoint {
        path,
        content_type,
        page: Page::Static(text),
    };
    vec![
        fixed("/", "text/html; charset=utf-8", INDEX_HTML),
        fixed("/status.css", "text/css; charset=utf-8", STYLE_CSS),
        fixed("/status.js", "text/javascript; charset=utf-8", SCRIPT_JS),
        Endpoint {
            path: "/status.json",
            content_type: "application/json",
            page: Page::Dynamic(Arc::new(move || {
                let b = Balancer::open(&dir).map_err(|e| e.to_string())?;
                let read = || -> crate::error::Result<StatusView> {
                    let stats = b.stats()?;
                    let counters = stats
                        .backends
                        .iter()
                        .map(|c| (c.slot, c.counters))
                        .collect();
                    Ok(board.view(unix_now(), &b.services()?, &b.backends(None)?, &counters))
                };
                let view = read().map_err(|e| e.to_string())?;
                serde_json::to_string(&view).map_err(|e| e.to_string())
            })),
        },
    ]
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl StatusBoard {
    /// Remembers a health change, forgetting the oldest beyond [`TRANSITIONS`].
    pub fn record_transition(&self, event: TransitionEvent) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.transitions.len() == TRANSITIONS {
            inner.transitions.pop_front();
        }
        inner.transitions.push_back(event);
    }

    /// The view of one read at `now` (Unix seconds) of the data plane; `counters` by
    /// backend slot. Keeps the read for later rates and charts.
    pub fn view(
        &self,
        now: f64,
        services: &[ServiceInfo],
        backends: &[BackendInfo],
        counters: &HashMap<u32, BackendCountersValues>,
    ) -> StatusView {
        let current: HashMap<Key, BackendCountersValues> = backends
            .iter()
            .filter_map(|b| Some((key(b), *counters.get(&b.slot)?)))
            .collect();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // Kept first, so the charts end with this read (the rates' base is at least a
        // second older, so never this one).
        let newest = inner.history.back().map_or(f64::MIN, |s| s.at);
        if now - newest >= MIN_INTERVAL_S {
            if inner.history.len() == HISTORY {
                inner.history.pop_front();
            }
            inner.history.push_back(Sample {
                at: now,
                counters: current.clone(),
            });
        }
        let base = inner
            .history
            .iter()
            .rev()
            .find(|s| now - s.at >= MIN_INTERVAL_S);
        let backend_views = backends
            .iter()
            .map(|b| {
                let k = key(b);
                let now_counters = current.get(&k);
                let rates = match (now_counters, base) {
                    (Some(c), Some(base)) => base
                        .counters
                        .get(&k)
                        .map(|old| rates(old, c, now - base.at))
                        .unwrap_or_default(),
                    _ => Default::default(),
                };
                BackendView {
                    service: b.service.to_string(),
                    backend: b.backend.to_string(),
                    server_id: b.server_id.clone(),
                    state: b.state.name(),
                    health: b.health.as_ref().map(|h| h.health),
                    weight: b.weight.get(),
                    share: b.table_share,
                    failover_to: b.failover_to.map(|a| a.to_string()),
                    rates,
                    totals: now_counters.map(totals).unwrap_or_default(),
                    chart: chart(&inner.history, &k),
                }
            })
            .collect();
        StatusView {
            time: now,
            services: services
                .iter()
                .map(|s| ServiceView {
                    service: s.service.to_string(),
                    mode: s.mode,
                    backends: s.backends,
                    active_backends: s.active_backends,
                })
                .collect(),
            failover: backends
                .iter()
                .filter_map(|b| {
                    Some(FailoverView {
                        service: b.service.to_string(),
                        from: b.backend.to_string(),
                        to: b.failover_to?.to_string(),
                    })
                })
                .collect(),
            backends: backend_views,
            transitions: inner.transitions.iter().cloned().collect(),
        }
    }
}

fn key(b: &BackendInfo) -> Key {
    (b.service.to_string(), b.backend.to_string())
}

fn totals(c: &BackendCountersValues) -> serde_json::Map<String, serde_json::Value> {
    BackendCounter::ALL
        .iter()
        .map(|&counter| (counter.label().to_string(), c.get(counter).into()))
        .collect()
}

/// Growth per second from `old` to `new` over `seconds`; a counter that went down (the
/// backend was removed and added again) counts from zero.
fn rates(
    old: &BackendCountersValues,
    new: &BackendCountersValues,
    seconds: f64,
) -> serde_json::Map<String, serde_json::Value> {
    BackendCounter::ALL
        .iter()
        .map(|&counter| {
            let growth = new.get(counter).checked_sub(old.get(counter));
            let growth = growth.unwrap_or(new.get(counter));
            (
                counter.label().to_string(),
                (growth as f64 / seconds).into(),
            )
        })
        .collect()
}

/// A backend's new flows/s and bytes/s between successive kept reads.
fn chart(history: &VecDeque<Sample>, k: &Key) -> Vec<ChartPoint> {
    let mut points = Vec::new();
    for (a, b) in history.iter().zip(history.iter().skip(1)) {
        let (Some(old), Some(new)) = (a.counters.get(k), b.counters.get(k)) else {
            continue;
        };
        let r = rates(old, new, b.at - a.at);
        let get = |label: &str| r.get(label).and_then(|v| v.as_f64()).unwrap_or(0.0);
        points.push(ChartPoint {
            t: b.at,
            new_flows: get("new_flows"),
            bytes: get("bytes_to") + get("bytes_from"),
        });
    }
    points
}

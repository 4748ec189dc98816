//! Brings the pinned maps in line with a validated configuration and with the failover
//! plan, through the same library calls the CLI makes.
//!
//! Removals run before additions so that slots and server-ID tokens freed by the new
//! configuration are available to it. Every change is returned as a line for the log.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddrV4,
};

use crate::{
    addr::ServiceAddr,
    config::{DaemonConfig, ServiceConfig},
    control::{state_name, BackendInfo},
    dataplane::Balancer,
    error::Result,
};

use super::failover::{BackendKey, Desired};

/// Services and backends as the configuration wants them.
pub fn reconcile(b: &Balancer, cfg: &DaemonConfig) -> Result<Vec<String>> {
    let mut changes = Vec::new();
    let wanted: HashMap<ServiceAddr, &ServiceConfig> =
        cfg.services.iter().map(|s| (s.addr, s)).collect();
    let mut present = HashSet::new();
    for s in b.services()? {
        let keep = wanted.get(&s.addr).is_some_and(|w| w.cookie == s.cookie);
        if keep {
            present.insert(s.addr);
            continue;
        }
        b.remove_service(s.addr)?;
        changes.push(match wanted.contains_key(&s.addr) {
            true => format!(
                "service {}: mode or cookie settings changed, re-created",
                s.addr
            ),
            false => format!("service {}: removed (not in the configuration)", s.addr),
        });
    }
    for s in &cfg.services {
        if !present.contains(&s.addr) {
            b.add_service_with(s.addr, s.cookie.clone())?;
            changes.push(format!("service {}: added ({})", s.addr, s.mode()));
        }
        reconcile_backends(b, s, &mut changes)?;
    }
    Ok(changes)
}

fn reconcile_backends(b: &Balancer, s: &ServiceConfig, changes: &mut Vec<String>) -> Result<()> {
    let current = b.backends(Some(s.addr))?;
    let mut present: HashMap<SocketAddrV4, &BackendInfo> = HashMap::new();
    for info in &current {
        let Ok(ep) = info.backend.parse::<SocketAddrV4>() else {
            continue;
        };
        let wanted = s.backends.iter().find(|w| w.addr == ep);
        if wanted.is_some_and(|w| w.server_id == info.server_id) {
            present.insert(ep, info);
            continue;
        }
        b.remove_backend(s.addr, &info.backend)?;
        changes.push(format!(
            "service {}: backend {} removed",
            s.addr, info.backend
        ));
    }
    for w in &s.backends {
        match present.get(&w.addr) {
            None => {
                b.add_backend(s.addr, w.spec())?;
                changes.push(format!("service {}: backend {} added", s.addr, w.addr));
            }
            Some(info) if info.weight != w.weight => {
                b.set_backend_weight(s.addr, &w.addr.to_string(), w.weight)?;
                changes.push(format!(
                    "service {}: backend {} weight {} -> {}",
                    s.addr, w.addr, info.weight, w.weight
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// What one sync changed.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub lines: Vec<String>,
    /// Failover rewrites written or changed.
    pub rewrites: u64,
    /// Failover rewrites removed.
    pub restores: u64,
}

/// Writes the planned backend states and failover rewrites where the maps differ.
pub fn sync(b: &Balancer, plan: &HashMap<BackendKey, Desired>) -> Result<SyncReport> {
    let mut report = SyncReport::default();
    for info in b.backends(None)? {
        let Some(key) = key_of(&info) else { continue };
        let Some(want) = plan.get(&key) else { continue };
        let (service, endpoint) = (key.0, info.backend.as_str());
        let want_state = state_name(want.state);
        // State before failover: a rewrite's target must already be up, and a recovered
        // primary's rewrite goes only once it takes flows again.
        if info.state != want_state {
            b.set_backend_state(service, endpoint, want.state)?;
            let why = if want.held { " (hold-down)" } else { "" };
            report.lines.push(format!(
                "service {service}: backend {endpoint} {} -> {want_state}{why}",
                info.state
            ));
        }
        let want_to = want.failover_to.map(|e| e.to_string());
        if info.failover_to != want_to {
            b.set_failover(service, endpoint, want_to.as_deref())?;
            match &want_to {
                Some(to) => {
                    report.rewrites += 1;
                    report.lines.push(format!(
                        "service {service}: failover rewrite {endpoint} -> {to} ({}'s sessions go to its secondary)",
                        info.server_id.as_deref().unwrap_or("?")
                    ));
                }
                None => {
                    report.restores += 1;
                    report.lines.push(format!(
                        "service {service}: failover rewrite of {endpoint} removed"
                    ));
                }
            }
        }
    }
    Ok(report)
}

/// The (service, endpoint) key of a listed backend.
pub fn key_of(info: &BackendInfo) -> Option<BackendKey> {
    Some((info.service.parse().ok()?, info.backend.parse().ok()?))
}

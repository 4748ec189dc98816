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
    control::{BackendInfo, Control},
    dataplane::MapStore,
    error::Result,
    model::ServiceAddr,
};

use super::{
    config::{DaemonConfig, ServiceConfig},
    failover::{BackendKey, Desired},
};

/// Services and backends as the configuration wants them.
pub fn reconcile<S: MapStore>(b: &mut Control<S>, cfg: &DaemonConfig) -> Result<Vec<String>> {
    let mut changes = Vec::new();
    let wanted: HashMap<ServiceAddr, &ServiceConfig> =
        cfg.services.iter().map(|s| (s.addr, s)).collect();
    let mut present = HashSet::new();
    for s in b.services()? {
        let keep = wanted.get(&s.service).is_some_and(|w| w.cookie == s.cookie);
        if keep {
            present.insert(s.service);
            continue;
        }
        b.remove_service(s.service)?;
        changes.push(match wanted.contains_key(&s.service) {
            true => format!(
                "service {}: mode or cookie settings changed, re-created",
                s.service
            ),
            false => format!("service {}: removed (not in the configuration)", s.service),
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

fn reconcile_backends<S: MapStore>(
    b: &mut Control<S>,
    s: &ServiceConfig,
    changes: &mut Vec<String>,
) -> Result<()> {
    let current = b.backends(Some(s.addr))?;
    let mut present: HashMap<SocketAddrV4, &BackendInfo> = HashMap::new();
    for info in &current {
        let wanted = s.backends.iter().find(|w| w.addr == info.backend);
        if wanted.is_some_and(|w| w.server_id == info.server_id) {
            present.insert(info.backend, info);
            continue;
        }
        b.remove_backend(s.addr, info.backend)?;
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
                b.set_backend_weight(s.addr, w.addr, w.weight)?;
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
///
/// Order matters, because the data plane honours a rewrite only while the primary is
/// not up: new rewrites are written first (inert until their primary leaves), then the
/// states, then stale rewrites are removed (their primaries are up again, or nothing
/// can take their sessions). A primary therefore never goes down without its rewrite in
/// place, and no cookie naming it falls to the policy in between.
pub fn sync<S: MapStore>(
    b: &mut Control<S>,
    plan: &HashMap<BackendKey, Desired>,
) -> Result<SyncReport> {
    let mut report = SyncReport::default();
    let current: Vec<(BackendKey, BackendInfo, &Desired)> = b
        .backends(None)?
        .into_iter()
        .filter_map(|info| {
            let key = key_of(&info);
            Some((key, info, plan.get(&key)?))
        })
        .collect();
    for (key, info, want) in &current {
        if let Some(to) = want.failover_to.filter(|to| info.failover_to != Some(*to)) {
            b.set_failover(key.0, info.backend, Some(to))?;
            report.rewrites += 1;
            report.lines.push(format!(
                "service {}: failover rewrite {} -> {to} ({}'s sessions go to its secondary)",
                key.0,
                info.backend,
                info.server_id.as_deref().unwrap_or("?")
            ));
        }
    }
    for (key, info, want) in &current {
        if info.state != want.state {
            b.set_backend_state(key.0, info.backend, want.state)?;
            let why = if want.held { " (hold-down)" } else { "" };
            report.lines.push(format!(
                "service {}: backend {} {} -> {}{why}",
                key.0, info.backend, info.state, want.state
            ));
        }
    }
    for (key, info, want) in &current {
        if want.failover_to.is_none() && info.failover_to.is_some() {
            b.set_failover(key.0, info.backend, None)?;
            report.restores += 1;
            report.lines.push(format!(
                "service {}: failover rewrite of {} removed",
                key.0, info.backend
            ));
        }
    }
    Ok(report)
}

/// The (service, endpoint) key of a listed backend.
pub fn key_of(info: &BackendInfo) -> BackendKey {
    (info.service, info.backend)
}

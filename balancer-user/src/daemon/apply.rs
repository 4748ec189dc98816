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
        let keep = wanted.get(&s.service).filter(|w| w.cookie == s.cookie);
        if let Some(w) = keep {
            present.insert(s.service);
            if w.persistence != s.persistence {
                b.set_persistence(s.service, w.persistence)?;
                changes.push(format!(
                    "service {}: persistence {} -> {}",
                    s.service, s.persistence, w.persistence
                ));
            }
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
            b.add_service_opts(s.addr, s.cookie.clone(), s.persistence)?;
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

#[cfg(test)]
mod tests {
    use balancer_common::{backend_state, Failover};

    use super::*;
    use crate::{
        control::{
            memory_store::{MemoryStore, Write},
            BackendSpec,
        },
        model::{BackendState, Persistence, Weight},
        CookieSettings,
    };

    const CONFIG: &str = r#"
        daemon = { interfaces = ["eth0"] }

        [[service]]
        address = "198.18.0.10:80"
        mode = "cookie"

          [[service.backend]]
          address = "198.18.1.2:8080"
          server_id = "a1"

          [[service.backend]]
          address = "198.18.1.3:8080"
          server_id = "b1"
          weight = 50

        [[service]]
        address = "198.18.0.11:53"
        proto = "udp"

          [[service.backend]]
          address = "198.18.1.4:53"
    "#;

    fn reconciled(c: &mut Control<MemoryStore>, text: &str) -> Vec<String> {
        reconcile(c, &DaemonConfig::parse(text).unwrap()).unwrap()
    }

    #[test]
    fn persistence_changes_in_place_on_reload() {
        let mut c = Control::new(MemoryStore::new());
        reconciled(&mut c, CONFIG);
        let id = |c: &Control<MemoryStore>| {
            c.services()
                .unwrap()
                .into_iter()
                .find(|s| s.service.to_string() == "198.18.0.10:80/tcp")
                .map(|s| (s.id, s.persistence))
                .unwrap()
        };
        let (before, _) = id(&c);
        let sticky = CONFIG.replace(
            "mode = \"cookie\"",
            "mode = \"cookie\"\n        persistence = \"source/24\"",
        );
        assert_eq!(
            reconciled(&mut c, &sticky),
            ["service 198.18.0.10:80/tcp: persistence none -> source/24"]
        );
        assert_eq!(
            id(&c),
            (before, Persistence::Source { prefix: 24 }),
            "not re-created"
        );
        assert!(reconciled(&mut c, &sticky).is_empty());
    }

    #[test]
    fn reconcile_adds_what_is_missing_once() {
        let mut c = Control::new(MemoryStore::new());
        assert_eq!(
            reconciled(&mut c, CONFIG),
            [
                "service 198.18.0.10:80/tcp: added (cookie)",
                "service 198.18.0.10:80/tcp: backend 198.18.1.2:8080 added",
                "service 198.18.0.10:80/tcp: backend 198.18.1.3:8080 added",
                "service 198.18.0.11:53/udp: added (nat)",
                "service 198.18.0.11:53/udp: backend 198.18.1.4:53 added",
            ]
        );
        let b = c.backends(None).unwrap();
        assert_eq!(b[1].weight.get(), 50);
        assert_eq!(b[1].server_id.as_deref(), Some("b1"));
        assert_eq!(reconciled(&mut c, CONFIG), [] as [&str; 0]);
        assert_eq!(c.store().violations(), [] as [String; 0]);
    }

    #[test]
    fn reconcile_removes_before_it_adds() {
        let mut c = Control::new(MemoryStore::new());
        reconciled(&mut c, CONFIG);
        // b1's token moves to a new backend, the UDP service goes, a weight changes, the
        // cookie service keeps its settings.
        let next = CONFIG
            .replace("198.18.1.3:8080", "198.18.1.5:8080")
            .replace("weight = 50", "weight = 70");
        let next = &next[..next
            .find("[[service]]\n        address = \"198.18.0.11")
            .unwrap()];
        assert_eq!(
            reconciled(&mut c, next),
            [
                "service 198.18.0.11:53/udp: removed (not in the configuration)",
                "service 198.18.0.10:80/tcp: backend 198.18.1.3:8080 removed",
                "service 198.18.0.10:80/tcp: backend 198.18.1.5:8080 added",
            ]
        );
        let weight_only = next.replace("weight = 70", "weight = 20");
        assert_eq!(
            reconciled(&mut c, &weight_only),
            ["service 198.18.0.10:80/tcp: backend 198.18.1.5:8080 weight 70 -> 20"]
        );
        // Other cookie settings: the service is made again.
        let renamed = weight_only.replace(
            "mode = \"cookie\"",
            "mode = \"cookie\"\ncookie_name = \"SID\"",
        );
        let changes = reconciled(&mut c, &renamed);
        assert_eq!(
            changes[0],
            "service 198.18.0.10:80/tcp: mode or cookie settings changed, re-created"
        );
        let services = c.services().unwrap();
        assert_eq!(services[0].cookie.as_ref().unwrap().name, "SID");
        assert_eq!(c.store().violations(), [] as [String; 0]);
    }

    const SVC: &str = "198.18.0.10:80/tcp";

    /// A cookie service with backends a (token a1) and b (token b1), and their slots.
    fn pair() -> (Control<MemoryStore>, u32, u32) {
        let mut c = Control::new(MemoryStore::new());
        c.add_service_with(SVC.parse().unwrap(), Some(CookieSettings::default()))
            .unwrap();
        let mut add = |addr: &str, token: &str| {
            let spec = BackendSpec {
                server_id: Some(token.into()),
                ..BackendSpec::new(addr.parse().unwrap(), Weight::DEFAULT)
            };
            c.add_backend(SVC.parse().unwrap(), spec).unwrap().slot
        };
        let (a, b) = (add("198.18.1.2:8080", "a1"), add("198.18.1.3:8080", "b1"));
        c.store_mut().clear_writes();
        (c, a, b)
    }

    fn plan(a: (BackendState, Option<&str>)) -> HashMap<BackendKey, Desired> {
        let key = |e: &str| (SVC.parse().unwrap(), e.parse().unwrap());
        let desired = |state, to: Option<&str>| Desired {
            state,
            failover_to: to.map(|t| t.parse().unwrap()),
            held: false,
        };
        HashMap::from([
            (key("198.18.1.2:8080"), desired(a.0, a.1)),
            (key("198.18.1.3:8080"), desired(BackendState::Up, None)),
        ])
    }

    #[test]
    fn sync_writes_a_new_rewrite_before_the_primary_goes_down() {
        let (mut c, a, b) = pair();
        let report = sync(&mut c, &plan((BackendState::Down, Some("198.18.1.3:8080")))).unwrap();
        assert_eq!((report.rewrites, report.restores), (1, 0));
        assert_eq!(
            report.lines,
            [
                format!(
                    "service {SVC}: failover rewrite 198.18.1.2:8080 -> 198.18.1.3:8080 \
                     (a1's sessions go to its secondary)"
                ),
                format!("service {SVC}: backend 198.18.1.2:8080 up -> down"),
            ]
        );
        let rewrite = Failover {
            replacement: b,
            active: 1,
        };
        let written = c
            .store()
            .position("of the rewrite", |w| *w == Write::Failover(a, rewrite));
        let down = c.store().position(
            "of the state",
            |w| matches!(w, Write::Backend(s, be) if *s == a && be.state == backend_state::DOWN),
        );
        assert!(written < down, "{:#?}", c.store().writes());
        // The same plan again changes nothing.
        c.store_mut().clear_writes();
        let again = sync(&mut c, &plan((BackendState::Down, Some("198.18.1.3:8080")))).unwrap();
        assert!(again.lines.is_empty());
        assert_eq!(c.store().writes(), []);
    }

    #[test]
    fn sync_removes_a_stale_rewrite_after_the_primary_is_up() {
        let (mut c, a, _) = pair();
        sync(&mut c, &plan((BackendState::Down, Some("198.18.1.3:8080")))).unwrap();
        c.store_mut().clear_writes();
        let report = sync(&mut c, &plan((BackendState::Up, None))).unwrap();
        assert_eq!((report.rewrites, report.restores), (0, 1));
        assert_eq!(
            report.lines,
            [
                format!("service {SVC}: backend 198.18.1.2:8080 down -> up"),
                format!("service {SVC}: failover rewrite of 198.18.1.2:8080 removed"),
            ]
        );
        let up = c.store().position(
            "of the state",
            |w| matches!(w, Write::Backend(s, be) if *s == a && be.state == backend_state::UP),
        );
        let removed = c.store().position("removing the rewrite", |w| {
            *w == Write::Failover(a, Failover::default())
        });
        assert!(up < removed, "{:#?}", c.store().writes());
        assert_eq!(c.backends(None).unwrap()[0].failover_to, None);
        assert_eq!(c.store().violations(), [] as [String; 0]);
    }
}

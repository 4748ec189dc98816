//! `balancer daemon`: keeps the pinned data plane in line with a configuration file,
//! checks the backends' health, learns replication pairs and rewrites a failed
//! primary's sessions to its secondary.
//!
//! Everything the data plane needs lives in pinned maps, so the daemon can stop or
//! restart at any time without interrupting forwarding: on start it adopts what is
//! pinned (program, links, maps, health records, failover rewrites) and only writes
//! what differs from its configuration.
//!
//! One task owns the state ([`Daemon`]); health checkers, the pair reader, the group
//! listener and the control socket talk to it over channels, so no map is written from
//! two places.

pub mod apply;
pub mod config;
pub mod control_socket;
pub mod failover;
pub mod group;
pub mod health;
mod membership;
pub mod metrics;
pub mod pairs;
pub mod status;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use balancer_common::{cookie::token_hash, CookiePair};
use tokio::{
    net::UdpSocket,
    signal::unix::{signal, SignalKind},
    sync::mpsc,
    task::JoinHandle,
};
use tracing::{error, info, warn};

use crate::{
    dataplane::{self, instance_dir, Balancer},
    error::{one_line, Error, Result},
    model::addr::ServiceAddr,
};

use self::{
    config::{DaemonConfig, GroupSettings},
    control_socket::{Command, Pending, Response},
    failover::{BackendKey, BackendView, Planner},
    group::GroupKey,
    health::{spawn_checker, CheckSettings, Health, HealthReport, Tracker},
    membership::Group,
    metrics::{Endpoint, MetricsSnapshot},
    pairs::{PairReader, PairTable},
    status::{StatusBoard, TransitionEvent},
};

/// How often the daemon looks at what can change without an event of its own (announced
/// pairs, expired traffic pairs, hold-downs ending).
const TICK: Duration = Duration::from_millis(250);
/// How often the maps are compared with the plan even when nothing changed (repairs
/// what someone else changed behind the daemon's back). Comparing reads thousands of
/// map slots, so it is not done on every tick.
const RESYNC: Duration = Duration::from_secs(5);

pub struct DaemonOptions {
    pub config: PathBuf,
    pub bpffs_root: PathBuf,
    /// Directory of the control socket.
    pub run_dir: PathBuf,
}

/// Daemon counters, exported as metrics.
#[derive(Default)]
pub struct DaemonCounters {
    config_reloads: AtomicU64,
    config_reload_failures: AtomicU64,
    health_transitions: AtomicU64,
    failover_rewrites: AtomicU64,
    failover_restores: AtomicU64,
    cookie_pairs_received: AtomicU64,
}

impl DaemonCounters {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    fn list(&self) -> Vec<(&'static str, &'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("config_reloads", "Configurations applied by reload (SIGHUP or balancer reload).", get(&self.config_reloads)),
            ("config_reload_failures", "Reloads rejected (invalid file); the running state was kept.", get(&self.config_reload_failures)),
            ("health_transitions", "Backend health changes (up to down or down to up).", get(&self.health_transitions)),
            ("failover_rewrites", "Failover rewrites written: a failed primary's sessions sent to its secondary.", get(&self.failover_rewrites)),
            ("failover_restores", "Failover rewrites removed (primary back after its hold-down, or no usable secondary).", get(&self.failover_restores)),
            ("cookie_pairs_received", "Primary/secondary pairs read from the data plane's sampled reports.", get(&self.cookie_pairs_received)),
        ]
    }
}

struct Checker {
    id: u32,
    settings: CheckSettings,
    task: JoinHandle<()>,
}

/// What a new configuration needs before anything is applied: everything here can fail
/// without having changed the running state.
struct Prepared {
    cfg: DaemonConfig,
    /// New group settings; the socket is `None` when the running listener stays.
    group: Option<(GroupSettings, GroupKey, Option<UdpSocket>)>,
    metrics: Option<std::net::TcpListener>,
}

pub struct Daemon {
    opts: DaemonOptions,
    dir: PathBuf,
    cfg: DaemonConfig,
    checkers: HashMap<BackendKey, Checker>,
    checker_ids: HashMap<u32, BackendKey>,
    next_checker_id: u32,
    healthy: HashMap<BackendKey, bool>,
    slots: HashMap<BackendKey, u32>,
    /// (service id, token hash) -> (service, token), to resolve the data plane's reports.
    tokens: HashMap<(u32, u64), (ServiceAddr, String)>,
    planner: Planner,
    pairs: PairTable,
    group: Option<Group>,
    metrics: Option<(SocketAddr, JoinHandle<()>)>,
    counters: Arc<DaemonCounters>,
    /// Health transitions and past reads for the status page.
    status: Arc<StatusBoard>,
    reports: mpsc::Sender<HealthReport>,
    /// Something the plan depends on changed since it was last written.
    dirty: bool,
    last_sync: Instant,
}

/// Runs the daemon until SIGTERM or SIGINT. The data plane stays attached when it ends.
pub async fn run(opts: DaemonOptions) -> Result<()> {
    dataplane::require_root()?;
    let cfg = DaemonConfig::load(&opts.config)?;
    let dir = instance_dir(&opts.bpffs_root, &cfg.daemon.instance)?;
    let socket = control_socket::socket_path(&opts.run_dir, &cfg.daemon.instance);
    let prepared = prepare(cfg, None)?;
    // Bound before touching the data plane: it also tells whether a daemon runs already.
    let control = control_socket::bind(&socket)?;
    let _socket_file = control_socket::SocketFile(socket.clone());
    attach_interfaces(&dir, &prepared.cfg, None)?;
    let adopted = Balancer::open(&dir)?
        .backends(None)?
        .iter()
        .filter(|b| b.failover_to.is_some())
        .map(apply::key_of)
        .collect::<Vec<_>>();
    let (reports_tx, mut reports) = mpsc::channel(1024);
    let mut d = Daemon {
        planner: Planner::new(prepared.cfg.daemon.failover_hold_down, adopted),
        cfg: prepared.cfg.clone(),
        opts,
        dir: dir.clone(),
        checkers: HashMap::new(),
        checker_ids: HashMap::new(),
        next_checker_id: 0,
        healthy: HashMap::new(),
        slots: HashMap::new(),
        tokens: HashMap::new(),
        pairs: PairTable::default(),
        group: None,
        metrics: None,
        counters: Arc::new(DaemonCounters::default()),
        status: Arc::default(),
        reports: reports_tx,
        dirty: true,
        last_sync: Instant::now(),
    };
    d.apply(prepared)?;
    info!(
        instance = %d.cfg.daemon.instance,
        pins = %dir.display(),
        control = %socket.display(),
        "daemon running"
    );

    let (requests_tx, mut requests) = mpsc::channel::<Pending>(16);
    let control_task = tokio::spawn(control_socket::serve(control, requests_tx));
    let (pairs_tx, mut pair_batches) = mpsc::channel::<Vec<CookiePair>>(64);
    let pair_task = spawn_pair_reader(&dir, pairs_tx)?;
    let mut hup = signal(SignalKind::hangup()).map_err(sig_err)?;
    let mut term = signal(SignalKind::terminate()).map_err(sig_err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(sig_err)?;
    let mut tick = tokio::time::interval(TICK);

    loop {
        tokio::select! {
            Some(report) = reports.recv() => d.on_health(report),
            Some(batch) = pair_batches.recv() => d.on_pairs(&batch),
            Some((cmd, reply)) = requests.recv() => {
                let _ = reply.send(d.on_command(cmd));
            }
            _ = hup.recv() => {
                let _ = d.reload();
            }
            _ = tick.tick() => d.on_tick(),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    info!("stopping; the data plane stays attached and keeps forwarding");
    control_task.abort();
    pair_task.abort();
    Ok(())
}

fn sig_err(e: std::io::Error) -> Error {
    Error::Daemon(format!("installing signal handlers: {e}"))
}

/// Validates a configuration and acquires what it needs (group key and socket, metrics
/// listener) without changing anything. `current` is the running configuration on a
/// reload: sockets it already has are kept rather than bound again.
fn prepare(cfg: DaemonConfig, current: Option<&DaemonConfig>) -> Result<Prepared> {
    cfg.check_interfaces()?;
    if let Some(cur) = current {
        if cur.daemon.instance != cfg.daemon.instance {
            return Err(Error::Daemon(format!(
                "daemon.instance cannot change on reload ({} -> {}); restart the daemon",
                cur.daemon.instance, cfg.daemon.instance
            )));
        }
    }
    let running_group = current.and_then(|c| c.group.as_ref());
    let group = match &cfg.group {
        Some(g) if running_group != Some(g) => {
            let key = GroupKey::from_file(&g.key_file)?;
            // The same address keeps the running listener (and its member table).
            let socket = if running_group.is_some_and(|r| r.listen == g.listen) {
                None
            } else {
                let s = std::net::UdpSocket::bind(g.listen)
                    .and_then(|s| s.set_nonblocking(true).map(|()| s))
                    .and_then(UdpSocket::from_std)
                    .map_err(|e| Error::Daemon(format!("group.listen {}: {e}", g.listen)))?;
                Some(s)
            };
            Some((g.clone(), key, socket))
        }
        _ => None,
    };
    let metrics = if current.map(|c| c.daemon.metrics) != Some(cfg.daemon.metrics) {
        let l = std::net::TcpListener::bind(cfg.daemon.metrics)
            .map_err(|e| Error::Daemon(format!("daemon.metrics {}: {e}", cfg.daemon.metrics)))?;
        l.set_nonblocking(true)
            .map_err(|e| Error::Daemon(format!("metrics socket: {e}")))?;
        Some(l)
    } else {
        None
    };
    Ok(Prepared {
        cfg,
        group,
        metrics,
    })
}

/// Attaches the configured interfaces that are not attached yet, and (on reload)
/// detaches those the configuration no longer names.
fn attach_interfaces(
    dir: &Path,
    cfg: &DaemonConfig,
    previous: Option<&DaemonConfig>,
) -> Result<()> {
    let attached = match Balancer::open(dir) {
        Ok(b) => b.interfaces()?,
        Err(Error::NotAttached { .. }) => Vec::new(),
        Err(e) => return Err(e),
    };
    let missing: Vec<String> = cfg
        .daemon
        .interfaces
        .iter()
        .filter(|i| !attached.contains(i))
        .cloned()
        .collect();
    if !missing.is_empty() {
        let mut opts = cfg.daemon.attach_options();
        opts.interfaces = missing.clone();
        let report = dataplane::attach(dir, &opts)?;
        info!(interfaces = ?missing, "attached");
        for warning in &report.warnings {
            warn!("{warning}");
        }
    }
    if previous.is_some() {
        for name in attached
            .iter()
            .filter(|i| !cfg.daemon.interfaces.contains(i))
        {
            dataplane::detach_interface(dir, name)?;
            info!(interface = %name, "detached (no longer configured)");
        }
    }
    Ok(())
}

fn spawn_pair_reader(dir: &Path, tx: mpsc::Sender<Vec<CookiePair>>) -> Result<JoinHandle<()>> {
    let mut reader = PairReader::open(dir)?;
    Ok(tokio::spawn(async move {
        loop {
            match reader.next_batch().await {
                Ok(batch) => {
                    if tx.send(batch).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    warn!("reading cookie pairs: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }))
}

impl Daemon {
    fn balancer(&self) -> Result<Balancer> {
        Balancer::open(&self.dir)
    }

    /// Applies a prepared configuration: data-plane settings, services and backends,
    /// pairs, health checkers, group membership, metrics, then the failover plan.
    fn apply(&mut self, p: Prepared) -> Result<()> {
        // Before the new configuration replaces the running one: a rejected attach must
        // not leave it to the next replan (which would apply its drain flags).
        attach_interfaces(&self.dir, &p.cfg, Some(&self.cfg))?;
        self.cfg = p.cfg;
        let b = self.balancer()?;
        let mut dp = self.cfg.daemon.flow_timeouts;
        dp.pair_sample_mask = self.cfg.daemon.pair_sample - 1;
        b.set_config(&dp)?;
        for line in apply::reconcile(&mut b.control(), &self.cfg)? {
            info!("{line}");
        }
        self.refresh_backends(&b)?;
        drop(b);
        self.pairs.set_config(self.cfg.replication_pairs());
        self.planner
            .set_hold_down(self.cfg.daemon.failover_hold_down);
        self.sync_checkers()?;
        match p.group {
            Some((settings, key, Some(socket))) => {
                self.group = Some(Group::start(&settings, key, socket));
            }
            Some((settings, key, None)) => {
                if let Some(g) = &mut self.group {
                    g.reconfigure(&settings, key);
                }
            }
            None if self.cfg.group.is_none() => self.group = None,
            None => {}
        }
        if let Some(listener) = p.metrics {
            self.start_metrics(listener)?;
        }
        self.replan();
        Ok(())
    }

    /// Re-reads the configuration file; on any error the running state is kept.
    fn reload(&mut self) -> Result<()> {
        let result = DaemonConfig::load(&self.opts.config)
            .map_err(Error::from)
            .and_then(|cfg| prepare(cfg, Some(&self.cfg)))
            .and_then(|p| self.apply(p));
        match &result {
            Ok(()) => {
                DaemonCounters::add(&self.counters.config_reloads, 1);
                info!(config = %self.opts.config.display(), "configuration reloaded");
            }
            Err(e) => {
                DaemonCounters::add(&self.counters.config_reload_failures, 1);
                error!(config = %self.opts.config.display(), "reload rejected, running state kept: {}", one_line(e));
            }
        }
        result
    }

    /// Slots and tokens of the pinned backends (after every change of them).
    fn refresh_backends(&mut self, b: &Balancer) -> Result<()> {
        let ids: HashMap<ServiceAddr, u32> =
            b.services()?.iter().map(|s| (s.service, s.id)).collect();
        self.slots.clear();
        self.tokens.clear();
        for info in b.backends(None)? {
            let key = apply::key_of(&info);
            self.slots.insert(key, info.slot);
            if let (Some(token), Some(id)) = (&info.server_id, ids.get(&key.0)) {
                self.tokens
                    .insert((*id, token_hash(token.as_bytes())), (key.0, token.clone()));
            }
        }
        Ok(())
    }

    /// One checker per configured backend; settings changes restart it.
    fn sync_checkers(&mut self) -> Result<()> {
        let mut wanted: HashMap<BackendKey, CheckSettings> = HashMap::new();
        for s in &self.cfg.services {
            for bk in &s.backends {
                wanted.insert((s.addr, bk.addr), s.health.to_check_settings());
            }
        }
        let stale: Vec<BackendKey> = self
            .checkers
            .iter()
            .filter(|(k, c)| wanted.get(k) != Some(&c.settings))
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            if let Some(c) = self.checkers.remove(&k) {
                c.task.abort();
                self.checker_ids.remove(&c.id);
            }
            if !wanted.contains_key(&k) {
                self.healthy.remove(&k);
            }
        }
        let b = self.balancer()?;
        for (key, settings) in wanted {
            if self.checkers.contains_key(&key) {
                continue;
            }
            // A restarted daemon continues from the pinned record; a new backend starts
            // healthy and must fail `fall` checks to leave.
            let tracker = match self.slots.get(&key) {
                Some(slot) => Tracker::from_map_value(&b.health_record(*slot)?),
                None => None,
            }
            .unwrap_or_else(|| Tracker::new(Health::Up));
            self.healthy.insert(key, tracker.health() == Health::Up);
            let id = self.next_checker_id;
            self.next_checker_id += 1;
            let task = spawn_checker(id, key.1, settings.clone(), tracker, self.reports.clone());
            self.checker_ids.insert(id, key);
            self.checkers.insert(key, Checker { id, settings, task });
        }
        Ok(())
    }

    fn on_health(&mut self, report: HealthReport) {
        let Some(key) = self.checker_ids.get(&report.id).copied() else {
            return; // a checker stopped by a reload
        };
        if let Some(slot) = self.slots.get(&key) {
            let written = self
                .balancer()
                .and_then(|b| b.write_health(*slot, &report.snapshot.to_map_value()));
            if let Err(e) = written {
                warn!("writing the health of {}: {e}", key.1);
            }
        }
        if let Some(t) = report.transition {
            DaemonCounters::add(&self.counters.health_transitions, 1);
            info!(service = %key.0, backend = %key.1, "health {t}: {}", report.outcome.detail);
            self.status.record_transition(TransitionEvent {
                at: status::unix_now(),
                service: key.0.to_string(),
                backend: key.1.to_string(),
                from: t.from.to_string(),
                to: t.to.to_string(),
                detail: report.outcome.detail.clone(),
            });
            self.healthy.insert(key, t.to == Health::Up);
            self.replan();
        }
    }

    fn on_pairs(&mut self, batch: &[CookiePair]) {
        DaemonCounters::add(&self.counters.cookie_pairs_received, batch.len() as u64);
        let now = Instant::now();
        for pair in batch {
            if let Some((service, primary, secondary)) = pairs::resolve(pair, &self.tokens) {
                self.pairs
                    .observe_traffic(service, &primary, &secondary, now);
            }
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        self.dirty |= self.pairs.expire(now);
        if let Some(g) = &self.group {
            let announced = g
                .table
                .lock()
                .map(|t| t.announced_pairs(now))
                .unwrap_or_default();
            let tokens = &self.tokens;
            self.dirty |= self.pairs.set_announced(
                &announced,
                |token| {
                    tokens
                        .values()
                        .filter(|(_, t)| t == token)
                        .map(|(s, _)| *s)
                        .collect()
                },
                now,
            );
        }
        // Pairs may have changed who takes a failed primary's sessions, and hold-downs
        // end: plan again then, and now and then in any case.
        let hold_down_ended = self.planner.next_deadline().is_some_and(|d| d <= now);
        if self.dirty || hold_down_ended || now.duration_since(self.last_sync) >= RESYNC {
            self.replan();
        }
    }

    fn on_command(&mut self, cmd: Command) -> Response {
        let now = Instant::now();
        match cmd {
            Command::Reload => match self.reload() {
                Ok(()) => Response::ok(serde_json::json!({
                    "services": self.cfg.services.len(),
                    "backends": self.checkers.len(),
                })),
                Err(e) => Response::err(format!(
                    "reload rejected, running state kept: {}",
                    one_line(&e)
                )),
            },
            Command::Members => match &self.group {
                Some(g) => match g.table.lock() {
                    Ok(t) => Response::ok(serde_json::json!({
                        "members": t.members(now),
                        "counters": t.counters(),
                    })),
                    Err(_) => Response::err("member table unavailable"),
                },
                None => Response::err("group membership is not configured (no [group] section)"),
            },
            Command::Pairs => Response::ok(serde_json::json!(self.pairs.list(now))),
        }
    }

    /// Plans backend states and failover rewrites and writes what differs.
    fn replan(&mut self) {
        self.dirty = false;
        self.last_sync = Instant::now();
        let views: Vec<BackendView> = self
            .cfg
            .services
            .iter()
            .flat_map(|s| {
                s.backends.iter().map(|bk| BackendView {
                    service: s.addr,
                    endpoint: bk.addr,
                    token: bk.server_id.clone(),
                    healthy: *self.healthy.get(&(s.addr, bk.addr)).unwrap_or(&true),
                    drain: bk.drain,
                })
            })
            .collect();
        let plan = self.planner.plan(Instant::now(), &views, &self.pairs);
        let report = self
            .balancer()
            .and_then(|b| apply::sync(&mut b.control(), &plan));
        match report {
            Ok(r) => {
                DaemonCounters::add(&self.counters.failover_rewrites, r.rewrites);
                DaemonCounters::add(&self.counters.failover_restores, r.restores);
                for line in r.lines {
                    info!("{line}");
                }
            }
            Err(e) => warn!("writing backend states: {e}"),
        }
    }

    fn start_metrics(&mut self, listener: std::net::TcpListener) -> Result<()> {
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Daemon(format!("metrics socket: {e}")))?;
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| Error::Daemon(format!("metrics socket: {e}")))?;
        let dir = self.dir.clone();
        let counters = self.counters.clone();
        let metrics = Endpoint::metrics(move || {
            let b = Balancer::open(&dir).map_err(|e| e.to_string())?;
            let mut snapshot = MetricsSnapshot::read(&b).map_err(|e| e.to_string())?;
            snapshot.daemon = counters.list();
            Ok(metrics::render(&snapshot))
        });
        let endpoints = status::endpoints(self.dir.clone(), self.status.clone());
        let task = tokio::spawn(metrics::serve_endpoints(
            listener,
            std::iter::once(metrics).chain(endpoints).collect(),
            metrics::IO_TIMEOUT,
        ));
        if let Some((_, old)) = self.metrics.replace((addr, task)) {
            old.abort();
        }
        info!(%addr, "metrics endpoint");
        Ok(())
    }
}

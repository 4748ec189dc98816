//! The configuration as the daemon uses it: typed and validated.

use std::{
    net::{SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use balancer_common::Config;
use serde::Deserialize;

use super::{
    error::{invalid, ConfigError},
    raw::RawConfig,
};
use crate::{
    control::cookie_mode::CookieSettings,
    control::BackendSpec,
    daemon::health::{CheckKind, CheckSettings},
    dataplane::{AttachOptions, Mode},
    model::addr::ServiceAddr,
    model::{Persistence, Weight},
};

/// The whole configuration, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct DaemonConfig {
    pub daemon: DaemonSettings,
    /// Group membership; `None` when the file has no `[group]` section.
    pub group: Option<GroupSettings>,
    /// The `[health]` section over the built-in defaults. Each service has its own
    /// resolved copy in [`ServiceConfig::health`]; this one is for reporting.
    pub health: HealthConfig,
    pub services: Vec<ServiceConfig>,
}

/// The `[daemon]` section.
#[derive(Clone, Debug, PartialEq)]
pub struct DaemonSettings {
    /// Instance name: the data plane is pinned under `<bpffs root>/<instance>/`.
    pub instance: String,
    /// Interfaces XDP is attached to (at least one, no duplicates).
    pub interfaces: Vec<String>,
    pub xdp_mode: Mode,
    /// Flow-table entries; only used when the data plane is loaded (not when adopted).
    pub flow_capacity: u32,
    /// Idle timeouts; only written when the data plane is loaded (not when adopted).
    pub flow_timeouts: Config,
    /// Prometheus endpoint.
    pub metrics: SocketAddr,
    /// How long a failover rewrite stays after its primary is healthy again.
    pub failover_hold_down: Duration,
    /// The data plane reports one in this many cookie primary/secondary pairs.
    pub pair_sample: u32,
    /// Attach a pass program to the veth peers whose `XDP_TX` frames would stall
    /// (`balancer attach --veth-peer-pass`); for veth labs.
    pub veth_peer_pass: bool,
}

impl DaemonSettings {
    /// Pin directory of the instance under `root` (normally [`DEFAULT_BPFFS_ROOT`](crate::dataplane::DEFAULT_BPFFS_ROOT)).
    pub fn pin_dir(&self, root: &Path) -> PathBuf {
        root.join(&self.instance)
    }

    /// What `dataplane::attach` needs.
    pub fn attach_options(&self) -> AttachOptions {
        AttachOptions {
            interfaces: self.interfaces.clone(),
            mode: self.xdp_mode,
            flow_capacity: self.flow_capacity,
            config: self.flow_timeouts,
            veth_peer_pass: self.veth_peer_pass,
        }
    }
}

/// The `[group]` section: signed host messages between balancers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSettings {
    /// File with the shared group key (read by the group module, not here).
    pub key_file: PathBuf,
    /// Our member name in host messages; `None` = the host name. Needed when several
    /// balancers share a host name (network namespaces of one test machine).
    pub name: Option<String>,
    pub listen: SocketAddr,
    /// How often we send our host message.
    pub interval: Duration,
    /// A member unheard for longer than this is down. Longer than `interval`.
    pub member_timeout: Duration,
    /// Balancers we send our host messages to.
    pub peers: Vec<SocketAddr>,
}

/// How a backend is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthKind {
    /// A TCP connection to the backend's address completes.
    Tcp,
    /// `GET <path>` answers with `expect_status`.
    Http,
}

/// Health-check settings of one service, every field resolved (per-service override,
/// then `[health]`, then the defaults). Flat, so that a per-service table can override
/// single keys; [`HealthConfig::to_check_settings`] gives the checker's form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    pub kind: HealthKind,
    /// HTTP checks: request path (starts with '/').
    pub path: String,
    /// HTTP checks: the status that means healthy.
    pub expect_status: u16,
    /// HTTP checks: Host header; `None` = the backend's address.
    pub host: Option<String>,
    pub interval: Duration,
    /// At most `interval`, so checks of one backend never overlap.
    pub timeout: Duration,
    /// Consecutive successes that make a down backend up.
    pub rise: u32,
    /// Consecutive failures that make an up backend down.
    pub fall: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        // Timing from the checker's defaults, so they are defined once.
        let checker = CheckSettings::default();
        HealthConfig {
            kind: HealthKind::Tcp,
            path: "/".into(),
            expect_status: 200,
            host: None,
            interval: checker.interval,
            timeout: checker.timeout,
            rise: checker.rise,
            fall: checker.fall,
        }
    }
}

/// One `[[service]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceConfig {
    pub addr: ServiceAddr,
    /// Cookie-mode settings; `None` for plain NAT services.
    pub cookie: Option<CookieSettings>,
    /// How new connections (cookie mode: those the policy binds) pick their backend.
    pub persistence: Persistence,
    pub health: HealthConfig,
    pub backends: Vec<BackendConfig>,
}

impl ServiceConfig {
    /// `nat` or `cookie`, as `balancer service list` shows it.
    pub fn mode(&self) -> &'static str {
        if self.cookie.is_some() {
            "cookie"
        } else {
            "nat"
        }
    }

    /// The backend whose server-ID token is `server_id`.
    pub fn backend_by_server_id(&self, server_id: &str) -> Option<&BackendConfig> {
        self.backends
            .iter()
            .find(|b| b.server_id.as_deref() == Some(server_id))
    }
}

/// One `[[service.backend]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    pub addr: SocketAddrV4,
    pub weight: Weight,
    /// Cookie mode: the token the app server writes into the session cookie.
    pub server_id: Option<String>,
    /// Cookie mode: server_id of the backend holding this one's replicated sessions.
    pub secondary: Option<String>,
    /// Operator drain: keeps its flows, gets no new ones.
    pub drain: bool,
}

impl BackendConfig {
    /// What `Balancer::add_backend` takes.
    pub fn spec(&self) -> BackendSpec {
        BackendSpec {
            addr: self.addr,
            weight: self.weight,
            server_id: self.server_id.clone(),
        }
    }
}

impl DaemonConfig {
    /// Parses and validates a configuration.
    pub fn parse(text: &str) -> Result<DaemonConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::from_toml(text, &e))?;
        raw.validate()
    }

    /// Reads, parses and validates a configuration file; errors name the file.
    pub fn load(path: impl AsRef<Path>) -> Result<DaemonConfig, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        DaemonConfig::parse(&text).map_err(|e| ConfigError::InFile {
            path: path.to_path_buf(),
            inner: Box::new(e),
        })
    }

    /// Fails unless every configured interface exists in this network namespace. Kept
    /// apart from parsing so the rest is testable on any machine; the daemon calls it
    /// before applying a configuration.
    pub fn check_interfaces(&self) -> Result<(), ConfigError> {
        for name in &self.daemon.interfaces {
            // Names were checked for NUL bytes when parsing.
            let c = std::ffi::CString::new(name.as_str())
                .map_err(|_| invalid("daemon.interfaces", "interface name contains NUL"))?;
            // SAFETY: c is a valid NUL-terminated string.
            if unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
                return Err(invalid(
                    "daemon.interfaces",
                    format!("interface \"{name}\" does not exist in this network namespace"),
                ));
            }
        }
        Ok(())
    }

    /// Configured replication pairs: (service, primary token, secondary token), from the
    /// backends' `secondary` keys.
    pub fn replication_pairs(&self) -> Vec<(ServiceAddr, String, String)> {
        self.services
            .iter()
            .flat_map(|s| {
                s.backends
                    .iter()
                    .filter_map(move |b| Some((s.addr, b.server_id.clone()?, b.secondary.clone()?)))
            })
            .collect()
    }

    /// The service at `addr`.
    pub fn service(&self, addr: &ServiceAddr) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.addr == *addr)
    }
}

impl HealthConfig {
    /// The health checker's form of these settings.
    pub fn to_check_settings(&self) -> CheckSettings {
        CheckSettings {
            kind: match self.kind {
                HealthKind::Tcp => CheckKind::Tcp,
                HealthKind::Http => CheckKind::Http {
                    path: self.path.clone(),
                    expect_status: self.expect_status,
                    host: self.host.clone(),
                },
            },
            interval: self.interval,
            timeout: self.timeout,
            rise: self.rise,
            fall: self.fall,
        }
    }

    /// The checker's own rules (interval range, timeout within the interval, rise and
    /// fall, HTTP path, status and host), so the file accepts exactly what it can run.
    pub(super) fn check(&self, at: &str) -> Result<(), ConfigError> {
        self.to_check_settings()
            .validate()
            .map_err(|e| invalid(at, e))
    }
}

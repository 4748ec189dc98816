//! The daemon's configuration file (`balancer daemon --config <file.toml>`): parsing and
//! complete validation into typed settings.
//!
//! A file is either accepted as a whole or rejected with one line saying what is wrong
//! and where, before anything is applied: on reload (SIGHUP, `balancer reload`) the
//! daemon keeps its running state when the new file is rejected. Parsing is pure; the
//! one check that depends on the machine (do the interfaces exist) is separate,
//! [`DaemonConfig::check_interfaces`], so everything else is testable anywhere.
//!
//! Unknown keys are errors (a misspelt `wieght` must not silently become the default).
//! Durations are strings with a unit: `"250ms"`, `"1s"`, `"1.5s"`, `"2m"`, `"1h"`.
//!
//! # Example
//!
//! Every key, with its default where it has one:
//!
//! ```toml
//! [daemon]
//! instance = "default"              # pin directory /sys/fs/bpf/balancer/<instance>
//! interfaces = ["eth0", "eth1"]     # attach XDP here (required, at least one)
//! xdp_mode = "native"               # native | generic
//! flow_capacity = 262144            # flow-table entries (two per connection)
//! tcp_timeout = "15m"               # idle timeouts of established TCP flows,
//! tcp_transient_timeout = "30s"     # TCP flows in handshake or closing,
//! udp_timeout = "1m"                # and UDP flows (whole seconds)
//! metrics = "127.0.0.1:9469"        # Prometheus endpoint; "" = this default
//! failover_hold_down = "10s"        # a failover rewrite stays this long after the
//!                                   # primary is healthy again (0s..=1h)
//! pair_sample = 16                  # the data plane reports 1 in N primary/secondary
//!                                   # cookie pairs (power of two, 1..=1024)
//!
//! [group]                           # optional: absent = no group membership
//! key_file = "/etc/balancer/group.key"   # required in this section
//! # name = "lb-1"                   # our name in host messages (default: host name)
//! listen = "0.0.0.0:7946"
//! interval = "1s"                   # how often we send our host message
//! member_timeout = "3s"             # a member is down when unheard for longer
//! peers = ["10.0.0.2:7946"]         # balancers we send our host messages to
//!
//! [health]                          # defaults for every service's checks
//! kind = "tcp"                      # tcp (connect) | http (GET)
//! path = "/"                        # http: request path
//! expect_status = 200               # http: expected status code
//! # host = "app.example"            # http: Host header (default: the backend address)
//! interval = "250ms"
//! timeout = "200ms"                 # at most the interval
//! rise = 2                          # consecutive successes to become healthy
//! fall = 2                          # consecutive failures to become unhealthy
//!
//! [[service]]
//! address = "198.18.0.10:80"        # required
//! proto = "tcp"                     # tcp | udp
//! mode = "cookie"                   # nat | cookie (cookie needs tcp)
//! cookie_name = "JSESSIONID"        # cookie mode only, defaults as for
//! delimiter = "!"                   # `balancer service add --cookie`
//! primary_segment = 2
//! secondary_segment = 3             # 0 = the cookie names no secondary
//! health = { kind = "http", path = "/health" }   # merged over [health]
//!
//!   [[service.backend]]
//!   address = "198.18.1.2:8080"     # required
//!   weight = 100                    # 1..=10000
//!   server_id = "a1"                # required in cookie mode, forbidden otherwise
//!   secondary = "b1"                # server_id of its replication partner (optional)
//!   drain = false                   # true: keeps its flows, gets no new ones
//!
//!   [[service.backend]]
//!   address = "198.18.1.3:8080"
//!   server_id = "b1"
//!   secondary = "a1"
//!
//! [[service]]
//! address = "198.18.0.11:53"
//! proto = "udp"
//!
//!   [[service.backend]]
//!   address = "198.18.1.4:53"
//! ```

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use balancer_common::{cookie::token_hash, Config, MAX_BACKENDS, MAX_SERVICES, MAX_WEIGHT};
use serde::Deserialize;

use crate::{
    control::cookie_mode::{validate_server_id, CookieSettings},
    control::BackendSpec,
    daemon::health::{CheckKind, CheckSettings},
    dataplane::{instance_dir, AttachOptions, Mode, DEFAULT_BPFFS_ROOT},
    model::addr::{parse_endpoint, Proto, ServiceAddr},
    model::Weight,
};

/// Where the Prometheus endpoint listens unless configured: loopback only, since the
/// metrics tell anyone who can read them the topology behind the VIPs.
pub const DEFAULT_METRICS_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9469);
pub const DEFAULT_GROUP_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 7946);
pub const DEFAULT_HOLD_DOWN: Duration = Duration::from_secs(10);
pub const MAX_HOLD_DOWN: Duration = Duration::from_secs(3600);
/// The data plane's own default (used when it is loaded without a daemon).
pub use balancer_common::DEFAULT_PAIR_SAMPLE;
pub const MAX_PAIR_SAMPLE: u32 = 1024;
pub const DEFAULT_INSTANCE: &str = "default";

/// Why a configuration was rejected. The `Display` form is one line that says where
/// (file, line and column, or the service and backend) and what is wrong.
///
/// No variant exposes a `source()`: the cause is already in the message, and error
/// chains printed with ": " between links would repeat it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// TOML syntax, or a value of the wrong type, a missing or an unknown key.
    #[error("{}", toml_message(*position, message))]
    Toml {
        /// 1-based line and column, when the parser knows them.
        position: Option<(usize, usize)>,
        message: String,
    },
    /// A well-formed file whose content is not acceptable.
    #[error("{at}: {message}")]
    Invalid { at: String, message: String },
    /// Any of the above, in a named file.
    #[error("{}: {inner}", path.display())]
    InFile {
        path: PathBuf,
        inner: Box<ConfigError>,
    },
}

/// The daemon's configuration errors travel through the library's one `Result` (the library
/// sits below the daemon and does not know this type).
impl From<ConfigError> for crate::Error {
    fn from(e: ConfigError) -> Self {
        crate::Error::Upper(Box::new(e))
    }
}

fn toml_message(position: Option<(usize, usize)>, message: &str) -> String {
    match position {
        Some((line, column)) => format!("line {line}, column {column}: {message}"),
        None => message.to_string(),
    }
}

fn invalid(at: impl fmt::Display, message: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        at: at.to_string(),
        message: message.to_string(),
    }
}

impl ConfigError {
    fn from_toml(text: &str, e: &toml::de::Error) -> ConfigError {
        let position = e.span().map(|span| line_column(text, span.start));
        // Some parser messages span several lines; the operator gets one.
        let message = e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        ConfigError::Toml { position, message }
    }
}

/// 1-based line and column (in characters) of byte offset `at` in `text`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..text.floor_char_boundary(at.min(text.len()))];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// Parses a duration written as a decimal number and a unit: `ms`, `s`, `m` or `h`
/// (`"250ms"`, `"1.5s"`, `"2m"`). Exact to the nanosecond; no unit is not accepted, so
/// `"10"` cannot be misread as seconds when milliseconds were meant.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const EXPECTED: &str =
        "expected a number and a unit (ms, s, m or h), e.g. \"250ms\" or \"1.5s\"";
    let bad = || format!("invalid duration \"{s}\": {EXPECTED}");
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(bad)?;
    let (number, unit) = s.split_at(split);
    let unit_ns: u128 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(bad()),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits_ok = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || !digits_ok(whole)
        || !digits_ok(fraction)
        || number.ends_with('.')
        || fraction.len() > 9
    {
        return Err(bad());
    }
    let too_long = || format!("invalid duration \"{s}\": too long");
    let whole: u128 = whole.parse().map_err(|_| too_long())?;
    let fraction_ns = if fraction.is_empty() {
        0
    } else {
        // At most 9 digits: fits, and the division truncates below a nanosecond.
        fraction.parse::<u128>().map_err(|_| bad())? * unit_ns / 10u128.pow(fraction.len() as u32)
    };
    let ns = whole
        .checked_mul(unit_ns)
        .and_then(|n| n.checked_add(fraction_ns))
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(too_long)?;
    Ok(Duration::from_nanos(ns))
}

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
}

impl DaemonSettings {
    /// Pin directory of the instance under `root` (normally [`DEFAULT_BPFFS_ROOT`]).
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
            veth_peer_pass: false,
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

// ---- The file as written: every key optional here, so that defaults and messages are
// ours rather than serde's. Validation turns it into the types above.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    daemon: RawDaemon,
    group: Option<RawGroup>,
    #[serde(default)]
    health: RawHealth,
    #[serde(default, rename = "service")]
    services: Vec<RawService>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    instance: Option<String>,
    interfaces: Option<Vec<String>>,
    xdp_mode: Option<RawXdpMode>,
    flow_capacity: Option<u32>,
    tcp_timeout: Option<String>,
    tcp_transient_timeout: Option<String>,
    udp_timeout: Option<String>,
    metrics: Option<String>,
    failover_hold_down: Option<String>,
    pair_sample: Option<u32>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawXdpMode {
    Native,
    Generic,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    key_file: Option<PathBuf>,
    name: Option<String>,
    listen: Option<String>,
    interval: Option<String>,
    member_timeout: Option<String>,
    #[serde(default)]
    peers: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    kind: Option<HealthKind>,
    path: Option<String>,
    expect_status: Option<u16>,
    host: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    rise: Option<u32>,
    fall: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    address: String,
    proto: Option<RawProto>,
    mode: Option<RawMode>,
    cookie_name: Option<String>,
    delimiter: Option<String>,
    primary_segment: Option<u8>,
    secondary_segment: Option<u8>,
    health: Option<RawHealth>,
    #[serde(default, rename = "backend")]
    backends: Vec<RawBackend>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawProto {
    Tcp,
    Udp,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawMode {
    Nat,
    Cookie,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: String,
    weight: Option<u32>,
    server_id: Option<String>,
    secondary: Option<String>,
    drain: Option<bool>,
}

/// A duration key: `default` when absent.
fn duration(at: &str, value: Option<&str>, default: Duration) -> Result<Duration, ConfigError> {
    value.map_or(Ok(default), |v| {
        parse_duration(v).map_err(|message| invalid(at, message))
    })
}

/// A socket address key: `default` when absent or empty.
fn socket_addr(
    at: &str,
    value: Option<&str>,
    default: SocketAddr,
) -> Result<SocketAddr, ConfigError> {
    match value {
        None | Some("") => Ok(default),
        Some(v) => v.parse().map_err(|_| {
            invalid(
                at,
                format!("\"{v}\" is not an address and port (e.g. \"127.0.0.1:9469\")"),
            )
        }),
    }
}

/// A flow idle timeout: whole seconds, at least one (the data plane counts seconds).
fn timeout_seconds(at: &str, value: Option<&str>, default_s: u32) -> Result<u32, ConfigError> {
    let d = duration(at, value, Duration::from_secs(default_s.into()))?;
    if d.is_zero() {
        return Err(invalid(
            at,
            "must be at least 1s (flows would expire at once)",
        ));
    }
    if d.subsec_nanos() != 0 {
        return Err(invalid(
            at,
            format!("{d:?} is not a whole number of seconds"),
        ));
    }
    u32::try_from(d.as_secs()).map_err(|_| invalid(at, format!("{d:?} is too long")))
}

/// Linux interface names: 1-15 bytes (IFNAMSIZ - 1), no '/', ':', whitespace or NUL.
fn check_interface_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if !ok {
        return Err(invalid(
            "daemon.interfaces",
            format!("\"{name}\" is not an interface name (1-15 characters, no '/', ':' or spaces)"),
        ));
    }
    Ok(())
}

impl RawConfig {
    fn validate(self) -> Result<DaemonConfig, ConfigError> {
        let daemon = self.daemon.validate()?;
        let group = self.group.map(RawGroup::validate).transpose()?;
        let health = self.health.merge_over("health", &HealthConfig::default())?;
        if self.services.len() > MAX_SERVICES as usize {
            return Err(invalid(
                "service",
                format!(
                    "{} services configured, the data plane holds at most {MAX_SERVICES}",
                    self.services.len()
                ),
            ));
        }
        let total: usize = self.services.iter().map(|s| s.backends.len()).sum();
        if total > MAX_BACKENDS as usize {
            return Err(invalid(
                "service.backend",
                format!(
                    "{total} backends configured, the data plane holds at most {MAX_BACKENDS} across all services"
                ),
            ));
        }
        let mut services: Vec<ServiceConfig> = Vec::with_capacity(self.services.len());
        for (i, raw) in self.services.into_iter().enumerate() {
            let s = raw.validate(i, &health)?;
            if services.iter().any(|o| o.addr == s.addr) {
                return Err(invalid(format!("service {}", s.addr), "configured twice"));
            }
            services.push(s);
        }
        Ok(DaemonConfig {
            daemon,
            group,
            health,
            services,
        })
    }
}

impl RawDaemon {
    fn validate(self) -> Result<DaemonSettings, ConfigError> {
        let instance = self.instance.unwrap_or_else(|| DEFAULT_INSTANCE.into());
        instance_dir(Path::new(DEFAULT_BPFFS_ROOT), &instance)
            .map_err(|e| invalid("daemon.instance", e))?;
        let interfaces = self.interfaces.unwrap_or_default();
        if interfaces.is_empty() {
            return Err(invalid(
                "daemon.interfaces",
                "list at least one interface to attach to, e.g. interfaces = [\"eth0\"]",
            ));
        }
        for (i, name) in interfaces.iter().enumerate() {
            check_interface_name(name)?;
            if interfaces[..i].contains(name) {
                return Err(invalid(
                    "daemon.interfaces",
                    format!("\"{name}\" is listed twice"),
                ));
            }
        }
        let flow_capacity = self
            .flow_capacity
            .unwrap_or(balancer_common::DEFAULT_FLOW_CAPACITY);
        if flow_capacity < 2 {
            return Err(invalid(
                "daemon.flow_capacity",
                format!("{flow_capacity} is too small: each connection needs 2 entries"),
            ));
        }
        let defaults = Config::default();
        let flow_timeouts = Config {
            tcp_established_timeout_s: timeout_seconds(
                "daemon.tcp_timeout",
                self.tcp_timeout.as_deref(),
                defaults.tcp_established_timeout_s,
            )?,
            tcp_transient_timeout_s: timeout_seconds(
                "daemon.tcp_transient_timeout",
                self.tcp_transient_timeout.as_deref(),
                defaults.tcp_transient_timeout_s,
            )?,
            udp_timeout_s: timeout_seconds(
                "daemon.udp_timeout",
                self.udp_timeout.as_deref(),
                defaults.udp_timeout_s,
            )?,
            ..defaults
        };
        let metrics = socket_addr(
            "daemon.metrics",
            self.metrics.as_deref(),
            DEFAULT_METRICS_ADDR,
        )?;
        let failover_hold_down = duration(
            "daemon.failover_hold_down",
            self.failover_hold_down.as_deref(),
            DEFAULT_HOLD_DOWN,
        )?;
        if failover_hold_down > MAX_HOLD_DOWN {
            return Err(invalid(
                "daemon.failover_hold_down",
                format!("{failover_hold_down:?} is longer than the limit of {MAX_HOLD_DOWN:?}"),
            ));
        }
        let pair_sample = self.pair_sample.unwrap_or(DEFAULT_PAIR_SAMPLE);
        if !pair_sample.is_power_of_two() || pair_sample > MAX_PAIR_SAMPLE {
            return Err(invalid(
                "daemon.pair_sample",
                format!("{pair_sample} is not a power of two between 1 and {MAX_PAIR_SAMPLE}"),
            ));
        }
        Ok(DaemonSettings {
            instance,
            interfaces,
            xdp_mode: match self.xdp_mode.unwrap_or(RawXdpMode::Native) {
                RawXdpMode::Native => Mode::Native,
                RawXdpMode::Generic => Mode::Generic,
            },
            flow_capacity,
            flow_timeouts,
            metrics,
            failover_hold_down,
            pair_sample,
        })
    }
}

impl RawGroup {
    fn validate(self) -> Result<GroupSettings, ConfigError> {
        let key_file = self
            .key_file
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| {
                invalid(
                    "group.key_file",
                    "required: the file with the shared group key",
                )
            })?;
        let listen = socket_addr("group.listen", self.listen.as_deref(), DEFAULT_GROUP_LISTEN)?;
        if listen.port() == 0 {
            return Err(invalid(
                "group.listen",
                "port 0: peers need a known port to send to",
            ));
        }
        let interval = duration(
            "group.interval",
            self.interval.as_deref(),
            Duration::from_secs(1),
        )?;
        crate::daemon::group::check_interval(interval).map_err(|e| invalid("group.interval", e))?;
        let member_timeout = duration(
            "group.member_timeout",
            self.member_timeout.as_deref(),
            Duration::from_secs(3),
        )?;
        if member_timeout <= interval {
            return Err(invalid(
                "group.member_timeout",
                format!(
                    "{member_timeout:?} must be longer than group.interval ({interval:?}), or members would be declared down between two messages"
                ),
            ));
        }
        let mut peers = Vec::with_capacity(self.peers.len());
        for p in &self.peers {
            let addr: SocketAddr = p.parse().map_err(|_| {
                invalid(
                    "group.peers",
                    format!("\"{p}\" is not an address and port (e.g. \"10.0.0.2:7946\")"),
                )
            })?;
            crate::daemon::group::check_target(addr).map_err(|e| invalid("group.peers", e))?;
            if peers.contains(&addr) {
                return Err(invalid("group.peers", format!("{addr} is listed twice")));
            }
            peers.push(addr);
        }
        if let Some(name) = &self.name {
            // As the group module bounds names in host messages.
            if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(
                    "group.name",
                    format!(
                        "\"{}\" is not 1-64 visible ASCII characters",
                        name.escape_debug()
                    ),
                ));
            }
        }
        Ok(GroupSettings {
            key_file,
            name: self.name,
            listen,
            interval,
            member_timeout,
            peers,
        })
    }
}

impl RawHealth {
    /// These settings over `base`, checked. `at` names the section in errors.
    fn merge_over(&self, at: &str, base: &HealthConfig) -> Result<HealthConfig, ConfigError> {
        let field = |name: &str| format!("{at}.{name}");
        let h = HealthConfig {
            kind: self.kind.unwrap_or(base.kind),
            path: self.path.clone().unwrap_or_else(|| base.path.clone()),
            expect_status: self.expect_status.unwrap_or(base.expect_status),
            host: self.host.clone().or_else(|| base.host.clone()),
            interval: duration(&field("interval"), self.interval.as_deref(), base.interval)?,
            timeout: duration(&field("timeout"), self.timeout.as_deref(), base.timeout)?,
            rise: self.rise.unwrap_or(base.rise),
            fall: self.fall.unwrap_or(base.fall),
        };
        h.check(at)?;
        Ok(h)
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
    fn check(&self, at: &str) -> Result<(), ConfigError> {
        self.to_check_settings()
            .validate()
            .map_err(|e| invalid(at, e))
    }
}

impl RawService {
    fn validate(
        self,
        index: usize,
        health_defaults: &HealthConfig,
    ) -> Result<ServiceConfig, ConfigError> {
        let proto = match self.proto.unwrap_or(RawProto::Tcp) {
            RawProto::Tcp => Proto::Tcp,
            RawProto::Udp => Proto::Udp,
        };
        let addr = ServiceAddr::parse(&self.address, proto)
            .map_err(|e| invalid(format!("service #{}", index + 1), e))?;
        let at = format!("service {addr}");
        let cookie = self.cookie_settings(&at, proto)?;
        let health = self
            .health
            .as_ref()
            .map_or(Ok(health_defaults.clone()), |h| {
                h.merge_over(&format!("{at}, health"), health_defaults)
            })?;
        let mut backends: Vec<BackendConfig> = Vec::with_capacity(self.backends.len());
        for (i, raw) in self.backends.into_iter().enumerate() {
            let b = raw.validate(&at, i, cookie.as_ref())?;
            if backends.iter().any(|o| o.addr == b.addr) {
                return Err(invalid(
                    format!("{at}, backend {}", b.addr),
                    "configured twice in this service",
                ));
            }
            backends.push(b);
        }
        check_tokens(&at, &backends, token_hash)?;
        check_secondaries(&at, &backends)?;
        Ok(ServiceConfig {
            addr,
            cookie,
            health,
            backends,
        })
    }

    /// Cookie settings in cookie mode; in NAT mode, none of the cookie keys may be set
    /// (they would be silently ignored otherwise).
    fn cookie_settings(
        &self,
        at: &str,
        proto: Proto,
    ) -> Result<Option<CookieSettings>, ConfigError> {
        if self.mode.unwrap_or(RawMode::Nat) == RawMode::Nat {
            let set = [
                ("cookie_name", self.cookie_name.is_some()),
                ("delimiter", self.delimiter.is_some()),
                ("primary_segment", self.primary_segment.is_some()),
                ("secondary_segment", self.secondary_segment.is_some()),
            ];
            if let Some((key, _)) = set.iter().find(|(_, is_set)| *is_set) {
                return Err(invalid(
                    at,
                    format!("{key} applies to cookie mode only (mode = \"cookie\")"),
                ));
            }
            return Ok(None);
        }
        if proto != Proto::Tcp {
            return Err(invalid(
                at,
                "cookie mode needs proto = \"tcp\" (the cookie is read from an HTTP request)",
            ));
        }
        let defaults = CookieSettings::default();
        let delimiter = match self.delimiter.as_deref() {
            None => defaults.delimiter,
            Some(d) => {
                let mut chars = d.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => c,
                    _ => {
                        return Err(invalid(
                            at,
                            format!("delimiter \"{d}\" must be exactly one character"),
                        ))
                    }
                }
            }
        };
        let settings = CookieSettings {
            name: self.cookie_name.clone().unwrap_or(defaults.name),
            delimiter,
            primary_segment: self.primary_segment.unwrap_or(defaults.primary_segment),
            secondary_segment: self.secondary_segment.unwrap_or(defaults.secondary_segment),
        };
        settings.to_config().map_err(|e| invalid(at, e))?;
        Ok(Some(settings))
    }
}

impl RawBackend {
    fn validate(
        self,
        service_at: &str,
        index: usize,
        cookie: Option<&CookieSettings>,
    ) -> Result<BackendConfig, ConfigError> {
        let addr = parse_endpoint("backend address", &self.address)
            .map_err(|e| invalid(format!("{service_at}, backend #{}", index + 1), e))?;
        let at = format!("{service_at}, backend {addr}");
        let weight = match self.weight {
            None => Weight::DEFAULT,
            Some(w) => Weight::new(w).map_err(|_| {
                invalid(
                    &at,
                    format!("weight {w} is not in 1..={MAX_WEIGHT} (set drain = true to stop new flows)"),
                )
            })?,
        };
        match cookie {
            Some(settings) => {
                let token = self.server_id.as_deref().ok_or_else(|| {
                    invalid(&at, "server_id is required in cookie mode: the token the app server writes into the cookie")
                })?;
                validate_server_id(token, settings).map_err(|e| invalid(&at, e))?;
            }
            None => {
                for (key, set) in [
                    ("server_id", self.server_id.is_some()),
                    ("secondary", self.secondary.is_some()),
                ] {
                    if set {
                        return Err(invalid(
                            &at,
                            format!(
                                "{key} applies to cookie-mode services only (mode = \"cookie\")"
                            ),
                        ));
                    }
                }
            }
        }
        Ok(BackendConfig {
            addr,
            weight,
            server_id: self.server_id,
            secondary: self.secondary,
            drain: self.drain.unwrap_or(false),
        })
    }
}

/// Rejects server-ID tokens the data plane could not tell apart: it looks tokens up by
/// a 64-bit hash, so two different tokens with the same hash are as bad as the same
/// token twice (as `CookieMaps::check_free` enforces for the CLI). `hash` is a parameter
/// so the test can force a collision.
fn check_tokens(
    at: &str,
    backends: &[BackendConfig],
    hash: impl Fn(&[u8]) -> u64,
) -> Result<(), ConfigError> {
    let mut seen: HashMap<u64, (&str, SocketAddrV4)> = HashMap::new();
    for b in backends {
        let Some(token) = b.server_id.as_deref() else {
            continue;
        };
        if let Some((other, other_addr)) = seen.insert(hash(token.as_bytes()), (token, b.addr)) {
            let message = if other == token {
                format!("server_id \"{token}\" is also used by backend {other_addr}")
            } else {
                format!(
                    "server_id \"{token}\" hashes like \"{other}\" of backend {other_addr} (the data plane looks tokens up by hash); choose another token"
                )
            };
            return Err(invalid(format!("{at}, backend {}", b.addr), message));
        }
    }
    Ok(())
}

/// Every `secondary` names another backend of the same service.
fn check_secondaries(at: &str, backends: &[BackendConfig]) -> Result<(), ConfigError> {
    let tokens: HashSet<&str> = backends
        .iter()
        .filter_map(|b| b.server_id.as_deref())
        .collect();
    for b in backends {
        let Some(secondary) = b.secondary.as_deref() else {
            continue;
        };
        let at = || format!("{at}, backend {}", b.addr);
        if b.server_id.as_deref() == Some(secondary) {
            return Err(invalid(
                at(),
                format!("secondary \"{secondary}\" is this backend's own server_id"),
            ));
        }
        if !tokens.contains(secondary) {
            return Err(invalid(
                at(),
                format!(
                    "secondary \"{secondary}\" is not the server_id of any backend of this service"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the module documentation, so the documentation stays true.
    fn doc_example() -> String {
        let source = include_str!("config.rs");
        let doc: Vec<&str> = source
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .map(|l| {
                l.strip_prefix("//! ")
                    .unwrap_or(l.trim_start_matches("//!"))
            })
            .collect();
        let start = doc
            .iter()
            .position(|l| *l == "```toml")
            .expect("toml example")
            + 1;
        let len = doc[start..]
            .iter()
            .position(|l| *l == "```")
            .expect("end of example");
        doc[start..start + len].join("\n")
    }

    #[test]
    fn documented_example_parses() {
        let c = DaemonConfig::parse(&doc_example()).unwrap();
        assert_eq!(c.daemon.instance, "default");
        assert_eq!(c.daemon.interfaces, ["eth0", "eth1"]);
        assert_eq!(c.daemon.xdp_mode, Mode::Native);
        assert_eq!(c.daemon.flow_capacity, 262_144);
        assert_eq!(c.daemon.flow_timeouts, Config::default());
        assert_eq!(c.daemon.metrics, DEFAULT_METRICS_ADDR);
        assert_eq!(c.daemon.failover_hold_down, Duration::from_secs(10));
        assert_eq!(c.daemon.pair_sample, 16);
        let g = c.group.as_ref().unwrap();
        assert_eq!(g.key_file, Path::new("/etc/balancer/group.key"));
        assert_eq!(g.listen, DEFAULT_GROUP_LISTEN);
        assert_eq!(g.member_timeout, Duration::from_secs(3));
        assert_eq!(g.peers, ["10.0.0.2:7946".parse::<SocketAddr>().unwrap()]);
        assert_eq!(c.health, HealthConfig::default());

        assert_eq!(c.services.len(), 2);
        let web = &c.services[0];
        assert_eq!(web.addr.to_string(), "198.18.0.10:80/tcp");
        assert_eq!(web.mode(), "cookie");
        assert_eq!(web.cookie, Some(CookieSettings::default()));
        assert_eq!(web.health.kind, HealthKind::Http);
        assert_eq!(web.health.path, "/health");
        assert_eq!(
            web.health.timeout,
            Duration::from_millis(200),
            "merged from [health]"
        );
        assert_eq!(web.backends[0].addr.to_string(), "198.18.1.2:8080");
        assert_eq!(web.backends[1].weight, Weight::DEFAULT);
        assert_eq!(
            web.backend_by_server_id("b1").unwrap().addr.to_string(),
            "198.18.1.3:8080"
        );
        let spec = web.backends[0].spec();
        assert_eq!(
            (
                spec.addr.port(),
                spec.weight.get(),
                spec.server_id.as_deref()
            ),
            (8080, 100, Some("a1"))
        );

        let dns = &c.services[1];
        assert_eq!(dns.addr.proto, Proto::Udp);
        assert_eq!(dns.mode(), "nat");
        assert_eq!(dns.health, HealthConfig::default());

        let web_addr = web.addr;
        assert_eq!(
            c.replication_pairs(),
            [
                (web_addr, "a1".into(), "b1".into()),
                (web_addr, "b1".into(), "a1".into())
            ]
        );
        assert!(c.service(&web_addr).is_some());
    }

    #[test]
    fn defaults_fill_a_minimal_file() {
        let c = DaemonConfig::parse(
            "[daemon]\ninterfaces = [\"eth0\"]\nmetrics = \"\"\n\n[[service]]\naddress = \"198.18.0.10:80\"\n\n[[service.backend]]\naddress = \"198.18.1.2:8080\"\n",
        )
        .unwrap();
        let d = &c.daemon;
        assert_eq!(d.instance, DEFAULT_INSTANCE);
        assert_eq!(d.xdp_mode, Mode::Native);
        assert_eq!(d.flow_capacity, balancer_common::DEFAULT_FLOW_CAPACITY);
        assert_eq!(d.metrics, DEFAULT_METRICS_ADDR);
        assert_eq!(d.failover_hold_down, DEFAULT_HOLD_DOWN);
        assert_eq!(d.pair_sample, DEFAULT_PAIR_SAMPLE);
        assert_eq!(
            d.pin_dir(Path::new("/sys/fs/bpf/balancer")),
            Path::new("/sys/fs/bpf/balancer/default")
        );
        assert_eq!(d.attach_options().interfaces, ["eth0"]);
        assert!(c.group.is_none());
        let s = &c.services[0];
        assert_eq!(s.addr.proto, Proto::Tcp);
        assert!(s.cookie.is_none());
        assert_eq!(s.health, HealthConfig::default());
        let b = &s.backends[0];
        assert_eq!(
            (b.weight, b.drain, &b.server_id, &b.secondary),
            (Weight::DEFAULT, false, &None, &None)
        );
        assert!(c.replication_pairs().is_empty());
    }

    #[test]
    fn settings_override_defaults() {
        let c = DaemonConfig::parse(
            r#"
            [daemon]
            instance = "edge-1"
            interfaces = ["veth0"]
            xdp_mode = "generic"
            tcp_timeout = "2m"
            metrics = "[::1]:9000"
            failover_hold_down = "0s"
            pair_sample = 1
            [group]
            key_file = "k"
            interval = "250ms"
            member_timeout = "1.5s"
            [health]
            kind = "http"
            expect_status = 204
            host = "app.example"
            rise = 1
            [[service]]
            address = "198.18.0.10:443"
            mode = "cookie"
            cookie_name = "SID"
            delimiter = ":"
            primary_segment = 1
            secondary_segment = 0
            health = { kind = "tcp", interval = "5s", timeout = "2s" }
            [[service.backend]]
            address = "198.18.1.2:443"
            server_id = "x"
            weight = 10000
            drain = true
            "#,
        )
        .unwrap();
        assert_eq!(c.daemon.xdp_mode, Mode::Generic);
        assert_eq!(c.daemon.flow_timeouts.tcp_established_timeout_s, 120);
        assert_eq!(
            c.daemon.metrics,
            "[::1]:9000".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(c.daemon.failover_hold_down, Duration::ZERO);
        assert_eq!(c.group.unwrap().interval, Duration::from_millis(250));
        assert_eq!(c.health.kind, HealthKind::Http);
        let s = &c.services[0];
        let cookie = s.cookie.as_ref().unwrap();
        assert_eq!(
            (
                cookie.name.as_str(),
                cookie.delimiter,
                cookie.primary_segment,
                cookie.secondary_segment
            ),
            ("SID", ':', 1, 0)
        );
        let h = &s.health;
        assert_eq!(h.kind, HealthKind::Tcp);
        assert_eq!(
            (h.interval, h.timeout),
            (Duration::from_secs(5), Duration::from_secs(2))
        );
        assert_eq!(
            (h.expect_status, h.rise, h.host.as_deref()),
            (204, 1, Some("app.example"))
        );
        assert!(s.backends[0].drain);
    }

    #[test]
    fn durations() {
        let ok = [
            ("250ms", Duration::from_millis(250)),
            ("1s", Duration::from_secs(1)),
            ("1.5s", Duration::from_millis(1500)),
            ("0.001s", Duration::from_millis(1)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("0s", Duration::ZERO),
            ("1.000000001s", Duration::new(1, 1)),
        ];
        for (s, d) in ok {
            assert_eq!(parse_duration(s), Ok(d), "{s}");
        }
        for bad in [
            "",
            "1",
            "s",
            "1 s",
            "1.s",
            ".5s",
            "1.2.3s",
            "-1s",
            "1sec",
            "1d",
            "1.0000000001s",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    /// A valid `daemon` table, for files that test other sections.
    const DAEMON: &str = r#"daemon = { interfaces = ["eth0"] }"#;

    fn assert_rejected(text: &str, expected: &str) {
        match DaemonConfig::parse(text) {
            Ok(_) => panic!("accepted, expected {expected:?}:\n{text}"),
            Err(e) => {
                let message = e.to_string();
                assert!(
                    message.contains(expected),
                    "expected {expected:?} in {message:?}\n{text}"
                );
                assert!(!message.contains('\n'), "not one line: {message:?}");
            }
        }
    }

    #[test]
    fn rejects_bad_toml_with_its_position() {
        let cases = [
            (
                "[daemon\ninterfaces = []",
                "line 1, column 8: unclosed table",
            ),
            (
                "[daemon]\ninterfaces = [\"eth0\"]\nbogus = 1",
                "line 3, column 1: unknown field `bogus`, expected one of `instance`",
            ),
            (
                "[daemon]\ninterfaces = \"eth0\"",
                "line 2, column 14: invalid type: string \"eth0\", expected a sequence",
            ),
            ("[[service]]\nwieght = 3", "unknown field `wieght`"),
            (
                "[[service]]\nproto = \"tcp\"",
                "line 1, column 1: missing field `address`",
            ),
            (
                "[[service]]\naddress = \"a\"\nproto = \"sctp\"",
                "unknown variant `sctp`",
            ),
            (
                "[[service]]\naddress = \"a\"\n[[service.backend]]\naddress = \"b\"\nweight = -1",
                "line 5, column 10: invalid value: integer `-1`, expected u32",
            ),
        ];
        for (text, expected) in cases {
            assert_rejected(text, expected);
        }
    }

    #[test]
    fn rejects_bad_daemon_settings() {
        let interfaces = [
            ("", "daemon.interfaces: list at least one interface"),
            (
                "interfaces = []",
                "daemon.interfaces: list at least one interface",
            ),
            (
                r#"interfaces = ["eth0", "eth0"]"#,
                r#"daemon.interfaces: "eth0" is listed twice"#,
            ),
            (
                r#"interfaces = ["a/b"]"#,
                r#"daemon.interfaces: "a/b" is not an interface name"#,
            ),
        ];
        for (keys, expected) in interfaces {
            assert_rejected(&format!("daemon = {{ {keys} }}"), expected);
        }
        let others = [
            (
                r#"instance = "../x""#,
                "daemon.instance: invalid instance name '../x'",
            ),
            (r#"xdp_mode = "offload""#, "unknown variant `offload`"),
            (
                r#"metrics = "localhost""#,
                r#"daemon.metrics: "localhost" is not an address"#,
            ),
            ("flow_capacity = 1", "daemon.flow_capacity: 1 is too small"),
            (
                r#"udp_timeout = "1.5s""#,
                "daemon.udp_timeout: 1.5s is not a whole number",
            ),
            (
                r#"tcp_timeout = "0s""#,
                "daemon.tcp_timeout: must be at least 1s",
            ),
            (
                r#"failover_hold_down = "10 seconds""#,
                r#"daemon.failover_hold_down: invalid duration "10 seconds": expected"#,
            ),
            (
                r#"failover_hold_down = "2h""#,
                "daemon.failover_hold_down: 7200s is longer than the limit of 3600s",
            ),
            (
                "pair_sample = 12",
                "daemon.pair_sample: 12 is not a power of two",
            ),
            (
                "pair_sample = 0",
                "daemon.pair_sample: 0 is not a power of two",
            ),
            (
                "pair_sample = 2048",
                "daemon.pair_sample: 2048 is not a power of two",
            ),
        ];
        for (keys, expected) in others {
            assert_rejected(
                &format!(r#"daemon = {{ interfaces = ["eth0"], {keys} }}"#),
                expected,
            );
        }
    }

    #[test]
    fn rejects_bad_group_settings() {
        let cases = [
            (r#"listen = "0.0.0.0:7946""#, "group.key_file: required"),
            (
                r#"key_file = "k", listen = "0.0.0.0""#,
                "group.listen: \"0.0.0.0\" is not",
            ),
            (
                r#"key_file = "k", listen = "0.0.0.0:0""#,
                "group.listen: port 0",
            ),
            (
                r#"key_file = "k", name = "a b""#,
                "group.name: \"a b\" is not 1-64 visible",
            ),
            (
                r#"key_file = "k", interval = "0s""#,
                "group.interval: host message interval 0ns is too short",
            ),
            (
                r#"key_file = "k", interval = "3s", member_timeout = "3s""#,
                "group.member_timeout: 3s must be longer than group.interval (3s)",
            ),
            (
                r#"key_file = "k", peers = ["10.0.0.2"]"#,
                "group.peers: \"10.0.0.2\" is not",
            ),
            (
                r#"key_file = "k", peers = ["0.0.0.0:1"]"#,
                "not a host address and port",
            ),
            (
                r#"key_file = "k", peers = ["10.0.0.2:7946", "10.0.0.2:7946"]"#,
                "group.peers: 10.0.0.2:7946 is listed twice",
            ),
        ];
        for (keys, expected) in cases {
            assert_rejected(&format!("{DAEMON}\ngroup = {{ {keys} }}"), expected);
        }
    }

    #[test]
    fn rejects_bad_health_settings() {
        let cases = [
            (
                r#"interval = "fast""#,
                r#"health.interval: invalid duration "fast""#,
            ),
            (
                r#"timeout = "2s""#,
                "health: invalid health-check timeout '2s': must not exceed the interval (250ms)",
            ),
            (
                r#"interval = "10ms", timeout = "5ms""#,
                "health: invalid health-check interval '10ms'",
            ),
            ("rise = 0", "health: invalid health-check rise '0'"),
            ("fall = 101", "health: invalid health-check fall '101'"),
            (
                r#"kind = "http", path = "health""#,
                "health: invalid health-check HTTP path 'health'",
            ),
            (
                r#"kind = "http", expect_status = 999"#,
                "health: invalid health-check expected status '999'",
            ),
            (
                r#"kind = "icmp""#,
                "unknown variant `icmp`, expected `tcp` or `http`",
            ),
        ];
        for (keys, expected) in cases {
            assert_rejected(&format!("{DAEMON}\nhealth = {{ {keys} }}"), expected);
        }
        // A per-service override is checked merged over [health].
        assert_rejected(
            &format!(
                r#"{DAEMON}
                health = {{ interval = "2s", timeout = "1s" }}
                service = [{{ address = "198.18.0.10:80", health = {{ interval = "500ms" }} }}]"#
            ),
            "service 198.18.0.10:80/tcp, health: invalid health-check timeout '1s': must not exceed the interval (500ms)",
        );
    }

    #[test]
    fn rejects_bad_services() {
        let cases = [
            (
                r#"address = "198.18.0.10""#,
                "service #1: invalid service address '198.18.0.10'",
            ),
            (
                r#"address = "198.18.0.10:80", mode = "l7""#,
                "unknown variant `l7`",
            ),
            (
                r#"address = "198.18.0.10:53", proto = "udp", mode = "cookie""#,
                r#"service 198.18.0.10:53/udp: cookie mode needs proto = "tcp""#,
            ),
            (
                r#"address = "198.18.0.10:80", cookie_name = "SID""#,
                "service 198.18.0.10:80/tcp: cookie_name applies to cookie mode only",
            ),
            (
                r#"address = "198.18.0.10:80", mode = "cookie", delimiter = "!!""#,
                r#"delimiter "!!" must be exactly one character"#,
            ),
            (
                r#"address = "198.18.0.10:80", mode = "cookie", cookie_name = "a b""#,
                "service 198.18.0.10:80/tcp: invalid cookie name 'a b'",
            ),
            (
                r#"address = "198.18.0.10:80", mode = "cookie", secondary_segment = 2"#,
                "service 198.18.0.10:80/tcp: invalid cookie segments '2/2'",
            ),
        ];
        for (keys, expected) in cases {
            assert_rejected(&format!("{DAEMON}\nservice = [{{ {keys} }}]"), expected);
        }
        assert_rejected(
            &format!(
                r#"{DAEMON}
                service = [{{ address = "198.18.0.10:80" }}, {{ address = "198.18.0.10:80" }}]"#
            ),
            "service 198.18.0.10:80/tcp: configured twice",
        );
    }

    #[test]
    fn rejects_more_services_or_backends_than_the_data_plane_holds() {
        let services: Vec<String> = (1..=MAX_SERVICES + 1)
            .map(|i| format!(r#"{{ address = "198.18.0.{i}:80" }}"#))
            .collect();
        assert_rejected(
            &format!("{DAEMON}\nservice = [{}]", services.join(", ")),
            "service: 65 services configured, the data plane holds at most 64",
        );
        let backends: Vec<String> = (0..=MAX_BACKENDS)
            .map(|i| {
                format!(
                    r#"{{ address = "198.18.{}.{}:80" }}"#,
                    1 + i / 250,
                    1 + i % 250
                )
            })
            .collect();
        assert_rejected(
            &format!(
                r#"{DAEMON}
                service = [{{ address = "198.18.0.1:80", backend = [{}] }}]"#,
                backends.join(", ")
            ),
            "service.backend: 4097 backends configured, the data plane holds at most 4096",
        );
    }

    #[test]
    fn rejects_bad_backends() {
        let nat = [
            (
                r#"{ address = "198.18.1.2:8080" }, { address = "198.18.1.2:8080" }"#,
                "service 198.18.0.10:80/tcp, backend 198.18.1.2:8080: configured twice",
            ),
            (
                r#"{ address = "198.18.1.2:0" }"#,
                "service 198.18.0.10:80/tcp, backend #1: invalid backend address '198.18.1.2:0'",
            ),
            (
                r#"{ address = "198.18.1.2:8080", weight = 0 }"#,
                "backend 198.18.1.2:8080: weight 0 is not in 1..=10000",
            ),
            (
                r#"{ address = "198.18.1.2:8080", weight = 10001 }"#,
                "backend 198.18.1.2:8080: weight 10001 is not in 1..=10000",
            ),
            (
                r#"{ address = "198.18.1.2:8080", server_id = "a1" }"#,
                "backend 198.18.1.2:8080: server_id applies to cookie-mode services only",
            ),
            (
                r#"{ address = "198.18.1.2:8080", secondary = "a1" }"#,
                "backend 198.18.1.2:8080: secondary applies to cookie-mode services only",
            ),
        ];
        for (backends, expected) in nat {
            assert_rejected(
                &format!(
                    r#"{DAEMON}
                    service = [{{ address = "198.18.0.10:80", backend = [{backends}] }}]"#
                ),
                expected,
            );
        }
        let cookie = [
            (
                r#"{ address = "198.18.1.2:8080" }"#,
                "backend 198.18.1.2:8080: server_id is required in cookie mode",
            ),
            (
                r#"{ address = "198.18.1.2:8080", server_id = "a!1" }"#,
                "backend 198.18.1.2:8080: invalid server id 'a!1'",
            ),
            (
                r#"{ address = "198.18.1.2:8080", server_id = "a1" },
                   { address = "198.18.1.3:8080", server_id = "a1" }"#,
                r#"service 198.18.0.10:80/tcp, backend 198.18.1.3:8080: server_id "a1" is also used by backend 198.18.1.2:8080"#,
            ),
            (
                r#"{ address = "198.18.1.2:8080", server_id = "a1", secondary = "a1" }"#,
                r#"backend 198.18.1.2:8080: secondary "a1" is this backend's own server_id"#,
            ),
            (
                r#"{ address = "198.18.1.2:8080", server_id = "a1", secondary = "zz" }"#,
                r#"secondary "zz" is not the server_id of any backend of this service"#,
            ),
        ];
        for (backends, expected) in cookie {
            assert_rejected(
                &format!(
                    r#"{DAEMON}
                    service = [{{ address = "198.18.0.10:80", mode = "cookie", backend = [{backends}] }}]"#
                ),
                expected,
            );
        }
    }

    #[test]
    fn tokens_with_equal_hashes_collide() {
        let backend = |addr: &str, token: &str| BackendConfig {
            addr: addr.parse().unwrap(),
            weight: Weight::new(1).unwrap(),
            server_id: Some(token.into()),
            secondary: None,
            drain: false,
        };
        let backends = [
            backend("198.18.1.2:80", "a1"),
            backend("198.18.1.3:80", "b2"),
        ];
        assert!(check_tokens("service s", &backends, token_hash).is_ok());
        let e = check_tokens("service s", &backends, |_| 7).unwrap_err();
        assert_eq!(
            e.to_string(),
            "service s, backend 198.18.1.3:80: server_id \"b2\" hashes like \"a1\" of backend 198.18.1.2:80 (the data plane looks tokens up by hash); choose another token"
        );
    }

    #[test]
    fn load_names_the_file() {
        let dir = std::env::temp_dir().join(format!("balancer-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(
            &path,
            "[daemon]\ninterfaces = [\"eth0\"]\npair_sample = 3\n",
        )
        .unwrap();
        let e = DaemonConfig::load(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: daemon.pair_sample: 3", path.display())),
            "{e}"
        );
        std::fs::write(&path, "[daemon]\ninterfaces = [\"eth0\"]\n").unwrap();
        assert!(DaemonConfig::load(&path).is_ok());
        let missing = dir.join("missing.toml");
        let e = DaemonConfig::load(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("cannot read {}: ", missing.display())),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn interfaces_must_exist() {
        let mut c = DaemonConfig::parse("[daemon]\ninterfaces = [\"lo\"]\n").unwrap();
        assert!(c.check_interfaces().is_ok());
        c.daemon.interfaces.push("nosuchif0".into());
        let e = c.check_interfaces().unwrap_err().to_string();
        assert_eq!(
            e,
            "daemon.interfaces: interface \"nosuchif0\" does not exist in this network namespace"
        );
    }
}

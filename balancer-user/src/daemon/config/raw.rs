//! The file as written: every key optional here, so that defaults and messages are
//! ours rather than serde's. Validation turns it into the types of `settings`. This file
//! holds the top level, `[daemon]` and `[group]`; `services` the rest.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use balancer_common::{Config, MAX_BACKENDS, MAX_SERVICES};
use serde::Deserialize;

use super::{
    error::invalid,
    services::{RawHealth, RawService},
    settings::{DaemonConfig, DaemonSettings, GroupSettings, HealthConfig, ServiceConfig},
    values::{check_interface_name, duration, socket_addr, timeout_seconds},
    ConfigError, DEFAULT_GROUP_LISTEN, DEFAULT_HOLD_DOWN, DEFAULT_INSTANCE, DEFAULT_METRICS_ADDR,
    DEFAULT_PAIR_SAMPLE, MAX_HOLD_DOWN, MAX_PAIR_SAMPLE,
};
use crate::dataplane::{instance_dir, Mode, DEFAULT_BPFFS_ROOT};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
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
    veth_peer_pass: Option<bool>,
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

impl RawConfig {
    pub(super) fn validate(self) -> Result<DaemonConfig, ConfigError> {
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
            veth_peer_pass: self.veth_peer_pass.unwrap_or(false),
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

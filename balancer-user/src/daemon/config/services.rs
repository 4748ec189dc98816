//! `[health]`, `[[service]]` and `[[service.backend]]` as written, and their validation:
//! health-check settings, cookie mode, server-ID tokens and replication pairs.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddrV4,
};

use balancer_common::{cookie::token_hash, MAX_WEIGHT};
use serde::Deserialize;

use super::{
    error::{invalid, ConfigError},
    settings::{BackendConfig, HealthConfig, HealthKind, ServiceConfig},
    values::duration,
};
use crate::{
    control::cookie_mode::{validate_server_id, CookieSettings},
    model::addr::{parse_endpoint, Proto, ServiceAddr},
    model::{Persistence, Weight},
};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
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
pub(super) struct RawService {
    address: String,
    proto: Option<RawProto>,
    mode: Option<RawMode>,
    cookie_name: Option<String>,
    delimiter: Option<String>,
    primary_segment: Option<u8>,
    secondary_segment: Option<u8>,
    health: Option<RawHealth>,
    persistence: Option<String>,
    #[serde(default, rename = "backend")]
    pub(super) backends: Vec<RawBackend>,
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
pub(super) struct RawBackend {
    address: String,
    weight: Option<u32>,
    server_id: Option<String>,
    secondary: Option<String>,
    drain: Option<bool>,
}

impl RawHealth {
    /// These settings over `base`, checked. `at` names the section in errors.
    pub(super) fn merge_over(
        &self,
        at: &str,
        base: &HealthConfig,
    ) -> Result<HealthConfig, ConfigError> {
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

impl RawService {
    pub(super) fn validate(
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
        let persistence = match &self.persistence {
            None => Persistence::None,
            Some(p) => p
                .parse()
                .map_err(|e| invalid(format!("{at}, persistence"), e))?,
        };
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
            persistence,
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
pub(super) fn check_tokens(
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

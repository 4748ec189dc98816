//! Cookie mode: per-service cookie settings, per-backend server-ID tokens, failover
//! replacements and the syncookie secrets (docs/delayed-binding.md).

use balancer_common::{
    cookie::{token_hash, CookieConfig, CookieConfigError},
    syncookie::{CookieSecret, SyncookieKeys},
    Failover, ServerId, ServerIdKey, MAX_BACKENDS, MAX_SERVER_ID_LEN,
};
use serde::Serialize;

use crate::{
    control::Control,
    dataplane::MapStore,
    error::{Error, Result},
};

/// How a cookie-mode service reads the session cookie.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CookieSettings {
    /// Cookie name, case-sensitive (default `JSESSIONID`).
    pub name: String,
    /// Byte that separates the segments of the cookie value (default `!`).
    pub delimiter: char,
    /// 1-based segment holding the primary server's token (default 2).
    pub primary_segment: u8,
    /// 1-based segment holding the secondary server's token, 0 for none (default 3).
    pub secondary_segment: u8,
}

impl Default for CookieSettings {
    fn default() -> Self {
        CookieSettings {
            name: "JSESSIONID".into(),
            delimiter: '!',
            primary_segment: 2,
            secondary_segment: 3,
        }
    }
}

impl CookieSettings {
    /// The data plane's form, or what is wrong with the settings.
    pub fn to_config(&self) -> Result<CookieConfig> {
        let delimiter = u8::try_from(self.delimiter)
            .ok()
            .filter(|d| d.is_ascii())
            .ok_or_else(|| {
                Error::invalid(
                    "cookie delimiter",
                    self.delimiter,
                    "must be one ASCII character",
                )
            })?;
        CookieConfig::new(
            self.name.as_bytes(),
            delimiter,
            self.primary_segment,
            self.secondary_segment,
        )
        .map_err(|e| match e {
            CookieConfigError::BadName => Error::invalid(
                "cookie name",
                &self.name,
                "use 1-31 token characters (letters, digits, !#$%&'*+-.^_`|~)",
            ),
            CookieConfigError::BadDelimiter => Error::invalid(
                "cookie delimiter",
                self.delimiter,
                "must be a visible ASCII character other than ; and \"",
            ),
            CookieConfigError::BadSegments => Error::invalid(
                "cookie segments",
                format!("{}/{}", self.primary_segment, self.secondary_segment),
                "the primary segment must be 1 or more and differ from the secondary",
            ),
        })
    }

    pub fn from_config(c: &CookieConfig) -> CookieSettings {
        let (bytes, len) = c.name_bytes();
        CookieSettings {
            name: String::from_utf8_lossy(&bytes[..len]).into_owned(),
            delimiter: c.delimiter as char,
            primary_segment: c.primary,
            secondary_segment: c.secondary,
        }
    }
}

/// Checks a server-ID token: what the app servers write into the cookie segment.
pub fn validate_server_id(token: &str, settings: &CookieSettings) -> Result<()> {
    let ok_len = !token.is_empty() && token.len() <= MAX_SERVER_ID_LEN;
    let ok_bytes = token.bytes().all(|b| {
        (0x21..=0x7e).contains(&b)
            && b != b';'
            && b != b'"'
            && b != b','
            && b as char != settings.delimiter
    });
    if !ok_len || !ok_bytes {
        return Err(Error::invalid(
            "server id",
            token,
            format!(
                "use 1-{MAX_SERVER_ID_LEN} visible ASCII characters without ; \" , or the cookie delimiter '{}'",
                settings.delimiter
            ),
        ));
    }
    Ok(())
}

impl<S: MapStore> Control<S> {
    pub(crate) fn cookie_settings(&self, service_id: u32) -> Result<CookieSettings> {
        Ok(CookieSettings::from_config(
            &self.store.cookie_config(service_id)?,
        ))
    }

    fn server_id_key(service_id: u32, token: &str) -> ServerIdKey {
        ServerIdKey {
            service: service_id,
            _pad: 0,
            token_hash: token_hash(token.as_bytes()),
        }
    }

    /// Fails if the token (or another token with the same hash) is taken in the service.
    pub(crate) fn check_server_id_free(
        &self,
        service_id: u32,
        token: &str,
        service_name: &str,
    ) -> Result<()> {
        if let Some(existing) = self
            .store
            .server_id(&Self::server_id_key(service_id, token))?
        {
            let len = (existing.len as usize).min(MAX_SERVER_ID_LEN);
            let other = String::from_utf8_lossy(&existing.token[..len]).into_owned();
            let reason = if other == token {
                "is already used by another backend of this service".to_string()
            } else {
                format!("hashes like '{other}', already used in this service; choose another token")
            };
            return Err(Error::invalid(
                "server id",
                token,
                format!("{reason} ({service_name})"),
            ));
        }
        Ok(())
    }

    pub(crate) fn insert_server_id(
        &mut self,
        service_id: u32,
        token: &str,
        slot: u32,
    ) -> Result<()> {
        let mut value = ServerId {
            slot,
            len: token.len() as u32,
            token: [0; MAX_SERVER_ID_LEN],
        };
        value.token[..token.len()].copy_from_slice(token.as_bytes());
        self.store
            .insert_server_id(Self::server_id_key(service_id, token), value)
    }

    /// Server-ID entries (key, token, slot) of one backend slot, or of a whole service.
    pub(crate) fn server_id_entries(
        &self,
        service_id: u32,
        slot: Option<u32>,
    ) -> Result<Vec<(ServerIdKey, String, u32)>> {
        let mut out = Vec::new();
        for (k, v) in self.store.server_ids()? {
            if k.service == service_id && slot.is_none_or(|s| s == v.slot) {
                let len = (v.len as usize).min(MAX_SERVER_ID_LEN);
                out.push((
                    k,
                    String::from_utf8_lossy(&v.token[..len]).into_owned(),
                    v.slot,
                ));
            }
        }
        Ok(out)
    }

    /// Sets (or clears) the slot that takes over `slot`'s cookie sessions.
    pub(crate) fn write_failover(&mut self, slot: u32, replacement: Option<u32>) -> Result<()> {
        let value = match replacement {
            Some(r) => Failover {
                replacement: r,
                active: 1,
            },
            None => Failover::default(),
        };
        self.store.set_failover(slot, value)
    }

    /// Clears every failover entry that names one of `slots` (as the failed or the
    /// replacement backend), for backends that go away. One pass over the map, however
    /// many slots.
    pub(crate) fn forget_slots(&mut self, slots: &[u32]) -> Result<()> {
        for s in 0..MAX_BACKENDS {
            let f = self.store.failover(s)?;
            if f.active == 1 && (slots.contains(&s) || slots.contains(&f.replacement)) {
                self.write_failover(s, None)?;
            }
        }
        Ok(())
    }

    /// Installs `secret` as the current syncookie secret; the current one becomes the
    /// previous one, so cookies handed out just before still validate.
    pub fn rotate_syncookie_secret(&mut self, secret: CookieSecret) -> Result<()> {
        let old = self.store.syncookie_keys()?;
        self.store.set_syncookie_keys(SyncookieKeys {
            current: secret,
            previous: old.current,
        })
    }

    /// Whether a syncookie secret is installed.
    pub fn has_syncookie_secret(&self) -> Result<bool> {
        Ok(self.store.syncookie_keys()?.current.is_set())
    }
}

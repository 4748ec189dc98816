//! The group key: the shared secret whose HMAC makes a member trusted.

use std::{fs::File, io::Read as _, os::unix::fs::PermissionsExt as _, path::Path};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::*;

type HmacSha256 = Hmac<Sha256>;

/// The shared secret of the group. Holds the HMAC state derived from the key, not the
/// key text, and never shows either in `Debug`.
#[derive(Clone)]
pub struct GroupKey {
    mac: HmacSha256,
}

impl std::fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupKey(<redacted>)")
    }
}

impl GroupKey {
    /// Reads the key from a text file that only its owner may access.
    pub fn from_file(path: &Path) -> Result<GroupKey, GroupError> {
        let read_err = |source| GroupError::KeyRead {
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(read_err)?;
        // The mode of the opened file (fstat), so it cannot be swapped after the check.
        let mode = file.metadata().map_err(read_err)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(GroupError::KeyPermissions {
                path: path.to_owned(),
                mode,
            });
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(read_err)?;
        let text = String::from_utf8(bytes).map_err(|_| GroupError::KeyNotText {
            path: path.to_owned(),
        })?;
        Self::from_text(text.trim(), || format!("group key in {}", path.display()))
    }

    /// A key from bytes (tests, or keys from elsewhere); same minimum length as a file.
    pub fn from_bytes(bytes: &[u8]) -> Result<GroupKey, GroupError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(GroupError::KeyTooShort {
                what: "group key".into(),
                len: bytes.len(),
            });
        }
        Self::new(bytes)
    }

    fn from_text(text: &str, what: impl FnOnce() -> String) -> Result<GroupKey, GroupError> {
        let len = text.chars().count();
        if len < MIN_KEY_LEN {
            return Err(GroupError::KeyTooShort { what: what(), len });
        }
        Self::new(text.as_bytes())
    }

    pub(super) fn new(bytes: &[u8]) -> Result<GroupKey, GroupError> {
        // HMAC takes keys of any length; this error cannot happen, but is not worth a panic.
        let mac = HmacSha256::new_from_slice(bytes).map_err(|_| GroupError::KeyTooShort {
            what: "group key".into(),
            len: bytes.len(),
        })?;
        Ok(GroupKey { mac })
    }

    pub(super) fn tag(&self, signed: &[u8]) -> [u8; TAG_LEN] {
        self.mac
            .clone()
            .chain_update(signed)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Whether two keys are the same secret (compared through their tags of a fixed text,
    /// so neither key is exposed).
    pub fn same_as(&self, other: &GroupKey) -> bool {
        const PROBE: &[u8] = b"balancer group key comparison";
        self.tag(PROBE) == other.tag(PROBE)
    }

    /// Constant-time comparison, so the time taken tells nothing about the right tag.
    pub(super) fn verifies(&self, signed: &[u8], tag: &[u8]) -> bool {
        self.mac
            .clone()
            .chain_update(signed)
            .verify_slice(tag)
            .is_ok()
    }
}

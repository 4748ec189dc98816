//! Syncookie secrets as values: a fresh random one, or one read from a shared key file.
//! Installing them in the data plane is `control::cookie_mode`'s part.

use std::io::Read as _;

use balancer_common::syncookie::CookieSecret;

use crate::error::{io_ctx, Error, Result};

/// A fresh random syncookie secret.
pub fn random_secret() -> Result<CookieSecret> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io_ctx("reading /dev/urandom"))?;
    Ok(secret_from_bytes(&bytes))
}

fn secret_from_bytes(bytes: &[u8; 16]) -> CookieSecret {
    let mut k0 = [0u8; 8];
    let mut k1 = [0u8; 8];
    k0.copy_from_slice(&bytes[..8]);
    k1.copy_from_slice(&bytes[8..]);
    CookieSecret {
        k0: u64::from_le_bytes(k0),
        k1: u64::from_le_bytes(k1),
    }
}

/// Reads a shared syncookie secret: 32 hexadecimal digits (whitespace around ignored).
/// Every balancer node given the same file validates the others' syncookies.
pub fn secret_from_file(path: &std::path::Path) -> Result<CookieSecret> {
    let text =
        std::fs::read_to_string(path).map_err(io_ctx(format!("reading {}", path.display())))?;
    let hex = text.trim();
    let bad = || {
        Error::invalid(
            "syncookie key file",
            path.display(),
            "expected 32 hexadecimal digits",
        )
    };
    if hex.len() != 32 {
        return Err(bad());
    }
    let mut bytes = [0u8; 16];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    let secret = secret_from_bytes(&bytes);
    if !secret.is_set() {
        return Err(Error::invalid(
            "syncookie key file",
            path.display(),
            "the key must not be all zeros",
        ));
    }
    Ok(secret)
}

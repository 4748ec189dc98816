//! Values written as strings in the file: durations, addresses, interface names.

use std::{net::SocketAddr, time::Duration};

use super::error::{invalid, ConfigError};

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

/// A duration key: `default` when absent.
pub(super) fn duration(
    at: &str,
    value: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    value.map_or(Ok(default), |v| {
        parse_duration(v).map_err(|message| invalid(at, message))
    })
}

/// A socket address key: `default` when absent or empty.
pub(super) fn socket_addr(
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
pub(super) fn timeout_seconds(
    at: &str,
    value: Option<&str>,
    default_s: u32,
) -> Result<u32, ConfigError> {
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
    match u32::try_from(d.as_secs()) {
        Ok(s) if s <= balancer_common::MAX_FLOW_TIMEOUT_S => Ok(s),
        // Flow ages are kept in 32-bit ticks of about 1 ms (the flow entry's size).
        _ => Err(invalid(at, format!("{d:?} is too long (at most 168h)"))),
    }
}

/// Linux interface names: 1-15 bytes (IFNAMSIZ - 1), no '/', ':', whitespace or NUL.
pub(super) fn check_interface_name(name: &str) -> Result<(), ConfigError> {
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

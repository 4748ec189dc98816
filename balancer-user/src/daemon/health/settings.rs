//! What a health check does and how often, and the limits its settings must keep.

use std::{ops::RangeInclusive, time::Duration};

use crate::error::{Error, Result};

/// Allowed check intervals: below 50 ms checks become load on the backends; above an hour
/// a failure would go unnoticed for too long to be called health checking.
pub const INTERVAL_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(50)..=Duration::from_secs(3600);
/// Allowed rise and fall counts.
pub const THRESHOLD_RANGE: RangeInclusive<u32> = 1..=100;
/// Status codes an HTTP check may expect.
pub const STATUS_RANGE: RangeInclusive<u16> = 100..=599;

/// Longest HTTP Host header value (a DNS name is at most 253 bytes, plus ":port").
const MAX_HOST_LEN: usize = 255;

/// How a backend is probed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CheckKind {
    /// Healthy when a TCP connection can be opened; it is closed right away.
    #[default]
    Tcp,
    /// Healthy when `GET <path>` is answered with status `expect_status`.
    Http {
        path: String,
        expect_status: u16,
        /// Host header; `None` sends the backend's `ip:port`.
        host: Option<String>,
    },
}

impl CheckKind {
    /// An HTTP check of `path` that expects 200 and sends the backend's address as Host.
    pub fn http(path: impl Into<String>) -> CheckKind {
        CheckKind::Http {
            path: path.into(),
            expect_status: 200,
            host: None,
        }
    }
}

/// Settings of one backend's health checks.
///
/// Defaults: TCP connect, every 250 ms, 200 ms timeout, up after 2 successes, down after
/// 2 failures. A dead backend is therefore noticed within about 0.5-0.7 s, so sessions
/// fail over in under a second (the appliance's point), while one lost SYN or one slow
/// answer does not take a backend out. Four connects a second per backend are nothing
/// to a server; raise the interval for very many backends or slow links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckSettings {
    pub kind: CheckKind,
    /// Time from the start of one check to the start of the next (50 ms to 1 h).
    pub interval: Duration,
    /// Limit for one whole check: connect, and for HTTP the request and status line.
    /// More than 0 and at most `interval`, so checks of a backend never overlap.
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up (1 to 100).
    pub rise: u32,
    /// Consecutive failures that take an up backend down (1 to 100).
    pub fall: u32,
}

impl Default for CheckSettings {
    fn default() -> Self {
        CheckSettings {
            kind: CheckKind::Tcp,
            interval: Duration::from_millis(250),
            timeout: Duration::from_millis(200),
            rise: 2,
            fall: 2,
        }
    }
}

impl CheckSettings {
    /// What is wrong with the settings, if anything.
    pub fn validate(&self) -> Result<()> {
        if !INTERVAL_RANGE.contains(&self.interval) {
            return Err(Error::invalid(
                "health-check interval",
                format!("{:?}", self.interval),
                "must be between 50ms and 1h",
            ));
        }
        if self.timeout.is_zero() {
            return Err(Error::invalid(
                "health-check timeout",
                format!("{:?}", self.timeout),
                "must be more than 0",
            ));
        }
        if self.timeout > self.interval {
            return Err(Error::invalid(
                "health-check timeout",
                format!("{:?}", self.timeout),
                format!("must not exceed the interval ({:?})", self.interval),
            ));
        }
        check_threshold("health-check rise", self.rise)?;
        check_threshold("health-check fall", self.fall)?;
        match &self.kind {
            CheckKind::Tcp => Ok(()),
            CheckKind::Http {
                path,
                expect_status,
                host,
            } => validate_http(path, *expect_status, host.as_deref()),
        }
    }
}

fn check_threshold(what: &'static str, value: u32) -> Result<()> {
    if THRESHOLD_RANGE.contains(&value) {
        Ok(())
    } else {
        Err(Error::invalid(what, value, "must be between 1 and 100"))
    }
}

/// Printable ASCII without space: what may go into the request line and Host header
/// without breaking the request (other bytes must be percent-encoded).
fn is_visible_ascii(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

fn validate_http(path: &str, expect_status: u16, host: Option<&str>) -> Result<()> {
    if !path.starts_with('/') || !is_visible_ascii(path) {
        return Err(Error::invalid(
            "health-check HTTP path",
            path.escape_debug(),
            "must start with '/' and contain only visible ASCII characters (no spaces or control characters; percent-encode others)",
        ));
    }
    if !STATUS_RANGE.contains(&expect_status) {
        return Err(Error::invalid(
            "health-check expected status",
            expect_status,
            "must be between 100 and 599",
        ));
    }
    if let Some(host) = host {
        if host.is_empty() || host.len() > MAX_HOST_LEN || !is_visible_ascii(host) {
            return Err(Error::invalid(
                "health-check HTTP host",
                host.escape_debug(),
                "must be 1-255 visible ASCII characters (no spaces or control characters)",
            ));
        }
    }
    Ok(())
}

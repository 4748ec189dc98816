//! wrk's output, parsed.

use super::*;

/// What wrk printed, parsed.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct WrkOutput {
    pub requests: u64,
    pub seconds: f64,
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub socket_errors: SocketErrors,
    pub non_2xx: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct SocketErrors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
}

impl SocketErrors {
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout
    }
}

/// A wrk duration or latency (`653.72us`, `5.40ms`, `1.02s`, `1.00m`) in milliseconds.
pub(crate) fn parse_time_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let factor = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        _ => return None,
    };
    Some(n * factor)
}

/// Parses wrk's text output (run with `--latency`).
pub fn parse_wrk(text: &str) -> Result<WrkOutput> {
    let mut out = WrkOutput::default();
    let (mut p50, mut p99, mut rps, mut total) = (None, None, None, None);
    let mut in_dist = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("Latency Distribution") {
            in_dist = true;
            continue;
        }
        if in_dist {
            match t.split_once(char::is_whitespace) {
                Some(("50%", v)) => p50 = parse_time_ms(v),
                Some(("99%", v)) => {
                    p99 = parse_time_ms(v);
                    in_dist = false;
                }
                Some((p, _)) if p.ends_with('%') => {}
                _ => in_dist = false,
            }
        }
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        }
        // "240289 requests in 5.02s, 24.75MB read"
        if let Some((n, rest)) = t.split_once(" requests in ") {
            if let (Ok(n), Some(secs)) = (
                n.trim().parse::<u64>(),
                rest.split(',').next().and_then(parse_time_ms),
            ) {
                total = Some((n, secs / 1e3));
            }
        }
        // "Socket errors: connect 0, read 12, write 0, timeout 0"
        if let Some(v) = t.strip_prefix("Socket errors:") {
            for part in v.split(',') {
                let mut w = part.split_whitespace();
                let (Some(k), Some(n)) = (w.next(), w.next().and_then(|n| n.parse().ok())) else {
                    continue;
                };
                match k {
                    "connect" => out.socket_errors.connect = n,
                    "read" => out.socket_errors.read = n,
                    "write" => out.socket_errors.write = n,
                    "timeout" => out.socket_errors.timeout = n,
                    _ => {}
                }
            }
        }
        if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            out.non_2xx = v.trim().parse().unwrap_or(0);
        }
    }
    let (Some(p50), Some(p99), Some(rps), Some((n, secs))) = (p50, p99, rps, total) else {
        bail!("wrk output lacks requests, Requests/sec or the 50%/99% latencies:\n{text}");
    };
    out.requests = n;
    out.seconds = secs;
    out.requests_per_s = rps;
    out.p50_ms = p50;
    out.p99_ms = p99;
    Ok(out)
}

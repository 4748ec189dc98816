//! Small statistics and machine facts shared by the parts.

use std::{collections::BTreeMap, fs};

use anyhow::{ensure, Result};
use balancer_common::Counter;

use serde::Serialize;

#[derive(Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub clocksource: String,
}

pub fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let frac = pos - lo as f64;
    sorted[lo] as f64 * (1.0 - frac) + sorted[hi] as f64 * frac
}

pub fn median(v: &[u64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    percentile(&s, 0.5)
}

/// Median of floating-point figures (NaN if there are none).
pub fn median_f64(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The step the kernel's durations come in: the largest of a few candidates that (within
/// +-1 ns of rounding) divides 90% of the samples.
pub fn quantum(samples: &[u64]) -> u64 {
    for q in [100u64, 50, 20, 10, 5, 2] {
        let fit = samples
            .iter()
            .filter(|v| {
                let r = *v % q;
                r <= 1 || r == q - 1
            })
            .count();
        if fit * 10 >= samples.len() * 9 {
            return q;
        }
    }
    1
}

/// Interquartile mean: the mean of the samples between p25 and p75. Less coarse than the
/// median when the durations come in steps.
pub fn iqm(sorted: &[u64]) -> f64 {
    let (lo, hi) = (sorted.len() / 4, sorted.len() * 3 / 4);
    let mid = &sorted[lo..hi.max(lo + 1).min(sorted.len())];
    mid.iter().sum::<u64>() as f64 / mid.len() as f64
}

pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn read_trim(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn machine() -> Machine {
    let cpu_model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    Machine {
        kernel: read_trim("/proc/sys/kernel/osrelease"),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu_model,
        clocksource: read_trim("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
    }
}

/// Checks that each counter grew by exactly its expected amount in `delta` (a
/// `Counters::delta`); `what` says which run it was.
pub fn expect_growth(
    delta: &BTreeMap<&'static str, u64>,
    expected: &[(Counter, usize)],
    what: &str,
) -> Result<()> {
    for (c, want) in expected {
        let got = delta.get(c.label()).copied().unwrap_or(0);
        ensure!(
            got == *want as u64,
            "{what}{} grew by {got}, expected {want}: {delta:?}",
            c.label()
        );
    }
    Ok(())
}

//! CPU time of the machine and of the XDP programs (BPF run-time statistics).

use super::*;

/// System-wide CPU time by kind, from the `cpu` line of `/proc/stat` (seconds).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct CpuTimes {
    pub user_s: f64,
    pub system_s: f64,
    pub softirq_s: f64,
    pub irq_s: f64,
    pub idle_s: f64,
}

impl CpuTimes {
    pub fn read() -> Result<CpuTimes> {
        let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let line = text
            .lines()
            .find(|l| l.starts_with("cpu "))
            .context("no cpu line in /proc/stat")?;
        let v: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse::<f64>().ok())
            .collect();
        ensure!(v.len() >= 7, "short cpu line: {line}");
        let hz = haproxy::clock_ticks();
        // user nice system idle iowait irq softirq
        Ok(CpuTimes {
            user_s: (v[0] + v[1]) / hz,
            system_s: v[2] / hz,
            idle_s: (v[3] + v[4]) / hz,
            irq_s: v[5] / hz,
            softirq_s: v[6] / hz,
        })
    }

    pub(crate) fn minus(&self, o: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user_s: self.user_s - o.user_s,
            system_s: self.system_s - o.system_s,
            softirq_s: self.softirq_s - o.softirq_s,
            irq_s: self.irq_s - o.irq_s,
            idle_s: self.idle_s - o.idle_s,
        }
    }

    pub(crate) fn plus(&self, o: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user_s: self.user_s + o.user_s,
            system_s: self.system_s + o.system_s,
            softirq_s: self.softirq_s + o.softirq_s,
            irq_s: self.irq_s + o.irq_s,
            idle_s: self.idle_s + o.idle_s,
        }
    }

    /// Everything but idle.
    pub fn busy_s(&self) -> f64 {
        self.user_s + self.system_s + self.softirq_s + self.irq_s
    }
}

/// Run time and run count of BPF programs (BPF run-time statistics).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ProgStats {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// Keeps BPF run-time statistics enabled while it lives (`BPF_ENABLE_STATS`: reference
/// counted by the kernel, so whoever else enabled them is not disturbed, and they go off
/// again when the last holder closes, also if this process dies).
pub struct BpfStatsGuard(#[allow(dead_code)] std::os::fd::OwnedFd);

impl BpfStatsGuard {
    pub fn enable() -> Result<BpfStatsGuard> {
        use std::os::fd::FromRawFd;
        const BPF_ENABLE_STATS: libc::c_long = 32;
        // union bpf_attr { struct { __u32 type; } enable_stats; }, BPF_STATS_RUN_TIME = 0.
        let mut attr = [0u8; 16];
        // SAFETY: a zeroed bpf_attr prefix large enough for this command.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_mut_ptr() as *mut libc::c_void,
                attr.len() as libc::c_uint,
            )
        };
        if fd < 0 {
            bail!("BPF_ENABLE_STATS: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a new fd that nothing else owns.
        Ok(BpfStatsGuard(unsafe {
            std::os::fd::OwnedFd::from_raw_fd(fd as i32)
        }))
    }
}

/// The ids of the programs behind the BPF links pinned in `pin_dir` (the balancer's XDP
/// and TC links), from `bpftool link show pinned`.
pub fn pinned_prog_ids(pin_dir: &Path) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    let entries =
        std::fs::read_dir(pin_dir).with_context(|| format!("listing {}", pin_dir.display()))?;
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("link_") || name.starts_with("tclink_")) {
            continue;
        }
        let out = Command::new("bpftool")
            .args(["-j", "link", "show", "pinned"])
            .arg(e.path())
            .output()
            .context("running bpftool")?;
        if !out.status.success() {
            continue;
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if let Some(id) = v["prog_id"].as_u64() {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ensure!(!ids.is_empty(), "no program links in {}", pin_dir.display());
    ids.sort_unstable();
    Ok(ids)
}

/// Sum of the run-time statistics of programs `ids` (`bpftool prog show id`).
pub fn prog_stats(ids: &[u64]) -> Result<ProgStats> {
    let mut s = ProgStats::default();
    for id in ids {
        let out = Command::new("bpftool")
            .args(["-j", "prog", "show", "id", &id.to_string()])
            .output()
            .context("running bpftool")?;
        ensure!(
            out.status.success(),
            "bpftool prog show id {id}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let v: Value = serde_json::from_slice(&out.stdout).context("bpftool output")?;
        // bpftool leaves the fields out while they are zero.
        s.run_time_ns += v["run_time_ns"].as_u64().unwrap_or(0);
        s.run_cnt += v["run_cnt"].as_u64().unwrap_or(0);
    }
    Ok(s)
}

//! The scale part's results (timings, comparisons, map memory) and their printout.

use super::*;

/// One row of results: a path at a scale point.
#[derive(Serialize, Clone)]
pub struct ScaleResult {
    pub point: String,
    pub path: String,
    pub median_ns: f64,
    pub p10_ns: f64,
    pub p90_ns: f64,
    pub iqm_ns: f64,
    pub calls: usize,
    pub round_medians_ns: Vec<f64>,
}

/// A scale point against the small point, for one path.
#[derive(Serialize, Clone)]
pub struct Comparison {
    pub dimension: String,
    pub path: String,
    pub small_median_ns: f64,
    pub large_median_ns: f64,
    pub ratio: f64,
    pub iqm_ratio: f64,
    /// Lowest and highest ratio of the per-round medians.
    pub round_ratios: (f64, f64),
}

/// New-flow calls split by whether the per-CPU next-hop cache held the backend (replayed
/// from the calls' times and backends with the program's rule: an entry is used for
/// `NEXT_HOP_TTL_NS` after the FIB lookup that filled it).
#[derive(Serialize, Clone)]
pub struct NextHopSplit {
    pub point: String,
    pub cache_hit_calls: usize,
    pub cache_miss_calls: usize,
    pub hit_median_ns: f64,
    pub miss_median_ns: f64,
    /// New-flow calls per backend and second, over the span of the new-flow calls.
    pub calls_per_backend_per_s: f64,
}

#[derive(Serialize, Clone)]
pub struct MapMemory {
    pub name: String,
    pub map_type: String,
    pub max_entries: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub memlock_bytes: u64,
}

#[derive(Serialize, Clone)]
pub struct MemoryReport {
    pub source: String,
    /// Every map of the programs at the default flow capacity.
    pub default_capacity: u32,
    pub maps: Vec<MapMemory>,
    pub total_memlock_bytes: u64,
    pub flows_memlock_default: u64,
    pub flows_bytes_per_entry_default: f64,
    pub flows_memlock_at_capacity: u64,
    pub capacity: u32,
    pub flows_bytes_per_entry_at_capacity: f64,
    /// (memlock at CAPACITY - memlock at the default) / (CAPACITY - default).
    pub flows_marginal_bytes_per_entry: f64,
    pub flow_key_value_bytes: (usize, usize),
    /// Second source: pages of the map-related vmalloc areas (/proc/vmallocinfo) that
    /// appeared while a bed was created (system-wide: a map created meanwhile by another
    /// process would count too).
    pub vmalloc_growth_default_bed: i64,
    pub vmalloc_growth_big_bed: i64,
    pub vmalloc_marginal_bytes_per_entry: f64,
}

#[derive(Serialize)]
pub struct ScaleReport {
    pub method: String,
    pub flow_capacity: u32,
    pub points: Vec<String>,
    pub results: Vec<ScaleResult>,
    pub comparisons: Vec<Comparison>,
    pub new_flow_next_hop: Vec<NextHopSplit>,
    pub memory: MemoryReport,
    pub targets: Vec<Target>,
    pub duration_step_ns: u64,
    pub notes: Vec<String>,
    pub seconds: f64,
}

/// Every map of the bed's programs, with the kernel's memory estimate.
pub(crate) fn map_table(bed: &TestBed) -> Result<Vec<MapMemory>> {
    let mut ids = Vec::new();
    for pin in [PROGRAM_PIN, TC_PROGRAM_PIN] {
        let info = ProgramInfo::from_pin(bed.pin_dir().join(pin))
            .with_context(|| format!("program info of {pin}"))?;
        for id in info.map_ids()?.unwrap_or_default() {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    let mut out = Vec::new();
    for id in ids {
        let m = MapInfo::from_id(id)?;
        let fd = m.fd()?;
        out.push(MapMemory {
            name: m.name_as_str().unwrap_or("?").to_string(),
            map_type: m
                .map_type()
                .map(|t| format!("{t:?}"))
                .unwrap_or_else(|_| "?".into()),
            max_entries: m.max_entries(),
            key_size: m.key_size(),
            value_size: m.value_size(),
            memlock_bytes: map_memlock(fd.as_fd())?,
        });
    }
    out.sort_by_key(|m| std::cmp::Reverse(m.memlock_bytes));
    Ok(out)
}

pub(crate) fn flows_memlock(maps: &[MapMemory]) -> Result<u64> {
    maps.iter()
        .find(|m| m.name.starts_with("BALANCER_FLOWS"))
        .map(|m| m.memlock_bytes)
        .context("no BALANCER_FLOWS among the program's maps")
}

pub fn print(r: &ScaleReport) {
    println!(
        "\nScale: per-packet cost at scale points, {:.1} s",
        r.seconds
    );
    println!("{}\n", r.method);
    println!(
        "{:<44} {:<20} {:>9} {:>7} {:>7} {:>8} {:>7}",
        "point", "path", "median ns", "p10", "p90", "iqm ns", "calls"
    );
    for x in &r.results {
        println!(
            "{:<44} {:<20} {:>9.1} {:>7.1} {:>7.1} {:>8.1} {:>7}",
            x.point, x.path, x.median_ns, x.p10_ns, x.p90_ns, x.iqm_ns, x.calls
        );
    }
    println!(
        "\n{:<28} {:<20} {:>8} {:>8} {:>7} {:>7} {:>15}",
        "comparison", "path", "small", "large", "ratio", "iqm x", "round ratios"
    );
    for c in &r.comparisons {
        println!(
            "{:<28} {:<20} {:>8.1} {:>8.1} {:>6.2}x {:>6.2}x {:>6.2}..{:.2}",
            c.dimension,
            c.path,
            c.small_median_ns,
            c.large_median_ns,
            c.ratio,
            c.iqm_ratio,
            c.round_ratios.0,
            c.round_ratios.1
        );
    }
    println!("\nnew_flow_syn by next-hop cache state (replayed):");
    for s in &r.new_flow_next_hop {
        println!(
            "  {:<44} hits {:>6} (median {:>6.1} ns)  misses {:>6} (median {:>6.1} ns)",
            s.point, s.cache_hit_calls, s.hit_median_ns, s.cache_miss_calls, s.miss_median_ns
        );
    }
    let m = &r.memory;
    println!(
        "\nmemory ({}):\n{:<18} {:<12} {:>11} {:>5} {:>6} {:>13}",
        m.source, "map", "type", "max_entries", "key", "value", "memlock"
    );
    for x in &m.maps {
        println!(
            "{:<18} {:<12} {:>11} {:>5} {:>6} {:>13}",
            x.name, x.map_type, x.max_entries, x.key_size, x.value_size, x.memlock_bytes
        );
    }
    println!(
        "total at the default flow capacity ({}): {} bytes ({:.1} MiB)",
        m.default_capacity,
        m.total_memlock_bytes,
        m.total_memlock_bytes as f64 / 1048576.0
    );
    println!(
        "flow table: {:.1} bytes per entry at {} ({} bytes), {:.1} at {} ({} bytes), marginal {:.1}; key {} + value {} bytes",
        m.flows_bytes_per_entry_default,
        m.default_capacity,
        m.flows_memlock_default,
        m.flows_bytes_per_entry_at_capacity,
        m.capacity,
        m.flows_memlock_at_capacity,
        m.flows_marginal_bytes_per_entry,
        m.flow_key_value_bytes.0,
        m.flow_key_value_bytes.1
    );
    println!(
        "second source (/proc/vmallocinfo: map-related vmalloc pages that appeared while a bed was created): default bed {} kB, 2^21 bed {} kB, marginal {:.1} bytes per entry",
        m.vmalloc_growth_default_bed / 1024,
        m.vmalloc_growth_big_bed / 1024,
        m.vmalloc_marginal_bytes_per_entry
    );
    for n in &r.notes {
        println!("- {n}");
    }
}

//! BENCHMARKS.md: the run's results as Markdown, written from the same JSON as
//! `results.json` so the two never disagree, plus the hand-written analysis of the
//! targets (`--analysis`), which says what was profiled and why a missed target remains.

use std::{fmt::Write, fs, path::Path};

use anyhow::{Context, Result};
use serde_json::Value;

/// Where the run's files are, for the links in the document.
pub struct Links<'a> {
    /// The end-to-end plot, relative to the Markdown file (absent: no end-to-end part).
    pub plot: Option<&'a str>,
    /// The JSON results, as given on the command line.
    pub json: &'a Path,
}

/// Renders the whole document.
pub fn render(report: &Value, links: &Links, analysis: Option<&str>) -> String {
    let mut md = String::new();
    let quick = report["quick"].as_bool().unwrap_or(false);
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Written by `balancer-bench` ({}) on {}; the same figures are in `{}`. \
         Regenerate with `cargo xtask bench` (full, writes this file) or \
         `cargo xtask bench --quick` (about a minute, writes `target/bench/BENCHMARKS.md`). \
         Every figure below comes from that one run, on one machine, with all parts \
         side by side; ratios are between figures of the same run.\n",
        if quick { "quick mode" } else { "full mode" },
        report["date"].as_str().unwrap_or("?"),
        links.json.display()
    );
    let _ = writeln!(md, "Command: `{}`\n", str_of(&report["command"]));
    machine(&mut md, &report["machine"]);
    targets(&mut md, &report["targets"]);
    if let Some(text) = analysis {
        let _ = writeln!(md, "{}\n", text.trim_end());
    }
    if let Some(d) = report.get("dataplane") {
        dataplane(&mut md, d);
    }
    if let Some(sc) = report.get("scale") {
        scale(&mut md, sc);
    }
    if let Some(e) = report.get("end_to_end") {
        end_to_end(&mut md, e, links.plot);
    }
    if let Some(f) = report.get("failover") {
        failover(&mut md, f);
    }
    if let Some(st) = report.get("splice_throughput") {
        splice_throughput(&mut md, st);
    }
    md
}

/// Writes `md` to `path`, creating its directory.
pub fn write(path: &Path, md: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(path, md).with_context(|| format!("writing {}", path.display()))
}

fn machine(md: &mut String, m: &Value) {
    let _ = writeln!(md, "## Machine\n");
    let _ = writeln!(
        md,
        "Kernel {}, {} CPUs ({}), clocksource {}. The clients, the gateway and the \
         backends of the end-to-end parts are network namespaces on this same machine, so \
         they share these CPUs.\n",
        str_of(&m["kernel"]),
        m["cpus"],
        str_of(&m["cpu_model"]),
        str_of(&m["clocksource"])
    );
}

fn targets(md: &mut String, t: &Value) {
    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(md, "| metric | target | measured | met |");
    let _ = writeln!(md, "|---|---|---|---|");
    for t in t.as_array().into_iter().flatten() {
        let unit = str_of(&t["unit"]);
        let _ = writeln!(
            md,
            "| {} | {} {}{unit} | {}{unit} | {} |",
            cell(&t["metric"]),
            str_of(&t["comparison"]),
            num(&t["limit"]),
            num(&t["measured"]),
            if t["met"].as_bool() == Some(true) {
                "yes"
            } else {
                "**no**"
            }
        );
    }
    md.push('\n');
}

fn dataplane(md: &mut String, d: &Value) {
    let _ = writeln!(md, "## Data plane: cost per packet\n");
    let _ = writeln!(md, "{}\n", str_of(&d["method"]));
    let _ = writeln!(
        md,
        "| path | median ns | p10 | p90 | x baseline | iqm ns | calls | what runs |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---|");
    for r in d["results"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {}x | {} | {} | {} |",
            str_of(&r["path"]),
            num(&r["median_ns"]),
            num(&r["p10_ns"]),
            num(&r["p90_ns"]),
            num(&r["ratio_to_baseline"]),
            num(&r["iqm_ns"]),
            r["calls"],
            cell(&r["description"])
        );
    }
    md.push('\n');
    let _ = writeln!(md, "Reference: {}\n", str_of(&d["reference"]));
    notes(md, &d["notes"]);
}

fn scale(md: &mut String, sc: &Value) {
    let _ = writeln!(md, "## Scale: flow-table size and backend count\n");
    let _ = writeln!(md, "{}\n", str_of(&sc["method"]));
    let _ = writeln!(
        md,
        "| comparison | path | small median ns | large median ns | ratio | iqm ratio | lowest / highest round ratio |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---|");
    for c in sc["comparisons"].as_array().into_iter().flatten() {
        let rr = &c["round_ratios"];
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {}x | {}x | {}x / {}x |",
            cell(&c["dimension"]),
            cell(&c["path"]),
            num(&c["small_median_ns"]),
            num(&c["large_median_ns"]),
            num(&c["ratio"]),
            num(&c["iqm_ratio"]),
            num(&rr[0]),
            num(&rr[1])
        );
    }
    md.push('\n');
    if let Some(nh) = sc["new_flow_next_hop"].as_array() {
        let _ = writeln!(
            md,
            "New-flow SYNs split by whether the per-CPU next-hop cache of their backend was fresh (replayed from each call's time and backend):\n"
        );
        table(md, nh);
    }
    let m = &sc["memory"];
    if m.is_object() {
        let _ = writeln!(md, "### Memory\n");
        let _ = writeln!(md, "Source: {}.\n", str_of(&m["source"]));
        let _ = writeln!(
            md,
            "- flow table: {} bytes per entry at the default capacity of {} entries, {} at {} entries (key {} + value {} bytes, the rest is the kernel's element header and bucket); a connection has two entries (client and reply direction)",
            num(&m["flows_bytes_per_entry_default"]),
            m["default_capacity"],
            num(&m["flows_bytes_per_entry_at_capacity"]),
            m["capacity"],
            m["flow_key_value_bytes"][0],
            m["flow_key_value_bytes"][1]
        );
        let _ = writeln!(
            md,
            "- cross-check: vmalloc growth when a table of {} entries is created gives {} bytes per entry at the margin",
            m["capacity"],
            num(&m["vmalloc_marginal_bytes_per_entry"])
        );
        let _ = writeln!(
            md,
            "- all maps at the default capacity: {} bytes ({:.1} MiB)\n",
            m["total_memlock_bytes"],
            m["total_memlock_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
        );
        if let Some(maps) = m["maps"].as_array() {
            table(md, maps);
        }
    }
    notes(md, &sc["notes"]);
}

fn end_to_end(md: &mut String, e: &Value, plot: Option<&str>) {
    let _ = writeln!(
        md,
        "## End to end: balancer vs HAProxy vs nftables vs direct\n"
    );
    if let Some(plot) = plot {
        let _ = writeln!(md, "![end-to-end comparison]({plot})\n");
    }
    let m = &e["method"];
    let _ = writeln!(md, "{}\n", str_of(&m["summary"]));
    let _ = writeln!(
        md,
        "| setup | mode | runs | requests/s (median; min-max) | p50 ms | p99 ms | errors | gateway CPU ms / 1k requests (own) | softirq beyond direct ms / 1k | softirq+system beyond direct ms / 1k | all CPUs busy ms / 1k |"
    );
    let _ = writeln!(md, "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for c in e["cells"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} ({}-{}) | {} | {} | {} | {} | {} | {} | {} |",
            str_of(&c["setup"]),
            str_of(&c["mode"]),
            c["runs"],
            num(&c["requests_per_s"]),
            num(&c["requests_per_s_min"]),
            num(&c["requests_per_s_max"]),
            num(&c["p50_ms"]),
            num(&c["p99_ms"]),
            c["errors"],
            num(&c["gateway_cpu_ms_per_1k"]),
            short_value(&c["softirq_vs_direct_ms_per_1k"]),
            short_value(&c["kernel_vs_direct_ms_per_1k"]),
            num(&c["busy_ms_per_1k"]),
        );
    }
    md.push('\n');
    let _ = writeln!(
        md,
        "| mode | requests/s ours / HAProxy | ours / direct | gateway CPU per request ours / HAProxy (own) | the same with softirq beyond direct |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    for (mode, r) in e["ratios"].as_object().into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {mode} | {} | {} | {} | {} |",
            num(&r["rps_balancer_over_haproxy"]),
            num(&r["rps_balancer_over_direct"]),
            num(&r["cpu_own_balancer_over_haproxy"]),
            num(&r["cpu_with_softirq_balancer_over_haproxy"]),
        );
    }
    md.push('\n');
    let _ = writeln!(
        md,
        "| mode | requests/s ours plain NAT / nftables DNAT | ours cookie / nftables SYNPROXY | gateway CPU per request ours (run time) / nftables (softirq+system beyond direct): NAT / DNAT | cookie / SYNPROXY | both beyond direct: NAT / DNAT | cookie / SYNPROXY |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    for (mode, r) in e["ratios"].as_object().into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {mode} | {} | {} | {} | {} | {} | {} |",
            num(&r["rps_balancer_nat_over_nftables_dnat"]),
            num(&r["rps_balancer_over_nftables_synproxy"]),
            num(&r["cpu_balancer_nat_over_nftables_dnat"]),
            num(&r["cpu_balancer_over_nftables_synproxy"]),
            num(&r["cpu_vs_direct_balancer_nat_over_nftables_dnat"]),
            num(&r["cpu_vs_direct_balancer_over_nftables_synproxy"]),
        );
    }
    md.push('\n');
    let problems = e["problems"].as_array().map_or(0, Vec::len);
    let _ = writeln!(
        md,
        "Problems found by the run's checks (requests on the wrong backend, wrk errors, implausible figures): {problems}.\n"
    );
    for p in e["problems"].as_array().into_iter().flatten().take(10) {
        let _ = writeln!(md, "- {}", cell(p));
    }
    let _ = writeln!(md, "### How it was run\n");
    for key in ["order", "ports", "checks", "cpu", "nftables"] {
        let _ = writeln!(md, "- {key}: {}", cell(&m[key]));
    }
    let _ = writeln!(
        md,
        "- versions: {}; {}; {}; {}\n",
        cell(&m["wrk_version"]),
        cell(&m["haproxy_version"]),
        cell(&m["nftables_version"]),
        cell(&m["nginx_version"])
    );
    let _ = writeln!(md, "wrk, per mode (the URL per setup below):\n\n```sh");
    for (mode, cmd) in m["wrk"].as_object().into_iter().flatten() {
        let _ = writeln!(md, "# {mode}\n{}", str_of(cmd));
    }
    let _ = writeln!(md, "```\n");
    for (setup, url) in m["urls"].as_object().into_iter().flatten() {
        let _ = writeln!(md, "- {setup}: `{}`", str_of(url));
    }
    md.push('\n');
    let _ = writeln!(md, "Our balancer, set up with:\n\n```sh");
    for c in m["balancer_commands"].as_array().into_iter().flatten() {
        let _ = writeln!(md, "{}", str_of(c));
    }
    let _ = writeln!(md, "```\n");
    let _ = writeln!(md, "In plain NAT mode (balancer_nat):\n\n```sh");
    for c in m["balancer_nat_commands"].as_array().into_iter().flatten() {
        let _ = writeln!(md, "{}", str_of(c));
    }
    let _ = writeln!(md, "```\n");
    for (what, key) in [
        ("HAProxy", "haproxy_config"),
        ("nftables DNAT (nftables_dnat)", "nftables_dnat_rules"),
        (
            "nftables SYNPROXY + DNAT (nftables_synproxy)",
            "nftables_synproxy_rules",
        ),
        ("nginx (backend be1)", "nginx_config"),
    ] {
        let _ = writeln!(
            md,
            "{what} configuration:\n\n```text\n{}\n```\n",
            str_of(&m[key]).trim_end()
        );
    }
}

fn failover(md: &mut String, f: &Value) {
    let _ = writeln!(md, "## Failover time\n");
    let _ = writeln!(md, "{}\n\n{}\n", str_of(&f["metric"]), str_of(&f["method"]));
    let _ = writeln!(
        md,
        "| setting | health checks | runs | failover ms min / median / max | marked down ms | rewrite ms | failed runs |"
    );
    let _ = writeln!(md, "|---|---|---:|---|---|---|---:|");
    let mmm = |s: &Value| {
        if s["values"].as_array().is_none_or(Vec::is_empty) {
            "-".to_string()
        } else {
            format!(
                "{} / {} / {}",
                num(&s["min"]),
                num(&s["median"]),
                num(&s["max"])
            )
        }
    };
    for s in f["settings"].as_array().into_iter().flatten() {
        let h = &s["health"];
        let _ = writeln!(
            md,
            "| {} | {} every {} ms, timeout {} ms, rise {}, fall {} | {} | {} | {} | {} | {} |",
            str_of(&s["name"]),
            str_of(&h["kind"]),
            num(&h["interval_ms"]),
            num(&h["timeout_ms"]),
            h["rise"],
            h["fall"],
            s["runs"].as_array().map_or(0, Vec::len),
            mmm(&s["failover_ms"]),
            mmm(&s["daemon_down_ms"]),
            mmm(&s["rewrite_logged_ms"]),
            s["errors"].as_array().map_or(0, Vec::len),
        );
    }
    md.push('\n');
    notes(md, &f["notes"]);
}

fn splice_throughput(md: &mut String, st: &Value) {
    let _ = writeln!(md, "## Splice throughput over a long path\n");
    let _ = writeln!(
        md,
        "{}; congestion control {}. Ratio to direct (lowest case): {}.\n",
        str_of(&st["method"]),
        str_of(&st["congestion_control"]),
        num(&st["ratio_to_direct"])
    );
    let _ = writeln!(
        md,
        "| case | direct Mbit/s | spliced Mbit/s | spliced / direct | per round: direct down / up, spliced down / up (Mbit/s) | spliced options: client end | backend end | backend retransmitted / data segments |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---|---|---|---|");
    for c in st["cases"].as_array().into_iter().flatten() {
        let rounds: Vec<String> = c["rounds"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                format!(
                    "{} / {}, {} / {}",
                    num(&r["direct_download_mbit_s"]),
                    num(&r["direct_upload_mbit_s"]),
                    num(&r["spliced_download_mbit_s"]),
                    num(&r["spliced_upload_mbit_s"])
                )
            })
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {}x | {} | {} | {} | {} |",
            cell(&c["name"]),
            num(&c["direct_mbit_s"]),
            num(&c["spliced_mbit_s"]),
            num(&c["ratio_to_direct"]),
            rounds.join("; "),
            cell(&c["spliced_client_options"]),
            cell(&c["spliced_backend_options"]),
            cell(&c["spliced_backend_retrans"])
        );
    }
    md.push('\n');
}

/// An array of objects as a table of their scalar fields (nested values summarised).
fn table(md: &mut String, rows: &[Value]) {
    let mut columns: Vec<&str> = Vec::new();
    for r in rows {
        for (k, v) in r.as_object().into_iter().flatten() {
            if !v.is_object() && !columns.contains(&k.as_str()) {
                columns.push(k);
            }
        }
    }
    let _ = writeln!(md, "| {} |", columns.join(" | ").replace('_', " "));
    let _ = writeln!(md, "|{}", "---|".repeat(columns.len()));
    for r in rows {
        let cells: Vec<String> = columns.iter().map(|c| short_value(&r[*c])).collect();
        let _ = writeln!(md, "| {} |", cells.join(" | "));
    }
    md.push('\n');
}

fn notes(md: &mut String, n: &Value) {
    for n in n.as_array().into_iter().flatten() {
        let _ = writeln!(md, "- {}", str_of(n));
    }
    md.push('\n');
}

fn short_value(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Number(_) => num(v),
        Value::String(s) => s.replace('|', "\\|").replace('\n', " "),
        Value::Array(a) => a.iter().map(short_value).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn cell(v: &Value) -> String {
    str_of(v).replace('|', "\\|").replace('\n', " ")
}

/// A number with as many decimals as its size warrants.
fn num(v: &Value) -> String {
    let Some(x) = v.as_f64() else {
        return str_of(v);
    };
    if v.is_u64() || v.is_i64() {
        return x.to_string();
    }
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_targets_and_unknown_parts() {
        let report = json!({
            "quick": true,
            "date": "2026-11-22 15:00 UTC",
            "command": "balancer-bench --quick",
            "machine": {"kernel": "6.18", "cpus": 2, "cpu_model": "x", "clocksource": "tsc"},
            "targets": [
                {"metric": "a | b", "comparison": "<=", "limit": 2.5, "measured": 2.21, "unit": "x", "met": true},
                {"metric": "bind", "comparison": "<", "limit": 1000.0, "measured": 1854.0, "unit": "ns", "met": false}
            ],
            "end_to_end": {
                "method": {"summary": "s", "wrk": {"keep_alive": "wrk -c64 '<url>'"}, "urls": {"direct": "http://x/"}},
                "cells": [{"setup": "balancer", "mode": "keep_alive", "runs": 1, "requests_per_s": 60831.49,
                           "requests_per_s_min": 60303.17, "requests_per_s_max": 68819.13, "p50_ms": 0.419,
                           "p99_ms": 7.91, "errors": 0, "gateway_cpu_ms_per_1k": 0.66,
                           "softirq_vs_direct_ms_per_1k": null, "kernel_vs_direct_ms_per_1k": 2.5,
                           "busy_ms_per_1k": 31.5}],
                "ratios": {"keep_alive": {"rps_balancer_over_haproxy": 1.93}},
                "problems": []
            }
        });
        let md = render(
            &report,
            &Links {
                plot: None,
                json: Path::new("r.json"),
            },
            Some("## Analysis\n\ntext"),
        );
        assert!(md.contains("| a \\| b | <= 2.50x | 2.21x | yes |"), "{md}");
        assert!(md.contains("| bind | < 1000ns | 1854ns | **no** |"), "{md}");
        assert!(
            md.contains(
                "| balancer | keep_alive | 1 | 60831 (60303-68819) | 0.42 | 7.91 | 0 | 0.66 |  | 2.50 | 31.5 |"
            ),
            "{md}"
        );
        assert!(md.contains("| keep_alive | 1.93 |"), "{md}");
        assert!(md.contains("# keep_alive\nwrk -c64 '<url>'\n"), "{md}");
        assert!(md.contains("## Analysis"));
    }

    #[test]
    fn renders_splice_throughput() {
        let report = json!({
            "machine": {},
            "targets": [],
            "splice_throughput": {
                "method": "m", "congestion_control": "bbr", "ratio_to_direct": 0.115,
                "cases": [{"name": "50 ms RTT, 1% loss", "direct_mbit_s": 180.25, "spliced_mbit_s": 9.6,
                           "ratio_to_direct": 0.0533,
                           "rounds": [{"direct_download_mbit_s": 181.0, "direct_upload_mbit_s": 179.5,
                                       "spliced_download_mbit_s": 9.61, "spliced_upload_mbit_s": 9.59}],
                           "spliced_client_options": "no options", "spliced_backend_options": "no options",
                           "spliced_backend_retrans": "3 / 5000"}]
            }
        });
        let md = render(
            &report,
            &Links {
                plot: None,
                json: Path::new("r.json"),
            },
            None,
        );
        assert!(md.contains("## Splice throughput over a long path"), "{md}");
        assert!(
            md.contains("m; congestion control bbr. Ratio to direct (lowest case): 0.12."),
            "{md}"
        );
        assert!(
            md.contains("| 50 ms RTT, 1% loss | 180 | 9.60 | 0.05x | 181 / 180, 9.61 / 9.59 | no options | no options | 3 / 5000 |"),
            "{md}"
        );
    }
}

//! The Grafana dashboard shipped with the package (balancer-user/packaging/
//! grafana-dashboard.json) queries only metrics the daemon exports: checked against a
//! running daemon's `/metrics` by the daemon test that scrapes it.

use std::collections::BTreeSet;

use serde_json::Value;

const DASHBOARD: &str = include_str!("../../../balancer-user/packaging/grafana-dashboard.json");

/// Every `balancer_*` metric name a panel's query names.
fn queried_metrics() -> BTreeSet<String> {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(!exprs.is_empty(), "no queries in the dashboard");
    let mut names = BTreeSet::new();
    for expr in exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("balancer_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    names
}

fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "query", Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// Fails naming every metric the dashboard queries that `metrics_text` (a scrape of the
/// daemon, with health-checked backends) has no family of.
pub fn assert_queries_exported(metrics_text: &str) {
    // OpenMetrics names a counter family without the `_total` its samples (the names
    // queries use) end in.
    let exported: BTreeSet<String> = metrics_text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| match kind {
            "counter" => format!("{name}_total"),
            _ => name.to_string(),
        })
        .collect();
    let missing: Vec<String> = queried_metrics()
        .into_iter()
        .filter(|name| !exported.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the daemon does not export: {missing:?}"
    );
}

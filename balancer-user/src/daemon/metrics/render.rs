//! The exposition of a snapshot through the `prometheus-client` crate's OpenMetrics text
//! encoder: a [`Collector`] writes each family from the snapshot on every scrape.
//!
//! Counter families are named without `_total` in their HELP and TYPE lines, as
//! OpenMetrics wants, and their samples end in `_total` (the names dashboards query).

use std::{collections::HashSet, fmt};

use balancer_common::BackendCounter;
use prometheus_client::{
    collector::Collector,
    encoding::{text::encode, DescriptorEncoder, MetricEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};

use super::snapshot::{BackendMetrics, MetricsSnapshot, ServiceMetrics};
use crate::control::backend_health::HealthInfo;

/// A metric family with one sample per item (a service, a backend).
struct Family<T> {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    value: fn(&T) -> Value,
}

const fn counter<T>(name: &'static str, help: &'static str, value: fn(&T) -> Value) -> Family<T> {
    Family {
        name,
        help,
        kind: Kind::Counter,
        value,
    }
}

const fn gauge<T>(name: &'static str, help: &'static str, value: fn(&T) -> Value) -> Family<T> {
    Family {
        name,
        help,
        kind: Kind::Gauge,
        value,
    }
}

const SERVICE_GAUGES: [Family<ServiceMetrics>; 2] = [
    gauge(
        "balancer_service_backends",
        "Backends configured in the service.",
        |s| s.backends.into(),
    ),
    gauge(
        "balancer_service_active_backends",
        "Backends of the service taking new flows.",
        |s| s.active_backends.into(),
    ),
];

/// Per-backend gauges besides the counters (which come from `BackendCounter`'s table).
const BACKEND_GAUGES: [Family<BackendMetrics>; 1] = [gauge(
    "balancer_backend_weight",
    "Relative share of new flows configured for the backend.",
    |b| b.weight.into(),
)];

const HEALTH_FAMILIES: [Family<HealthInfo>; 6] = [
    gauge(
        "balancer_backend_up",
        "Whether the backend passes its health checks (1) or not (0).",
        |h| u8::from(h.health == "up").into(),
    ),
    counter(
        "balancer_backend_health_transitions_total",
        "Health changes of the backend (up to down or down to up).",
        |h| h.transitions.into(),
    ),
    counter(
        "balancer_backend_health_checks_total",
        "Health checks run against the backend.",
        |h| h.checks.into(),
    ),
    counter(
        "balancer_backend_health_failures_total",
        "Health checks of the backend that failed.",
        |h| h.failures.into(),
    ),
    gauge(
        "balancer_backend_health_response_seconds",
        "Duration of the backend's last health check.",
        |h| h.response_s.into(),
    ),
    gauge(
        "balancer_backend_health_last_change_timestamp_seconds",
        "Unix time of the backend's last health change (0: never changed).",
        |h| h.last_change_unix_s.unwrap_or(0.0).into(),
    ),
];

/// Data-plane states a backend can be in, one series each (a Prometheus state set).
const BACKEND_STATES: [&str; 3] = ["up", "draining", "down"];

/// Labels of a sample, values escaped already: the encoder writes them as given.
type Labels = Vec<(&'static str, String)>;

/// Renders a snapshot in the OpenMetrics text format (ending in `# EOF`).
pub fn render(snapshot: &MetricsSnapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(snapshot.clone())));
    let mut text = String::new();
    // Writing to a String fails only if a collector does, which ours does not for the
    // values it is given (gauges all fit an i64).
    if let Err(e) = encode(&mut text, &registry) {
        debug_assert!(false, "encoding the metrics: {e}");
    }
    text
}

/// One scrape's snapshot, written family by family when the registry is encoded.
#[derive(Debug)]
struct SnapshotCollector(MetricsSnapshot);

impl Collector for SnapshotCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        let snapshot = &self.0;
        let mut out = Exposition {
            encoder,
            families: HashSet::new(),
        };
        for &(counter, value) in &snapshot.global {
            let name = format!("balancer_{}_total", counter.label());
            if let Some(mut m) = out.family(&name, counter.help(), Kind::Counter)? {
                sample(&mut m, &[], Kind::Counter, value.into())?;
            }
        }
        for &(name, help, value) in &snapshot.daemon {
            debug_assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "metric name {name:?}"
            );
            let name = format!("balancer_{name}_total");
            if let Some(mut m) = out.family(&name, help, Kind::Counter)? {
                sample(&mut m, &[], Kind::Counter, value.into())?;
            }
        }
        render_services(&mut out, &snapshot.services)?;
        render_backends(&mut out, &snapshot.backends)
    }
}

fn render_services(out: &mut Exposition, services: &[ServiceMetrics]) -> fmt::Result {
    let items: Vec<(Labels, &ServiceMetrics)> = services
        .iter()
        .map(|s| (vec![("service", escape_label(&s.service))], s))
        .collect();
    out.families(&SERVICE_GAUGES, &items)?;
    if items.is_empty() {
        return Ok(());
    }
    // A gauge always 1 rather than an OpenMetrics info family: the name stays
    // `balancer_service_info` and text-format 0.0.4 parsers still read it.
    if let Some(mut m) = out.family(
        "balancer_service_info",
        "Service mode (nat, or cookie: delayed binding on the session cookie); always 1.",
        Kind::Gauge,
    )? {
        for (labels, s) in &items {
            let mut labels = labels.clone();
            labels.push(("mode", escape_label(s.mode)));
            sample(&mut m, &labels, Kind::Gauge, 1u8.into())?;
        }
    }
    Ok(())
}

fn render_backends(out: &mut Exposition, backends: &[BackendMetrics]) -> fmt::Result {
    let items: Vec<(Labels, &BackendMetrics)> =
        backends.iter().map(|b| (backend_labels(b), b)).collect();
    if !items.is_empty() {
        for counter in BackendCounter::ALL {
            let name = format!("balancer_backend_{}_total", counter.label());
            if let Some(mut m) = out.family(&name, counter.help(), Kind::Counter)? {
                for (labels, b) in &items {
                    sample(
                        &mut m,
                        labels,
                        Kind::Counter,
                        b.counters.get(counter).into(),
                    )?;
                }
            }
        }
    }
    out.families(&BACKEND_GAUGES, &items)?;
    if !items.is_empty() {
        if let Some(mut m) = out.family(
            "balancer_backend_state",
            "Data-plane state of the backend: 1 for the current one of up, draining, down.",
            Kind::Gauge,
        )? {
            for (labels, b) in &items {
                for state in BACKEND_STATES {
                    let mut labels = labels.clone();
                    labels.push(("state", state.to_string()));
                    sample(
                        &mut m,
                        &labels,
                        Kind::Gauge,
                        u8::from(b.state == state).into(),
                    )?;
                }
            }
        }
    }
    // Only checked backends have health series.
    let checked: Vec<(Labels, &HealthInfo)> = backends
        .iter()
        .filter_map(|b| Some((backend_labels(b), b.health.as_ref()?)))
        .collect();
    out.families(&HEALTH_FAMILIES, &checked)
}

fn backend_labels(b: &BackendMetrics) -> Labels {
    let mut labels = vec![
        ("service", escape_label(&b.service)),
        ("backend", escape_label(&b.backend)),
    ];
    if let Some(id) = &b.server_id {
        labels.push(("server_id", escape_label(id)));
    }
    labels
}

#[derive(Clone, Copy)]
pub(super) enum Kind {
    Counter,
    Gauge,
}

/// A sample value. Counters stay integers: a u64 printed through f64 would lose
/// precision above 2^53.
#[derive(Clone, Copy)]
pub(super) enum Value {
    Int(u64),
    Float(f64),
}

macro_rules! value_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Value {
                Value::Int(v as u64)
            }
        }
    )*};
}
value_from!(u8, u32, u64, usize);

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}

/// The families being written. Each is announced once, followed by all its samples:
/// Prometheus rejects a scrape that repeats a family.
struct Exposition<'a> {
    encoder: DescriptorEncoder<'a>,
    families: HashSet<String>,
}

impl Exposition<'_> {
    /// Starts a family named as its samples are (`_total` included for counters);
    /// `None` (and nothing written) if it was written already, so a daemon counter
    /// named like a data-plane one cannot break the scrape.
    fn family<'s>(
        &'s mut self,
        name: &'s str,
        help: &str,
        kind: Kind,
    ) -> Result<Option<MetricEncoder<'s>>, fmt::Error> {
        if !self.families.insert(name.to_string()) {
            debug_assert!(false, "metric family {name} written twice");
            return Ok(None);
        }
        let (name, metric_type) = match kind {
            // The encoder appends `_total` to counter samples.
            Kind::Counter => (
                name.strip_suffix("_total").unwrap_or(name),
                MetricType::Counter,
            ),
            Kind::Gauge => (name, MetricType::Gauge),
        };
        self.encoder
            .encode_descriptor(name, &escape_help(help), None, metric_type)
            .map(Some)
    }

    /// Writes each of `families` with one sample per item; nothing without items.
    fn families<T>(&mut self, families: &[Family<T>], items: &[(Labels, &T)]) -> fmt::Result {
        if items.is_empty() {
            return Ok(());
        }
        for f in families {
            if let Some(mut m) = self.family(f.name, f.help, f.kind)? {
                for (labels, item) in items {
                    sample(&mut m, labels, f.kind, (f.value)(item))?;
                }
            }
        }
        Ok(())
    }
}

/// Writes one sample of the family `metric` encodes.
fn sample(
    metric: &mut MetricEncoder,
    labels: &[(&'static str, String)],
    kind: Kind,
    value: Value,
) -> fmt::Result {
    if labels.is_empty() {
        return write_value(metric, kind, value);
    }
    let labels = labels.to_vec();
    write_value(&mut metric.encode_family(&labels)?, kind, value)
}

fn write_value(metric: &mut MetricEncoder, kind: Kind, value: Value) -> fmt::Result {
    match (kind, value) {
        (Kind::Counter, Value::Int(v)) => metric.encode_counter::<NoLabelSet, u64, u64>(&v, None),
        (Kind::Counter, Value::Float(v)) => metric.encode_counter::<NoLabelSet, f64, u64>(&v, None),
        (Kind::Gauge, Value::Int(v)) => metric.encode_gauge(&v),
        (Kind::Gauge, Value::Float(v)) => metric.encode_gauge(&v),
    }
}

/// A help text as the exposition writes it (`Counter::help` keeps the doc comment's
/// leading space); the encoder writes it as given.
pub(super) fn escape_help(help: &str) -> String {
    help.trim().replace('\\', "\\\\").replace('\n', "\\n")
}

/// A label value as the exposition format quotes it.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

//! The text exposition format (0.0.4): metric families, samples, escaping.

use std::{
    collections::HashSet,
    fmt::{self, Write as _},
};

use balancer_common::BackendCounter;

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

/// Labels of a sample.
type Labels<'a> = Vec<(&'static str, &'a str)>;

/// Renders a snapshot in the Prometheus text format 0.0.4.
pub fn render(snapshot: &MetricsSnapshot) -> String {
    let mut out = Exposition::default();
    for &(counter, value) in &snapshot.global {
        let name = format!("balancer_{}_total", counter.label());
        if out.family(&name, counter.help(), Kind::Counter) {
            out.sample(&name, &[], value);
        }
    }
    for &(name, help, value) in &snapshot.daemon {
        debug_assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "metric name {name:?}"
        );
        let name = format!("balancer_{name}_total");
        if out.family(&name, help, Kind::Counter) {
            out.sample(&name, &[], value);
        }
    }
    render_services(&mut out, &snapshot.services);
    render_backends(&mut out, &snapshot.backends);
    out.text
}

fn render_services(out: &mut Exposition, services: &[ServiceMetrics]) {
    let items: Vec<(Labels, &ServiceMetrics)> = services
        .iter()
        .map(|s| (vec![("service", s.service.as_str())], s))
        .collect();
    out.families(&SERVICE_GAUGES, &items);
    let name = "balancer_service_info";
    if !items.is_empty()
        && out.family(
            name,
            "Service mode (nat, or cookie: delayed binding on the session cookie); always 1.",
            Kind::Gauge,
        )
    {
        for s in services {
            out.sample(name, &[("service", &s.service), ("mode", s.mode)], 1u8);
        }
    }
}

fn render_backends(out: &mut Exposition, backends: &[BackendMetrics]) {
    let items: Vec<(Labels, &BackendMetrics)> =
        backends.iter().map(|b| (backend_labels(b), b)).collect();
    if !items.is_empty() {
        for counter in BackendCounter::ALL {
            let name = format!("balancer_backend_{}_total", counter.label());
            if out.family(&name, counter.help(), Kind::Counter) {
                for (labels, b) in &items {
                    out.sample(&name, labels, b.counters.get(counter));
                }
            }
        }
    }
    out.families(&BACKEND_GAUGES, &items);
    let name = "balancer_backend_state";
    if !items.is_empty()
        && out.family(
            name,
            "Data-plane state of the backend: 1 for the current one of up, draining, down.",
            Kind::Gauge,
        )
    {
        for (labels, b) in &items {
            for state in BACKEND_STATES {
                let mut labels = labels.clone();
                labels.push(("state", state));
                out.sample(name, &labels, u8::from(b.state == state));
            }
        }
    }
    // Only checked backends have health series.
    let checked: Vec<(Labels, &HealthInfo)> = backends
        .iter()
        .filter_map(|b| Some((backend_labels(b), b.health.as_ref()?)))
        .collect();
    out.families(&HEALTH_FAMILIES, &checked);
}

fn backend_labels(b: &BackendMetrics) -> Labels<'_> {
    let mut labels = vec![
        ("service", b.service.as_str()),
        ("backend", b.backend.as_str()),
    ];
    if let Some(id) = &b.server_id {
        labels.push(("server_id", id.as_str()));
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
pub(super) enum Value {
    Int(u64),
    Float(f64),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) if v.is_nan() => f.write_str("NaN"),
            Value::Float(v) if v.is_infinite() => {
                f.write_str(if v > 0.0 { "+Inf" } else { "-Inf" })
            }
            Value::Float(v) => write!(f, "{v}"),
        }
    }
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

/// The exposition text being written. Each family's HELP and TYPE lines are written
/// once, followed by all its samples: Prometheus rejects a scrape that repeats a family.
#[derive(Default)]
pub(super) struct Exposition {
    pub(super) text: String,
    families: HashSet<String>,
}

impl Exposition {
    /// Starts a family; false (and nothing written) if it was written already, so a
    /// daemon counter named like a data-plane one cannot break the scrape.
    pub(super) fn family(&mut self, name: &str, help: &str, kind: Kind) -> bool {
        if !self.families.insert(name.to_string()) {
            debug_assert!(false, "metric family {name} written twice");
            return false;
        }
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        // `Counter::help` keeps the doc comment's leading space.
        let help = help.trim().replace('\\', "\\\\").replace('\n', "\\n");
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        true
    }

    /// Writes each of `families` with one sample per item; nothing without items.
    fn families<T>(&mut self, families: &[Family<T>], items: &[(Labels, &T)]) {
        if items.is_empty() {
            return;
        }
        for f in families {
            if self.family(f.name, f.help, f.kind) {
                for (labels, item) in items {
                    self.sample(f.name, labels, (f.value)(item));
                }
            }
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Into<Value>) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", value.into());
    }
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

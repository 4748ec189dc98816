use std::collections::HashMap;

use super::*;
use crate::{
    control::{backend_health::HealthInfo, stats::BackendCountersValues},
    model::backend::{BackendState, Weight},
};

fn backend(backend: &str, slot: u32, failover_to: Option<&str>) -> BackendInfo {
    BackendInfo {
        service: "198.18.0.10:80/tcp".parse().unwrap(),
        backend: backend.parse().unwrap(),
        slot,
        state: BackendState::Up,
        weight: Weight::new(100).unwrap(),
        table_share: 0.5,
        server_id: Some(format!("s{slot}")),
        failover_to: failover_to.map(|a| a.parse().unwrap()),
        health: Some(HealthInfo {
            health: "up",
            checks: 3,
            failures: 0,
            transitions: 0,
            response_s: 0.001,
            last_change_unix_s: None,
        }),
    }
}

fn counters(new_flows: u64, bytes: u64) -> BackendCountersValues {
    BackendCountersValues {
        new_flows,
        bytes_to: bytes,
        bytes_from: 2 * bytes,
        ..Default::default()
    }
}

#[test]
fn rates_come_from_reads_a_second_apart() {
    let board = StatusBoard::default();
    let backends = [
        backend("198.18.1.2:8080", 0, Some("198.18.1.3:8080")),
        backend("198.18.1.3:8080", 1, None),
    ];
    let read = |at: f64, flows: u64| {
        let counters = HashMap::from([(0, counters(flows, 10 * flows)), (1, counters(0, 0))]);
        board.view(at, &[], &backends, &counters)
    };
    let first = read(100.0, 0);
    assert!(first.backends[0].rates.is_empty(), "no rate from one read");
    assert_eq!(first.backends[0].totals["new_flows"], 0);
    // Half a second later: still measured against nothing older than a second.
    assert!(read(100.5, 5).backends[0].rates.is_empty());
    let view = read(102.0, 20);
    let rates = &view.backends[0].rates;
    assert_eq!(rates["new_flows"], 10.0);
    assert_eq!(rates["bytes_to"], 100.0);
    assert_eq!(rates["bytes_from"], 200.0);
    assert_eq!(view.backends[1].rates["new_flows"], 0.0);
    // The 100.5 read was not kept (under a second after 100.0); the chart ends with
    // the current read.
    let chart = &read(103.0, 40).backends[0].chart;
    assert_eq!(
        chart,
        &[
            ChartPoint {
                t: 102.0,
                new_flows: 10.0,
                bytes: 300.0
            },
            ChartPoint {
                t: 103.0,
                new_flows: 20.0,
                bytes: 600.0
            }
        ]
    );
    assert_eq!(view.failover.len(), 1);
    assert_eq!(view.failover[0].from, "198.18.1.2:8080");
    assert_eq!(view.failover[0].to, "198.18.1.3:8080");
    assert_eq!(view.backends[0].health, Some("up"));
    assert_eq!(view.backends[0].share, 0.5);
}

#[test]
fn history_and_transitions_are_bounded() {
    let board = StatusBoard::default();
    let backends = [backend("198.18.1.2:8080", 0, None)];
    let counters = HashMap::from([(0, counters(1, 1))]);
    for i in 0..HISTORY + 10 {
        board.view(i as f64, &[], &backends, &counters);
    }
    let view = board.view(1e6, &[], &backends, &counters);
    assert_eq!(view.backends[0].chart.len(), HISTORY - 1);
    for i in 0..TRANSITIONS + 5 {
        board.record_transition(TransitionEvent {
            at: i as f64,
            service: "198.18.0.10:80/tcp".into(),
            backend: "198.18.1.2:8080".into(),
            from: "up".into(),
            to: "down".into(),
            detail: "connect refused".into(),
        });
    }
    let transitions = board.view(2e6, &[], &backends, &counters).transitions;
    assert_eq!(transitions.len(), TRANSITIONS);
    assert_eq!(transitions[0].at, 5.0, "the oldest are forgotten");
    let json = serde_json::to_value(board.view(3e6, &[], &backends, &counters)).unwrap();
    for field in ["time", "services", "backends", "failover", "transitions"] {
        assert!(json.get(field).is_some(), "{field}");
    }
}

#[test]
fn page_assets_are_embedded() {
    assert!(INDEX_HTML.contains("/status.js") && INDEX_HTML.contains("/status.css"));
    assert!(SCRIPT_JS.contains("/status.json"));
    // Nothing loaded from elsewhere.
    for asset in [INDEX_HTML, STYLE_CSS, SCRIPT_JS] {
        assert!(!asset.contains("https://") && !asset.contains("http://cdn"));
    }
}

//! End to end: our balancer in cookie mode vs HAProxy and nftables SYNPROXY, in plain NAT
//! mode vs nftables DNAT, and going direct, with wrk on the netns topology (the
//! measurement itself is `balancer_tests::e2e`); here the targets and the plot.

use anyhow::Result;
use balancer_tests::e2e::{self, E2eOptions, E2eReport, Mode, Setup};

use crate::{plot, Args, Target};

/// keep-alive requests/s, ours over HAProxy's, at least.
const TARGET_KEEPALIVE_VS_HAPROXY: f64 = 1.5;
/// New-connection requests/s, ours over HAProxy's, at least.
const TARGET_NEWCONN_VS_HAPROXY: f64 = 1.2;
/// Gateway CPU per request, ours over HAProxy's, at most.
const TARGET_CPU_VS_HAPROXY: f64 = 1.0 / 3.0;
/// Requests/s, ours over direct's, at least (within 15%).
const TARGET_VS_DIRECT: f64 = 0.85;
/// New-connection requests/s, ours over nftables' (plain NAT over DNAT, cookie mode over
/// SYNPROXY), at least.
const TARGET_NEWCONN_VS_NFTABLES: f64 = 1.3;
/// Gateway CPU per request, ours (its programs' run time) over nftables' (softirq +
/// system beyond direct), at most.
const TARGET_CPU_VS_NFTABLES: f64 = 1.0 / 3.0;

const MODES: [Mode; 2] = [Mode::KeepAlive, Mode::NewConnection];

pub fn measure(args: &Args, progress: &dyn Fn(String)) -> Result<E2eReport> {
    let (balancer, testsrv) = crate::binaries(args)?;
    let o = if args.quick {
        E2eOptions::quick(testsrv, balancer)
    } else {
        E2eOptions::full(testsrv, balancer)
    };
    e2e::run_end_to_end(&o, progress)
}

pub fn print(r: &E2eReport) {
    e2e::print_table(r);
}

/// The end-to-end targets of issue 5 (against HAProxy and direct) and issue 15 (against
/// nftables), per mode; a ratio that could not be computed (a cell failed) counts as not
/// met.
pub fn targets(r: &E2eReport) -> Vec<Target> {
    let mut t = Vec::new();
    for mode in MODES {
        let ratios = r.ratios.get(mode.name()).cloned().unwrap_or_default();
        let rps_limit = match mode {
            Mode::KeepAlive => TARGET_KEEPALIVE_VS_HAPROXY,
            Mode::NewConnection => TARGET_NEWCONN_VS_HAPROXY,
        };
        t.push(Target::at_least(
            &format!("end to end, {}: requests/s, ours / HAProxy", mode.name()),
            rps_limit,
            ratios.rps_balancer_over_haproxy.unwrap_or(f64::NAN),
            "x",
        ));
        t.push(Target::at_least(
            &format!("end to end, {}: requests/s, ours / direct", mode.name()),
            TARGET_VS_DIRECT,
            ratios.rps_balancer_over_direct.unwrap_or(f64::NAN),
            "x",
        ));
        t.push(Target::at_most(
            &format!(
                "end to end, {}: gateway CPU per request, ours (XDP+TC run time) / HAProxy (process time)",
                mode.name()
            ),
            (TARGET_CPU_VS_HAPROXY * 1000.0).round() / 1000.0,
            ratios.cpu_own_balancer_over_haproxy.unwrap_or(f64::NAN),
            "x",
        ));
    }
    t.extend(nftables_targets(r));
    t
}

/// Ours against nftables: plain NAT against DNAT, cookie mode against SYNPROXY;
/// new-connection requests/s, and gateway CPU per request in both modes.
fn nftables_targets(r: &E2eReport) -> Vec<Target> {
    let mut t = Vec::new();
    let get = |mode: Mode| r.ratios.get(mode.name()).cloned().unwrap_or_default();
    let new_conn = get(Mode::NewConnection);
    for (pair, measured) in [
        (
            "ours plain NAT / nftables DNAT",
            new_conn.rps_balancer_nat_over_nftables_dnat,
        ),
        (
            "ours cookie mode / nftables SYNPROXY",
            new_conn.rps_balancer_over_nftables_synproxy,
        ),
    ] {
        t.push(Target::at_least(
            &format!("end to end, new_connection: requests/s, {pair}"),
            TARGET_NEWCONN_VS_NFTABLES,
            measured.unwrap_or(f64::NAN),
            "x",
        ));
    }
    for mode in MODES {
        let ratios = get(mode);
        for (pair, measured) in [
            (
                "ours plain NAT (XDP+TC run time) / nftables DNAT",
                ratios.cpu_balancer_nat_over_nftables_dnat,
            ),
            (
                "ours cookie mode (XDP+TC run time) / nftables SYNPROXY",
                ratios.cpu_balancer_over_nftables_synproxy,
            ),
        ] {
            t.push(Target::at_most(
                &format!(
                    "end to end, {}: gateway CPU per request, {pair} (softirq+system beyond direct)",
                    mode.name()
                ),
                (TARGET_CPU_VS_NFTABLES * 1000.0).round() / 1000.0,
                measured.unwrap_or(f64::NAN),
                "x",
            ));
        }
    }
    t
}

/// The setups the plot draws, in order, with their legend.
const PLOTTED: [(Setup, &str); 6] = [
    (Setup::Balancer, "balancer, cookie"),
    (Setup::BalancerNat, "balancer, NAT"),
    (Setup::Haproxy, "HAProxy"),
    (Setup::NftablesDnat, "nftables DNAT"),
    (Setup::NftablesSynproxy, "nftables SYNPROXY"),
    (Setup::Direct, "direct (no balancer)"),
];

/// The comparison as one SVG: requests/s, p50 and p99 latency, gateway CPU per 1,000
/// requests; a group per mode, a bar per setup.
pub fn plot(r: &E2eReport, subtitle: &str) -> String {
    let groups: Vec<String> = MODES.iter().map(|m| m.name().replace('_', "-")).collect();
    let panel = |title: &str, unit: &str, f: &dyn Fn(&e2e::Cell) -> Option<f64>| plot::Panel {
        title: title.into(),
        unit: unit.into(),
        groups: groups.clone(),
        values: MODES
            .iter()
            .map(|m| {
                PLOTTED
                    .iter()
                    .map(|(s, _)| r.cell(*s, *m).and_then(f))
                    .collect()
            })
            .collect(),
    };
    plot::grouped_bars(
        "balancer (XDP) vs HAProxy vs nftables vs direct",
        subtitle,
        &PLOTTED.map(|(_, name)| name),
        &[
            panel("requests", "per s", &|c| Some(c.requests_per_s)),
            panel("latency p50", "ms", &|c| Some(c.p50_ms)),
            panel("latency p99", "ms", &|c| Some(c.p99_ms)),
            panel("gateway CPU", "ms per 1,000 requests", &|c| match c.setup {
                Setup::Direct => None,
                _ => Some(c.gateway_cpu_ms_per_1k),
            }),
        ],
    )
}

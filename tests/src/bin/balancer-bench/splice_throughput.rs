//! `splice_throughput` (issue 12): the goodput of a spliced connection (cookie mode,
//! through the VIP) over a long path, against a direct connection (client -> backend
//! address, routed by the gateway's kernel) over the same path, same run. The path is
//! the impairment relay on the client's link with 25 ms each way (50 ms round trip),
//! without loss and with 1% loss each way; Linux's own TCP on both ends, default sysctls.
//!
//! Per case, rounds interleave direct and spliced (each a fresh connection: a download
//! then an upload of the same size, checked as the wire tests check them), so a drift of
//! the machine affects both alike. A round's goodput is both bodies over both times; the
//! case's figure is the median over rounds, its ratio spliced over direct.

use std::{
    net::{SocketAddr, SocketAddrV4},
    path::Path,
    time::Duration,
};

use anyhow::{Context, Result};
use balancer_tests::{
    bulk::{self, Transfer},
    ss,
    topology::{self, Topology, BACKEND_PORT},
};
use serde::Serialize;

use crate::{stats::median_f64, Args, Target};

/// Spliced goodput over direct goodput, at least (each case).
const TARGET_RATIO_TO_DIRECT: f64 = 0.9;
/// Losses of the cases, each direction.
const LOSSES: [f64; 2] = [0.0, 0.01];
/// Reads and writes time out after this long without progress.
const IO_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Serialize)]
pub struct SpliceThroughputReport {
    pub method: String,
    pub rtt_ms: f64,
    /// Bytes of each download and each upload.
    pub transfer_bytes: usize,
    pub rounds: usize,
    /// Congestion control of the client and the backend (a fresh namespace's default).
    pub congestion_control: String,
    pub cases: Vec<SpliceCase>,
    /// The lowest ratio of the cases (the figure the target is about).
    pub ratio_to_direct: f64,
}

#[derive(Serialize)]
pub struct SpliceCase {
    pub name: String,
    pub loss: f64,
    /// Median over rounds, both ways.
    pub direct_mbit_s: f64,
    pub spliced_mbit_s: f64,
    pub ratio_to_direct: f64,
    pub rounds: Vec<SpliceRound>,
    /// What the last spliced connection negotiated at each end (`ss`).
    pub spliced_client_options: String,
    pub spliced_backend_options: String,
    /// Segments the backend resent on the last spliced connection / its data segments.
    pub spliced_backend_retrans: String,
    /// The backends' congestion control in this case.
    pub backend_congestion_control: String,
    /// A controlled comparison (another congestion control on the backends), not what
    /// the target is about.
    pub comparison: bool,
}

#[derive(Serialize, Clone, Copy)]
pub struct SpliceRound {
    pub direct_download_mbit_s: f64,
    pub direct_upload_mbit_s: f64,
    pub spliced_download_mbit_s: f64,
    pub spliced_upload_mbit_s: f64,
}

/// A download and an upload on one fresh connection to `addr` (made in the client's
/// namespace); with `ss` of both ends read in between when `ends` is set.
struct Exchange {
    down: Transfer,
    up: Transfer,
    ends: Option<(ss::TcpSocketInfo, ss::TcpSocketInfo)>,
}

impl Exchange {
    fn mbit_s(&self) -> f64 {
        let bytes = self.down.bytes + self.up.bytes;
        bytes as f64 * 8.0 / 1e6 / (self.down.elapsed + self.up.elapsed).as_secs_f64()
    }
}

fn exchange(t: &Topology, addr: SocketAddr, body: &[u8], spliced: bool) -> Result<Exchange> {
    let mut c = t
        .client
        .run(move || bulk::connect(addr, IO_TIMEOUT))?
        .with_context(|| format!("connecting to {addr}"))?;
    let local = c.local_addr()?;
    let what = if spliced { "spliced" } else { "direct" };
    let (down, _) = bulk::download(&mut c, body.len(), &[]).with_context(|| what.to_string())?;
    let ends = if spliced {
        let client = ss::find(&t.client, Some(local), Some(addr))?;
        let backend = ss::find(&t.backends[0].ns, None, Some(local))?;
        Some((client, backend))
    } else {
        None
    };
    let (up, _) = bulk::upload(&mut c, body, &[]).with_context(|| what.to_string())?;
    Ok(Exchange { down, up, ends })
}

pub fn measure(args: &Args, progress: &dyn Fn(String)) -> Result<SpliceThroughputReport> {
    let bytes = args.splice_mib.unwrap_or(if args.quick { 8 } else { 16 }) << 20;
    let rounds = args
        .splice_rounds
        .unwrap_or(if args.quick { 2 } else { 3 })
        .max(1);
    let (mut cases, congestion_control) = measure_cases(
        args,
        args.splice_backend_cc.as_deref(),
        false,
        bytes,
        rounds,
        progress,
    )?;
    // The full run also measures the backends with reno, a loss-based congestion control
    // that does not size its window from the smallest RTT seen, as BBR does (see
    // docs/bench-analysis.md: the balancer completes the backend's handshake on the LAN).
    if !args.quick && args.splice_backend_cc.is_none() {
        let (reno, _) = measure_cases(args, Some("reno"), true, bytes, rounds, progress)?;
        cases.extend(reno);
    }
    let ratio_to_direct = cases
        .iter()
        .filter(|c| !c.comparison)
        .map(|c| c.ratio_to_direct)
        .fold(f64::INFINITY, f64::min);
    Ok(SpliceThroughputReport {
        method: format!(
            "{rounds} round(s) per case, each a direct and a spliced connection (order alternating), \
             each a {} MiB download then a {} MiB upload on a fresh connection; the client's \
             link through the userspace impairment relay with {} ms each way; goodput = both \
             bodies over both times, median over rounds",
            bytes >> 20,
            bytes >> 20,
            bulk::ONE_WAY_DELAY.as_millis()
        ),
        rtt_ms: 2.0 * bulk::ONE_WAY_DELAY.as_secs_f64() * 1e3,
        transfer_bytes: bytes,
        rounds,
        congestion_control,
        cases,
        ratio_to_direct,
    })
}

/// The cases on one topology whose backends use congestion control `backend_cc` (their
/// namespace's default if `None`), and the client's congestion control.
fn measure_cases(
    args: &Args,
    backend_cc: Option<&str>,
    comparison: bool,
    bytes: usize,
    rounds: usize,
    progress: &dyn Fn(String),
) -> Result<(Vec<SpliceCase>, String)> {
    let (balancer, testsrv) = crate::binaries(args)?;
    let mut t = bulk::long_path_topology(1, balancer, 0.0, 0x5b1c)?;
    t.attach()?;
    // Before the servers start: their listening sockets take the namespace's default.
    if let Some(cc) = backend_cc {
        for b in &t.backends {
            b.ns.exec(
                "sysctl",
                &["-qw", &format!("net.ipv4.tcp_congestion_control={cc}")],
            )?;
        }
    }
    t.start_servers(Path::new(&testsrv))?;
    t.add_cookie_service_with_backends()?;
    let sysctl_cc = |ns: &balancer_tests::netns::Netns| -> Result<String> {
        Ok(String::from_utf8_lossy(
            &ns.exec("sysctl", &["-n", "net.ipv4.tcp_congestion_control"])?
                .stdout,
        )
        .trim()
        .to_string())
    };
    let congestion_control = sysctl_cc(&t.client)?;
    let backend_congestion_control = sysctl_cc(&t.backends[0].ns)?;
    let direct = SocketAddr::V4(SocketAddrV4::new(t.backends[0].addr, BACKEND_PORT));
    let body = bulk::upload_body(bytes);
    let mut cases = Vec::new();
    for (k, loss) in LOSSES.into_iter().enumerate() {
        t.wan
            .as_ref()
            .context("the long path has a relay")?
            .relay
            .set(bulk::long_path(loss, 0x5b1c + k as u64));
        let name = if comparison {
            format!(
                "50 ms RTT, {}% loss, backends {backend_congestion_control}",
                loss * 100.0
            )
        } else {
            format!("50 ms RTT, {}% loss", loss * 100.0)
        };
        let mut round_figures = Vec::new();
        let (mut direct_rates, mut spliced_rates) = (Vec::new(), Vec::new());
        let mut last_ends = None;
        for round in 0..rounds {
            // Which goes first alternates, so neither always starts on a quieter machine.
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            let mut figures = [None, None];
            for spliced in order {
                let addr = if spliced { topology::vip() } else { direct };
                let x = exchange(&t, addr, &body, spliced)
                    .with_context(|| format!("{name}, round {round}"))?;
                progress(format!(
                    "splice_throughput {name} round {round}: {} {:.1} Mbit/s (download {:.1}, upload {:.1})",
                    if spliced { "spliced" } else { "direct" },
                    x.mbit_s(),
                    x.down.mbit_s(),
                    x.up.mbit_s()
                ));
                if x.ends.is_some() {
                    last_ends = x.ends.clone();
                }
                figures[spliced as usize] = Some(x);
            }
            let [Some(d), Some(s)] = figures else {
                unreachable!("both ran")
            };
            direct_rates.push(d.mbit_s());
            spliced_rates.push(s.mbit_s());
            round_figures.push(SpliceRound {
                direct_download_mbit_s: d.down.mbit_s(),
                direct_upload_mbit_s: d.up.mbit_s(),
                spliced_download_mbit_s: s.down.mbit_s(),
                spliced_upload_mbit_s: s.up.mbit_s(),
            });
        }
        let (direct_mbit_s, spliced_mbit_s) =
            (median_f64(&direct_rates), median_f64(&spliced_rates));
        let (client_end, backend_end) = last_ends.context("a spliced exchange ran")?;
        cases.push(SpliceCase {
            name,
            loss,
            direct_mbit_s,
            spliced_mbit_s,
            ratio_to_direct: spliced_mbit_s / direct_mbit_s,
            rounds: round_figures,
            spliced_client_options: client_end.options(),
            spliced_backend_options: backend_end.options(),
            spliced_backend_retrans: format!(
                "{} / {}",
                backend_end.retrans.1, backend_end.data_segs_out
            ),
            backend_congestion_control: backend_congestion_control.clone(),
            comparison,
        });
    }
    Ok((cases, congestion_control))
}

pub fn print(r: &SpliceThroughputReport) {
    println!(
        "\nsplice throughput ({} ms RTT, {} MiB each way, {} round(s), {}):",
        r.rtt_ms,
        r.transfer_bytes >> 20,
        r.rounds,
        r.congestion_control
    );
    for c in &r.cases {
        println!(
            "  {:<22} direct {:>7.1} Mbit/s  spliced {:>7.1} Mbit/s  ratio {:.2}  spliced options: client {}, backend {}; backend retrans {}",
            c.name,
            c.direct_mbit_s,
            c.spliced_mbit_s,
            c.ratio_to_direct,
            c.spliced_client_options,
            c.spliced_backend_options,
            c.spliced_backend_retrans
        );
    }
}

/// One target per case (not the comparisons): spliced goodput over direct, at least 0.9.
pub fn targets(r: &SpliceThroughputReport) -> Vec<Target> {
    r.cases
        .iter()
        .filter(|c| !c.comparison)
        .map(|c| {
            Target::at_least(
                &format!("splice throughput, {}: goodput spliced / direct", c.name),
                TARGET_RATIO_TO_DIRECT,
                c.ratio_to_direct,
                "x",
            )
        })
        .collect()
}

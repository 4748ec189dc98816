//! The programs (XDP and TC), one packet at a time, through `BPF_PROG_TEST_RUN` (see
//! `balancer_tests::testrun` for the bed and `balancer_tests::packet` for the one
//! packet builder that makes both the frames sent and the frames expected back). Needs
//! root: every test panics with a clear message otherwise. Each test has its own pinned
//! instance and network namespace.
//!
//! - [`nat`]: the NAT service: traffic that is not the balancer's and malformed or odd
//!   packets as tables of cases (`nat::refused`); forwarding, replies, backend states,
//!   UDP, next hops (`nat::forward`).
//! - [`cookie`]: cookie mode (delayed binding) phase by phase, with its helpers.
//! - [`fuzz`]: the fuzzer's suite-size runs and the reproductions of its known bugs.
//!
//! Where cases repeat, a test is a table of [`Case`]s (what, input frame, ingress,
//! expected verdict, expected counter changes, expected output) run by [`run_cases`],
//! which names the failing case.

mod cookie;
mod fuzz;
mod nat;

use balancer_common::Counter;
use balancer_tests::{packet::*, testrun::*};

/// Runs `frame` through the XDP program.
pub fn run(bed: &TestBed, frame: &[u8], ingress: Ingress) -> RunResult {
    bed.run(frame, ingress).expect("BPF_PROG_TEST_RUN")
}

/// Runs `frame` through the XDP program and checks the verdict, and that the counters
/// that moved are exactly `expect` plus `rx_packets`.
pub fn run_counted(
    bed: &TestBed,
    frame: &[u8],
    ingress: Ingress,
    verdict: u32,
    expect: &[(Counter, u64)],
    what: &str,
) -> RunResult {
    let before = bed.counters().unwrap();
    let r = run(bed, frame, ingress);
    let delta = bed.counters().unwrap().delta(&before);
    assert_eq!(
        r.verdict,
        verdict,
        "{what}: verdict {} (counters {delta:?})",
        r.verdict_name()
    );
    let mut want = expect.to_vec();
    want.push((Counter::RxPackets, 1));
    assert_eq!(delta, counter_map(&want), "{what}: counters");
    r
}

/// [`run_counted`] for the TC program (which counts no `rx_packets`).
pub fn tc_counted(
    bed: &TestBed,
    frame: &[u8],
    verdict: u32,
    expect: &[(Counter, u64)],
    what: &str,
) -> RunResult {
    let before = bed.counters().unwrap();
    let r = bed.run_tc(frame, Ingress::Backend).expect("skb test run");
    let delta = bed.counters().unwrap().delta(&before);
    assert_eq!(
        r.verdict,
        verdict,
        "{what}: TC verdict {} (counters {delta:?})",
        tc_verdict_name(r.verdict)
    );
    assert_eq!(delta, counter_map(expect), "{what}: counters");
    r
}

/// What the output buffer of a case must hold.
#[derive(Clone, Debug)]
pub enum Output {
    /// The input frame, byte for byte (passed or dropped as it came).
    Untouched,
    /// Exactly this frame ([`check_frame`]: every field, then every byte).
    Frame(Frame),
    /// Not looked at: the verdict and the counters are what the case is about.
    Unchecked,
}

/// One run of the XDP program and everything that must come of it.
#[derive(Clone, Debug)]
pub struct Case {
    pub what: String,
    pub frame: Vec<u8>,
    pub ingress: Ingress,
    pub verdict: u32,
    /// The counters that must move, exactly (`rx_packets` is added).
    pub counters: Vec<(Counter, u64)>,
    pub output: Output,
}

impl Case {
    /// A frame from the client side that must be passed to the kernel untouched,
    /// counted as `counter`.
    pub fn passed(what: impl Into<String>, frame: Vec<u8>, counter: Counter) -> Case {
        Case {
            what: what.into(),
            frame,
            ingress: Ingress::Client,
            verdict: XDP_PASS,
            counters: vec![(counter, 1)],
            output: Output::Untouched,
        }
    }

    /// `frame` arriving on `ingress` must be redirected to the other interface as
    /// exactly `expected`, counted as sent (`tx_redirect`, its length in `tx_bytes`).
    pub fn redirected(
        what: impl Into<String>,
        frame: &Frame,
        ingress: Ingress,
        expected: Frame,
    ) -> Case {
        let frame = frame.build();
        Case {
            what: what.into(),
            counters: vec![
                (Counter::TxRedirect, 1),
                (Counter::TxBytes, frame.len() as u64),
            ],
            frame,
            ingress,
            verdict: XDP_REDIRECT,
            output: Output::Frame(expected),
        }
    }

    /// A frame arriving on `ingress` that must be dropped, counted as `counter`, and
    /// left as it came.
    pub fn dropped(
        what: impl Into<String>,
        frame: Vec<u8>,
        ingress: Ingress,
        counter: Counter,
    ) -> Case {
        Case {
            what: what.into(),
            frame,
            ingress,
            verdict: XDP_DROP,
            counters: vec![(counter, 1)],
            output: Output::Untouched,
        }
    }
}

/// Runs one case and checks its verdict, counters and output; panics naming the case.
pub fn run_case(bed: &TestBed, case: &Case) -> RunResult {
    let r = run_counted(
        bed,
        &case.frame,
        case.ingress,
        case.verdict,
        &case.counters,
        &case.what,
    );
    match &case.output {
        Output::Untouched => assert!(
            r.output == case.frame,
            "{}: the frame was modified",
            case.what
        ),
        Output::Frame(want) => {
            if let Err(e) = check_frame(&r.output, want) {
                panic!("{}: {e:#}", case.what);
            }
        }
        Output::Unchecked => {}
    }
    r
}

/// Runs the cases in order on one bed (a case may depend on the state the ones before
/// it left).
pub fn run_cases(bed: &TestBed, cases: &[Case]) {
    for case in cases {
        run_case(bed, case);
    }
}

//! The fuzz run's configuration, its findings and its report.

use super::*;

/// What to run.
#[derive(Clone, Debug)]
pub struct FuzzConfig {
    /// Frames to generate (the truncation sweep included).
    pub packets: u64,
    pub seed: u64,
    /// The flow table and the kept segments are emptied every this many packets.
    pub epoch: u64,
    /// Flow-table capacity of the bed (an LRU hash: small, so it churns).
    pub flow_capacity: u32,
    /// Stop after this many findings (known bugs not included).
    pub max_failures: usize,
    /// Print a progress line per epoch.
    pub progress: bool,
    /// Once, after the first epoch, keep the flows and wait past the 3 s bind timeout, so
    /// that retransmissions meet bindings whose backend never answered.
    pub age_bindings: bool,
}

impl Default for FuzzConfig {
    fn default() -> Self {
        FuzzConfig {
            packets: 100_000,
            seed: 1,
            epoch: 25_000,
            flow_capacity: 8192,
            max_failures: 20,
            progress: false,
            age_bindings: true,
        }
    }
}

/// A program bug known and reported, skipped by the suite: a finding whose check and
/// details it matches is counted under its name and not failed. Every entry must name the
/// report it comes from.
pub struct KnownBug {
    pub name: &'static str,
    pub what: &'static str,
    pub matches: fn(&Failure) -> bool,
}

/// Known bugs the suite skips (see [`KnownBug`]). Empty: the two this fuzzer found
/// (see [`FIXED_BUGS`]) are fixed.
pub const KNOWN_BUGS: &[KnownBug] = &[];

/// Bugs this fuzzer found that were fixed; [`reproduce`] replays each, and the suite
/// checks that none comes back:
/// - `stale-ack-rst-half-counted`: the RST sent back to a backend whose ACK of an old
///   connection answered the binding SYN was counted in `tx_same_interface` without
///   `tx_bytes` or the backend's packets (now counted by `bind_stale_acks` only, like the
///   syncookie SYN-ACK and the bind-timeout RST);
/// - `refused-rst-rewritten-then-refused`: a backend's refusal RST with TTL <= 1 (or a
///   first fragment) was rewritten, counted refused and its binding forgotten before
///   forwarding refused it (now the refusal rules run first).
pub const FIXED_BUGS: &[&str] = &[
    "stale-ack-rst-half-counted",
    "refused-rst-rewritten-then-refused",
];

/// One violated invariant, with everything needed to reproduce and understand it.
#[derive(Clone, Debug)]
pub struct Failure {
    /// Stable id of the check (e.g. `counters.signature`, `output.nat_forward`).
    pub check: &'static str,
    pub detail: String,
    pub seed: u64,
    pub iteration: u64,
    pub template: &'static str,
    pub mutations: Vec<String>,
    pub ingress: Ingress,
    pub verdict: u32,
    pub input: Vec<u8>,
    pub output: Vec<u8>,
    pub counters: BTreeMap<&'static str, u64>,
}

impl Failure {
    pub fn known_bug(&self) -> Option<&'static KnownBug> {
        KNOWN_BUGS.iter().find(|k| (k.matches)(self))
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "[{}] {}", self.check, self.detail)?;
        writeln!(
            f,
            "  seed {} iteration {} template {} ingress {:?} mutations [{}]",
            self.seed,
            self.iteration,
            self.template,
            self.ingress,
            self.mutations.join(", ")
        )?;
        writeln!(
            f,
            "  verdict {} counters {:?}",
            verdict_name(self.verdict),
            self.counters
        )?;
        writeln!(
            f,
            "  input  ({} bytes) {}",
            self.input.len(),
            hex(&self.input)
        )?;
        write!(
            f,
            "  output ({} bytes) {}",
            self.output.len(),
            hex(&self.output)
        )
    }
}

/// What a run did and found.
#[derive(Clone, Debug, Default)]
pub struct FuzzReport {
    pub seed: u64,
    /// Frames generated.
    pub packets: u64,
    /// Frames the program ran on.
    pub runs: u64,
    /// Frames the kernel refused before running the program (shorter than 14 bytes).
    pub refused: u64,
    pub elapsed: Duration,
    pub verdicts: BTreeMap<&'static str, u64>,
    /// Global counters moved during the run.
    pub counters: BTreeMap<&'static str, u64>,
    /// Kinds of outputs checked (see the module docs).
    pub paths: BTreeMap<&'static str, u64>,
    /// Unmutated frames whose outcome was required (see the module docs), by template.
    pub liveness: BTreeMap<&'static str, u64>,
    pub templates: BTreeMap<&'static str, u64>,
    /// Inputs by the independent parser's class.
    pub classes: BTreeMap<&'static str, u64>,
    /// Forwarded (rewritten) frames whose input had a bad IPv4 or L4 checksum: forwarded
    /// with the same error, as checked.
    pub forwarded_bad_checksum: u64,
    /// Flow-table flushes (every epoch).
    pub flushes: u64,
    /// Extra flushes after a packet whose checks stopped early (the shadow of the flows
    /// is rebuilt from an empty table).
    pub resyncs: u64,
    /// The pause past the bind timeout (in `elapsed`, not in the packet rate).
    pub aging_pause: Duration,
    /// End-of-run checks that passed, as sentences.
    pub end_checks: Vec<String>,
    /// The first findings in detail (known bugs included, marked).
    pub failures: Vec<Failure>,
    /// All findings by check id.
    pub failure_counts: BTreeMap<&'static str, u64>,
    /// Findings matched by [`KNOWN_BUGS`], by name.
    pub known_bug_hits: BTreeMap<&'static str, u64>,
}

impl FuzzReport {
    /// Findings that are not known bugs.
    pub fn new_failures(&self) -> u64 {
        self.failure_counts.values().sum::<u64>() - self.known_bug_hits.values().sum::<u64>()
    }

    pub fn ok(&self) -> bool {
        self.new_failures() == 0
    }

    /// Packets per second of fuzzing (the aging pause not counted).
    pub fn packets_per_second(&self) -> f64 {
        let busy = self.elapsed.saturating_sub(self.aging_pause);
        self.packets as f64 / busy.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for FuzzReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "fuzz seed {}: {} packets ({} run, {} refused by the kernel) in {:.1} s (with a {:.1} s pause past the bind timeout), {:.0} packets/s, {} flushes, {} resyncs",
            self.seed,
            self.packets,
            self.runs,
            self.refused,
            self.elapsed.as_secs_f64(),
            self.aging_pause.as_secs_f64(),
            self.packets_per_second(),
            self.flushes,
            self.resyncs
        )?;
        let table = |f: &mut fmt::Formatter<'_>, title: &str, m: &BTreeMap<&str, u64>| {
            writeln!(f, "{title}:")?;
            for (k, v) in m {
                writeln!(f, "  {k:<32} {v:>10}")?;
            }
            Ok(())
        };
        table(f, "verdicts", &self.verdicts)?;
        table(f, "input classes", &self.classes)?;
        table(f, "outputs checked", &self.paths)?;
        table(f, "outcomes required (unmutated frames)", &self.liveness)?;
        table(f, "counters moved", &self.counters)?;
        table(f, "templates", &self.templates)?;
        writeln!(
            f,
            "forwarded with a bad input checksum (kept bad): {}",
            self.forwarded_bad_checksum
        )?;
        writeln!(f, "end-of-run checks:")?;
        for c in &self.end_checks {
            writeln!(f, "  ok: {c}")?;
        }
        if !self.known_bug_hits.is_empty() {
            table(f, "known bugs hit (skipped)", &self.known_bug_hits)?;
        }
        if self.failure_counts.is_empty() {
            write!(f, "findings: none")
        } else {
            table(f, "findings by check", &self.failure_counts)?;
            for fl in &self.failures {
                match fl.known_bug() {
                    Some(k) => writeln!(f, "(known bug {}) {fl}", k.name)?,
                    None => writeln!(f, "{fl}")?,
                }
            }
            write!(f, "new findings: {}", self.new_failures())
        }
    }
}

/// One of `xs`.
pub(super) fn pick_b(rng: &mut Rng, xs: &[&'static [u8]]) -> &'static [u8] {
    xs[rng.below(xs.len())]
}

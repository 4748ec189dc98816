//! Fuzzing of the loaded XDP program through `BPF_PROG_TEST_RUN`.
//!
//! A [`TestBed`] (the real program, pinned, in a private namespace: see
//! [`crate::testrun`]) is configured with one service of each kind, and frames built by
//! mutating valid templates are run through it one at a time. Every output is checked
//! against the invariants below; a violation is recorded with the seed, the iteration,
//! the template, the mutations applied, the ingress, the input and output frames in hex
//! and the counters that moved.
//!
//! Commands:
//! - `cargo test --release -p balancer-tests --test fuzz_testrun -- --nocapture`: the
//!   suite's run (a fixed seed and a random one, smaller counts).
//! - `cargo xtask fuzz --packets 1000000 [--seed S]`: the full run (builds and runs
//!   `balancer-fuzz`, which prints throughput, the verdict histogram, counter totals
//!   and findings, and exits non-zero on a finding).
//!
//! # The bed
//!
//! | service | mode | backends (state) |
//! |---|---|---|
//! | 198.18.100.1:80/tcp | NAT | .1.10 up, .1.11 up, .1.12 draining, .1.13 down (port 8080) |
//! | 198.18.100.1:53/udp | NAT | .1.20 up, .1.21 up, .1.22 draining (port 5353) |
//! | 198.18.100.1:81/tcp | NAT | .1.40 down: no backend can take a flow |
//! | 198.18.100.2:80/tcp | cookie | .1.30 `app1` up, .1.31 `app2` up, .1.32 `app3` draining, .1.33 `app4` down, failover `app4` -> `app2` (port 8080) |
//!
//! The syncookie secret is [`TEST_SECRET`], so the fuzzer builds valid handshake ACKs and
//! first segments (the cookie computed on the host) and mutations of them reach the
//! binding code. Backend states never change during a run: no flow may ever be bound to
//! a draining or down backend. The flow table is small (LRU, [`FuzzConfig::flow_capacity`])
//! and emptied, with the kept segments, every [`FuzzConfig::epoch`] packets, so memory
//! stays bounded and the table is both churned and lost mid-connection.
//!
//! # Inputs
//!
//! Templates ([`Template`]): SYN/ACK/data/FIN/RST and odd flag sets to the NAT service,
//! UDP datagrams, backend replies (to connections the fuzzer saw bound, or to random
//! clients), SYNs to the service without backends; cookie mode: SYNs, handshake ACKs and
//! first segments with valid syncookies (HTTP heads with the cookie anywhere, odd bytes,
//! quoted values, unknown, empty and over-long tokens, heads longer than the scanned 2048
//! bytes, TLS, binary), invalid and expired syncookies, backend SYN-ACKs, RSTs and stale
//! ACKs to bindings in progress, spliced traffic both ways, client FIN/RST; traffic to
//! other addresses and ports, ICMP, ARP, IPv6 and random bytes.
//!
//! Mutations, in three stages: on the frame description (TTL 0/1/2/255, VLAN tag, IPv4
//! options, TCP option soup, window 0/65535/random, random flags, sequence numbers, random
//! or HTTP payloads, payloads filling the MTU or beyond, random MACs, addresses and ports
//! swapped for interesting ones, UDP without checksum); consistent byte edits with
//! checksums fixed (fragment flags and offsets, TOS/id/DF, the raw TCP flag byte with
//! URG/ECE/CWR and reserved bits, urgent pointer, link padding, an 802.1ad tag, the
//! ethertype, the IP version, the UDP length); raw edits (truncation, bit flips, byte
//! sets, bogus IHL, total length and data offset, byte insertion and deletion), after
//! which the IPv4 and L4 checksums are each fixed half of the time. About a third of
//! the frames are left unmutated so that the deep paths (bindings completing, spliced
//! traffic) are reached. Before the random part, every template (and variants with a VLAN
//! tag, IPv4 and TCP options) is truncated at every offset.
//!
//! The generator learns from outputs (which backend a connection was bound to, the
//! client ISN and syncookie of a binding, the backend ISN once spliced) and builds
//! follow-up packets from that knowledge. Everything derives from the seed (one
//! xorshift64* generator per iteration): a run with the same seed makes the same frames
//! as long as the data plane answers the same way, which its clocks (syncookie windows,
//! the 3 s bind timeout, idle timeouts) can change.
//!
//! # Invariants checked on every run
//!
//! - The verdict is `XDP_PASS`, `XDP_DROP`, `XDP_TX` or `XDP_REDIRECT` (never
//!   `XDP_ABORTED`), and the kernel accepts every frame of 14 bytes or more (shorter ones
//!   it refuses before the program runs: counted, not run).
//! - Counters: `rx_packets` moved by exactly 1, no counter but `tx_bytes` by more than 1,
//!   and the "terminal" counters (the ones that end a packet's path) match the verdict:
//!   `PASS` <-> exactly one of `pass_*`; `REDIRECT` <-> `tx_redirect`; `TX` <->
//!   `tx_same_interface`, `syncookies_sent` (SYN-ACK) or `bindings_timed_out` (RST);
//!   `DROP` <-> exactly one of `drop_*`, `syncookies_invalid`, `drop_while_binding`, or
//!   none with `syncookies_valid` (a handshake ACK, nothing to bind yet), or
//!   `bindings_timed_out` when the retransmission that timed out was itself a RST (not
//!   answered), or a transmit counter plus `drop_flow_table_full` (the entry insert after
//!   forwarding failed). `tx_bytes` moves by the output's length with `tx_same_interface`
//!   or `tx_redirect`, by 0 otherwise. So the verdict classes are partitioned by these
//!   counters except for the handshake ACK (`syncookies_valid` alone) and the two
//!   documented double counts; at the end of the run the per-backend counters are summed
//!   and compared with the global ones (packets to and from backends equal
//!   `tx_same_interface` plus `tx_redirect`, bytes equal `tx_bytes`, new flows equal
//!   `new_flows`, and no new flow, cookie hit or failover redirect for a draining or down
//!   backend).
//! - Inputs the parser must refuse (classified here by an independent parser written
//!   from the README's packet handling rules): passed untouched (output byte-identical)
//!   with `pass_malformed`, `pass_fragment` or `pass_not_service`. Well-formed packets
//!   neither to a service nor from a backend: passed untouched with `pass_not_service`.
//!   Packets to a service are never counted `pass_not_service`. Every `XDP_PASS` output is
//!   byte-identical to its input (`pass_no_neighbour`, which passes a rewritten frame,
//!   cannot happen in this bed: every backend has a permanent neighbour entry).
//! - `XDP_TX`/`XDP_REDIRECT` outputs parse as Ethernet/IPv4/TCP|UDP, are not fragments,
//!   have TTL >= 1 and keep the input's link header (VLAN tag), and are exactly one of:
//!   - a NAT rewrite towards a backend: from the same client, to a backend of the service
//!     the packet was addressed to; for a new flow (`new_flows`/`flow_misses`) the one
//!     the service's Maglev table names for the 5-tuple (read from the pinned table,
//!     hashed on the host) and up; otherwise one this connection was bound to; TTL - 1,
//!     the next hop's MACs, `TX` iff received on the backend side, every other byte
//!     unchanged (payload, options, padding), and the IPv4 and L4 checksums as valid as
//!     they came in (an incremental update preserves a checksum's error exactly: valid in,
//!     valid out; a bad input checksum is forwarded as bad, never "fixed");
//!   - a NAT rewrite back to a client: from a backend the client's connection was bound
//!     to, rewritten to come from the service's VIP, to the MACs and out of the interface
//!     the client's packet came from, the rest as above; cookie mode: the backend's
//!     sequence number shifted by `K - B` (syncookie ISN minus backend ISN, learnt when
//!     the binding completed);
//!   - a syncookie SYN-ACK from the cookie service's VIP to the sender of a SYN: ack =
//!     ISN + 1, the sequence number is the syncookie computed here under [`TEST_SECRET`]
//!     for the window before or after the run with the MSS the SYN's options give, the
//!     MSS option as documented, a fresh IPv4 header (IHL 5, TTL 64, DF), valid checksums;
//!   - the SYN to the backend that binds a first segment (or re-sent for a
//!     retransmission): to the backend the host predicts (the cookie's token when up, its
//!     failover target when up, else the Maglev table; the scan outcome counter predicted
//!     by the host scanner), the client's ISN, window and the cookie's MSS;
//!   - the kept first segment, sent back to the backend in place of its SYN-ACK: byte for
//!     byte the client's segment (but the port and the acknowledgement of the backend's
//!     ISN), its checksum as valid as it came from the client;
//!   - a RST from the VIP to a client whose binding timed out, or to a backend whose
//!     stale ACK answered our SYN, per RFC 9293's reset generation.
//! - Liveness, for unmutated frames whose outcome is certain: a client's SYN, ACK, data,
//!   FIN or RST to the NAT TCP service and a datagram to the UDP service are forwarded to
//!   a backend; a SYN to the service without backends gets `drop_no_backend`; a SYN to the
//!   cookie service gets the syncookie SYN-ACK; a handshake ACK with a valid syncookie on
//!   a 5-tuple without a flow is dropped with exactly `syncookies_valid`.
//! - Syncookies: a segment counted `syncookies_valid` carries a cookie valid under the
//!   test secret, and one counted `syncookies_invalid` (an ACK without SYN or RST) does
//!   not carry one valid in both the window before and after the run.
//!
//! The checks that depend on state (which backend a connection is bound to) use a shadow
//! of the flows learnt from the program's own outputs and, for flows it creates, the
//! entry read back from the pinned flow table.

use std::{
    collections::{BTreeMap, HashMap as StdMap},
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use balancer_ebpf::{
    backend_state,
    cookie::{scan_payload, token_hash, CookieConfig, CookieOutcome},
    csum, direction,
    hash::flow_hash,
    map_names,
    parse::parse_slice,
    syncookie::{check_cookie, decode_mss, encode_mss, make_cookie, CookieSecret, SyncookieKeys},
    tcp_reply::client_mss,
    BackendStats, Counter, Flow, FlowKey, GlobalStats, PendingSegment, PROTO_TCP, PROTO_UDP,
    RING_SIZE,
};
use balancer_user::{addr::ip_to_map, CookieSettings, Proto, ServiceAddr};

use crate::{
    packet::{
        arp_frame, icmp_echo_frame, ipv6_syn_frame, l4_checksum, linux_syn_options, mss_option,
        Frame, TcpFlags, L4,
    },
    rng::Rng,
    testrun::{
        backend_addr, backend_mac, cookie_window, request_head, test_run, verdict_name, Ingress,
        Programs, TestBed, BACKEND_IF_MAC, CLIENT, TEST_SECRET, VIP, XDP_DROP, XDP_PASS,
        XDP_REDIRECT, XDP_TX,
    },
};

// --- Configuration and report -----------------------------------------------------------

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
fn pick_b(rng: &mut Rng, xs: &[&'static [u8]]) -> &'static [u8] {
    xs[rng.below(xs.len())]
}

// --- The bed ---------------------------------------------------------------------------

pub const VIP_COOKIE: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 2);
/// An address in the VIP range without any service.
pub const NOT_A_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 9);
/// Client addresses the templates use.
pub const CLIENTS: [Ipv4Addr; 4] = [
    CLIENT,
    Ipv4Addr::new(198, 18, 0, 3),
    Ipv4Addr::new(198, 18, 0, 4),
    Ipv4Addr::new(198, 18, 0, 5),
];
/// Bytes of a test run's frame the program sees (the linear part of the page the kernel
/// gives the run: 4096 - 256 bytes of headroom - 320 of `skb_shared_info`, measured on
/// this kernel); longer frames continue in fragments the program does not read, so it
/// sees them cut here.
pub const LINEAR_MAX: usize = 3520;
/// Client ports come mostly from this small pool, so that generated packets meet the
/// flows earlier ones created.
const CLIENT_PORT_BASE: u16 = 40000;
const CLIENT_PORTS: usize = 32;

/// Indexes into [`Layout::svcs`].
const SVC_TCP: usize = 0;
const SVC_UDP: usize = 1;
const SVC_DOWN: usize = 2;
const SVC_COOKIE: usize = 3;

struct BackendDef {
    addr: SocketAddrV4,
    state: u8,
    server_id: Option<&'static str>,
}

struct ServiceDef {
    name: &'static str,
    addr: SocketAddrV4,
    proto: Proto,
    cookie: bool,
    backends: Vec<BackendDef>,
}

fn be_def(n: u8, port: u16, state: u8, server_id: Option<&'static str>) -> BackendDef {
    BackendDef {
        addr: SocketAddrV4::new(backend_addr(n), port),
        state,
        server_id,
    }
}

fn service_defs() -> Vec<ServiceDef> {
    use backend_state::{DOWN, DRAINING, UP};
    vec![
        ServiceDef {
            name: "nat-tcp",
            addr: SocketAddrV4::new(VIP, 80),
            proto: Proto::Tcp,
            cookie: false,
            backends: vec![
                be_def(0, 8080, UP, None),
                be_def(1, 8080, UP, None),
                be_def(2, 8080, DRAINING, None),
                be_def(3, 8080, DOWN, None),
            ],
        },
        ServiceDef {
            name: "nat-udp",
            addr: SocketAddrV4::new(VIP, 53),
            proto: Proto::Udp,
            cookie: false,
            backends: vec![
                be_def(10, 5353, UP, None),
                be_def(11, 5353, UP, None),
                be_def(12, 5353, DRAINING, None),
            ],
        },
        ServiceDef {
            name: "nat-tcp-down",
            addr: SocketAddrV4::new(VIP, 81),
            proto: Proto::Tcp,
            cookie: false,
            backends: vec![be_def(30, 8080, DOWN, None)],
        },
        ServiceDef {
            name: "cookie",
            addr: SocketAddrV4::new(VIP_COOKIE, 80),
            proto: Proto::Tcp,
            cookie: true,
            backends: vec![
                be_def(20, 8080, UP, Some("app1")),
                be_def(21, 8080, UP, Some("app2")),
                be_def(22, 8080, DRAINING, Some("app3")),
                be_def(23, 8080, DOWN, Some("app4")),
            ],
        },
    ]
}

/// A service of the bed as loaded.
#[derive(Clone, Debug)]
pub struct Svc {
    pub name: &'static str,
    pub addr: SocketAddrV4,
    pub proto: u8,
    pub cookie: bool,
    pub id: u32,
}

/// A backend of the bed as loaded.
#[derive(Clone, Debug)]
pub struct Be {
    pub addr: SocketAddrV4,
    pub svc: usize,
    pub slot: u32,
    pub state: u8,
    pub server_id: Option<&'static str>,
}

/// Services and backends of the bed, with their ids and slots.
#[derive(Clone, Debug)]
pub struct Layout {
    pub svcs: Vec<Svc>,
    pub bes: Vec<Be>,
    /// Cookie failover: backend index -> replacement backend index.
    pub failover: StdMap<usize, usize>,
}

impl Layout {
    fn svc_for(&self, dst: SocketAddrV4, proto: u8) -> Option<usize> {
        self.svcs
            .iter()
            .position(|s| s.addr == dst && s.proto == proto)
    }

    fn be_by_addr(&self, addr: SocketAddrV4, proto: u8) -> Option<usize> {
        self.bes
            .iter()
            .position(|b| b.addr == addr && self.svcs[b.svc].proto == proto)
    }

    fn be_by_slot(&self, slot: u32) -> Option<usize> {
        self.bes.iter().position(|b| b.slot == slot)
    }

    fn be_by_token(&self, svc: usize, hash: u64) -> Option<usize> {
        self.bes.iter().position(|b| {
            b.svc == svc
                && b.server_id
                    .is_some_and(|t| token_hash(t.as_bytes()) == hash)
        })
    }

    fn backends_of(&self, svc: usize) -> Vec<usize> {
        (0..self.bes.len())
            .filter(|&i| self.bes[i].svc == svc)
            .collect()
    }

    fn up(&self, be: usize) -> bool {
        self.bes[be].state == backend_state::UP
    }
}

impl Layout {
    /// The bed's layout without a bed (service ids and backend slots in definition
    /// order): for host-side tests of the generator and the oracle.
    pub fn offline() -> Layout {
        let defs = service_defs();
        let mut svcs = Vec::new();
        let mut bes = Vec::new();
        for (si, def) in defs.iter().enumerate() {
            svcs.push(Svc {
                name: def.name,
                addr: def.addr,
                proto: match def.proto {
                    Proto::Tcp => PROTO_TCP,
                    Proto::Udp => PROTO_UDP,
                },
                cookie: def.cookie,
                id: si as u32,
            });
            for b in &def.backends {
                bes.push(Be {
                    addr: b.addr,
                    svc: si,
                    slot: bes.len() as u32,
                    state: b.state,
                    server_id: b.server_id,
                });
            }
        }
        let idx = |a: SocketAddrV4| bes.iter().position(|b: &Be| b.addr == a).unwrap();
        let cookie = &defs[SVC_COOKIE];
        let failover = StdMap::from([(idx(cookie.backends[3].addr), idx(cookie.backends[1].addr))]);
        Layout {
            svcs,
            bes,
            failover,
        }
    }
}

/// The configured bed: a [`TestBed`] and its layout.
pub struct FuzzBed {
    pub bed: TestBed,
    pub layout: Layout,
}

impl FuzzBed {
    pub fn new(flow_capacity: u32) -> Result<FuzzBed> {
        let bed = TestBed::new(flow_capacity)?;
        let defs = service_defs();
        for def in &defs {
            let addr = ServiceAddr {
                addr: *def.addr.ip(),
                port: def.addr.port(),
                proto: def.proto,
            };
            if def.cookie {
                bed.balancer()
                    .add_service_with(addr, Some(CookieSettings::default()))?;
                for b in &def.backends {
                    bed.add_cookie_backend(addr, b.addr, b.server_id.expect("server id"))?;
                }
            } else {
                bed.balancer().add_service(addr)?;
                for b in &def.backends {
                    bed.add_backend(addr, b.addr)?;
                }
            }
            for b in &def.backends {
                if b.state != backend_state::UP {
                    bed.set_backend_state(addr, b.addr, b.state)?;
                }
            }
        }
        let cookie = &defs[SVC_COOKIE];
        let cookie_addr = ServiceAddr {
            addr: *cookie.addr.ip(),
            port: cookie.addr.port(),
            proto: Proto::Tcp,
        };
        // app4 (down) -> app2 (up).
        bed.set_failover(
            cookie_addr,
            cookie.backends[3].addr,
            Some(cookie.backends[1].addr),
        )?;
        bed.rotate_syncookie_secret(TEST_SECRET)?;

        let infos = bed.balancer().services()?;
        let mut svcs = Vec::new();
        for def in &defs {
            let info = infos
                .iter()
                .find(|s| s.addr.addr == *def.addr.ip() && s.addr.port == def.addr.port())
                .filter(|s| s.addr.proto == def.proto)
                .ok_or_else(|| anyhow!("service {} not loaded", def.name))?;
            svcs.push(Svc {
                name: def.name,
                addr: def.addr,
                proto: match def.proto {
                    Proto::Tcp => PROTO_TCP,
                    Proto::Udp => PROTO_UDP,
                },
                cookie: def.cookie,
                id: info.id,
            });
        }
        let binfos = bed.balancer().backends(None)?;
        let mut bes = Vec::new();
        for (si, def) in defs.iter().enumerate() {
            for b in &def.backends {
                let info = binfos
                    .iter()
                    .find(|i| i.backend == b.addr.to_string())
                    .ok_or_else(|| anyhow!("backend {} not loaded", b.addr))?;
                bes.push(Be {
                    addr: b.addr,
                    svc: si,
                    slot: info.slot,
                    state: b.state,
                    server_id: b.server_id,
                });
            }
        }
        let idx = |a: SocketAddrV4| bes.iter().position(|b: &Be| b.addr == a).unwrap();
        let failover = StdMap::from([(idx(cookie.backends[3].addr), idx(cookie.backends[1].addr))]);
        Ok(FuzzBed {
            bed,
            layout: Layout {
                svcs,
                bes,
                failover,
            },
        })
    }
}

/// Handles on the pinned maps the fuzzer reads (usable from any thread).
struct Maps {
    stats: PerCpuArray<MapData, GlobalStats>,
    backend_stats: PerCpuArray<MapData, BackendStats>,
    flows: HashMap<MapData, FlowKey, Flow>,
    pending: HashMap<MapData, FlowKey, PendingSegment>,
    ring: Array<MapData, u32>,
}

impl Maps {
    fn open(bed: &TestBed) -> Result<Maps> {
        let b = bed.balancer();
        Ok(Maps {
            stats: b.map(map_names::STATS)?.try_into().context("STATS")?,
            backend_stats: b
                .map(map_names::BACKEND_STATS)?
                .try_into()
                .context("BACKEND_STATS")?,
            flows: b.map(map_names::FLOWS)?.try_into().context("FLOWS")?,
            pending: b.map(map_names::PENDING)?.try_into().context("PENDING")?,
            ring: b.map(map_names::RING)?.try_into().context("RING")?,
        })
    }

    fn counters(&self) -> Result<GlobalStats> {
        let per_cpu = self.stats.get(&0, 0).context("reading STATS")?;
        let mut total = [0u64; Counter::COUNT];
        for cpu in per_cpu.iter() {
            for (t, v) in total.iter_mut().zip(cpu.iter()) {
                *t += v;
            }
        }
        Ok(total)
    }

    fn backend_counters(&self, slot: u32) -> Result<BackendStats> {
        let per_cpu = self
            .backend_stats
            .get(&slot, 0)
            .context("reading BACKEND_STATS")?;
        let mut total = BackendStats::default();
        for cpu in per_cpu.iter() {
            total.add(cpu);
        }
        Ok(total)
    }

    /// Deletes every flow entry and kept segment; returns how many.
    fn flush(&mut self) -> Result<usize> {
        let keys: Vec<FlowKey> = self.flows.keys().filter_map(|k| k.ok()).collect();
        let mut n = 0;
        for k in &keys {
            if self.flows.remove(k).is_ok() {
                n += 1;
            }
        }
        let keys: Vec<FlowKey> = self.pending.keys().filter_map(|k| k.ok()).collect();
        for k in &keys {
            let _ = self.pending.remove(k);
        }
        Ok(n)
    }
}

// --- An independent parser (from the README's packet handling rules) -------------------

/// Why a frame is not a parsed TCP/UDP packet, per the README's rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    NotIpv4,
    NotTcpUdp,
    NonFirstFragment,
    Malformed,
}

impl Refused {
    fn counter(self) -> Counter {
        match self {
            Refused::NotIpv4 | Refused::NotTcpUdp => Counter::PassNotService,
            Refused::NonFirstFragment => Counter::PassFragment,
            Refused::Malformed => Counter::PassMalformed,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Refused::NotIpv4 => "not IPv4",
            Refused::NotTcpUdp => "IPv4, not TCP/UDP",
            Refused::NonFirstFragment => "non-first fragment",
            Refused::Malformed => "malformed",
        }
    }
}

/// A parsed Ethernet (+ one tag) / IPv4 / TCP|UDP frame: offsets and fields.
#[derive(Clone, Debug)]
pub struct Pkt {
    pub l3: usize,
    pub l4: usize,
    pub payload: usize,
    pub ip_end: usize,
    pub proto: u8,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub ttl: u8,
    /// Flags and fragment offset.
    pub frag: u16,
    pub tos: u8,
    pub id: u16,
    /// TCP only (0 for UDP).
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
}

const F_FIN: u8 = 0x01;
const F_SYN: u8 = 0x02;
const F_RST: u8 = 0x04;
const F_ACK: u8 = 0x10;

impl Pkt {
    fn key(&self) -> FlowKey {
        FlowKey::new(
            ip_to_map(*self.src.ip()),
            ip_to_map(*self.dst.ip()),
            self.src.port().to_be(),
            self.dst.port().to_be(),
            self.proto,
        )
    }

    fn first_fragment(&self) -> bool {
        self.frag & 0x2000 != 0
    }

    fn payload_len(&self) -> usize {
        self.ip_end - self.payload
    }

    fn tcp(&self) -> bool {
        self.proto == PROTO_TCP
    }
}

fn be16(f: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([f[o], f[o + 1]])
}

fn be32(f: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([f[o], f[o + 1], f[o + 2], f[o + 3]])
}

fn addr_at(f: &[u8], o: usize) -> Ipv4Addr {
    Ipv4Addr::new(f[o], f[o + 1], f[o + 2], f[o + 3])
}

/// Offset of the IPv4 header if the link header says IPv4 (one 802.1Q/802.1ad tag).
fn l3_of(f: &[u8]) -> Option<usize> {
    if f.len() < 14 {
        return None;
    }
    let et = be16(f, 12);
    if et == 0x8100 || et == 0x88a8 {
        if f.len() < 18 || be16(f, 16) != 0x0800 {
            return None;
        }
        return Some(18);
    }
    (et == 0x0800).then_some(14)
}

/// Parses a frame the way the README's rules describe, in the data plane's order.
pub fn parse(f: &[u8]) -> std::result::Result<Pkt, Refused> {
    use Refused::*;
    if f.len() < 14 {
        return Err(Malformed);
    }
    let mut l3 = 14;
    let mut et = be16(f, 12);
    if et == 0x8100 || et == 0x88a8 {
        if f.len() < 18 {
            return Err(Malformed);
        }
        et = be16(f, 16);
        l3 = 18;
    }
    if et != 0x0800 {
        return Err(NotIpv4);
    }
    if f.len() < l3 + 20 || f[l3] >> 4 != 4 {
        return Err(Malformed);
    }
    let ihl = (f[l3] & 0x0f) as usize * 4;
    let tot = be16(f, l3 + 2) as usize;
    if ihl < 20 || tot < ihl || l3 + tot > f.len() {
        return Err(Malformed);
    }
    let proto = f[l3 + 9];
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(NotTcpUdp);
    }
    let frag = be16(f, l3 + 6);
    if frag & 0x1fff != 0 {
        return Err(NonFirstFragment);
    }
    let l4 = l3 + ihl;
    let ip_end = l3 + tot;
    let (payload, flags, seq, ack, window) = if proto == PROTO_TCP {
        if l4 + 20 > f.len() {
            return Err(Malformed);
        }
        let doff = (f[l4 + 12] >> 4) as usize * 4;
        if doff < 20 || l4 + doff > ip_end {
            return Err(Malformed);
        }
        (
            l4 + doff,
            f[l4 + 13],
            be32(f, l4 + 4),
            be32(f, l4 + 8),
            be16(f, l4 + 14),
        )
    } else {
        if l4 + 8 > f.len() || l4 + 8 > ip_end {
            return Err(Malformed);
        }
        (l4 + 8, 0, 0, 0, 0)
    };
    Ok(Pkt {
        l3,
        l4,
        payload,
        ip_end,
        proto,
        src: SocketAddrV4::new(addr_at(f, l3 + 12), be16(f, l4)),
        dst: SocketAddrV4::new(addr_at(f, l3 + 16), be16(f, l4 + 2)),
        ttl: f[l3 + 8],
        frag,
        tos: f[l3 + 1],
        id: be16(f, l3 + 4),
        flags,
        seq,
        ack,
        window,
    })
}

// --- Checksums ---------------------------------------------------------------------------

/// One's-complement sum of the IPv4 header, checksum included: 0xffff when valid.
fn ip_residual(f: &[u8], p: &Pkt) -> u16 {
    !csum::checksum(&f[p.l3..p.l4], 0)
}

/// One's-complement sum of the L4 segment and its pseudo-header (length from the IPv4
/// header), checksum included: 0xffff when valid.
fn l4_residual(f: &[u8], p: &Pkt) -> u16 {
    let (src, dst) = (addr_at(f, p.l3 + 12), addr_at(f, p.l3 + 16));
    !l4_checksum(src, dst, p.proto, &f[p.l4..p.ip_end])
}

/// Residuals compared as one's-complement values (0 and 0xffff are both zero).
fn same_residual(a: u16, b: u16) -> bool {
    let n = |x: u16| if x == 0 { 0xffff } else { x };
    n(a) == n(b)
}

fn udp_no_checksum(f: &[u8], p: &Pkt) -> bool {
    p.proto == PROTO_UDP && f[p.l4 + 6] == 0 && f[p.l4 + 7] == 0
}

fn l4_valid(f: &[u8], p: &Pkt) -> bool {
    udp_no_checksum(f, p) || same_residual(l4_residual(f, p), 0xffff)
}

/// Recomputes the IPv4 header checksum (a bogus IHL is clamped to what the frame holds).
fn fix_ip_checksum(f: &mut [u8]) {
    let Some(l3) = l3_of(f) else { return };
    if f.len() < l3 + 20 {
        return;
    }
    let ihl = ((f[l3] & 0x0f) as usize * 4).clamp(20, f.len() - l3);
    f[l3 + 10] = 0;
    f[l3 + 11] = 0;
    let c = csum::checksum(&f[l3..l3 + ihl], 0);
    f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
}

/// Recomputes the TCP/UDP checksum of a parseable frame.
fn fix_l4_checksum(f: &mut [u8]) {
    let Ok(p) = parse(f) else { return };
    let off = p.l4 + if p.tcp() { 16 } else { 6 };
    if off + 2 > p.ip_end {
        return;
    }
    f[off] = 0;
    f[off + 1] = 0;
    let mut c = !l4_residual(f, &p);
    if !p.tcp() && c == 0 {
        c = 0xffff;
    }
    f[off..off + 2].copy_from_slice(&c.to_be_bytes());
}

// --- Templates and mutations -------------------------------------------------------------

/// Kinds of base frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Template {
    NatSyn,
    NatAck,
    NatData,
    NatFin,
    NatRst,
    NatOddFlags,
    NatReply,
    UdpRequest,
    UdpReply,
    DownServiceSyn,
    CookieSyn,
    CookieHandshakeAck,
    CookieFirstSegment,
    CookieBadCookie,
    CookieBackendSynAck,
    CookieBackendRst,
    CookieBackendAck,
    CookieSplicedClient,
    CookieSplicedBackend,
    CookieClientClose,
    OtherTcp,
    OtherUdp,
    Icmp,
    Arp,
    Ipv6,
    Garbage,
}

/// Templates with their relative weights.
const TEMPLATES: [(Template, usize); 26] = [
    (Template::NatSyn, 8),
    (Template::NatAck, 4),
    (Template::NatData, 5),
    (Template::NatFin, 2),
    (Template::NatRst, 2),
    (Template::NatOddFlags, 2),
    (Template::NatReply, 8),
    (Template::UdpRequest, 5),
    (Template::UdpReply, 3),
    (Template::DownServiceSyn, 1),
    (Template::CookieSyn, 6),
    (Template::CookieHandshakeAck, 3),
    (Template::CookieFirstSegment, 12),
    (Template::CookieBadCookie, 3),
    (Template::CookieBackendSynAck, 8),
    (Template::CookieBackendRst, 2),
    (Template::CookieBackendAck, 2),
    (Template::CookieSplicedClient, 5),
    (Template::CookieSplicedBackend, 5),
    (Template::CookieClientClose, 2),
    (Template::OtherTcp, 2),
    (Template::OtherUdp, 1),
    (Template::Icmp, 1),
    (Template::Arp, 1),
    (Template::Ipv6, 1),
    (Template::Garbage, 1),
];

impl Template {
    pub fn name(self) -> &'static str {
        match self {
            Template::NatSyn => "nat_syn",
            Template::NatAck => "nat_ack",
            Template::NatData => "nat_data",
            Template::NatFin => "nat_fin",
            Template::NatRst => "nat_rst",
            Template::NatOddFlags => "nat_odd_flags",
            Template::NatReply => "nat_reply",
            Template::UdpRequest => "udp_request",
            Template::UdpReply => "udp_reply",
            Template::DownServiceSyn => "down_service_syn",
            Template::CookieSyn => "cookie_syn",
            Template::CookieHandshakeAck => "cookie_handshake_ack",
            Template::CookieFirstSegment => "cookie_first_segment",
            Template::CookieBadCookie => "cookie_bad_cookie",
            Template::CookieBackendSynAck => "cookie_backend_synack",
            Template::CookieBackendRst => "cookie_backend_rst",
            Template::CookieBackendAck => "cookie_backend_ack",
            Template::CookieSplicedClient => "cookie_spliced_client",
            Template::CookieSplicedBackend => "cookie_spliced_backend",
            Template::CookieClientClose => "cookie_client_close",
            Template::OtherTcp => "other_tcp",
            Template::OtherUdp => "other_udp",
            Template::Icmp => "icmp",
            Template::Arp => "arp",
            Template::Ipv6 => "ipv6",
            Template::Garbage => "garbage",
        }
    }

    fn pick(rng: &mut Rng) -> Template {
        let total: usize = TEMPLATES.iter().map(|(_, w)| w).sum();
        let mut x = rng.below(total);
        for (t, w) in TEMPLATES {
            if x < w {
                return t;
            }
            x -= w;
        }
        Template::NatSyn
    }
}

/// One generated frame.
#[derive(Clone, Debug)]
pub struct Case {
    pub template: Template,
    pub frame: Vec<u8>,
    pub ingress: Ingress,
    pub mutations: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Client,
    Backend,
}

enum Base {
    Frame(Frame, Origin),
    Raw(Vec<u8>, Origin),
}

const fn flags(syn: bool, ack: bool, fin: bool, rst: bool, psh: bool) -> TcpFlags {
    TcpFlags {
        syn,
        ack,
        fin,
        rst,
        psh,
    }
}

fn random_flags(rng: &mut Rng) -> TcpFlags {
    let b = rng.u8();
    flags(b & 1 != 0, b & 2 != 0, b & 4 != 0, b & 8 != 0, b & 16 != 0)
}

fn client_addr(rng: &mut Rng) -> SocketAddrV4 {
    let ip = *rng.pick(&CLIENTS);
    let port = if rng.one_in(8) {
        rng.u16().max(1)
    } else {
        CLIENT_PORT_BASE + rng.below(CLIENT_PORTS) as u16
    };
    SocketAddrV4::new(ip, port)
}

/// A frame from the backend `from` to `to` (the backend's MAC to the balancer's
/// backend-side MAC).
fn from_backend(f: Frame) -> Frame {
    let mac = backend_mac(*f.src.ip());
    f.macs(mac, BACKEND_IF_MAC)
}

fn tcp_to(src: SocketAddrV4, dst: SocketAddrV4, fl: TcpFlags, seq: u32, ack: u32) -> Frame {
    Frame::tcp(src, dst, fl).seq(seq).ack(ack)
}

fn mss_choice(rng: &mut Rng) -> u16 {
    *rng.pick(&[536, 1220, 1440, 1460, 1460, 4312, 8960, 100, 0, 65535, 1400])
}

/// SYN options: Linux-like, MSS only, none, or soup.
fn syn_options(rng: &mut Rng, mss: u16) -> Vec<u8> {
    match rng.below(4) {
        0 | 1 => linux_syn_options(mss),
        2 => mss_option(mss),
        _ => Vec::new(),
    }
}

/// TCP option soup: up to 40 bytes of valid, odd and broken options.
fn option_soup(rng: &mut Rng) -> Vec<u8> {
    let mut o = Vec::new();
    let n = rng.range(1, 12);
    for _ in 0..n {
        let room = 40 - o.len();
        if room == 0 {
            break;
        }
        let opt: Vec<u8> = match rng.below(12) {
            0 => vec![1],
            1 => vec![0],
            2 => {
                let m = rng.u16().to_be_bytes();
                vec![2, 4, m[0], m[1]]
            }
            3 => vec![2, *rng.pick(&[0, 1, 2, 3, 5, 40, 255]), 5, 0xb4],
            4 => vec![3, 3, rng.u8()],
            5 => vec![4, 2],
            6 => {
                let mut v = vec![8, 10];
                v.extend(rng.bytes(8));
                v
            }
            7 => {
                let n = 2 + 8 * rng.range(1, 5);
                let mut v = vec![5, n as u8];
                v.extend(rng.bytes(n - 2));
                v
            }
            8 => vec![rng.u8(), 0],
            9 => vec![rng.u8(), 1],
            10 => {
                let n = rng.range(2, 12);
                let mut v = vec![rng.u8(), n as u8];
                v.extend(rng.bytes(n - 2));
                v
            }
            _ => vec![rng.u8(), rng.u8()],
        };
        o.extend_from_slice(&opt[..opt.len().min(room)]);
    }
    o
}

fn ip_options(rng: &mut Rng) -> Vec<u8> {
    let mut o = match rng.below(6) {
        0 => vec![1; rng.range(1, 41)],
        1 => {
            // Record route with room for n addresses.
            let n = rng.range(1, 10);
            let mut v = vec![7, (3 + 4 * n) as u8, 4];
            v.resize(3 + 4 * n, 0);
            v
        }
        2 => {
            let n = rng.range(1, 9);
            let mut v = vec![68, (4 + 4 * n) as u8, 5, 0];
            v.resize(4 + 4 * n, 0);
            v
        }
        3 => vec![148, 4, 0, 0],
        4 => vec![0; rng.range(1, 41)],
        _ => rng.bytes_in(1, 41),
    };
    o.truncate(40);
    o
}

/// An HTTP request head with a session cookie in one of many shapes (or none).
fn http_request(rng: &mut Rng) -> Vec<u8> {
    let tokens: [&[u8]; 12] = [
        b"app1",
        b"app2",
        b"app3",
        b"app4",
        b"app1",
        b"app2",
        b"APP1",
        b"zz9",
        b"",
        b"app1 ",
        b"\"app2\"",
        b"app\x001",
    ];
    let mut primary: Vec<u8> = rng.pick(&tokens).to_vec();
    if rng.one_in(20) {
        primary = vec![b'a'; rng.range(60, 70)];
    }
    let secondary: Option<Vec<u8>> = if rng.one_in(3) {
        None
    } else {
        Some(rng.pick(&tokens).to_vec())
    };
    let session: &[u8] = pick_b(
        rng,
        &[
            b"a1b2c3d4",
            b"",
            b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            b"s",
        ],
    );
    let name: &[u8] = pick_b(
        rng,
        &[
            b"JSESSIONID",
            b"JSESSIONID",
            b"JSESSIONID",
            b"JSESSIONID",
            b"jsessionid",
            b"XJSESSIONID",
            b"JSESSIONID2",
            b"JSESSIONID ",
        ],
    );
    let eol: &[u8] = pick_b(
        rng,
        &[b"\r\n", b"\r\n", b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r"],
    );
    let method: &[u8] = pick_b(
        rng,
        &[
            b"GET", b"GET", b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"DELETE", b"PATCH",
            b"get", b"GETX", b"G", b"PRI", b"CONNECT",
        ],
    );
    let header: &[u8] = pick_b(
        rng,
        &[
            b"Cookie",
            b"Cookie",
            b"Cookie",
            b"cookie",
            b"COOKIE",
            b"Cookie2",
            b"X-Cookie",
            b"Set-Cookie",
        ],
    );
    let sep: &[u8] = pick_b(rng, &[b": ", b": ", b":", b":\t", b" : ", b":   "]);

    let mut value = Vec::new();
    value.extend_from_slice(session);
    if !rng.one_in(15) {
        value.push(b'!');
        value.extend_from_slice(&primary);
        if let Some(s) = &secondary {
            value.push(b'!');
            value.extend_from_slice(s);
        }
    }
    if rng.one_in(6) {
        value.insert(0, b'"');
        value.push(b'"');
    }
    let mut pair = Vec::new();
    pair.extend_from_slice(name);
    pair.extend_from_slice(pick_b(rng, &[b"=", b"=", b"=", b" = ", b"= "]));
    pair.extend_from_slice(&value);
    let mut cookie_line = Vec::new();
    cookie_line.extend_from_slice(header);
    cookie_line.extend_from_slice(sep);
    if rng.one_in(2) {
        cookie_line.extend_from_slice(b"theme=dark; ");
    }
    cookie_line.extend_from_slice(&pair);
    if rng.one_in(3) {
        cookie_line.extend_from_slice(b"; lang=en");
    }
    if rng.one_in(10) {
        cookie_line.extend_from_slice(b"; JSESSIONID=zzz!app2!app1");
    }

    let mut h = Vec::new();
    h.extend_from_slice(method);
    h.extend_from_slice(b" /app/cart?item=42 HTTP/1.1");
    h.extend_from_slice(eol);
    h.extend_from_slice(b"Host: shop.example.test");
    h.extend_from_slice(eol);
    let cookie_at = rng.below(4);
    for i in 0..4 {
        if i == cookie_at && !rng.one_in(10) {
            h.extend_from_slice(&cookie_line);
            h.extend_from_slice(eol);
        }
        match rng.below(6) {
            0 => h.extend_from_slice(b"Accept: */*"),
            1 => h.extend_from_slice(b"User-Agent: fuzz/1.0"),
            2 => {
                // A long header line, sometimes beyond the scanned 2048 bytes.
                let n = *rng.pick(&[100, 600, 1500, 2100, 2600]);
                h.extend_from_slice(b"X-Long: ");
                h.extend((0..n).map(|i| b'a' + (i % 26) as u8));
            }
            3 => h.extend_from_slice(b"Cookie: other=1"),
            _ => continue,
        }
        h.extend_from_slice(eol);
    }
    if !rng.one_in(8) {
        h.extend_from_slice(eol);
    }
    h
}

/// First-segment payloads: HTTP heads in many shapes, long heads, TLS, binary.
fn first_payload(rng: &mut Rng) -> Vec<u8> {
    let mut p = match rng.below(20) {
        0..=12 => http_request(rng),
        13 | 14 => {
            let len = rng.range(600, 2600);
            let tokens = ["app1", "app2", "app3", "app4", "zz9"];
            request_head(
                len,
                rng.below(101) as f64 / 100.0,
                tokens[rng.below(tokens.len())],
                tokens[rng.below(tokens.len())],
            )
        }
        15 | 16 => {
            let mut v = vec![
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
            ];
            v.extend(rng.bytes_in(20, 500));
            v
        }
        17 => rng.bytes_in(1, 300),
        18 => b"GET / HTTP/1.1\r\n".to_vec(),
        _ => vec![b'G'],
    };
    // Odd bytes.
    if rng.one_in(4) && !p.is_empty() {
        for _ in 0..rng.range(1, 6) {
            let i = rng.below(p.len());
            p[i] = *rng.pick(&[
                0, 0xff, 0x80, b'"', b';', b' ', b'\t', b'!', b'=', b'\r', b'\n',
            ]);
        }
    }
    p
}

/// The generator: templates filled from the fuzzer's knowledge of the flows.
struct Generator<'a> {
    layout: &'a Layout,
    shadow: &'a Shadow,
}

impl Generator<'_> {
    fn svc_addr(&self, svc: usize) -> SocketAddrV4 {
        self.layout.svcs[svc].addr
    }

    fn random_backend(&self, rng: &mut Rng, svc: usize) -> SocketAddrV4 {
        let bes = self.layout.backends_of(svc);
        self.layout.bes[*rng.pick(&bes)].addr
    }

    /// A connection of `svc` the fuzzer saw bound, with its backend, if any.
    fn bound(&self, rng: &mut Rng, svc: usize) -> Option<(SocketAddrV4, SocketAddrV4)> {
        let list = &self.shadow.recent_bound[svc];
        if list.is_empty() {
            return None;
        }
        let (client, backend) = *rng.pick(list);
        Some((client, backend))
    }

    fn pending(&self, rng: &mut Rng) -> Option<(SocketAddrV4, Pending)> {
        let list = &self.shadow.recent_pending;
        if list.is_empty() {
            return None;
        }
        let c = *rng.pick(list);
        let key = (c, self.svc_addr(SVC_COOKIE), PROTO_TCP);
        self.shadow.pending.get(&key).map(|p| (c, p.clone()))
    }

    fn spliced(&self, rng: &mut Rng) -> Option<(SocketAddrV4, Spliced)> {
        let list = &self.shadow.recent_spliced;
        if list.is_empty() {
            return None;
        }
        let c = *rng.pick(list);
        let key = (c, self.svc_addr(SVC_COOKIE), PROTO_TCP);
        self.shadow.spliced.get(&key).map(|s| (c, *s))
    }

    /// A handshake ACK or first segment of a new cookie-mode connection from `client`,
    /// with a valid syncookie (`odd` picks a variant: another MSS index, the previous,
    /// the next or an expired window, a wrong cookie).
    fn cookie_segment(
        &self,
        rng: &mut Rng,
        client: SocketAddrV4,
        fl: TcpFlags,
        odd: bool,
    ) -> Frame {
        let vip = self.svc_addr(SVC_COOKIE);
        let isn = rng.u32();
        let mss = mss_choice(rng);
        let mut t = cookie_window();
        let mut cookie = make_cookie(
            &TEST_SECRET,
            ip_to_map(*client.ip()),
            ip_to_map(*vip.ip()),
            client.port().to_be(),
            vip.port().to_be(),
            isn,
            t,
            encode_mss(mss),
        );
        if odd {
            match rng.below(6) {
                0 => cookie = (cookie & !7) | rng.below(8) as u32,
                1 => t -= 1,
                2 => t += 1,
                3 => t -= 2,
                4 => cookie ^= 1 << rng.range(3, 32),
                _ => cookie = rng.u32(),
            }
            if matches!(rng.below(6), 1..=3) {
                cookie = make_cookie(
                    &TEST_SECRET,
                    ip_to_map(*client.ip()),
                    ip_to_map(*vip.ip()),
                    client.port().to_be(),
                    vip.port().to_be(),
                    isn,
                    t,
                    encode_mss(mss),
                );
            }
        }
        tcp_to(client, vip, fl, isn.wrapping_add(1), cookie.wrapping_add(1))
            .ttl(rng.range(2, 65) as u8)
    }

    fn base(&self, rng: &mut Rng, t: Template) -> Base {
        use Template::*;
        let nat = self.svc_addr(SVC_TCP);
        let udp = self.svc_addr(SVC_UDP);
        let cookie_vip = self.svc_addr(SVC_COOKIE);
        const SYN: TcpFlags = flags(true, false, false, false, false);
        const ACK: TcpFlags = flags(false, true, false, false, false);
        const PSH_ACK: TcpFlags = flags(false, true, false, false, true);
        const FIN_ACK: TcpFlags = flags(false, true, true, false, false);
        const RST: TcpFlags = flags(false, false, false, true, false);
        const RST_ACK: TcpFlags = flags(false, true, false, true, false);
        const SYN_ACK: TcpFlags = flags(true, true, false, false, false);
        let c = client_addr(rng);
        let frame = match t {
            NatSyn => {
                let mss = mss_choice(rng);
                tcp_to(c, nat, SYN, rng.u32(), 0).tcp_options(&syn_options(rng, mss))
            }
            NatAck => tcp_to(c, nat, ACK, rng.u32(), rng.u32()),
            NatData => {
                let p = if rng.one_in(2) {
                    http_request(rng)
                } else {
                    rng.bytes_in(1, 1400)
                };
                tcp_to(c, nat, PSH_ACK, rng.u32(), rng.u32()).payload(&p)
            }
            NatFin => tcp_to(c, nat, FIN_ACK, rng.u32(), rng.u32()),
            NatRst => tcp_to(
                c,
                nat,
                if rng.one_in(2) { RST } else { RST_ACK },
                rng.u32(),
                rng.u32(),
            ),
            NatOddFlags => tcp_to(c, nat, random_flags(rng), rng.u32(), rng.u32()),
            NatReply => {
                let (client, backend) = self
                    .bound(rng, SVC_TCP)
                    .filter(|_| !rng.one_in(8))
                    .unwrap_or_else(|| (c, self.random_backend(rng, SVC_TCP)));
                let fl = *rng.pick(&[SYN_ACK, ACK, ACK, PSH_ACK, FIN_ACK, RST, RST_ACK]);
                let mut f = from_backend(tcp_to(backend, client, fl, rng.u32(), rng.u32()));
                if fl.psh {
                    f = f.payload(&rng.bytes_in(1, 1400));
                }
                return Base::Frame(f, Origin::Backend);
            }
            UdpRequest => Frame::udp(c, udp, &rng.bytes_in(0, 600)),
            UdpReply => {
                let (client, backend) = self
                    .bound(rng, SVC_UDP)
                    .filter(|_| !rng.one_in(8))
                    .unwrap_or_else(|| (c, self.random_backend(rng, SVC_UDP)));
                let f = from_backend(Frame::udp(backend, client, &rng.bytes_in(0, 600)));
                return Base::Frame(f, Origin::Backend);
            }
            DownServiceSyn => tcp_to(c, self.svc_addr(SVC_DOWN), SYN, rng.u32(), 0),
            CookieSyn => {
                let mss = mss_choice(rng);
                // Sometimes the port of a live connection (a duplicate SYN or port reuse).
                let client = self
                    .spliced(rng)
                    .map(|(c, _)| c)
                    .filter(|_| rng.one_in(3))
                    .unwrap_or(c);
                tcp_to(client, cookie_vip, SYN, rng.u32(), 0)
                    .ttl(rng.range(2, 65) as u8)
                    .tcp_options(&syn_options(rng, mss))
            }
            CookieHandshakeAck => self.cookie_segment(rng, c, ACK, false),
            CookieFirstSegment => {
                let fl = if rng.one_in(8) { ACK } else { PSH_ACK };
                let odd = rng.one_in(10);
                let mut f = self.cookie_segment(rng, c, fl, odd);
                if rng.one_in(4) {
                    let mut ts = vec![1, 1, 8, 10];
                    ts.extend(rng.bytes(8));
                    f = f.tcp_options(&ts);
                }
                // Sometimes a retransmission of a binding in progress.
                if let Some((client, p)) = self.pending(rng).filter(|_| rng.one_in(4)) {
                    f = tcp_to(
                        client,
                        cookie_vip,
                        fl,
                        p.isn.wrapping_add(1),
                        p.cookie.wrapping_add(1),
                    );
                }
                f.payload(&first_payload(rng))
            }
            CookieBadCookie => {
                let fl = *rng.pick(&[ACK, PSH_ACK, FIN_ACK, RST_ACK, RST]);
                let mut f = self.cookie_segment(rng, c, fl, true);
                if fl.psh {
                    f = f.payload(&http_request(rng));
                }
                f
            }
            CookieBackendSynAck | CookieBackendRst | CookieBackendAck => {
                let (client, backend, isn) = match self.pending(rng) {
                    Some((client, p)) if !rng.one_in(10) => (client, p.backend, p.isn),
                    _ => (c, self.random_backend(rng, SVC_COOKIE), rng.u32()),
                };
                let ack = if rng.one_in(6) {
                    rng.u32()
                } else {
                    isn.wrapping_add(1)
                };
                let f = match t {
                    CookieBackendSynAck => tcp_to(backend, client, SYN_ACK, rng.u32(), ack)
                        .window(65160)
                        .tcp_options(&syn_options(rng, 1460)),
                    CookieBackendRst => {
                        let fl = *rng.pick(&[
                            RST_ACK,
                            RST_ACK,
                            RST,
                            flags(true, true, false, true, false),
                        ]);
                        tcp_to(backend, client, fl, 0, ack).window(0)
                    }
                    _ => tcp_to(backend, client, ACK, rng.u32(), ack),
                };
                return Base::Frame(from_backend(f), Origin::Backend);
            }
            CookieSplicedClient | CookieClientClose => {
                let Some((client, s)) = self.spliced(rng) else {
                    return self.base(rng, CookieFirstSegment);
                };
                let fl = if t == CookieClientClose {
                    *rng.pick(&[FIN_ACK, RST, RST_ACK])
                } else {
                    *rng.pick(&[ACK, PSH_ACK, PSH_ACK])
                };
                let seq = s.isn.wrapping_add(1 + rng.below(5000) as u32);
                let ack = s.cookie.wrapping_add(1 + rng.below(5000) as u32);
                let mut f = tcp_to(client, cookie_vip, fl, seq, ack);
                if fl.psh {
                    f = f.payload(&first_payload(rng));
                }
                f
            }
            CookieSplicedBackend => {
                let Some((client, s)) = self.spliced(rng) else {
                    return self.base(rng, CookieBackendSynAck);
                };
                let fl = *rng.pick(&[ACK, PSH_ACK, PSH_ACK, FIN_ACK, RST_ACK, SYN_ACK]);
                let seq = s.bisn.wrapping_add(1 + rng.below(5000) as u32);
                let ack = s.isn.wrapping_add(1 + rng.below(5000) as u32);
                let mut f = tcp_to(s.backend, client, fl, seq, ack);
                if fl.psh {
                    f = f.payload(&rng.bytes_in(1, 1400));
                }
                return Base::Frame(from_backend(f), Origin::Backend);
            }
            OtherTcp => {
                let dst = *rng.pick(&[
                    SocketAddrV4::new(NOT_A_VIP, 80),
                    SocketAddrV4::new(VIP, 8080),
                    SocketAddrV4::new(VIP_COOKIE, 443),
                    SocketAddrV4::new(CLIENTS[1], 80),
                ]);
                tcp_to(c, dst, random_flags(rng), rng.u32(), rng.u32())
            }
            OtherUdp => {
                let dst = *rng.pick(&[
                    SocketAddrV4::new(NOT_A_VIP, 53),
                    SocketAddrV4::new(VIP, 80),
                    SocketAddrV4::new(VIP_COOKIE, 80),
                ]);
                Frame::udp(c, dst, &rng.bytes_in(0, 100))
            }
            Icmp => return Base::Raw(icmp_echo_frame(), Origin::Client),
            Arp => return Base::Raw(arp_frame(), Origin::Client),
            Ipv6 => return Base::Raw(ipv6_syn_frame(), Origin::Client),
            Garbage => {
                let mut f = rng.bytes_in(14, 200);
                if rng.one_in(2) {
                    f[12] = 0x08;
                    f[13] = 0x00;
                    if f.len() > 14 && rng.one_in(2) {
                        f[14] = 0x45;
                    }
                }
                return Base::Raw(f, Origin::Client);
            }
        };
        Base::Frame(frame, Origin::Client)
    }

    /// A case of template `t`; `clean` leaves the frame unmutated.
    fn case(&self, rng: &mut Rng, t: Template, clean: bool) -> Case {
        let mut log = Vec::new();
        let (mut bytes, origin) = match self.base(rng, t) {
            Base::Frame(mut f, origin) => {
                if !clean && rng.percent(55) {
                    for _ in 0..rng.range(1, 3) {
                        mutate_frame(rng, &mut f, &mut log);
                    }
                }
                (build_frame(&f, rng, &log), origin)
            }
            Base::Raw(b, origin) => (b, origin),
        };
        if !clean {
            if rng.percent(25) {
                mutate_consistent(rng, &mut bytes, &mut log);
            }
            if rng.percent(35) {
                for _ in 0..rng.range(1, 4) {
                    mutate_raw(rng, &mut bytes, &mut log);
                }
                if rng.one_in(2) {
                    fix_ip_checksum(&mut bytes);
                    log.push("fix-ip-csum".into());
                }
                if rng.one_in(2) {
                    fix_l4_checksum(&mut bytes);
                    log.push("fix-l4-csum".into());
                }
            }
        }
        let ingress = match (rng.below(10), origin) {
            (0, _) => Ingress::Loopback,
            (1, Origin::Client) | (2..=9, Origin::Backend) => Ingress::Backend,
            _ => Ingress::Client,
        };
        Case {
            template: t,
            frame: bytes,
            ingress,
            mutations: log,
        }
    }
}

/// Builds a frame description, falling back to a valid variant if the mutations made it
/// unbuildable (options too long).
fn build_frame(f: &Frame, rng: &mut Rng, log: &[String]) -> Vec<u8> {
    let mut f = f.clone();
    if f.tcp_options.len() > 40 {
        f.tcp_options.truncate(40);
    }
    if f.ip_options.len() > 40 {
        f.ip_options.truncate(40);
    }
    let mut out = f.build();
    if log.iter().any(|m| m == "payload-mtu") {
        // Fill the frame to a 1514-byte Ethernet frame (1518 tagged).
        let want = 1514 + if f.vlan.is_some() { 4 } else { 0 };
        if out.len() < want {
            let extra = want - out.len();
            let mut p = f.payload.clone();
            p.extend(rng.bytes(extra));
            f.payload = p;
            out = f.build();
        }
    }
    out
}

fn mutate_frame(rng: &mut Rng, f: &mut Frame, log: &mut Vec<String>) {
    let tcp = matches!(f.l4, L4::Tcp { .. });
    match rng.below(13) {
        0 => {
            let ttl = {
                let xs = [0, 1, 2, 255, rng.u8()];
                *rng.pick(&xs)
            };
            f.ttl = ttl;
            log.push(format!("ttl={ttl}"));
        }
        1 => {
            let id = rng.below(4096) as u16;
            f.vlan = Some(id);
            log.push(format!("vlan={id}"));
        }
        2 => {
            f.ip_options = ip_options(rng);
            log.push(format!("ip-options({})", hex(&f.ip_options)));
        }
        3 if tcp => {
            f.tcp_options = option_soup(rng);
            log.push(format!("tcp-options({})", hex(&f.tcp_options)));
        }
        4 if tcp => {
            let w = {
                let xs = [0, 65535, rng.u16()];
                *rng.pick(&xs)
            };
            f.window = w;
            log.push(format!("window={w}"));
        }
        5 if tcp => {
            let fl = random_flags(rng);
            *f = f.clone().flags(fl);
            log.push(format!("flags={fl:?}"));
        }
        6 if tcp => {
            if let L4::Tcp { seq, ack, .. } = &mut f.l4 {
                if rng.one_in(2) {
                    *seq = rng.u32();
                } else {
                    *ack = ack.wrapping_add({
                        let xs = [1, u32::MAX, 8, rng.u32()];
                        *rng.pick(&xs)
                    });
                }
            }
            log.push("seq/ack".into());
        }
        7 => {
            f.payload = match rng.below(3) {
                0 => rng.bytes_in(0, 300),
                1 => http_request(rng),
                _ => Vec::new(),
            };
            log.push(format!("payload({} bytes)", f.payload.len()));
        }
        8 => log.push("payload-mtu".into()),
        9 => {
            let n = rng.range(1500, 3300);
            f.payload = rng.bytes(n);
            log.push(format!("payload-jumbo({n})"));
        }
        10 => {
            let mut a = rng.bytes(6);
            if rng.one_in(3) {
                a = vec![0xff; 6];
            }
            let b = rng.bytes(6);
            f.src_mac.copy_from_slice(&a);
            if rng.one_in(2) {
                f.dst_mac.copy_from_slice(&b);
            }
            log.push("macs".into());
        }
        11 => {
            let ips = [
                VIP,
                VIP_COOKIE,
                NOT_A_VIP,
                CLIENT,
                backend_addr(0),
                backend_addr(20),
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::BROADCAST,
                Ipv4Addr::LOCALHOST,
                Ipv4Addr::new(224, 0, 0, 1),
            ];
            let ports = [80, 53, 81, 8080, 5353, 0, 40000, rng.u16()];
            let a = SocketAddrV4::new(*rng.pick(&ips), *rng.pick(&ports));
            if rng.one_in(2) {
                f.src = a;
                log.push(format!("src={a}"));
            } else {
                f.dst = a;
                log.push(format!("dst={a}"));
            }
        }
        _ => {
            if !tcp {
                f.udp_zero_checksum = true;
                log.push("udp-no-csum".into());
            } else {
                f.tcp_options = option_soup(rng);
                log.push(format!("tcp-options({})", hex(&f.tcp_options)));
            }
        }
    }
}

/// Byte edits that keep the frame consistent (checksums fixed).
fn mutate_consistent(rng: &mut Rng, f: &mut Vec<u8>, log: &mut Vec<String>) {
    let Some(l3) = l3_of(f) else {
        // Not IPv4: the link header only.
        if f.len() >= 14 {
            let et = {
                let xs = [0x0800u16, 0x8100, 0x88a8, 0x86dd, rng.u16()];
                *rng.pick(&xs)
            };
            f[12..14].copy_from_slice(&et.to_be_bytes());
            log.push(format!("ethertype={et:#06x}"));
        }
        return;
    };
    if f.len() < l3 + 20 {
        return;
    }
    let l4 = l3 + (f[l3] & 0x0f) as usize * 4;
    let tcp = f[l3 + 9] == PROTO_TCP;
    match rng.below(10) {
        0 | 1 => {
            let v = {
                let xs = [
                    0x2000u16,
                    0x2000 | rng.below(0x2000) as u16,
                    rng.below(0x2000) as u16,
                    0x6000,
                    0x4000,
                    0x1fff,
                    0x0001,
                    rng.u16(),
                ];
                *rng.pick(&xs)
            };
            f[l3 + 6..l3 + 8].copy_from_slice(&v.to_be_bytes());
            log.push(format!("frag={v:#06x}"));
        }
        2 => {
            f[l3 + 1] = rng.u8();
            let id = rng.u16();
            f[l3 + 4..l3 + 6].copy_from_slice(&id.to_be_bytes());
            log.push("tos/id".into());
        }
        3 if tcp && f.len() >= l4 + 20 => {
            f[l4 + 13] = rng.u8();
            f[l4 + 12] = (f[l4 + 12] & 0xf0) | (rng.u8() & 0x0f);
            log.push(format!("tcp-flag-byte={:#04x}", f[l4 + 13]));
        }
        4 if tcp && f.len() >= l4 + 20 => {
            let u = rng.u16();
            f[l4 + 18..l4 + 20].copy_from_slice(&u.to_be_bytes());
            f[l4 + 13] |= 0x20;
            log.push("urgent".into());
        }
        5 => {
            let n = rng.range(1, 64);
            f.extend(rng.bytes(n));
            log.push(format!("link-padding({n})"));
            return;
        }
        6 => {
            // An 802.1ad tag in front (one tag is allowed; a second one is not).
            let tci = rng.u16().to_be_bytes();
            f.splice(12..12, [0x88, 0xa8, tci[0], tci[1]]);
            log.push("s-tag".into());
            return;
        }
        7 => {
            f[l3] = (rng.u8() & 0xf0) | (f[l3] & 0x0f);
            log.push(format!("ip-version={}", f[l3] >> 4));
        }
        8 if !tcp && f.len() >= l4 + 8 => {
            let v = {
                let xs = [0u16, 1, 7, 8, 0xffff, rng.u16()];
                *rng.pick(&xs)
            };
            f[l4 + 4..l4 + 6].copy_from_slice(&v.to_be_bytes());
            log.push(format!("udp-len={v}"));
        }
        _ => {
            let et = {
                let xs = [0x8100u16, 0x86dd, 0x0806, rng.u16()];
                *rng.pick(&xs)
            };
            f[12..14].copy_from_slice(&et.to_be_bytes());
            log.push(format!("ethertype={et:#06x}"));
            return;
        }
    }
    fix_ip_checksum(f);
    fix_l4_checksum(f);
}

/// Raw byte edits: no checksum is fixed here.
fn mutate_raw(rng: &mut Rng, f: &mut Vec<u8>, log: &mut Vec<String>) {
    if f.is_empty() {
        return;
    }
    let l3 = l3_of(f);
    match rng.below(9) {
        0 => {
            let n = if rng.one_in(10) {
                rng.below(f.len())
            } else {
                rng.range(14.min(f.len()), f.len())
            };
            f.truncate(n);
            log.push(format!("trunc@{n}"));
        }
        1 | 2 => {
            for _ in 0..rng.range(1, 4) {
                let i = rng.below(f.len());
                let b = rng.below(8);
                f[i] ^= 1 << b;
                log.push(format!("flip@{i}.{b}"));
            }
        }
        3 => {
            let i = rng.below(f.len());
            let v = {
                let xs = [0u8, 0xff, 0x7f, 0x80, 1, rng.u8()];
                *rng.pick(&xs)
            };
            f[i] = v;
            log.push(format!("set@{i}={v:#04x}"));
        }
        4 => {
            if let Some(l3) = l3.filter(|&l3| f.len() > l3) {
                let ihl = rng.below(16) as u8;
                f[l3] = (f[l3] & 0xf0) | ihl;
                log.push(format!("ihl={ihl}"));
            }
        }
        5 => {
            if let Some(l3) = l3.filter(|&l3| f.len() >= l3 + 4) {
                let len = (f.len() - l3) as u16;
                let v = {
                    let xs = [
                        0u16,
                        1,
                        19,
                        20,
                        39,
                        len.wrapping_sub(1),
                        len.wrapping_add(1),
                        len,
                        0xffff,
                        rng.u16(),
                    ];
                    *rng.pick(&xs)
                };
                f[l3 + 2..l3 + 4].copy_from_slice(&v.to_be_bytes());
                log.push(format!("totlen={v}"));
            }
        }
        6 => {
            if let Some(l3) = l3.filter(|&l3| f.len() > l3) {
                let l4 = l3 + (f[l3] & 0x0f) as usize * 4;
                if f.len() > l4 + 12 {
                    let d = rng.below(16) as u8;
                    f[l4 + 12] = (f[l4 + 12] & 0x0f) | (d << 4);
                    log.push(format!("doff={d}"));
                }
            }
        }
        7 => {
            let i = rng.below(f.len() + 1);
            let n = rng.range(1, 9);
            let b = rng.bytes(n);
            f.splice(i..i, b);
            log.push(format!("insert@{i}+{n}"));
        }
        _ => {
            let i = rng.below(f.len());
            let n = rng.range(1, 9).min(f.len() - i);
            f.drain(i..i + n);
            log.push(format!("delete@{i}-{n}"));
        }
    }
}

// --- Shadow of the flows ----------------------------------------------------------------

/// Client side of a connection: client, service address, protocol.
type CKey = (SocketAddrV4, SocketAddrV4, u8);

/// A cookie-mode binding in progress, as learnt when it started.
#[derive(Clone, Debug)]
struct Pending {
    backend: SocketAddrV4,
    isn: u32,
    cookie: u32,
    mss: u16,
    /// The client's TCP segment as it came (header and payload).
    segment: Vec<u8>,
    /// Its L4 checksum residual against the client -> VIP pseudo-header.
    residual: u16,
}

/// A spliced cookie-mode connection.
#[derive(Clone, Copy, Debug)]
struct Spliced {
    backend: SocketAddrV4,
    isn: u32,
    cookie: u32,
    bisn: u32,
}

/// Where the reply direction of a flow sends frames (learnt from the packet that created
/// the flow).
#[derive(Clone, Copy, Debug)]
struct Created {
    ingress: u32,
    client_mac: [u8; 6],
    our_mac: [u8; 6],
}

#[derive(Default)]
struct Shadow {
    /// Backends each connection was bound to during this epoch.
    bound: StdMap<CKey, Vec<SocketAddrV4>>,
    created: StdMap<CKey, Created>,
    pending: StdMap<CKey, Pending>,
    spliced: StdMap<CKey, Spliced>,
    /// For the generator: (client, backend) per service, and cookie clients.
    recent_bound: [Vec<(SocketAddrV4, SocketAddrV4)>; 4],
    recent_pending: Vec<SocketAddrV4>,
    recent_spliced: Vec<SocketAddrV4>,
    tick: usize,
}

const RECENT: usize = 256;

fn remember<T>(v: &mut Vec<T>, x: T, tick: usize) {
    if v.len() < RECENT {
        v.push(x);
    } else {
        v[tick % RECENT] = x;
    }
}

impl Shadow {
    fn bind(&mut self, svc: usize, key: CKey, backend: SocketAddrV4, created: Created) {
        let list = self.bound.entry(key).or_default();
        if !list.contains(&backend) {
            list.push(backend);
        }
        self.created.insert(key, created);
        self.tick += 1;
        remember(&mut self.recent_bound[svc], (key.0, backend), self.tick);
    }
}

// --- The oracle --------------------------------------------------------------------------

type Delta = [u64; Counter::COUNT];

/// A violated invariant: check id and details.
struct Finding {
    check: &'static str,
    detail: String,
}

macro_rules! ensure_that {
    ($cond:expr, $check:expr, $($fmt:tt)*) => {
        if !$cond {
            return Err(Finding { check: $check, detail: format!($($fmt)*) });
        }
    };
}

const PASS_TERMINALS: [Counter; 6] = [
    Counter::PassNotService,
    Counter::PassMalformed,
    Counter::PassFragment,
    Counter::PassTtlExceeded,
    Counter::PassNoNeighbour,
    Counter::PassStaleAckToTc,
];
const DROP_TERMINALS: [Counter; 7] = [
    Counter::DropFragment,
    Counter::DropNoBackend,
    Counter::DropNoRoute,
    Counter::DropFlowTableFull,
    Counter::SyncookiesInvalid,
    Counter::DropNoSyncookieKey,
    Counter::DropWhileBinding,
];
const TX_TERMINALS: [Counter; 5] = [
    Counter::TxSameInterface,
    Counter::TxRedirect,
    Counter::SyncookiesSent,
    Counter::BindingsTimedOut,
    Counter::BindStaleAcks,
];
const COOKIE_OUTCOMES: [Counter; 6] = [
    Counter::CookieNotHttp,
    Counter::CookieNoHeader,
    Counter::CookieNameAbsent,
    Counter::CookieNoToken,
    Counter::CookieBeyondFirstSegment,
    Counter::CookieUnknownToken,
];

fn d(delta: &Delta, c: Counter) -> u64 {
    delta[c as usize]
}

fn delta_map(delta: &Delta) -> BTreeMap<&'static str, u64> {
    Counter::ALL
        .iter()
        .filter(|c| delta[**c as usize] != 0)
        .map(|c| (c.label(), delta[*c as usize]))
        .collect()
}

/// The counter signature of one run (see the module docs).
/// A `tx_bytes` mismatch goes to `deferred`, so that the packet's other checks still run.
fn check_signature(
    verdict: u32,
    delta: &Delta,
    out_len: usize,
    deferred: &mut Vec<Finding>,
) -> Result<(), Finding> {
    ensure_that!(
        d(delta, Counter::RxPackets) == 1,
        "counters.rx_packets",
        "rx_packets moved by {}",
        d(delta, Counter::RxPackets)
    );
    for c in Counter::ALL {
        ensure_that!(
            c == Counter::TxBytes || delta[c as usize] <= 1,
            "counters.signature",
            "{} moved by {} in one run",
            c.label(),
            delta[c as usize]
        );
    }
    let terminals: Vec<Counter> = PASS_TERMINALS
        .iter()
        .chain(&DROP_TERMINALS)
        .chain(&TX_TERMINALS)
        .copied()
        .filter(|c| d(delta, *c) != 0)
        .collect();
    let one_of = |set: &[Counter]| terminals.len() == 1 && set.contains(&terminals[0]);
    let ok = match verdict {
        XDP_PASS => one_of(&PASS_TERMINALS),
        XDP_REDIRECT => terminals == [Counter::TxRedirect],
        XDP_TX => one_of(&[
            Counter::TxSameInterface,
            Counter::SyncookiesSent,
            Counter::BindingsTimedOut,
            Counter::BindStaleAcks,
        ]),
        XDP_DROP => {
            one_of(&DROP_TERMINALS)
                || one_of(&[Counter::BindingsTimedOut])
                || (terminals.is_empty() && d(delta, Counter::SyncookiesValid) == 1)
                || (terminals.len() == 2
                    && terminals.contains(&Counter::DropFlowTableFull)
                    && (terminals.contains(&Counter::TxRedirect)
                        || terminals.contains(&Counter::TxSameInterface)))
        }
        _ => false,
    };
    ensure_that!(
        ok,
        "counters.signature",
        "verdict {} with terminal counters {:?}",
        verdict_name(verdict),
        terminals.iter().map(|c| c.label()).collect::<Vec<_>>()
    );
    let sent = d(delta, Counter::TxSameInterface) + d(delta, Counter::TxRedirect);
    // The program counts the bytes it sees: the linear part of a longer test-run frame.
    let want_bytes = if sent > 0 {
        out_len.min(LINEAR_MAX) as u64
    } else {
        0
    };
    if d(delta, Counter::TxBytes) != want_bytes {
        deferred.push(Finding {
            check: "counters.tx_bytes",
            detail: format!(
                "tx_bytes moved by {} for a {out_len}-byte output counted as {sent} transmitted",
                d(delta, Counter::TxBytes)
            ),
        });
    }
    ensure_that!(
        d(delta, Counter::NewFlows) + d(delta, Counter::FlowMisses) <= 1,
        "counters.signature",
        "new_flows and flow_misses in one run"
    );
    let outcomes: u64 = COOKIE_OUTCOMES.iter().map(|c| d(delta, *c)).sum();
    ensure_that!(
        outcomes <= 1 && (outcomes == 0 || d(delta, Counter::SyncookiesValid) == 1),
        "counters.signature",
        "cookie outcome counters without a valid syncookie, or more than one"
    );
    ensure_that!(
        d(delta, Counter::BindingsStarted) == 0
            || (d(delta, Counter::SyncookiesValid) == 1 && d(delta, Counter::NewFlows) == 1),
        "counters.signature",
        "bindings_started without syncookies_valid and new_flows"
    );
    ensure_that!(
        d(delta, Counter::BindingsCompleted) == 0
            || (verdict == XDP_TX && d(delta, Counter::TxSameInterface) == 1),
        "counters.signature",
        "bindings_completed without a transmit"
    );
    ensure_that!(
        d(delta, Counter::BindStaleAcks) == 0 || verdict == XDP_TX,
        "counters.signature",
        "bind_stale_acks without a transmit"
    );
    Ok(())
}

/// Output kinds (for the report).
const PATH_NAT_FORWARD: &str = "nat rewrite to backend";
const PATH_NAT_REPLY: &str = "nat rewrite to client";
const PATH_SPLICED_FORWARD: &str = "spliced rewrite to backend";
const PATH_SPLICED_REPLY: &str = "spliced rewrite to client";
const PATH_REFUSED: &str = "backend RST relayed (bind refused)";
const PATH_SYNACK: &str = "syncookie SYN-ACK";
const PATH_RESET_CLIENT: &str = "RST to client (bind timed out)";
const PATH_RESET_BACKEND: &str = "RST to backend (stale ACK)";
const PATH_STALE_ACK_TO_TC: &str = "stale ACK passed to TC (RST and SYN again there)";
const PATH_BACKEND_SYN: &str = "SYN to backend (binding)";
const PATH_BACKEND_SYN_AGAIN: &str = "SYN to backend (retransmission)";
const PATH_SEGMENT: &str = "kept segment to backend";

/// Everything about one run that the checks need.
struct Run<'a> {
    input: &'a [u8],
    inp: std::result::Result<Pkt, Refused>,
    verdict: u32,
    out: &'a [u8],
    delta: &'a Delta,
    ingress: u32,
    backend_ifindex: u32,
    windows: [u32; 2],
    /// The template, if the frame was left as built (no mutation, not cut).
    clean: Option<Template>,
}

impl Run<'_> {
    fn c(&self, c: Counter) -> bool {
        d(self.delta, c) != 0
    }
}

/// Bytes of `a` and `b` equal outside `skip` (ranges), same lengths.
fn same_except(a: &[u8], b: &[u8], skip: &[std::ops::Range<usize>]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    (0..a.len()).find(|i| a[*i] != b[*i] && !skip.iter().any(|r| r.contains(i)))
}

struct Oracle {
    layout: Layout,
    shadow: Shadow,
    paths: BTreeMap<&'static str, u64>,
    forwarded_bad_checksum: u64,
    keys: SyncookieKeys,
    cookie_cfg: CookieConfig,
    /// Findings of the current packet that did not stop its checks.
    deferred: Vec<Finding>,
    /// The kind of output the current packet's check found.
    last_path: Option<&'static str>,
    /// Liveness expectations checked, by template.
    liveness: BTreeMap<&'static str, u64>,
}

impl Oracle {
    fn ring_pick(&self, maps: &Maps, svc: usize, key: &FlowKey) -> Result<Option<usize>> {
        let s = &self.layout.svcs[svc];
        let index = s.id * RING_SIZE + flow_hash(key) % RING_SIZE;
        let slot = maps.ring.get(&index, 0).context("reading RING")?;
        if slot == u32::MAX {
            return Ok(None);
        }
        Ok(self
            .layout
            .be_by_slot(slot)
            .filter(|&b| self.layout.bes[b].svc == svc && self.layout.up(b)))
    }

    /// Valid under the test secret in the window before or after the run (`[t0, t1]`).
    fn cookie_valid(&self, p: &Pkt, t: u32) -> bool {
        let k = p.key();
        check_cookie(
            &self.keys,
            k.src,
            k.dst,
            k.sport,
            k.dport,
            p.seq.wrapping_sub(1),
            p.ack.wrapping_sub(1),
            t,
        )
        .is_some()
    }

    /// The backend a first segment must bind to, with the scan's outcome counter and
    /// whether a token pair is reported.
    fn predict_binding(
        &self,
        maps: &Maps,
        p: &Pkt,
        payload: &[u8],
    ) -> Result<(Option<Counter>, bool, Option<usize>)> {
        let svc = SVC_COOKIE;
        let (outcome, pair, token) = match scan_payload(payload, &self.cookie_cfg) {
            CookieOutcome::NotHttp => (Some(Counter::CookieNotHttp), false, None),
            CookieOutcome::NoCookieHeader => (Some(Counter::CookieNoHeader), false, None),
            CookieOutcome::CookieNameAbsent => (Some(Counter::CookieNameAbsent), false, None),
            CookieOutcome::SegmentMissing => (Some(Counter::CookieNoToken), false, None),
            CookieOutcome::HeaderIncomplete => {
                (Some(Counter::CookieBeyondFirstSegment), false, None)
            }
            CookieOutcome::Found { primary, secondary } => {
                match self.layout.be_by_token(svc, primary) {
                    Some(b) => (None, secondary.is_some(), Some(b)),
                    None => (Some(Counter::CookieUnknownToken), secondary.is_some(), None),
                }
            }
        };
        let chosen = match token {
            Some(b) if self.layout.up(b) => Some(b),
            Some(b) => self
                .layout
                .failover
                .get(&b)
                .copied()
                .filter(|&r| self.layout.up(r)),
            None => None,
        };
        let backend = match chosen {
            Some(b) => Some(b),
            None => self.ring_pick(maps, svc, &p.key())?,
        };
        Ok((outcome, pair, backend))
    }

    /// Checks one run and updates the shadow. `created` is the forward entry read back
    /// after a run that created one.
    fn check(&mut self, maps: &Maps, r: &Run, created: Option<Flow>) -> Result<(), Finding> {
        ensure_that!(
            matches!(r.verdict, XDP_PASS | XDP_DROP | XDP_TX | XDP_REDIRECT),
            "verdict.unexpected",
            "verdict {} ({})",
            r.verdict,
            verdict_name(r.verdict)
        );
        check_signature(r.verdict, r.delta, r.out.len(), &mut self.deferred)?;
        if r.verdict == XDP_PASS {
            ensure_that!(
                !r.c(Counter::PassNoNeighbour),
                "pass.no_neighbour",
                "pass_no_neighbour, although every backend has a permanent neighbour entry"
            );
            ensure_that!(
                r.out == r.input,
                "pass.modified",
                "XDP_PASS with a modified frame (first difference at byte {:?})",
                same_except(r.input, r.out, &[])
            );
        }
        ensure_that!(
            !r.c(Counter::BindingsRefused) || matches!(r.verdict, XDP_TX | XDP_REDIRECT),
            "refused.not_relayed",
            "bindings_refused, but the backend's RST is not relayed to the client ({})",
            verdict_name(r.verdict)
        );
        ensure_that!(
            !r.c(Counter::DropNoRoute),
            "drop.no_route",
            "drop_no_route, although every backend is routed"
        );
        ensure_that!(
            !r.c(Counter::DropNoSyncookieKey),
            "drop.no_syncookie_key",
            "drop_no_syncookie_key, although a secret is set"
        );
        let p = match &r.inp {
            Err(refused) => {
                let want = refused.counter();
                ensure_that!(
                    r.verdict == XDP_PASS && r.c(want),
                    "input.refused",
                    "a frame the rules call {} got {} (expected XDP_PASS, untouched, {})",
                    refused.name(),
                    verdict_name(r.verdict),
                    want.label()
                );
                return Ok(());
            }
            Ok(p) => p,
        };
        let svc = self.layout.svc_for(p.dst, p.proto);
        let from_be = self.layout.be_by_addr(p.src, p.proto);
        if svc.is_none() && from_be.is_none() {
            ensure_that!(
                r.verdict == XDP_PASS && r.c(Counter::PassNotService),
                "input.not_service",
                "a packet neither to a service nor from a backend got {} (expected pass_not_service)",
                verdict_name(r.verdict)
            );
        }
        if svc.is_some() {
            ensure_that!(
                !r.c(Counter::PassNotService),
                "input.service_passed",
                "a packet to a service counted pass_not_service"
            );
        }
        ensure_that!(
            !r.c(Counter::DropFragment) || p.first_fragment(),
            "drop.fragment",
            "drop_fragment for a packet that is not a first fragment"
        );
        ensure_that!(
            !r.c(Counter::PassTtlExceeded) || p.ttl <= 1,
            "pass.ttl",
            "pass_ttl_exceeded for TTL {}",
            p.ttl
        );
        if r.c(Counter::PassStaleAckToTc) {
            // Handed to the TC program, which resets the backend's old connection and sends
            // the SYN again: only a pure ACK from the backend of a binding in progress.
            let key = (p.dst, self.layout.svcs[SVC_COOKIE].addr, PROTO_TCP);
            let binding = self.shadow.pending.get(&key).map(|b| b.backend);
            let pure_ack = p.tcp() && p.flags & (F_ACK | F_SYN | F_RST | F_FIN) == F_ACK;
            ensure_that!(
                pure_ack && binding == Some(p.src),
                "pass.stale_ack",
                "pass_stale_ack_to_tc for a packet from {} (flags {:#04x}) whose binding the fuzzer knows as {binding:?}",
                p.src,
                p.flags
            );
            self.count(PATH_STALE_ACK_TO_TC);
        }

        // The shadow holds every flow created since the last flush (and more).
        let known_flow = self.shadow.bound.contains_key(&(p.src, p.dst, p.proto));
        self.last_path = None;

        // Syncookies, checked on the host.
        let ack_only = p.tcp() && p.flags & (F_ACK | F_SYN | F_RST) == F_ACK;
        if r.c(Counter::SyncookiesValid) {
            ensure_that!(
                ack_only && svc == Some(SVC_COOKIE),
                "syncookie.valid",
                "syncookies_valid for a packet that is not an ACK to the cookie service"
            );
            ensure_that!(
                r.windows.iter().any(|t| self.cookie_valid(p, *t)),
                "syncookie.valid",
                "syncookies_valid but the cookie {:#010x} is invalid under the test secret",
                p.ack.wrapping_sub(1)
            );
        }
        if r.c(Counter::SyncookiesInvalid) && ack_only {
            ensure_that!(
                !r.windows.iter().all(|t| self.cookie_valid(p, *t)),
                "syncookie.invalid",
                "syncookies_invalid for the valid cookie {:#010x}",
                p.ack.wrapping_sub(1)
            );
        }

        // New flows and bindings: the backend chosen.
        let key = (p.src, p.dst, p.proto);
        let creates = r.c(Counter::NewFlows) || r.c(Counter::FlowMisses);
        let mut expected_binding = None;
        if r.c(Counter::SyncookiesValid) && p.payload_len() > 0 {
            let payload = &r.input[p.payload..p.ip_end];
            let (outcome, pair, backend) =
                self.predict_binding(maps, p, payload)
                    .map_err(|e| Finding {
                        check: "harness",
                        detail: format!("{e:#}"),
                    })?;
            for c in COOKIE_OUTCOMES {
                let want = outcome == Some(c);
                ensure_that!(
                    r.c(c) == want,
                    "cookie.outcome",
                    "scan outcome: host scanner says {:?}, counters {:?}",
                    outcome.map(|c| c.label()),
                    delta_map(r.delta)
                );
            }
            let reported =
                d(r.delta, Counter::CookiePairsReported) + d(r.delta, Counter::CookiePairsLost);
            ensure_that!(
                reported == pair as u64,
                "cookie.pair",
                "token pair reports {reported}, expected {}",
                pair as u64
            );
            match backend {
                Some(b) => expected_binding = Some(b),
                None => ensure_that!(
                    r.c(Counter::DropNoBackend),
                    "cookie.no_backend",
                    "no backend can take the binding, but no drop_no_backend"
                ),
            }
        }
        if r.c(Counter::DropNoBackend) {
            let none = match svc {
                Some(SVC_COOKIE) => expected_binding.is_none(),
                Some(s) => self.ring_pick(maps, s, &p.key()).ok().flatten().is_none(),
                None => false,
            };
            ensure_that!(
                none,
                "drop.no_backend",
                "drop_no_backend although the host finds a backend"
            );
        }
        if creates || r.c(Counter::BindingsStarted) {
            let s = svc.ok_or_else(|| Finding {
                check: "flow.created",
                detail: "a flow was created for a packet not addressed to a service".into(),
            })?;
            let Some(f) = created else {
                ensure_that!(
                    r.c(Counter::DropFlowTableFull),
                    "flow.created",
                    "counted a new flow, but the flow table has no entry for the packet"
                );
                return Ok(());
            };
            ensure_that!(
                f.direction == direction::TO_BACKEND,
                "flow.created",
                "the new entry is not a client -> backend entry"
            );
            let backend = SocketAddrV4::new(
                Ipv4Addr::from(f.new_dst.to_ne_bytes()),
                u16::from_be(f.new_dport),
            );
            let want = if self.layout.svcs[s].cookie {
                expected_binding
            } else {
                self.ring_pick(maps, s, &p.key()).map_err(|e| Finding {
                    check: "harness",
                    detail: format!("{e:#}"),
                })?
            };
            let want = want.map(|b| self.layout.bes[b].addr);
            ensure_that!(
                want == Some(backend),
                "flow.backend",
                "new flow bound to {backend}, the host expects {want:?}"
            );
            let mut macs = ([0u8; 6], [0u8; 6]);
            macs.0.copy_from_slice(&r.input[6..12]);
            macs.1.copy_from_slice(&r.input[0..6]);
            self.shadow.bind(
                s,
                key,
                backend,
                Created {
                    ingress: r.ingress,
                    client_mac: macs.0,
                    our_mac: macs.1,
                },
            );
            if r.c(Counter::BindingsStarted) {
                let segment = r.input[p.l4..p.ip_end].to_vec();
                let cookie = p.ack.wrapping_sub(1);
                self.shadow.spliced.remove(&key);
                self.shadow.pending.insert(
                    key,
                    Pending {
                        backend,
                        isn: p.seq.wrapping_sub(1),
                        cookie,
                        mss: decode_mss(cookie & 7).unwrap_or(0),
                        segment,
                        residual: l4_residual(r.input, p),
                    },
                );
                self.shadow.tick += 1;
                remember(&mut self.shadow.recent_pending, p.src, self.shadow.tick);
            }
        }
        if r.c(Counter::BindingsTimedOut) {
            self.shadow.pending.remove(&key);
        }

        if r.verdict == XDP_TX || r.verdict == XDP_REDIRECT {
            self.check_output(r, p, svc, from_be)?;
        }
        self.check_liveness(r, p, known_flow)
    }

    fn count(&mut self, path: &'static str) {
        *self.paths.entry(path).or_default() += 1;
        self.last_path = Some(path);
    }

    /// Valid traffic whose outcome is certain must get it: a checker that accepts every
    /// output it sees would not notice a data plane that serves nothing.
    fn check_liveness(&mut self, r: &Run, p: &Pkt, known_flow: bool) -> Result<(), Finding> {
        use Template::*;
        let Some(t) = r.clean else { return Ok(()) };
        if matches!(
            t,
            NatSyn | NatAck | NatData | NatFin | NatRst | UdpRequest | DownServiceSyn | CookieSyn
        ) || (t == CookieHandshakeAck && !known_flow)
        {
            *self.liveness.entry(t.name()).or_default() += 1;
        }
        match t {
            NatSyn | NatAck | NatData | NatFin | NatRst | UdpRequest => ensure_that!(
                self.last_path == Some(PATH_NAT_FORWARD),
                "liveness.nat",
                "an unmutated {} to a NAT service got {} (output {:?}), not forwarded to a backend",
                t.name(),
                verdict_name(r.verdict),
                self.last_path
            ),
            DownServiceSyn => ensure_that!(
                r.verdict == XDP_DROP && r.c(Counter::DropNoBackend),
                "liveness.no_backend",
                "a SYN to the service without backends got {}",
                verdict_name(r.verdict)
            ),
            CookieSyn => ensure_that!(
                self.last_path == Some(PATH_SYNACK),
                "liveness.synack",
                "an unmutated SYN to the cookie service got {}, not a syncookie SYN-ACK",
                verdict_name(r.verdict)
            ),
            CookieHandshakeAck if !known_flow => {
                let only_valid = Counter::ALL.iter().all(|c| {
                    let n = d(r.delta, *c);
                    match c {
                        Counter::RxPackets | Counter::SyncookiesValid => n == 1,
                        _ => n == 0,
                    }
                });
                ensure_that!(
                    r.verdict == XDP_DROP && only_valid,
                    "liveness.handshake_ack",
                    "a handshake ACK with a valid syncookie (cookie {:#010x}) and no flow got {}",
                    p.ack.wrapping_sub(1),
                    verdict_name(r.verdict)
                );
            }
            _ => {}
        }
        Ok(())
    }

    /// The output of a TX/REDIRECT run.
    fn check_output(
        &mut self,
        r: &Run,
        p: &Pkt,
        svc: Option<usize>,
        from_be: Option<usize>,
    ) -> Result<(), Finding> {
        let o = parse(r.out).map_err(|e| Finding {
            check: "output.unparseable",
            detail: format!("the output is {}", e.name()),
        })?;
        ensure_that!(
            o.frag & 0x3fff == 0,
            "output.fragment",
            "the output is a fragment (flags/offset {:#06x})",
            o.frag
        );
        ensure_that!(o.ttl >= 1, "output.ttl", "output TTL 0");
        ensure_that!(
            o.l3 == p.l3 && r.out[12..o.l3] == r.input[12..p.l3],
            "output.link",
            "the link header (ethertype, VLAN tag) changed"
        );
        if r.c(Counter::SyncookiesSent) {
            return self.check_synack(r, p, &o, svc);
        }
        if r.c(Counter::BindingsTimedOut) {
            ensure_that!(
                svc == Some(SVC_COOKIE),
                "output.reset_client",
                "bind timeout RST for a packet not to the cookie service"
            );
            self.count(PATH_RESET_CLIENT);
            return check_rst(r, p, &o);
        }
        if r.c(Counter::BindStaleAcks) {
            let key = (p.dst, self.layout.svcs[SVC_COOKIE].addr, PROTO_TCP);
            let binding = self.shadow.pending.get(&key).map(|b| b.backend);
            ensure_that!(
                binding == Some(p.src),
                "output.reset_backend",
                "stale-ACK RST to {} whose binding the fuzzer knows as {binding:?}",
                p.src
            );
            self.count(PATH_RESET_BACKEND);
            return check_rst(r, p, &o);
        }
        if r.c(Counter::BindingsCompleted) {
            return self.check_segment(r, p, &o);
        }
        if r.c(Counter::BindingsStarted) || r.c(Counter::BindRetransmits) {
            return self.check_backend_syn(r, p, &o, svc);
        }
        if o.src == p.src && o.dst != p.dst {
            self.check_nat_forward(r, p, &o, svc)
        } else {
            self.check_nat_reply(r, p, &o, from_be)
        }
    }

    fn check_synack(
        &mut self,
        r: &Run,
        p: &Pkt,
        o: &Pkt,
        svc: Option<usize>,
    ) -> Result<(), Finding> {
        ensure_that!(
            svc == Some(SVC_COOKIE) && p.flags & (F_SYN | F_ACK | F_RST | F_FIN) == F_SYN,
            "output.synack",
            "syncookie SYN-ACK for a packet that is not a SYN to the cookie service"
        );
        let start = r.input.as_ptr() as usize;
        let pk = parse_slice(r.input).map_err(|e| Finding {
            check: "output.synack",
            detail: format!("the data plane's parser refuses the SYN on the host: {e:?}"),
        })?;
        let index = encode_mss(client_mss(start, start + r.input.len(), &pk));
        let k = p.key();
        let candidates: Vec<u32> = r
            .windows
            .iter()
            .map(|t| {
                make_cookie(
                    &TEST_SECRET,
                    k.src,
                    k.dst,
                    k.sport,
                    k.dport,
                    p.seq,
                    *t,
                    index,
                )
            })
            .collect();
        let offered = match decode_mss(index) {
            Some(m) if m < 1460 => m,
            _ => 1460,
        };
        check_built(r, o, p.dst, p.src, true)?;
        ensure_that!(
            o.flags == F_SYN | F_ACK && o.ack == p.seq.wrapping_add(1) && o.window == 65535,
            "output.synack",
            "SYN-ACK flags {:#04x} ack {:#x} window {} (SYN seq {:#x})",
            o.flags,
            o.ack,
            o.window,
            p.seq
        );
        ensure_that!(
            candidates.contains(&o.seq),
            "output.synack",
            "SYN-ACK ISN {:#010x} is not the syncookie {candidates:#010x?}",
            o.seq
        );
        ensure_that!(
            r.out[o.l4 + 20..o.payload] == mss_option(offered)[..] && o.payload == o.ip_end,
            "output.synack",
            "SYN-ACK options {} (expected MSS {offered})",
            hex(&r.out[o.l4 + 20..o.payload])
        );
        self.count(PATH_SYNACK);
        Ok(())
    }

    fn check_backend_syn(
        &mut self,
        r: &Run,
        p: &Pkt,
        o: &Pkt,
        svc: Option<usize>,
    ) -> Result<(), Finding> {
        ensure_that!(
            svc == Some(SVC_COOKIE),
            "output.backend_syn",
            "SYN to a backend for a packet not to the cookie service"
        );
        let key = (p.src, p.dst, p.proto);
        let Some(b) = self.shadow.pending.get(&key).cloned() else {
            return Err(Finding {
                check: "output.backend_syn",
                detail: "SYN to a backend for a connection with no binding in progress".into(),
            });
        };
        let be = self.layout.be_by_addr(o.dst, PROTO_TCP);
        ensure_that!(
            o.dst == b.backend && be.is_some_and(|i| self.layout.bes[i].svc == SVC_COOKIE),
            "output.backend_syn",
            "SYN sent to {}, the binding is to {}",
            o.dst,
            b.backend
        );
        check_built(r, o, p.src, b.backend, false)?;
        ensure_that!(
            r.out[0..6] == backend_mac(*b.backend.ip()) && r.out[6..12] == BACKEND_IF_MAC,
            "output.backend_syn",
            "SYN to {} with MACs {} -> {}",
            b.backend,
            hex(&r.out[6..12]),
            hex(&r.out[0..6])
        );
        ensure_that!(
            o.flags == F_SYN
                && o.seq == b.isn
                && o.seq == p.seq.wrapping_sub(1)
                && o.ack == 0
                && o.window == p.window,
            "output.backend_syn",
            "SYN flags {:#04x} seq {:#x} ack {:#x} window {} (client ISN {:#x}, window {})",
            o.flags,
            o.seq,
            o.ack,
            o.window,
            b.isn,
            p.window
        );
        ensure_that!(
            r.out[o.l4 + 20..o.payload] == mss_option(b.mss)[..] && o.payload == o.ip_end,
            "output.backend_syn",
            "SYN options {} (expected MSS {})",
            hex(&r.out[o.l4 + 20..o.payload]),
            b.mss
        );
        let want = if r.ingress == r.backend_ifindex {
            XDP_TX
        } else {
            XDP_REDIRECT
        };
        ensure_that!(
            r.verdict == want,
            "output.verdict",
            "SYN to the backend with {}, expected {}",
            verdict_name(r.verdict),
            verdict_name(want)
        );
        self.count(if r.c(Counter::BindingsStarted) {
            PATH_BACKEND_SYN
        } else {
            PATH_BACKEND_SYN_AGAIN
        });
        Ok(())
    }

    fn check_segment(&mut self, r: &Run, p: &Pkt, o: &Pkt) -> Result<(), Finding> {
        let vip = self.layout.svcs[SVC_COOKIE].addr;
        let key = (p.dst, vip, PROTO_TCP);
        let Some(b) = self.shadow.pending.remove(&key) else {
            return Err(Finding {
                check: "output.segment",
                detail: "binding completed for a connection with no binding in progress".into(),
            });
        };
        ensure_that!(
            p.src == b.backend && p.flags & (F_SYN | F_ACK | F_RST) == F_SYN | F_ACK,
            "output.segment",
            "binding completed by {} flags {:#04x}, the binding is to {}",
            p.src,
            p.flags,
            b.backend
        );
        ensure_that!(
            o.src == p.dst && o.dst == p.src,
            "output.segment",
            "kept segment from {} to {}",
            o.src,
            o.dst
        );
        ensure_that!(
            r.out[0..6] == r.input[6..12] && r.out[6..12] == r.input[0..6],
            "output.segment",
            "kept segment MACs not swapped"
        );
        let ip = &r.out[o.l3..o.l4];
        ensure_that!(
            ip[0] == 0x45
                && ip[1] == 0
                && ip[4..6] == [0, 0]
                && ip[6..8] == [0x40, 0]
                && ip[8] == 64,
            "output.segment",
            "kept segment IPv4 header {}",
            hex(ip)
        );
        ensure_that!(
            same_residual(ip_residual(r.out, o), 0xffff),
            "output.checksum",
            "kept segment IPv4 checksum invalid"
        );
        let seg = &r.out[o.l4..];
        ensure_that!(
            r.out.len() == o.ip_end && seg.len() == b.segment.len(),
            "output.segment",
            "kept segment of {} bytes (frame {}, datagram end {}), the client sent {}",
            seg.len(),
            r.out.len(),
            o.ip_end,
            b.segment.len()
        );
        let diff = same_except(seg, &b.segment, &[2..4, 8..12, 16..18]);
        ensure_that!(
            diff.is_none(),
            "output.segment",
            "kept segment differs from the client's at TCP byte {diff:?}"
        );
        ensure_that!(
            o.dst.port() == b.backend.port() && o.ack == p.seq.wrapping_add(1),
            "output.segment",
            "kept segment port {} ack {:#x} (backend ISN {:#x})",
            o.dst.port(),
            o.ack,
            p.seq
        );
        ensure_that!(
            same_residual(l4_residual(r.out, o), b.residual),
            "output.checksum",
            "kept segment TCP checksum residual {:#06x}, the client's was {:#06x}",
            l4_residual(r.out, o),
            b.residual
        );
        ensure_that!(
            r.verdict == XDP_TX,
            "output.verdict",
            "kept segment with {}",
            verdict_name(r.verdict)
        );
        self.shadow.spliced.insert(
            key,
            Spliced {
                backend: b.backend,
                isn: b.isn,
                cookie: b.cookie,
                bisn: p.seq,
            },
        );
        self.shadow.tick += 1;
        remember(&mut self.shadow.recent_spliced, p.dst, self.shadow.tick);
        self.count(PATH_SEGMENT);
        Ok(())
    }

    /// The NAT rewrite rules shared by both directions: TTL - 1, every byte outside the
    /// rewritten fields unchanged, checksum errors preserved.
    fn check_rewrite(
        &mut self,
        r: &Run,
        p: &Pkt,
        o: &Pkt,
        // The sequence or acknowledgement number, for a splice's shift.
        shifted: Option<std::ops::Range<usize>>,
    ) -> Result<(), Finding> {
        ensure_that!(
            p.ttl >= 2 && o.ttl == p.ttl - 1,
            "output.ttl",
            "forwarded with TTL {} -> {}",
            p.ttl,
            o.ttl
        );
        let (l3, l4) = (p.l3, p.l4);
        let csum = if p.tcp() {
            l4 + 16..l4 + 18
        } else {
            l4 + 6..l4 + 8
        };
        let mut ranges = vec![0..12, l3 + 8..l3 + 9, l3 + 10..l3 + 20, l4..l4 + 4, csum];
        ranges.extend(shifted);
        let diff = same_except(r.input, r.out, &ranges);
        ensure_that!(
            diff.is_none(),
            "output.rewrite",
            "a byte outside the rewritten fields changed (byte {diff:?})"
        );
        let (iv, ov) = (ip_residual(r.input, p), ip_residual(r.out, o));
        ensure_that!(
            same_residual(iv, ov),
            "output.checksum",
            "IPv4 checksum residual {iv:#06x} in, {ov:#06x} out"
        );
        if udp_no_checksum(r.input, p) {
            ensure_that!(
                udp_no_checksum(r.out, o),
                "output.checksum",
                "UDP without checksum got one"
            );
        } else {
            let (il, ol) = (l4_residual(r.input, p), l4_residual(r.out, o));
            ensure_that!(
                same_residual(il, ol),
                "output.checksum",
                "L4 checksum residual {il:#06x} in, {ol:#06x} out"
            );
            ensure_that!(
                !udp_no_checksum(r.out, o),
                "output.checksum",
                "UDP checksum became 0 (none)"
            );
        }
        if !same_residual(iv, 0xffff) || !l4_valid(r.input, p) {
            self.forwarded_bad_checksum += 1;
        }
        Ok(())
    }

    fn check_nat_forward(
        &mut self,
        r: &Run,
        p: &Pkt,
        o: &Pkt,
        svc: Option<usize>,
    ) -> Result<(), Finding> {
        let Some(s) = svc else {
            return Err(Finding {
                check: "output.nat_forward",
                detail: format!("rewritten to {} for a packet not to a service", o.dst),
            });
        };
        let be = self.layout.be_by_addr(o.dst, p.proto);
        ensure_that!(
            be.is_some_and(|b| self.layout.bes[b].svc == s),
            "output.nat_forward",
            "forwarded to {}, not a backend of {}",
            o.dst,
            self.layout.svcs[s].name
        );
        let key = (p.src, p.dst, p.proto);
        let bound = self.shadow.bound.get(&key);
        ensure_that!(
            bound.is_some_and(|l| l.contains(&o.dst)),
            "output.nat_forward",
            "forwarded to {}, but the connection was bound to {:?}",
            o.dst,
            bound
        );
        ensure_that!(
            r.out[0..6] == backend_mac(*o.dst.ip()) && r.out[6..12] == BACKEND_IF_MAC,
            "output.nat_forward",
            "forwarded with MACs {} -> {}",
            hex(&r.out[6..12]),
            hex(&r.out[0..6])
        );
        let want = if r.ingress == r.backend_ifindex {
            XDP_TX
        } else {
            XDP_REDIRECT
        };
        ensure_that!(
            r.verdict == want,
            "output.verdict",
            "forwarded to a backend with {}, expected {}",
            verdict_name(r.verdict),
            verdict_name(want)
        );
        if self.layout.svcs[s].cookie {
            let sp = self.shadow.spliced.get(&key).copied();
            let Some(sp) = sp.filter(|sp| sp.backend == o.dst) else {
                return Err(Finding {
                    check: "output.spliced",
                    detail: format!("forwarded to {} without a splice to it ({sp:?})", o.dst),
                });
            };
            let shift = sp.cookie.wrapping_sub(sp.bisn);
            ensure_that!(
                o.ack == p.ack.wrapping_sub(shift),
                "output.spliced",
                "ack {:#x} -> {:#x}, expected the shift by K - B = {shift:#x}",
                p.ack,
                o.ack
            );
            self.check_rewrite(r, p, o, Some(p.l4 + 8..p.l4 + 12))?;
            self.count(PATH_SPLICED_FORWARD);
        } else {
            self.check_rewrite(r, p, o, None)?;
            self.count(PATH_NAT_FORWARD);
        }
        Ok(())
    }

    fn check_nat_reply(
        &mut self,
        r: &Run,
        p: &Pkt,
        o: &Pkt,
        from_be: Option<usize>,
    ) -> Result<(), Finding> {
        let Some(b) = from_be else {
            return Err(Finding {
                check: "output.nat_reply",
                detail: format!(
                    "rewritten {} -> {} for a packet not from a backend",
                    o.src, o.dst
                ),
            });
        };
        let s = self.layout.bes[b].svc;
        let vip = self.layout.svcs[s].addr;
        ensure_that!(
            o.src == vip && o.dst == p.dst,
            "output.nat_reply",
            "reply of {} rewritten {} -> {}, expected {} -> {}",
            p.src,
            o.src,
            o.dst,
            vip,
            p.dst
        );
        let key = (p.dst, vip, p.proto);
        let bound = self.shadow.bound.get(&key);
        ensure_that!(
            bound.is_some_and(|l| l.contains(&p.src)),
            "output.nat_reply",
            "reply of {} to {} forwarded, but the connection was bound to {:?}",
            p.src,
            p.dst,
            bound
        );
        if let Some(c) = self.shadow.created.get(&key).copied() {
            let want = if r.ingress == c.ingress {
                XDP_TX
            } else {
                XDP_REDIRECT
            };
            ensure_that!(
                r.verdict == want,
                "output.verdict",
                "reply with {}, expected {} (received on {}, the client's packet on {})",
                verdict_name(r.verdict),
                verdict_name(want),
                r.ingress,
                c.ingress
            );
            ensure_that!(
                r.out[0..6] == c.client_mac && r.out[6..12] == c.our_mac,
                "output.nat_reply",
                "reply MACs {} -> {}, the client's packet came {} -> {}",
                hex(&r.out[6..12]),
                hex(&r.out[0..6]),
                hex(&c.client_mac),
                hex(&c.our_mac)
            );
        }
        if self.layout.svcs[s].cookie {
            if r.c(Counter::BindingsRefused) {
                let Some(pb) = self.shadow.pending.remove(&key) else {
                    return Err(Finding {
                        check: "output.refused",
                        detail: "bind refusal relayed for no binding in progress".into(),
                    });
                };
                ensure_that!(
                    pb.backend == p.src
                        && p.flags & (F_RST | F_ACK | F_SYN) == F_RST | F_ACK
                        && p.ack == pb.isn.wrapping_add(1)
                        && o.seq == pb.cookie.wrapping_add(1),
                    "output.refused",
                    "refusal RST seq {:#x} (cookie {:#x}), backend's ack {:#x} (ISN {:#x})",
                    o.seq,
                    pb.cookie,
                    p.ack,
                    pb.isn
                );
                self.check_rewrite(r, p, o, Some(p.l4 + 4..p.l4 + 8))?;
                self.count(PATH_REFUSED);
            } else {
                let sp = self.shadow.spliced.get(&key).copied();
                let Some(sp) = sp.filter(|sp| sp.backend == p.src) else {
                    return Err(Finding {
                        check: "output.spliced",
                        detail: format!("reply of {} forwarded without a splice ({sp:?})", p.src),
                    });
                };
                let shift = sp.cookie.wrapping_sub(sp.bisn);
                ensure_that!(
                    o.seq == p.seq.wrapping_add(shift),
                    "output.spliced",
                    "seq {:#x} -> {:#x}, expected the shift by K - B = {shift:#x}",
                    p.seq,
                    o.seq
                );
                self.check_rewrite(r, p, o, Some(p.l4 + 4..p.l4 + 8))?;
                self.count(PATH_SPLICED_REPLY);
            }
        } else {
            self.check_rewrite(r, p, o, None)?;
            self.count(PATH_NAT_REPLY);
        }
        Ok(())
    }
}

/// A frame the data plane built: fresh IPv4 header (IHL 5, TOS 0, id 0, DF, TTL 64),
/// valid checksums, no padding, from `src` to `dst`, MACs swapped when it goes back.
fn check_built(
    r: &Run,
    o: &Pkt,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    back: bool,
) -> Result<(), Finding> {
    ensure_that!(
        o.src == src && o.dst == dst,
        "output.built",
        "built frame {} -> {}, expected {} -> {}",
        o.src,
        o.dst,
        src,
        dst
    );
    ensure_that!(
        o.l4 == o.l3 + 20 && o.tos == 0 && o.id == 0 && o.frag == 0x4000 && o.ttl == 64,
        "output.built",
        "built IPv4 header {}",
        hex(&r.out[o.l3..o.l4])
    );
    ensure_that!(
        r.out.len() == o.ip_end,
        "output.built",
        "built frame of {} bytes for a datagram ending at {}",
        r.out.len(),
        o.ip_end
    );
    ensure_that!(
        same_residual(ip_residual(r.out, o), 0xffff) && l4_valid(r.out, o),
        "output.checksum",
        "built frame with a bad checksum (IPv4 residual {:#06x}, TCP {:#06x})",
        ip_residual(r.out, o),
        l4_residual(r.out, o)
    );
    if back {
        ensure_that!(
            r.out[0..6] == r.input[6..12] && r.out[6..12] == r.input[0..6],
            "output.built",
            "answer MACs not swapped"
        );
    }
    Ok(())
}

/// A RST built per RFC 9293 3.10.7.1 for the segment `p`, back to its sender.
fn check_rst(r: &Run, p: &Pkt, o: &Pkt) -> Result<(), Finding> {
    check_built(r, o, p.dst, p.src, true)?;
    let (seq, ack, fl) = if p.flags & F_ACK != 0 {
        (p.ack, 0, F_RST)
    } else {
        let len =
            p.payload_len() as u32 + (p.flags & F_SYN != 0) as u32 + (p.flags & F_FIN != 0) as u32;
        (0, p.seq.wrapping_add(len), F_RST | F_ACK)
    };
    ensure_that!(
        o.flags == fl && o.seq == seq && o.ack == ack && o.window == 0 && o.payload == o.ip_end,
        "output.rst",
        "RST flags {:#04x} seq {:#x} ack {:#x} window {}, expected flags {fl:#04x} seq {seq:#x} ack {ack:#x}",
        o.flags,
        o.seq,
        o.ack,
        o.window
    );
    ensure_that!(
        r.verdict == XDP_TX,
        "output.verdict",
        "RST with {}",
        verdict_name(r.verdict)
    );
    Ok(())
}

// --- The runner --------------------------------------------------------------------------

/// The fuzzer: state moved onto the bed's worker thread for each chunk of packets.
struct Fuzzer {
    cfg: FuzzConfig,
    maps: Maps,
    oracle: Oracle,
    last: GlobalStats,
    start_counters: GlobalStats,
    sweep: Vec<Case>,
    report: FuzzReport,
    iteration: u64,
}

impl Fuzzer {
    fn new(fb: &FuzzBed, cfg: &FuzzConfig) -> Result<Fuzzer> {
        let maps = Maps::open(&fb.bed)?;
        let last = maps.counters()?;
        let oracle = Oracle {
            layout: fb.layout.clone(),
            shadow: Shadow::default(),
            paths: BTreeMap::new(),
            forwarded_bad_checksum: 0,
            keys: SyncookieKeys {
                current: TEST_SECRET,
                previous: CookieSecret::default(),
            },
            cookie_cfg: CookieConfig::default(),
            deferred: Vec::new(),
            last_path: None,
            liveness: BTreeMap::new(),
        };
        let sweep = truncation_sweep(&oracle.layout, cfg.seed);
        Ok(Fuzzer {
            cfg: cfg.clone(),
            maps,
            oracle,
            last,
            start_counters: last,
            sweep,
            report: FuzzReport {
                seed: cfg.seed,
                ..Default::default()
            },
            iteration: 0,
        })
    }

    fn next_case(&mut self) -> Case {
        let i = self.iteration as usize;
        if i < self.sweep.len() {
            return self.sweep[i].clone();
        }
        let mut rng = Rng::for_iteration(self.cfg.seed, self.iteration);
        let t = Template::pick(&mut rng);
        let gen = Generator {
            layout: &self.oracle.layout,
            shadow: &self.oracle.shadow,
        };
        let clean = rng.percent(35);
        gen.case(&mut rng, t, clean)
    }

    fn record(&mut self, f: Failure) {
        *self.report.failure_counts.entry(f.check).or_default() += 1;
        if let Some(k) = f.known_bug() {
            *self.report.known_bug_hits.entry(k.name).or_default() += 1;
            if self.report.failures.iter().any(|x| x.check == f.check) {
                return;
            }
        }
        if self.report.failures.len() < self.cfg.max_failures {
            if self.cfg.progress {
                eprintln!("finding:\n{f}");
            }
            self.report.failures.push(f);
        }
    }

    fn failed(&self) -> bool {
        self.report.new_failures() >= self.cfg.max_failures as u64
    }

    /// Runs `n` packets on the worker thread.
    fn run_chunk(&mut self, p: &Programs, n: u64) {
        let mut out = Vec::new();
        for _ in 0..n {
            if self.failed() {
                return;
            }
            let case = self.next_case();
            let iteration = self.iteration;
            self.iteration += 1;
            self.report.packets += 1;
            *self
                .report
                .templates
                .entry(case.template.name())
                .or_default() += 1;
            let ifindex = p.ifindex(case.ingress);
            let ingress = ifindex.unwrap_or(1);
            let t0 = cookie_window();
            // Room for the frame and what the program may grow it by (the kernel fails the
            // call with ENOSPC, after running the program, if the output does not fit).
            out.resize(case.frame.len() + 4096, 0);
            let res = test_run(&p.balancer, &case.frame, ifindex, 1, &mut out);
            let t1 = cookie_window();
            let seed = self.cfg.seed;
            let failure = |check: &'static str,
                           detail: String,
                           verdict: u32,
                           output: &[u8],
                           delta: &Delta| Failure {
                check,
                detail,
                seed,
                iteration,
                template: case.template.name(),
                mutations: case.mutations.clone(),
                ingress: case.ingress,
                verdict,
                input: case.frame.clone(),
                output: output.to_vec(),
                counters: delta_map(delta),
            };
            let r = match res {
                Ok(r) => r,
                Err(e) => {
                    if case.frame.len() < 14 {
                        self.report.refused += 1;
                    } else {
                        let f = failure(
                            "kernel.refused",
                            format!("{e:#}"),
                            u32::MAX,
                            &[],
                            &[0; Counter::COUNT],
                        );
                        self.record(f);
                        // The program may have run: start over from the maps' state.
                        self.resync();
                    }
                    continue;
                }
            };
            if case.frame.len() < 14 {
                let f = failure(
                    "kernel.accepted_short",
                    "the kernel ran the program on a frame shorter than an Ethernet header".into(),
                    r.return_value,
                    &[],
                    &[0; Counter::COUNT],
                );
                self.record(f);
            }
            self.report.runs += 1;
            let output = &out[..(r.data_size_out as usize).min(out.len())];
            *self
                .report
                .verdicts
                .entry(verdict_name(r.return_value))
                .or_default() += 1;
            let now = match self.maps.counters() {
                Ok(c) => c,
                Err(e) => {
                    let f = failure(
                        "harness",
                        format!("{e:#}"),
                        r.return_value,
                        output,
                        &[0; Counter::COUNT],
                    );
                    self.record(f);
                    return;
                }
            };
            let mut delta = [0u64; Counter::COUNT];
            for (i, v) in delta.iter_mut().enumerate() {
                *v = now[i].wrapping_sub(self.last[i]);
            }
            self.last = now;
            // The program sees the linear part of the test run's buffer only.
            let inp = parse(&case.frame[..case.frame.len().min(LINEAR_MAX)]);
            *self
                .report
                .classes
                .entry(match &inp {
                    Ok(_) => "parsed TCP/UDP",
                    Err(e) => e.name(),
                })
                .or_default() += 1;
            let created = match &inp {
                Ok(pk)
                    if d(&delta, Counter::NewFlows) + d(&delta, Counter::FlowMisses) > 0
                        || d(&delta, Counter::BindingsStarted) > 0 =>
                {
                    self.maps.flows.get(&pk.key(), 0).ok()
                }
                _ => None,
            };
            let run = Run {
                input: &case.frame,
                inp,
                verdict: r.return_value,
                out: output,
                delta: &delta,
                ingress,
                backend_ifindex: p.backend_ifindex,
                windows: [t0, t1],
                clean: case.mutations.is_empty().then_some(case.template),
            };
            let result = self.oracle.check(&self.maps, &run, created);
            let stopped = result.is_err();
            let mut findings = std::mem::take(&mut self.oracle.deferred);
            findings.extend(result.err());
            for fd in findings {
                let f = failure(fd.check, fd.detail, r.return_value, output, &delta);
                self.record(f);
            }
            if stopped {
                // The checks stopped before the shadow learnt what this packet did.
                self.resync();
            }
        }
    }

    /// After a packet whose effects the shadow may have missed: empties the flow table
    /// and the shadow, and re-reads the counters.
    fn resync(&mut self) {
        self.report.resyncs += 1;
        let flushed = self.maps.flush();
        self.oracle.shadow = Shadow::default();
        let counters = self.maps.counters();
        match (flushed, counters) {
            (Ok(_), Ok(c)) => self.last = c,
            (Err(e), _) | (_, Err(e)) => {
                self.record(Failure {
                    check: "harness",
                    detail: format!("resynchronising: {e:#}"),
                    seed: self.cfg.seed,
                    iteration: self.iteration,
                    template: "(resync)",
                    mutations: Vec::new(),
                    ingress: Ingress::Loopback,
                    verdict: u32::MAX,
                    input: Vec::new(),
                    output: Vec::new(),
                    counters: BTreeMap::new(),
                });
            }
        }
    }

    /// Empties the flow table and the kept segments, and the shadow with them.
    fn flush(&mut self) -> Result<()> {
        self.maps.flush()?;
        self.oracle.shadow = Shadow::default();
        self.report.flushes += 1;
        Ok(())
    }

    /// End-of-run checks on the accumulated counters.
    fn finish(mut self, elapsed: Duration) -> Result<FuzzReport> {
        let now = self.maps.counters()?;
        let mut total = [0u64; Counter::COUNT];
        for (i, v) in total.iter_mut().enumerate() {
            *v = now[i] - self.start_counters[i];
        }
        self.report.counters = delta_map(&total);
        self.report.paths = std::mem::take(&mut self.oracle.paths);
        self.report.liveness = std::mem::take(&mut self.oracle.liveness);
        self.report.forwarded_bad_checksum = self.oracle.forwarded_bad_checksum;
        self.report.elapsed = elapsed;
        let g = |c: Counter| total[c as usize];
        let mut checks = Vec::new();
        let fail = |check: &'static str, detail: String| Failure {
            check,
            detail,
            seed: self.cfg.seed,
            iteration: self.iteration,
            template: "(end of run)",
            mutations: Vec::new(),
            ingress: Ingress::Loopback,
            verdict: u32::MAX,
            input: Vec::new(),
            output: Vec::new(),
            counters: delta_map(&total),
        };
        let mut failures = Vec::new();
        if g(Counter::RxPackets) == self.report.runs {
            checks.push(format!("rx_packets = runs = {}", self.report.runs));
        } else {
            failures.push(fail(
                "end.rx_packets",
                format!(
                    "rx_packets {} for {} runs",
                    g(Counter::RxPackets),
                    self.report.runs
                ),
            ));
        }
        // Per-backend counters against the global ones.
        let mut sum = BackendStats::default();
        let layout = self.oracle.layout.clone();
        for b in &layout.bes {
            let s = self.maps.backend_counters(b.slot)?;
            if b.state != backend_state::UP
                && (s.new_flows != 0 || s.cookie_hits != 0 || s.cookie_misses != 0)
            {
                failures.push(fail(
                    "end.backend_state",
                    format!(
                        "backend {} ({}) got new flows {} / cookie hits {} / misses {}",
                        b.addr,
                        balancer_user::control::state_name(b.state),
                        s.new_flows,
                        s.cookie_hits,
                        s.cookie_misses
                    ),
                ));
            }
            let replacement = layout
                .failover
                .values()
                .any(|&r| layout.bes[r].addr == b.addr);
            if s.failover_redirects != 0 && !replacement {
                failures.push(fail(
                    "end.backend_failover",
                    format!(
                        "backend {} got {} failover redirects",
                        b.addr, s.failover_redirects
                    ),
                ));
            }
            sum.add(&s);
        }
        let sent = g(Counter::TxSameInterface) + g(Counter::TxRedirect);
        let packets = sum.packets_to + sum.packets_from;
        if packets == sent {
            checks.push(format!(
                "per-backend packets to + from = tx_same_interface + tx_redirect = {sent}"
            ));
        } else {
            let stale = g(Counter::BindStaleAcks);
            let why = if sent.checked_sub(packets) == Some(stale) {
                " (all of it bind_stale_acks)"
            } else {
                ""
            };
            failures.push(fail(
                "end.backend_packets",
                format!(
                    "per-backend packets to + from {packets}, tx_same_interface + tx_redirect {sent}, differs by {}{why}",
                    sent.abs_diff(packets)
                ),
            ));
        }
        let bytes = sum.bytes_to + sum.bytes_from;
        if bytes == g(Counter::TxBytes) {
            checks.push(format!("per-backend bytes to + from = tx_bytes = {bytes}"));
        } else {
            failures.push(fail(
                "end.backend_bytes",
                format!(
                    "per-backend bytes {bytes}, tx_bytes {}",
                    g(Counter::TxBytes)
                ),
            ));
        }
        if sum.new_flows == g(Counter::NewFlows) {
            checks.push(format!(
                "per-backend new flows = new_flows = {}",
                sum.new_flows
            ));
        } else {
            failures.push(fail(
                "end.backend_new_flows",
                format!(
                    "per-backend new flows {}, new_flows {}",
                    sum.new_flows,
                    g(Counter::NewFlows)
                ),
            ));
        }
        let choices = sum.cookie_hits + sum.cookie_misses + sum.failover_redirects;
        if choices >= g(Counter::BindingsStarted) {
            checks.push(format!(
                "cookie hits + misses + failover redirects ({choices}) >= bindings_started ({})",
                g(Counter::BindingsStarted)
            ));
        } else {
            failures.push(fail(
                "end.cookie_choices",
                format!(
                    "{choices} backend choices for {} bindings",
                    g(Counter::BindingsStarted)
                ),
            ));
        }
        checks.push("no new flow or cookie choice for a draining or down backend".into());
        for f in failures {
            self.record(f);
        }
        self.report.end_checks = checks;
        Ok(self.report)
    }
}

/// Every template (and variants with a VLAN tag, IPv4 and TCP options) cut at every
/// offset.
fn truncation_sweep(layout: &Layout, seed: u64) -> Vec<Case> {
    let shadow = Shadow::default();
    let gen = Generator {
        layout,
        shadow: &shadow,
    };
    let mut rng = Rng::new(seed ^ 0x5eed_5eed);
    let mut bases: Vec<(Template, Vec<u8>, Ingress)> = Vec::new();
    for (t, _) in TEMPLATES {
        let c = gen.case(&mut rng, t, true);
        bases.push((t, c.frame, c.ingress));
    }
    // Variants: a tagged data segment with IPv4 and TCP options, a tagged datagram, a
    // first segment with IPv4 options.
    let nat = layout.svcs[SVC_TCP].addr;
    let tagged = Frame::tcp(
        SocketAddrV4::new(CLIENT, 40000),
        nat,
        flags(false, true, false, false, true),
    )
    .vlan(42)
    .ip_options(&[7, 7, 4, 0, 0, 0, 0])
    .tcp_options(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])
    .payload(b"GET / HTTP/1.1\r\n\r\n");
    bases.push((Template::NatData, tagged.build(), Ingress::Client));
    let udp = Frame::udp(
        SocketAddrV4::new(CLIENT, 40001),
        layout.svcs[SVC_UDP].addr,
        b"query",
    )
    .vlan(7);
    bases.push((Template::UdpRequest, udp.build(), Ingress::Client));
    let first = gen
        .cookie_segment(
            &mut rng,
            SocketAddrV4::new(CLIENT, 40002),
            flags(false, true, false, false, true),
            false,
        )
        .ip_options(&[148, 4, 0, 0])
        .payload(b"GET / HTTP/1.1\r\nCookie: JSESSIONID=s!app1!app2\r\n\r\n");
    bases.push((Template::CookieFirstSegment, first.build(), Ingress::Client));
    let mut out = Vec::new();
    for (t, frame, ingress) in bases {
        for len in 0..frame.len() {
            out.push(Case {
                template: t,
                frame: frame[..len].to_vec(),
                ingress,
                mutations: vec![format!("sweep-trunc@{len}")],
            });
        }
    }
    out
}

/// Runs the fuzzer as configured (needs root). The report lists what was found; the run
/// itself fails only when the bed cannot be set up or read.
pub fn run(cfg: &FuzzConfig) -> Result<FuzzReport> {
    let fb = FuzzBed::new(cfg.flow_capacity).context("setting up the fuzz bed")?;
    let mut fuzzer = Fuzzer::new(&fb, cfg)?;
    if cfg.progress {
        eprintln!(
            "fuzz seed {}: {} packets ({} in the truncation sweep), flush every {}",
            cfg.seed,
            cfg.packets,
            fuzzer.sweep.len().min(cfg.packets as usize),
            cfg.epoch
        );
    }
    let start = Instant::now();
    let mut done = 0u64;
    let mut aged = !cfg.age_bindings;
    while done < cfg.packets && !fuzzer.failed() {
        let n = cfg.epoch.max(1).min(cfg.packets - done);
        fuzzer = fb.bed.with_programs(move |p| {
            fuzzer.run_chunk(p, n);
            fuzzer
        })?;
        done += n;
        if !aged && done < cfg.packets {
            // The bindings in progress outlive the bind timeout: their retransmissions
            // get the client a RST (`bindings_timed_out`).
            aged = true;
            std::thread::sleep(AGING_PAUSE);
            fuzzer.report.aging_pause = AGING_PAUSE;
        } else {
            fuzzer.flush()?;
        }
        if cfg.progress {
            let secs = start.elapsed().as_secs_f64();
            eprintln!(
                "  {done} packets, {:.0} packets/s, new findings {}, known bugs hit {}",
                done as f64 / secs.max(1e-9),
                fuzzer.report.new_failures(),
                fuzzer.report.known_bug_hits.values().sum::<u64>()
            );
        }
    }
    fuzzer.finish(start.elapsed())
}

/// Longer than the data plane's bind timeout (3 s).
const AGING_PAUSE: Duration = Duration::from_millis(3200);

/// A seed from the clock and the pid, for runs that want a new one.
pub fn random_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    Rng::new(t ^ ((std::process::id() as u64) << 32)).next_u64()
}

// --- Reproductions of the known bugs ------------------------------------------------------

/// One frame of a reproduction and what the program did with it.
#[derive(Clone, Debug)]
pub struct Step {
    pub what: &'static str,
    pub ingress: Ingress,
    pub input: Vec<u8>,
    pub verdict: u32,
    pub output: Vec<u8>,
    pub counters: BTreeMap<&'static str, u64>,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} (on {:?}): {} {:?}",
            self.what,
            self.ingress,
            verdict_name(self.verdict),
            self.counters
        )?;
        writeln!(f, "  in  {}", hex(&self.input))?;
        write!(f, "  out {}", hex(&self.output))
    }
}

/// A deterministic reproduction of a [`KNOWN_BUGS`] entry on a fresh bed.
#[derive(Clone, Debug)]
pub struct Reproduction {
    pub name: &'static str,
    pub steps: Vec<Step>,
    /// Whether the last step still shows the bug.
    pub reproduced: bool,
    pub explanation: String,
}

impl fmt::Display for Reproduction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: reproduced: {}", self.name, self.reproduced)?;
        for s in &self.steps {
            writeln!(f, "{s}")?;
        }
        write!(f, "{}", self.explanation)
    }
}

fn step(bed: &TestBed, what: &'static str, frame: Vec<u8>, ingress: Ingress) -> Result<Step> {
    let before = bed.counters()?;
    let r = bed.run(&frame, ingress)?;
    let counters = bed.counters()?.delta(&before);
    Ok(Step {
        what,
        ingress,
        input: frame,
        verdict: r.verdict,
        output: r.output,
        counters,
    })
}

/// Runs the minimal frame sequence of the known bug `name`: a first segment with a valid
/// syncookie whose cookie names `app1` (bound: SYN to 198.18.1.30:8080), then the
/// backend's answer that shows the bug.
pub fn reproduce(name: &str) -> Result<Reproduction> {
    let fb = FuzzBed::new(1024)?;
    let bed = &fb.bed;
    let client = SocketAddrV4::new(CLIENT, 40000);
    let vip = fb.layout.svcs[SVC_COOKIE].addr;
    let app1 = fb.layout.bes[fb
        .layout
        .be_by_token(SVC_COOKIE, token_hash(b"app1"))
        .expect("app1")]
    .addr;
    let isn = 0x1000_0000u32;
    let cookie = make_cookie(
        &TEST_SECRET,
        ip_to_map(*client.ip()),
        ip_to_map(*vip.ip()),
        client.port().to_be(),
        vip.port().to_be(),
        isn,
        cookie_window(),
        encode_mss(1460),
    );
    let first = tcp_to(
        client,
        vip,
        flags(false, true, false, false, true),
        isn.wrapping_add(1),
        cookie.wrapping_add(1),
    )
    .payload(b"GET / HTTP/1.1\r\nCookie: JSESSIONID=s!app1\r\n\r\n")
    .build();
    let mut steps = vec![step(
        bed,
        "first segment with a valid syncookie, cookie naming app1",
        first,
        Ingress::Client,
    )?];
    let (reproduced, explanation) = match name {
        "stale-ack-rst-half-counted" => {
            let ack = from_backend(tcp_to(
                app1,
                client,
                flags(false, true, false, false, false),
                0x2000_0000,
                0x3000_0000,
            ))
            .build();
            // The first such ACK goes to the TC program (RST and SYN again there); the
            // RST this bug was about is XDP's answer to the next one.
            steps.push(step(
                bed,
                "the backend answers the SYN with an ACK of another connection (passed to TC)",
                ack.clone(),
                Ingress::Backend,
            )?);
            let s = step(
                bed,
                "it does so again: XDP resets it",
                ack,
                Ingress::Backend,
            )?;
            let bug = s.verdict == XDP_TX
                && s.counters.get("tx_same_interface") == Some(&1)
                && !s.counters.contains_key("tx_bytes");
            steps.push(s);
            (
                bug,
                "the RST back to the backend is counted in tx_same_interface without tx_bytes \
                 or the backend's packets_to"
                    .to_string(),
            )
        }
        "refused-rst-rewritten-then-refused" => {
            let rst = from_backend(tcp_to(
                app1,
                client,
                flags(false, true, false, true, false),
                0,
                isn.wrapping_add(1),
            ))
            .ttl(1)
            .build();
            let s = step(
                bed,
                "the backend refuses the SYN (RST|ACK acking the client's ISN) with TTL 1",
                rst,
                Ingress::Backend,
            )?;
            let forgotten = bed.flow_entry(&tcp_key(client, vip))?.is_none();
            let bug = s.verdict == XDP_PASS && s.output != s.input;
            let explanation = format!(
                "XDP_PASS (pass_ttl_exceeded, documented as untouched) with the sequence number \
                 rewritten from {:#x} to {:#x}; bindings_refused counted and the binding \
                 forgotten: {forgotten}, although the client got nothing",
                be32(&s.input, 14 + 20 + 4),
                be32(&s.output, 14 + 20 + 4)
            );
            steps.push(s);
            (bug, explanation)
        }
        other => return Err(anyhow!("no reproduction for {other:?}")),
    };
    let name = KNOWN_BUGS
        .iter()
        .map(|k| k.name)
        .find(|n| *n == name)
        .unwrap_or("(not in KNOWN_BUGS)");
    Ok(Reproduction {
        name,
        steps,
        reproduced,
        explanation,
    })
}

fn tcp_key(src: SocketAddrV4, dst: SocketAddrV4) -> FlowKey {
    FlowKey::new(
        ip_to_map(*src.ip()),
        ip_to_map(*dst.ip()),
        src.port().to_be(),
        dst.port().to_be(),
        PROTO_TCP,
    )
}

// --- Host-side tests of the fuzzer itself (no root needed) --------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use balancer_ebpf::parse::ParseError;

    fn generated(n: u64, seed: u64) -> Vec<Case> {
        let layout = Layout::offline();
        let shadow = Shadow::default();
        let gen = Generator {
            layout: &layout,
            shadow: &shadow,
        };
        (0..n)
            .map(|i| {
                let mut rng = Rng::for_iteration(seed, i);
                let t = Template::pick(&mut rng);
                gen.case(&mut rng, t, false)
            })
            .collect()
    }

    /// The reference parser agrees with the data plane's own (shared) parser on every
    /// generated frame: class, and offsets of what both parse.
    #[test]
    fn reference_parser_agrees_with_the_data_plane_parser() {
        let mut classes = BTreeMap::new();
        for case in generated(50_000, 7) {
            let f = &case.frame;
            let mine = parse(f);
            let theirs = parse_slice(f);
            match (&mine, &theirs) {
                (Ok(p), Ok(q)) => {
                    assert_eq!(
                        (p.l3, p.l4, p.payload, p.ip_end, p.key(), p.flags, p.ttl),
                        (
                            q.l3_off,
                            q.l4_off,
                            q.payload_off,
                            q.ip_end,
                            q.key,
                            q.tcp_flags,
                            q.ttl
                        ),
                        "frame {}",
                        hex(f)
                    );
                    assert_eq!(p.first_fragment(), q.first_fragment);
                }
                (Err(Refused::NotIpv4), Err(ParseError::NotIpv4))
                | (Err(Refused::NotTcpUdp), Err(ParseError::NotTcpUdp))
                | (Err(Refused::NonFirstFragment), Err(ParseError::NonFirstFragment))
                | (Err(Refused::Malformed), Err(ParseError::Truncated | ParseError::Invalid)) => {}
                _ => panic!("reference {mine:?}, data plane {theirs:?}: {}", hex(f)),
            }
            *classes
                .entry(mine.map(|_| "parsed").unwrap_or_else(|e| e.name()))
                .or_insert(0u64) += 1;
        }
        // The mix reaches every class.
        assert_eq!(classes.len(), 5, "{classes:?}");
    }

    #[test]
    fn generation_is_reproducible() {
        let a: Vec<Vec<u8>> = generated(2000, 3).into_iter().map(|c| c.frame).collect();
        let b: Vec<Vec<u8>> = generated(2000, 3).into_iter().map(|c| c.frame).collect();
        assert_eq!(a, b);
        let c: Vec<Vec<u8>> = generated(2000, 4).into_iter().map(|c| c.frame).collect();
        assert_ne!(a, c);
    }

    fn delta(entries: &[(Counter, u64)]) -> Delta {
        let mut d = [0u64; Counter::COUNT];
        d[Counter::RxPackets as usize] = 1;
        for (c, n) in entries {
            d[*c as usize] = *n;
        }
        d
    }

    #[test]
    fn counter_signatures() {
        let ok = |v, e: &[(Counter, u64)], len| {
            let mut deferred = Vec::new();
            check_signature(v, &delta(e), len, &mut deferred).is_ok() && deferred.is_empty()
        };
        assert!(ok(XDP_PASS, &[(Counter::PassMalformed, 1)], 60));
        assert!(!ok(XDP_PASS, &[], 60));
        assert!(!ok(XDP_PASS, &[(Counter::TxRedirect, 1)], 60));
        assert!(ok(
            XDP_REDIRECT,
            &[(Counter::TxRedirect, 1), (Counter::TxBytes, 60)],
            60
        ));
        assert!(!ok(
            XDP_REDIRECT,
            &[(Counter::TxRedirect, 1), (Counter::TxBytes, 59)],
            60
        ));
        assert!(!ok(
            XDP_TX,
            &[(Counter::TxRedirect, 1), (Counter::TxBytes, 60)],
            60
        ));
        assert!(ok(XDP_TX, &[(Counter::SyncookiesSent, 1)], 58));
        assert!(ok(XDP_DROP, &[(Counter::SyncookiesValid, 1)], 54));
        assert!(!ok(XDP_DROP, &[], 54));
        assert!(!ok(
            XDP_DROP,
            &[(Counter::DropFragment, 1), (Counter::DropNoBackend, 1)],
            54
        ));
        assert!(!ok(0, &[(Counter::PassMalformed, 1)], 54));
        let mut two = delta(&[(Counter::PassMalformed, 1)]);
        two[Counter::RxPackets as usize] = 2;
        assert!(check_signature(XDP_PASS, &two, 54, &mut Vec::new()).is_err());
        // The stale-ACK RST: an answer built by the program, counted by its own counter;
        // counting it as forwarded as well (the fixed bug) no longer passes.
        let mut deferred = Vec::new();
        let d = delta(&[(Counter::BindStaleAcks, 1)]);
        assert!(check_signature(XDP_TX, &d, 54, &mut deferred).is_ok());
        assert!(deferred.is_empty());
        let twice = delta(&[(Counter::BindStaleAcks, 1), (Counter::TxSameInterface, 1)]);
        assert!(check_signature(XDP_TX, &twice, 54, &mut Vec::new()).is_err());
    }

    /// A NAT forward the oracle accepts, and tampered copies of it that it must reject.
    #[test]
    fn the_oracle_catches_bad_rewrites() {
        let layout = Layout::offline();
        let client = SocketAddrV4::new(CLIENT, 40000);
        let svc = layout.svcs[SVC_TCP].addr;
        let backend = layout.bes[0].addr;
        let input = Frame::tcp(client, svc, flags(false, true, false, false, true))
            .payload(b"hello")
            .build();
        let good = Frame::tcp(client, backend, flags(false, true, false, false, true))
            .payload(b"hello")
            .ttl(63)
            .macs(BACKEND_IF_MAC, backend_mac(*backend.ip()))
            .build();
        let mut oracle = Oracle {
            layout: layout.clone(),
            shadow: Shadow::default(),
            paths: BTreeMap::new(),
            forwarded_bad_checksum: 0,
            keys: SyncookieKeys::default(),
            cookie_cfg: CookieConfig::default(),
            deferred: Vec::new(),
            last_path: None,
            liveness: BTreeMap::new(),
        };
        let created = Created {
            ingress: 2,
            client_mac: [0; 6],
            our_mac: [0; 6],
        };
        oracle
            .shadow
            .bind(SVC_TCP, (client, svc, PROTO_TCP), backend, created);
        let d = delta(&[
            (Counter::TxRedirect, 1),
            (Counter::TxBytes, good.len() as u64),
        ]);
        let mut check = |out: &[u8], verdict: u32| {
            let run = Run {
                input: &input,
                inp: parse(&input),
                verdict,
                out,
                delta: &d,
                ingress: 2,
                backend_ifindex: 3,
                windows: [0, 0],
                clean: None,
            };
            let p = parse(&input).unwrap();
            oracle
                .check_output(&run, &p, Some(SVC_TCP), None)
                .map_err(|f| f.check)
        };
        assert_eq!(check(&good, XDP_REDIRECT), Ok(()));
        assert_eq!(check(&good, XDP_TX), Err("output.verdict"));
        let mut payload = good.clone();
        *payload.last_mut().unwrap() ^= 1;
        assert_eq!(check(&payload, XDP_REDIRECT), Err("output.rewrite"));
        let mut csum = good.clone();
        csum[14 + 20 + 16] ^= 0x40;
        assert_eq!(check(&csum, XDP_REDIRECT), Err("output.checksum"));
        let mut ipsum = good.clone();
        ipsum[14 + 10] ^= 0x01;
        assert_eq!(check(&ipsum, XDP_REDIRECT), Err("output.checksum"));
        let other = layout.bes[1].addr;
        let elsewhere = Frame::tcp(client, other, flags(false, true, false, false, true))
            .payload(b"hello")
            .ttl(63)
            .macs(BACKEND_IF_MAC, backend_mac(*other.ip()))
            .build();
        assert_eq!(check(&elsewhere, XDP_REDIRECT), Err("output.nat_forward"));
        let ttl = Frame::tcp(client, backend, flags(false, true, false, false, true))
            .payload(b"hello")
            .ttl(64)
            .macs(BACKEND_IF_MAC, backend_mac(*backend.ip()))
            .build();
        assert_eq!(check(&ttl, XDP_REDIRECT), Err("output.ttl"));
        let mut frag = good.clone();
        frag[14 + 6] |= 0x20;
        fix_ip_checksum(&mut frag);
        assert_eq!(check(&frag, XDP_REDIRECT), Err("output.fragment"));
    }

    #[test]
    fn residuals_survive_incremental_updates() {
        // A valid frame has both residuals 0xffff; fix_* makes any frame valid.
        let mut f = Frame::udp(
            SocketAddrV4::new(CLIENT, 1),
            SocketAddrV4::new(VIP, 53),
            b"abc",
        )
        .build();
        let p = parse(&f).unwrap();
        assert!(same_residual(ip_residual(&f, &p), 0xffff) && l4_valid(&f, &p));
        f[14 + 20 + 8] ^= 0xff;
        assert!(!l4_valid(&f, &parse(&f).unwrap()));
        fix_l4_checksum(&mut f);
        assert!(l4_valid(&f, &parse(&f).unwrap()));
    }
}

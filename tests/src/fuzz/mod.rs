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
//! - `cargo test --release -p balancer-tests --test program fuzz:: -- --nocapture`: the
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
//!   `DROP` <-> exactly one of `drop_*`, `syncookies_invalid`, `rst_no_flow`,
//!   `drop_while_binding`, or
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
//!   not carry one valid in both the window before and after the run. Without a flow,
//!   a cookie service's RSTs count `rst_no_flow` and other segments that are not an ACK
//!   `drop_odd_no_flow`, nothing else.
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
use balancer_common::{
    backend_state,
    cookie::{scan_payload, token_hash, CookieConfig, CookieOutcome},
    csum, direction,
    hash::flow_hash,
    map_names,
    parse::parse_slice,
    syncookie::{
        check_cookie, cookie_data, decode_mss, encode_mss, make_cookie, CookieData, CookieLayout,
        CookieSecret, SyncookieKeys,
    },
    tcp_opts::{self, walk, ClientOptions, OptionBytes, SpliceOptions, SynOffer, Walk},
    tcp_reply::segment_options,
    BackendStats, Counter, Flow, FlowKey, GlobalStats, PendingSegment, PROTO_TCP, PROTO_UDP,
    RING_SIZE,
};
use balancer_user::{model::addr::ip_to_map, CookieSettings, Proto, ServiceAddr};

use crate::{
    packet::{
        arp_frame, fix_ipv4_checksum, icmp_echo_frame, ipv6_syn_frame, l4_checksum,
        linux_syn_options, mss_option, sack_option, syn_options as syn_option_bytes, ts_option,
        Frame, TcpFlags, L4,
    },
    rng::Rng,
    testrun::{
        backend_addr, backend_mac, cookie_window, request_head, syncookie, syncookie_with, tcp_key,
        test_run, verdict_name, Ingress, Programs, TestBed, BACKEND_IF_MAC, CLIENT, TEST_SECRET,
        VIP, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX,
    },
};

/// Returns a [`Finding`] from the enclosing check unless `$cond` holds (defined before the
/// modules so that every check can use it).
macro_rules! ensure_that {
    ($cond:expr, $check:expr, $($fmt:tt)*) => {
        if !$cond {
            return Err(Finding { check: $check, detail: format!($($fmt)*) });
        }
    };
}

mod bed;
mod generator;
mod mutate;
mod oracle;
mod output;
mod parse;
mod report;
mod reproduce;
mod rewrite;
mod runner;
mod shadow;
mod templates;
#[cfg(test)]
mod tests;

pub use bed::*;
use generator::*;
use mutate::*;
use oracle::*;
pub use parse::*;
pub use report::*;
pub use reproduce::*;
use rewrite::*;
pub use runner::*;
use shadow::*;
pub use templates::*;

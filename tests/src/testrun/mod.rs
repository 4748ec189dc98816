//! Harness for running the XDP program on single packets with `BPF_PROG_TEST_RUN`.
//!
//! A [`TestBed`] is one balancer instance loaded and pinned under a unique directory of
//! `/sys/fs/bpf/balancer-test/`, plus a fresh network namespace that gives the program's
//! `bpf_fib_lookup` something to look up, plus a worker thread living in that namespace
//! that performs every `BPF_PROG_TEST_RUN`. Dropping the bed (also when a test panics)
//! stops the worker, removes the pins and deletes the namespace.
//!
//! # How `BPF_PROG_TEST_RUN` behaves for this program (Linux 6.18, verified here)
//!
//! - The kernel resolves everything about the "receiving device" in the network namespace
//!   of the *calling thread*: without a context the packet is seen as received on that
//!   namespace's loopback device (ifindex 1), with an `xdp_md` context on the device named
//!   by `ingress_ifindex`. The program's FIB lookup therefore uses the routes, forwarding
//!   sysctls and neighbour entries of the worker's namespace, never the host's.
//! - `bpf_fib_lookup` needs forwarding enabled on the *ingress* device
//!   (`net.ipv4.conf.<dev>.forwarding`, set for every device, `lo` included, by
//!   `net.ipv4.ip_forward=1` in the namespace), a route to the destination, and a valid
//!   (here: permanent) neighbour entry; without the neighbour the program passes the
//!   packet (`pass_no_neighbour`), without a route it drops it (`drop_no_route`).
//! - Both ways of choosing the ingress work: no context (loopback), and an `xdp_md`
//!   context `{data: 0, data_end: frame length, data_meta: 0, ingress_ifindex: IF,
//!   rx_queue_index: 0, egress_ifindex: 0}` ([`xdp_md`]). Seen here: `ingress_ifindex` 0
//!   means loopback; an index unknown in the calling thread's namespace fails with
//!   `ENODEV` (an index from another namespace would silently name whatever device has it
//!   here); a non-zero `data_meta` or `egress_ifindex`, or `rx_queue_index` beyond the
//!   device's queues, fail with `EINVAL`; a non-zero `data` is taken as that many bytes of
//!   metadata in front of the packet. This kernel has no dummy driver, so the bed's two
//!   interfaces are veth devices (each with its peer in the same namespace):
//!   [`CLIENT_IF`] (clients' side) and [`BACKEND_IF`] (backends' side). The forward
//!   direction thus really changes interface (verdict `XDP_REDIRECT`), and a reply arriving
//!   on the client's interface goes back out of it (`XDP_TX`).
//! - The kernel refuses frames shorter than an Ethernet header (14 bytes) with `EINVAL`
//!   before the program runs.
//! - In this (non-live) mode a redirect is not carried out: the verdict is returned and
//!   the output buffer holds the frame as the program left it.
//! - `duration` is the kernel's `ktime_get_ns()` difference around the program run(s)
//!   divided by `repeat`. Here it comes in steps of about 10 ns. With `repeat = 1` it
//!   also contains a fixed cost of the test loop (timer reads, bottom-half disabling, the
//!   indirect call; about 70 ns here, the same for every program), so compare paths by
//!   their ratio to the `xdp_pass` baseline measured the same way. With `repeat > 1` the
//!   kernel runs the program again on the frame the previous run left (see
//!   `platform.md`), which is only meaningful for paths that do not modify the frame, and
//!   every such call costs tens of milliseconds of wall time (the kernel switches the XDP
//!   dispatcher to the program and back). `balancer-bench` measures accordingly.
//! - An XDP test run gets a whole page as its frame (`frame_sz` = 4 KiB, about 3.5 KiB
//!   of it usable after the headroom), whatever the input's length: `bpf_xdp_adjust_tail`
//!   can grow any frame the balancer builds (at most about 1.6 KB), so the XDP side of
//!   delayed binding's TC fallback (pass the SYN-ACK when the frame cannot grow) cannot
//!   be provoked here. The TC program is run directly instead ([`TestBed::run_tc`]):
//!   an skb test run ([`tc_test_run`]) with a [`skb_ctx`] naming the receiving device;
//!   the output buffer gets the skb as the program left it (grown by
//!   `bpf_skb_change_tail`), and `bpf_redirect` only sets the verdict
//!   (`TC_ACT_REDIRECT`, 7).
//!
//! # Cookie mode
//!
//! [`TestBed::add_cookie_service`] adds a cookie-mode service with server-ID tokens;
//! [`TestBed::rotate_syncookie_secret`] with [`TEST_SECRET`] lets a test compute the
//! syncookies the data plane hands out ([`syncookie`], over [`cookie_window`], CLOCK_TAI
//! in 64-second windows: a test accepts the window before and after its run). Raw map
//! readers ([`TestBed::flow_entries`], [`TestBed::pending_segment`],
//! [`TestBed::backend_counters`], [`TestBed::policy_backend`]) check state, and
//! [`crate::packet::check_frame`] compares an output frame with the frame it must be, field by field
//! and byte by byte.

use std::{
    collections::BTreeMap,
    fs::File,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
};

use crate::netns::{unique_name, Netns};
use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, HashMap, MapData},
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp},
};
use balancer_common::{
    map_names,
    syncookie::{cookie_data, encode_mss, make_cookie, time_window, CookieLayout, CookieSecret},
    tcp_opts::ClientOptions,
    Backend, Counter, Flow, FlowKey, GlobalStats, PendingSegment, PROTO_TCP, RING_SIZE,
};
use balancer_user::{
    control::flows::FlowInfo,
    control::stats::BackendCountersValues,
    dataplane::{self, Balancer},
    model::addr::ip_to_map,
    BackendSpec, BackendState, CookieSettings, Proto, ServiceAddr, Weight,
};

/// The test-only BPF programs (balancer-ebpf/testprogs), built by build.rs.
pub static TEST_PROGRAMS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balancer-testprogs"));
/// The program of [`TEST_PROGRAMS_OBJECT`] that only returns `XDP_PASS`.
pub const PASS_PROGRAM_NAME: &str = "xdp_pass";

mod addr;
mod batch;
mod bed;
mod cookie;
mod run;

pub use addr::*;
pub use batch::*;
pub use bed::*;
pub use cookie::*;
pub use run::*;

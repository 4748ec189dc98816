//! Map layout shared by the XDP program and userspace.
//!
//! Addresses and ports are stored in network byte order, exactly as they appear in the
//! packet, so the data plane compares and copies them without byte swaps. Userspace
//! converts at its edge.

/// Services (VIP, port, protocol) one instance can hold.
pub const MAX_SERVICES: u32 = 64;
/// Backend slots across all services of one instance.
pub const MAX_BACKENDS: u32 = 4096;
/// Maglev lookup-table size per service: a prime, so every backend's permutation visits
/// every slot.
pub const RING_SIZE: u32 = 65537;
/// Default capacity of the flow table (entries; each TCP/UDP flow uses two, one per
/// direction). Settable at attach time.
pub const DEFAULT_FLOW_CAPACITY: u32 = 262_144;

/// Names of the maps, which are also their file names in the pin directory.
pub mod map_names {
    pub const CONFIG: &str = "BALANCER_CONFIG";
    pub const SERVICES: &str = "BALANCER_SERVICES";
    pub const BACKENDS: &str = "BALANCER_BACKENDS";
    pub const RING: &str = "BALANCER_RING";
    pub const FLOWS: &str = "BALANCER_FLOWS";
    pub const STATS: &str = "BALANCER_STATS";
    pub const BACKEND_STATS: &str = "BALANCER_BACKEND_STATS";
    /// Cookie settings per service id (cookie-mode services).
    pub const COOKIE_CONFIG: &str = "BALANCER_COOKIE_CONFIG";
    /// (service id, hash of a server-ID token) -> backend slot.
    pub const SERVER_IDS: &str = "BALANCER_SERVER_IDS";
    /// Backend slot -> replacement slot, written by the control plane on failover.
    pub const FAILOVER: &str = "BALANCER_FAILOVER";
    /// Syncookie secrets (current and previous generation).
    pub const SYNCOOKIE_KEYS: &str = "BALANCER_SYNCOOKIE_KEYS";
    /// First data segments of connections being bound to a backend.
    pub const PENDING: &str = "BALANCER_PENDING";
    /// Ring buffer of cookie primary/secondary pairs (read by the daemon; pinned so that a
    /// restarted daemon reads on where the last one stopped).
    pub const PAIRS: &str = "BALANCER_PAIRS";
    /// Backend health as the daemon's checks see it.
    pub const HEALTH: &str = "BALANCER_HEALTH";
    /// Every map the data plane pins, in the order `balancer` reports them.
    pub const ALL: [&str; 14] = [
        CONFIG,
        SERVICES,
        BACKENDS,
        RING,
        FLOWS,
        STATS,
        BACKEND_STATS,
        COOKIE_CONFIG,
        SERVER_IDS,
        FAILOVER,
        SYNCOOKIE_KEYS,
        PENDING,
        PAIRS,
        HEALTH,
    ];
}

/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "balancer";
/// The TC ingress program that completes delayed binding where XDP cannot grow a frame.
pub const TC_PROGRAM_NAME: &str = "balancer_tc";
/// A program that only returns `XDP_PASS`, for the veth peers of the balancer's
/// interfaces: its presence makes the kernel poll the peer for the frames the balancer
/// sends with `XDP_TX` (`balancer attach --veth-peer-pass`).
pub const PEER_PASS_PROGRAM_NAME: &str = "veth_peer_pass";

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Key of the services map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceKey {
    /// VIP, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Service flag: delayed binding on the session cookie (see docs/delayed-binding.md).
pub const SERVICE_F_COOKIE: u32 = 1;
/// Service flag: source-address persistence. New flows (and, in cookie mode, the
/// connections the policy binds) pick their backend by the client's address alone,
/// masked to the prefix length in [`SERVICE_PREFIX_SHIFT`], so every connection of a
/// client lands on the same backend while it takes new flows.
pub const SERVICE_F_SOURCE: u32 = 1 << 1;
/// Where a source-persistent service keeps its prefix length (1..=32) in `flags`.
pub const SERVICE_PREFIX_SHIFT: u32 = 8;
/// Mask of the prefix length once shifted down.
pub const SERVICE_PREFIX_MASK: u32 = 0x3f;

/// Value of the services map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Service {
    /// Index of this service: selects its block of the ring map.
    pub id: u32,
    /// `SERVICE_F_*` bits.
    pub flags: u32,
}

/// Backend slot states.
pub mod backend_state {
    /// Slot not in use.
    pub const EMPTY: u8 = 0;
    /// Receives new flows (if its weight is non-zero).
    pub const UP: u8 = 1;
    /// Keeps its existing flows, receives no new ones.
    pub const DRAINING: u8 = 2;
    /// Receives no new flows (health checks failed, or set by the operator).
    pub const DOWN: u8 = 3;
}

/// Value of the backends map (an array indexed by backend slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    /// Address, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    /// One of [`backend_state`].
    pub state: u8,
    pub _pad: u8,
    /// Id of the service this backend belongs to.
    pub service: u32,
    /// Relative share of new flows (1..=`MAX_WEIGHT`); 0 takes no new flows.
    pub weight: u32,
}

pub const MAX_WEIGHT: u32 = 10_000;

/// Key of the flow table: the 5-tuple as seen on the wire, for one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    // Scalar padding, not an array: the BPF backend turns zeroing a byte array into a
    // memset call, which this struct would pay on every packet.
    pub _pad1: u8,
    pub _pad2: u16,
}

impl FlowKey {
    #[inline(always)]
    pub fn new(src: u32, dst: u32, sport: u16, dport: u16, proto: u8) -> Self {
        FlowKey {
            src,
            dst,
            sport,
            dport,
            proto,
            _pad1: 0,
            _pad2: 0,
        }
    }
}

/// Key of the server-ID map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServerIdKey {
    /// Service id.
    pub service: u32,
    pub _pad: u32,
    /// `cookie::token_hash` of the server-ID token.
    pub token_hash: u64,
}

/// Longest server-ID token (bytes); the cookie scanner reads tokens up to this length.
pub const MAX_SERVER_ID_LEN: usize = 64;

/// Value of the server-ID map: the backend slot, and the token itself so that the
/// control plane can show it (the data plane reads `slot` only).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerId {
    pub slot: u32,
    pub len: u32,
    pub token: [u8; MAX_SERVER_ID_LEN],
}

/// Value of the failover map (an array indexed by backend slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Failover {
    /// Slot that takes the sessions of the indexed backend while `active` is 1.
    pub replacement: u32,
    pub active: u32,
}

/// Connections that can be in the binding phase at once (entries of the pending map).
pub const PENDING_CAPACITY: u32 = 16_384;

/// Largest TCP segment (header and payload) kept while a connection is being bound.
pub const PENDING_SEGMENT_MAX: usize = 1536;

/// Value of the pending map, keyed by the reply direction's flow key (what the backend's
/// answers carry): the reply entry of a connection being bound, and the client's first
/// data segment, TCP header included, as it arrived. The reply entry moves into the flow
/// table when the backend's SYN-ACK completes the binding: one map insert fewer on the
/// bind path than a reply entry of its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingSegment {
    pub reply: Flow,
    /// Bytes of the segment in `bytes`.
    pub len: u16,
    /// The client's MSS (from the syncookie), which the SYN to the backend offers.
    pub mss: u16,
    /// TSval and TSecr of the client's first segment (0 without timestamps); see
    /// [`PendingSegment::client_tsval`] and [`PendingSegment::synack_tsval`].
    pub tsvals: [u32; 2],
    /// [`crate::tcp_opts::ClientOptions::to_byte`] of the client's SYN.
    pub client_options: u8,
    pub _pad1: u8,
    pub _pad2: u16,
    pub bytes: [u8; PENDING_SEGMENT_MAX],
}

impl PendingSegment {
    /// The TSval of the client's first segment: the SYN to the backend carries it (not
    /// a later retransmission's, which would make the backend's PAWS check reject the
    /// kept segment, which is older).
    #[inline(always)]
    pub fn client_tsval(&self) -> u32 {
        self.tsvals[0]
    }

    /// The TSval of the syncookie SYN-ACK the client saw (`T0`, echoed in the first
    /// segment's TSecr): the splice's timestamp offset is `T0` minus the backend's.
    #[inline(always)]
    pub fn synack_tsval(&self) -> u32 {
        self.tsvals[1]
    }
}

/// Binding phase of a cookie-mode flow.
pub mod phase {
    /// Plain NAT (services without cookie mode).
    pub const NAT: u8 = 0;
    /// Backend chosen, SYN sent to it, first segment kept; waiting for its SYN-ACK.
    pub const BINDING: u8 = 1;
    /// Spliced: NAT plus the sequence shift.
    pub const SPLICED: u8 = 2;
}

/// Which way a flow-table entry rewrites.
pub mod direction {
    /// Client -> VIP, rewritten to client -> backend.
    pub const TO_BACKEND: u8 = 1;
    /// Backend -> client, rewritten to VIP -> client.
    pub const TO_CLIENT: u8 = 2;
}

/// Connection state of one direction's entry.
pub mod flow_state {
    /// TCP: SYN seen, handshake not complete.
    pub const SYN: u8 = 1;
    /// TCP: data or handshake ACK seen.
    pub const ESTABLISHED: u8 = 2;
    /// TCP: FIN seen in this direction.
    pub const FIN: u8 = 3;
    /// TCP: RST seen.
    pub const CLOSED: u8 = 4;
    /// UDP: any packet.
    pub const UDP: u8 = 5;

    pub fn name(state: u8) -> &'static str {
        match state {
            SYN => "syn",
            ESTABLISHED => "established",
            FIN => "fin",
            CLOSED => "closed",
            UDP => "udp",
            _ => "unknown",
        }
    }
}

/// Value of the flow table: what to write into a packet of this direction and where to
/// send it. 64 bytes, so that with its 16-byte key and the kernel's 48-byte element header
/// an entry fills exactly two cache lines (checked below): at a million flows most hits
/// miss the cache, and each line is a miss.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Flow {
    /// Addresses and ports written into the packet, network byte order.
    pub new_src: u32,
    pub new_dst: u32,
    pub new_sport: u16,
    pub new_dport: u16,
    /// Precomputed one's-complement sums (RFC 1624) of the rewrite: added to the IPv4
    /// header checksum (addresses and the TTL decrement) and to the TCP/UDP checksum
    /// (pseudo-header addresses and ports). Constant for a flow, so the per-packet update is
    /// one addition each.
    pub ip_csum_delta: u16,
    pub l4_csum_delta: u16,
    /// Egress interface, and the MACs to write. Valid when [`flow_flags::L2_VALID`] is set.
    pub ifindex: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// Backend slot this flow belongs to (for per-backend counters); below
    /// [`MAX_BACKENDS`], so 16 bits hold it.
    pub backend: u16,
    /// Spliced flows: the window shift of this direction's segments
    /// ([`crate::tcp_opts::rescale_window`]), 0 when both ends scale alike.
    pub win_shift: i8,
    pub _pad: u8,
    /// One of [`direction`].
    pub direction: u8,
    /// One of [`flow_state`].
    pub state: u8,
    /// One of [`phase`].
    pub phase: u8,
    /// Bits of [`flow_flags`], and for spliced flows the option translation of
    /// [`crate::tcp_opts::edit_flags`].
    pub flags: u8,
    /// Cookie-mode flows. While binding: the syncookie ISN `K` the client was answered
    /// with. Once spliced (the backend's SYN-ACK gave its ISN `B`): `K - B`, added to the
    /// sequence number of backend -> client packets and taken off the acknowledgement
    /// number of client -> backend packets. One field for both, since no entry needs
    /// both at once (see [`Flow::cookie_isn`]).
    pub seq_delta: u32,
    /// [`flow_tick`] when the flow was created.
    pub created_tick: u32,
    /// [`flow_tick`] of the last packet, refreshed at most once per
    /// [`LAST_SEEN_GRANULARITY_NS`] to keep the established path free of shared-cache-line
    /// writes.
    pub last_seen_tick: u32,
    /// Cookie-mode flows: the client's ISN.
    pub client_isn: u32,
    /// Cookie-mode flows with [`flow_flags::REUSE_PENDING`]: the ISN of a SYN that
    /// arrived on this 5-tuple, possibly a new connection reusing the client port. It
    /// replaces this one only once it proves it completed the syncookie handshake.
    pub reuse_isn: u32,
    /// Spliced flows whose ends both send timestamps: `T0 - B0`, added to the TSval of
    /// backend -> client segments and taken off the TSecr of client -> backend ones.
    pub ts_offset: u32,
}

impl Flow {
    /// The syncookie ISN of a cookie-mode entry that is still binding (before the
    /// backend's SYN-ACK turned [`Flow::seq_delta`] into the sequence shift).
    #[inline(always)]
    pub fn cookie_isn(&self) -> u32 {
        self.seq_delta
    }

    /// [`Flow::backend`] as the index of the maps kept per backend slot.
    #[inline(always)]
    pub fn backend_slot(&self) -> u32 {
        u32::from(self.backend)
    }

    #[inline(always)]
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    #[inline(always)]
    pub fn set(&mut self, flag: u8) {
        self.flags |= flag;
    }
}

/// Bits of [`Flow::flags`].
pub mod flow_flags {
    /// `ifindex`, `dmac` and `smac` hold the next hop.
    pub const L2_VALID: u8 = 1;
    /// Cookie-mode client-side entries: a SYN with another ISN ([`super::Flow::reuse_isn`])
    /// arrived on this 5-tuple.
    pub const REUSE_PENDING: u8 = 2;
    /// Cookie-mode reply entries while binding: a stale ACK (the backend's TIME-WAIT of an
    /// earlier connection) was handed to the TC program, which resets it and sends the
    /// SYN again at once. Only once per binding: a backend that keeps answering so gets
    /// the RST alone and the client's retransmission.
    pub const STALE_ACK_PASSED: u8 = 4;
    /// The TC program has reset the stale connection and sent the SYN again.
    pub const STALE_ACK_RESENT: u8 = 8;
    // Bits 16..128: crate::tcp_opts::edit_flags (spliced flows only).
}

/// Flow timestamps are 32-bit ticks of 2^20 ns (about 1.05 ms) of CLOCK_MONOTONIC, so
/// that the flow value fits in 64 bytes. Differences are taken modulo 2^32 and are right
/// for ages below 2^31 ticks (about 26 days); flow timeouts are capped far below that
/// ([`MAX_FLOW_TIMEOUT_S`]).
pub const FLOW_TICK_SHIFT: u32 = 20;

/// The longest idle timeout a flow may have, seconds (7 days).
pub const MAX_FLOW_TIMEOUT_S: u32 = 7 * 24 * 3600;

/// The [`FLOW_TICK_SHIFT`] tick of a CLOCK_MONOTONIC time.
#[inline(always)]
pub fn flow_tick(now_ns: u64) -> u32 {
    (now_ns >> FLOW_TICK_SHIFT) as u32
}

/// Nanoseconds from tick `then` to the time `now_ns`; 0 when `then` is later (another
/// CPU stamped the entry a moment after this one read the clock).
#[inline(always)]
pub fn ns_since_tick(now_ns: u64, then: u32) -> u64 {
    let ticks = flow_tick(now_ns).wrapping_sub(then) as i32;
    if ticks < 0 {
        0
    } else {
        (ticks as u64) << FLOW_TICK_SHIFT
    }
}

pub const LAST_SEEN_GRANULARITY_NS: u64 = 1_000_000_000;

/// The data plane's cached next hop towards one backend (per-CPU array indexed by backend
/// slot): new flows to the backend reuse it instead of asking the FIB, until it expires
/// or the slot names another address or the packet came in elsewhere.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CachedNextHop {
    /// Backend address the entry is for (network byte order).
    pub addr: u32,
    /// Ingress interface of the lookup (forwarding rules depend on it).
    pub ingress: u32,
    /// Egress interface.
    pub ifindex: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// `bpf_ktime_get_coarse_ns` after which the entry must be looked up again.
    pub expires_ns: u64,
}

/// How long a cached next hop is used before the FIB is asked again: bounds how long a
/// neighbour's MAC change or a route change goes unnoticed by new flows.
pub const NEXT_HOP_TTL_NS: u64 = 1_000_000_000;

/// Cookie mode: by default one in this many cookies that name a secondary is reported.
pub const DEFAULT_PAIR_SAMPLE: u32 = 16;

/// Bytes of the ring buffer that carries [`CookiePair`] reports.
pub const PAIRS_RING_BYTES: u32 = 64 * 1024;

/// A primary/secondary token pair read from a session cookie (record of the PAIRS ring
/// buffer): the control plane learns replication pairs from traffic with it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CookiePair {
    /// Service id.
    pub service: u32,
    pub _pad: u32,
    /// `cookie::token_hash` of the primary token.
    pub primary: u64,
    /// `cookie::token_hash` of the secondary token.
    pub secondary: u64,
}

/// Health states of a backend as the daemon's checks see them.
pub mod health_state {
    /// Not checked (no daemon, or a backend not yet checked).
    pub const UNKNOWN: u8 = 0;
    pub const UP: u8 = 1;
    pub const DOWN: u8 = 2;
}

/// Value of the HEALTH array (indexed by backend slot): written by the daemon's health
/// checks, read by `balancer backend list`, `balancer stats` and the metrics endpoint.
/// Kept in a pinned map so that it outlives the daemon. The data plane does not read it:
/// the daemon turns health into the backend's state.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendHealth {
    /// One of [`health_state`].
    pub state: u8,
    pub _pad1: u8,
    pub _pad2: u16,
    /// Response time of the last check, microseconds.
    pub last_response_us: u32,
    /// Checks run.
    pub checks: u64,
    /// Checks failed.
    pub failures: u64,
    /// Wall-clock time of the last state change, Unix nanoseconds (0: never).
    pub last_change_unix_ns: u64,
    /// State changes.
    pub transitions: u64,
}

/// Data-plane settings (array map with one element).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Idle timeout of established TCP flows.
    pub tcp_established_timeout_s: u32,
    /// Idle timeout of TCP flows in SYN, FIN or RST state.
    pub tcp_transient_timeout_s: u32,
    /// Idle timeout of UDP flows.
    pub udp_timeout_s: u32,
    pub flags: u32,
    /// Cookie mode: report one in `pair_sample_mask + 1` primary/secondary token pairs
    /// seen in cookies to the control plane (a power of two minus one; 0 reports all).
    pub pair_sample_mask: u32,
    pub _pad: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            tcp_established_timeout_s: 900,
            tcp_transient_timeout_s: 30,
            udp_timeout_s: 60,
            flags: 0,
            pair_sample_mask: DEFAULT_PAIR_SAMPLE - 1,
            _pad: 0,
        }
    }
}

impl Config {
    /// Idle timeout for an entry in `state`, in nanoseconds.
    #[inline(always)]
    pub fn timeout_ns(&self, state: u8) -> u64 {
        let seconds = match state {
            flow_state::ESTABLISHED => self.tcp_established_timeout_s,
            flow_state::UDP => self.udp_timeout_s,
            _ => self.tcp_transient_timeout_s,
        };
        seconds as u64 * 1_000_000_000
    }
}

macro_rules! counters {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[doc = $doc:literal])* $variant:ident = $label:literal,)* }) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        $vis enum $name { $($(#[doc = $doc])* $variant,)* }

        impl $name {
            pub const COUNT: usize = [$($name::$variant),*].len();
            pub const ALL: [$name; Self::COUNT] = [$($name::$variant),*];
            /// Stable name used in CLI tables, JSON and metrics.
            pub const fn label(self) -> &'static str {
                match self { $($name::$variant => $label,)* }
            }
            /// One-line meaning, for `balancer stats --help` and the README.
            pub const fn help(self) -> &'static str {
                match self { $($name::$variant => concat!($($doc),*),)* }
            }
        }
    };
}

counters! {
    /// Global counters, one `u64` each in a per-CPU array (the STATS map is indexed by
    /// these values).
    pub enum Counter {
        /// Packets seen by the program.
        RxPackets = "rx_packets",
        /// Not for a service (other protocols, other destinations, replies without a flow entry): passed to the kernel untouched.
        PassNotService = "pass_not_service",
        /// Truncated or invalid Ethernet/IPv4/TCP/UDP headers: passed untouched.
        PassMalformed = "pass_malformed",
        /// Non-first IPv4 fragments (no L4 header to match): passed untouched.
        PassFragment = "pass_fragment",
        /// Service packets with TTL <= 1: passed so the kernel answers with ICMP time exceeded.
        PassTtlExceeded = "pass_ttl_exceeded",
        /// Rewritten packets whose next hop has no resolved neighbour yet: passed to the kernel, which resolves it and forwards.
        PassNoNeighbour = "pass_no_neighbour",
        /// Packets rewritten and sent back out of the interface they arrived on.
        TxSameInterface = "tx_same_interface",
        /// Packets rewritten and redirected to another interface.
        TxRedirect = "tx_redirect",
        /// Bytes of forwarded packets (both directions).
        TxBytes = "tx_bytes",
        /// New flows created (SYN or first UDP packet).
        NewFlows = "new_flows",
        /// TCP non-SYN packets to a service without a flow entry: backend chosen again by the consistent hash and the flow re-created.
        FlowMisses = "flow_misses",
        /// First fragments addressed to a service: dropped (the rest of the datagram could not be translated).
        DropFragment = "drop_fragment",
        /// Service has no backend able to take a new flow.
        DropNoBackend = "drop_no_backend",
        /// FIB lookup towards the backend failed: no route, or IP forwarding disabled on the ingress interface.
        DropNoRoute = "drop_no_route",
        /// Flow table full and no entry could be created.
        DropFlowTableFull = "drop_flow_table_full",
        /// Cookie mode: SYNs answered with a syncookie SYN-ACK.
        SyncookiesSent = "syncookies_sent",
        /// Cookie mode: handshake ACKs and first segments with a valid syncookie.
        SyncookiesValid = "syncookies_valid",
        /// Cookie mode: ACKs without a flow whose syncookie is invalid or expired: dropped.
        SyncookiesInvalid = "syncookies_invalid",
        /// Cookie mode: RSTs without a flow (e.g. a client resetting a late SYN-ACK of a socket it has closed): dropped, nothing to reset.
        RstNoFlow = "rst_no_flow",
        /// Cookie mode: segments without a flow that are neither a SYN, an ACK nor a RST (SYN+ACK, SYN+FIN, no ACK flag): dropped.
        DropOddNoFlow = "drop_odd_no_flow",
        /// Cookie mode: SYNs dropped because no syncookie secret is set.
        DropNoSyncookieKey = "drop_no_syncookie_key",
        /// Cookie mode: connections whose first segment chose a backend (SYN sent to it).
        BindingsStarted = "bindings_started",
        /// Cookie mode: bindings completed (backend SYN-ACK seen, first segment delivered).
        BindingsCompleted = "bindings_completed",
        /// Cookie mode: bindings abandoned because the backend did not answer in time (client reset).
        BindingsTimedOut = "bindings_timed_out",
        /// Cookie mode: bindings the backend refused (RST to its SYN, e.g. no server listening): the RST is passed to the client.
        BindingsRefused = "bindings_refused",
        /// Cookie mode: the backend answered the SYN with an ACK of another connection (a TIME-WAIT of the same addresses and ports): reset back to it; the first time per binding the SYN is sent again right after the reset (TC program), later ones wait for the client's retransmission.
        BindStaleAcks = "bind_stale_acks",
        /// Cookie mode: stale ACKs passed to the TC program (which resets the old connection and sends the SYN again at once): the first per binding.
        PassStaleAckToTc = "pass_stale_ack_to_tc",
        /// Cookie mode: client retransmissions of a first segment whose backend stopped taking new flows while binding: bound again (cookie, failover map, policy).
        BindsRedone = "binds_redone",
        /// Cookie mode: SYNs re-sent to the backend: for a client retransmitting its first segment, or right after a stale ACK was reset.
        BindRetransmits = "bind_retransmits",
        /// Cookie mode: first segments delivered by the TC program because the driver's frame could not grow in XDP.
        SplicedByTc = "spliced_by_tc",
        /// Cookie mode: packets dropped while binding (client segments after the first, unexpected backend packets, frames that could not be resized).
        DropWhileBinding = "drop_while_binding",
        /// Cookie mode: spliced segments whose TCP options need translating (timestamps, SACK) but cannot be walked to their end (malformed, duplicated, or more than 8 options): dropped rather than forwarded half-translated.
        DropUntranslatableOptions = "drop_untranslatable_options",
        /// Cookie mode: first segments that are not HTTP (e.g. TLS): policy decides.
        CookieNotHttp = "cookie_not_http",
        /// Cookie mode: complete request heads without a Cookie header: policy decides.
        CookieNoHeader = "cookie_no_header",
        /// Cookie mode: Cookie headers without the configured cookie: policy decides.
        CookieNameAbsent = "cookie_name_absent",
        /// Cookie mode: the cookie has no usable primary token: policy decides.
        CookieNoToken = "cookie_no_token",
        /// Cookie mode: the request head continues beyond the first segment without the cookie: policy decides.
        CookieBeyondFirstSegment = "cookie_beyond_first_segment",
        /// Cookie mode: primary token unknown (no backend has it): policy decides.
        CookieUnknownToken = "cookie_unknown_token",
        /// Cookie mode: primary/secondary token pairs reported to the control plane (sampled).
        CookiePairsReported = "cookie_pairs_reported",
        /// Cookie mode: sampled token pairs lost because the report ring buffer was full.
        CookiePairsLost = "cookie_pairs_lost",
    }
}

/// Per-CPU global counter block (value of the STATS map).
pub type GlobalStats = [u64; Counter::COUNT];

/// Declares a per-backend counter set from one table: the `#[repr(C)]` struct of `u64`
/// fields the data plane increments (one field per row, in row order, so the map layout
/// is the table's order), and an enum naming each field with its label (the field's name,
/// used as JSON key and in metric names) and its help text (the row's doc comment).
macro_rules! backend_counters {
    (
        $(#[$struct_meta:meta])* $svis:vis struct $stats:ident;
        $(#[$enum_meta:meta])* $evis:vis enum $name:ident {
            $($(#[doc = $doc:literal])* $variant:ident = $field:ident,)*
        }
    ) => {
        $(#[$struct_meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
        $svis struct $stats { $($(#[doc = $doc])* pub $field: u64,)* }

        $(#[$enum_meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        $evis enum $name { $($(#[doc = $doc])* $variant,)* }

        impl $name {
            pub const COUNT: usize = [$($name::$variant),*].len();
            pub const ALL: [$name; Self::COUNT] = [$($name::$variant),*];
            /// Stable name (the field's) used in CLI tables, JSON and metrics.
            pub const fn label(self) -> &'static str {
                match self { $($name::$variant => stringify!($field),)* }
            }
            /// One-line meaning (with the doc comment's leading space).
            pub const fn help(self) -> &'static str {
                match self { $($name::$variant => concat!($($doc),*),)* }
            }
        }

        impl $stats {
            /// The value of one counter.
            #[inline(always)]
            pub const fn get(&self, counter: $name) -> u64 {
                match counter { $($name::$variant => self.$field,)* }
            }

            /// Adds `other` counter by counter (summing the per-CPU values).
            pub fn add(&mut self, other: &$stats) {
                $(self.$field += other.$field;)*
            }
        }
    };
}

backend_counters! {
    /// Per-backend counters (value of the per-CPU BACKEND_STATS array, indexed by backend
    /// slot).
    pub struct BackendStats;
    /// One field of [`BackendStats`].
    pub enum BackendCounter {
        /// Packets forwarded to the backend.
        PacketsTo = packets_to,
        /// Bytes forwarded to the backend.
        BytesTo = bytes_to,
        /// Packets forwarded from the backend to clients.
        PacketsFrom = packets_from,
        /// Bytes forwarded from the backend to clients.
        BytesFrom = bytes_from,
        /// Flows assigned to the backend.
        NewFlows = new_flows,
        /// Cookie mode: connections bound here because the cookie named this backend.
        CookieHits = cookie_hits,
        /// Cookie mode: connections bound here by the policy (no usable cookie).
        CookieMisses = cookie_misses,
        /// Cookie mode: connections bound here because the cookie named a failed primary
        /// whose sessions this backend took over.
        FailoverRedirects = failover_redirects,
    }
}

// The map value types must have no implicit padding: the kernel copies them byte for byte,
// and uninitialised padding would leak into userspace and break equality.
const _: () = {
    assert!(core::mem::size_of::<ServiceKey>() == 8);
    assert!(core::mem::size_of::<Service>() == 8);
    assert!(core::mem::size_of::<Backend>() == 16);
    assert!(core::mem::size_of::<FlowKey>() == 16);
    assert!(core::mem::size_of::<Flow>() == 64);
    // Flow::backend is 16 bits.
    assert!(MAX_BACKENDS <= 1 << 16);
    assert!(core::mem::size_of::<ServerIdKey>() == 16);
    assert!(core::mem::size_of::<ServerId>() == 8 + MAX_SERVER_ID_LEN);
    assert!(core::mem::size_of::<Failover>() == 8);
    assert!(core::mem::size_of::<PendingSegment>() == 64 + 16 + PENDING_SEGMENT_MAX);
    assert!(core::mem::size_of::<Config>() == 24);
    assert!(core::mem::size_of::<CookiePair>() == 24);
    assert!(core::mem::size_of::<BackendHealth>() == 40);
    assert!(core::mem::size_of::<CachedNextHop>() == 32);
    assert!(core::mem::size_of::<BackendStats>() == 64);
    assert!(core::mem::size_of::<BackendStats>() == 8 * BackendCounter::COUNT);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)] plain data without padding (asserted above).
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Flow {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for BackendStats {}
    unsafe impl aya::Pod for ServerIdKey {}
    unsafe impl aya::Pod for ServerId {}
    unsafe impl aya::Pod for Failover {}
    unsafe impl aya::Pod for PendingSegment {}
    unsafe impl aya::Pod for CookiePair {}
    unsafe impl aya::Pod for BackendHealth {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_labels_are_unique_and_documented() {
        for (i, a) in Counter::ALL.iter().enumerate() {
            assert_eq!(*a as usize, i);
            assert!(!a.help().is_empty(), "{:?} has no doc", a);
            for b in &Counter::ALL[i + 1..] {
                assert_ne!(a.label(), b.label());
            }
        }
    }

    #[test]
    fn backend_counter_labels_are_unique_documented_and_read_their_field() {
        let stats = BackendStats {
            packets_to: 1,
            bytes_to: 2,
            packets_from: 3,
            bytes_from: 4,
            new_flows: 5,
            cookie_hits: 6,
            cookie_misses: 7,
            failover_redirects: 8,
        };
        let labels = [
            "packets_to",
            "bytes_to",
            "packets_from",
            "bytes_from",
            "new_flows",
            "cookie_hits",
            "cookie_misses",
            "failover_redirects",
        ];
        assert_eq!(BackendCounter::ALL.map(BackendCounter::label), labels);
        for (i, c) in BackendCounter::ALL.iter().enumerate() {
            assert_eq!(stats.get(*c), i as u64 + 1, "{c:?}");
            assert!(!c.help().trim().is_empty(), "{c:?} has no doc");
        }
        assert_eq!(
            BackendCounter::FailoverRedirects.help().trim(),
            "Cookie mode: connections bound here because the cookie named a failed \
             primary whose sessions this backend took over."
        );
        let mut sum = stats;
        sum.add(&stats);
        assert_eq!(sum.get(BackendCounter::FailoverRedirects), 16);
    }

    #[test]
    fn timeouts_follow_state() {
        let c = Config::default();
        assert_eq!(c.timeout_ns(flow_state::ESTABLISHED), 900_000_000_000);
        assert_eq!(c.timeout_ns(flow_state::SYN), 30_000_000_000);
        assert_eq!(c.timeout_ns(flow_state::UDP), 60_000_000_000);
    }
}

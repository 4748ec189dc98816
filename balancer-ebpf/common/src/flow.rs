//! The flow table's logic: what each direction of a connection rewrites to, its TCP
//! state and idle timeout. The XDP program keeps the entries in the FLOWS map.

use crate::{
    csum::{rewrite_delta, Endpoints},
    direction, flow_flags, flow_state, flow_tick, ns_since_tick,
    parse::{EthHdr, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    phase, Backend, Config, Flow, FlowKey, LAST_SEEN_GRANULARITY_NS, PROTO_TCP,
};

/// True for a connection-opening SYN (not a SYN-ACK).
#[inline(always)]
pub fn is_syn(pkt: &Packet) -> bool {
    pkt.key.proto == PROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Whether an existing entry still applies to this packet: not idle past its timeout,
/// and not a fresh SYN reusing the 5-tuple of a connection that got past its handshake
/// (that is a new connection, which gets a new backend decision).
#[inline(always)]
pub fn still_valid(flow: &Flow, pkt: &Packet, now: u64, config: &Config) -> bool {
    if ns_since_tick(now, flow.last_seen_tick) > config.timeout_ns(timeout_state(flow)) {
        return false;
    }
    !(is_syn(pkt) && flow.state != flow_state::SYN)
}

/// The state whose idle timeout applies to an entry. A FIN or RST is not checked
/// against the connection's window here, so anyone who knows a connection's addresses
/// and ports can forge one. A NAT entry that expires early is rebuilt by the next packet
/// (the consistent hash picks the same backend), but a spliced connection cannot be
/// rebuilt (its sequence offset is gone): its entries keep the established timeout after
/// a FIN or RST, and the backend's TCP, which does check the window, decides whether the
/// connection ended. The LRU table evicts entries of closed connections first anyway.
#[inline(always)]
fn timeout_state(flow: &Flow) -> u8 {
    match flow.state {
        flow_state::FIN | flow_state::CLOSED if flow.phase == phase::SPLICED => {
            flow_state::ESTABLISHED
        }
        s => s,
    }
}

/// State an entry moves to after a packet with `flags` (TCP) passes through it.
#[inline(always)]
pub fn next_state(state: u8, proto: u8, flags: u8) -> u8 {
    if proto != PROTO_TCP {
        return flow_state::UDP;
    }
    if flags & TCP_RST != 0 {
        flow_state::CLOSED
    } else if flags & TCP_FIN != 0 && state != flow_state::CLOSED {
        flow_state::FIN
    } else if state == flow_state::SYN && flags & TCP_ACK != 0 {
        flow_state::ESTABLISHED
    } else {
        state
    }
}

/// Updates state and last-seen time of an entry in the map.
#[inline(always)]
pub fn track(flow: &mut Flow, pkt: &Packet, now: u64) {
    let state = next_state(flow.state, pkt.key.proto, pkt.tcp_flags);
    // Writing the shared entry on every packet would bounce its cache line between CPUs;
    // the timeouts are in seconds, so a refresh per second is enough.
    if state != flow.state || ns_since_tick(now, flow.last_seen_tick) > LAST_SEEN_GRANULARITY_NS {
        flow.state = state;
        flow.last_seen_tick = flow_tick(now);
    }
}

/// The two entries of a new flow from the packet that opens it: client -> VIP becomes
/// client -> backend, backend -> client becomes VIP -> client. The reply direction sends
/// frames back to where the client's frame came from (its source MAC, ingress interface);
/// the forward direction's next hop is resolved by a FIB lookup on first use.
#[inline(always)]
pub fn new_entries(
    pkt: &Packet,
    eth: &EthHdr,
    ingress_ifindex: u32,
    slot: u32,
    backend: &Backend,
    now: u64,
) -> (FlowKey, Flow, FlowKey, Flow) {
    let mut pair = FlowPair::default();
    new_entries_into(&mut pair, pkt, eth, ingress_ifindex, slot, backend, now);
    (pair.key, pair.forward, pair.reply_key, pair.reply)
}

/// Key of the other direction's entry of the flow that `flow` (stored under `key`)
/// belongs to: the reply entry's key for a client-side entry, the client-side key for a
/// reply entry.
#[inline(always)]
pub fn other_key(key: &FlowKey, flow: &Flow) -> FlowKey {
    if flow.direction == direction::TO_BACKEND {
        // client -> backend: the backend answers the client.
        FlowKey::new(flow.new_dst, key.src, flow.new_dport, key.sport, key.proto)
    } else {
        // VIP -> client after the rewrite: the client wrote to the VIP.
        FlowKey::new(
            flow.new_dst,
            flow.new_src,
            flow.new_dport,
            flow.new_sport,
            key.proto,
        )
    }
}

/// Both entries of a new flow, side by side: what [`new_entries_into`] fills. The XDP
/// program builds them in a per-CPU map value where the BPF stack is too small.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowPair {
    pub key: FlowKey,
    pub forward: Flow,
    pub reply_key: FlowKey,
    pub reply: Flow,
}

/// [`new_entries`], written into `out`.
#[inline(always)]
pub fn new_entries_into(
    out: &mut FlowPair,
    pkt: &Packet,
    eth: &EthHdr,
    ingress_ifindex: u32,
    slot: u32,
    backend: &Backend,
    now: u64,
) {
    let k = pkt.key;
    // A flow opens with a SYN (or any UDP packet); one re-created after a table miss
    // starts as established, or closing if the packet says so.
    let (state, reply_state) = if k.proto != PROTO_TCP {
        (flow_state::UDP, flow_state::UDP)
    } else if is_syn(pkt) {
        (flow_state::SYN, flow_state::SYN)
    } else {
        (
            next_state(flow_state::ESTABLISHED, k.proto, pkt.tcp_flags),
            flow_state::ESTABLISHED,
        )
    };
    let client_to_vip = Endpoints {
        src: k.src,
        dst: k.dst,
        sport: k.sport,
        dport: k.dport,
    };
    let client_to_backend = Endpoints {
        dst: backend.addr,
        dport: backend.port,
        ..client_to_vip
    };
    out.forward = nat_flow(
        client_to_vip,
        client_to_backend,
        slot,
        direction::TO_BACKEND,
        state,
        now,
    );
    out.reply_key = FlowKey::new(backend.addr, k.src, backend.port, k.sport, k.proto);
    // Replies come from the backend and leave as if from the VIP.
    out.reply = nat_flow(
        client_to_backend.reversed(),
        client_to_vip.reversed(),
        slot,
        direction::TO_CLIENT,
        reply_state,
        now,
    );
    // Replies leave by the interface the client's packet came in on, to the MAC it came
    // from: known now, so the reply entry's next hop is valid from the start.
    out.reply.ifindex = ingress_ifindex;
    out.reply.dmac = eth.src;
    out.reply.smac = eth.dst;
    out.reply.set(flow_flags::L2_VALID);
    out.key = k;
}

/// A NAT entry rewriting packets seen as `from` into `to`, in `state`, with no next hop
/// resolved yet and nothing of delayed binding.
#[inline(always)]
fn nat_flow(from: Endpoints, to: Endpoints, slot: u32, dir: u8, state: u8, now: u64) -> Flow {
    let (ip_csum_delta, l4_csum_delta) = rewrite_delta(from, to);
    Flow {
        new_src: to.src,
        new_dst: to.dst,
        new_sport: to.sport,
        new_dport: to.dport,
        ip_csum_delta,
        l4_csum_delta,
        backend: slot as u16,
        ifindex: 0,
        dmac: [0; 6],
        smac: [0; 6],
        win_shift: 0,
        _pad: 0,
        direction: dir,
        state,
        phase: phase::NAT,
        flags: 0,
        seq_delta: 0,
        created_tick: flow_tick(now),
        last_seen_tick: flow_tick(now),
        client_isn: 0,
        reuse_isn: 0,
        ts_offset: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_slice;
    use etherparse::PacketBuilder;
    use std::vec::Vec;

    fn packet(flags: &str) -> (Vec<u8>, Packet) {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([198, 18, 0, 2], [198, 18, 100, 1], 64)
            .tcp(40000, 80, 1000, 65535);
        let b = match flags {
            "syn" => b.syn(),
            "synack" => b.syn().ack(1),
            "ack" => b.ack(1),
            "fin" => b.fin().ack(1),
            "rst" => b.rst(),
            _ => unreachable!(),
        };
        let mut f = Vec::new();
        b.write(&mut f, &[]).unwrap();
        let p = parse_slice(&f).unwrap();
        (f, p)
    }

    fn backend() -> Backend {
        Backend {
            addr: u32::from_ne_bytes([198, 18, 1, 3]),
            port: 8080u16.to_be(),
            state: crate::backend_state::UP,
            _pad: 0,
            service: 0,
            weight: 1,
        }
    }

    #[test]
    fn tcp_state_machine() {
        use flow_state::*;
        let t = PROTO_TCP;
        assert_eq!(next_state(SYN, t, TCP_SYN), SYN);
        assert_eq!(next_state(SYN, t, TCP_ACK), ESTABLISHED);
        assert_eq!(next_state(ESTABLISHED, t, TCP_ACK | TCP_FIN), FIN);
        assert_eq!(next_state(FIN, t, TCP_ACK), FIN);
        assert_eq!(next_state(ESTABLISHED, t, TCP_RST), CLOSED);
        assert_eq!(next_state(CLOSED, t, TCP_FIN), CLOSED);
        assert_eq!(next_state(SYN, crate::PROTO_UDP, 0), UDP);
    }

    #[test]
    fn entries_mirror_each_other() {
        let (f, p) = packet("syn");
        let eth = unsafe { crate::parse::read(f.as_ptr() as *const EthHdr) };
        let (fk, fwd, rk, rev) = new_entries(&p, &eth, 7, 3, &backend(), 1000);
        assert_eq!(fk, p.key);
        assert_eq!(fwd.new_dst, backend().addr);
        assert_eq!(fwd.new_dport, backend().port);
        assert_eq!(fwd.new_src, p.key.src);
        assert_eq!(fwd.state, flow_state::SYN);
        assert!(!fwd.has(flow_flags::L2_VALID));
        // The reply key is what the backend's answer carries; it is rewritten to come
        // from the VIP and goes back out the client's interface to the client's MAC.
        assert_eq!(
            (rk.src, rk.sport, rk.dst, rk.dport),
            (fwd.new_dst, fwd.new_dport, p.key.src, p.key.sport)
        );
        assert_eq!((rev.new_src, rev.new_sport), (p.key.dst, p.key.dport));
        assert_eq!(
            (
                rev.ifindex,
                rev.dmac,
                rev.smac,
                rev.has(flow_flags::L2_VALID)
            ),
            (7, eth.src, eth.dst, true)
        );
        assert_eq!(rev.direction, direction::TO_CLIENT);
        assert_eq!(fwd.backend, 3);
        // Each entry finds the other.
        assert_eq!(other_key(&fk, &fwd), rk);
        assert_eq!(other_key(&rk, &rev), fk);
    }

    #[test]
    fn entry_recreated_mid_connection_is_established() {
        let (f, p) = packet("ack");
        let eth = unsafe { crate::parse::read(f.as_ptr() as *const EthHdr) };
        let (_, fwd, _, rev) = new_entries(&p, &eth, 1, 0, &backend(), 0);
        assert_eq!(fwd.state, flow_state::ESTABLISHED);
        assert_eq!(rev.state, flow_state::ESTABLISHED);
    }

    #[test]
    fn validity_timeouts_and_port_reuse() {
        let config = Config::default();
        let (f, syn) = packet("syn");
        let eth = unsafe { crate::parse::read(f.as_ptr() as *const EthHdr) };
        let (_, mut fwd, _, _) = new_entries(&syn, &eth, 1, 0, &backend(), 0);
        // A retransmitted SYN keeps the decision.
        assert!(still_valid(&fwd, &syn, 1_000_000_000, &config));
        // Past the handshake timeout the entry is stale.
        assert!(!still_valid(&fwd, &syn, 31_000_000_000, &config));
        let (_, ack) = packet("ack");
        track(&mut fwd, &ack, 2_000_000_000);
        assert_eq!(fwd.state, flow_state::ESTABLISHED);
        assert_eq!(fwd.last_seen_tick, flow_tick(2_000_000_000));
        // A new SYN on an established 5-tuple is a new connection.
        assert!(!still_valid(&fwd, &syn, 3_000_000_000, &config));
        assert!(still_valid(&fwd, &ack, 800_000_000_000, &config));
        // last_seen is refreshed at most once a second.
        track(&mut fwd, &ack, 2_500_000_000);
        assert_eq!(fwd.last_seen_tick, flow_tick(2_000_000_000));
        let (_, fin) = packet("fin");
        track(&mut fwd, &fin, 2_600_000_000);
        assert_eq!(
            (fwd.state, fwd.last_seen_tick),
            (flow_state::FIN, flow_tick(2_600_000_000))
        );
        let (_, rst) = packet("rst");
        track(&mut fwd, &rst, 2_700_000_000);
        assert_eq!(fwd.state, flow_state::CLOSED);
        // A closed NAT entry goes after the short timeout (the next packet rebuilds it)...
        let idle = 2_700_000_000 + 31_000_000_000;
        assert!(!still_valid(&fwd, &ack, idle, &config));
        // ...a spliced one keeps the established timeout: a forged RST must not make a
        // live connection unrecoverable.
        fwd.phase = phase::SPLICED;
        assert!(still_valid(&fwd, &ack, idle, &config));
        assert!(!still_valid(
            &fwd,
            &ack,
            2_700_000_000 + 901_000_000_000,
            &config
        ));
        let _ = packet("synack");
    }
}

//! The shadow of the flows: what the fuzzer learnt from the program's outputs.

use super::*;

/// Client side of a connection: client, service address, protocol.
type CKey = (SocketAddrV4, SocketAddrV4, u8);

/// A cookie-mode binding in progress, as learnt when it started.
#[derive(Clone, Debug)]
pub(super) struct Pending {
    pub(super) backend: SocketAddrV4,
    pub(super) isn: u32,
    pub(super) cookie: u32,
    pub(super) mss: u16,
    /// What the client's SYN offered, and the TSval and TSecr of its first segment.
    pub(super) options: ClientOptions,
    pub(super) client_tsval: u32,
    pub(super) synack_tsval: u32,
    /// The client's TCP segment as it came (header and payload).
    pub(super) segment: Vec<u8>,
    /// Its L4 checksum residual against the client -> VIP pseudo-header.
    pub(super) residual: u16,
}

/// A spliced cookie-mode connection.
#[derive(Clone, Copy, Debug)]
pub(super) struct Spliced {
    pub(super) backend: SocketAddrV4,
    pub(super) isn: u32,
    pub(super) cookie: u32,
    pub(super) bisn: u32,
    /// How the splice translates options (from the client's SYN and the backend's SYN-ACK).
    pub(super) options: SpliceOptions,
}

/// Where the reply direction of a flow sends frames (learnt from the packet that created
/// the flow).
#[derive(Clone, Copy, Debug)]
pub(super) struct Created {
    pub(super) ingress: u32,
    pub(super) client_mac: [u8; 6],
    pub(super) our_mac: [u8; 6],
}

#[derive(Default)]
pub(super) struct Shadow {
    /// Backends each connection was bound to during this epoch.
    pub(super) bound: StdMap<CKey, Vec<SocketAddrV4>>,
    pub(super) created: StdMap<CKey, Created>,
    pub(super) pending: StdMap<CKey, Pending>,
    pub(super) spliced: StdMap<CKey, Spliced>,
    /// For the generator: (client, backend) per service, and cookie clients.
    pub(super) recent_bound: [Vec<(SocketAddrV4, SocketAddrV4)>; 4],
    pub(super) recent_pending: Vec<SocketAddrV4>,
    pub(super) recent_spliced: Vec<SocketAddrV4>,
    pub(super) tick: usize,
}

const RECENT: usize = 256;

pub(super) fn remember<T>(v: &mut Vec<T>, x: T, tick: usize) {
    if v.len() < RECENT {
        v.push(x);
    } else {
        v[tick % RECENT] = x;
    }
}

impl Shadow {
    pub(super) fn bind(&mut self, svc: usize, key: CKey, backend: SocketAddrV4, created: Created) {
        let list = self.bound.entry(key).or_default();
        if !list.contains(&backend) {
            list.push(backend);
        }
        self.created.insert(key, created);
        self.tick += 1;
        remember(&mut self.recent_bound[svc], (key.0, backend), self.tick);
    }
}

//! The address plan of the bed: its interfaces, the client, the VIP, the backends'
//! addresses and MACs; and the root check.

use super::*;

// --- Addresses of the bed -----------------------------------------------------------

/// Where the bed's pin directories go (one per bed, removed with it).
pub const PIN_ROOT: &str = "/sys/fs/bpf/balancer-test";

/// The balancer's interface towards clients, and its address and MAC.
pub const CLIENT_IF: &str = "lbc0";
pub const CLIENT_IF_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const CLIENT_IF_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc0];
/// The balancer's interface towards backends (198.18.1.0/24), its address and MAC.
pub const BACKEND_IF: &str = "lbb0";
pub const BACKEND_IF_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const BACKEND_IF_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb0];

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
pub const VIP_PORT: u16 = 80;

/// The MAC the bed gives the neighbour entry of a backend address: `02:00:00:00:XX:YY`
/// from the address' last two octets.
pub fn backend_mac(addr: Ipv4Addr) -> [u8; 6] {
    let o = addr.octets();
    [0x02, 0, 0, 0, o[2], o[3]]
}

/// Backend `n` (0-based) of the bed's backend subnet: 198.18.1.(10 + n).
pub fn backend_addr(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, 10 + n)
}

pub fn vip() -> SocketAddrV4 {
    SocketAddrV4::new(VIP, VIP_PORT)
}

pub fn client(sport: u16) -> SocketAddrV4 {
    SocketAddrV4::new(CLIENT, sport)
}

/// The harness's root check, under the name this module's users know.
pub use crate::harness::root::assert_root as require_root;

//! Source-address persistence in the program: a persistent service sends every
//! connection of a client address (or of a client network, with a prefix) to the slot of
//! its Maglev table that the address alone hashes to; without it, ports spread.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
};

use balancer_tests::{packet::*, testrun::*};
use balancer_user::{Persistence, ServiceAddr};

use super::{forward_ok, setup};

/// The backend a SYN from `src` is forwarded to, checked against the table lookup the
/// test bed does on the host with the program's own hash.
fn backend_of(
    bed: &TestBed,
    svc: ServiceAddr,
    src: SocketAddrV4,
    backends: &[SocketAddrV4],
) -> SocketAddrV4 {
    let mut syn = Frame::to_vip(src.port(), SYN);
    syn.src = src;
    let b = forward_ok(bed, &syn, backends);
    assert_eq!(
        b,
        bed.policy_backend(svc, &tcp_key(src, vip())).unwrap(),
        "{src}: not the backend the table names"
    );
    b
}

fn client_at(last: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, last), port)
}

#[test]
fn a_persistent_service_sends_every_port_of_a_client_to_one_backend() {
    let (bed, svc, backends) = setup();
    let by_port = |first: u16| -> BTreeSet<SocketAddrV4> {
        (0..48)
            .map(|i| backend_of(&bed, svc, client_at(2, first + i), &backends))
            .collect()
    };
    assert!(
        by_port(41000).len() > 1,
        "ports of one client did not spread"
    );

    bed.balancer()
        .set_persistence(svc, Persistence::Source { prefix: 32 })
        .unwrap();
    assert_eq!(by_port(42000).len(), 1, "one client on several backends");
    let by_client: BTreeSet<SocketAddrV4> = (2..50)
        .map(|last| backend_of(&bed, svc, client_at(last, 43000), &backends))
        .collect();
    assert!(
        by_client.len() > 1,
        "clients of a /32 persistence did not spread"
    );

    bed.balancer()
        .set_persistence(svc, Persistence::Source { prefix: 24 })
        .unwrap();
    let by_network: BTreeSet<SocketAddrV4> = (2..50)
        .map(|last| backend_of(&bed, svc, client_at(last, 44000 + last as u16), &backends))
        .collect();
    assert_eq!(by_network.len(), 1, "one /24 on several backends");
}

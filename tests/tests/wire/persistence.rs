//! Source-address persistence end to end: several client addresses, many connections
//! each, through a NAT service and a cookie-mode service's policy; changed in place to a
//! /24 prefix; a drained backend's clients moved together and kept together.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
    time::Duration,
};

use balancer_tests::{
    harness,
    http::Conn,
    topology::{self, service_arg, vip, Topology},
};

/// Client addresses besides the topology's own, all in its /24.
const CLIENTS: [u8; 8] = [11, 12, 13, 14, 15, 16, 17, 18];
const PER_CLIENT: usize = 20;

fn client_ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, last)
}

/// The backend that answered each of `PER_CLIENT` fresh connections from each client
/// address (`cookie`: sent as the Cookie header, e.g. one naming no backend).
fn answers(t: &Topology, cookie: Option<&'static str>) -> BTreeMap<u8, Vec<String>> {
    t.client
        .run(move || {
            CLIENTS
                .iter()
                .map(|&last| {
                    let names = (0..PER_CLIENT)
                        .map(|_| {
                            let mut c =
                                Conn::connect_from(client_ip(last), vip(), Duration::from_secs(3))
                                    .expect("connecting");
                            let mut headers = vec![("Connection", "close")];
                            if let Some(cookie) = cookie {
                                headers.push(("Cookie", cookie));
                            }
                            let r = c.request("GET", "/", &headers, &[]).expect("GET");
                            assert_eq!(r.status, 200);
                            r.answering_backend().expect("the backend's name")
                        })
                        .collect();
                    (last, names)
                })
                .collect()
        })
        .expect("client namespace")
}

/// One backend per client address (every connection of a client on it); the map of
/// client to backend.
fn one_backend_each(answers: &BTreeMap<u8, Vec<String>>) -> BTreeMap<u8, String> {
    answers
        .iter()
        .map(|(last, names)| {
            let distinct: BTreeSet<&String> = names.iter().collect();
            assert_eq!(
                distinct.len(),
                1,
                "client 198.18.0.{last} spread over {distinct:?}"
            );
            (*last, names[0].clone())
        })
        .collect()
}

fn setup(cookie: bool) -> Topology {
    harness::root::assert_root();
    let mut t = Topology::two_arm(3).expect("building the topology");
    for last in CLIENTS {
        t.client
            .ip(&[
                "addr",
                "add",
                &format!("{}/24", client_ip(last)),
                "dev",
                "eth0",
            ])
            .expect("adding a client address");
    }
    t.attach().expect("attaching");
    t.start_servers(Path::new(crate::TESTSRV))
        .expect("starting servers");
    t.add_vip_service(cookie, &["--persistence", "source"])
        .expect("adding the service");
    t
}

#[test]
fn every_connection_of_a_client_address_lands_on_one_backend() {
    let _machine = topology::machine_shared();
    let t = setup(false);
    let by_client = one_backend_each(&answers(&t, None));
    let used: BTreeSet<&String> = by_client.values().collect();
    assert!(
        used.len() >= 2,
        "{} client addresses all on one backend: {by_client:?}",
        CLIENTS.len()
    );
    let listed = t
        .balancer_json(&["service", "list", "--json"])
        .expect("service list");
    assert_eq!(listed[0]["persistence"], "source", "{listed}");

    // A /24 prefix, changed in place: every client of the network on one backend.
    t.balancer(&["service", "persistence", &service_arg(), "source/24"])
        .expect("changing the persistence");
    let by_network = one_backend_each(&answers(&t, None));
    let used: BTreeSet<&String> = by_network.values().collect();
    assert_eq!(used.len(), 1, "{by_network:?}");

    // Back to per address, then drain the backend of one client: its connections move
    // to one other backend together, and clients of other backends stay where they were.
    t.balancer(&["service", "persistence", &service_arg(), "source"])
        .expect("changing the persistence back");
    assert_eq!(one_backend_each(&answers(&t, None)), by_client);
    let (moved_client, drained) = by_client.iter().next().expect("a client");
    let drained_ep = t.backends[t.backend_index(drained).expect("a backend")].endpoint();
    t.balancer(&["backend", "drain", &service_arg(), &drained_ep])
        .expect("draining");
    let after = one_backend_each(&answers(&t, None));
    assert_ne!(&after[moved_client], drained, "{after:?}");
    for (client, backend) in &by_client {
        if backend != drained {
            assert_eq!(&after[client], backend, "client {client} moved: {after:?}");
        }
    }
}

#[test]
fn cookie_mode_policy_keeps_a_client_address_on_one_backend() {
    let _machine = topology::machine_shared();
    let t = setup(true);
    // A cookie naming no backend: the policy binds, by source address.
    let by_client = one_backend_each(&answers(&t, Some("JSESSIONID=s1!nosuch!none")));
    let used: BTreeSet<&String> = by_client.values().collect();
    assert!(used.len() >= 2, "{by_client:?}");
    // A cookie naming a backend still wins over persistence.
    let named = answers(&t, Some("JSESSIONID=s2!be2!be3"));
    for (client, names) in named {
        assert!(
            names.iter().all(|n| n == "be2"),
            "client {client}: {names:?}"
        );
    }
}

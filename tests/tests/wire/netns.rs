//! End-to-end tests of the balancer in network-namespace topologies: real TCP connections
//! from a client namespace through the XDP data plane to test servers in backend
//! namespaces, driven by the `balancer` CLI.
//!
//! Needs root and a built `balancer` binary (`cargo build --release -p balancer-user
//! --bins`, or `BALANCER_BIN`). Every test builds its own topology with a unique instance
//! and unique namespace names, so the tests run in parallel.

use std::{collections::BTreeMap, path::Path};

use balancer_tests::{
    daemon::backend_entry,
    harness::root::assert_root,
    http::{self, Conn},
    netns::stderr,
    topology::{self, service_arg, vip, Topology},
};
use serde_json::Value;

use crate::TESTSRV;

/// Two-arm topology with `n` backends, balancer attached, servers running, service
/// `VIP:80` with every backend.
fn setup(n: usize) -> Topology {
    assert_root();
    let mut t = Topology::two_arm(n).expect("building the topology");
    t.attach().expect("attaching the balancer");
    t.start_servers(Path::new(TESTSRV))
        .expect("starting test servers");
    t.add_service_with_backends().expect("adding the service");
    t
}

/// Outcome of a batch of requests: answers per backend name, and the errors.
#[derive(Debug, Default)]
struct Spread {
    by_backend: BTreeMap<String, usize>,
    errors: Vec<String>,
}

impl Spread {
    fn count(&self, name: &str) -> usize {
        self.by_backend.get(name).copied().unwrap_or(0)
    }
}

/// `n` GET requests to the VIP from the client namespace, each on a fresh connection.
fn fresh_requests(t: &Topology, n: usize) -> Spread {
    t.client
        .run(move || {
            let mut s = Spread::default();
            for _ in 0..n {
                match http::get(vip(), "/") {
                    Ok(r) if r.status == 200 => *s.by_backend.entry(r.text()).or_default() += 1,
                    Ok(r) => s.errors.push(format!("status {}", r.status)),
                    Err(e) => s.errors.push(format!("{e:#}")),
                }
            }
            s
        })
        .expect("running requests in the client namespace")
}

/// `n` requests as [`fresh_requests`], which must all succeed and none of which may land
/// on the backend `name`, taken out of service as `how` says ("drained", "removed").
fn fresh_requests_avoiding(t: &Topology, n: usize, name: &str, how: &str) -> Spread {
    let s = fresh_requests(t, n);
    assert!(
        s.errors.is_empty(),
        "errors with {name} {how}: {:?}",
        s.errors
    );
    assert_eq!(
        s.count(name),
        0,
        "{how} {name} got new connections: {:?}",
        s.by_backend
    );
    s
}

/// A keep-alive connection to the VIP, opened in the client namespace (usable from any
/// thread afterwards), and the backend that answered its first request.
fn open_conn(t: &Topology) -> (Conn, String) {
    t.client
        .run(|| {
            let mut c = Conn::connect(vip()).expect("connecting to the VIP");
            let name = c.get("/").expect("first request on the connection").text();
            (c, name)
        })
        .expect("running in the client namespace")
}

#[test]
fn requests_reach_every_backend() {
    const N: usize = 300;
    let t = setup(3);
    let s = fresh_requests(&t, N);
    assert!(
        s.errors.is_empty(),
        "{} errors, first: {:?}",
        s.errors.len(),
        s.errors.first()
    );
    // Each backend's share must be within 1/3 +- 0.13 (60..=140 of 300): more than four
    // standard deviations of a fair split, so a correct hash never fails it.
    for b in &t.backends {
        let n = s.count(&b.name);
        assert!(
            (60..=140).contains(&n),
            "{} got {n} of {N} new connections (expected 60..=140): {:?}",
            b.name,
            s.by_backend
        );
    }
    assert_eq!(
        s.by_backend.values().sum::<usize>(),
        N,
        "{:?}",
        s.by_backend
    );
}

#[test]
fn keepalive_connection_stays_on_one_backend() {
    let t = setup(3);
    // Several connections, so that more than one backend is involved.
    for _ in 0..4 {
        let (mut c, first) = open_conn(&t);
        for i in 0..50 {
            let r = c.get("/").unwrap_or_else(|e| panic!("request {i}: {e:#}"));
            assert_eq!(
                r.text(),
                first,
                "request {i} on one connection changed backend"
            );
        }
        // Larger answers on the same connection too.
        let r = c.get("/bytes/200000").expect("download on the connection");
        assert!(r.body.len() == 200_000 && http::is_pattern(&r.body));
        assert_eq!(r.header("x-backend"), Some(first.as_str()));
    }
}

#[test]
fn drained_backend_keeps_open_connections_and_gets_no_new_ones() {
    let t = setup(3);
    let (mut conn, drained) = open_conn(&t);
    let endpoint = t.backends[t.backend_index(&drained).unwrap()].endpoint();
    let service = service_arg();
    t.balancer(&["backend", "drain", &service, &endpoint])
        .unwrap();

    let list = t.balancer_json(&["backend", "list", "--json"]).unwrap();
    let entry =
        backend_entry(list.as_array().unwrap(), &endpoint).expect("drained backend is listed");
    assert_eq!(entry["state"], "draining");
    assert_eq!(entry["table_share"].as_f64(), Some(0.0));

    fresh_requests_avoiding(&t, 60, &drained, "drained");
    for i in 0..10 {
        let r = conn
            .get("/")
            .unwrap_or_else(|e| panic!("open connection, request {i}: {e:#}"));
        assert_eq!(
            r.text(),
            drained,
            "open connection moved off the drained backend"
        );
    }

    t.balancer(&["backend", "undrain", &service, &endpoint])
        .unwrap();
    let s = fresh_requests(&t, 60);
    assert!(s.errors.is_empty(), "errors after undrain: {:?}", s.errors);
    // P(no connection of 60 lands on a 1/3 share) is (2/3)^60, about 3e-11.
    assert!(
        s.count(&drained) > 0,
        "undrained {drained} gets no new connections: {:?}",
        s.by_backend
    );
    assert_eq!(conn.get("/").unwrap().text(), drained);
}

#[test]
fn removed_backend_gets_no_new_connections() {
    let t = setup(3);
    let (mut conn, removed) = open_conn(&t);
    let endpoint = t.backends[t.backend_index(&removed).unwrap()].endpoint();
    t.balancer(&["backend", "remove", &service_arg(), &endpoint])
        .unwrap();

    let list = t.balancer_json(&["backend", "list", "--json"]).unwrap();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|b| b["backend"] != endpoint.as_str()),
        "removed backend still listed: {list}"
    );
    let s = fresh_requests_avoiding(&t, 60, &removed, "removed");
    assert_eq!(s.by_backend.len(), 2, "{:?}", s.by_backend);
    // Documented: connections open on a removed backend keep their translation.
    let r = conn
        .get("/")
        .expect("open connection after its backend was removed");
    assert_eq!(r.text(), removed);
}

#[test]
fn counters_equal_the_traffic_sent() {
    const N: usize = 40;
    let t = setup(3);
    let s = fresh_requests(&t, N);
    assert!(s.errors.is_empty(), "{:?}", s.errors);

    let stats = t.balancer_json(&["stats", "--json"]).unwrap();
    let g = &stats["global"];
    assert_eq!(
        g["new_flows"].as_u64(),
        Some(N as u64),
        "global counters: {g}"
    );
    assert_eq!(g["flow_misses"].as_u64(), Some(0), "global counters: {g}");
    for c in ["drop_no_backend", "drop_no_route", "drop_flow_table_full"] {
        assert_eq!(g[c].as_u64(), Some(0), "{c} in {g}");
    }
    assert!(g["tx_redirect"].as_u64().unwrap() > 0, "{g}");
    assert!(g["tx_bytes"].as_u64().unwrap() > 0, "{g}");
    let backends = stats["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 3, "{stats}");
    let flows_sum: u64 = backends
        .iter()
        .map(|b| b["new_flows"].as_u64().unwrap())
        .sum();
    assert_eq!(flows_sum, N as u64, "per-backend new_flows: {stats}");
    for b in backends {
        let name = t
            .backends
            .iter()
            .find(|h| b["backend"] == h.endpoint().as_str())
            .map(|h| h.name.clone())
            .expect("known backend");
        assert_eq!(
            b["new_flows"].as_u64().unwrap(),
            s.count(&name) as u64,
            "new_flows of {name} vs. answers seen by the client: {stats}"
        );
        if s.count(&name) > 0 {
            for c in ["packets_to", "bytes_to", "packets_from", "bytes_from"] {
                assert!(b[c].as_u64().unwrap() > 0, "{c} of {name}: {b}");
            }
        }
    }

    let flows = t.balancer_json(&["flows", "--json"]).unwrap();
    let flows = flows.as_array().unwrap();
    assert_eq!(flows.len(), N, "one flow per connection: {flows:?}");
    let endpoints: Vec<String> = t.backends.iter().map(|b| b.endpoint()).collect();
    for f in flows {
        assert_eq!(f["proto"], "tcp");
        assert!(
            f["client"].as_str().unwrap().starts_with("198.18.0.2:"),
            "{f}"
        );
        assert_eq!(
            f["service"],
            format!("{}/tcp", service_arg()).as_str(),
            "{f}"
        );
        assert!(endpoints.iter().any(|e| f["backend"] == e.as_str()), "{f}");
    }
    let distinct: std::collections::HashSet<&str> = flows
        .iter()
        .map(|f| f["client"].as_str().unwrap())
        .collect();
    assert_eq!(distinct.len(), N, "client ports are distinct connections");
}

#[test]
fn one_arm_topology_works() {
    assert_root();
    let mut t = Topology::one_arm(2).expect("building the topology");
    t.attach().expect("attaching the balancer");
    t.start_servers(Path::new(TESTSRV))
        .expect("starting test servers");
    t.add_service_with_backends().expect("adding the service");
    let s = fresh_requests(&t, 60);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert!(
        s.count("be1") > 0 && s.count("be2") > 0,
        "{:?}",
        s.by_backend
    );
    let (mut c, first) = open_conn(&t);
    for _ in 0..20 {
        assert_eq!(c.get("/").unwrap().text(), first);
    }
    let g = t.global_stats().unwrap();
    assert_eq!(g["new_flows"].as_u64(), Some(61), "{g}");
    assert!(g["tx_same_interface"].as_u64().unwrap() > 0, "{g}");
    assert_eq!(
        g["tx_redirect"].as_u64(),
        Some(0),
        "one interface: nothing to redirect: {g}"
    );
}

/// Services and backends as the CLI lists them.
fn snapshot(t: &Topology) -> (Value, Value) {
    (
        t.balancer_json(&["service", "list", "--json"]).unwrap(),
        t.balancer_json(&["backend", "list", "--json"]).unwrap(),
    )
}

#[test]
fn cli_rejects_bad_input_without_changing_state() {
    assert_root();
    let mut t = Topology::two_arm(2).expect("building the topology");
    t.attach().expect("attaching the balancer");
    t.add_service_with_backends().unwrap();
    let service = service_arg();
    let be1 = t.backends[0].endpoint();
    let before = snapshot(&t);

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["backend", "add", "198.18.100.9:80", "198.18.1.50:8080"],
            "does not exist",
        ),
        (vec!["backend", "add", &service, &be1], "already exists"),
        (
            vec!["backend", "add", &service, "198.18.1:8080"],
            "invalid backend address",
        ),
        (
            vec!["backend", "add", &service, "198.18.1.50"],
            "invalid backend address",
        ),
        (
            vec![
                "backend",
                "add",
                &service,
                "198.18.1.50:8080",
                "--weight",
                "0",
            ],
            "invalid weight",
        ),
        (
            vec!["backend", "set-weight", &service, &be1, "0"],
            "invalid weight",
        ),
        (
            vec!["backend", "drain", &service, "198.18.1.99:8080"],
            "is not in service",
        ),
        (
            vec!["backend", "remove", "198.18.100.9:80", &be1],
            "does not exist",
        ),
        (vec!["service", "add", &service], "already exists"),
        (
            vec!["service", "add", "198.18.100.1:0"],
            "invalid service address",
        ),
        (
            vec!["service", "add", "198.18.100.1:80", "--proto", "sctp"],
            "invalid protocol",
        ),
    ];
    for (args, expected) in &cases {
        let out = t.balancer_output(args).unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "balancer {args:?} succeeded");
        assert_eq!(
            err.lines().count(),
            1,
            "balancer {args:?}: stderr is not one line: {err:?}"
        );
        assert!(
            err.contains(expected),
            "balancer {args:?}: {err:?} does not say {expected:?}"
        );
        assert_eq!(snapshot(&t), before, "balancer {args:?} changed the state");
    }

    // An instance that was never attached: no pin directory.
    let missing = balancer_tests::netns::unique_name("lbnone");
    for args in [
        vec!["service", "list", "--json"],
        vec!["backend", "add", &service, "198.18.1.50:8080"],
        vec!["stats"],
    ] {
        let out = t
            .gateway
            .command(&t.balancer_bin().to_string_lossy())
            .args(["--instance", &missing])
            .args(&args)
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(
            !out.status.success(),
            "{args:?} on a missing instance succeeded"
        );
        assert_eq!(err.lines().count(), 1, "{err:?}");
        assert!(err.contains("is not attached"), "{args:?}: {err:?}");
        assert!(!Path::new(topology::BPFFS_ROOT).join(&missing).exists());
    }

    // Not root: refused with the reason, before anything is read or written.
    for args in [
        vec!["service", "add", "198.18.100.2:80"],
        vec!["backend", "drain", &service, &be1],
        vec!["detach"],
    ] {
        let out = t
            .gateway
            .command("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(t.balancer_bin())
            .args(["--instance", t.instance()])
            .args(&args)
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} as nobody succeeded");
        assert_eq!(err.lines().count(), 1, "{err:?}");
        assert!(err.contains("must run as root"), "{args:?}: {err:?}");
    }
    assert_eq!(snapshot(&t), before);
}

#[test]
fn non_service_traffic_passes_through_the_gateway() {
    let t = setup(1);
    let before = t.global_stats().unwrap();
    let backend = t.backends[0].socket_addr();
    // Straight to the backend's own address through the gateway: not a service.
    let answers = t
        .client
        .run(move || {
            (0..5)
                .map(|_| http::get(backend, "/").map(|r| r.text()))
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap()
        .expect("direct connections to the backend through the gateway");
    assert!(answers.iter().all(|a| a == "be1"), "{answers:?}");
    let ping = t.client.exec(
        "ping",
        &[
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            &t.backends[0].addr.to_string(),
        ],
    );
    assert!(ping.is_ok(), "ping through the gateway: {ping:?}");

    let after = t.global_stats().unwrap();
    let delta = |c: &str| after[c].as_u64().unwrap() - before[c].as_u64().unwrap();
    // 5 connections of several packets each way, and 3 pings with their replies.
    assert!(
        delta("pass_not_service") >= 5 * 6 + 6,
        "before {before}, after {after}"
    );
    assert_eq!(delta("new_flows"), 0, "{after}");
    assert_eq!(
        delta("tx_redirect") + delta("tx_same_interface"),
        0,
        "{after}"
    );
    // And the service still works next to it.
    let s = fresh_requests(&t, 5);
    assert_eq!(s.count("be1"), 5, "{s:?}");
}

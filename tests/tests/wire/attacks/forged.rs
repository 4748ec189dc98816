//! Forged cookies naming a server that is not up.

use super::*;

// --- 7. Forged cookies -------------------------------------------------------------

/// Forged session cookies under the daemon. A cookie is a routing hint, not a
/// credential: the balancer trusts a token that names a healthy backend of the service
/// and binds the connection there (that is the design: anyone can write any cookie, so
/// the app servers must authenticate their sessions themselves, e.g. reject a session id
/// they do not hold). What it must never do is bring traffic to a server that is not
/// taking new connections: tokens of a draining backend, of a backend the health checks
/// found down (here one whose server still runs but fails its checks, and one whose
/// server is stopped), and unknown tokens (a server that is not a backend of the
/// service, a made-up name) all fall back to the policy among the healthy backends
/// (`cookie_hits` stays 0 for the named ones, `cookie_unknown_token` counts the unknown
/// ones). Nothing here has a replication partner, so no failover rewrite applies; with
/// one, the sessions of a down primary go to its secondary, still never to the primary.
#[test]
fn forged_cookies_never_reach_a_server_that_is_not_up() {
    const EACH: usize = 20;
    let _g = topology::machine_shared();
    assert_root();
    let mut t = Topology::two_arm(6).expect("building the topology");
    t.start_servers(Path::new(TESTSRV))
        .expect("starting test servers");
    // be4's server runs but its health checks fail: its answers to the gateway's own
    // address are black-holed (clients' traffic, routed through the same gateway, is not).
    t.backends[3]
        .ns
        .ip(&[
            "route",
            "add",
            "blackhole",
            &topology::GATEWAY_SERVER_ADDR.to_string(),
        ])
        .unwrap();
    // be5's server is stopped; be6 is not in the configuration.
    t.stop_server(4).unwrap();
    let o = ConfigOptions {
        without: vec![5],
        ..ConfigOptions::default()
    };
    let config = daemon_config(&t, &o);
    let drained = "  server_id = \"be3\"\n";
    assert!(config.contains(drained), "{config}");
    let config = config.replacen(drained, &format!("{drained}  drain = true\n"), 1);
    let d = Daemon::start(&mut t, &config).expect("starting the daemon");
    let ep = |i: usize| t.backends[i].endpoint();
    let want: [(usize, &str, &str); 5] = [
        (0, "up", "up"),
        (1, "up", "up"),
        (2, "draining", "up"),
        (3, "down", "down"),
        (4, "down", "down"),
    ];
    d.wait_for("backend states", Duration::from_secs(10), || {
        let list = d.backends()?;
        Ok(want
            .iter()
            .all(|(i, state, health)| {
                backend_entry(&list, &ep(*i))
                    .is_some_and(|e| e["state"] == *state && e["health"]["health"] == *health)
            })
            .then_some(()))
    })
    .unwrap();
    // The servers of be3 (draining), be4 (down) and be6 (not a backend) answer when asked
    // directly (from be1's namespace): "never reached" is not for want of a server.
    for i in [2, 3, 5] {
        let addr = t.backends[i].socket_addr();
        let who = t.backends[0]
            .ns
            .run(move || http::get(addr, "/").map(|r| r.text()))
            .unwrap()
            .unwrap_or_else(|e| panic!("be{} directly: {e:#}", i + 1));
        assert_eq!(who, t.backends[i].name);
    }
    let stats = || Stats(d.ctl_json(&["stats"]).unwrap());
    let cases: [(&str, &str); 7] = [
        ("be3", "draining"),
        ("be4", "down (server running, checks failing)"),
        ("be5", "down (server stopped)"),
        ("be6", "unknown (a server, not a backend)"),
        ("nosuch", "unknown (made up)"),
        ("be1", "healthy"),
        ("be2", "healthy"),
    ];
    let before = stats();
    let mut results = Vec::new();
    for (k, (token, what)) in cases.iter().enumerate() {
        let token = token.to_string();
        let answers = t
            .client
            .run(move || {
                (0..EACH)
                    .map(|i| {
                        get_with_cookie(
                            &format!("JSESSIONID=forged{k}x{i:03}!{token}"),
                            http::CONNECT_TIMEOUT,
                        )
                        .map(|(who, _)| who)
                        .map_err(|e| format!("{e:#}"))
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap();
        results.push((cases[k].0, *what, answers));
    }
    let after = stats();
    let ctx = after.summary();
    let mut report = Vec::new();
    for (token, what, answers) in &results {
        let mut spread = BTreeMap::new();
        for a in answers {
            *spread
                .entry(a.clone().unwrap_or_else(|e| format!("error: {e}")))
                .or_insert(0usize) += 1;
        }
        report.push(format!("{token} ({what}) -> {spread:?}"));
    }
    eprintln!(
        "forged cookies, {EACH} requests each: {}",
        report.join("; ")
    );
    for (token, what, answers) in &results {
        for a in answers {
            let who = a
                .as_ref()
                .unwrap_or_else(|e| panic!("request naming {token} ({what}): {e}; {ctx}"));
            if what.starts_with("healthy") {
                assert_eq!(who, token, "a healthy server's token routes to it; {ctx}");
            } else {
                assert_ne!(who, token, "a {what} server was reached; {ctx}");
                assert!(
                    who == "be1" || who == "be2",
                    "{token} ({what}) answered by {who}; {ctx}"
                );
            }
        }
    }
    let delta = |i: usize, f: &str| after.backend(&ep(i), f) - before.backend(&ep(i), f);
    for i in [2, 3, 4] {
        for f in [
            "cookie_hits",
            "new_flows",
            "packets_to",
            "failover_redirects",
        ] {
            assert_eq!(delta(i, f), 0, "be{} {f}: {ctx}", i + 1);
        }
    }
    for i in [0, 1] {
        assert_eq!(delta(i, "cookie_hits"), EACH as u64, "be{}: {ctx}", i + 1);
    }
    let g = |c: &str| after.global(c) - before.global(c);
    assert_eq!(g("cookie_unknown_token"), 2 * EACH as u64, "{ctx}");
    assert_eq!(
        after.backends_sum("cookie_misses") - before.backends_sum("cookie_misses"),
        5 * EACH as u64,
        "{ctx}"
    );
    assert_eq!(
        after.backends_sum("failover_redirects") - before.backends_sum("failover_redirects"),
        0,
        "{ctx}"
    );
}

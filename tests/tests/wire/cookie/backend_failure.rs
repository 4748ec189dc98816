//! A failed backend's sessions go to its replacement; a silent backend gets the client reset.

use super::*;

#[test]
fn failover_sends_a_failed_backends_sessions_to_its_replacement() {
    const N: usize = 20;
    let _g = topology::machine_shared();
    let t = setup(3);
    let service = service_arg();
    let (be1, be2) = (t.backends[0].endpoint(), t.backends[1].endpoint());
    let requests = |primary: &'static str| -> Vec<String> {
        t.client
            .run(move || {
                (0..N)
                    .map(|i| {
                        get_with_cookie(Some(&session_cookie(i, primary)), http::CONNECT_TIMEOUT)
                    })
                    .collect::<anyhow::Result<Vec<_>>>()
            })
            .unwrap()
            .unwrap_or_else(|e| panic!("requests for {primary}'s sessions: {e:#}"))
    };
    assert!(requests("be1").iter().all(|a| a == "be1"));
    // An open connection to be1, bound before it fails.
    let cookie = session_cookie(1, "be1");
    let mut open = t.client.run(|| Conn::connect(vip()).unwrap()).unwrap();
    let first = open
        .request("GET", "/", &[("Cookie", &cookie)], &[])
        .unwrap();
    assert_eq!(first.text(), "be1");

    // be1 taken out of service without a failover: the policy chooses, never be1.
    t.balancer(&["backend", "drain", &service, &be1]).unwrap();
    let before = Stats::read(&t);
    let answers = requests("be1");
    assert!(answers.iter().all(|a| a != "be1"), "{answers:?}");
    let after = Stats::read(&t);
    assert_eq!(
        after.backends_sum("cookie_misses") - before.backends_sum("cookie_misses"),
        N as u64,
        "{}",
        after.summary()
    );

    // Failover to be2: be1's sessions land on be2 and are counted as redirects.
    t.balancer(&["backend", "failover", &service, &be1, "--to", &be2])
        .unwrap();
    let list = t.balancer_json(&["backend", "list", "--json"]).unwrap();
    let entry = backend_entry(list.as_array().unwrap(), &be1)
        .unwrap()
        .clone();
    assert_eq!(entry["failover_to"], be2.as_str(), "{entry}");
    let before = Stats::read(&t);
    let answers = requests("be1");
    assert!(answers.iter().all(|a| a == "be2"), "{answers:?}");
    let after = Stats::read(&t);
    let ctx = after.summary();
    assert_eq!(
        after.backend(&be2, "failover_redirects") - before.backend(&be2, "failover_redirects"),
        N as u64,
        "{ctx}"
    );
    assert_eq!(
        after.backend(&be1, "cookie_hits"),
        before.backend(&be1, "cookie_hits"),
        "{ctx}"
    );
    // Sessions of the other backends are not affected.
    assert!(requests("be3").iter().all(|a| a == "be3"));
    // The connection bound before the failure keeps its backend.
    let r = open
        .request("GET", "/", &[("Cookie", &cookie)], &[])
        .unwrap();
    assert_eq!(r.text(), "be1");

    // Back: failover cleared, be1 in service again.
    t.balancer(&["backend", "failover", &service, &be1, "--clear"])
        .unwrap();
    t.balancer(&["backend", "undrain", &service, &be1]).unwrap();
    let before = Stats::read(&t);
    assert!(requests("be1").iter().all(|a| a == "be1"));
    let after = Stats::read(&t);
    assert_eq!(
        after.backend(&be1, "cookie_hits") - before.backend(&be1, "cookie_hits"),
        N as u64,
        "{}",
        after.summary()
    );
    assert_eq!(
        after.backend(&be2, "failover_redirects"),
        before.backend(&be2, "failover_redirects")
    );
    assert_no_failures(&after);
}

#[test]
fn backend_that_never_answers_gets_the_client_reset() {
    let _g = topology::machine_shared();
    let t = setup(2);
    let service = service_arg();
    // A backend address in the backend subnet where nothing answers: the gateway has a
    // static neighbour entry for it, so the SYN goes out onto the bridge and is lost.
    let dead = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 200), topology::BACKEND_PORT);
    t.gateway
        .ip(&[
            "neigh",
            "add",
            &dead.ip().to_string(),
            "lladdr",
            "02:00:5e:10:00:99",
            "dev",
            "srv0",
            "nud",
            "permanent",
        ])
        .unwrap();
    t.balancer(&[
        "backend",
        "add",
        &service,
        &dead.to_string(),
        "--server-id",
        "dead",
    ])
    .unwrap();
    let before = Stats::read(&t);
    let cookie = session_cookie(3, "dead");
    let (outcome, elapsed, local) = t
        .client
        .run(move || {
            let mut s = TcpStream::connect_timeout(&vip(), http::CONNECT_TIMEOUT).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            let local = s.local_addr().unwrap();
            let req = format!(
                "GET / HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\n\r\n",
                vip()
            );
            let t0 = Instant::now();
            s.write_all(req.as_bytes()).unwrap();
            let mut buf = [0u8; 256];
            let outcome = s.read(&mut buf);
            (outcome.map_err(|e| e.kind()), t0.elapsed(), local)
        })
        .unwrap();
    let after = Stats::read(&t);
    let ctx = after.summary();
    eprintln!(
        "request to a dead backend: {outcome:?} after {:.2} s",
        elapsed.as_secs_f64()
    );
    assert_eq!(outcome, Err(ErrorKind::ConnectionReset), "{ctx}");
    assert!(
        (Duration::from_millis(2900)..=Duration::from_secs(8)).contains(&elapsed),
        "reset after {elapsed:?}"
    );
    let delta = |c: &str| after.global(c) - before.global(c);
    assert_eq!(delta("bindings_timed_out"), 1, "{ctx}");
    assert_eq!(delta("bindings_started"), 1, "{ctx}");
    assert_eq!(delta("bindings_completed"), 0, "{ctx}");
    assert!(delta("bind_retransmits") >= 1, "{ctx}");
    assert_eq!(after.backend(&dead.to_string(), "cookie_hits"), 1, "{ctx}");
    // The abandoned connection left no flow behind.
    let flows = t.balancer_json(&["flows", "--json"]).unwrap();
    let client = local.to_string();
    assert!(
        flows
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["client"] != client.as_str()),
        "{flows}"
    );
    // The service still works for the live backends.
    let cookie = session_cookie(4, "be2");
    let who = t
        .client
        .run(move || get_with_cookie(Some(&cookie), http::CONNECT_TIMEOUT))
        .unwrap()
        .unwrap();
    assert_eq!(who, "be2");
}

//! The veth lab a new user builds by hand (README, "Trying it in a lab"): client and
//! backends in their own namespaces, veth pairs with checksum offload off and GRO on, and
//! no XDP program on the peers of the gateway's interfaces. There the balancer's `XDP_TX`
//! frames (syncookie SYN-ACKs, RSTs) stall on the peers; `attach` must say so, `status`
//! must show it, and `attach --veth-peer-pass` must fix it.

use std::{path::Path, time::Duration};

use balancer_tests::{
    daemon::{daemon_config, ConfigOptions, Daemon},
    harness,
    http::Conn,
    topology::{self, service_arg, vip, Topology},
};

const CONNECTIONS: usize = 500;
/// Connections tried before the fix, only to report what the trap does (timing-dependent,
/// so not asserted).
const BEFORE_FIX: usize = 10;

/// Whether `dev` in the namespace `ns` has an XDP program, as `ip link` reports it.
fn has_xdp(ns: &balancer_tests::netns::Netns, dev: &str) -> bool {
    let out = ns
        .ip(&["-d", "link", "show", "dev", dev])
        .expect("ip link show");
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

/// One GET with a session cookie naming `primary`; the backend that answered.
fn get_for(primary: &str, i: usize) -> anyhow::Result<String> {
    let mut conn = Conn::connect_timeout(vip(), Duration::from_secs(3))?;
    let cookie = format!("JSESSIONID=s{i:05}!{primary}!be9");
    let r = conn.request(
        "GET",
        "/",
        &[("Cookie", cookie.as_str()), ("Connection", "close")],
        &[],
    )?;
    anyhow::ensure!(r.status == 200, "status {}", r.status);
    Ok(r.text())
}

/// `n` connections from the client namespace one at a time, as a user's curl loop makes
/// them (with nothing else flowing towards the client, nothing but the fix wakes the peer
/// for a stalled SYN-ACK), each with a cookie naming the backends in turn; what went
/// wrong with each one that did not reach its backend.
fn sequential_failures(t: &Topology, n: usize) -> Vec<String> {
    let backends: Vec<String> = t.backends.iter().map(|b| b.name.clone()).collect();
    t.client
        .run(move || {
            (0..n)
                .filter_map(|i| {
                    let primary = &backends[i % backends.len()];
                    match get_for(primary, i) {
                        Ok(name) if name == *primary => None,
                        Ok(name) => Some(format!("#{i}: {name}, not {primary}")),
                        Err(e) => Some(format!("#{i}: {e:#}")),
                    }
                })
                .collect()
        })
        .expect("client namespace")
}

#[test]
fn bare_veth_lab_is_flagged_and_veth_peer_pass_fixes_it() {
    harness::root::assert_root();
    // Timing matters (stalled SYN-ACKs): not beside a flood.
    let _machine = topology::machine_shared();
    let mut t = Topology::two_arm_bare_peers(3).expect("building the lab");
    let ifaces = t.gateway_ifaces.clone();
    let mut attach: Vec<&str> = vec!["attach"];
    for i in &ifaces {
        attach.extend(["--iface", i.as_str()]);
    }
    t.will_be_attached();

    // As the quick start says: a warning per interface, naming the fix.
    let out = t.balancer_output(&attach).expect("running attach");
    assert!(out.status.success(), "attach failed: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for i in &ifaces {
        let line = stderr
            .lines()
            .find(|l| l.starts_with(&format!("warning: {i}: veth whose peer")))
            .unwrap_or_else(|| panic!("no XDP_TX warning for {i} in: {stderr}"));
        assert!(line.contains("--veth-peer-pass"), "{line}");
    }
    let status = t.balancer(&["status"]).expect("status");
    let status = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.matches("WARNING").count(), ifaces.len(), "{status}");
    let json = t
        .balancer_json(&["status", "--json"])
        .expect("status --json");
    for check in json["veth_checks"].as_array().expect("veth_checks") {
        assert_eq!(check["peer"]["peer_has_xdp"], false, "{check}");
        assert!(check["warning"].is_string(), "{check}");
    }

    t.start_servers(Path::new(crate::TESTSRV))
        .expect("starting servers");
    t.add_cookie_service_with_backends()
        .expect("adding the cookie service");
    let counter = |t: &Topology, c: &str| t.counter(c).expect("reading a counter");
    let rst_before = counter(&t, "rst_no_flow");
    let started = std::time::Instant::now();
    let failed_before = sequential_failures(&t, BEFORE_FIX).len();
    eprintln!(
        "before the fix: {} of {BEFORE_FIX} sequential connections completed in {:.1} s; \
         rst_no_flow +{}, syncookies_invalid {}",
        BEFORE_FIX - failed_before,
        started.elapsed().as_secs_f64(),
        counter(&t, "rst_no_flow") - rst_before,
        counter(&t, "syncookies_invalid"),
    );

    // The documented fix: attach again with --veth-peer-pass (and add the service again:
    // detaching removes the instance's maps).
    t.balancer(&["detach"]).expect("detach");
    let mut fixed = attach.clone();
    fixed.push("--veth-peer-pass");
    let out = t.balancer(&fixed).expect("attach --veth-peer-pass");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("warning"),
        "warnings after the fix: {stderr}"
    );
    for i in &ifaces {
        assert!(
            stdout.contains(&format!("pass program to the peer of {i}")),
            "{stdout}"
        );
    }
    assert!(
        has_xdp(&t.client, "eth0"),
        "client's eth0 has no XDP program"
    );
    assert!(has_xdp(&t.lan, "gw0"), "the lan's gw0 has no XDP program");
    let status = t.balancer(&["status"]).expect("status");
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(!status.contains("WARNING"), "{status}");
    assert_eq!(
        status.matches("has this instance's pass program").count(),
        ifaces.len(),
        "{status}"
    );

    t.add_cookie_service_with_backends()
        .expect("adding the cookie service again");
    let started = std::time::Instant::now();
    let failures = sequential_failures(&t, CONNECTIONS);
    eprintln!(
        "after the fix: {} of {CONNECTIONS} sequential connections completed in {:.1} s",
        CONNECTIONS - failures.len(),
        started.elapsed().as_secs_f64()
    );
    // No handshake ACK was refused: the syncookie SYN-ACKs arrived in time.
    assert_eq!(counter(&t, "syncookies_invalid"), 0);
    assert!(
        failures.is_empty(),
        "{} of {CONNECTIONS} connections failed through {}: {:?}",
        failures.len(),
        service_arg(),
        &failures[..failures.len().min(10)]
    );

    // Detaching takes the pass programs off the peers again.
    t.detach().expect("detach");
    assert!(
        !has_xdp(&t.client, "eth0"),
        "pass program left on the client's eth0"
    );
    assert!(
        !has_xdp(&t.lan, "gw0"),
        "pass program left on the lan's gw0"
    );
}

/// The daemon's side: the same bare lab gets one warning line per interface in the log
/// (and the peers keep no program) without `veth_peer_pass`; with `veth_peer_pass = true`
/// the daemon puts the pass program on the peers itself and connections go through.
#[test]
fn daemon_warns_about_bare_veth_peers_and_fixes_them_when_configured() {
    harness::root::assert_root();
    let _machine = topology::machine_shared();
    let mut t = Topology::two_arm_bare_peers(3).expect("building the lab");
    t.start_servers(Path::new(crate::TESTSRV))
        .expect("starting servers");
    let config = daemon_config(&t, &ConfigOptions::default());

    let mut d = Daemon::start(&mut t, &config).expect("starting the daemon");
    for i in t.gateway_ifaces.clone() {
        d.wait_for(
            &format!("the XDP_TX warning for {i}"),
            Duration::from_secs(10),
            || {
                Ok(d.log()
                    .lines()
                    .any(|l| {
                        l.contains(&format!("{i}: veth whose peer"))
                            && l.contains("--veth-peer-pass")
                    })
                    .then_some(()))
            },
        )
        .unwrap();
    }
    assert!(
        !has_xdp(&t.client, "eth0"),
        "the daemon changed a peer unasked"
    );
    d.stop().expect("stopping the daemon");
    t.balancer(&["detach"]).expect("detach");

    let fixed = config.replacen("[daemon]\n", "[daemon]\nveth_peer_pass = true\n", 1);
    let d = Daemon::start(&mut t, &fixed).expect("starting the daemon again");
    d.wait_for("the service", Duration::from_secs(10), || {
        Ok((d.backends()?.len() == 3).then_some(()))
    })
    .unwrap();
    assert!(
        has_xdp(&t.client, "eth0"),
        "client's eth0 has no XDP program"
    );
    assert!(has_xdp(&t.lan, "gw0"), "the lan's gw0 has no XDP program");
    assert!(!d.log().contains("veth whose peer"), "{}", d.log());
    let failures = sequential_failures(&t, 100);
    assert!(failures.is_empty(), "{failures:?}\n{}", d.log());
}

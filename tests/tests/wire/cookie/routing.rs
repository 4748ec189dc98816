//! Where a connection is bound: by its cookie, by the policy without one, for a first segment
//! that is not HTTP, and for every request of a keep-alive connection.

use super::*;

#[test]
fn requests_land_on_the_backend_their_cookie_names() {
    const N: usize = 1000;
    const THREADS: usize = 4;
    let _g = topology::machine_shared();
    let t = setup(3);
    let names: Vec<String> = t.backends.iter().map(|b| b.name.clone()).collect();
    let started = Instant::now();
    let results = in_parallel(&t.client, THREADS, |k| {
        (k..N)
            .step_by(THREADS)
            .map(|i| {
                let want = names[i % names.len()].clone();
                let got = get_with_cookie(Some(&session_cookie(i, &want)), http::CONNECT_TIMEOUT)
                    .map_err(|e| format!("{e:#}"));
                (i, want, got)
            })
            .collect::<Vec<_>>()
    });
    let elapsed = started.elapsed();
    let s = Stats::read(&t);
    let mut wrong = Vec::new();
    for (i, want, got) in results.iter().flatten() {
        if got.as_deref() != Ok(want.as_str()) {
            wrong.push(format!("request {i} for {want}: {got:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {N} requests did not reach their backend, first {:?}; counters: {}",
        wrong.len(),
        &wrong[..wrong.len().min(5)],
        s.summary()
    );
    eprintln!(
        "{N} cookie requests on fresh connections in {:.2} s ({:.0}/s)",
        elapsed.as_secs_f64(),
        N as f64 / elapsed.as_secs_f64()
    );
    let ctx = s.summary();
    assert_eq!(s.global("bindings_started"), N as u64, "{ctx}");
    assert_eq!(s.global("bindings_completed"), N as u64, "{ctx}");
    assert_eq!(s.global("new_flows"), N as u64, "{ctx}");
    assert!(s.global("syncookies_sent") >= N as u64, "{ctx}");
    // The handshake ACK and the first segment of every connection.
    assert!(s.global("syncookies_valid") >= 2 * N as u64, "{ctx}");
    // One-segment requests: nothing arrives while a connection is being bound.
    assert_eq!(s.global("drop_while_binding"), 0, "{ctx}");
    assert_no_failures(&s);
    for c in [
        "cookie_not_http",
        "cookie_no_header",
        "cookie_name_absent",
        "cookie_no_token",
        "cookie_beyond_first_segment",
        "cookie_unknown_token",
    ] {
        assert_eq!(s.global(c), 0, "{c}: {ctx}");
    }
    for (k, b) in t.backends.iter().enumerate() {
        let named = (0..N).filter(|i| i % t.backends.len() == k).count() as u64;
        assert_eq!(s.backend(&b.endpoint(), "cookie_hits"), named, "{ctx}");
        assert_eq!(s.backend(&b.endpoint(), "new_flows"), named, "{ctx}");
        assert_eq!(s.backend(&b.endpoint(), "cookie_misses"), 0, "{ctx}");
        assert_eq!(s.backend(&b.endpoint(), "failover_redirects"), 0, "{ctx}");
    }
    assert_eq!(s.backends_sum("cookie_hits"), N as u64, "{ctx}");
}

#[test]
fn requests_without_a_usable_cookie_follow_the_policy() {
    const N: usize = 300;
    const EACH: usize = 20;
    let _g = topology::machine_shared();
    let t = setup(3);
    let answers: Vec<Result<String, String>> = in_parallel(&t.client, 3, |k| {
        (k..N)
            .step_by(3)
            .map(|_| get_with_cookie(None, http::CONNECT_TIMEOUT).map_err(|e| format!("{e:#}")))
            .collect::<Vec<_>>()
    })
    .into_iter()
    .flatten()
    .collect();
    let errors: Vec<_> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        errors.is_empty(),
        "{} errors: {:?}",
        errors.len(),
        errors.first()
    );
    let answers: Vec<String> = answers.into_iter().map(Result::unwrap).collect();
    let spread = count_by_name(&answers);
    // Each within 1/3 +- 0.13 (60..=140 of 300), as in the plain-NAT test.
    for b in &t.backends {
        let n = spread.get(&b.name).copied().unwrap_or(0);
        assert!(
            (60..=140).contains(&n),
            "{} got {n} of {N}: {spread:?}",
            b.name
        );
    }
    let s = Stats::read(&t);
    let ctx = s.summary();
    assert_eq!(s.global("cookie_no_header"), N as u64, "{ctx}");
    assert_eq!(s.backends_sum("cookie_misses"), N as u64, "{ctx}");
    assert_eq!(s.backends_sum("cookie_hits"), 0, "{ctx}");
    for b in &t.backends {
        assert_eq!(
            s.backend(&b.endpoint(), "cookie_misses"),
            spread[&b.name] as u64,
            "{ctx}"
        );
    }

    // Cookies that name no usable server: each outcome has its counter, and the policy
    // answers.
    let cases: [(&str, &str); 3] = [
        ("theme=dark; SESSION=s1!be1!be2", "cookie_name_absent"),
        ("a=1; JSESSIONID=nodelimiter", "cookie_no_token"),
        ("JSESSIONID=s1!nosuch!be2", "cookie_unknown_token"),
    ];
    for (cookie, counter) in cases {
        let before = Stats::read(&t);
        let cookie = cookie.to_string();
        let answers = t
            .client
            .run(move || {
                (0..EACH)
                    .map(|_| get_with_cookie(Some(&cookie), http::CONNECT_TIMEOUT))
                    .collect::<anyhow::Result<Vec<_>>>()
            })
            .unwrap()
            .unwrap_or_else(|e| panic!("cookie for {counter}: {e:#}"));
        let after = Stats::read(&t);
        assert_eq!(
            after.global(counter) - before.global(counter),
            EACH as u64,
            "{}",
            after.summary()
        );
        assert_eq!(
            after.backends_sum("cookie_misses") - before.backends_sum("cookie_misses"),
            EACH as u64,
            "{}",
            after.summary()
        );
        assert!(answers.iter().all(|a| t.backend_index(a).is_some()));
    }
    let s = Stats::read(&t);
    assert_eq!(s.backends_sum("cookie_hits"), 0, "{}", s.summary());
    assert_no_failures(&s);
}

/// A TLS 1.2 ClientHello record (SNI `app.example.test`): what a TLS client sends first.
fn client_hello() -> Vec<u8> {
    let sni = b"app.example.test";
    let mut ext = Vec::new();
    // server_name: type 0, list of one host_name.
    ext.extend_from_slice(&[0x00, 0x00]);
    ext.extend_from_slice(&((sni.len() + 5) as u16).to_be_bytes());
    ext.extend_from_slice(&((sni.len() + 3) as u16).to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    ext.extend_from_slice(sni);
    let mut body = vec![0x03, 0x03];
    body.extend((0..32u8).map(|i| i.wrapping_mul(37).wrapping_add(11)));
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2f, 0x13, 0x01]); // cipher suites
    body.extend_from_slice(&[0x01, 0x00]); // compression: null
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

#[test]
fn non_http_first_segment_is_bound_by_policy() {
    const N: usize = 12;
    let _g = topology::machine_shared();
    let t = setup(3);
    let hello = client_hello();
    let sent = hello.clone();
    let answers = t
        .client
        .run(move || -> anyhow::Result<Vec<String>> {
            let mut names = Vec::new();
            for _ in 0..N {
                let mut s = TcpStream::connect_timeout(&vip(), http::CONNECT_TIMEOUT)?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(http::READ_TIMEOUT))?;
                s.write_all(&sent)?;
                // testsrv: `NAME\n`, then the bytes echoed.
                let mut name = Vec::new();
                let mut byte = [0u8; 1];
                while name.len() < 16 {
                    s.read_exact(&mut byte)?;
                    if byte[0] == b'\n' {
                        break;
                    }
                    name.push(byte[0]);
                }
                let mut echoed = vec![0u8; sent.len()];
                s.read_exact(&mut echoed)?;
                anyhow::ensure!(echoed == sent, "the backend received other bytes");
                names.push(String::from_utf8(name)?);
            }
            Ok(names)
        })
        .unwrap()
        .expect("TLS-like connections through a cookie-mode service");
    assert!(
        answers.iter().all(|a| t.backend_index(a).is_some()),
        "{answers:?}"
    );
    let s = Stats::read(&t);
    let ctx = s.summary();
    assert_eq!(s.global("cookie_not_http"), N as u64, "{ctx}");
    assert_eq!(s.backends_sum("cookie_misses"), N as u64, "{ctx}");
    assert_eq!(s.global("bindings_completed"), N as u64, "{ctx}");
    assert_no_failures(&s);
    eprintln!(
        "ClientHello ({} bytes) connections by backend: {:?}",
        hello.len(),
        count_by_name(&answers)
    );
}

#[test]
fn keepalive_connection_stays_on_the_cookie_backend() {
    let _g = topology::machine_shared();
    let t = setup(3);
    let cookie = session_cookie(2, "be2");
    let answers = t
        .client
        .run(move || -> anyhow::Result<Vec<(String, usize)>> {
            let mut c = Conn::connect(vip())?;
            let mut out = Vec::new();
            for i in 0..100 {
                // Some answers several segments long, to move the sequence numbers on.
                let path = if i % 10 == 9 { "/bytes/20000" } else { "/" };
                let r = c.request("GET", path, &[("Cookie", &cookie)], &[])?;
                anyhow::ensure!(r.status == 200, "request {i}: status {}", r.status);
                if path != "/" {
                    anyhow::ensure!(http::is_pattern(&r.body), "request {i}: bad body");
                }
                let who = r.header("x-backend").unwrap_or_default().to_string();
                out.push((who, r.body.len()));
            }
            Ok(out)
        })
        .unwrap()
        .expect("100 requests on one connection");
    assert_eq!(answers.len(), 100);
    for (i, (who, _)) in answers.iter().enumerate() {
        assert_eq!(who, "be2", "request {i}");
    }
    let s = Stats::read(&t);
    let ctx = s.summary();
    assert_eq!(s.global("bindings_completed"), 1, "{ctx}");
    let be2 = t.backends[1].endpoint();
    assert_eq!(s.backend(&be2, "cookie_hits"), 1, "{ctx}");
    assert!(s.backend(&be2, "packets_to") >= 100, "{ctx}");
    assert!(s.backend(&be2, "packets_from") >= 100, "{ctx}");
    assert_no_failures(&s);
}

//! Cookie outcomes and the backend choice: policy fallback, failover, unavailable
//! primaries, no backend.

use super::*;

// --- Cookie outcomes and backend choice ---------------------------------------------------

#[test]
fn cookie_outcomes_and_the_policy_fallback() {
    let (bed, svc, backends) = setup();
    let ids = ["be1", "be2", "be3"];
    let get_with = |header: &str| format!("GET / HTTP/1.1\r\nHost: a\r\n{header}\r\n\r\n");
    // (what, payload, cookie outcome counter, backend named by the cookie)
    type Case = (&'static str, Vec<u8>, Option<Counter>, Option<&'static str>);
    // A GET with `header` whose cookie outcome is `outcome` (the policy decides).
    let miss = |what, header: &str, outcome| -> Case {
        (what, get_with(header).into_bytes(), Some(outcome), None)
    };
    // A GET with `header` whose cookie names the backend with server id `id`.
    let hit =
        |what, header: &str, id| -> Case { (what, get_with(header).into_bytes(), None, Some(id)) };
    let tls_hello = vec![
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
    ];
    let partial_head = b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: curl/8.0\r\n".to_vec();
    let other_cookies = "Cookie: a=1; XJSESSIONID=s!be2!be3; jsessionid=s!be2; JSESSIONIDX=s!be1";
    use Counter::{
        CookieBeyondFirstSegment, CookieNameAbsent, CookieNoHeader, CookieNoToken, CookieNotHttp,
        CookieUnknownToken,
    };
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("TLS ClientHello", tls_hello, Some(CookieNotHttp), None),
        miss("no Cookie header", "Accept: */*", CookieNoHeader),
        miss("other cookies only", other_cookies, CookieNameAbsent),
        miss("session id without tokens", "Cookie: JSESSIONID=onlythesession", CookieNoToken),
        miss("empty primary token", "Cookie: JSESSIONID=s!!be3", CookieNoToken),
        ("head continues in the next segment", partial_head, Some(CookieBeyondFirstSegment), None),
        miss("unknown primary token", "Cookie: JSESSIONID=s!be9!be3", CookieUnknownToken),
        miss("token of another length", "Cookie: JSESSIONID=s!be22!be3", CookieUnknownToken),
        // Hits: among other cookies, quoted, lower-case header name, second header.
        hit("among other cookies", "Cookie: a=1; JSESSIONID=s!be1!be2; b=2", "be1"),
        hit("quoted value", "Cookie: JSESSIONID=\"s!be3!be1\"", "be3"),
        hit("lower-case header name", "cookie: JSESSIONID=s!be2", "be2"),
        hit("second Cookie header", "Cookie: a=1\r\nCookie: JSESSIONID=x!be1!be3", "be1"),
    ];
    let mut policy_backends = std::collections::BTreeSet::new();
    for (i, (what, payload, outcome, named)) in cases.iter().enumerate() {
        let conn = handshake(&bed, Conn::new(41000 + i as u16, 1000 * i as u32, 1460));
        let (backend, choice) = match named {
            Some(id) => (
                backends[ids.iter().position(|x| x == id).unwrap()],
                Choice::Hit,
            ),
            None => (
                bed.policy_backend(svc, &conn.key()).unwrap(),
                Choice::Policy,
            ),
        };
        if choice == Choice::Policy {
            policy_backends.insert(backend);
        }
        let before = bed.counters().unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            bind(&bed, &conn, payload, backend, choice, *outcome)
        }));
        if r.is_err() {
            panic!(
                "case {what:?} failed (counters moved: {:?})",
                bed.counters().unwrap().delta(&before)
            );
        }
    }
    // The fallback really is the policy's spread, not one fixed backend.
    let mut spread = policy_backends;
    for sport in 42000..42030 {
        let conn = handshake(&bed, Conn::new(sport, sport as u32, 1460));
        let b = bed.policy_backend(svc, &conn.key()).unwrap();
        bind(
            &bed,
            &conn,
            b"GET / HTTP/1.1\r\n\r\n",
            b,
            Choice::Policy,
            Some(Counter::CookieNoHeader),
        );
        spread.insert(b);
    }
    assert_eq!(spread.len(), 3, "policy picks: {spread:?}");
}

#[test]
fn failover_and_unavailable_primaries() {
    let (bed, svc, backends) = setup();
    let mut sport = 40000;
    let mut next = |bed: &TestBed| {
        sport += 1;
        handshake(bed, Conn::new(sport, sport as u32 * 3, 1460))
    };
    let to_be2 = http_get("be2");

    // Primary down, its sessions moved to be3: failover redirect.
    bed.set_backend_state(svc, backends[1], backend_state::DOWN)
        .unwrap();
    bed.set_failover(svc, backends[1], Some(backends[2]))
        .unwrap();
    let c = next(&bed);
    bind(&bed, &c, &to_be2, backends[2], Choice::Failover, None);
    // Draining counts as unavailable for new sessions too.
    bed.set_backend_state(svc, backends[1], backend_state::DRAINING)
        .unwrap();
    let c = next(&bed);
    bind(&bed, &c, &to_be2, backends[2], Choice::Failover, None);
    // The replacement down as well: the policy decides (never be2 nor be3).
    bed.set_backend_state(svc, backends[2], backend_state::DOWN)
        .unwrap();
    for _ in 0..5 {
        let c = next(&bed);
        let b = bed.policy_backend(svc, &c.key()).unwrap();
        assert_eq!(b, backends[0], "only be1 is up");
        bind(&bed, &c, &to_be2, b, Choice::Policy, None);
    }
    bed.set_backend_state(svc, backends[2], backend_state::UP)
        .unwrap();
    // No failover entry: the policy, which never picks the unavailable primary.
    bed.set_failover(svc, backends[1], None).unwrap();
    for _ in 0..10 {
        let c = next(&bed);
        let b = bed.policy_backend(svc, &c.key()).unwrap();
        assert_ne!(b, backends[1]);
        bind(&bed, &c, &to_be2, b, Choice::Policy, None);
    }
    // The primary back up: its sessions return to it, failover entry or not.
    bed.set_failover(svc, backends[1], Some(backends[2]))
        .unwrap();
    bed.set_backend_state(svc, backends[1], backend_state::UP)
        .unwrap();
    let c = next(&bed);
    bind(&bed, &c, &to_be2, backends[1], Choice::Hit, None);
    // A failover target is only taken for the failed primary's sessions.
    let c = next(&bed);
    bind(&bed, &c, &http_get("be1"), backends[0], Choice::Hit, None);
}

#[test]
fn no_backend_drops_the_first_segment() {
    let (bed, svc, backends) = setup();
    for b in &backends {
        bed.set_backend_state(svc, *b, backend_state::DOWN).unwrap();
    }
    // The handshake still works (it needs no backend)...
    let conn = handshake(&bed, Conn::new(40000, 1, 1460));
    // ...but the first segment has nowhere to go: dropped, nothing kept.
    let input = conn.data(&http_get("be2")).build();
    let r = run_counted(
        &bed,
        &input,
        Ingress::Client,
        XDP_DROP,
        // The pair is reported although the connection cannot be bound: the servers
        // named in the cookie are still each other's replication partners.
        &[
            (Counter::SyncookiesValid, 1),
            (Counter::CookiePairsReported, 1),
            (Counter::DropNoBackend, 1),
        ],
        "first segment without backends",
    );
    assert_eq!(r.output, input);
    assert_no_state(&bed, "after the drop");
}

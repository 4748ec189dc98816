//! Unit tests of the session rules.

use super::*;

fn cookie(s: &str) -> SessionCookie {
    SessionCookie::parse(s).unwrap_or_else(|| panic!("{s:?} does not parse"))
}

fn ids(list: &[&str]) -> impl FnMut() -> String {
    let mut list: Vec<String> = list.iter().rev().map(|s| s.to_string()).collect();
    move || list.pop().expect("enough ids")
}

fn update(b: Begin) -> Update {
    match b {
        Begin::Update(u) => u,
        Begin::Moved { owner } => panic!("moved to {owner}"),
    }
}

fn replica(session: &str, primary: &str, epoch: u64, counter: u64) -> Replica {
    Replica {
        session: session.into(),
        primary: primary.into(),
        epoch,
        counter,
        last_request: None,
    }
}

/// A replica whose update answered request `request`.
fn replica_of_request(
    session: &str,
    primary: &str,
    epoch: u64,
    counter: u64,
    request: &str,
) -> Replica {
    Replica {
        last_request: Some(request.into()),
        ..replica(session, primary, epoch, counter)
    }
}

/// The answer to a replica from a store that knows `owner` holds the session.
fn stale(owner: &str) -> Received {
    Received::Stale {
        owner: owner.into(),
    }
}

/// The version of `session` in `store`.
fn version_of(store: &Store, session: &str) -> (u64, u64) {
    let v = &store.get(session).unwrap().version;
    (v.epoch, v.counter)
}

fn peers(list: &[&str]) -> Peers {
    let peers = list
        .iter()
        .enumerate()
        .map(|(i, id)| Peer {
            id: id.to_string(),
            addr: SocketAddr::from(([127, 0, 0, 1], 8000 + i as u16)),
        })
        .collect();
    Peers::new("self", peers).unwrap()
}

#[test]
fn cookie_format_round_trip() {
    let c = SessionCookie {
        session: "0123abcd".into(),
        primary: "a".into(),
        secondary: Some("b".into()),
    };
    assert_eq!(c.to_string(), "0123abcd!a!b");
    assert_eq!(
        c.set_cookie("JSESSIONID"),
        "JSESSIONID=0123abcd!a!b; Path=/"
    );
    assert_eq!(cookie(&c.to_string()), c);
    let none = SessionCookie {
        secondary: None,
        ..c
    };
    assert_eq!(none.to_string(), "0123abcd!a!NONE");
    assert_eq!(cookie("0123abcd!a!NONE"), none);
    assert_eq!(cookie("0123abcd!a"), none);
}

#[test]
fn cookie_odd_inputs() {
    assert_eq!(cookie(" \"s1!a!b\" ").session, "s1");
    assert_eq!(
        cookie("s1!a!b!more!segments").secondary.as_deref(),
        Some("b")
    );
    assert_eq!(cookie("s1!app-1.x!app:2").primary, "app-1.x");
    for bad in [
        "",
        "s1",
        "!a!b",
        "s1!!b",
        "s1!a!",
        "s1!NONE!b",
        "s 1!a!b",
        "s1!a b!c",
        "\"s1!a!b",
    ] {
        assert_eq!(SessionCookie::parse(bad), None, "{bad:?}");
    }
    let long = "x".repeat(MAX_TOKEN + 1);
    assert_eq!(SessionCookie::parse(&format!("{long}!a!b")), None);
}

#[test]
fn cookie_from_headers() {
    let h = |v: &str| {
        vec![
            ("Host".to_string(), "x".to_string()),
            ("cookie".into(), v.into()),
        ]
    };
    let found = |v: &str| SessionCookie::from_headers(&h(v), "JSESSIONID");
    assert_eq!(found("JSESSIONID=s!a!b").unwrap().session, "s");
    assert_eq!(found("x=1; JSESSIONID = s!a!b ;y=2").unwrap().primary, "a");
    // Names are case-sensitive and whole; a malformed one does not hide a good one.
    assert_eq!(found("jsessionid=s!a!b"), None);
    assert_eq!(found("XJSESSIONID=s!a!b"), None);
    assert_eq!(
        found("JSESSIONID=junk; JSESSIONID=t!a!b").unwrap().session,
        "t"
    );
    assert_eq!(found("other=s!a!b"), None);
    let two = vec![
        ("Cookie".to_string(), "a=1".to_string()),
        ("Cookie".to_string(), "SID=s!a!b".to_string()),
    ];
    assert_eq!(
        SessionCookie::from_headers(&two, "SID").unwrap().session,
        "s"
    );
}

#[test]
fn tokens_and_peers() {
    assert!(check_server_id("app1").is_ok());
    for bad in ["", "NONE", "a!b", "a;b", "a b", "a=b", "é"] {
        assert!(check_server_id(bad).is_err(), "{bad:?}");
    }
    let p: Peer = "b=127.0.0.1:8080".parse().unwrap();
    assert_eq!((p.id.as_str(), p.addr.port()), ("b", 8080));
    for bad in ["b", "b=", "=127.0.0.1:1", "b=127.0.0.1", "NONE=127.0.0.1:1"] {
        assert!(bad.parse::<Peer>().is_err(), "{bad:?}");
    }
    let two = |a: &str, b: &str| {
        let p = |id: &str| Peer {
            id: id.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
        };
        Peers::new("self", vec![p(a), p(b)]).is_ok()
    };
    assert!(two("a", "b"));
    assert!(!two("a", "a"));
    assert!(!two("a", "self"));
}

#[test]
fn session_ids_are_unique_hex() {
    let a = new_session_id();
    assert_eq!(a.len(), 16);
    assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a, new_session_id());
}

#[test]
fn secondary_choice_is_deterministic_and_skips() {
    let p = peers(&["a", "b", "c", "d", "e"]);
    let now = Instant::now();
    fn order(p: &Peers, key: &str, exclude: Option<&str>, now: Instant) -> Vec<String> {
        p.candidates(key, exclude, now)
            .into_iter()
            .map(|p| p.id)
            .collect()
    }
    let full = order(&p, "s1", None, now);
    assert_eq!(full.len(), 5);
    assert_eq!(full, order(&p, "s1", None, now));
    // Different keys give different orders (spread); the peers' list order does not
    // matter.
    let firsts: std::collections::HashSet<String> = (0..50)
        .map(|i| order(&p, &format!("s{i}"), None, now)[0].clone())
        .collect();
    assert!(firsts.len() >= 4, "{firsts:?}");
    let mut reversed = p.all().to_vec();
    reversed.reverse();
    let r = Peers::new("self", reversed).unwrap();
    assert_eq!(order(&r, "s1", None, now), full);
    // Excluding or failing one keeps the others' order.
    let without_first: Vec<String> = full[1..].to_vec();
    assert_eq!(order(&p, "s1", Some(&full[0]), now), without_first);
    let mut q = peers(&["a", "b", "c", "d", "e"]);
    assert!(q.mark_failed(&full[0], now), "news");
    assert!(!q.mark_failed(&full[0], now), "known");
    assert_eq!(order(&q, "s1", None, now), without_first);
    assert_eq!(
        order(&q, "s1", None, now + FAIL_COOLDOWN),
        full,
        "back after the cooldown"
    );
    assert!(q.mark_failed(&full[0], now + FAIL_COOLDOWN), "news again");
    q.mark_ok(&full[0]);
    assert_eq!(order(&q, "s1", None, now), full);
}

#[test]
fn new_and_continued_sessions() {
    let mut s = Store::new("a");
    let u = update(s.begin(None, None, ids(&["s1"])));
    assert_eq!(u.event, Event::New);
    assert_eq!(u.replica, replica("s1", "a", 0, 1));
    s.commit("s1", u.replica.version(), Some("b"));
    let c = cookie("s1!a!b");
    for n in 2..=5 {
        let u = update(s.begin(Some(&c), None, ids(&[])));
        assert_eq!((u.event.clone(), u.replica.counter), (Event::Continued, n));
    }
    // A cookie with another primary and secondary still continues a session held
    // here as primary (an older cookie, after a takeover by this server).
    let u = update(s.begin(Some(&cookie("s1!x!y")), None, ids(&[])));
    assert_eq!((u.event, u.replica.counter), (Event::Continued, 6));
    assert_eq!(
        s.get("s1").unwrap().role,
        Role::Primary {
            secondary: Some("b".into())
        }
    );
    assert_eq!(s.counts(), (1, 0));
    assert_eq!(s.stats.created, 1);
}

#[test]
fn request_ids_make_retries_idempotent() {
    let mut s = Store::new("a");
    let u = update(s.begin(None, Some("r1"), ids(&["s1"])));
    assert_eq!(u.replica.last_request.as_deref(), Some("r1"));
    let c = cookie("s1!a!b");
    let again = update(s.begin(Some(&c), Some("r1"), ids(&[])));
    assert!(again.replayed);
    assert_eq!(again.replica.counter, 1);
    let next = update(s.begin(Some(&c), Some("r2"), ids(&[])));
    assert_eq!((next.replayed, next.replica.counter), (false, 2));
    // Without ids every request counts.
    let u = update(s.begin(Some(&c), None, ids(&[])));
    assert_eq!(u.replica.counter, 3);
    let u = update(s.begin(Some(&c), None, ids(&[])));
    assert_eq!(u.replica.counter, 4);
    assert_eq!(s.stats.replayed, 1);
}

#[test]
fn takeover_only_by_the_named_secondary() {
    let mut b = Store::new("b");
    assert_eq!(
        b.receive(&replica_of_request("s1", "a", 0, 7, "r7")),
        Received::Stored
    );
    // Cookie names another secondary: this replica may be behind the real one.
    let u = update(b.begin(Some(&cookie("s1!a!c")), None, ids(&["n1"])));
    assert!(matches!(u.event, Event::Lost { .. }));
    assert_eq!((u.replica.session.as_str(), u.replica.counter), ("n1", 1));
    assert_eq!(b.stats.lost, 1);
    // Named secondary: takeover, next epoch, counter continues.
    let u = update(b.begin(Some(&cookie("s1!a!b")), Some("r8"), ids(&[])));
    assert_eq!(
        u.event,
        Event::Takeover {
            old_primary: "a".into()
        }
    );
    assert_eq!((u.replica.epoch, u.replica.counter), (1, 8));
    assert_eq!(u.replica.primary, "b");
    assert_eq!(b.stats.takeovers, 1);
    assert_eq!(b.get("s1").unwrap().role, Role::Primary { secondary: None });
    // The old cookie again (the client retried): now a normal update.
    let u = update(b.begin(Some(&cookie("s1!a!b")), None, ids(&[])));
    assert_eq!((u.event, u.replica.counter), (Event::Continued, 9));
    assert_eq!(b.stats.takeovers, 1);
}

#[test]
fn takeover_replays_the_request_the_old_primary_replicated() {
    // The primary replicated r8 and died before answering; the client retries r8 at
    // the secondary, which answers counter 8 again instead of 9.
    let mut b = Store::new("b");
    b.receive(&replica_of_request("s1", "a", 0, 8, "r8"));
    let u = update(b.begin(Some(&cookie("s1!a!b")), Some("r8"), ids(&[])));
    assert!(matches!(u.event, Event::Takeover { .. }));
    assert_eq!(
        (u.replayed, u.replica.epoch, u.replica.counter),
        (true, 1, 8)
    );
}

#[test]
fn unknown_sessions_are_lost() {
    let mut a = Store::new("a");
    for c in ["zz!a!b", "zz!b!a", "zz!b!c"] {
        let u = update(a.begin(Some(&cookie(c)), None, ids(&["n"])));
        assert_eq!(u.event, Event::Lost { cookie: cookie(c) }, "{c}");
        assert_ne!(u.replica.session, "zz");
        a.sessions.clear();
    }
    assert_eq!(a.stats.lost, 3);
}

#[test]
fn stepped_down_primary_sends_clients_to_the_owner() {
    let mut a = Store::new("a");
    update(a.begin(None, None, ids(&["s1"])));
    // b took over (epoch 1) and replicates to a, which steps down.
    assert_eq!(a.receive(&replica("s1", "b", 1, 5)), Received::Stored);
    assert_eq!(
        a.begin(Some(&cookie("s1!a!b")), None, ids(&[])),
        Begin::Moved { owner: "b".into() }
    );
    assert_eq!(a.stats.conflicts, 1);
}

#[test]
fn replicas_never_go_back() {
    let mut b = Store::new("b");
    assert_eq!(b.receive(&replica("s1", "a", 0, 3)), Received::Stored);
    assert_eq!(b.receive(&replica("s1", "a", 0, 3)), Received::Current);
    assert_eq!(b.receive(&replica("s1", "a", 0, 2)), Received::Current);
    assert_eq!(b.get("s1").unwrap().version.counter, 3);
    assert_eq!(b.receive(&replica("s1", "a", 0, 4)), Received::Stored);
    // A new owner (takeover elsewhere) replaces the replica even with a lower counter
    // (it cannot have one, but the epoch decides).
    assert_eq!(b.receive(&replica("s1", "c", 1, 4)), Received::Stored);
    assert_eq!(
        b.get("s1").unwrap().role,
        Role::Replica {
            primary: "c".into()
        }
    );
    // The old primary of epoch 0 is refused and told the owner.
    assert_eq!(b.receive(&replica("s1", "a", 0, 9)), stale("c"));
    assert_eq!(version_of(&b, "s1"), (1, 4), "(epoch, counter)");
    assert_eq!(b.stats.replicas_stored, 3);
    assert_eq!(b.stats.replicas_refused, 1);
    assert_eq!(b.counts(), (0, 1));
}

#[test]
fn replica_of_a_session_held_as_primary() {
    // b took over s1 (epoch 1); the old primary a, cut off but alive, replicates its
    // epoch-0 state to b: refused, and a drops its stale copy.
    let mut b = Store::new("b");
    b.receive(&replica("s1", "a", 0, 4));
    update(b.begin(Some(&cookie("s1!a!b")), None, ids(&[])));
    assert_eq!(b.receive(&replica("s1", "a", 0, 9)), stale("b"));
    // Same epoch, two owners: the holder keeps it.
    assert_eq!(b.receive(&replica("s1", "c", 1, 9)), stale("b"));
    assert_eq!(version_of(&b, "s1"), (1, 5), "(epoch, counter)");

    let mut a = Store::new("a");
    let u = update(a.begin(None, None, ids(&["s1"])));
    a.abandon("s1", u.replica.version());
    assert_eq!(a.get("s1"), None);
    assert_eq!(a.stats.conflicts, 1);
}

#[test]
fn commit_keeps_the_newest_secondary() {
    let mut a = Store::new("a");
    let first = update(a.begin(None, None, ids(&["s1"])));
    let c = cookie("s1!a!b");
    let second = update(a.begin(Some(&c), None, ids(&[])));
    // The second update's replication finished first.
    a.commit("s1", second.replica.version(), Some("c"));
    a.commit("s1", first.replica.version(), Some("b"));
    assert_eq!(
        a.get("s1").unwrap().role,
        Role::Primary {
            secondary: Some("c".into())
        }
    );
    a.commit("s1", second.replica.version(), None);
    assert_eq!(a.get("s1").unwrap().role, Role::Primary { secondary: None });
    assert_eq!(a.stats.unreplicated, 1);
}

use std::{
    net::{Ipv4Addr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::net::UdpSocket;

use super::{
    agent::check_targets,
    message::is_visible_ascii,
    net::{lock, next_seq, LogLimiter},
    *,
};

/// The local clock of most tests, in ms since the epoch.
const NOW_MS: u64 = 1_700_000_000_000;

fn key() -> GroupKey {
    GroupKey::from_bytes(b"correct horse battery staple 0123456789").unwrap()
}

fn other_key() -> GroupKey {
    GroupKey::from_bytes(b"another group, another secret, 0123456789").unwrap()
}

fn src() -> SocketAddr {
    "10.0.0.5:40000".parse().unwrap()
}

fn msg(name: &str, seq: u64, timestamp_ms: u64) -> HostMessage {
    HostMessage {
        name: name.into(),
        addr: Ipv4Addr::new(10, 0, 0, 5),
        interfaces: vec![InterfaceInfo {
            name: "eth0".into(),
            ip: Ipv4Addr::new(10, 0, 0, 5),
            prefix_len: 24,
        }],
        load: 0.25,
        timestamp_ms,
        seq,
        role: Role::Agent,
        server_id: Some("app1".into()),
        secondary: Some("app2".into()),
    }
}

fn datagram(name: &str, seq: u64, timestamp_ms: u64) -> Vec<u8> {
    msg(name, seq, timestamp_ms).encode(&key()).unwrap()
}

fn table() -> MemberTable {
    MemberTable::new(key(), MemberSettings::default())
}

/// A correctly signed frame around any payload (encode refuses invalid messages).
fn sign_raw(payload: &[u8]) -> Vec<u8> {
    let mut d = MAGIC.to_vec();
    d.extend_from_slice(payload);
    let tag = key().tag(&d);
    d.extend_from_slice(&tag);
    d
}

fn trusted_names(t: &MemberTable, now: Instant) -> Vec<String> {
    let mut names: Vec<String> = t.trusted_up(now).map(|m| m.name.clone()).collect();
    names.sort();
    names
}

fn view<'a>(rows: &'a [MemberView], name: &str, trusted: bool) -> &'a MemberView {
    rows.iter()
        .find(|r| r.name == name && r.trusted == trusted)
        .unwrap()
}

/// xorshift64: deterministic pseudo-random bytes without a crate.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn round_trip() {
    let m = msg("app1", 7, NOW_MS);
    let d = m.encode(&key()).unwrap();
    assert!(d.starts_with(MAGIC) && d.len() <= MAX_DATAGRAM);
    assert_eq!(HostMessage::decode(&d, &key()).unwrap(), m);

    let mut t = table();
    let now = Instant::now();
    let o = t.observe(src(), &d, NOW_MS - 1500, now).unwrap();
    assert_eq!(
        o,
        Observed {
            name: "app1".into(),
            became_up: true
        }
    );
    let rows = t.members(now);
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert!(r.trusted && r.up);
    assert_eq!((r.addr, r.role, r.source), (m.addr, Role::Agent, src()));
    assert_eq!(r.time_offset_ms, 1500, "sender's clock minus ours");
    assert_eq!(r.interfaces, m.interfaces);
    assert_eq!(r.server_id.as_deref(), Some("app1"));
    assert_eq!(t.counters().accepted, 1);
    // The view is what `balancer members --json` prints.
    let json = serde_json::to_value(&rows).unwrap();
    assert_eq!(json[0]["role"], "agent");
    assert_eq!(json[0]["addr"], "10.0.0.5");
}

#[test]
fn reconfiguring_keeps_members_unless_the_key_changes() {
    let mut t = table();
    let now = Instant::now();
    t.observe(src(), &datagram("app1", 1, NOW_MS), NOW_MS, now)
        .unwrap();
    let longer = MemberSettings {
        limit: Duration::from_secs(90),
        ..MemberSettings::default()
    };
    t.reconfigure(key(), longer);
    assert_eq!(trusted_names(&t, now), ["app1"]);
    assert_eq!(t.settings().limit, Duration::from_secs(90));
    assert!(key().same_as(&key()) && !key().same_as(&other_key()));
    t.reconfigure(other_key(), longer);
    assert!(trusted_names(&t, now).is_empty(), "trust needs the new key");
    let d = msg("app1", 2, NOW_MS).encode(&other_key()).unwrap();
    t.observe(src(), &d, NOW_MS, now).unwrap();
    assert_eq!(trusted_names(&t, now), ["app1"]);
}

#[test]
fn wrong_key_is_bad_signature_and_never_trusted() {
    let d = msg("app1", 1, NOW_MS).encode(&other_key()).unwrap();
    assert_eq!(HostMessage::decode(&d, &key()), Err(Rejected::BadSignature));
    let mut t = table();
    let now = Instant::now();
    for _ in 0..3 {
        assert_eq!(
            t.observe(src(), &d, NOW_MS, now),
            Err(Rejected::BadSignature)
        );
    }
    assert!(trusted_names(&t, now).is_empty());
    assert!(!t.is_up("app1", now));
    assert!(t.announced_pairs(now).is_empty());
    // Visible, but as an untrusted row that is not up.
    let rows = t.members(now);
    assert_eq!(rows.len(), 1);
    assert!(!rows[0].trusted && !rows[0].up);
    assert_eq!(t.counters().bad_signature, 3);
    assert_eq!(t.counters().accepted, 0);
}

#[test]
fn unsigned_and_truncated_are_rejected_at_every_length() {
    let d = datagram("app1", 1, NOW_MS);
    let mut t = table();
    let now = Instant::now();
    for len in 0..d.len() {
        let r = t.observe(src(), &d[..len], NOW_MS, now);
        assert!(r.is_err(), "accepted a datagram cut to {len} bytes");
    }
    // The payload without any tag.
    let unsigned = &d[..d.len() - TAG_LEN];
    assert!(t.observe(src(), unsigned, NOW_MS, now).is_err());
    // A zeroed tag.
    let mut zero_tag = d.clone();
    zero_tag[d.len() - TAG_LEN..].fill(0);
    assert_eq!(
        t.observe(src(), &zero_tag, NOW_MS, now),
        Err(Rejected::BadSignature)
    );
    assert!(trusted_names(&t, now).is_empty());
    assert!(t.counters().truncated >= (MAGIC.len() + TAG_LEN) as u64);
    // The intact datagram is still good: nothing above consumed its seq.
    assert!(t.observe(src(), &d, NOW_MS, now).is_ok());
}

#[test]
fn oversized_is_rejected_and_never_built() {
    let mut t = table();
    let now = Instant::now();
    for len in [MAX_DATAGRAM + 1, RECV_BUFFER, 65_507] {
        let mut d = datagram("app1", 1, NOW_MS);
        d.resize(len, b' ');
        assert_eq!(t.observe(src(), &d, NOW_MS, now), Err(Rejected::Oversized));
    }
    assert_eq!(t.counters().oversized, 3);

    // The largest message the bounds allow does not fit: encode refuses it...
    let mut big = msg(&"n".repeat(MAX_NAME_LEN), u64::MAX, u64::MAX);
    big.server_id = Some("s".repeat(MAX_TOKEN_LEN));
    big.secondary = Some("t".repeat(MAX_TOKEN_LEN));
    big.interfaces = (0..MAX_INTERFACES)
        .map(|i| InterfaceInfo {
            name: format!("{i:0>15}"),
            ip: Ipv4Addr::new(255, 255, 255, 254),
            prefix_len: 32,
        })
        .collect();
    big.load = 123_456.79;
    assert!(matches!(
        big.encode(&key()),
        Err(GroupError::MessageTooLarge { len }) if len > MAX_DATAGRAM
    ));
    // ...and truncate_to_fit drops just enough interfaces.
    big.truncate_to_fit();
    assert!(big.interfaces.len() < MAX_INTERFACES && !big.interfaces.is_empty());
    let d = big.encode(&key()).unwrap();
    assert!(d.len() <= MAX_DATAGRAM);
    assert_eq!(HostMessage::decode(&d, &key()).unwrap(), big);
}

#[test]
fn same_datagram_twice_is_replayed() {
    let d = datagram("app1", 5, NOW_MS);
    let mut t = table();
    let now = Instant::now();
    assert!(t.observe(src(), &d, NOW_MS, now).is_ok());
    let later = now + Duration::from_secs(1);
    assert_eq!(
        t.observe(src(), &d, NOW_MS + 1000, later),
        Err(Rejected::Replayed)
    );
    assert_eq!(t.counters().replayed, 1);
    // The replay did not refresh the member.
    let rows = t.members(later);
    assert_eq!(rows[0].last_seen_s, 1.0);
}

#[test]
fn older_seq_is_replayed_newer_is_accepted() {
    let mut t = table();
    let now = Instant::now();
    assert!(t
        .observe(src(), &datagram("app1", 10, NOW_MS), NOW_MS, now)
        .is_ok());
    let older = datagram("app1", 9, NOW_MS + 1);
    assert_eq!(
        t.observe(src(), &older, NOW_MS, now),
        Err(Rejected::Replayed)
    );
    let newer = datagram("app1", 11, NOW_MS + 2);
    let o = t.observe(src(), &newer, NOW_MS, now).unwrap();
    assert!(!o.became_up, "it was up already");
    // Another name has its own sequence.
    assert!(t
        .observe(src(), &datagram("app2", 1, NOW_MS), NOW_MS, now)
        .is_ok());
}

#[test]
fn restarted_sender_with_lower_seq_is_accepted_after_replays_expire() {
    let mut t = table();
    let t0 = Instant::now();
    assert!(t
        .observe(src(), &datagram("app1", 1000, NOW_MS), NOW_MS, t0)
        .is_ok());
    // Within 2 x max_skew of the last accepted message, a lower seq may be a replay.
    let t1 = t0 + Duration::from_secs(59);
    let early = datagram("app1", 5, NOW_MS + 59_000);
    assert_eq!(
        t.observe(src(), &early, NOW_MS + 59_000, t1),
        Err(Rejected::Replayed)
    );
    // After that, every accepted message is stale: a lower seq is a restart.
    let t2 = t0 + Duration::from_secs(61);
    let late = datagram("app1", 6, NOW_MS + 61_000);
    assert!(t.observe(src(), &late, NOW_MS + 61_000, t2).is_ok());
    // And the old incarnation's messages are stale by now.
    let old = datagram("app1", 1001, NOW_MS);
    assert_eq!(
        t.observe(src(), &old, NOW_MS + 61_000, t2),
        Err(Rejected::Stale)
    );
}

#[test]
fn far_future_and_stale_timestamps_are_rejected() {
    let mut t = table();
    let now = Instant::now();
    let cases = [
        (NOW_MS + 31_000, Err(Rejected::Future)),
        (u64::MAX, Err(Rejected::Future)),
        (NOW_MS - 31_000, Err(Rejected::Stale)),
        (0, Err(Rejected::Stale)),
    ];
    for (seq, (ts, expected)) in cases.into_iter().enumerate() {
        let d = datagram("app1", seq as u64 + 1, ts);
        assert_eq!(
            t.observe(src(), &d, NOW_MS, now).map(|_| ()),
            expected,
            "{ts}"
        );
    }
    assert!(trusted_names(&t, now).is_empty());
    assert_eq!((t.counters().future, t.counters().stale), (2, 2));
    // Within the skew either way is fine.
    assert!(t
        .observe(src(), &datagram("app1", 10, NOW_MS + 29_000), NOW_MS, now)
        .is_ok());
    assert!(t
        .observe(src(), &datagram("app1", 11, NOW_MS - 29_000), NOW_MS, now)
        .is_ok());
}

#[test]
fn bad_signature_does_not_refresh_nor_move_a_trusted_member() {
    let mut t = table();
    let t0 = Instant::now();
    assert!(t
        .observe(src(), &datagram("app1", 1, NOW_MS), NOW_MS, t0)
        .is_ok());

    let attacker: SocketAddr = "192.0.2.66:1234".parse().unwrap();
    let t1 = t0 + Duration::from_secs(50);
    let mut forged = msg("app1", 2, NOW_MS + 50_000);
    forged.addr = Ipv4Addr::new(192, 0, 2, 66);
    let d = forged.encode(&other_key()).unwrap();
    assert_eq!(
        t.observe(attacker, &d, NOW_MS + 50_000, t1),
        Err(Rejected::BadSignature)
    );

    let rows = t.members(t1);
    let good = view(&rows, "app1", true);
    assert_eq!(good.last_seen_s, 50.0);
    assert_eq!(good.addr, Ipv4Addr::new(10, 0, 0, 5));
    assert_eq!(good.source, src());
    // The forgery is visible as a separate, untrusted row.
    let bad = view(&rows, "app1", false);
    assert_eq!(
        (bad.addr, bad.source, bad.up),
        (forged.addr, attacker, false)
    );
    // Forgeries cannot keep the member alive past the limit.
    let t2 = t0 + Duration::from_secs(61);
    let d = msg("app1", 3, NOW_MS + 61_000)
        .encode(&other_key())
        .unwrap();
    assert!(t.observe(attacker, &d, NOW_MS + 61_000, t2).is_err());
    assert!(!t.is_up("app1", t2));
}

#[test]
fn member_goes_down_after_the_limit_and_comes_back() {
    let mut t = table();
    let t0 = Instant::now();
    assert!(t
        .observe(src(), &datagram("app1", 1, NOW_MS), NOW_MS, t0)
        .is_ok());
    assert!(t.is_up("app1", t0 + Duration::from_secs(60)));
    assert_eq!(t.announced_pairs(t0), vec![("app1".into(), "app2".into())]);

    let t1 = t0 + Duration::from_secs(61);
    assert!(!t.is_up("app1", t1));
    let rows = t.members(t1);
    assert!(
        rows[0].trusted && !rows[0].up,
        "still known to be in the group"
    );
    assert!(trusted_names(&t, t1).is_empty());
    assert!(t.announced_pairs(t1).is_empty());

    let d = datagram("app1", 2, NOW_MS + 61_000);
    let o = t.observe(src(), &d, NOW_MS + 61_000, t1).unwrap();
    assert!(o.became_up);
    assert!(t.is_up("app1", t1));
}

#[test]
fn untrusted_rows_stay_bounded_under_a_flood() {
    let mut t = table();
    let now = Instant::now();
    let max = t.settings().max_untrusted;
    for i in 0..10_000u64 {
        let from = SocketAddr::from(([192, 0, 2, (i % 250) as u8], 1000 + (i % 60_000) as u16));
        let d = msg(&format!("junk{i}"), i, NOW_MS)
            .encode(&other_key())
            .unwrap();
        assert_eq!(
            t.observe(from, &d, NOW_MS, now),
            Err(Rejected::BadSignature)
        );
    }
    assert_eq!(t.untrusted.rows.len(), max);
    assert_eq!(t.untrusted.order.len(), max);
    assert_eq!(t.counters().untrusted_evicted, 10_000 - max as u64);
    assert!(trusted_names(&t, now).is_empty());
    // The most recent ones are kept.
    let rows = t.members(now);
    assert!(rows.iter().any(|r| r.name == "junk9999"));
    assert!(!rows.iter().any(|r| r.name == "junk0"));

    let mut none = MemberTable::new(
        key(),
        MemberSettings {
            max_untrusted: 0,
            ..MemberSettings::default()
        },
    );
    let d = msg("junk", 1, NOW_MS).encode(&other_key()).unwrap();
    assert!(none.observe(src(), &d, NOW_MS, now).is_err());
    assert!(none.members(now).is_empty());
}

#[test]
fn untrusted_row_is_dropped_once_the_same_sender_signs_correctly() {
    let mut t = table();
    let now = Instant::now();
    let wrong = msg("app1", 1, NOW_MS).encode(&other_key()).unwrap();
    assert!(t.observe(src(), &wrong, NOW_MS, now).is_err());
    assert_eq!(t.members(now).len(), 1);
    assert!(t
        .observe(src(), &datagram("app1", 2, NOW_MS), NOW_MS, now)
        .is_ok());
    let rows = t.members(now);
    assert_eq!(rows.len(), 1);
    assert!(rows[0].trusted);
}

#[test]
fn signed_but_malformed_or_invalid_payloads_are_rejected() {
    let mut t = table();
    let now = Instant::now();
    let junk = sign_raw(b"{not json");
    assert_eq!(
        t.observe(src(), &junk, NOW_MS, now),
        Err(Rejected::Malformed)
    );
    let mut other_magic = datagram("app1", 1, NOW_MS);
    other_magic[3] = b'2';
    assert_eq!(
        t.observe(src(), &other_magic, NOW_MS, now),
        Err(Rejected::Malformed)
    );

    type Breaker = fn(&mut HostMessage);
    let invalid: [(&str, Breaker); 9] = [
        ("name", |m| m.name = "two words".into()),
        ("name", |m| m.name = "x".repeat(65)),
        ("name", |m| m.name = String::new()),
        ("addr", |m| m.addr = Ipv4Addr::UNSPECIFIED),
        ("interfaces", |m| {
            m.interfaces = vec![m.interfaces[0].clone(); 17]
        }),
        ("prefix_len", |m| m.interfaces[0].prefix_len = 33),
        ("load", |m| m.load = -1.0),
        ("server_id", |m| m.server_id = Some("a;b".into())),
        ("secondary", |m| m.server_id = None),
    ];
    for (i, (field, break_it)) in invalid.into_iter().enumerate() {
        let mut m = msg("app1", 100 + i as u64, NOW_MS);
        break_it(&mut m);
        assert!(matches!(
            m.encode(&key()),
            Err(GroupError::InvalidMessage { .. })
        ));
        let d = sign_raw(&serde_json::to_vec(&m).unwrap());
        assert_eq!(
            t.observe(src(), &d, NOW_MS, now),
            Err(Rejected::Invalid(field))
        );
    }
    let mut same = msg("app1", 1, NOW_MS);
    same.secondary = same.server_id.clone();
    assert!(same.validate().is_err(), "a server cannot back itself up");
    assert!(trusted_names(&t, now).is_empty());
    assert_eq!(t.counters().invalid, 9);
    assert_eq!(t.counters().malformed, 2);
}

#[test]
fn random_bytes_never_panic_nor_trust() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut t = table();
    let now = Instant::now();
    let valid = datagram("app1", 1, NOW_MS);
    for i in 0..20_000 {
        let d = match i % 3 {
            // Pure noise, any length up to beyond the limit.
            0 => {
                let len = rng.below(MAX_DATAGRAM + 100);
                rng.bytes(len)
            }
            // Noise behind the right magic, to get past the first check.
            1 => {
                let len = rng.below(MAX_DATAGRAM);
                let mut d = MAGIC.to_vec();
                d.extend(rng.bytes(len));
                d
            }
            // A valid datagram with a few bytes flipped.
            _ => {
                let mut d = valid.clone();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(d.len());
                    d[at] ^= 1 + rng.below(255) as u8;
                }
                // Two flips of one byte can cancel out: keep it changed.
                if d == valid {
                    d[0] ^= 1;
                }
                d
            }
        };
        let r = t.observe(src(), &d, NOW_MS, now);
        assert!(r.is_err(), "accepted {d:?}");
    }
    assert!(trusted_names(&t, now).is_empty());
    assert!(t.untrusted.rows.len() <= t.settings().max_untrusted);
    let c = t.counters();
    let rejected = c.oversized + c.truncated + c.malformed + c.bad_signature + c.invalid;
    assert_eq!(rejected + c.stale + c.future + c.replayed, 20_000);
}

#[test]
fn announced_pairs_come_from_trusted_agents_only() {
    let mut t = table();
    let now = Instant::now();
    let mut balancer = msg("lb2", 1, NOW_MS);
    balancer.role = Role::Balancer;
    let mut lone = msg("app3", 1, NOW_MS);
    lone.secondary = None;
    let mut second = msg("app2", 1, NOW_MS);
    (second.server_id, second.secondary) = (Some("app2".into()), Some("app1".into()));
    for m in [msg("app1", 1, NOW_MS), second, balancer, lone] {
        assert!(t
            .observe(src(), &m.encode(&key()).unwrap(), NOW_MS, now)
            .is_ok());
    }
    let forged = msg("app9", 1, NOW_MS).encode(&other_key()).unwrap();
    assert!(t.observe(src(), &forged, NOW_MS, now).is_err());
    assert_eq!(
        t.announced_pairs(now),
        vec![
            ("app1".into(), "app2".into()),
            ("app2".into(), "app1".into())
        ]
    );
    let names: Vec<String> = t.members(now).into_iter().map(|r| r.name).collect();
    assert_eq!(
        names,
        ["app1", "app2", "app3", "app9", "lb2"],
        "sorted by name"
    );
}

mod agent;

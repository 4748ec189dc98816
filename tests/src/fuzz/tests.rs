//! Host-side tests of the fuzzer itself (no root needed).

use super::*;
use balancer_common::parse::ParseError;

fn generated(n: u64, seed: u64) -> Vec<Case> {
    let layout = Layout::offline();
    let shadow = Shadow::default();
    let gen = Generator {
        layout: &layout,
        shadow: &shadow,
    };
    (0..n)
        .map(|i| {
            let mut rng = Rng::for_iteration(seed, i);
            let t = Template::pick(&mut rng);
            gen.case(&mut rng, t, false)
        })
        .collect()
}

/// The reference parser agrees with the data plane's own (shared) parser on every
/// generated frame: class, and offsets of what both parse.
#[test]
fn reference_parser_agrees_with_the_data_plane_parser() {
    let mut classes = BTreeMap::new();
    for case in generated(50_000, 7) {
        let f = &case.frame;
        let mine = parse(f);
        let theirs = parse_slice(f);
        match (&mine, &theirs) {
            (Ok(p), Ok(q)) => {
                assert_eq!(
                    (p.l3, p.l4, p.payload, p.ip_end, p.key(), p.flags, p.ttl),
                    (
                        q.l3_off,
                        q.l4_off,
                        q.payload_off,
                        q.ip_end,
                        q.key,
                        q.tcp_flags,
                        q.ttl
                    ),
                    "frame {}",
                    hex(f)
                );
                assert_eq!(p.first_fragment(), q.first_fragment);
            }
            (Err(Refused::NotIpv4), Err(ParseError::NotIpv4))
            | (Err(Refused::NotTcpUdp), Err(ParseError::NotTcpUdp))
            | (Err(Refused::NonFirstFragment), Err(ParseError::NonFirstFragment))
            | (Err(Refused::Malformed), Err(ParseError::Truncated | ParseError::Invalid)) => {}
            _ => panic!("reference {mine:?}, data plane {theirs:?}: {}", hex(f)),
        }
        *classes
            .entry(mine.map(|_| "parsed").unwrap_or_else(|e| e.name()))
            .or_insert(0u64) += 1;
    }
    // The mix reaches every class.
    assert_eq!(classes.len(), 5, "{classes:?}");
}

#[test]
fn generation_is_reproducible() {
    let a: Vec<Vec<u8>> = generated(2000, 3).into_iter().map(|c| c.frame).collect();
    let b: Vec<Vec<u8>> = generated(2000, 3).into_iter().map(|c| c.frame).collect();
    assert_eq!(a, b);
    let c: Vec<Vec<u8>> = generated(2000, 4).into_iter().map(|c| c.frame).collect();
    assert_ne!(a, c);
}

fn delta(entries: &[(Counter, u64)]) -> Delta {
    let mut d = [0u64; Counter::COUNT];
    d[Counter::RxPackets as usize] = 1;
    for (c, n) in entries {
        d[*c as usize] = *n;
    }
    d
}

#[test]
fn counter_signatures() {
    let ok = |v, e: &[(Counter, u64)], len| {
        let mut deferred = Vec::new();
        check_signature(v, &delta(e), len, &mut deferred).is_ok() && deferred.is_empty()
    };
    assert!(ok(XDP_PASS, &[(Counter::PassMalformed, 1)], 60));
    assert!(!ok(XDP_PASS, &[], 60));
    assert!(!ok(XDP_PASS, &[(Counter::TxRedirect, 1)], 60));
    assert!(ok(
        XDP_REDIRECT,
        &[(Counter::TxRedirect, 1), (Counter::TxBytes, 60)],
        60
    ));
    assert!(!ok(
        XDP_REDIRECT,
        &[(Counter::TxRedirect, 1), (Counter::TxBytes, 59)],
        60
    ));
    assert!(!ok(
        XDP_TX,
        &[(Counter::TxRedirect, 1), (Counter::TxBytes, 60)],
        60
    ));
    assert!(ok(XDP_TX, &[(Counter::SyncookiesSent, 1)], 58));
    assert!(ok(XDP_DROP, &[(Counter::SyncookiesValid, 1)], 54));
    assert!(!ok(XDP_DROP, &[], 54));
    assert!(!ok(
        XDP_DROP,
        &[(Counter::DropFragment, 1), (Counter::DropNoBackend, 1)],
        54
    ));
    assert!(!ok(0, &[(Counter::PassMalformed, 1)], 54));
    let mut two = delta(&[(Counter::PassMalformed, 1)]);
    two[Counter::RxPackets as usize] = 2;
    assert!(check_signature(XDP_PASS, &two, 54, &mut Vec::new()).is_err());
    // The stale-ACK RST: an answer built by the program, counted by its own counter;
    // counting it as forwarded as well (the fixed bug) no longer passes.
    let mut deferred = Vec::new();
    let d = delta(&[(Counter::BindStaleAcks, 1)]);
    assert!(check_signature(XDP_TX, &d, 54, &mut deferred).is_ok());
    assert!(deferred.is_empty());
    let twice = delta(&[(Counter::BindStaleAcks, 1), (Counter::TxSameInterface, 1)]);
    assert!(check_signature(XDP_TX, &twice, 54, &mut Vec::new()).is_err());
}

/// A NAT forward the oracle accepts, and tampered copies of it that it must reject.
#[test]
fn the_oracle_catches_bad_rewrites() {
    let layout = Layout::offline();
    let client = SocketAddrV4::new(CLIENT, 40000);
    let svc = layout.svcs[SVC_TCP].addr;
    let backend = layout.bes[0].addr;
    let input = Frame::tcp(client, svc, flags(false, true, false, false, true))
        .payload(b"hello")
        .build();
    // The input as forwarded to `dst` with `ttl`, out of the backend-side interface.
    let forwarded = |dst: SocketAddrV4, ttl: u8| {
        Frame::tcp(client, dst, flags(false, true, false, false, true))
            .payload(b"hello")
            .ttl(ttl)
            .macs(BACKEND_IF_MAC, backend_mac(*dst.ip()))
            .build()
    };
    let good = forwarded(backend, 63);
    let mut oracle = Oracle {
        layout: layout.clone(),
        shadow: Shadow::default(),
        paths: BTreeMap::new(),
        forwarded_bad_checksum: 0,
        keys: SyncookieKeys::default(),
        cookie_cfg: CookieConfig::default(),
        deferred: Vec::new(),
        last_path: None,
        liveness: BTreeMap::new(),
    };
    let created = Created {
        ingress: 2,
        client_mac: [0; 6],
        our_mac: [0; 6],
    };
    oracle
        .shadow
        .bind(SVC_TCP, (client, svc, PROTO_TCP), backend, created);
    let d = delta(&[
        (Counter::TxRedirect, 1),
        (Counter::TxBytes, good.len() as u64),
    ]);
    let mut check = |out: &[u8], verdict: u32| {
        let run = Run {
            input: &input,
            inp: parse(&input),
            verdict,
            out,
            delta: &d,
            ingress: 2,
            backend_ifindex: 3,
            windows: [0, 0],
            clean: None,
        };
        let p = parse(&input).unwrap();
        oracle
            .check_output(&run, &p, Some(SVC_TCP), None)
            .map_err(|f| f.check)
    };
    assert_eq!(check(&good, XDP_REDIRECT), Ok(()));
    assert_eq!(check(&good, XDP_TX), Err("output.verdict"));
    let mut payload = good.clone();
    *payload.last_mut().unwrap() ^= 1;
    assert_eq!(check(&payload, XDP_REDIRECT), Err("output.rewrite"));
    let mut csum = good.clone();
    csum[14 + 20 + 16] ^= 0x40;
    assert_eq!(check(&csum, XDP_REDIRECT), Err("output.checksum"));
    let mut ipsum = good.clone();
    ipsum[14 + 10] ^= 0x01;
    assert_eq!(check(&ipsum, XDP_REDIRECT), Err("output.checksum"));
    let elsewhere = forwarded(layout.bes[1].addr, 63);
    assert_eq!(check(&elsewhere, XDP_REDIRECT), Err("output.nat_forward"));
    let ttl = forwarded(backend, 64);
    assert_eq!(check(&ttl, XDP_REDIRECT), Err("output.ttl"));
    let mut frag = good.clone();
    frag[14 + 6] |= 0x20;
    fix_ip_checksum(&mut frag);
    assert_eq!(check(&frag, XDP_REDIRECT), Err("output.fragment"));
}

#[test]
fn residuals_survive_incremental_updates() {
    // A valid frame has both residuals 0xffff; fix_* makes any frame valid.
    let mut f = Frame::udp(
        SocketAddrV4::new(CLIENT, 1),
        SocketAddrV4::new(VIP, 53),
        b"abc",
    )
    .build();
    let p = parse(&f).unwrap();
    assert!(same_residual(ip_residual(&f, &p), 0xffff) && l4_valid(&f, &p));
    f[14 + 20 + 8] ^= 0xff;
    assert!(!l4_valid(&f, &parse(&f).unwrap()));
    fix_l4_checksum(&mut f);
    assert!(l4_valid(&f, &parse(&f).unwrap()));
}

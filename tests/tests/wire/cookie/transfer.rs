//! Large transfers through spliced connections, also over a lossy, reordering link.

use super::*;

const TRANSFER: usize = 10 << 20;

/// `len` bytes of a deterministic pseudo-random stream.
fn upload_body(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// On one connection whose cookie names `backend`: a `TRANSFER`-byte upload, checked
/// against the backend's length and digest, then a `TRANSFER`-byte download, checked
/// against the pattern. Returns the two durations.
fn transfers(
    t: &Topology,
    backend: &str,
    connect: Duration,
    io_timeout: Duration,
) -> (Duration, Duration) {
    let cookie = session_cookie(7, backend);
    let body = upload_body(TRANSFER, 0x5eed);
    let digest = Fnv64::of(&body).hex();
    let backend = backend.to_string();
    t.client
        .run(move || -> anyhow::Result<(Duration, Duration)> {
            let mut c = Conn::connect_timeout(vip(), connect)?;
            c.stream().set_read_timeout(Some(io_timeout))?;
            c.stream().set_write_timeout(Some(io_timeout))?;
            let started = Instant::now();
            let r = c.request("POST", "/upload", &[("Cookie", &cookie)], &body)?;
            let up = started.elapsed();
            anyhow::ensure!(r.status == 200, "upload: status {}", r.status);
            anyhow::ensure!(
                r.header("x-backend") == Some(backend.as_str()),
                "upload answered by {:?}",
                r.header("x-backend")
            );
            anyhow::ensure!(
                r.header("x-body-len") == Some(TRANSFER.to_string().as_str()),
                "upload: backend read {:?} bytes",
                r.header("x-body-len")
            );
            anyhow::ensure!(
                r.header("x-body-fnv") == Some(digest.as_str()),
                "upload: backend digest {:?}, sent {digest}",
                r.header("x-body-fnv")
            );
            let started = Instant::now();
            let r = c.request(
                "GET",
                &format!("/bytes/{TRANSFER}"),
                &[("Cookie", &cookie)],
                &[],
            )?;
            let down = started.elapsed();
            anyhow::ensure!(r.status == 200, "download: status {}", r.status);
            anyhow::ensure!(r.header("x-backend") == Some(backend.as_str()));
            anyhow::ensure!(r.body.len() == TRANSFER, "download: {} bytes", r.body.len());
            anyhow::ensure!(http::is_pattern(&r.body), "download: corrupted body");
            Ok((up, down))
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("transfers through a spliced connection: {e:#}"))
}

fn mb_per_s(d: Duration) -> f64 {
    TRANSFER as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

#[test]
fn large_transfers_through_a_spliced_connection() {
    let _g = topology::machine_shared();
    let t = setup(3);
    let (up, down) = transfers(&t, "be3", http::CONNECT_TIMEOUT, http::READ_TIMEOUT);
    eprintln!(
        "spliced 10 MiB: upload {:.2} s ({:.1} MiB/s), download {:.2} s ({:.1} MiB/s)",
        up.as_secs_f64(),
        mb_per_s(up),
        down.as_secs_f64(),
        mb_per_s(down)
    );
    let s = Stats::read(&t);
    let ctx = s.summary();
    assert_eq!(s.global("bindings_completed"), 1, "{ctx}");
    let be3 = t.backends[2].endpoint();
    assert_eq!(s.backend(&be3, "cookie_hits"), 1, "{ctx}");
    assert!(
        s.backend(&be3, "bytes_to") > TRANSFER as u64
            && s.backend(&be3, "bytes_from") > TRANSFER as u64,
        "{ctx}"
    );
    assert_no_failures(&s);
}

#[test]
fn transfers_and_requests_survive_loss_and_reordering() {
    let _g = topology::machine_shared();
    assert_root();
    let mut t = Topology::two_arm_with_wan(3, Impairment::NONE).expect("building the topology");
    add_cookie_service(&mut t);
    let impaired = Impairment::new(0.02, 0.05, 0x1055);
    t.wan.as_ref().unwrap().relay.set(impaired);

    let started = Instant::now();
    let names: Vec<String> = t.backends.iter().map(|b| b.name.clone()).collect();
    let answers = in_parallel(&t.client, 3, |k| {
        (k..30)
            .step_by(3)
            .map(|i| {
                let want = names[i % 3].clone();
                let got = get_with_cookie(Some(&session_cookie(i, &want)), Duration::from_secs(15))
                    .map_err(|e| format!("{e:#}"));
                (want, got)
            })
            .collect::<Vec<_>>()
    });
    let requests = started.elapsed();
    for (want, got) in answers.iter().flatten() {
        assert_eq!(
            got.as_deref(),
            Ok(want.as_str()),
            "{}",
            t.wan.as_ref().unwrap().relay.summary()
        );
    }
    let (up, down) = transfers(&t, "be1", Duration::from_secs(15), Duration::from_secs(30));
    let relay = &t.wan.as_ref().unwrap().relay;
    eprintln!(
        "2% loss, 5% reordering: 30 cookie requests in {:.2} s; 10 MiB upload {:.2} s ({:.1} MiB/s), download {:.2} s ({:.1} MiB/s); relay {}",
        requests.as_secs_f64(),
        up.as_secs_f64(),
        mb_per_s(up),
        down.as_secs_f64(),
        mb_per_s(down),
        relay.summary()
    );
    // The link really was impaired, both ways.
    for d in [relay.a_to_b(), relay.b_to_a()] {
        assert!(d.lost > 20 && d.reordered > 50, "{}", relay.summary());
        assert_eq!(d.oversized, 0, "{}", relay.summary());
    }
    let s = Stats::read(&t);
    let ctx = s.summary();
    assert_eq!(s.global("bindings_completed"), 31, "{ctx}");
    assert_eq!(s.backends_sum("cookie_hits"), 31, "{ctx}");
    for c in [
        "bindings_timed_out",
        "drop_no_backend",
        "drop_flow_table_full",
    ] {
        assert_eq!(s.global(c), 0, "{c}: {ctx}");
    }
}

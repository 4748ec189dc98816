//! Phase 5: spliced traffic translated both ways, its end, and a new connection on a
//! closed tuple.

use super::*;

// --- Phase 5: spliced -------------------------------------------------------------------

#[test]
fn spliced_traffic_is_translated_both_ways() {
    let (bed, _, backends) = setup();
    let mut flows = Vec::new();
    // Backend ISNs from the connection's K: far from K (the shift wraps), near 2^32 (the
    // backend's own sequence numbers wrap), K (no shift), K - 1, and 1. The client's
    // ISNs are near 2^32 too.
    let isns: [fn(u32) -> u32; 5] = [
        |k| k.wrapping_add(0x8000_0000),
        |_| 0xffff_fff0,
        |k| k,
        |k| k.wrapping_sub(1),
        |_| 1,
    ];
    for (i, isn_of) in isns.iter().enumerate() {
        let conn = handshake(
            &bed,
            Conn::new(40000 + i as u16, 0xffff_ff00 + 16 * i as u32, 1460),
        );
        let b = isn_of(conn.cookie);
        let payload = http_get("be2");
        bind(&bed, &conn, &payload, backends[1], Choice::Hit, None);
        complete(&bed, &conn, &payload, backends[1], b);
        flows.push((conn, b, payload.len() as u32));
    }

    for (conn, b, sent) in &flows {
        let (conn, b, sent) = (*conn, *b, *sent);
        let k = conn.cookie;
        let c_next = conn.isn.wrapping_add(1 + sent);
        let mut b_next = b.wrapping_add(1);
        let mut acked = 0u32;
        // Payload lengths 0..40 with varied bytes: odd lengths, and every checksum
        // folding case the incremental updates meet.
        for n in 0..40u32 {
            let body: Vec<u8> = (0..n)
                .map(|i| (i * 37 + n * 11) as u8 ^ (k as u8))
                .collect();
            // Backend -> client: seq shifted by K - B, ack unchanged.
            let from_backend = Frame::reply(backends[1], conn.client, PSH_ACK)
                .seq(b_next)
                .ack(c_next)
                .window(502)
                .payload(&body);
            let before = bed.backend_counters().unwrap();
            run_case(
                &bed,
                &Case::redirected(
                    format!("B={b:#x} n={n} backend -> client"),
                    &from_backend,
                    Ingress::Backend,
                    conn.forwarded_to_client(&from_backend, b),
                ),
            );
            let input_len = from_backend.build().len() as u64;
            assert_eq!(
                backend_delta(&before, &bed.backend_counters().unwrap()),
                BTreeMap::from([(
                    backends[1],
                    BackendCountersValues {
                        packets_from: 1,
                        bytes_from: input_len,
                        ..Default::default()
                    }
                )])
            );
            b_next = b_next.wrapping_add(n);
            acked = acked.wrapping_add(n);

            // Client -> backend: ack shifted back by K - B, seq unchanged.
            let from_client = Frame::tcp(conn.client, vip(), PSH_ACK)
                .seq(c_next)
                .ack(k.wrapping_add(1).wrapping_add(acked))
                .payload(&body);
            run_case(
                &bed,
                &Case::redirected(
                    format!("B={b:#x} n={n} client -> backend"),
                    &from_client,
                    Ingress::Client,
                    conn.forwarded_to_backend(&from_client, backends[1], b),
                ),
            );
        }
    }
    // The second connection's backend sequence numbers wrapped around 2^32 in the loop.
    let (_, b, _) = flows[1];
    assert!(b.wrapping_add(1 + (0..40).sum::<u32>()) < b);
}

#[test]
fn fin_and_rst_end_a_spliced_flow() {
    let (bed, _, backends) = setup();
    let payload_len = http_get("be2").len() as u32;
    // Orderly close: FINs both ways, then the last ACK.
    let b = 0x7000_0000;
    let conn = spliced(&bed, Conn::new(40000, 1, 1460), backends[1], "be2", b);
    let k = conn.cookie;
    let c_next = conn.isn.wrapping_add(1 + payload_len);
    let client_fin = Frame::tcp(conn.client, vip(), FIN_ACK)
        .seq(c_next)
        .ack(k.wrapping_add(1));
    spliced_to_backend(&bed, &conn, &client_fin, backends[1], b, "client FIN");
    let backend_fin = Frame::reply(backends[1], conn.client, FIN_ACK)
        .seq(b.wrapping_add(1))
        .ack(c_next.wrapping_add(1));
    spliced_to_client(&bed, &conn, &backend_fin, b, "backend FIN");
    let last = Frame::tcp(conn.client, vip(), ACK)
        .seq(c_next.wrapping_add(1))
        .ack(k.wrapping_add(2));
    spliced_to_backend(&bed, &conn, &last, backends[1], b, "last ACK");
    let (fwd, rev) = entries(&bed, &conn, backends[1]);
    assert_eq!(
        (fwd.state, rev.state, fwd.phase),
        (flow_state::FIN, flow_state::FIN, phase::SPLICED)
    );

    // Abort: the backend's RST is shifted like any of its segments, the client's too.
    let b2 = 0x10;
    let conn2 = spliced(&bed, Conn::new(40001, 2, 1460), backends[1], "be2", b2);
    let k2 = conn2.cookie;
    let rst = Frame::reply(
        backends[1],
        conn2.client,
        TcpFlags {
            rst: true,
            ack: true,
            ..Default::default()
        },
    )
    .seq(b2.wrapping_add(1))
    .ack(conn2.isn.wrapping_add(1 + payload_len));
    spliced_to_client(&bed, &conn2, &rst, b2, "backend RST");
    let (_, rev) = entries(&bed, &conn2, backends[1]);
    assert_eq!(rev.state, flow_state::CLOSED);
    let crst = Frame::tcp(conn2.client, vip(), RST_ACK)
        .seq(conn2.isn.wrapping_add(1 + payload_len))
        .ack(k2.wrapping_add(1));
    spliced_to_backend(&bed, &conn2, &crst, backends[1], b2, "client RST");
    let (fwd, _) = entries(&bed, &conn2, backends[1]);
    assert_eq!(fwd.state, flow_state::CLOSED);
}

#[test]
fn new_connection_on_a_closed_spliced_tuple_is_bound_anew() {
    let (bed, _, backends) = setup();
    let payload_len = http_get("be2").len() as u32;
    let conn = spliced(&bed, Conn::new(40001, 2, 1460), backends[1], "be2", 0x10);
    let rst = Frame::tcp(conn.client, vip(), RST_ACK)
        .seq(conn.isn.wrapping_add(1 + payload_len))
        .ack(conn.cookie.wrapping_add(1));
    assert_eq!(
        run(&bed, &rst.build(), Ingress::Client).verdict,
        XDP_REDIRECT
    );
    // The client reuses its port: a fresh syncookie, and the first segment binds anew
    // (here to the backend its cookie names now).
    let again = handshake(&bed, Conn::new(40001, 0x5555_0000, 1460));
    assert_ne!(again.cookie, conn.cookie);
    handshake_ack_validates(&bed, &again, "handshake ACK of the new connection");
    let payload = http_get("be3");
    bind(&bed, &again, &payload, backends[2], Choice::Hit, None);
    let (fwd, _) = entries(&bed, &again, backends[2]);
    assert_eq!(
        (fwd.phase, fwd.client_isn, fwd.cookie_isn()),
        (phase::BINDING, again.isn, again.cookie)
    );
    complete(&bed, &again, &payload, backends[2], 3);
}

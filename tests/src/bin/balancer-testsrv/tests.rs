//! Unit tests of the request parser and the routes.

use super::*;

fn state() -> State {
    State {
        name: "be1".into(),
        requests: AtomicU64::new(0),
        sessions: None,
    }
}

fn request(raw: &[u8]) -> Request {
    match read_request(&mut BufReader::new(raw)) {
        Ok(r) => r,
        Err(_) => panic!("request did not parse"),
    }
}

#[test]
fn parses_keep_alive_and_bodies() {
    let r = request(b"POST /up HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
    assert!(r.keep_alive());
    assert_eq!(r.body.len, 3);
    assert_eq!(r.body.fnv.hex(), Fnv64::of(b"abc").hex());
    let resp = route(&state(), &r);
    assert!(resp.headers.contains(&("X-Body-Len".into(), "3".into())));
    assert!(!request(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive());
    assert!(!request(b"GET / HTTP/1.0\r\n\r\n").keep_alive());
    assert!(request(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive());
}

#[test]
fn routes() {
    let s = state();
    let r = route(&s, &request(b"GET /bytes/1000 HTTP/1.1\r\n\r\n"));
    assert_eq!((r.status, r.body.len()), (200, 1000));
    let r = route(&s, &request(b"GET /anything HTTP/1.1\r\n\r\n"));
    assert!(matches!(&r.body, ResponseBody::Bytes(b) if b == b"be1\n"));
    let r = route(&s, &request(b"GET /slow/x HTTP/1.1\r\n\r\n"));
    assert_eq!(r.status, 400);
    let mut out = Vec::new();
    let r = route(&s, &request(b"GET /bytes/300 HTTP/1.1\r\n\r\n"));
    write_response(&mut out, &r, true).unwrap();
    let parsed = balancer_tests::http::read_response(&mut BufReader::new(&out[..]), false).unwrap();
    assert!(balancer_tests::http::is_pattern(&parsed.body));
    assert_eq!(parsed.body.len(), 300);
    assert_eq!(parsed.header("x-backend"), Some("be1"));
}

#[test]
fn echoes_what_is_not_http() {
    let raw = [0x16u8, 0x03, 0x01, 0x00, 0x02, 0x01, 0x00];
    let mut out = Vec::new();
    echo(&state(), &mut BufReader::new(&raw[..]), &mut out).unwrap();
    assert_eq!(&out[..4], b"be1\n");
    assert_eq!(&out[4..], &raw[..]);
}

#[test]
fn rejects_bad_requests() {
    for raw in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/2.0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    ] {
        assert!(read_request(&mut BufReader::new(raw)).is_err());
    }
}

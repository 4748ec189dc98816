//! Unit tests of the parsers and the aggregation.

use super::*;

const WRK: &str = "Running 5s test @ http://198.18.1.10:8080/
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
Latency   653.72us  597.77us  24.04ms   92.75%
Req/Sec    24.12k     7.77k   39.69k    69.00%
  Latency Distribution
 50%  549.00us
 75%  793.00us
 90%    1.11ms
 99%    2.69ms
  240289 requests in 5.02s, 24.75MB read
  Socket errors: connect 0, read 12, write 3, timeout 7
  Non-2xx or 3xx responses: 5
Requests/sec:  47909.86
Transfer/sec:      4.93MB
";

#[test]
fn parses_wrk_output() {
    let w = parse_wrk(WRK).unwrap();
    assert_eq!(w.requests, 240289);
    assert!((w.seconds - 5.02).abs() < 1e-9);
    assert!((w.requests_per_s - 47909.86).abs() < 1e-9);
    assert!((w.p50_ms - 0.549).abs() < 1e-9);
    assert!((w.p99_ms - 2.69).abs() < 1e-9);
    assert_eq!(
        w.socket_errors,
        SocketErrors {
            connect: 0,
            read: 12,
            write: 3,
            timeout: 7
        }
    );
    assert_eq!(w.non_2xx, 5);
    assert!(parse_wrk("unable to connect to 198.18.1.10:8080 Connection refused").is_err());
}

#[test]
fn parses_times_and_stub_status() {
    assert_eq!(parse_time_ms("1.00m"), Some(60e3));
    assert_eq!(parse_time_ms("2s"), Some(2e3));
    assert_eq!(parse_time_ms("x"), None);
    let s = parse_stub_status(
        "Active connections: 1 \nserver accepts handled requests\n 16 16 31 \nReading: 0 Writing: 1 Waiting: 0 \n",
    )
    .unwrap();
    assert_eq!(
        s,
        NginxStatus {
            accepts: 16,
            requests: 31
        }
    );
}

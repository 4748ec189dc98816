//! The NAT service: a TCP service VIP:80 -> 198.18.1.10-12:8080 (and a UDP one), the
//! forward rewrite towards a backend and the reply rewrite back to the client.

mod forward;
mod persistence;
mod refused;

use std::net::SocketAddrV4;

use balancer_tests::{packet::*, testrun::*};
use balancer_user::{Proto, ServiceAddr};

use balancer_common::Counter;

use crate::{run, run_counted};

pub const FLOWS: u32 = 65_536;

pub fn tcp_backends(n: u8) -> Vec<SocketAddrV4> {
    (0..n)
        .map(|i| SocketAddrV4::new(backend_addr(i), 8080))
        .collect()
}

/// A bed with the TCP service VIP:80 -> 198.18.1.10-12:8080.
pub fn setup() -> (TestBed, ServiceAddr, Vec<SocketAddrV4>) {
    let bed = TestBed::new(FLOWS).expect("test bed");
    let backends = tcp_backends(3);
    let svc = bed
        .add_service(vip(), Proto::Tcp, &backends)
        .expect("service");
    (bed, svc, backends)
}

/// Sends `frame` (client -> VIP) in on the client side and checks it leaves towards one of
/// `allowed` with the full forward rewrite; returns the backend.
pub fn forward_ok(bed: &TestBed, frame: &Frame, allowed: &[SocketAddrV4]) -> SocketAddrV4 {
    let input = frame.build();
    let r = run(bed, &input, Ingress::Client);
    assert_eq!(
        r.verdict,
        XDP_REDIRECT,
        "forward direction: got {}",
        r.verdict_name()
    );
    let out = decode_checked(&r.output).expect("forwarded frame");
    let backend = out.dst;
    assert!(
        allowed.contains(&backend),
        "sent to {backend}, allowed {allowed:?}"
    );
    check_to_backend(&input, &r.output, frame.src, backend).expect("forward rewrite");
    backend
}

/// Sends `frame`, the first packet of a new flow, in on `ingress` and checks it leaves
/// towards one of `allowed` with `verdict` (`XDP_REDIRECT` to the other interface,
/// `XDP_TX` back out of this one), the full forward rewrite and exactly the counters of a
/// new flow sent that way; `what` names it in failures. Returns the output, decoded.
pub fn new_flow_forwarded(
    bed: &TestBed,
    frame: &Frame,
    ingress: Ingress,
    verdict: u32,
    allowed: &[SocketAddrV4],
    what: &str,
) -> Decoded {
    let input = frame.build();
    let tx = if verdict == XDP_TX {
        Counter::TxSameInterface
    } else {
        Counter::TxRedirect
    };
    let counters = [
        (Counter::NewFlows, 1),
        (tx, 1),
        (Counter::TxBytes, input.len() as u64),
    ];
    let r = run_counted(bed, &input, ingress, verdict, &counters, what);
    let backend = decode_checked(&r.output).expect("forwarded frame").dst;
    assert!(
        allowed.contains(&backend),
        "{what}: sent to {backend}, allowed {allowed:?}"
    );
    check_to_backend(&input, &r.output, frame.src, backend).expect("forward rewrite")
}

/// Sends `frame` (a backend's reply to a client of the VIP) in on `ingress` and checks it
/// leaves with `verdict` and the full reply rewrite (back to the client, from the VIP);
/// returns the output frame, decoded.
pub fn reply_ok(bed: &TestBed, frame: &Frame, ingress: Ingress, verdict: u32) -> Decoded {
    let input = frame.build();
    let r = run(bed, &input, ingress);
    assert_eq!(
        r.verdict,
        verdict,
        "reply on {ingress:?}: got {}",
        r.verdict_name()
    );
    check_to_client(&input, &r.output, vip(), frame.dst).expect("reply rewrite")
}

/// Applies `edit` to a SYN to the VIP and fixes the IPv4 header checksum.
pub fn edited_syn(edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut f = Frame::to_vip(40000, SYN).build();
    edit(&mut f);
    fix_ipv4_checksum(&mut f, 14);
    f
}

/// A SYN to the VIP with the IPv4 flags and fragment offset word set to `word`.
pub fn fragment(word: u16) -> Vec<u8> {
    edited_syn(|f| f[20..22].copy_from_slice(&word.to_be_bytes()))
}

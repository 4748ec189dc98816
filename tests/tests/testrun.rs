use balancer_tests::testrun::*;
use balancer_user::Proto;
use std::net::SocketAddrV4;

#[test]
fn explore() {
    let bed = TestBed::new(65536).unwrap();
    let b: Vec<SocketAddrV4> = (0..3).map(|i| SocketAddrV4::new(backend_addr(i), 8080)).collect();
    let t = std::time::Instant::now();
    bed.add_service(vip(), Proto::Tcp, &b).unwrap();
    eprintln!("service setup {:?}", t.elapsed());
    for (i, ing) in [Ingress::Loopback, Ingress::Client, Ingress::Backend].into_iter().enumerate() {
        let f = Frame::to_vip(40000 + i as u16, SYN).build();
        let before = bed.counters().unwrap();
        let r = bed.run(&f, ing).unwrap();
        let after = bed.counters().unwrap();
        eprintln!("{ing:?}: {} {:?} dur {} out {:?}", r.verdict_name(), after.delta(&before), r.duration_ns, decode_checked(&r.output).map(|d| (d.dst, d.dst_mac, d.src_mac)));
    }
    for len in [0usize, 10, 13, 14] {
        let f = Frame::to_vip(41000, SYN).build();
        eprintln!("len {len}: {:?}", bed.run(&f[..len], Ingress::Loopback).map(|r| r.verdict));
    }
    eprintln!("pass: {:?}", bed.run_pass(&Frame::to_vip(1, SYN).build(), Ingress::Client).map(|r| (r.verdict, r.duration_ns)));
    eprintln!("{:#?}", bed.flows().unwrap());
}

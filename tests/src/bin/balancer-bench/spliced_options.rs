//! The spliced connection of the `spliced_options_forward` path: both ends with Linux's
//! options but the backend without window scaling, so that a client's ACK with
//! timestamps and SACK blocks gets all three translations (TSecr, SACK edges, window).

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{ensure, Context, Result};
use balancer_tests::{
    packet::{
        decode_checked, sack_option, syn_options, ts_option, Frame, ACK, PSH_ACK, SYN, SYN_ACK,
    },
    testrun::{request_head, Ingress, TestBed, XDP_REDIRECT, XDP_TX},
};
use balancer_user::Proto;

use crate::dataplane::{run_expecting, COOKIE_VIP};

/// Client of the spliced connection with options.
const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 249), 40000);
const CLIENT_TSVAL: u32 = 0x0100_0000;
const BACKEND_TSVAL: u32 = 0x0200_0000;

/// Sets up the connection (bound to `backend` by its cookie) and returns the frame of the
/// path: the client's ACK with timestamps and two SACK blocks, checked once.
pub fn splice_with_options(bed: &TestBed, backend: SocketAddrV4) -> Result<Vec<u8>> {
    let isn = 0x0102_0304_u32;
    let syn = Frame::tcp(CLIENT, COOKIE_VIP, SYN)
        .seq(isn)
        .tcp_options(&syn_options(1460, true, Some((CLIENT_TSVAL, 0)), Some(7)))
        .build();
    let r = run_expecting(bed, &syn, Ingress::Client, XDP_TX, "options splice: SYN")?;
    let synack = decode_checked(&r.output)?;
    let k = synack.seq.context("SYN-ACK sequence number")?;
    // The SYN-ACK's TSval, which the client echoes: bytes 8..12 of its options (MSS,
    // SACK-permitted + timestamps kind and length, TSval).
    let opts = &r.output[14 + 20 + 20..];
    let t0 = u32::from_be_bytes([opts[8], opts[9], opts[10], opts[11]]);
    let head = request_head(1400, 0.5, "be2", "be3");
    let data = Frame::tcp(CLIENT, COOKIE_VIP, PSH_ACK)
        .seq(isn.wrapping_add(1))
        .ack(k.wrapping_add(1))
        .tcp_options(&ts_option(CLIENT_TSVAL, t0))
        .payload(&head)
        .build();
    let r = bed.run(&data, Ingress::Client)?;
    ensure!(
        r.verdict == XDP_REDIRECT && decode_checked(&r.output)?.dst == backend,
        "options splice: first segment not bound to {backend} ({})",
        r.verdict_name()
    );
    let b = 0x5555_0000_u32;
    let synack = Frame::reply(backend, CLIENT, SYN_ACK)
        .seq(b)
        .ack(isn.wrapping_add(1))
        .tcp_options(&syn_options(
            1460,
            true,
            Some((BACKEND_TSVAL, CLIENT_TSVAL)),
            None,
        ))
        .build();
    run_expecting(
        bed,
        &synack,
        Ingress::Backend,
        XDP_TX,
        "options splice: backend SYN-ACK",
    )?;
    let flow = bed
        .flow_of(CLIENT, COOKIE_VIP, Proto::Tcp)?
        .context("options splice: flow missing")?;
    ensure!(
        (flow.phase, flow.state) == ("spliced", "established"),
        "options splice: {} / {}",
        flow.phase,
        flow.state
    );
    let options = [
        ts_option(CLIENT_TSVAL + 1, t0.wrapping_add(5)),
        sack_option(&[(k + 3000, k + 4000), (k + 6000, k + 7000)]),
    ]
    .concat();
    let frame = Frame::tcp(CLIENT, COOKIE_VIP, ACK)
        .seq(isn.wrapping_add(1 + 1400))
        .ack(k.wrapping_add(201))
        .window(100)
        .tcp_options(&options)
        .build();
    let r = run_expecting(
        bed,
        &frame,
        Ingress::Client,
        XDP_REDIRECT,
        "options splice: ACK",
    )?;
    let out = decode_checked(&r.output).context("options splice: forwarded ACK")?;
    let shift = k.wrapping_sub(b);
    ensure!(
        out.dst == backend && out.ack == Some(k.wrapping_add(201).wrapping_sub(shift)),
        "options splice: ACK forwarded to {} with ack {:?}",
        out.dst,
        out.ack
    );
    // Every translation happened: TSecr into the backend's clock, the SACK edges shifted,
    // the window scaled up by the client's 7 (the backend reads it unscaled).
    let tcp = &r.output[14 + 20..];
    let o = &tcp[20..];
    let tsecr = u32::from_be_bytes([o[8], o[9], o[10], o[11]]);
    let edge = u32::from_be_bytes([o[16], o[17], o[18], o[19]]);
    let window = u16::from_be_bytes([tcp[14], tcp[15]]);
    ensure!(
        tsecr == BACKEND_TSVAL + 5 && edge == (k + 3000).wrapping_sub(shift) && window == 100 << 7,
        "options splice: TSecr {tsecr:#x}, first SACK edge {edge:#x}, window {window}"
    );
    Ok(frame)
}

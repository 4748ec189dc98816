//! BPF programs that only the tests and the benchmark load, kept out of the production
//! object so that what ships holds nothing but the balancer.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// Returns `XDP_PASS` and nothing else: the benchmark's baseline (the fixed cost of one
/// BPF_PROG_TEST_RUN, measured the same way as the balancer's paths).
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

balancer_common::bpf_object!();

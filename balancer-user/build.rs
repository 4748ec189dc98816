//! Builds the production XDP object (the `balancer-xdp` package) into OUT_DIR, where
//! `dataplane.rs` embeds it.

#[path = "../balancer-ebpf/build_bpf.rs"]
mod build_bpf;

fn main() -> anyhow::Result<()> {
    build_bpf::build("balancer-xdp", "../balancer-ebpf/xdp")
}

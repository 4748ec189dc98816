//! Builds the test-only BPF programs (the `balancer-testprogs` package) into OUT_DIR,
//! where `testrun.rs` embeds them.

#[path = "../balancer-ebpf/build_bpf.rs"]
mod build_bpf;

fn main() -> anyhow::Result<()> {
    build_bpf::build("balancer-testprogs", "../balancer-ebpf/testprogs")
}

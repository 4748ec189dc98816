//! Builds the XDP object (balancer-ebpf's `balancer-xdp` binary, for bpfel-unknown-none on
//! the nightly toolchain with bpf-linker) and leaves it in OUT_DIR, where `dataplane.rs`
//! embeds it. `cargo xtask setup` installs what this needs.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("balancer-user has no parent directory"))?
        .join("balancer-ebpf");
    let ebpf_dir = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "balancer-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the XDP program failed; run `cargo xtask setup` if a prerequisite is missing",
    )
}

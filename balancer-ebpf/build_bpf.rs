//! Compiles one of balancer-ebpf's BPF packages (for bpfel-unknown-none, on the nightly
//! toolchain with bpf-linker, through aya-build) into the calling build script's OUT_DIR,
//! where the crate embeds it with `include_bytes_aligned!`. Shared by the build scripts of
//! balancer-user (the production object) and tests (the test-only programs) with
//! `#[path]`. `cargo xtask setup` installs what this needs.
//!
//! aya-build only tells cargo to watch the package's own folder: each caller also lists
//! balancer-common as a build-dependency, so a change to the shared code rebuilds too.

use anyhow::{anyhow, Context as _};

/// Builds the package `name` found at `dir` (relative to the caller's manifest folder).
pub fn build(name: &str, dir: &str) -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root_dir = std::path::Path::new(&manifest_dir).join(dir);
    let root_dir = root_dir
        .canonicalize()
        .with_context(|| format!("no BPF package folder at {}", root_dir.display()))?;
    let root_dir = root_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name,
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .with_context(|| {
        format!(
            "building the BPF package {name} failed; run `cargo xtask setup` if a \
             prerequisite is missing"
        )
    })
}

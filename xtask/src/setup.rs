//! `cargo xtask setup`: installs everything the build and the tests need on a fresh
//! Debian 12 machine, skipping what is already there, so it is safe to run repeatedly.
//!
//! Other tasks call [`ensure`], which runs the full setup only when the cheap
//! [`prerequisites_missing`] check finds a gap.

use std::collections::HashSet;

use anyhow::{bail, Context, Result};

use crate::run::{self, command, probe};

/// Debian packages: LLVM 22 + its link deps for building bpf-linker, the tools the
/// integration tests and the demo use (bpftool, ethtool, ip, mount, ping, curl), and the
/// end-to-end comparison's peers: HAProxy (the balancer compared with), nftables (the
/// kernel's own DNAT and SYNPROXY, the second peer), nginx (the backends' HTTP server) and
/// wrk (the load generator), and Chromium (the status page's browser test, headless).
const DEBIAN_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "bpftool",
    "ethtool",
    "iproute2",
    "util-linux",
    "iputils-ping",
    "curl",
    "haproxy",
    "nftables",
    "nginx",
    "wrk",
    "chromium",
];

/// Packages whose maintainer scripts start a system service. The tests and the benchmark
/// run their own instances (own configuration, inside their network namespaces), so the
/// system's must not run: installs happen with service starts denied (policy-rc.d), and
/// on a machine booted with systemd the units are disabled and stopped afterwards, so they
/// do not come up at the next boot either (only for packages this setup installed).
const SERVICE_PACKAGES: &[(&str, &str)] = &[("haproxy", "haproxy"), ("nginx", "nginx")];

/// Debian's hook that invoke-rc.d asks before starting a service (exit 101: denied).
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// bpf-linker release that builds against Debian's LLVM 22 (see notes/platform.md).
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Where Debian installs LLVM 22; bpf-linker's build needs it to find libLLVM.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// Mount point of the BPF filesystem, where the balancer pins its maps.
const BPFFS: &str = "/sys/fs/bpf";

/// Describes every prerequisite that is not in place (empty when all are).
///
/// Only runs read-only probes, so every task can afford to call it.
pub fn prerequisites_missing() -> Vec<String> {
    let mut missing: Vec<String> = missing_packages()
        .into_iter()
        .map(|p| format!("Debian package {p}"))
        .collect();
    if !has_nightly() {
        missing.push("rust nightly toolchain".into());
    } else {
        missing.extend(
            missing_nightly_components()
                .into_iter()
                .map(|c| format!("{c} component of the nightly toolchain")),
        );
    }
    if !bpf_linker_ok() {
        missing.push(format!("bpf-linker {BPF_LINKER_VERSION}"));
    }
    if !bpffs_mounted() {
        missing.push(format!("bpffs mounted at {BPFFS}"));
    }
    missing
}

/// Runs setup only if something is missing, saying what triggered it.
pub fn ensure() -> Result<()> {
    let missing = prerequisites_missing();
    if missing.is_empty() {
        return Ok(());
    }
    println!(
        "missing prerequisites: {}; running setup",
        missing.join(", ")
    );
    setup()
}

/// Installs every prerequisite, skipping those already present.
pub fn setup() -> Result<()> {
    require_root("setup must run as root (it installs Debian packages and mounts bpffs)")?;
    install_packages()?;
    install_nightly_components()?;
    install_bpf_linker()?;
    mount_bpffs()?;
    println!("setup: all prerequisites are in place");
    Ok(())
}

/// Fails with `why` unless we run as root.
pub fn require_root(why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{why}; re-run as root, e.g. `sudo -E cargo xtask ...`");
    }
    Ok(())
}

/// Installs the missing Debian packages with a single `apt-get update` + `install`.
fn install_packages() -> Result<()> {
    let missing = missing_packages();
    if missing.is_empty() {
        println!("setup: Debian packages already installed, skipping");
        return Ok(());
    }
    println!("setup: installing Debian packages: {}", missing.join(" "));
    run::run(&mut command("apt-get", ["update"]))
        .context("apt-get update failed: check network access to the Debian mirrors")?;
    let args = ["install", "-y", "--no-install-recommends"];
    let policy = DenyServiceStarts::install()?;
    let installed = run::run(
        command("apt-get", args.iter().chain(&missing)).env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get install failed: this setup expects Debian 12 with its standard repositories");
    drop(policy);
    installed?;
    disable_services(&missing);
    Ok(())
}

/// A `policy-rc.d` that denies every service start while it lives, when the machine has
/// none (one already there is left alone: it already decides).
struct DenyServiceStarts {
    created: bool,
}

impl DenyServiceStarts {
    fn install() -> Result<DenyServiceStarts> {
        use std::os::unix::fs::PermissionsExt as _;
        let path = std::path::Path::new(POLICY_RC_D);
        if path.exists() {
            return Ok(DenyServiceStarts { created: false });
        }
        println!("setup: writing {POLICY_RC_D} (deny service starts) for the install");
        std::fs::write(
            path,
            "#!/bin/sh\n# Written by `cargo xtask setup` during apt-get install; removed after.\nexit 101\n",
        )
        .with_context(|| format!("writing {POLICY_RC_D}"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {POLICY_RC_D} executable"))?;
        Ok(DenyServiceStarts { created: true })
    }
}

impl Drop for DenyServiceStarts {
    fn drop(&mut self) {
        if self.created {
            if let Err(e) = std::fs::remove_file(POLICY_RC_D) {
                eprintln!("setup: could not remove {POLICY_RC_D}: {e}");
            }
        }
    }
}

/// On a machine running systemd, disables and stops the system services of the packages
/// just installed (see [`SERVICE_PACKAGES`]); elsewhere nothing starts them.
fn disable_services(installed_now: &[&str]) {
    if !std::path::Path::new("/run/systemd/system").exists() {
        return;
    }
    for (package, service) in SERVICE_PACKAGES {
        if !installed_now.contains(package) {
            continue;
        }
        // A failure here leaves a system service with Debian's default configuration,
        // which listens outside the test namespaces: worth a warning, not a failed setup.
        if let Err(e) = run::run(&mut command("systemctl", ["disable", "--now", service])) {
            eprintln!("setup: could not disable the system {service} service: {e:#}");
        }
    }
}

/// Nightly components the build and checks need: rust-src for `-Z build-std=core` on the
/// BPF target, clippy to lint the XDP program for that target.
const NIGHTLY_COMPONENTS: [&str; 2] = ["rust-src", "clippy"];

/// Adds the [`NIGHTLY_COMPONENTS`] that nightly does not have yet.
fn install_nightly_components() -> Result<()> {
    if !has_nightly() {
        bail!(
            "no nightly Rust toolchain: the eBPF program needs one, and toolchains cannot be \
             downloaded on this machine; install one with `rustup toolchain install nightly` \
             where possible"
        );
    }
    let missing = missing_nightly_components();
    if missing.is_empty() {
        println!("setup: nightly components {NIGHTLY_COMPONENTS:?} already installed, skipping");
        return Ok(());
    }
    for component in missing {
        println!("setup: adding {component} to the nightly toolchain");
        run::run(&mut command(
            "rustup",
            ["component", "add", component, "--toolchain", "nightly"],
        ))
        .with_context(|| format!("could not add {component} to the nightly toolchain"))?;
    }
    Ok(())
}

/// Builds bpf-linker against Debian's LLVM 22; retries without `--locked` because the
/// published lock file may pin crates this toolchain cannot build.
fn install_bpf_linker() -> Result<()> {
    if bpf_linker_ok() {
        println!("setup: bpf-linker {BPF_LINKER_VERSION} already installed, skipping");
        return Ok(());
    }
    println!("setup: building bpf-linker {BPF_LINKER_VERSION} (takes a few minutes)");
    if cargo_install_bpf_linker(true).is_ok() {
        return Ok(());
    }
    println!("setup: `cargo install --locked` failed; retrying without --locked");
    cargo_install_bpf_linker(false).context(format!(
        "could not build bpf-linker {BPF_LINKER_VERSION}: check that llvm-22-dev and \
         libpolly-22-dev are installed and {LLVM_PREFIX} exists"
    ))
}

fn cargo_install_bpf_linker(locked: bool) -> Result<()> {
    let mut args = vec!["install", "bpf-linker", "--version", BPF_LINKER_VERSION];
    if locked {
        args.push("--locked");
    }
    args.extend(["--no-default-features", "--features", "llvm-22"]);
    run::run(run::cargo(args).env("LLVM_PREFIX", LLVM_PREFIX))
}

/// Mounts bpffs so maps can be pinned (not mounted by default inside containers).
fn mount_bpffs() -> Result<()> {
    if bpffs_mounted() {
        println!("setup: bpffs already mounted at {BPFFS}, skipping");
        return Ok(());
    }
    println!("setup: mounting bpffs at {BPFFS}");
    run::run(&mut command("mount", ["-t", "bpf", "bpf", BPFFS]))
        .context(format!("could not mount bpffs at {BPFFS}"))
}

/// Packages from [`DEBIAN_PACKAGES`] that dpkg does not report as installed.
fn missing_packages() -> Vec<&'static str> {
    let installed = installed_packages();
    DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed.contains(*p))
        .collect()
}

/// Names of the wanted packages that are fully installed, from one dpkg-query call
/// (it exits non-zero when some are unknown, but still lists the others).
fn installed_packages() -> HashSet<String> {
    let Some(out) = probe(
        "dpkg-query",
        ["-W", "-f=${Package} ${Status}\n"]
            .iter()
            .chain(DEBIAN_PACKAGES),
    ) else {
        return HashSet::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_once(' '))
        .filter(|(_, status)| *status == "install ok installed")
        .map(|(name, _)| name.to_string())
        .collect()
}

fn has_nightly() -> bool {
    probe_stdout("rustup", &["toolchain", "list"])
        .is_some_and(|s| s.lines().any(|l| l.starts_with("nightly")))
}

/// The [`NIGHTLY_COMPONENTS`] that `rustup component list --installed` does not show.
fn missing_nightly_components() -> Vec<&'static str> {
    let args = ["component", "list", "--toolchain", "nightly", "--installed"];
    let installed = probe_stdout("rustup", &args).unwrap_or_default();
    NIGHTLY_COMPONENTS
        .into_iter()
        .filter(|c| {
            !installed
                .lines()
                .map(str::trim)
                .any(|l| l == *c || l.starts_with(&format!("{c}-")))
        })
        .collect()
}

/// True if `bpf-linker --version` works and reports the wanted minor release (0.13.x).
fn bpf_linker_ok() -> bool {
    let (major_minor, _) = BPF_LINKER_VERSION
        .rsplit_once('.')
        .expect("version has a patch number");
    probe_stdout("bpf-linker", &["--version"]).is_some_and(|s| {
        s.split_whitespace().any(|w| {
            w.strip_prefix(major_minor)
                .is_some_and(|r| r.starts_with('.'))
        })
    })
}

/// True if /proc/mounts has a bpf filesystem mounted exactly at [`BPFFS`].
fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|line| {
            let mut fields = line.split_whitespace().skip(1);
            fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
        })
    })
}

/// Stdout of a successful probe, `None` if it could not run or failed.
fn probe_stdout(program: &str, args: &[&str]) -> Option<String> {
    let out = probe(program, args)?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

//! `cargo xtask package`: the Debian package of the balancer, built with Debian's own
//! `dpkg-deb` from a staging tree:
//!
//! ```text
//! usr/sbin/balancer                              the release binary
//! lib/systemd/system/balancer.service            the daemon's unit (not enabled)
//! etc/balancer/balancer.toml                     example configuration (a conffile)
//! usr/share/man/man1/balancer*.1.gz              man pages, from the clap definitions
//! usr/share/bash-completion/completions/balancer shell completions, likewise
//! usr/share/zsh/vendor-completions/_balancer
//! usr/share/fish/vendor_completions.d/balancer.fish
//! usr/share/doc/balancer/copyright
//! usr/share/balancer/grafana-dashboard.json      Grafana dashboard over the metrics
//! ```
//!
//! The unit is installed but neither enabled nor started: the example configuration
//! names interfaces and backends that must be edited first.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use crate::run::{self, command, target_dir, workspace_root};

/// The package's name (also the binary's and the unit's).
const NAME: &str = "balancer";
/// Where the unit, the example configuration and the copyright file live in the tree.
const PACKAGING_DIR: &str = "balancer-user/packaging";

/// Builds the .deb from an already built release binary and returns its path.
pub fn build_deb(out_dir: &Path) -> Result<PathBuf> {
    let binary = target_dir().join("release").join(NAME);
    if !binary.is_file() {
        bail!(
            "{} is missing: build it first (`cargo xtask build`)",
            binary.display()
        );
    }
    let version = env!("CARGO_PKG_VERSION");
    let arch = run::stdout(&mut command("dpkg", ["--print-architecture"]))
        .context("asking dpkg for the architecture")?;
    let arch = arch.trim();
    let stage = target_dir()
        .join("package")
        .join(format!("{NAME}_{version}_{arch}"));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("clearing {}", stage.display()))?;
    }
    let packaging = workspace_root().join(PACKAGING_DIR);
    install(&binary, &stage.join("usr/sbin").join(NAME), 0o755)?;
    install(
        &packaging.join("balancer.service"),
        &stage.join("lib/systemd/system/balancer.service"),
        0o644,
    )?;
    install(
        &packaging.join("balancer.toml"),
        &stage.join("etc/balancer/balancer.toml"),
        0o644,
    )?;
    install(
        &packaging.join("grafana-dashboard.json"),
        &stage
            .join("usr/share")
            .join(NAME)
            .join("grafana-dashboard.json"),
        0o644,
    )?;
    install(
        &packaging.join("copyright"),
        &stage.join("usr/share/doc").join(NAME).join("copyright"),
        0o644,
    )?;
    man_pages(&binary, &stage.join("usr/share/man/man1"))?;
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/balancer"),
        ("zsh", "usr/share/zsh/vendor-completions/_balancer"),
        ("fish", "usr/share/fish/vendor_completions.d/balancer.fish"),
    ] {
        let script = run::stdout(&mut command(&binary, ["completions", shell]))
            .with_context(|| format!("generating the {shell} completions"))?;
        write(&stage.join(path), script.as_bytes(), 0o644)?;
    }
    control_files(&stage, version, arch)?;
    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let deb = out_dir.join(format!("{NAME}_{version}_{arch}.deb"));
    run::run(&mut command(
        "dpkg-deb",
        [
            "--root-owner-group".as_ref(),
            "--build".as_ref(),
            stage.as_os_str(),
            deb.as_os_str(),
        ],
    ))
    .context("dpkg-deb could not build the package")?;
    Ok(deb)
}

/// `balancer man-pages` into `dir`, each page compressed as Debian policy wants.
fn man_pages(binary: &Path, dir: &Path) -> Result<()> {
    run::run(&mut command(
        binary,
        ["man-pages".as_ref(), "--out".as_ref(), dir.as_os_str()],
    ))
    .context("generating the man pages")?;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        // -n: no name or time stamp in the archive, so builds are reproducible.
        run::run(&mut command("gzip", ["-9nf".as_ref(), path.as_os_str()]))
            .with_context(|| format!("compressing {}", path.display()))?;
    }
    Ok(())
}

/// DEBIAN/control, conffiles, and the maintainer scripts that tell systemd about the
/// unit (only where systemd runs).
fn control_files(stage: &Path, version: &str, arch: &str) -> Result<()> {
    let size_kib = tree_size(stage)? / 1024;
    let control = format!(
        "Package: {NAME}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: balancer maintainers <maintainers@balancer.invalid>\n\
         Installed-Size: {size_kib}\n\
         Depends: libc6\n\
         Recommends: iproute2, ethtool\n\
         Section: net\n\
         Priority: optional\n\
         Description: XDP layer-4 load balancer appliance\n \
         An XDP program answers TCP and UDP connections to virtual services and\n \
         spreads them over backends with Maglev consistent hashing; cookie-mode\n \
         services pin each session to the app server its session cookie names.\n \
         The daemon health-checks backends and rewrites a failed primary's\n \
         sessions to its secondary.\n"
    );
    let debian = stage.join("DEBIAN");
    write(&debian.join("control"), control.as_bytes(), 0o644)?;
    write(
        &debian.join("conffiles"),
        b"/etc/balancer/balancer.toml\n",
        0o644,
    )?;
    let reload = "#!/bin/sh\nset -e\n\
                  if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n";
    write(&debian.join("postinst"), reload.as_bytes(), 0o755)?;
    write(&debian.join("postrm"), reload.as_bytes(), 0o755)?;
    let prerm = "#!/bin/sh\nset -e\n\
                 if [ -d /run/systemd/system ] && [ \"$1\" = remove ]; then\n    \
                 systemctl stop balancer.service || true\nfi\n";
    write(&debian.join("prerm"), prerm.as_bytes(), 0o755)
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let bytes = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write(to, &bytes, mode)
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// Bytes of the regular files under `dir`.
fn tree_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            tree_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

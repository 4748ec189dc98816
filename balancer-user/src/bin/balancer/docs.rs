//! `balancer completions` and `balancer man-pages`: shell completions and man pages made
//! from the CLI's own clap definitions, so they never drift from it. The Debian package
//! (`cargo xtask package`) ships both.

use std::{io::Write as _, path::Path};

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::Cli;

/// Writes the completion script for `shell` to stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut cmd = Cli::command();
    // Rendered first: clap_complete panics on a failed write (e.g. a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "balancer", &mut script);
    std::io::stdout()
        .write_all(&script)
        .context("writing the completion script")
}

/// Writes `balancer.1` and one page per subcommand (`balancer-attach.1`, ...) to `out`.
pub fn man_pages(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let cmd = Cli::command();
    write_page(&cmd, out, "balancer")?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("balancer-{}", sub.get_name());
        let sub = sub.clone().name(name.clone());
        write_page(&sub, out, &name)?;
    }
    Ok(())
}

fn write_page(cmd: &clap::Command, out: &Path, name: &str) -> Result<()> {
    let path = out.join(format!("{name}.1"));
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut page)
        .with_context(|| format!("rendering the man page {name}"))?;
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))
}

//! Helpers to run external commands.
//!
//! Every command that changes something or that the user waits on is printed (`$ ...`)
//! before it runs, so a log shows exactly what was executed and can be replayed by hand.
//! Read-only probes (`probe`) stay quiet: they run on every task to decide whether
//! setup is needed, and printing them would bury the useful output.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Output, Stdio};

use anyhow::{bail, Context, Result};

/// The workspace root: commands run there so relative paths (target/, Cargo.toml) resolve
/// the same whichever directory `cargo xtask` was started from.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
}

/// Cargo's target directory, honouring `CARGO_TARGET_DIR` like cargo itself does.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// A command for `program args...` that runs in the workspace root.
pub fn command<I, S>(program: impl AsRef<OsStr>, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(workspace_root());
    cmd
}

/// A `cargo` command (the one on PATH, i.e. the rustup proxy, so `+toolchain` works).
pub fn cargo<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    command("cargo", args)
}

/// The command as a shell-like line, with the environment variables it sets.
pub fn describe(cmd: &Command) -> String {
    let envs = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), quote(v))));
    let words = std::iter::once(quote(cmd.get_program())).chain(cmd.get_args().map(quote));
    envs.chain(words).collect::<Vec<_>>().join(" ")
}

/// Quotes a word when needed so the printed command can be pasted into a shell.
fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:+,@%".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Prints the command, then runs it with inherited stdio; returns its exit status.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    let line = announce(cmd);
    cmd.status()
        .with_context(|| format!("could not start `{line}`: is the program installed and on PATH?"))
}

/// Prints and runs the command; fails unless it exits successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    let status = status(cmd)?;
    check(&line, status)
}

/// Prints and runs the command, streaming its stdout to ours while also capturing it
/// (the test task parses cargo test's result lines). Stderr is passed through untouched.
pub fn run_tee(cmd: &mut Command) -> Result<(ExitStatus, String)> {
    let line = announce(cmd);
    let mut child = cmd.stdout(Stdio::piped()).spawn().with_context(|| {
        format!("could not start `{line}`: is the program installed and on PATH?")
    })?;
    let stdout = child.stdout.take().expect("stdout was piped");
    let mut captured = String::new();
    let mut out = std::io::stdout().lock();
    for text in BufReader::new(stdout).lines() {
        let text = text.with_context(|| format!("reading the output of `{line}`"))?;
        writeln!(out, "{text}").context("writing to stdout")?;
        captured.push_str(&text);
        captured.push('\n');
    }
    drop(out);
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{line}`"))?;
    Ok((status, captured))
}

/// Runs the command quietly and returns its stdout; fails (with its stderr) unless it
/// exits successfully.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    let line = describe(cmd);
    let out = cmd.stdin(Stdio::null()).output().with_context(|| {
        format!("could not start `{line}`: is the program installed and on PATH?")
    })?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{line}` printed non-UTF-8 output"))
}

/// Runs a read-only probe quietly and returns its output; `None` if it could not start.
pub fn probe<I, S>(program: &str, args: I) -> Option<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    command(program, args).stdin(Stdio::null()).output().ok()
}

/// Turns a non-zero exit status into an error naming the command.
pub fn check(line: &str, status: ExitStatus) -> Result<()> {
    if status.success() {
        Ok(())
    } else {
        bail!("`{line}` failed ({status})")
    }
}

/// The exit code to pass on for a child's status (128 + signal, like a shell, if killed).
pub fn exit_code(status: ExitStatus) -> ExitCode {
    let code = status
        .code()
        .or_else(|| status.signal().map(|sig| 128 + sig))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Prints `$ command` and returns the printed line for error messages.
fn announce(cmd: &Command) -> String {
    let line = describe(cmd);
    println!("$ {line}");
    line
}

//! The build, demo, test, bench and fuzz tasks. Each runs setup first when a prerequisite is
//! missing, so they work on a fresh machine without a separate `cargo xtask setup`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::run::{self, cargo, command, target_dir, workspace_root};
use crate::setup;
use crate::summary::Tally;

/// `cargo xtask build`: release build of every host binary.
pub fn build() -> Result<()> {
    setup::ensure()?;
    build_release()
}

/// `cargo xtask demo`: runs the end-to-end demo against freshly built binaries and
/// exits with the demo's own exit code.
pub fn demo(extra: &[String]) -> Result<ExitCode> {
    setup::ensure()?;
    build_release()?;
    let mut args = vec![
        "--balancer".into(),
        release_bin("balancer")?.into_os_string(),
        "--testsrv".into(),
        release_bin("balancer-testsrv")?.into_os_string(),
    ];
    args.extend(extra.iter().map(Into::into));
    let status = run::status(&mut command(release_bin("balancer-demo")?, args))?;
    Ok(run::exit_code(status))
}

/// `cargo xtask bench`: runs the benchmark suite and exits with its exit code. Writes
/// target/bench/results.json; the Markdown report goes to BENCHMARKS.md (plots in
/// docs/bench/) after a full run, to target/bench/ after a quick one, so a quick run never
/// replaces the committed figures. Arguments after `--` go to balancer-bench.
pub fn bench(quick: bool, extra: &[String]) -> Result<ExitCode> {
    setup::ensure()?;
    build_release()?;
    let out_dir = target_dir().join("bench");
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("could not create {}", out_dir.display()))?;
    let root = workspace_root();
    let (markdown, plots) = if quick {
        (out_dir.join("BENCHMARKS.md"), out_dir.clone())
    } else {
        (root.join("BENCHMARKS.md"), root.join("docs/bench"))
    };
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    if quick {
        args.push("--quick".into());
    }
    for (flag, path) in [
        ("--out", out_dir.join("results.json")),
        ("--markdown", markdown),
        ("--plots", plots),
        ("--analysis", root.join("docs/bench-analysis.md")),
    ] {
        args.push(flag.into());
        args.push(path.into_os_string());
    }
    args.extend(extra.iter().map(Into::into));
    let status = run::status(&mut command(release_bin("balancer-bench")?, args))?;
    Ok(run::exit_code(status))
}

/// `cargo xtask package`: the Debian package (see package.rs); prints its path last.
pub fn package(no_build: bool, out: Option<PathBuf>) -> Result<()> {
    if !no_build {
        setup::ensure()?;
        build_release()?;
    }
    let out = out.unwrap_or_else(|| target_dir().join("package"));
    let deb = crate::package::build_deb(&out)?;
    println!("{}", deb.display());
    Ok(())
}

/// `cargo xtask fuzz`: runs balancer-fuzz (see its doc comment) and exits with its exit
/// code (1 on a finding).
pub fn fuzz(packets: Option<u64>, seed: Option<u64>) -> Result<ExitCode> {
    setup::require_root("cargo xtask fuzz must run as root (BPF_PROG_TEST_RUN, bpffs pins)")?;
    setup::ensure()?;
    build_release()?;
    let mut args: Vec<String> = Vec::new();
    if let Some(n) = packets {
        args.extend(["--packets".into(), n.to_string()]);
    }
    if let Some(s) = seed {
        args.extend(["--seed".into(), s.to_string()]);
    }
    let status = run::status(&mut command(release_bin("balancer-fuzz")?, args))?;
    Ok(run::exit_code(status))
}

/// `cargo xtask test`: the project's full check (CI runs exactly this). Stops at the
/// first failing step and always ends with a `xtask test: N passed, M failed` line.
pub fn test(extra: &[String]) -> Result<()> {
    setup::require_root(
        "cargo xtask test must run as root (the integration tests create network \
         namespaces and attach XDP programs)",
    )?;
    setup::ensure()?;
    let mut tally = Tally::default();
    let result = test_steps(extra, &mut tally);
    println!("{}", tally.summary());
    result
}

/// `cargo xtask test --unit`: the checks and tests that need no root (formatting,
/// clippy, the unit tests of the eBPF crate's shared logic, of the control library, of
/// xtask and of the test bed's library and tools). Arguments go to the unit tests.
pub fn test_unit(extra: &[String]) -> Result<()> {
    setup::ensure()?;
    let mut tally = Tally::default();
    let result = static_and_unit_steps(&mut tally).and_then(|()| {
        header(
            4,
            "unit tests of the control library, xtask and the test bed",
        );
        cargo_test(&["-p", "balancer-user", "-p", "xtask"], extra, &mut tally)?;
        // The test bed's integration tests need root; its library and tools' own do not.
        cargo_test(
            &["-p", "balancer-tests", "--lib", "--bins"],
            extra,
            &mut tally,
        )
    });
    println!("{}", tally.summary());
    result
}

/// Steps 1-3 of both tiers, none of which needs root; cheap static checks come first.
fn static_and_unit_steps(tally: &mut Tally) -> Result<()> {
    header(1, "formatting");
    run::run(&mut cargo(["fmt", "--all", "--", "--check"]))
        .context("code is not formatted: run `cargo fmt --all`")?;

    header(2, "clippy");
    run::run(&mut cargo([
        "clippy",
        "--workspace",
        "--exclude",
        "balancer-xdp",
        "--exclude",
        "balancer-testprogs",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
    .context("clippy found problems in the host crates (see above)")?;
    // The BPF programs build for the BPF target only, with the nightly toolchain (as
    // aya-build builds them).
    run::run(&mut command(
        "cargo",
        [
            "+nightly",
            "clippy",
            "-p",
            "balancer-xdp",
            "-p",
            "balancer-testprogs",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ],
    ))
    .context("clippy found problems in the BPF programs (see above)")?;

    header(3, "unit and property tests of the shared no_std code");
    cargo_test(&["-p", "balancer-common"], &[], tally)
}

/// The steps of `cargo xtask test`, in order.
fn test_steps(extra: &[String], tally: &mut Tally) -> Result<()> {
    static_and_unit_steps(tally)?;

    // Release: the integration tests push real traffic, which debug builds make slow.
    // They drive the `balancer` binary, which `cargo test` does not build for another
    // package, so the binaries are built first.
    header(4, "userspace and integration tests");
    build_release()?;
    let args = [
        "--release",
        "--no-fail-fast",
        "-p",
        "balancer-user",
        "-p",
        "balancer-tests",
        "-p",
        "xtask",
    ];
    cargo_test(&args, extra, tally)
}

/// Runs `cargo test args extra`, adding its test counts to `tally`.
fn cargo_test(args: &[&str], extra: &[String], tally: &mut Tally) -> Result<()> {
    let mut cmd = cargo(["test"]);
    cmd.args(args).args(extra);
    let line = run::describe(&cmd);
    let (status, output) = run::run_tee(&mut cmd)?;
    tally.add_output(&output);
    run::check(&line, status)
}

/// Release build of the host crates' binaries (the build scripts of balancer-user and
/// tests also compile the BPF programs). The BPF packages themselves only build for BPF.
fn build_release() -> Result<()> {
    run::run(&mut cargo([
        "build",
        "--release",
        "--workspace",
        "--exclude",
        "balancer-xdp",
        "--exclude",
        "balancer-testprogs",
        "--bins",
    ]))
    .context("release build failed (see the compiler output above)")
}

/// Path of a release binary, failing clearly if the build did not produce it.
fn release_bin(name: &str) -> Result<PathBuf> {
    let path = target_dir().join("release").join(name);
    if !path.is_file() {
        bail!(
            "{} was not built: no workspace package provides a `{name}` binary",
            path.display()
        );
    }
    Ok(path)
}

fn header(step: u32, title: &str) {
    println!("\n==> xtask test step {step}/4: {title}");
}

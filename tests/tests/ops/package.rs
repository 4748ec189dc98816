//! The Debian package (`cargo xtask package`): installed with dpkg on this machine, the
//! installed binary, man pages, completions and systemd unit checked, then purged, with
//! nothing of it left behind.
//!
//! Needs the release binaries (`balancer`, `xtask`). Refuses to run where a
//! `balancer` package or a /usr/sbin/balancer is already installed: it never replaces
//! what it did not put there.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use balancer_tests::{harness, topology::built_bin};

const PACKAGE: &str = "balancer";

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn installed() -> bool {
    let out = run("dpkg-query", &["-W", "-f=${Status}", PACKAGE]);
    String::from_utf8_lossy(&out.stdout).contains("install ok installed")
}

/// Purges the package when the test ends, also when it fails.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", PACKAGE]);
    }
}

#[test]
fn deb_installs_runs_and_purges_cleanly() {
    harness::root::assert_root();
    assert!(
        !installed() && !Path::new("/usr/sbin/balancer").exists(),
        "a balancer package or /usr/sbin/balancer is already installed here: not touching it"
    );
    let out_dir = std::env::temp_dir().join(format!("balancer-deb-{}", std::process::id()));
    let xtask = built_bin("xtask").expect("the xtask binary");
    let stdout = ok(
        &xtask.to_string_lossy(),
        &["package", "--no-build", "--out", &out_dir.to_string_lossy()],
    );
    let deb = PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("xtask printed the .deb's path"),
    );
    assert!(deb.is_file(), "{} missing", deb.display());

    let guard = Installed;
    ok("dpkg", &["-i", &deb.to_string_lossy()]);
    let files: Vec<PathBuf> = ok("dpkg", &["-L", PACKAGE])
        .lines()
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .collect();
    for wanted in [
        "/usr/sbin/balancer",
        "/lib/systemd/system/balancer.service",
        "/etc/balancer/balancer.toml",
        "/usr/share/man/man1/balancer.1.gz",
        "/usr/share/man/man1/balancer-daemon.1.gz",
        "/usr/share/bash-completion/completions/balancer",
        "/usr/share/zsh/vendor-completions/_balancer",
        "/usr/share/fish/vendor_completions.d/balancer.fish",
        "/usr/share/balancer/grafana-dashboard.json",
    ] {
        assert!(
            files.contains(&PathBuf::from(wanted)),
            "{wanted} not installed: {files:?}"
        );
    }
    let version = ok("/usr/sbin/balancer", &["--version"]);
    assert_eq!(
        version.trim(),
        format!("balancer {}", env!("CARGO_PKG_VERSION"))
    );
    let help = ok("/usr/sbin/balancer", &["attach", "--help"]);
    assert!(help.contains("--veth-peer-pass"), "{help}");
    let completions = std::fs::read_to_string("/usr/share/bash-completion/completions/balancer")
        .expect("bash completions");
    assert!(
        completions.contains("syncookie-key"),
        "bash completions lack commands"
    );
    let page = ok("zcat", &["/usr/share/man/man1/balancer-attach.1.gz"]);
    assert!(
        page.contains("veth\\-peer\\-pass"),
        "man page lacks the flag: {page}"
    );

    // systemd's own check of the unit (where systemd-analyze exists); the man pages it
    // names are only looked up where man is installed.
    if Path::new("/usr/bin/systemd-analyze").exists() {
        let out = run(
            "systemd-analyze",
            &["verify", "/lib/systemd/system/balancer.service"],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let complaints: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.contains("Command 'man ") || Path::new("/usr/bin/man").exists())
            .collect();
        assert!(
            complaints.is_empty(),
            "systemd-analyze verify: {}",
            complaints.join("\n")
        );
    }

    drop(guard);
    assert!(!installed(), "still installed after purge");
    let left: Vec<&PathBuf> = files.iter().filter(|p| p.exists()).collect();
    assert!(left.is_empty(), "left behind after purge: {left:?}");
    assert!(
        !Path::new("/etc/balancer").exists(),
        "/etc/balancer left behind"
    );
    let _ = std::fs::remove_dir_all(&out_dir);
}

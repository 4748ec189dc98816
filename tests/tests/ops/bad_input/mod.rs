//! Bad input to the `balancer` CLI and to `balancer daemon` at start: tables of wrong
//! arguments for every subcommand and of bad configuration files, each of which must be
//! rejected with exactly one line on stderr (`balancer: error: ...`) that names the
//! problem, a non-zero exit, nothing on stdout, and no change to the pinned state.
//!
//! The CLI table runs against an attached instance holding a cookie-mode service (server
//! ids, a failover entry, a hash-colliding token), a drained NAT service and a UDP
//! service; after every case the pinned state (service and backend lists with server ids
//! and failover, status, the pin directory, the syncookie secrets, the XDP programs on
//! the gateway's interfaces) must be what it was. Cases on a never-attached instance must
//! leave no pin directory behind.
//!
//! The daemon table starts `balancer daemon --config <bad file>` in the gateway's
//! namespace twice per file: before the instance exists (nothing may be pinned or
//! attached afterwards) and after a good daemon has set the instance up and stopped (its
//! pinned state must not change). Each run must exit within a few seconds.
//!
//! `wire/netns.rs` (`cli_rejects_bad_input_without_changing_state`) and `daemon_ops/` (bad
//! configurations on reload) cover neighbouring ground; this file is the complete table.
//!
//! Needs root and a built `balancer` binary (`cargo build --release -p balancer-user`).
//! Every failing case is collected and reported at the end, not just the first.

mod cli;
mod daemon_config;

use std::{
    fs,
    net::{TcpListener, UdpSocket},
    os::unix::{
        fs::PermissionsExt as _,
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use aya::maps::{Array, MapData};
use balancer_common::{map_names, syncookie::SyncookieKeys};
use balancer_tests::{
    daemon::{colliding_tokens, daemon_config, edit, write_with_mode, ConfigOptions, Daemon},
    harness::root::assert_root,
    netns,
    topology::{service_arg, Topology, BPFFS_ROOT},
};
use balancer_user::Balancer;
use serde_json::{json, Value};

/// A CLI command that is rejected answers in milliseconds; one that still runs after
/// this was accepted (e.g. an agent announcing itself) and is killed.
const CLI_LIMIT: Duration = Duration::from_secs(2);
/// A daemon with a bad file must exit within this (loading the program takes ~0.5 s).
const DAEMON_LIMIT: Duration = Duration::from_secs(5);
const ERROR_PREFIX: &str = "balancer: error: ";

// ---- Running commands ---------------------------------------------------------------

/// A scratch directory of this test (key files, configurations, control sockets,
/// captured output), removed when it drops.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(netns::unique_name("lbbad"));
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `name` with exactly `mode` and returns its path as a string.
    fn file(&self, name: &str, contents: &[u8], mode: u32) -> String {
        let path = self.path(name);
        write_with_mode(&path, contents, mode).unwrap();
        path.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

struct Outcome {
    /// `None`: still running at the limit (killed).
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Runs `cmd` with stdin closed and its output in files, killing it if it still runs
/// after `limit`.
fn run_bounded(mut cmd: Command, limit: Duration, scratch: &Scratch) -> Outcome {
    let (out_path, err_path) = (scratch.path("out.txt"), scratch.path("err.txt"));
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap());
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawning balancer");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Outcome {
        status,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

/// What is wrong with how a bad input was rejected (empty: rejected as it should be).
fn rejection_problems(out: &Outcome, expected: &str) -> Vec<String> {
    let mut p = Vec::new();
    let err = out.stderr.trim_end();
    match out.status {
        None => p.push(format!(
            "still running after {:?}: accepted (killed)",
            out.elapsed
        )),
        Some(s) if s.success() => p.push("exit status 0: accepted".into()),
        Some(_) => {}
    }
    if !out.stdout.is_empty() {
        p.push(format!("stdout not empty: {:?}", out.stdout));
    }
    if err.lines().count() != 1 {
        p.push(format!("stderr is not one line: {err:?}"));
    }
    if !err.starts_with(ERROR_PREFIX) {
        p.push(format!(
            "stderr does not start with {ERROR_PREFIX:?}: {err:?}"
        ));
    }
    if !err.contains(expected) {
        p.push(format!("stderr does not say {expected:?}: {err:?}"));
    }
    p
}

// ---- The pinned state ---------------------------------------------------------------

/// Sorted names in the instance's pin directory (maps, programs, links).
fn pin_listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The current and previous syncookie secrets, read from the pinned map.
fn syncookie_keys(dir: &Path) -> String {
    let b = Balancer::open(dir).expect("opening the instance");
    let keys: Array<MapData, SyncookieKeys> = b
        .map(map_names::SYNCOOKIE_KEYS)
        .unwrap()
        .try_into()
        .unwrap();
    let k = keys.get(&0, 0).unwrap();
    format!(
        "{:016x}{:016x}/{:016x}{:016x}",
        k.current.k0, k.current.k1, k.previous.k0, k.previous.k1
    )
}

/// Id of the XDP program on `iface` in the gateway's namespace (null: none).
fn xdp_prog(t: &Topology, iface: &str) -> Value {
    let out = t
        .gateway
        .ip(&["-j", "-d", "link", "show", "dev", iface])
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["xdp"]["prog"]["id"].clone()
}

/// What the CLI and the pin directory show of the instance, without what changes by
/// itself (health check counters and times): services, backends (with server ids and
/// failover), status, pins, syncookie secrets, and the XDP program of each of `ifaces`.
fn state_dump(t: &Topology, ifaces: &[String]) -> Value {
    let mut backends = t.balancer_json(&["backend", "list", "--json"]).unwrap();
    for b in backends.as_array_mut().into_iter().flatten() {
        if let Some(h) = b.get_mut("health").and_then(Value::as_object_mut) {
            h.retain(|k, _| k == "health");
        }
    }
    let xdp: serde_json::Map<String, Value> =
        ifaces.iter().map(|i| (i.clone(), xdp_prog(t, i))).collect();
    json!({
        "services": t.balancer_json(&["service", "list", "--json"]).unwrap(),
        "backends": backends,
        "status": t.balancer_json(&["status", "--json"]).unwrap(),
        "pins": pin_listing(&t.pin_dir()),
        "syncookie_keys": syncookie_keys(&t.pin_dir()),
        "xdp": xdp,
    })
}

/// The parts of two dumps that differ, for a readable failure.
fn dump_diff(before: &Value, after: &Value) -> String {
    let keys = before.as_object().unwrap().keys();
    keys.filter(|k| before[k.as_str()] != after[k.as_str()])
        .map(|k| format!("{k}: {} -> {}", before[k.as_str()], after[k.as_str()]))
        .collect::<Vec<_>>()
        .join("; ")
}

fn pin_dir_of(instance: &str) -> PathBuf {
    Path::new(BPFFS_ROOT).join(instance)
}

/// Fails with every collected problem.
fn report(what: &str, total: usize, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} of {total} {what} cases were not rejected properly:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// `s` with `\\n` turned into newlines and each `{name}` into its value in `vars`.
fn fill(s: &str, vars: &[(&str, String)]) -> String {
    vars.iter().fold(s.replace("\\n", "\n"), |s, (k, v)| {
        s.replace(&format!("{{{k}}}"), v)
    })
}

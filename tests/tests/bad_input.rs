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
//! `netns.rs` (`cli_rejects_bad_input_without_changing_state`) and `daemon_ops.rs` (bad
//! configurations on reload) cover neighbouring ground; this file is the complete table.
//!
//! Needs root and a built `balancer` binary (`cargo build --release -p balancer-user`).
//! Every failing case is collected and reported at the end, not just the first.

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
    daemon::{colliding_tokens, daemon_config, write_with_mode, ConfigOptions, Daemon},
    netns,
    topology::{self, service_arg, Topology, BPFFS_ROOT},
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

// ---- 1. The CLI ---------------------------------------------------------------------

/// One bad command line.
struct Case {
    args: Vec<String>,
    /// What the one-line error must say.
    expect: String,
    /// The case gives its own global options: no `--instance`/`--run-dir` added.
    raw: bool,
    /// Run against a never-attached instance (its pin directory must stay absent).
    fresh: bool,
}

/// The CLI table: `[flags] arguments => what the error must say`, one case a line.
/// Arguments are split at spaces; `'...'` is one argument (possibly empty or with
/// spaces); `{name}` is replaced by the value of `name` in both columns. Flags: `raw`
/// (the case gives its own global options), `fresh` (run against a never-attached
/// instance, whose pin directory must stay absent).
const CLI_CASES: &str = r#"
# -- no or unknown subcommand, global options
                => requires a subcommand
frobnicate      => unrecognized subcommand 'frobnicate'
[raw] --instance bad/name status            => invalid instance name 'bad/name'
[raw] --instance '' status                  => invalid instance name ''
[raw] --instance {long65} status            => invalid instance name
[raw] --instance {fresh} --bpffs-root {not_bpffs} attach --iface bia => is not on a bpf filesystem
# -- attach (bia: a spare veth of the gateway; eth0 exists in the client's namespace only)
attach                                      => required arguments were not provided: --iface
attach --iface nosuch0                      => interface 'nosuch0' does not exist
attach --iface eth0                         => interface 'eth0' does not exist
attach --iface ''                           => interface '' does not exist
attach --iface cli0                         => interface 'cli0' is already attached
attach --iface bia --iface srv0             => interface 'srv0' is already attached
attach --iface bia --iface bia              => 'bia': named twice
attach --iface bia --iface nosuch0          => interface 'nosuch0' does not exist
attach --iface bia --iface lo               => attaching to lo
attach --iface bia --mode turbo             => invalid value 'turbo' for '--mode
attach --iface bia --tcp-timeout 0          => invalid --tcp-timeout '0'
attach --iface bia --tcp-transient-timeout 0 => invalid --tcp-transient-timeout '0'
attach --iface bia --udp-timeout 0          => invalid --udp-timeout '0'
attach --iface bia --udp-timeout -1         => '-1'
attach --iface bia --tcp-timeout 4294967296 => invalid value '4294967296' for '--tcp-timeout
attach --iface bia --flow-capacity abc      => invalid value 'abc' for '--flow-capacity
[fresh] attach --iface bia --flow-capacity 0 => invalid flow capacity '0'
[fresh] attach --iface bia --flow-capacity 1 => invalid flow capacity '1'
[fresh] attach --iface bia --tcp-timeout 0  => invalid --tcp-timeout '0'
[fresh] attach --iface nosuch0              => interface 'nosuch0' does not exist
[fresh] attach --iface bia --iface lo       => attaching to lo
# -- detach, status
detach extra                                => unexpected argument 'extra'
detach --force                              => unexpected argument '--force'
[fresh] detach                              => is not attached
status --yaml                               => unexpected argument '--yaml'
status extra                                => unexpected argument 'extra'
[fresh] status                              => is not attached
# -- service ({svc}: cookie mode, {nat}: NAT, {udp}: UDP; {svc9} does not exist)
service                                     => requires a subcommand
service frobnicate                          => unrecognized subcommand 'frobnicate'
service add                                 => required arguments were not provided: <SERVICE>
service add 198.18.100.9                    => invalid service address '198.18.100.9'
service add 198.18.100.9:0                  => port 0 is not allowed
service add 198.18.100.9:65536              => '65536' is not a port number
service add 198.18.100.9:-1                 => '-1' is not a port number
service add 198.18.100:80                   => '198.18.100' is not an IPv4 address
service add vip.example:80                  => 'vip.example' is not an IPv4 address
service add [::1]:80                        => '[::1]' is not an IPv4 address
service add 0.0.0.0:80                      => must be a unicast host address
service add 255.255.255.255:80              => must be a unicast host address
service add 224.0.0.1:80                    => must be a unicast host address
service add {svc9} --proto sctp             => invalid protocol 'sctp'
service add {svc9} --proto ''               => invalid protocol ''
service add {svc}                           => service 198.18.100.1:80/tcp already exists
service add {svc} --cookie                  => service 198.18.100.1:80/tcp already exists
service add {udp} --proto udp               => service 198.18.100.3:53/udp already exists
service add {svc9} --cookie --proto udp     => cookie mode needs TCP
service add {svc9} --cookie-name SID        => required arguments were not provided: --cookie
service add {svc9} --cookie --cookie-name ''    => invalid cookie name ''
service add {svc9} --cookie --cookie-name 'a b' => invalid cookie name 'a b'
service add {svc9} --cookie --cookie-name a=b   => invalid cookie name 'a=b'
service add {svc9} --cookie --cookie-name {name32} => invalid cookie name '{name32}'
service add {svc9} --cookie --cookie-delimiter ;   => invalid cookie delimiter ';'
service add {svc9} --cookie --cookie-delimiter "   => invalid cookie delimiter '"'
service add {svc9} --cookie --cookie-delimiter ' ' => invalid cookie delimiter ' '
service add {svc9} --cookie --cookie-delimiter é   => invalid cookie delimiter 'é'
service add {svc9} --cookie --cookie-delimiter !!  => invalid value '!!' for '--cookie-delimiter
service add {svc9} --cookie --primary-segment 0    => invalid cookie segments '0/3'
service add {svc9} --cookie --primary-segment 3    => invalid cookie segments '3/3'
service add {svc9} --cookie --primary-segment 256  => invalid value '256' for '--primary-segment
service add {svc9} --cookie --secondary-segment x  => invalid value 'x' for '--secondary-segment
service remove                              => required arguments were not provided: <SERVICE>
service remove {svc9}                       => service 198.18.100.9:80/tcp does not exist
service remove {svc} --proto udp            => service 198.18.100.1:80/udp does not exist
service remove {udp}                        => service 198.18.100.3:53/tcp does not exist
service remove {svc} --proto icmp           => invalid protocol 'icmp'
service remove 198.18.100.1                 => invalid service address '198.18.100.1'
[fresh] service remove {svc}                => is not attached
service list --all                          => unexpected argument '--all'
service list extra                          => unexpected argument 'extra'
# -- backend ({new_be} is in no service; {tok_b} hashes like {tok_a}, the token of {be3})
backend                                     => requires a subcommand
backend frobnicate                          => unrecognized subcommand 'frobnicate'
backend add {svc}                           => required arguments were not provided: <BACKEND>
backend add {svc} 198.18.1.30               => invalid backend address '198.18.1.30'
backend add {svc} 198.18.1.30:0             => port 0 is not allowed
backend add {svc} 198.18.1.30:65536         => '65536' is not a port number
backend add {svc} 0.0.0.0:8080              => must be a unicast host address
backend add {svc} backend.example:8080      => 'backend.example' is not an IPv4 address
backend add {svc} {new_be} --proto sctp     => invalid protocol 'sctp'
backend add {svc9} {new_be}                 => service 198.18.100.9:80/tcp does not exist
backend add {udp} 198.18.1.30:53            => service 198.18.100.3:53/tcp does not exist
backend add {svc} {be1} --server-id app9    => backend {be1} already exists in service
backend add {nat} {nat_be}                  => backend {nat_be} already exists in service
backend add {udp} {udp_be} --proto udp      => backend {udp_be} already exists in service
backend add {nat} {new_be} --weight 0       => invalid weight '0'
backend add {nat} {new_be} --weight 10001   => invalid weight '10001'
backend add {nat} {new_be} --weight -1      => '-1'
backend add {nat} {new_be} --weight abc     => invalid value 'abc' for '--weight
backend add {nat} {new_be} --weight 1.5     => invalid value '1.5' for '--weight
backend add {nat} {new_be} --weight 4294967296 => invalid value '4294967296' for '--weight
backend add {nat} {new_be} --server-id app3 => is not in cookie mode
backend add {udp} 198.18.1.30:53 --proto udp --server-id app3 => is not in cookie mode
backend add {svc} {new_be} --server-id app1 => invalid server id 'app1': is already used
backend add {svc} {new_be} --server-id {tok_b} => invalid server id '{tok_b}': hashes like '{tok_a}'
backend add {svc} {new_be} --server-id ''   => invalid server id ''
backend add {svc} {new_be} --server-id app!3 => invalid server id 'app!3'
backend add {svc} {new_be} --server-id app;3 => invalid server id 'app;3'
backend add {svc} {new_be} --server-id app"3 => invalid server id 'app"3'
backend add {svc} {new_be} --server-id app,3 => invalid server id 'app,3'
backend add {svc} {new_be} --server-id 'app 3' => invalid server id 'app 3'
backend add {svc} {new_be} --server-id app{tab}3 => invalid server id 'app{tab}3'
backend add {svc} {new_be} --server-id äpp3 => invalid server id 'äpp3'
backend add {svc} {new_be} --server-id {long65} => use 1-64 visible ASCII characters
[fresh] backend add {svc} {new_be}          => is not attached
backend remove {svc}                        => required arguments were not provided: <BACKEND>
backend remove {svc} {new_be}               => backend {new_be} is not in service 198.18.100.1:80/tcp
backend remove {svc} {nat_be}               => backend {nat_be} is not in service 198.18.100.1:80/tcp
backend remove {svc} {be1} --proto udp      => service 198.18.100.1:80/udp does not exist
backend remove {svc9} {be1}                 => service 198.18.100.9:80/tcp does not exist
backend remove {svc} 198.18.1.10:0          => port 0 is not allowed
backend remove {svc} {be1} --proto gre      => invalid protocol 'gre'
backend drain {svc} {new_be}                => backend {new_be} is not in service
backend drain {svc} bad                     => invalid backend address 'bad'
backend drain {svc9} {be1}                  => service 198.18.100.9:80/tcp does not exist
backend drain {udp} {udp_be}                => service 198.18.100.3:53/tcp does not exist
backend undrain {svc} {new_be}              => backend {new_be} is not in service
backend undrain {nat} 198.18.1.10           => invalid backend address '198.18.1.10'
backend undrain {nat} {nat_be} --proto xyz  => invalid protocol 'xyz'
backend undrain {svc9} {nat_be}             => service 198.18.100.9:80/tcp does not exist
backend set-weight {svc} {be1}              => required arguments were not provided: <WEIGHT>
backend set-weight {svc} {be1} 0            => invalid weight '0'
backend set-weight {svc} {be1} 10001        => invalid weight '10001'
backend set-weight {svc} {be1} -1           => '-1'
backend set-weight {svc} {be1} abc          => invalid value 'abc' for '<WEIGHT>'
backend set-weight {svc} {be1} 99999999999  => invalid value '99999999999' for '<WEIGHT>'
backend set-weight {svc} {new_be} 5         => backend {new_be} is not in service
backend set-weight {svc9} {be1} 5           => service 198.18.100.9:80/tcp does not exist
backend set-weight {svc} 198.18.1.10:99999 5 => '99999' is not a port number
backend failover {svc} {be2}                => required arguments were not provided: --to
backend failover {svc} {be2} --to {be2}     => a backend cannot replace itself
backend failover {svc} {be1} --to {be1}     => a backend cannot replace itself
backend failover {svc} {be2} --to {new_be}  => backend {new_be} is not in service
backend failover {svc} {be2} --to {nat_be}  => backend {nat_be} is not in service
backend failover {svc} {new_be} --to {be2}  => backend {new_be} is not in service
backend failover {svc} {new_be} --clear     => backend {new_be} is not in service
backend failover {svc} {be2} --to bad       => invalid backend address 'bad'
backend failover {svc} {be2} --to 198.18.1.11:0 => port 0 is not allowed
backend failover {svc} {be2} --to {be1} --clear => '--to <IP:PORT>' cannot be used with '--clear'
backend failover {nat} {nat_be} --clear     => failover applies to cookie-mode services
backend failover {udp} {udp_be} --proto udp --to {udp_be} => failover applies to cookie-mode services
backend failover {svc9} {be1} --clear       => service 198.18.100.9:80/tcp does not exist
backend list {svc9}                         => service 198.18.100.9:80/tcp does not exist
backend list bad                            => invalid service address 'bad'
backend list {svc} --proto sctp             => invalid protocol 'sctp'
backend list --yaml                         => unexpected argument '--yaml'
backend list {svc} extra                    => unexpected argument 'extra'
# -- stats, flows
stats --watch abc                           => invalid value 'abc' for '--watch
stats --watch -1                            => '-1'
stats --jsn                                 => unexpected argument '--jsn'
stats extra                                 => unexpected argument 'extra'
flows --limit abc                           => invalid value 'abc' for '--limit
flows --limit -5                            => '-5'
flows extra                                 => unexpected argument 'extra'
[fresh] flows                               => is not attached
# -- syncookie-key
syncookie-key --file {missing}              => reading {missing}: No such file
syncookie-key --file {dir}                  => reading {dir}: Is a directory
syncookie-key --file {key_short}            => invalid syncookie key file '{key_short}': expected 32 hexadecimal digits
syncookie-key --file {key_long}             => expected 32 hexadecimal digits
syncookie-key --file {key_not_hex}          => expected 32 hexadecimal digits
syncookie-key --file {key_empty}            => expected 32 hexadecimal digits
syncookie-key --file {key_spaced}           => expected 32 hexadecimal digits
syncookie-key --file {key_zero}             => the key must not be all zeros
syncookie-key --file {key_binary}           => reading {key_binary}: stream did not contain valid UTF-8
syncookie-key --file                        => a value is required for '--file <PATH>'
syncookie-key extra                         => unexpected argument 'extra'
[fresh] syncookie-key                       => is not attached
[fresh] syncookie-key --file {key_good}     => is not attached
# -- daemon (its configuration table is the next test)
daemon                                      => required arguments were not provided: --config
daemon --config {missing}                   => cannot read {missing}: No such file
daemon --config {dir}                       => cannot read {dir}: Is a directory
daemon --config {cfg_binary}                => cannot read {cfg_binary}: stream did not contain valid UTF-8
daemon --config {cfg_syntax}                => {cfg_syntax}: line 3
daemon --config {cfg_no_ifaces}             => daemon.interfaces: list at least one interface
daemon --config {cfg_no_ifaces} extra       => unexpected argument 'extra'
# -- reload, members, pairs (no daemon runs for the instance)
reload                                      => no balancer daemon answers
reload extra                                => unexpected argument 'extra'
members                                     => no balancer daemon answers
members --json                              => no balancer daemon answers
members --yaml                              => unexpected argument '--yaml'
pairs                                       => no balancer daemon answers
pairs extra                                 => unexpected argument 'extra'
# -- agent
agent                                       => required arguments were not provided: --group-key
agent --group-key {gk}                      => required arguments were not provided: --send-to
agent --group-key {gk_644} --send-to 127.0.0.1:7946 => may be accessed by group or others (mode 644)
agent --group-key {gk_640} --send-to 127.0.0.1:7946 => may be accessed by group or others (mode 640)
agent --group-key {gk_604} --send-to 127.0.0.1:7946 => may be accessed by group or others (mode 604)
agent --group-key {gk_short} --send-to 127.0.0.1:7946 => a group key needs at least 32
agent --group-key {gk_binary} --send-to 127.0.0.1:7946 => is not text
agent --group-key {missing} --send-to 127.0.0.1:7946 => cannot read group key file {missing}
agent --group-key {gk} --addr 0.0.0.0 --send-to 127.0.0.1:7946 => invalid addr
agent --group-key {gk} --addr bad --send-to 127.0.0.1:7946 => invalid value 'bad' for '--addr
{agent} --send-to bad                       => invalid value 'bad' for '--send-to
{agent} --send-to 127.0.0.1                 => invalid value '127.0.0.1' for '--send-to
{agent} --send-to 127.0.0.1:65536           => invalid value '127.0.0.1:65536' for '--send-to
{agent} --send-to [::1]:7946                => only IPv4 addresses are supported
# The daemon's group.peers rejects these two, and group.interval = "0s" (this agent
# would send 1000 messages a second).
{agent} --send-to 0.0.0.0:7946              => 0.0.0.0:7946
{agent} --send-to 127.0.0.1:0               => 127.0.0.1:0
{agent} {to} --interval 0s                  => interval
{agent} {to} --interval 10                  => invalid duration "10"
{agent} {to} --secondary app2               => required arguments were not provided: --server-id
{agent} {to} --server-id app;1              => invalid server_id
{agent} {to} --server-id {long65}           => invalid server_id
{agent} {to} --server-id app1 --secondary app1 => invalid secondary
{agent} {to} --server-id app1 --secondary a,b  => invalid secondary
{agent} {to} --name 'a b'                   => invalid name
{agent} {to} --name ''                      => invalid name
{agent} {to} --name {long65}                => invalid name
"#;

/// `s` with `\\n` turned into newlines and each `{name}` into its value in `vars`.
fn fill(s: &str, vars: &[(&str, String)]) -> String {
    vars.iter().fold(s.replace("\\n", "\n"), |s, (k, v)| {
        s.replace(&format!("{{{k}}}"), v)
    })
}

/// Parses [`CLI_CASES`], replacing `{name}` by its value in `vars`.
fn cli_cases(vars: &[(&str, String)]) -> Vec<Case> {
    let subst = |s: &str| fill(s, vars);
    let mut cases = Vec::new();
    for line in CLI_CASES.lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (args, expect) = line.split_once(" => ").expect("`args => expect`");
        let mut args = args.trim();
        let mut c = Case {
            args: Vec::new(),
            expect: subst(expect.trim()),
            raw: false,
            fresh: false,
        };
        for (flag, set) in [("[raw]", &mut c.raw), ("[fresh]", &mut c.fresh)] {
            if let Some(rest) = args.strip_prefix(flag) {
                *set = true;
                args = rest.trim_start();
            }
        }
        // Substituted first, so a variable may hold several arguments ({agent}).
        let args = subst(args);
        let mut rest = args.as_str();
        loop {
            rest = rest.trim_start();
            if rest.is_empty() {
                break;
            }
            if let Some(quoted) = rest.strip_prefix('\'') {
                let (arg, after) = quoted.split_once('\'').expect("closing quote");
                c.args.push(arg.to_string());
                rest = after;
            } else {
                let end = rest.find(' ').unwrap_or(rest.len());
                c.args.push(rest[..end].to_string());
                rest = &rest[end..];
            }
        }
        cases.push(c);
    }
    cases
}

#[test]
fn every_subcommand_rejects_bad_arguments_without_changing_state() {
    topology::assert_root();
    let mut t = Topology::two_arm(2).expect("building the topology");
    // A spare veth pair in the gateway: an interface that can take the program but is
    // not attached, to see an `attach` that fails half-way roll back.
    t.gateway
        .ip(&["link", "add", "bia", "type", "veth", "peer", "name", "bib"])
        .unwrap();
    for dev in ["bia", "bib"] {
        t.gateway.ip(&["link", "set", dev, "up"]).unwrap();
    }
    t.attach().expect("attaching the balancer");
    let scratch = Scratch::new();
    let run_dir = scratch.path("run").display().to_string();

    // The state every case runs against.
    let svc = service_arg(); // cookie mode
    let be1 = t.backends[0].endpoint();
    let be2 = t.backends[1].endpoint();
    let be3 = "198.18.1.20:8080";
    let nat = "198.18.100.2:8080";
    let nat_be = "198.18.1.10:9090";
    let udp = "198.18.100.3:53";
    let udp_be = "198.18.1.11:53";
    let new_be = "198.18.1.30:8080";
    let (tok_a, tok_b) = colliding_tokens();
    for args in [
        vec!["service", "add", &svc, "--cookie"],
        vec!["backend", "add", &svc, &be1, "--server-id", "app1"],
        vec!["backend", "add", &svc, &be2, "--server-id", "app2"],
        vec!["backend", "add", &svc, be3, "--server-id", &tok_a],
        vec!["backend", "failover", &svc, &be1, "--to", &be2],
        vec!["backend", "set-weight", &svc, &be2, "50"],
        vec!["service", "add", nat],
        vec!["backend", "add", nat, nat_be, "--weight", "7"],
        vec!["backend", "drain", nat, nat_be],
        vec!["service", "add", udp, "--proto", "udp"],
        vec!["backend", "add", udp, udp_be, "--proto", "udp"],
    ] {
        t.balancer(&args).unwrap();
    }
    let mut ifaces = t.gateway_ifaces.clone();
    ifaces.push("bia".into());
    let before = state_dump(&t, &ifaces);
    assert_eq!(before["backends"].as_array().unwrap().len(), 5, "{before}");
    assert_eq!(
        before["backends"][0]["failover_to"],
        be2.as_str(),
        "{before}"
    );

    // Files the cases name.
    let missing = scratch.path("missing").display().to_string();
    let dir = scratch.0.display().to_string();
    let key = |name: &str, text: &[u8]| scratch.file(name, text, 0o600);
    let key_good = key("good.key", b"0123456789abcdef0123456789abcdef\n");
    let key_short = key("short.key", b"0123456789abcdef0123456789abcde\n");
    let key_long = key("long.key", b"0123456789abcdef0123456789abcdef0\n");
    let key_not_hex = key("nothex.key", b"0123456789abcdef0123456789abcdeg\n");
    let key_zero = key("zero.key", b"00000000000000000000000000000000\n");
    let key_empty = key("empty.key", b"");
    let key_binary = key("binary.key", &[0xff; 32]);
    let key_spaced = key("spaced.key", b"01234567 89abcdef 01234567 89abcd\n");
    let group_key = b"bad-input-test-group-key-0123456789abcdef\n";
    let gk = scratch.file("group.key", group_key, 0o600);
    let gk_644 = scratch.file("group644.key", group_key, 0o644);
    let gk_640 = scratch.file("group640.key", group_key, 0o640);
    let gk_604 = scratch.file("group604.key", group_key, 0o604);
    let gk_short = scratch.file("groupshort.key", b"too-short\n", 0o600);
    let gk_binary = scratch.file("groupbin.key", &[0xfe; 40], 0o600);
    let fresh = netns::unique_name("lbfresh");
    let cfg_no_ifaces = scratch.file(
        "noifaces.toml",
        format!("[daemon]\ninstance = \"{fresh}\"\n").as_bytes(),
        0o600,
    );
    let cfg_syntax = scratch.file(
        "syntax.toml",
        format!("[daemon]\ninstance = \"{fresh}\"\ninterfaces = [\"cli0\"\n").as_bytes(),
        0o600,
    );
    let cfg_binary = scratch.file("binary.toml", &[0xff, 0xfe, 0x00, 0x80], 0o600);
    let not_bpffs = scratch.path("notbpffs");

    let vars: Vec<(&str, String)> = vec![
        ("svc", svc.clone()),
        ("svc9", "198.18.100.9:80".into()),
        ("nat", nat.into()),
        ("udp", udp.into()),
        ("be1", be1.clone()),
        ("be2", be2.clone()),
        ("be3", be3.into()),
        ("nat_be", nat_be.into()),
        ("udp_be", udp_be.into()),
        ("new_be", new_be.into()),
        ("tok_a", tok_a.clone()),
        ("tok_b", tok_b.clone()),
        ("fresh", fresh.clone()),
        ("not_bpffs", not_bpffs.display().to_string()),
        ("long65", "x".repeat(65)),
        ("name32", "N".repeat(32)),
        ("tab", "\t".into()),
        ("missing", missing),
        ("dir", dir),
        ("key_good", key_good),
        ("key_short", key_short),
        ("key_long", key_long),
        ("key_not_hex", key_not_hex),
        ("key_zero", key_zero),
        ("key_empty", key_empty),
        ("key_binary", key_binary),
        ("key_spaced", key_spaced),
        ("gk", gk.clone()),
        ("gk_644", gk_644),
        ("gk_640", gk_640),
        ("gk_604", gk_604),
        ("gk_short", gk_short),
        ("gk_binary", gk_binary),
        ("cfg_no_ifaces", cfg_no_ifaces),
        ("cfg_syntax", cfg_syntax),
        ("cfg_binary", cfg_binary),
        ("agent", format!("agent --group-key {gk} --addr 198.18.1.1")),
        ("to", "--send-to 127.0.0.1:7946".into()),
    ];
    let cases = cli_cases(&vars);

    let default_existed = pin_dir_of("default").exists();
    let mut problems = Vec::new();
    for c in &cases {
        let instance = if c.fresh { &fresh } else { t.instance() };
        let mut cmd = t.gateway.command(&t.balancer_bin().to_string_lossy());
        if !c.raw {
            cmd.args(["--instance", instance, "--run-dir", &run_dir]);
        }
        cmd.args(&c.args);
        let out = run_bounded(cmd, CLI_LIMIT, &scratch);
        let mut p = rejection_problems(&out, &c.expect);
        let after = state_dump(&t, &ifaces);
        if after != before {
            p.push(format!("state changed: {}", dump_diff(&before, &after)));
        }
        if pin_dir_of(&fresh).exists() {
            p.push(format!("left a pin directory for instance {fresh}"));
            let _ = t
                .balancer_command()
                .args(["--instance", &fresh, "detach"])
                .output();
        }
        if !default_existed && pin_dir_of("default").exists() {
            p.push("created the pin directory of instance 'default'".into());
        }
        if not_bpffs.exists() {
            p.push(format!("created {}", not_bpffs.display()));
            let _ = fs::remove_dir_all(&not_bpffs);
        }
        eprintln!(
            "{} balancer {:?}: {}",
            if p.is_empty() { "ok  " } else { "FAIL" },
            c.args,
            out.stderr.trim_end()
        );
        if !p.is_empty() {
            problems.push(format!("balancer {:?}: {}", c.args, p.join("; ")));
        }
    }
    report("CLI", cases.len(), &problems);
}

// ---- 2. Daemon configuration files at start -----------------------------------------

/// `text` with the first `from` replaced by `to`; `from` must be there.
fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} is not in\n{text}");
    text.replacen(from, to, 1)
}

/// One bad configuration: its text (`None`: `--config` names the path in `file`), and
/// what the one-line error must say.
struct ConfigCase {
    what: String,
    text: Option<String>,
    file: Option<String>,
    expect: String,
}

/// The daemon table: `what | edit of the base file | what the error must say`, one
/// case a line. Edits: `FROM -> TO` (first FROM replaced; `;;` chains edits), `+ TEXT`
/// (appended), `be1: TEXT`, `daemon: TEXT`, `service: TEXT` (a line added to be1's
/// backend, the `[daemon]` section, the service), `group: TEXT` (a `[group]` section
/// appended), `= TEXT` (the whole file), `file PATH` (`--config PATH`, no file written).
/// `\n` is a newline; `{name}` is replaced as in [`CLI_CASES`].
const DAEMON_CASES: &str = r#"
# -- syntax, keys and types
TOML syntax error               | + [[service.backend]                    | balancer.toml: line 
unterminated string             | path = "/health" -> path = "/health     | balancer.toml: line 
not TOML at all                 | = interfaces: [cli0, srv0]              | balancer.toml: line 1, column 
unknown section                 | + [deamon]\nx = 1                       | unknown field `deamon`
unknown daemon key              | daemon: interface = "cli0"              | unknown field `interface`
unknown backend key             | be1: wieght = 5                         | unknown field `wieght`
unknown health key              | rise = 2 -> rise = 2\nretries = 3        | unknown field `retries`
value of the wrong type         | pair_sample = 1 -> pair_sample = "1"    | invalid type: string "1", expected u32
interfaces as a string          | interfaces = ["cli0", "srv0"] -> interfaces = "cli0" | invalid type: string "cli0", expected a sequence
service without address         | address = "{svc}" -> proto = "tcp"      | missing field `address`
# -- interfaces and instance
no interfaces                   | interfaces = ["cli0", "srv0"] ->        | daemon.interfaces: list at least one interface
empty interface list            | interfaces = ["cli0", "srv0"] -> interfaces = [] | daemon.interfaces: list at least one interface
unknown interface               | "srv0"] -> "srv0", "nosuch0"]           | interface "nosuch0" does not exist in this network namespace
interface of another namespace  | "srv0"] -> "srv0", "eth0"]              | interface "eth0" does not exist in this network namespace
interface name with a slash     | "srv0"] -> "srv0", "a/b"]               | "a/b" is not an interface name
interface name too long         | "srv0"] -> "srv0", "abcdefghijklmnop"]  | "abcdefghijklmnop" is not an interface name
interface listed twice          | "srv0"] -> "srv0", "cli0"]              | "cli0" is listed twice
interface that cannot take XDP  | "srv0"] -> "srv0", "lo"]                | attaching to lo:
bad xdp_mode                    | daemon: xdp_mode = "turbo"              | unknown variant `turbo`
bad instance name               | instance = "{instance}" -> instance = "bad/name" | daemon.instance: invalid instance name 'bad/name'
# -- conflicting server-id tokens, cookie settings, secondaries
server_id used twice            | server_id = "be2" -> server_id = "be1"  | server_id "be1" is also used by backend {be1}
server_ids with equal hashes    | server_id = "be1" -> server_id = "{tok_a}" ;; server_id = "be2" -> server_id = "{tok_b}" | server_id "{tok_b}" hashes like "{tok_a}"
server_id with the delimiter    | server_id = "be1" -> server_id = "be!1" | invalid server id 'be!1'
server_id with a semicolon      | server_id = "be1" -> server_id = "be;1" | invalid server id 'be;1'
server_id with a space          | server_id = "be1" -> server_id = "be 1" | invalid server id 'be 1'
server_id too long              | server_id = "be1" -> server_id = "{long65}" | invalid server id '{long65}'
empty server_id                 | server_id = "be1" -> server_id = ""     | invalid server id ''
cookie backend without server_id | server_id = "be1" -> drain = false     | server_id is required in cookie mode
server_id on a NAT service      | mode = "cookie" -> mode = "nat"         | server_id applies to cookie-mode services only
cookie_name on a NAT service    | mode = "cookie" -> mode = "nat"\ncookie_name = "SID" | cookie_name applies to cookie mode only
cookie mode on UDP              | service: proto = "udp"                  | cookie mode needs proto = "tcp"
bad cookie name                 | service: cookie_name = "a b"            | invalid cookie name 'a b'
cookie name too long            | service: cookie_name = "{name32}"       | invalid cookie name '{name32}'
delimiter ;                     | service: delimiter = ";"                | invalid cookie delimiter ';'
delimiter of two characters     | service: delimiter = "!!"               | delimiter "!!" must be exactly one character
primary segment 0               | service: primary_segment = 0            | invalid cookie segments '0/3'
primary segment = secondary     | service: primary_segment = 3            | invalid cookie segments '3/3'
segment 256                     | service: primary_segment = 256          | invalid value: integer `256`, expected u8
secondary naming an unknown id  | be1: secondary = "be9"                  | secondary "be9" is not the server_id of any backend of this service
secondary naming itself         | be1: secondary = "be1"                  | secondary "be1" is this backend's own server_id
# -- weights, addresses, protocols, duplicates
weight 0                        | be1: weight = 0                         | weight 0 is not in 1..=10000
weight 10001                    | be1: weight = 10001                     | weight 10001 is not in 1..=10000
weight -1                       | be1: weight = -1                        | invalid value: integer `-1`, expected u32
weight 1.5                      | be1: weight = 1.5                       | invalid type: floating point `1.5`, expected u32
weight as text                  | be1: weight = "abc"                     | invalid type: string "abc", expected u32
weight 2^32                     | be1: weight = 4294967296                | invalid value: integer `4294967296`, expected u32
duplicate backend               | + [[service.backend]]\naddress = "{be1}"\nserver_id = "dup" | backend {be1}: configured twice in this service
duplicate service               | + [[service]]\naddress = "{svc}"        | service {svc}/tcp: configured twice
service port 0                  | {svc} -> 198.18.100.1:0                 | invalid service address '198.18.100.1:0': port 0 is not allowed
service port 65536              | {svc} -> 198.18.100.1:65536             | '65536' is not a port number
service address without port    | {svc} -> 198.18.100.1                   | invalid service address '198.18.100.1'
multicast service address       | {svc} -> 224.0.0.1:80                   | must be a unicast host address
backend address without port    | {be1} -> 198.18.1.10                    | invalid backend address '198.18.1.10'
backend port 0                  | {be1} -> 198.18.1.10:0                  | invalid backend address '198.18.1.10:0': port 0 is not allowed
bad proto                       | service: proto = "sctp"                 | unknown variant `sctp`
bad mode                        | mode = "cookie" -> mode = "sticky"      | unknown variant `sticky`
# -- durations and ranges
duration without unit           | interval = "200ms" -> interval = "200"  | health.interval: invalid duration "200"
duration with a bad unit        | failover_hold_down = "2s" -> failover_hold_down = "2x" | daemon.failover_hold_down: invalid duration "2x"
negative duration               | failover_hold_down = "2s" -> failover_hold_down = "-2s" | invalid duration "-2s"
duration as a number            | failover_hold_down = "2s" -> failover_hold_down = 2 | invalid type: integer `2`, expected a string
hold-down over the limit        | failover_hold_down = "2s" -> failover_hold_down = "2h" | daemon.failover_hold_down: 7200s is longer than the limit
tcp_timeout 0s                  | daemon: tcp_timeout = "0s"              | daemon.tcp_timeout: must be at least 1s
fractional udp_timeout          | daemon: udp_timeout = "1.5s"            | daemon.udp_timeout: 1.5s is not a whole number of seconds
health timeout over interval    | timeout = "100ms" -> timeout = "300ms"  | must not exceed the interval
health interval too short       | interval = "200ms" -> interval = "1ms"  | must be between 50ms and 1h
health rise 0                   | rise = 2 -> rise = 0                    | invalid health-check rise '0'
health fall 1000                | fall = 2 -> fall = 1000                 | invalid health-check fall '1000'
health path without /           | path = "/health" -> path = "health"     | invalid health-check HTTP path 'health'
health status 99                | rise = 2 -> rise = 2\nexpect_status = 99 | invalid health-check expected status '99'
health kind                     | kind = "http" -> kind = "icmp"          | unknown variant `icmp`
pair_sample 3                   | pair_sample = 1 -> pair_sample = 3      | daemon.pair_sample: 3 is not a power of two
flow_capacity 1                 | daemon: flow_capacity = 1               | daemon.flow_capacity: 1 is too small
metrics not an address          | daemon: metrics = "localhost"           | daemon.metrics: "localhost" is not an address and port
metrics address not on this host | daemon: metrics = "192.0.2.1:9469"     | daemon.metrics 192.0.2.1:9469:
metrics port taken              | daemon: metrics = "127.0.0.1:{tcp_port}" | daemon.metrics 127.0.0.1:{tcp_port}:
# -- group
group without key_file          | group: listen = "198.18.1.1:7946"       | group.key_file: required
group key file missing          | group: key_file = "{gk_missing}"        | cannot read group key file {gk_missing}
group key file is a directory   | group: key_file = "{gk_dir}"            | cannot read group key file {gk_dir}
group key too short             | group: key_file = "{gk_short}"          | a group key needs at least 32
group key world-readable        | group: key_file = "{gk_644}"            | may be accessed by group or others (mode 644)
group key group-readable        | group: key_file = "{gk_640}"            | may be accessed by group or others (mode 640)
group key not text              | group: key_file = "{gk_binary}"         | group key file {gk_binary} is not text
group listen port 0             | group: key_file = "{gk}"\nlisten = "198.18.1.1:0" | group.listen: port 0
group listen port taken         | group: key_file = "{gk}"\nlisten = "198.18.1.1:{udp_port}" | group.listen 198.18.1.1:{udp_port}:
group member_timeout <= interval | group: key_file = "{gk}"\ninterval = "1s"\nmember_timeout = "1s" | must be longer than group.interval
group interval 0s               | group: key_file = "{gk}"\ninterval = "0s" | group.interval: host message interval 0ns is too short
group peer unspecified          | group: key_file = "{gk}"\npeers = ["0.0.0.0:7946"] | group.peers: cannot send host messages to 0.0.0.0:7946: not a host address and port
group peer listed twice         | group: key_file = "{gk}"\npeers = ["198.18.1.2:7946", "198.18.1.2:7946"] | 198.18.1.2:7946 is listed twice
group name with a space         | group: key_file = "{gk}"\nname = "lb 1"  | group.name: "lb 1" is not 1-64 visible ASCII characters
# -- the file itself
configuration file missing      | file {missing}                          | cannot read {missing}: No such file
configuration file a directory  | file {dir}                              | cannot read {dir}: Is a directory
configuration file not UTF-8    | file {cfg_binary}                       | cannot read {cfg_binary}: stream did not contain valid UTF-8
"#;

/// Parses [`DAEMON_CASES`] into configuration cases, edits applied to `base`.
fn daemon_cases(base: &str, vars: &[(&str, String)]) -> Vec<ConfigCase> {
    let subst = |s: &str| fill(s, vars);
    let be1_line = format!("  address = \"{}\"\n", subst("{be1}"));
    let mut cases = Vec::new();
    for line in DAEMON_CASES.lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split(" | ").map(str::trim).collect();
        let [what, edits, expect] = cols[..] else {
            panic!("not `what | edit | expect`: {line}");
        };
        let edits = subst(edits);
        let mut c = ConfigCase {
            what: what.to_string(),
            text: Some(base.to_string()),
            file: None,
            expect: subst(expect),
        };
        for e in edits.split(" ;; ") {
            let text = c.text.as_mut().unwrap();
            let insert = |after: &str, add: &str| edit(text, after, &format!("{after}{add}\n"));
            *text = if let Some(add) = e.strip_prefix("+ ") {
                format!("{text}{add}\n")
            } else if let Some(add) = e.strip_prefix("be1: ") {
                insert(&be1_line, &format!("  {add}"))
            } else if let Some(add) = e.strip_prefix("daemon: ") {
                insert("pair_sample = 1\n", add)
            } else if let Some(add) = e.strip_prefix("service: ") {
                insert("mode = \"cookie\"\n", add)
            } else if let Some(add) = e.strip_prefix("group: ") {
                format!("{text}[group]\n{add}\n")
            } else if let Some(whole) = e.strip_prefix("= ") {
                format!("{whole}\n")
            } else if let Some(path) = e.strip_prefix("file ") {
                c.file = Some(path.to_string());
                String::new()
            } else {
                let (from, to) = e.split_once(" ->").expect("FROM -> TO");
                edit(text, from, to.strip_prefix(' ').unwrap_or(to))
            };
        }
        if c.file.is_some() {
            c.text = None;
        }
        cases.push(c);
    }
    cases
}

/// Runs `balancer daemon` on bad configuration files in a topology's gateway namespace.
struct ConfigRunner<'a> {
    scratch: &'a Scratch,
    run_dir: &'a Path,
    socket: &'a Path,
    config_path: &'a Path,
}

impl ConfigRunner<'_> {
    /// Starts the daemon on each case's file; `check` says what is wrong with the state
    /// afterwards. Problems fail the test; notes are reported only.
    fn run(
        &self,
        t: &Topology,
        cases: &[ConfigCase],
        context: &str,
        check: &dyn Fn() -> Option<String>,
        problems: &mut Vec<String>,
        notes: &mut Vec<String>,
    ) {
        for c in cases {
            let path = match (&c.text, &c.file) {
                (Some(text), _) => {
                    fs::write(self.config_path, text).unwrap();
                    self.config_path.display().to_string()
                }
                (None, Some(file)) => file.clone(),
                (None, None) => unreachable!(),
            };
            let out = run_bounded(self.daemon_command(t, &path), DAEMON_LIMIT, self.scratch);
            let mut p = rejection_problems(&out, &c.expect);
            if let Some(changed) = check() {
                p.push(changed);
            }
            if UnixStream::connect(self.socket).is_ok() {
                p.push(format!("something answers on {}", self.socket.display()));
            } else if self.socket.exists() {
                notes.push(format!(
                    "[{context}] {}: left the control socket file {} behind",
                    c.what,
                    self.socket.display()
                ));
                let _ = fs::remove_file(self.socket);
            }
            eprintln!(
                "{} [{context}] {}: {} ({:?})",
                if p.is_empty() { "ok  " } else { "FAIL" },
                c.what,
                out.stderr.trim_end(),
                out.elapsed
            );
            if !p.is_empty() {
                problems.push(format!("[{context}] {}: {}", c.what, p.join("; ")));
            }
        }
    }

    /// `balancer daemon --config <path>` in the gateway's namespace with our run
    /// directory, logging as an operator gets it by default (RUST_LOG unset).
    fn daemon_command(&self, t: &Topology, path: &str) -> Command {
        let mut cmd = t.gateway.command(&t.balancer_bin().to_string_lossy());
        cmd.arg("--bpffs-root")
            .arg(BPFFS_ROOT)
            .arg("--run-dir")
            .arg(self.run_dir)
            .args(["daemon", "--config", path])
            .env_remove("RUST_LOG");
        cmd
    }
}

#[test]
fn daemon_refuses_to_start_with_a_bad_configuration() {
    topology::assert_root();
    let mut t = Topology::two_arm(2).expect("building the topology");
    // Should a bad file get the data plane attached anyway, the topology removes it.
    t.will_be_attached();
    let scratch = Scratch::new();
    let run_dir = scratch.path("run");
    let instance = t.instance().to_string();
    let socket = run_dir.join(format!("{instance}.sock"));
    let base = daemon_config(&t, &ConfigOptions::default());
    let (tok_a, tok_b) = colliding_tokens();

    // Files and sockets the cases need.
    let group_key = b"bad-input-test-group-key-0123456789abcdef\n";
    let gk = scratch.file("group.key", group_key, 0o600);
    let gk_644 = scratch.file("group644.key", group_key, 0o644);
    let gk_640 = scratch.file("group640.key", group_key, 0o640);
    let gk_short = scratch.file("groupshort.key", b"too-short\n", 0o600);
    let gk_binary = scratch.file("groupbin.key", &[0xfe; 40], 0o600);
    let gk_missing = scratch.path("nosuch.key").display().to_string();
    let gk_dir = scratch.path("keydir");
    fs::create_dir(&gk_dir).unwrap();
    fs::set_permissions(&gk_dir, fs::Permissions::from_mode(0o700)).unwrap();
    let gk_dir = gk_dir.display().to_string();
    // Ports taken in the gateway's namespace.
    let tcp_taken = t
        .gateway
        .run(|| TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    let tcp_port = tcp_taken.local_addr().unwrap().port();
    let udp_taken = t
        .gateway
        .run(|| UdpSocket::bind("198.18.1.1:0"))
        .unwrap()
        .unwrap();
    let udp_port = udp_taken.local_addr().unwrap().port();
    let config_path = scratch.path("balancer.toml");

    let missing = scratch.path("missing.toml").display().to_string();
    let dir = scratch.0.display().to_string();
    let cfg_binary = scratch.file("binary.toml", &[0xff, 0xfe, 0x00, 0x80], 0o600);
    let vars: Vec<(&str, String)> = vec![
        ("svc", service_arg()),
        ("be1", t.backends[0].endpoint()),
        ("instance", instance.clone()),
        ("tok_a", tok_a),
        ("tok_b", tok_b),
        ("long65", "s".repeat(65)),
        ("name32", "N".repeat(32)),
        ("tcp_port", tcp_port.to_string()),
        ("udp_port", udp_port.to_string()),
        ("gk", gk),
        ("gk_missing", gk_missing),
        ("gk_dir", gk_dir),
        ("gk_short", gk_short),
        ("gk_644", gk_644),
        ("gk_640", gk_640),
        ("gk_binary", gk_binary),
        ("missing", missing),
        ("dir", dir),
        ("cfg_binary", cfg_binary),
    ];
    let cases = daemon_cases(&base, &vars);

    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let runner = ConfigRunner {
        scratch: &scratch,
        run_dir: &run_dir,
        socket: &socket,
        config_path: &config_path,
    };

    // A. The instance does not exist: nothing may be pinned or attached afterwards.
    let default_existed = pin_dir_of("default").exists();
    let ifaces = t.gateway_ifaces.clone();
    let nothing_there = || {
        let mut found = Vec::new();
        if t.pin_dir().exists() {
            found.push(format!(
                "{} exists: {:?}",
                t.pin_dir().display(),
                pin_listing(&t.pin_dir())
            ));
            let _ = t.balancer_output(&["detach"]);
        }
        if !default_existed && pin_dir_of("default").exists() {
            found.push("the pin directory of instance 'default' exists".into());
        }
        for i in &ifaces {
            let prog = xdp_prog(&t, i);
            if !prog.is_null() {
                found.push(format!("XDP program {prog} on {i}"));
            }
        }
        (!found.is_empty()).then(|| found.join("; "))
    };
    assert!(nothing_there().is_none());
    runner.run(
        &t,
        &cases,
        "not attached",
        &nothing_there,
        &mut problems,
        &mut notes,
    );

    // The base file is good: a daemon starts with it (this also sets the instance up for
    // the second round) and leaves the data plane attached when stopped.
    let mut d = Daemon::start(&mut t, &base).expect("the base configuration must start");
    d.stop().unwrap();
    drop(d);
    let before = state_dump(&t, &ifaces);
    assert_eq!(before["backends"].as_array().unwrap().len(), 2, "{before}");

    // B. The instance runs (as the good daemon left it): its pinned state must not change.
    let unchanged = || {
        let after = state_dump(&t, &ifaces);
        (after != before).then(|| format!("state changed: {}", dump_diff(&before, &after)))
    };
    runner.run(
        &t,
        &cases,
        "attached",
        &unchanged,
        &mut problems,
        &mut notes,
    );

    // A daemon already runs for the instance (its control socket answers).
    fs::create_dir_all(&run_dir).unwrap();
    let _ = fs::remove_file(&socket);
    let _other = UnixListener::bind(&socket).unwrap();
    fs::write(&config_path, &base).unwrap();
    let cmd = runner.daemon_command(&t, &config_path.display().to_string());
    let out = run_bounded(cmd, DAEMON_LIMIT, &scratch);
    let mut p = rejection_problems(&out, "another balancer daemon is running for this instance");
    if let Some(changed) = unchanged() {
        p.push(changed);
    }
    if !socket.exists() {
        p.push("removed the other daemon's control socket".into());
    }
    eprintln!("[attached] second daemon: {}", out.stderr.trim_end());
    if !p.is_empty() {
        problems.push(format!(
            "[attached] a second daemon for the instance: {}",
            p.join("; ")
        ));
    }

    drop((tcp_taken, udp_taken));
    for n in &notes {
        eprintln!("note: {n}");
    }
    report("daemon configuration", cases.len() * 2 + 1, &problems);
}

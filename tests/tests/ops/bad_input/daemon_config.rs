//! The table of bad daemon configuration files, each started before and after a good daemon
//! set the instance up.

use super::*;

// ---- 2. Daemon configuration files at start -----------------------------------------

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
persistence prefix 0            | service: persistence = "source/0"       | persistence: invalid persistence 'source/0': the prefix length must be 1 to 32
persistence unknown             | service: persistence = "sticky"         | invalid persistence 'sticky': expected none, source or source/PREFIX
persistence not a string        | service: persistence = 24               | invalid type: integer `24`, expected a string
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
tcp_timeout over 7 days         | daemon: tcp_timeout = "169h"            | daemon.tcp_timeout: 608400s is too long (at most 168h)
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
    assert_root();
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

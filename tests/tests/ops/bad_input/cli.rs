//! The table of bad CLI arguments, run against an attached instance and a never-attached one.

use super::*;

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
attach --iface bia --tcp-timeout 604801     => invalid --tcp-timeout '604801': a timeout is at most 604800 seconds
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
service add {svc9} --persistence source/0  => invalid persistence 'source/0': the prefix length must be 1 to 32
service add {svc9} --persistence source/33 => invalid persistence 'source/33': the prefix length must be 1 to 32
service add {svc9} --persistence sticky    => invalid persistence 'sticky': expected none, source or source/PREFIX
service add {svc9} --persistence ''        => invalid persistence ''
service persistence {svc}                   => required arguments were not provided: <none|source[/PREFIX]>
service persistence {svc} source/x          => invalid persistence 'source/x'
service persistence {svc9} source           => service 198.18.100.9:80/tcp does not exist
service persistence {svc} --proto udp source => service 198.18.100.1:80/udp does not exist
[fresh] service persistence {svc} source    => is not attached
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
    assert_root();
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

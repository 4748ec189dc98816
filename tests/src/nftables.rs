//! nftables (Debian's `nftables` package) as the kernel's own L4 balancer, the second
//! peer of the end-to-end comparison: DNAT of a service address over the backends, and
//! the same behind SYNPROXY, loaded into a topology's gateway namespace and taken out
//! again when the guard drops (also when a cell fails).
//!
//! The ruleset ([`NftablesConfig::render`]), one table `ip` [`TABLE`]:
//! - DNAT: a `nat` chain on `prerouting` (priority `dstnat`) with
//!   `ip daddr VIP tcp dport PORT dnat ip to numgen random mod N map { 0 : be1 . port, ... }`:
//!   each new connection goes to a backend chosen at random (conntrack keeps the choice
//!   for the connection's later packets and translates the replies back; a rule of a
//!   `nat` chain sees only a connection's first packet, so its `counter` counts the
//!   connections nftables balanced, [`Nftables::dnat_hits`]). No SNAT or
//!   masquerade: in the two-arm topology the backends' default route is the gateway, so
//!   their replies come back through it and conntrack's reverse NAT.
//! - SYNPROXY (nftables' documented recipe, adapted to a forwarded service): the VIP on
//!   the gateway's `lo` (as for HAProxy), a `raw` prerouting chain with `tcp flags syn
//!   notrack` for the VIP's port, an `input` filter chain with `ct state
//!   invalid,untracked synproxy mss 1460 wscale W sack-perm` then `ct state invalid drop`;
//!   the proxy answers the client's SYN with a syncookie SYN-ACK and, on a
//!   valid cookie ACK, sends its own SYN to the VIP from the client's address as a local
//!   packet, so the DNAT rule is also on a `nat` `output` chain. Later packets of the
//!   connection match its conntrack entry and are DNATed in prerouting and forwarded.
//!   The recipe says to give the options the backends use: `mss 1460` (1500-byte MTU) and
//!   the backends' window scale `W` ([`window_scale_of`], 10 with Debian's default
//!   `tcp_rmem` on this kernel, not the recipe's example 7). The recipe's `timestamp` is
//!   left out by default ([`NftablesConfig::timestamps`]): with it, about 1% of new
//!   connections stalled for 1.6 s on this kernel (6.18; the backend retransmitting its
//!   SYN-ACK after 1 s, the client's first data segment retransmitted; seen in a
//!   one-backend set-up made by hand, `wrk -t1 -c16 -d2s`, new connection per request:
//!   7,500 requests/s with `timestamp`, 49,000 without, p99 1.62 s and 0.6 ms);
//!   without it the connections run without TCP timestamps, as ours in cookie mode does
//!   (it strips them).
//!   The recipe's sysctls, `net.ipv4.tcp_syncookies=2` and
//!   `net.netfilter.nf_conntrack_tcp_loose=0` (no conntrack entry picked up from a
//!   mid-stream ACK, so the cookie ACK stays invalid and reaches the proxy), are per
//!   network namespace: they are set in the gateway namespace only and restored there
//!   when the guard drops.

use std::{
    fmt::Write as _,
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    process::Stdio,
};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;

use crate::netns::{self, Netns};

/// The table the rules live in (in the gateway namespace, which is the test's own).
pub const TABLE: &str = "balancer_e2e";

/// The sysctls of the SYNPROXY recipe (per network namespace).
pub const SYNPROXY_SYSCTLS: [(&str, &str); 2] = [
    ("net.ipv4.tcp_syncookies", "2"),
    ("net.netfilter.nf_conntrack_tcp_loose", "0"),
];

/// SYNPROXY's `mss`: the topology's veth MTU of 1500 less the IPv4 and TCP headers.
pub const SYNPROXY_MSS: u16 = 1460;

/// The window scale a namespace's TCP announces in its SYNs: what Linux's
/// `tcp_select_initial_window` derives from the largest receive buffer allowed
/// (`net.ipv4.tcp_rmem`'s maximum, `net.core.rmem_max`): log2 of it less 15, at most 14.
pub fn window_scale_of(ns: &Netns) -> Result<u8> {
    let read = |key: &str| -> Result<u64> {
        let out = ns.exec("sysctl", &["-n", key])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace()
            .last()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{key} = {text:?}"))
    };
    Ok(window_scale(
        read("net.ipv4.tcp_rmem")?.max(read("net.core.rmem_max")?),
    ))
}

/// The window scale for a largest receive buffer of `space` bytes.
pub fn window_scale(space: u64) -> u8 {
    (space.max(1).ilog2().saturating_sub(15)).min(14) as u8
}

/// What [`NftablesConfig::render`] writes.
#[derive(Clone, Debug)]
pub struct NftablesConfig {
    /// The service address (the VIP and its port).
    pub service: SocketAddrV4,
    /// The backends new connections are spread over.
    pub backends: Vec<SocketAddrV4>,
    /// SYNPROXY in front of the DNAT.
    pub synproxy: bool,
    /// SYNPROXY's `wscale`: the backends' window scale ([`window_scale_of`]).
    pub wscale: u8,
    /// SYNPROXY's `timestamp` option (see the module documentation).
    pub timestamps: bool,
}

impl NftablesConfig {
    /// The ruleset's text (for `nft -f`).
    pub fn render(&self) -> String {
        let vip = self.service.ip();
        let port = self.service.port();
        let map = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| format!("{i} : {} . {}", b.ip(), b.port()))
            .collect::<Vec<_>>()
            .join(", ");
        let matches = format!("ip daddr {vip} tcp dport {port}");
        let dnat = format!(
            "{matches} counter dnat ip to numgen random mod {} map {{ {map} }}",
            self.backends.len()
        );
        let mut s = String::new();
        let _ = writeln!(s, "table ip {TABLE} {{");
        let chain = |s: &mut String, name: &str, hook: &str, rules: &[&str]| {
            let _ = writeln!(s, "\tchain {name} {{");
            let _ = writeln!(s, "\t\ttype {hook}; policy accept;");
            for r in rules {
                let _ = writeln!(s, "\t\t{r}");
            }
            let _ = writeln!(s, "\t}}");
        };
        chain(
            &mut s,
            "dnat_prerouting",
            "nat hook prerouting priority dstnat",
            &[&dnat],
        );
        if self.synproxy {
            // The proxy's own SYN to the service is a local packet: NATed on output.
            chain(
                &mut s,
                "dnat_output",
                "nat hook output priority -100",
                &[&dnat],
            );
            chain(
                &mut s,
                "synproxy_raw",
                "filter hook prerouting priority raw",
                &[&format!("{matches} tcp flags syn notrack")],
            );
            chain(
                &mut s,
                "synproxy_input",
                "filter hook input priority filter",
                &[
                    &format!(
                        "{matches} ct state invalid,untracked synproxy mss {SYNPROXY_MSS} wscale {}{} sack-perm",
                        self.wscale,
                        if self.timestamps { " timestamp" } else { "" }
                    ),
                    &format!("{matches} ct state invalid drop"),
                ],
            );
        }
        let _ = writeln!(s, "}}");
        s
    }
}

/// The `nft` binary (Debian's package installs it in /usr/sbin).
pub fn nft_bin() -> Result<String> {
    crate::haproxy::find_program("nft")
        .map(|p| p.to_string_lossy().into_owned())
        .context("nft is not installed (`cargo xtask setup` installs nftables)")
}

/// The ruleset loaded into a namespace; dropping it deletes the table, restores the
/// sysctls it changed and removes the address it added.
pub struct Nftables {
    pub config: NftablesConfig,
    /// The ruleset's text, as loaded.
    pub text: String,
    ns_path: String,
    ns_name: String,
    loaded: bool,
    added_addr: Option<Ipv4Addr>,
    /// (key, value before) of the sysctls set.
    restore: Vec<(String, String)>,
}

impl Nftables {
    /// Loads `config` into `ns` (`nft -f -`); for SYNPROXY also adds the VIP to `lo` and
    /// sets the recipe's sysctls. Whatever was done is undone if a later step fails.
    pub fn load(ns: &Netns, config: &NftablesConfig) -> Result<Nftables> {
        ensure!(!config.backends.is_empty(), "nftables DNAT needs backends");
        let nft = nft_bin()?;
        let mut n = Nftables {
            config: config.clone(),
            text: config.render(),
            ns_path: ns.path(),
            ns_name: ns.name().to_string(),
            loaded: false,
            added_addr: None,
            restore: Vec::new(),
        };
        if config.synproxy {
            for (key, value) in SYNPROXY_SYSCTLS {
                let before = ns.exec("sysctl", &["-n", key])?;
                let before = String::from_utf8_lossy(&before.stdout).trim().to_string();
                ns.sysctl(key, value)?;
                n.restore.push((key.to_string(), before));
            }
            let ip = *config.service.ip();
            ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"])?;
            n.added_addr = Some(ip);
        }
        let mut child = ns
            .command(&nft)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {nft}"))?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(n.text.as_bytes())
            .context("writing the ruleset to nft")?;
        let out = child.wait_with_output().context("waiting for nft")?;
        if !out.status.success() {
            bail!(
                "nft rejects the ruleset ({}): {}\n{}",
                out.status,
                netns::stderr(&out),
                n.text
            );
        }
        n.loaded = true;
        Ok(n)
    }

    /// Connections DNATed so far (the DNAT rules' counters: see the module docs).
    pub fn dnat_hits(&self) -> Result<u64> {
        let out = netns::run(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns_name,
                "nft",
                "list",
                "table",
                "ip",
                TABLE,
            ],
        )?;
        Ok(parse_dnat_hits(&String::from_utf8_lossy(&out.stdout)))
    }
}

/// Per-CPU statistics files of `/proc/net/stat` (a header line, then a line of
/// hexadecimal counters per CPU): the named columns summed over the CPUs.
pub fn parse_proc_stat(text: &str, columns: &[&str]) -> Result<Vec<u64>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .context("empty statistics")?
        .split_whitespace()
        .collect();
    let cols = columns
        .iter()
        .map(|name| {
            header
                .iter()
                .position(|h| h == name)
                .with_context(|| format!("no {name} column in {header:?}"))
        })
        .collect::<Result<Vec<usize>>>()?;
    let mut sums = vec![0; cols.len()];
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let v: Vec<&str> = line.split_whitespace().collect();
        for (sum, c) in sums.iter_mut().zip(&cols) {
            let field = v.get(*c).context("short statistics line")?;
            *sum += u64::from_str_radix(field, 16).context("statistics field")?;
        }
    }
    Ok(sums)
}

/// Conntrack entries in namespace `ns` now (`entries` of `/proc/net/stat/nf_conntrack`:
/// the namespace's count, the same on every CPU's line). Conntrack tracks a namespace's
/// packets only while some rule there needs it, so outside the nftables cells the count
/// does not grow (old entries time out).
pub fn conntrack_entries(ns: &Netns) -> Result<u64> {
    let out = ns.exec("cat", &["/proc/net/stat/nf_conntrack"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let cpus = text
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .count() as u64;
    Ok(parse_proc_stat(&text, &["entries"])?[0] / cpus.max(1))
}

/// SYNPROXY's counters in a namespace (`/proc/net/stat/synproxy`, summed over CPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SynproxyStats {
    /// SYNs answered with a cookie SYN-ACK.
    pub syn_received: u64,
    /// ACKs whose cookie did not check.
    pub cookie_invalid: u64,
    /// ACKs whose cookie checked (each sends a SYN to the backend).
    pub cookie_valid: u64,
    /// Keep-alives of a client waiting for the backend's handshake (a new SYN each).
    pub cookie_retrans: u64,
    pub conn_reopened: u64,
}

impl SynproxyStats {
    pub fn read(ns: &Netns) -> Result<SynproxyStats> {
        let out = ns.exec("cat", &["/proc/net/stat/synproxy"])?;
        let v = parse_proc_stat(
            &String::from_utf8_lossy(&out.stdout),
            &[
                "syn_received",
                "cookie_invalid",
                "cookie_valid",
                "cookie_retrans",
                "conn_reopened",
            ],
        )?;
        Ok(SynproxyStats {
            syn_received: v[0],
            cookie_invalid: v[1],
            cookie_valid: v[2],
            cookie_retrans: v[3],
            conn_reopened: v[4],
        })
    }

    pub fn minus(&self, o: &SynproxyStats) -> SynproxyStats {
        SynproxyStats {
            syn_received: self.syn_received.saturating_sub(o.syn_received),
            cookie_invalid: self.cookie_invalid.saturating_sub(o.cookie_invalid),
            cookie_valid: self.cookie_valid.saturating_sub(o.cookie_valid),
            cookie_retrans: self.cookie_retrans.saturating_sub(o.cookie_retrans),
            conn_reopened: self.conn_reopened.saturating_sub(o.conn_reopened),
        }
    }
}

/// Sums the packet counts of the `counter`s on the DNAT rules in `nft list` output.
pub fn parse_dnat_hits(listing: &str) -> u64 {
    listing
        .lines()
        .filter(|l| l.contains(" dnat "))
        .filter_map(|l| {
            let rest = &l[l.find("counter packets ")? + "counter packets ".len()..];
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

impl Drop for Nftables {
    fn drop(&mut self) {
        // The namespace may be gone already (then so is everything in it).
        if !std::path::Path::new(&self.ns_path).exists() {
            return;
        }
        let exec = |args: &[&str]| {
            let mut full = vec!["netns", "exec", self.ns_name.as_str()];
            full.extend_from_slice(args);
            netns::run("ip", &full)
        };
        if self.loaded {
            if let Err(e) = exec(&["nft", "delete", "table", "ip", TABLE]) {
                eprintln!("nftables: could not delete table {TABLE}: {e:#}");
            }
        }
        for (key, value) in self.restore.drain(..) {
            let _ = exec(&["sysctl", "-qw", &format!("{key}={value}")]);
        }
        if let Some(ip) = self.added_addr.take() {
            let _ = exec(&["ip", "addr", "del", &format!("{ip}/32"), "dev", "lo"]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(synproxy: bool) -> NftablesConfig {
        NftablesConfig {
            service: "198.18.100.1:80".parse().unwrap(),
            backends: vec![
                "198.18.1.10:8080".parse().unwrap(),
                "198.18.1.11:8080".parse().unwrap(),
            ],
            synproxy,
            wscale: 10,
            timestamps: false,
        }
    }

    #[test]
    fn window_scale_follows_the_largest_receive_buffer() {
        assert_eq!(window_scale(33_554_432), 10);
        assert_eq!(window_scale(6_291_456), 7);
        assert_eq!(window_scale(65_535), 0);
        assert_eq!(window_scale(u64::MAX), 14);
    }

    #[test]
    fn dnat_spreads_over_every_backend_and_nothing_else() {
        let text = config(false).render();
        assert!(text.contains(
            "ip daddr 198.18.100.1 tcp dport 80 counter dnat ip to numgen random mod 2 map { 0 : 198.18.1.10 . 8080, 1 : 198.18.1.11 . 8080 }"
        ), "{text}");
        assert!(
            text.contains("type nat hook prerouting priority dstnat"),
            "{text}"
        );
        for absent in ["synproxy", "notrack", "masquerade", "snat", "hook output"] {
            assert!(!text.contains(absent), "{absent}: {text}");
        }
    }

    #[test]
    fn synproxy_follows_the_recipe() {
        let text = config(true).render();
        let raw = text.find("tcp flags syn notrack").expect(&text);
        let proxy = text
            .find("ct state invalid,untracked synproxy mss 1460 wscale 10 sack-perm")
            .expect(&text);
        let drop = text.find("ct state invalid drop").expect(&text);
        assert!(raw < proxy && proxy < drop, "{text}");
        assert!(
            text.contains("type filter hook prerouting priority raw"),
            "{text}"
        );
        assert!(
            text.contains("type filter hook input priority filter"),
            "{text}"
        );
        assert_eq!(text.matches("dnat ip to numgen").count(), 2, "{text}");
        let with_ts = NftablesConfig {
            timestamps: true,
            ..config(true)
        }
        .render();
        assert!(
            with_ts.contains("synproxy mss 1460 wscale 10 timestamp sack-perm"),
            "{with_ts}"
        );
    }

    #[test]
    fn statistics_sum_over_cpus() {
        let text = "entries\t\tsyn_received\tcookie_invalid\tcookie_valid\tcookie_retrans\tconn_reopened\n\
                    00000000\t0000108c\t00000000\t0000108c\t00000000\t00000000\n\
                    00000000\t00001631\t00000002\t00001631\t00000001\t00000000\n";
        assert_eq!(
            parse_proc_stat(text, &["cookie_valid", "cookie_invalid", "cookie_retrans"]).unwrap(),
            vec![0x108c + 0x1631, 2, 1]
        );
        assert!(parse_proc_stat(text, &["nope"]).is_err());
    }

    #[test]
    fn dnat_hits_add_up_the_rules_counters() {
        let listing = "\t\tip daddr 198.18.100.1 tcp dport 80 counter packets 0 bytes 0 dnat ip to numgen random mod 1 map { 0 : 198.18.1.10 . 8080 }\n\
                       \t\tip daddr 198.18.100.1 tcp dport 80 counter packets 5787 bytes 347220 dnat ip to numgen random mod 1 map { 0 : 198.18.1.10 . 8080 }\n\
                       \t\tip daddr 198.18.100.1 tcp dport 80 tcp flags syn notrack\n";
        assert_eq!(parse_dnat_hits(listing), 5787);
    }
}

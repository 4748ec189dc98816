//! What `ss` says about the TCP connections of a network namespace: the options each end
//! negotiated (window scaling, SACK, timestamps), retransmissions, bytes acknowledged,
//! RTT and congestion window, from `ss -Htino state established`.
//!
//! `-o` matters: iproute2 (6.1 here) prints the `ts` and `sack` flags only when it asks
//! for socket options, so `ss -ti` alone would report neither even when both were
//! negotiated. Read a connection while it is still open (after the transfer, before
//! closing): a closed one is no longer `established`.

use std::net::SocketAddr;

use anyhow::{Context, Result};

use crate::netns::Netns;

/// One established TCP socket as `ss -tino` reports it. Counters `ss` leaves out when
/// zero (retransmissions, bytes retransmitted) read as zero.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TcpSocketInfo {
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    /// Timestamps negotiated.
    pub ts: bool,
    /// SACK negotiated.
    pub sack: bool,
    /// Window scaling negotiated: (send, receive) shifts.
    pub wscale: Option<(u8, u8)>,
    /// Congestion control algorithm (bbr, cubic, ...).
    pub congestion: Option<String>,
    pub mss: Option<u32>,
    /// Smoothed RTT and its variation, milliseconds.
    pub rtt_ms: Option<(f64, f64)>,
    pub cwnd: Option<u32>,
    /// Segments being retransmitted now / retransmitted in all.
    pub retrans: (u32, u32),
    pub bytes_sent: u64,
    pub bytes_retrans: u64,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub segs_out: u64,
    pub data_segs_out: u64,
    pub data_segs_in: u64,
    /// The peer's advertised window as this end sees it, bytes (scaled).
    pub snd_wnd: Option<u64>,
    /// The whole info line, for assertion messages.
    pub raw: String,
}

/// The TCP options a host offers in its SYN (or SYN-ACK), as its namespace's sysctls
/// `net.ipv4.tcp_timestamps`, `tcp_sack` and `tcp_window_scaling` say; the MSS option is
/// always sent. Also what an end negotiated, as `ss` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpOptions {
    pub timestamps: bool,
    pub sack: bool,
    pub window_scaling: bool,
}

impl TcpOptions {
    /// Linux's defaults: everything on.
    pub const ALL: TcpOptions = TcpOptions {
        timestamps: true,
        sack: true,
        window_scaling: true,
    };
    /// MSS only.
    pub const MSS_ONLY: TcpOptions = TcpOptions {
        timestamps: false,
        sack: false,
        window_scaling: false,
    };

    /// Sets the three sysctls in `ns` (new connections of that namespace use them).
    pub fn apply(&self, ns: &Netns) -> Result<()> {
        for (key, on) in [
            ("net.ipv4.tcp_timestamps", self.timestamps),
            ("net.ipv4.tcp_sack", self.sack),
            ("net.ipv4.tcp_window_scaling", self.window_scaling),
        ] {
            ns.sysctl(key, if on { "1" } else { "0" })?;
        }
        Ok(())
    }

    /// What two ends that offer `self` and `other` negotiate: the options both offer.
    pub fn and(self, other: TcpOptions) -> TcpOptions {
        TcpOptions {
            timestamps: self.timestamps && other.timestamps,
            sack: self.sack && other.sack,
            window_scaling: self.window_scaling && other.window_scaling,
        }
    }
}

impl std::fmt::Display for TcpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut words = vec!["mss"];
        for (on, name) in [
            (self.timestamps, "ts"),
            (self.sack, "sack"),
            (self.window_scaling, "wscale"),
        ] {
            if on {
                words.push(name);
            }
        }
        f.write_str(&words.join("+"))
    }
}

/// Flags `ss` prints as bare words before the congestion algorithm.
const FLAGS: &[&str] = &[
    "ts",
    "usec_ts",
    "sack",
    "ecn",
    "ecnseen",
    "fastopen",
    "app_limited",
];
/// Bare words followed by a value (`send 123bps`).
const VALUE_WORDS: &[&str] = &["send", "pacing_rate", "delivery_rate"];

impl TcpSocketInfo {
    /// Share of this end's data segments that were retransmitted.
    pub fn retrans_fraction(&self) -> f64 {
        if self.data_segs_out == 0 {
            return 0.0;
        }
        self.retrans.1 as f64 / self.data_segs_out as f64
    }

    /// The options this end negotiated.
    pub fn negotiated(&self) -> TcpOptions {
        TcpOptions {
            timestamps: self.ts,
            sack: self.sack,
            window_scaling: self.wscale.is_some(),
        }
    }

    /// The negotiated options in a few words (for messages): e.g. `ts sack wscale:7,10`.
    pub fn options(&self) -> String {
        let mut out = Vec::new();
        if self.ts {
            out.push("ts".to_string());
        }
        if self.sack {
            out.push("sack".to_string());
        }
        if let Some((s, r)) = self.wscale {
            out.push(format!("wscale:{s},{r}"));
        }
        if out.is_empty() {
            "no options".into()
        } else {
            out.join(" ")
        }
    }

    /// Fills the fields from an info line (the indented second line of a socket).
    fn read_info(&mut self, line: &str) {
        self.raw = line.trim().to_string();
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if FLAGS.contains(&w) {
                match w {
                    "ts" => self.ts = true,
                    "sack" => self.sack = true,
                    _ => {}
                }
                continue;
            }
            if VALUE_WORDS.contains(&w) {
                words.next();
                continue;
            }
            let Some((key, value)) = w.split_once(':') else {
                if self.congestion.is_none() {
                    self.congestion = Some(w.to_string());
                }
                continue;
            };
            let num = || value.parse::<u64>().ok();
            match key {
                "wscale" => {
                    self.wscale = value
                        .split_once(',')
                        .and_then(|(s, r)| Some((s.parse().ok()?, r.parse().ok()?)))
                }
                "rtt" => {
                    self.rtt_ms = value
                        .split_once('/')
                        .and_then(|(a, v)| Some((a.parse().ok()?, v.parse().ok()?)))
                }
                "retrans" => {
                    if let Some(r) = value
                        .split_once('/')
                        .and_then(|(c, t)| Some((c.parse().ok()?, t.parse().ok()?)))
                    {
                        self.retrans = r;
                    }
                }
                "mss" => self.mss = value.parse().ok(),
                "cwnd" => self.cwnd = value.parse().ok(),
                "snd_wnd" => self.snd_wnd = num(),
                "bytes_sent" => self.bytes_sent = num().unwrap_or(0),
                "bytes_retrans" => self.bytes_retrans = num().unwrap_or(0),
                "bytes_acked" => self.bytes_acked = num().unwrap_or(0),
                "bytes_received" => self.bytes_received = num().unwrap_or(0),
                "segs_out" => self.segs_out = num().unwrap_or(0),
                "data_segs_out" => self.data_segs_out = num().unwrap_or(0),
                "data_segs_in" => self.data_segs_in = num().unwrap_or(0),
                _ => {}
            }
        }
    }
}

/// Parses `ss -Htino` output (with or without a state column or header): a line per
/// socket with its addresses, then an indented line with its TCP information.
pub fn parse(output: &str) -> Vec<TcpSocketInfo> {
    let mut sockets: Vec<TcpSocketInfo> = Vec::new();
    for line in output.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            if let Some(s) = sockets.last_mut() {
                s.read_info(line);
            }
            continue;
        }
        let addrs: Vec<SocketAddr> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .take(2)
            .collect();
        if addrs.len() < 2 {
            continue; // The header ("State Recv-Q ...") or a socket without addresses.
        }
        sockets.push(TcpSocketInfo {
            local: Some(addrs[0]),
            peer: Some(addrs[1]),
            ..Default::default()
        });
    }
    sockets
}

/// The established TCP sockets of namespace `ns`.
pub fn established(ns: &Netns) -> Result<Vec<TcpSocketInfo>> {
    let out = ns
        .exec("ss", &["-Htino", "state", "established"])
        .with_context(|| format!("ss in {}", ns.name()))?;
    Ok(parse(&String::from_utf8_lossy(&out.stdout)))
}

/// The established socket of `ns` whose local address is `local` (any if `None`) and
/// whose peer is `peer` (any if `None`); fails if there is none or more than one.
pub fn find(
    ns: &Netns,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
) -> Result<TcpSocketInfo> {
    let all = established(ns)?;
    let matching: Vec<&TcpSocketInfo> = all
        .iter()
        .filter(|s| local.is_none() || s.local == local)
        .filter(|s| peer.is_none() || s.peer == peer)
        .collect();
    match matching.as_slice() {
        [one] => Ok((*one).clone()),
        _ => anyhow::bail!(
            "{} established sockets in {} with local {local:?} and peer {peer:?}: {all:?}",
            matching.len(),
            ns.name()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured on this machine (kernel 6.18, iproute2 6.1): a 30 MB download between two
    // namespaces over a veth pair, both ends with the default sysctls; the sender.
    const SENDER_DEFAULT: &str = "0      0      10.99.0.2:8080 10.99.0.1:60402\n\t ts sack bbr wscale:10,10 rto:204 rtt:0.034/0.002 mss:1448 pmtu:1500 rcvmss:536 advmss:1448 cwnd:188 ssthresh:202 bytes_sent:30191136 bytes_retrans:191136 bytes_acked:30000000 segs_out:20852 segs_in:452 data_segs_out:20852 bbr:(bw:23168000000bps,mrtt:0.001,pacing_gain:1.25,cwnd_gain:2) send 64052705882bps lastsnd:1056 lastrcv:1096 lastack:1056 pacing_rate 28670400000bps delivery_rate 23168000000bps delivered:20853 busy:20ms retrans:0/132 dsack_dups:132 reordering:180 reord_seen:4 rcv_space:14480 rcv_ssthresh:64088 minrtt:0.001 snd_wnd:4177920\n";
    // The receiver of the same kind of download with the client sysctls
    // tcp_sack=0 tcp_timestamps=0 tcp_window_scaling=0.
    const RECEIVER_NO_OPTIONS: &str = "0      0      10.99.0.1:60416 10.99.0.2:8080\n\t bbr rto:204 rtt:0.059/0.029 ato:40 mss:1460 pmtu:1500 rcvmss:1460 advmss:1460 cwnd:10 bytes_acked:1 bytes_received:30000000 segs_out:486 segs_in:20550 data_segs_in:20549 bbr:(bw:0bps,mrtt:0.059,pacing_gain:1,cwnd_gain:1) send 1979661017bps lastsnd:1116 lastrcv:1080 lastack:1080 pacing_rate 5657575472bps delivered:1 app_limited rcv_rtt:0.045 rcv_space:255664 rcv_ssthresh:1515786 minrtt:0.059 snd_wnd:64240\n";
    // The receiver with the client sysctl tcp_sack=0, and a header as `ss -tino` prints it.
    const RECEIVER_NO_SACK: &str = "State Recv-Q Send-Q Local Address:Port  Peer Address:PortProcess\nESTAB 0      0      10.99.0.1:60412 10.99.0.2:8080\n\t ts bbr wscale:10,10 rto:204 rtt:0.058/0.029 ato:40 mss:1448 pmtu:1500 rcvmss:1448 advmss:1448 cwnd:10 bytes_acked:1 bytes_received:30000000 segs_out:446 segs_in:20720 data_segs_in:20719 bbr:(bw:0bps,mrtt:0.058,pacing_gain:1,cwnd_gain:1) send 1997241379bps lastsnd:1112 lastrcv:1084 lastack:1084 pacing_rate 5707818504bps delivered:1 app_limited rcv_rtt:0.067 rcv_space:703352 rcv_ssthresh:10700656 minrtt:0.058 rcv_ooopack:171 snd_wnd:65536\n";

    #[test]
    fn parses_a_sender_with_every_option_and_retransmissions() {
        let s = parse(SENDER_DEFAULT);
        assert_eq!(s.len(), 1);
        let s = &s[0];
        assert_eq!(s.local, Some("10.99.0.2:8080".parse().unwrap()));
        assert_eq!(s.peer, Some("10.99.0.1:60402".parse().unwrap()));
        assert!(s.ts && s.sack);
        assert_eq!(s.wscale, Some((10, 10)));
        assert_eq!(s.congestion.as_deref(), Some("bbr"));
        assert_eq!(s.mss, Some(1448));
        assert_eq!(s.rtt_ms, Some((0.034, 0.002)));
        assert_eq!(s.cwnd, Some(188));
        assert_eq!(s.retrans, (0, 132));
        assert_eq!(s.bytes_sent, 30_191_136);
        assert_eq!(s.bytes_retrans, 191_136);
        assert_eq!(s.bytes_acked, 30_000_000);
        assert_eq!(s.data_segs_out, 20_852);
        assert_eq!(s.snd_wnd, Some(4_177_920));
        assert!((s.retrans_fraction() - 132.0 / 20_852.0).abs() < 1e-12);
        assert_eq!(s.options(), "ts sack wscale:10,10");
        assert_eq!(s.negotiated(), TcpOptions::ALL);
    }

    #[test]
    fn parses_a_receiver_that_negotiated_no_options() {
        let s = &parse(RECEIVER_NO_OPTIONS)[0];
        assert!(!s.ts && !s.sack);
        assert_eq!(s.wscale, None);
        assert_eq!(s.mss, Some(1460));
        assert_eq!(s.retrans, (0, 0));
        assert_eq!(s.bytes_received, 30_000_000);
        assert_eq!(s.data_segs_in, 20_549);
        assert_eq!(s.snd_wnd, Some(64_240));
        assert_eq!(s.retrans_fraction(), 0.0);
        assert_eq!(s.options(), "no options");
        assert_eq!(s.negotiated(), TcpOptions::MSS_ONLY);
        assert_eq!(s.congestion.as_deref(), Some("bbr"));
    }

    #[test]
    fn parses_timestamps_without_sack_under_a_header_with_a_state_column() {
        let all = parse(RECEIVER_NO_SACK);
        assert_eq!(all.len(), 1, "{all:?}");
        let s = &all[0];
        assert!(s.ts && !s.sack);
        assert_eq!(s.wscale, Some((10, 10)));
        assert_eq!(s.local, Some("10.99.0.1:60412".parse().unwrap()));
        assert_eq!(s.options(), "ts wscale:10,10");
    }

    #[test]
    fn parses_several_sockets_and_ignores_blank_lines() {
        let text = format!("{SENDER_DEFAULT}\n{RECEIVER_NO_OPTIONS}");
        let all = parse(&text);
        assert_eq!(all.len(), 2);
        assert!(all[0].sack && !all[1].sack);
        assert_eq!(all[1].peer, Some("10.99.0.2:8080".parse().unwrap()));
    }

    #[test]
    fn options_of_two_ends_are_those_both_offer() {
        let no_ts = TcpOptions {
            timestamps: false,
            ..TcpOptions::ALL
        };
        let no_sack = TcpOptions {
            sack: false,
            ..TcpOptions::ALL
        };
        assert_eq!(TcpOptions::ALL.and(no_ts), no_ts);
        assert_eq!(
            no_ts.and(no_sack),
            TcpOptions {
                window_scaling: true,
                ..TcpOptions::MSS_ONLY
            }
        );
        assert_eq!(TcpOptions::ALL.to_string(), "mss+ts+sack+wscale");
        assert_eq!(TcpOptions::MSS_ONLY.to_string(), "mss");
    }
}

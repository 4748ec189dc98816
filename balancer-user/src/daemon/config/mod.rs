//! The daemon's configuration file (`balancer daemon --config <file.toml>`): parsing and
//! complete validation into typed settings.
//!
//! A file is either accepted as a whole or rejected with one line saying what is wrong
//! and where, before anything is applied: on reload (SIGHUP, `balancer reload`) the
//! daemon keeps its running state when the new file is rejected. Parsing is pure; the
//! one check that depends on the machine (do the interfaces exist) is separate,
//! [`DaemonConfig::check_interfaces`], so everything else is testable anywhere.
//!
//! Unknown keys are errors (a misspelt `wieght` must not silently become the default).
//! Durations are strings with a unit: `"250ms"`, `"1s"`, `"1.5s"`, `"2m"`, `"1h"`.
//!
//! # Example
//!
//! Every key, with its default where it has one:
//!
//! ```toml
//! [daemon]
//! instance = "default"              # pin directory /sys/fs/bpf/balancer/<instance>
//! interfaces = ["eth0", "eth1"]     # attach XDP here (required, at least one)
//! xdp_mode = "native"               # native | generic
//! flow_capacity = 262144            # flow-table entries (two per connection)
//! tcp_timeout = "15m"               # idle timeouts of established TCP flows,
//! tcp_transient_timeout = "30s"     # TCP flows in handshake or closing,
//! udp_timeout = "1m"                # and UDP flows (whole seconds, 1s..=168h)
//! metrics = "127.0.0.1:9469"        # Prometheus endpoint; "" = this default
//! failover_hold_down = "10s"        # a failover rewrite stays this long after the
//!                                   # primary is healthy again (0s..=1h)
//! pair_sample = 16                  # the data plane reports 1 in N primary/secondary
//!                                   # cookie pairs (power of two, 1..=1024)
//! veth_peer_pass = false            # veth labs: put a pass program on veth peers
//!                                   # without XDP (see README, "Trying it in a lab")
//!
//! [group]                           # optional: absent = no group membership
//! key_file = "/etc/balancer/group.key"   # required in this section
//! # name = "lb-1"                   # our name in host messages (default: host name)
//! listen = "0.0.0.0:7946"
//! interval = "1s"                   # how often we send our host message
//! member_timeout = "3s"             # a member is down when unheard for longer
//! peers = ["10.0.0.2:7946"]         # balancers we send our host messages to
//!
//! [health]                          # defaults for every service's checks
//! kind = "tcp"                      # tcp (connect) | http (GET)
//! path = "/"                        # http: request path
//! expect_status = 200               # http: expected status code
//! # host = "app.example"            # http: Host header (default: the backend address)
//! interval = "250ms"
//! timeout = "200ms"                 # at most the interval
//! rise = 2                          # consecutive successes to become healthy
//! fall = 2                          # consecutive failures to become unhealthy
//!
//! [[service]]
//! address = "198.18.0.10:80"        # required
//! proto = "tcp"                     # tcp | udp
//! mode = "cookie"                   # nat | cookie (cookie needs tcp)
//! cookie_name = "JSESSIONID"        # cookie mode only, defaults as for
//! delimiter = "!"                   # `balancer service add --cookie`
//! primary_segment = 2
//! secondary_segment = 3             # 0 = the cookie names no secondary
//! health = { kind = "http", path = "/health" }   # merged over [health]
//! persistence = "none"              # none | source | source/PREFIX: every connection
//!                                   # of a client (network) to one backend
//!
//!   [[service.backend]]
//!   address = "198.18.1.2:8080"     # required
//!   weight = 100                    # 1..=10000
//!   server_id = "a1"                # required in cookie mode, forbidden otherwise
//!   secondary = "b1"                # server_id of its replication partner (optional)
//!   drain = false                   # true: keeps its flows, gets no new ones
//!
//!   [[service.backend]]
//!   address = "198.18.1.3:8080"
//!   server_id = "b1"
//!   secondary = "a1"
//!
//! [[service]]
//! address = "198.18.0.11:53"
//! proto = "udp"
//!
//!   [[service.backend]]
//!   address = "198.18.1.4:53"
//! ```

mod error;
mod raw;
mod services;
mod settings;
#[cfg(test)]
mod tests;
mod values;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

pub use error::ConfigError;
pub use settings::{
    BackendConfig, DaemonConfig, DaemonSettings, GroupSettings, HealthConfig, HealthKind,
    ServiceConfig,
};
pub use values::parse_duration;

/// Where the Prometheus endpoint listens unless configured: loopback only, since the
/// metrics tell anyone who can read them the topology behind the VIPs.
pub const DEFAULT_METRICS_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9469);
pub const DEFAULT_GROUP_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 7946);
pub const DEFAULT_HOLD_DOWN: Duration = Duration::from_secs(10);
pub const MAX_HOLD_DOWN: Duration = Duration::from_secs(3600);
/// The data plane's own default (used when it is loaded without a daemon).
pub use balancer_common::DEFAULT_PAIR_SAMPLE;
pub const MAX_PAIR_SAMPLE: u32 = 1024;
pub const DEFAULT_INSTANCE: &str = "default";

//! `balancer agent`: the local facts a member announces, and the agent's own loop.

use std::{
    ffi::CStr,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use tokio::net::UdpSocket;
use tracing::info;

use super::{message::is_visible_ascii, *};

/// IPv4 addresses of the local interfaces, loopback excluded, in kernel order. Names
/// that a host message cannot carry are skipped.
pub fn local_interfaces() -> Vec<InterfaceInfo> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list that we free with freeifaddrs below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        // SAFETY: the node's pointers come from getifaddrs and are valid or null.
        if let Some(info) = unsafe { interface_info(ifa) } {
            out.push(info);
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and nothing borrowed from it outlives this.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// # Safety
/// The pointers of `ifa` must be null or valid, as getifaddrs returns them.
unsafe fn interface_info(ifa: &libc::ifaddrs) -> Option<InterfaceInfo> {
    if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
        return None;
    }
    // SAFETY: a non-null ifa_addr points to a sockaddr, which starts with its family.
    if i32::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_INET
        || ifa.ifa_flags & libc::IFF_LOOPBACK as libc::c_uint != 0
    {
        return None;
    }
    // SAFETY: an AF_INET address is a sockaddr_in.
    let ip = unsafe { ipv4_of(ifa.ifa_addr) };
    let prefix_len = if ifa.ifa_netmask.is_null() {
        32
    } else {
        // SAFETY: the netmask of an AF_INET address is a sockaddr_in too.
        u32::from(unsafe { ipv4_of(ifa.ifa_netmask) }).count_ones() as u8
    };
    // SAFETY: ifa_name is a NUL-terminated string.
    let name = unsafe { CStr::from_ptr(ifa.ifa_name) }.to_str().ok()?;
    if !is_visible_ascii(name, MAX_IFNAME_LEN) || ip.is_loopback() {
        return None;
    }
    Some(InterfaceInfo {
        name: name.to_owned(),
        ip,
        prefix_len,
    })
}

/// # Safety
/// `sa` must point to a `sockaddr_in`.
unsafe fn ipv4_of(sa: *const libc::sockaddr) -> Ipv4Addr {
    // read_unaligned: a sockaddr is not guaranteed to be aligned as a sockaddr_in.
    let sin = unsafe { std::ptr::read_unaligned(sa.cast::<libc::sockaddr_in>()) };
    Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))
}

/// The one-minute load average from /proc/loadavg (0 if unreadable: a missing load
/// must not stop the member from announcing itself).
pub fn load_average() -> f32 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .filter(|l: &f32| l.is_finite() && *l >= 0.0)
        .unwrap_or(0.0)
}

/// The host name, as the default member name (empty if unavailable).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its length; the name is NUL-terminated when it
    // fits, and the last byte stays 0 otherwise.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if rc != 0 {
        return String::new();
    }
    CStr::from_bytes_until_nul(&buf)
        .ok()
        .and_then(|c| c.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// What `balancer agent` runs with.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Member name (see [`hostname`] for a default).
    pub name: String,
    /// File holding the group key.
    pub group_key: PathBuf,
    /// Balancers to send host messages to.
    pub send_to: Vec<SocketAddr>,
    pub interval: Duration,
    /// The app server's server-ID token.
    pub server_id: Option<String>,
    /// The token of the app server's replication secondary.
    pub secondary: Option<String>,
    /// Address to announce; by default that of the first non-loopback interface.
    pub addr: Option<Ipv4Addr>,
}

/// Runs a backend agent: checks the options and the key, then announces the local host
/// forever. Returns only on a configuration error, before anything is sent.
pub async fn run_agent(opts: AgentOptions) -> Result<(), GroupError> {
    let key = GroupKey::from_file(&opts.group_key)?;
    check_targets(&opts.send_to)?;
    check_interval(opts.interval)?;
    let addr = match opts.addr {
        Some(a) => a,
        None => local_interfaces()
            .first()
            .map(|i| i.ip)
            .ok_or(GroupError::NoAddress)?,
    };
    let template = HostMessage {
        name: opts.name,
        addr,
        interfaces: Vec::new(),
        load: 0.0,
        timestamp_ms: 0,
        seq: 0,
        role: Role::Agent,
        server_id: opts.server_id,
        secondary: opts.secondary,
    };
    template.validate()?;
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .await
        .map_err(GroupError::Bind)?;
    info!(name = %template.name, %addr, targets = ?opts.send_to, "agent announcing itself");
    // Interfaces and load are read afresh for every message: they change.
    let build = move || {
        let mut msg = template.clone();
        msg.interfaces = local_interfaces();
        msg.load = load_average();
        msg.truncate_to_fit();
        msg
    };
    run_sender(socket, opts.send_to, key, opts.interval, build).await;
    Ok(())
}

/// Shortest interval between host messages: shorter is a flood, not a heartbeat.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

pub(super) fn check_targets(targets: &[SocketAddr]) -> Result<(), GroupError> {
    if targets.is_empty() {
        return Err(GroupError::NoTargets);
    }
    targets.iter().try_for_each(|t| check_target(*t))
}

/// A balancer address host messages can be sent to: IPv4, a host (not unspecified,
/// broadcast or multicast), a port.
pub fn check_target(t: SocketAddr) -> Result<(), GroupError> {
    let SocketAddr::V4(v4) = t else {
        return Err(GroupError::Ipv6Target(t));
    };
    let ip = v4.ip();
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || v4.port() == 0 {
        return Err(GroupError::BadTarget(t));
    }
    Ok(())
}

/// A sending interval that is a heartbeat, not a flood.
pub fn check_interval(interval: Duration) -> Result<(), GroupError> {
    if interval < MIN_INTERVAL {
        return Err(GroupError::IntervalTooShort(interval));
    }
    Ok(())
}

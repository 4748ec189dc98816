//! The XDP_TX-into-veth trap, detected at attach and fixed on request.
//!
//! A frame an XDP program sends back with `XDP_TX` on a veth is queued for the peer, and
//! the kernel only kicks the peer's NAPI poll when the peer has an XDP program itself
//! (`veth_xdp_flush`). Without one the frame waits until other traffic wakes the peer:
//! syncookie SYN-ACKs arrive seconds late, clients give up and answer late SYN-ACKs with
//! RSTs. The balancer sends every syncookie SYN-ACK and RST with `XDP_TX`, so a veth lab
//! without programs on the peers barely works. Real NICs do not have this problem.
//!
//! [`veth_peer`] asks rtnetlink about an interface: whether it is a veth, where its peer
//! is (this namespace or another, by the namespace id this one gives it) and whether the
//! peer has an XDP program. [`peer_netns`] finds an open handle on the peer's namespace
//! (among the named ones, `ip netns`, and those of running processes), so the fix can
//! attach the balancer's `veth_peer_pass` program there.

use std::{
    fs::File,
    io,
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
};

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_route::{
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage, LinkXdp, XdpAttached},
    nsid::{NsidAttribute, NsidMessage},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::error::{io_ctx, Error, Result};

/// An interface that is one end of a veth pair, and what its peer looks like.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VethPeer {
    /// Our end (the interface the balancer is attached to).
    pub interface: String,
    /// The peer's interface index, in the peer's namespace.
    pub peer_ifindex: u32,
    /// The peer's namespace as this namespace numbers it; `None`: this namespace.
    pub peer_netnsid: Option<i32>,
    /// The peer's name, where rtnetlink could tell it.
    pub peer_name: Option<String>,
    /// Whether the peer has an XDP program (any mode).
    pub peer_has_xdp: bool,
}

impl VethPeer {
    /// The one-line warning for an interface whose XDP_TX frames can stall, or `None`.
    pub fn warning(&self) -> Option<String> {
        if self.peer_has_xdp {
            return None;
        }
        let peer = self.peer_name.as_deref().unwrap_or("?");
        let place = match self.peer_netnsid {
            None => "in this namespace".to_string(),
            Some(id) => format!("in namespace id {id}"),
        };
        Some(format!(
            "{}: veth whose peer {peer} ({place}) has no XDP program: frames the balancer \
             sends back with XDP_TX (syncookie SYN-ACKs, RSTs) stall until other traffic \
             wakes the peer; fix: attach with --veth-peer-pass (or put any XDP program on \
             the peer); see README, \"Trying it in a lab\"",
            self.interface
        ))
    }
}

/// What rtnetlink says about `name` (index `ifindex`) if it is a veth; `None` for any
/// other kind of interface.
pub fn veth_peer(name: &str, ifindex: u32) -> Result<Option<VethPeer>> {
    let link = get_link(ifindex, None)?;
    let is_veth = link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    });
    if !is_veth {
        return Ok(None);
    }
    let mut peer_ifindex = None;
    let mut peer_netnsid = None;
    for a in &link.attributes {
        match a {
            LinkAttribute::Link(index) => peer_ifindex = Some(*index),
            LinkAttribute::LinkNetNsId(id) => peer_netnsid = Some(*id),
            _ => {}
        }
    }
    // A veth without IFLA_LINK has lost its peer (being deleted): nothing to warn about.
    let Some(peer_ifindex) = peer_ifindex else {
        return Ok(None);
    };
    let peer = get_link(peer_ifindex, peer_netnsid)?;
    let mut peer_name = None;
    let mut peer_has_xdp = false;
    for a in &peer.attributes {
        match a {
            LinkAttribute::IfName(n) => peer_name = Some(n.clone()),
            LinkAttribute::Xdp(xdp) => {
                peer_has_xdp = xdp.iter().any(|x| match x {
                    LinkXdp::Attached(mode) => *mode != XdpAttached::None,
                    _ => false,
                })
            }
            _ => {}
        }
    }
    Ok(Some(VethPeer {
        interface: name.to_string(),
        peer_ifindex,
        peer_netnsid,
        peer_name,
        peer_has_xdp,
    }))
}

/// RTM_GETLINK for one interface, of this namespace or of the one this namespace calls
/// `netnsid` (IFLA_TARGET_NETNSID, Linux 4.20+).
fn get_link(ifindex: u32, netnsid: Option<i32>) -> Result<LinkMessage> {
    let mut request = LinkMessage::default();
    request.header.index = ifindex;
    if let Some(id) = netnsid {
        request.attributes.push(LinkAttribute::IfNetnsId(id));
    }
    let what = format!("asking rtnetlink about interface index {ifindex}");
    match request_one(RouteNetlinkMessage::GetLink(request), &what)? {
        RouteNetlinkMessage::NewLink(link) => Ok(link),
        other => Err(unexpected(&what, &other)),
    }
}

/// The namespace id this namespace gives the namespace `fd` refers to (-1: none yet).
fn netnsid_of(fd: &impl AsRawFd) -> Result<i32> {
    let mut request = NsidMessage::default();
    request
        .attributes
        .push(NsidAttribute::Fd(fd.as_raw_fd() as u32));
    let what = "asking rtnetlink for a namespace id";
    match request_one(RouteNetlinkMessage::GetNsId(request), what)? {
        RouteNetlinkMessage::NewNsId(msg) => Ok(msg
            .attributes
            .iter()
            .find_map(|a| match a {
                NsidAttribute::Id(id) => Some(*id),
                _ => None,
            })
            .unwrap_or(-1)),
        other => Err(unexpected(what, &other)),
    }
}

/// A handle on the namespace this one calls `netnsid`: looked for among the named
/// namespaces (`/run/netns`) and those of running processes. `None` if no process or
/// name holds it open.
pub fn peer_netns(netnsid: i32) -> Result<Option<OwnedFd>> {
    let mut candidates: Vec<std::path::PathBuf> = Vec::new();
    for dir in ["/run/netns", "/var/run/netns"] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            candidates.extend(entries.flatten().map(|e| e.path()));
        }
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        candidates.extend(
            entries
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .map(|e| e.path().join("ns/net")),
        );
    }
    let mut seen = std::collections::HashSet::new();
    for path in candidates {
        let Ok(file) = File::open(&path) else {
            continue; // a process that exited, or a name without a mount
        };
        let Ok(meta) = file.metadata() else { continue };
        if !seen.insert(std::os::unix::fs::MetadataExt::ino(&meta)) {
            continue;
        }
        if netnsid_of(&file)? == netnsid {
            return Ok(Some(OwnedFd::from(file)));
        }
    }
    Ok(None)
}

/// Runs `f` on a thread that has entered the network namespace `ns` (the calling thread
/// stays where it is): interface indexes given to the kernel are resolved there.
pub fn in_netns<T: Send>(ns: &OwnedFd, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: ns is an open namespace file; setns only affects this thread.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io_ctx("entering the veth peer's namespace")(
                        io::Error::last_os_error(),
                    ));
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(Error::Daemon("the namespace thread panicked".into())))
    })
}

/// Sends one request and returns the kernel's one answer (or its error).
fn request_one(message: RouteNetlinkMessage, what: &str) -> Result<RouteNetlinkMessage> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(io_ctx(format!("{what}: socket")))?;
    socket
        .bind_auto()
        .map_err(io_ctx(format!("{what}: bind")))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(io_ctx(format!("{what}: connect")))?;
    let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(message));
    packet.header.flags = NLM_F_REQUEST;
    packet.header.sequence_number = 1;
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket
        .send(&buf, 0)
        .map_err(io_ctx(format!("{what}: send")))?;
    let (reply, _) = socket
        .recv_from_full()
        .map_err(io_ctx(format!("{what}: receive")))?;
    let reply: NetlinkMessage<RouteNetlinkMessage> =
        NetlinkMessage::deserialize(&reply).map_err(|e| failed(what, e))?;
    match reply.payload {
        NetlinkPayload::InnerMessage(m) => Ok(m),
        NetlinkPayload::Error(e) => Err(io_ctx(what.to_string())(match e.code {
            Some(code) => io::Error::from_raw_os_error(-code.get()),
            None => io::Error::other("answered with an acknowledgement only"),
        })),
        other => Err(unexpected(what, &other)),
    }
}

fn unexpected(what: &str, answer: &impl std::fmt::Debug) -> Error {
    failed(what, format!("unexpected answer {answer:?}"))
}

/// `what` failed for `why` (an error of the netlink crates, not of the kernel).
fn failed(what: &str, why: impl std::fmt::Display) -> Error {
    io_ctx(what.to_string())(io::Error::other(why.to_string()))
}

/// Where the link of the pass program on `interface`'s peer is pinned.
pub(crate) fn peer_link_pin(dir: &Path, interface: &str) -> std::path::PathBuf {
    dir.join(format!("{}{interface}", super::PEER_LINK_PREFIX))
}

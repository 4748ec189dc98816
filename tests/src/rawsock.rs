//! `AF_PACKET` sockets bound to one interface of the calling thread's namespace, and the
//! integer socket options they (and the raw IPv4 sender) set. One setup for the
//! impairment relay (link-level frames, both directions) and the attack sniffer (IPv4
//! packets without their link header).

use std::{
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{ensure, Result};

pub const ETH_P_IP: u16 = libc::ETH_P_IP as u16;
pub const ETH_P_ALL: u16 = libc::ETH_P_ALL as u16;

/// What a packet socket reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Whole frames, link header included (`SOCK_RAW`).
    Link,
    /// Packets without their link header (`SOCK_DGRAM`).
    Network,
}

/// A packet socket receiving the frames of protocol `proto` (an `ETH_P_*` value) on
/// interface `ifname`.
pub fn packet_socket(ifname: &str, framing: Framing, proto: u16) -> Result<OwnedFd> {
    let name = CString::new(ifname)?;
    // SAFETY: name is a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(ifindex != 0, "no interface {ifname}");
    let kind = match framing {
        Framing::Link => libc::SOCK_RAW,
        Framing::Network => libc::SOCK_DGRAM,
    };
    // Protocol 0 until bound: no frame of another interface gets queued in between.
    // SAFETY: plain socket call.
    let fd = unsafe { libc::socket(libc::AF_PACKET, kind | libc::SOCK_CLOEXEC, 0) };
    ensure!(
        fd >= 0,
        "socket(AF_PACKET): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_ll is valid; the fields used are set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto.to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: sll is a valid sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    ensure!(
        rc == 0,
        "binding a packet socket to {ifname}: {}",
        std::io::Error::last_os_error()
    );
    Ok(fd)
}

/// Sets the integer socket option `name` of `level` (named `what` in the error).
pub fn set_int_opt(fd: &OwnedFd, level: i32, name: i32, value: i32, what: &str) -> Result<()> {
    // SAFETY: a valid option value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    ensure!(
        rc == 0,
        "setsockopt {what}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

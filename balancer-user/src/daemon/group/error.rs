//! Errors of group membership.

use std::{io, net::SocketAddr, path::PathBuf};

use super::*;

/// Errors of group membership, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("cannot read group key file {}: {source}", path.display())]
    KeyRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "group key file {} may be accessed by group or others (mode {mode:03o}): run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("group key file {} is not text: write the key as text, e.g. `head -c 32 /dev/urandom | base64 > {}`", path.display(), path.display())]
    KeyNotText { path: PathBuf },
    #[error("{what} is {len} characters long: a group key needs at least {MIN_KEY_LEN} (make one with `head -c 32 /dev/urandom | base64`)")]
    KeyTooShort { what: String, len: usize },
    #[error("invalid {field} in host message: {rule}")]
    InvalidMessage {
        field: &'static str,
        rule: &'static str,
    },
    #[error("host message is {len} bytes encoded, over the {MAX_DATAGRAM}-byte limit: shorten the name or tokens, or announce fewer interfaces")]
    MessageTooLarge { len: usize },
    #[error("encoding the host message: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("no address to send host messages to: give at least one balancer address")]
    NoTargets,
    #[error("cannot send host messages to {0}: only IPv4 addresses are supported")]
    Ipv6Target(SocketAddr),
    #[error("cannot send host messages to {0}: not a host address and port")]
    BadTarget(SocketAddr),
    #[error("host message interval {0:?} is too short: at least {MIN_INTERVAL:?}")]
    IntervalTooShort(std::time::Duration),
    #[error("no IPv4 address on a non-loopback interface to announce: give the agent's address explicitly")]
    NoAddress,
    #[error("binding a UDP socket for host messages: {0}")]
    Bind(#[source] io::Error),
}

/// The daemon's group membership errors travel through the library's one `Result` (the library
/// sits below the daemon and does not know this type).
impl From<GroupError> for crate::Error {
    fn from(e: GroupError) -> Self {
        crate::Error::Upper(Box::new(e))
    }
}

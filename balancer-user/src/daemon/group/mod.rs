//! Signed group membership, after the "group manager" of Sun's highly available
//! computational service: every member (a backend agent started with `balancer agent`, or
//! a peer balancer) periodically sends a *host message* over UDP saying who it is, where
//! it is and how loaded it is. Receivers keep a table of the hosts heard from; a member
//! is TRUSTED when its messages are signed with the shared group key, and down when it
//! has not been heard from (with a trusted message) for longer than a limit.
//!
//! # Group key
//!
//! A text file holding at least [`MIN_KEY_LEN`] characters (surrounding whitespace is
//! trimmed), identical on every member, readable by its owner only (`chmod 600`): a file
//! that group or others may access is refused. `head -c 32 /dev/urandom | base64 > FILE`
//! makes one. [`GroupKey`] keeps only the HMAC state derived from it and never prints it.
//!
//! # Wire format
//!
//! One UDP datagram per message, at most [`MAX_DATAGRAM`] bytes (it fits an Ethernet MTU,
//! so it is never fragmented):
//!
//! ```text
//! b"BHM1" | payload: JSON of HostMessage | tag: HMAC-SHA256(key, b"BHM1" | payload), 32 bytes
//! ```
//!
//! The payload is the JSON of [`HostMessage`]; unknown fields are ignored so newer senders
//! can add fields. Fields are bounded so a message cannot bloat the table: name 1-64
//! visible ASCII characters, at most 16 interfaces with 1-15-character names and
//! prefixes 0-32, a load that is finite and non-negative, server tokens 1-64 visible
//! ASCII characters without `;`, `"` or `,`, a secondary token only next to a different
//! own token, and an address that is not unspecified, broadcast or multicast.
//! [`HostMessage::encode`] refuses to build what a receiver would reject; an agent with
//! too many interfaces drops the last ones ([`HostMessage::truncate_to_fit`]).
//!
//! `seq` is strictly increasing per sending process: [`run_sender`] stamps
//! `max(previous + 1, unix time in ms)`, so a restarted sender normally starts above
//! what its previous incarnation sent.
//!
//! # Trust rules ([`MemberTable::observe`])
//!
//! Checks, in order, each with its own [`Rejected`] reason and counter:
//! 1. size: over [`MAX_DATAGRAM`] is `Oversized`; shorter than magic + tag is
//!    `Truncated`; another magic is `Malformed`;
//! 2. signature, compared in constant time: a mismatch is `BadSignature`;
//! 3. payload: JSON that does not parse is `Malformed`, a field out of bounds `Invalid`;
//! 4. freshness: `timestamp_ms` more than `max_skew` behind the local clock is `Stale`,
//!    more than `max_skew` ahead is `Future`;
//! 5. replay: `seq` not above the last accepted one from that name is `Replayed`. The one
//!    exception is a sender restarted with a lower seq (its clock stepped back): once
//!    nothing was accepted from the name for `2 × max_skew`, every message accepted
//!    before is stale and cannot be replayed, so any fresh seq is accepted again.
//!
//! UDP has no challenge-response, so a genuine message that was captured before it
//! arrived can still be delivered late, but only within `max_skew` of its timestamp and
//! only once: the seq check stops repeats of anything already accepted.
//!
//! Only a message that passes all five makes a member trusted, refreshes its last-seen
//! and updates its facts (address, interfaces, tokens). A badly signed (or unsigned)
//! message never touches a trusted member: an attacker can neither keep a dead member
//! alive nor move it. If such a message still parses, it is kept as a separate
//! *untrusted* row for visibility (a member with the wrong key shows up instead of being
//! silently ignored, as in the Sun design where host messages are always accepted but
//! only signed ones are TRUSTED). Untrusted rows are bounded by `max_untrusted`, the
//! least recently seen one is evicted first, and a trusted message from the same name and
//! source address removes the row (the member's key was fixed). Messages from key holders
//! are not bounded: the key is what grants the right to be in the table.
//!
//! A member is *up* when it is trusted and its last-seen age is at most `limit`. The time
//! offset shown is the sender's timestamp minus the local clock at receipt.

mod agent;
mod error;
mod key;
mod message;
mod net;
mod table;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use agent::{
    check_interval, check_target, hostname, load_average, local_interfaces, run_agent,
    AgentOptions, MIN_INTERVAL,
};
pub use error::GroupError;
pub use key::GroupKey;
pub use message::{HostMessage, InterfaceInfo, Role};
pub use net::{run_listener, run_sender};
pub use table::{unix_ms, Counters, MemberSettings, MemberTable, MemberView, Observed, Rejected};

/// Leading bytes of every host message (format version 1).
pub const MAGIC: &[u8; 4] = b"BHM1";
/// Length of the HMAC-SHA256 tag that ends every host message.
pub const TAG_LEN: usize = 32;
/// Largest datagram sent or accepted.
pub const MAX_DATAGRAM: usize = 1400;
/// Shortest group key, in characters.
pub const MIN_KEY_LEN: usize = 32;
/// Longest member name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Longest interface name, in bytes (Linux's IFNAMSIZ less the NUL).
pub const MAX_IFNAME_LEN: usize = 15;
/// Most interfaces in one message.
pub const MAX_INTERFACES: usize = 16;
/// Longest server-ID token, in bytes (the data plane's limit).
pub const MAX_TOKEN_LEN: usize = 64;
/// Highest load average accepted; anything above is a broken sender.
const MAX_LOAD: f32 = 1.0e6;
/// Receive buffer: larger than [`MAX_DATAGRAM`] so an oversized datagram is seen as
/// oversized rather than silently cut to an acceptable length.
const RECV_BUFFER: usize = 2048;
/// Pause after a receive error, so a persistent error does not spin the listener.
const RECV_ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// Rejections logged one by one per window; the rest are summed up.
const LOG_BURST: u32 = 5;
const LOG_WINDOW: Duration = Duration::from_secs(10);

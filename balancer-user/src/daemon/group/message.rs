//! Host messages: their fields and bounds, and the signed datagram that carries one.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::*;

/// Which kind of member sent a host message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A backend agent (`balancer agent`) next to an app server.
    Agent,
    /// A peer balancer.
    Balancer,
}

/// One IPv4 address of a member's interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceInfo {
    pub name: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
}

/// What a member announces about itself (the payload of a datagram).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostMessage {
    /// Member name, unique in the group (host name by default).
    pub name: String,
    /// Primary address of the member.
    pub addr: Ipv4Addr,
    pub interfaces: Vec<InterfaceInfo>,
    /// One-minute load average.
    pub load: f32,
    /// Sender's clock when sent, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Strictly increasing per sending process (replay protection).
    pub seq: u64,
    pub role: Role,
    /// Agents: the server-ID token the app server writes into session cookies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// Agents: the token of the server holding this server's replicated sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<String>,
}

/// A field out of bounds: which one and the rule it breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FieldError {
    field: &'static str,
    rule: &'static str,
}

impl From<FieldError> for GroupError {
    fn from(e: FieldError) -> Self {
        GroupError::InvalidMessage {
            field: e.field,
            rule: e.rule,
        }
    }
}

pub(super) fn is_visible_ascii(s: &str, max_len: usize) -> bool {
    !s.is_empty() && s.len() <= max_len && s.bytes().all(|b| b.is_ascii_graphic())
}

/// A token must be writable into a cookie value, like a backend's `--server-id`.
fn is_token(s: &str) -> bool {
    is_visible_ascii(s, MAX_TOKEN_LEN) && !s.bytes().any(|b| matches!(b, b';' | b'"' | b','))
}

fn require(ok: bool, field: &'static str, rule: &'static str) -> Result<(), FieldError> {
    if ok {
        Ok(())
    } else {
        Err(FieldError { field, rule })
    }
}

impl HostMessage {
    /// Whether receivers would accept the fields (freshness and replay aside).
    pub fn validate(&self) -> Result<(), GroupError> {
        Ok(self.check()?)
    }

    fn check(&self) -> Result<(), FieldError> {
        require(
            is_visible_ascii(&self.name, MAX_NAME_LEN),
            "name",
            "use 1-64 visible ASCII characters",
        )?;
        let a = self.addr;
        require(
            !(a.is_unspecified() || a.is_broadcast() || a.is_multicast()),
            "addr",
            "must be a unicast address",
        )?;
        require(
            self.interfaces.len() <= MAX_INTERFACES,
            "interfaces",
            "at most 16 interfaces",
        )?;
        for i in &self.interfaces {
            require(
                is_visible_ascii(&i.name, MAX_IFNAME_LEN),
                "interface name",
                "use 1-15 visible ASCII characters",
            )?;
            require(i.prefix_len <= 32, "prefix_len", "must be 0-32")?;
        }
        require(
            self.load.is_finite() && (0.0..=MAX_LOAD).contains(&self.load),
            "load",
            "must be a finite, non-negative load average",
        )?;
        self.check_tokens()
    }

    fn check_tokens(&self) -> Result<(), FieldError> {
        const TOKEN_RULE: &str = "use 1-64 visible ASCII characters without ; \" or ,";
        if let Some(id) = &self.server_id {
            require(is_token(id), "server_id", TOKEN_RULE)?;
        }
        if let Some(secondary) = &self.secondary {
            require(is_token(secondary), "secondary", TOKEN_RULE)?;
            // A pair needs both ends, and a server cannot back itself up.
            require(
                self.server_id.as_ref().is_some_and(|id| id != secondary),
                "secondary",
                "needs a server_id, different from the secondary",
            )?;
        }
        Ok(())
    }

    /// The signed datagram, or why it cannot be sent.
    pub fn encode(&self, key: &GroupKey) -> Result<Vec<u8>, GroupError> {
        self.validate()?;
        let payload = serde_json::to_vec(self)?;
        let len = MAGIC.len() + payload.len() + TAG_LEN;
        if len > MAX_DATAGRAM {
            return Err(GroupError::MessageTooLarge { len });
        }
        let mut datagram = Vec::with_capacity(len);
        datagram.extend_from_slice(MAGIC);
        datagram.extend_from_slice(&payload);
        let tag = key.tag(&datagram);
        datagram.extend_from_slice(&tag);
        Ok(datagram)
    }

    /// The message in a datagram, if it is well formed and signed with `key`. Does not
    /// judge freshness or replay: that needs the receiver's state ([`MemberTable`]).
    pub fn decode(datagram: &[u8], key: &GroupKey) -> Result<HostMessage, Rejected> {
        let frame = Frame::split(datagram)?;
        if !key.verifies(frame.signed, frame.tag) {
            return Err(Rejected::BadSignature);
        }
        parse(frame.payload)
    }

    /// Drops interfaces (last first) until the message fits a datagram whatever the
    /// timestamp and seq stamped later, so an agent on a host with many interfaces still
    /// announces itself.
    pub fn truncate_to_fit(&mut self) {
        self.interfaces.truncate(MAX_INTERFACES);
        while self.worst_case_len() > MAX_DATAGRAM && self.interfaces.pop().is_some() {}
    }

    fn worst_case_len(&self) -> usize {
        let widest = HostMessage {
            timestamp_ms: u64::MAX,
            seq: u64::MAX,
            ..self.clone()
        };
        let payload = serde_json::to_vec(&widest).map_or(usize::MAX, |p| p.len());
        payload.saturating_add(MAGIC.len() + TAG_LEN)
    }
}

/// The parts of a datagram, before anything in it is trusted.
pub(super) struct Frame<'a> {
    /// Magic and payload: what the tag covers.
    pub(super) signed: &'a [u8],
    pub(super) payload: &'a [u8],
    pub(super) tag: &'a [u8],
}

impl<'a> Frame<'a> {
    pub(super) fn split(datagram: &'a [u8]) -> Result<Frame<'a>, Rejected> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(Rejected::Oversized);
        }
        if datagram.len() < MAGIC.len() + TAG_LEN {
            return Err(Rejected::Truncated);
        }
        let (signed, tag) = datagram.split_at(datagram.len() - TAG_LEN);
        let Some(payload) = signed.strip_prefix(MAGIC.as_slice()) else {
            return Err(Rejected::Malformed);
        };
        Ok(Frame {
            signed,
            payload,
            tag,
        })
    }
}

pub(super) fn parse(payload: &[u8]) -> Result<HostMessage, Rejected> {
    let msg: HostMessage = serde_json::from_slice(payload).map_err(|_| Rejected::Malformed)?;
    msg.check().map_err(|e| Rejected::Invalid(e.field))?;
    Ok(msg)
}

//! Service and backend addresses as operators write them (`198.18.100.1:80`), and their
//! network-byte-order form in the maps.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    str::FromStr,
};

use balancer_common::{ServiceKey, PROTO_TCP, PROTO_UDP};
use serde::Serialize;

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => PROTO_TCP,
            Proto::Udp => PROTO_UDP,
        }
    }

    pub fn from_number(n: u8) -> Option<Proto> {
        match n {
            PROTO_TCP => Some(Proto::Tcp),
            PROTO_UDP => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

impl FromStr for Proto {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(Error::invalid("protocol", s, "expected tcp or udp")),
        }
    }
}

/// An IPv4 address and port, parsed strictly: `a.b.c.d:port` with a non-zero port.
pub fn parse_endpoint(what: &'static str, s: &str) -> Result<SocketAddrV4> {
    let (ip, port) = s
        .rsplit_once(':')
        .ok_or_else(|| Error::invalid(what, s, "expected IPv4:PORT, e.g. 198.18.100.1:80"))?;
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| Error::invalid(what, s, format!("'{ip}' is not an IPv4 address")))?;
    let port: u16 = port
        .parse()
        .map_err(|_| Error::invalid(what, s, format!("'{port}' is not a port number (1-65535)")))?;
    if port == 0 {
        return Err(Error::invalid(what, s, "port 0 is not allowed"));
    }
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
        return Err(Error::invalid(
            what,
            s,
            "address must be a unicast host address",
        ));
    }
    Ok(SocketAddrV4::new(ip, port))
}

/// A virtual service: VIP, port and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceAddr {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
}

impl ServiceAddr {
    pub fn parse(s: &str, proto: Proto) -> Result<Self> {
        let endpoint = parse_endpoint("service address", s)?;
        Ok(ServiceAddr {
            addr: *endpoint.ip(),
            port: endpoint.port(),
            proto,
        })
    }

    pub fn key(&self) -> ServiceKey {
        ServiceKey {
            addr: u32::from_ne_bytes(self.addr.octets()),
            port: self.port.to_be(),
            proto: self.proto.number(),
            _pad: 0,
        }
    }

    pub fn from_key(key: &ServiceKey) -> Option<Self> {
        Some(ServiceAddr {
            addr: Ipv4Addr::from(key.addr.to_ne_bytes()),
            port: u16::from_be(key.port),
            proto: Proto::from_number(key.proto)?,
        })
    }
}

impl fmt::Display for ServiceAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.addr, self.port, self.proto)
    }
}

/// Serialized as displayed (`VIP:PORT/proto`), as the CLI's JSON has always shown it.
impl serde::Serialize for ServiceAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Parses the displayed form, `VIP:PORT/proto` (`/proto` optional, TCP by default).
impl FromStr for ServiceAddr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.split_once('/') {
            Some((endpoint, proto)) => ServiceAddr::parse(endpoint, proto.parse()?),
            None => ServiceAddr::parse(s, Proto::Tcp),
        }
    }
}

/// Converts a network-byte-order address from a map into an `Ipv4Addr`.
pub fn ip_from_map(addr: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr.to_ne_bytes())
}

/// Converts an `Ipv4Addr` into the network-byte-order form stored in maps.
pub fn ip_to_map(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_endpoints() {
        let s = ServiceAddr::parse("198.18.100.1:80", Proto::Tcp).unwrap();
        assert_eq!(s.to_string(), "198.18.100.1:80/tcp");
        assert_eq!(ServiceAddr::from_key(&s.key()), Some(s));
        for bad in [
            "198.18.100.1",
            "198.18.100.1:0",
            "198.18.100.1:65536",
            "198.18.100:80",
            "0.0.0.0:80",
            "255.255.255.255:80",
            "224.0.0.1:80",
            "host:80",
            "",
        ] {
            let e = ServiceAddr::parse(bad, Proto::Tcp).unwrap_err();
            assert!(
                e.to_string().starts_with("invalid service address"),
                "{bad}: {e}"
            );
        }
        assert_eq!(s.to_string().parse::<ServiceAddr>().unwrap(), s);
        assert_eq!("198.18.100.1:80".parse::<ServiceAddr>().unwrap(), s);
        assert!("198.18.100.1:80/sctp".parse::<ServiceAddr>().is_err());
        assert!("sctp".parse::<Proto>().is_err());
        assert_eq!("UDP".parse::<Proto>().unwrap(), Proto::Udp);
    }
}

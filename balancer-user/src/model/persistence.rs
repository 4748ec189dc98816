//! Source-address persistence of a service (`--persistence source[/PREFIX]`, the
//! configuration's `persistence = "source/24"`): how it is written, and how it is kept
//! in the service's flags (`SERVICE_F_SOURCE` and the prefix length).

use std::{fmt, str::FromStr};

use balancer_common::{SERVICE_F_SOURCE, SERVICE_PREFIX_MASK, SERVICE_PREFIX_SHIFT};
use serde::{Serialize, Serializer};

use crate::error::{Error, Result};

/// How a service's new connections pick their backend in its consistent-hash table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Persistence {
    /// By the connection's 5-tuple: every connection independently.
    #[default]
    None,
    /// By the client's address masked to `prefix` bits (1..=32): every connection of a
    /// client (or of a client network) to the same backend while it takes new flows.
    /// For what the data plane cannot read (HTTPS, other protocols), as IPVS's `-p`.
    Source { prefix: u8 },
}

impl Persistence {
    /// The bits of `Service::flags` that say it.
    pub fn flags(self) -> u32 {
        match self {
            Persistence::None => 0,
            Persistence::Source { prefix } => {
                SERVICE_F_SOURCE | (prefix as u32) << SERVICE_PREFIX_SHIFT
            }
        }
    }

    /// Read back from `Service::flags`.
    pub fn from_flags(flags: u32) -> Persistence {
        if flags & SERVICE_F_SOURCE == 0 {
            return Persistence::None;
        }
        Persistence::Source {
            prefix: ((flags >> SERVICE_PREFIX_SHIFT) & SERVICE_PREFIX_MASK) as u8,
        }
    }

    /// The flag bits [`Persistence::flags`] sets, to clear before setting others.
    pub const FLAG_BITS: u32 = SERVICE_F_SOURCE | SERVICE_PREFIX_MASK << SERVICE_PREFIX_SHIFT;
}

impl fmt::Display for Persistence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Persistence::None => f.write_str("none"),
            Persistence::Source { prefix: 32 } => f.write_str("source"),
            Persistence::Source { prefix } => write!(f, "source/{prefix}"),
        }
    }
}

/// `none`, `source` (the whole address) or `source/PREFIX` (1..=32).
impl FromStr for Persistence {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid("persistence", s, why);
        match s.split_once('/') {
            None if s == "none" => Ok(Persistence::None),
            None if s == "source" => Ok(Persistence::Source { prefix: 32 }),
            None => Err(bad(
                "expected none, source or source/PREFIX (e.g. source/24)",
            )),
            Some(("source", prefix)) => match prefix.parse::<u8>() {
                Ok(p @ 1..=32) => Ok(Persistence::Source { prefix: p }),
                _ => Err(bad("the prefix length must be 1 to 32")),
            },
            Some(_) => Err(bad(
                "expected none, source or source/PREFIX (e.g. source/24)",
            )),
        }
    }
}

impl Serialize for Persistence {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text_and_flags() {
        for text in ["none", "source", "source/24", "source/1"] {
            let p: Persistence = text.parse().unwrap();
            assert_eq!(p.to_string(), text);
            assert_eq!(Persistence::from_flags(p.flags()), p);
            assert_eq!(p.flags() & !Persistence::FLAG_BITS, 0);
        }
        assert_eq!(
            "source/32".parse::<Persistence>().unwrap(),
            Persistence::Source { prefix: 32 }
        );
        // The cookie flag is left alone.
        let flags =
            balancer_common::SERVICE_F_COOKIE | "source/16".parse::<Persistence>().unwrap().flags();
        assert_eq!(
            Persistence::from_flags(flags),
            Persistence::Source { prefix: 16 }
        );
    }

    #[test]
    fn bad_persistence_is_refused_with_the_reason() {
        for (text, why) in [
            ("source/0", "1 to 32"),
            ("source/33", "1 to 32"),
            ("source/x", "1 to 32"),
            ("src", "expected none"),
            ("dest/24", "expected none"),
            ("", "expected none"),
        ] {
            let e = text.parse::<Persistence>().unwrap_err().to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
    }
}

//! A backend's state and weight as types: what the maps store as `u8` and `u32`, checked
//! once where the value is made, so the operations and the daemon never pass a raw code.

use std::{fmt, str::FromStr};

use balancer_common::{backend_state, MAX_WEIGHT};
use serde::{Serialize, Serializer};

use crate::error::{Error, Result};

/// Whether a backend takes new flows. Flows already bound to it are forwarded in every
/// state; only removing the backend (or the flow timing out) ends them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendState {
    /// Takes new flows (is in its service's Maglev table).
    Up,
    /// Takes no new flows, keeps its established ones (operator's choice).
    Draining,
    /// Takes no new flows (failed its health checks, or set down).
    Down,
}

impl BackendState {
    pub const ALL: [BackendState; 3] =
        [BackendState::Up, BackendState::Draining, BackendState::Down];

    /// The code the BACKENDS map stores (`backend_state::*`).
    pub fn code(self) -> u8 {
        match self {
            BackendState::Up => backend_state::UP,
            BackendState::Draining => backend_state::DRAINING,
            BackendState::Down => backend_state::DOWN,
        }
    }

    /// The state of a used slot; `None` for an empty slot or an unknown code.
    pub fn from_code(code: u8) -> Option<BackendState> {
        BackendState::ALL.into_iter().find(|s| s.code() == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            BackendState::Up => "up",
            BackendState::Draining => "draining",
            BackendState::Down => "down",
        }
    }
}

impl fmt::Display for BackendState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendState {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        BackendState::ALL
            .into_iter()
            .find(|state| state.name() == s)
            .ok_or_else(|| Error::invalid("backend state", s, "expected up, draining or down"))
    }
}

impl Serialize for BackendState {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// A backend's share of its service's new flows relative to the others: 1..=MAX_WEIGHT.
/// Zero is not a weight: a backend that should get no new flows is drained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Weight(u32);

impl Weight {
    pub const DEFAULT: Weight = Weight(100);

    pub fn new(weight: u32) -> Result<Weight> {
        if weight == 0 || weight > MAX_WEIGHT {
            return Err(Error::invalid(
                "weight",
                weight,
                format!("must be 1..={MAX_WEIGHT} (use `backend drain` to stop new flows)"),
            ));
        }
        Ok(Weight(weight))
    }

    pub const fn get(self) -> u32 {
        self.0
    }
}

impl Default for Weight {
    fn default() -> Self {
        Weight::DEFAULT
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Weight {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let n = s
            .parse::<u32>()
            .map_err(|_| Error::invalid("weight", s, "expected a whole number"))?;
        Weight::new(n)
    }
}

impl Serialize for Weight {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_codes_and_names() {
        for state in BackendState::ALL {
            assert_eq!(BackendState::from_code(state.code()), Some(state));
            assert_eq!(state.name().parse::<BackendState>().unwrap(), state);
        }
        assert_eq!(BackendState::from_code(backend_state::EMPTY), None);
        assert!("UP".parse::<BackendState>().is_err());
    }

    #[test]
    fn weights_outside_one_to_max_are_refused() {
        assert!(Weight::new(0).is_err());
        assert!(Weight::new(MAX_WEIGHT + 1).is_err());
        assert_eq!(Weight::new(MAX_WEIGHT).unwrap().get(), MAX_WEIGHT);
        assert!("-1".parse::<Weight>().is_err());
        assert_eq!(serde_json::to_string(&Weight::DEFAULT).unwrap(), "100");
    }
}

//! The rise/fall state machine that turns check outcomes into a backend's health, and
//! its record in the pinned HEALTH map.

use std::{
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use balancer_common::{health_state, BackendHealth};
use serde::{Deserialize, Serialize};

use super::{probe::CheckOutcome, settings::CheckSettings};

/// Health of a backend as its checks see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Up,
    Down,
}

impl Health {
    /// The value stored in the pinned HEALTH map ([`health_state`]).
    pub fn state_code(self) -> u8 {
        match self {
            Health::Up => health_state::UP,
            Health::Down => health_state::DOWN,
        }
    }

    /// The health stored in the map, `None` for `UNKNOWN` (never checked) or garbage.
    pub fn from_state_code(code: u8) -> Option<Health> {
        match code {
            health_state::UP => Some(Health::Up),
            health_state::DOWN => Some(Health::Down),
            _ => None,
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Up => "up",
            Health::Down => "down",
        })
    }
}

/// A change of health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub from: Health,
    pub to: Health,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.from, self.to)
    }
}

/// A [`Tracker`]'s state and counters, as written to the HEALTH map and shown as JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackerSnapshot {
    pub health: Health,
    /// Checks run.
    pub checks: u64,
    /// Checks failed (in total, not only consecutive ones).
    pub failures: u64,
    /// Successes since the last failure.
    pub consecutive_successes: u32,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Health changes.
    pub transitions: u64,
    /// Wall-clock time of the last health change, Unix nanoseconds; 0 if it never changed.
    pub last_change_unix_ns: u64,
    /// Time the last check took, successful or not (so a timeout shows as the timeout),
    /// in microseconds; 0 before the first check.
    pub last_response_us: u32,
}

impl TrackerSnapshot {
    /// The value of the pinned HEALTH map.
    pub fn to_map_value(&self) -> BackendHealth {
        BackendHealth {
            state: self.health.state_code(),
            last_response_us: self.last_response_us,
            checks: self.checks,
            failures: self.failures,
            last_change_unix_ns: self.last_change_unix_ns,
            transitions: self.transitions,
            ..BackendHealth::default()
        }
    }
}

/// Rise/fall state machine and counters of one backend: an up backend goes down after
/// `fall` consecutive failed checks, a down backend comes up after `rise` consecutive
/// successful ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracker {
    state: TrackerSnapshot,
    rise: u32,
    fall: u32,
}

impl Tracker {
    /// A tracker with no history and the default rise and fall (2 and 2);
    /// [`spawn_checker`](super::spawn_checker) applies its settings' counts.
    pub fn new(initial: Health) -> Tracker {
        let defaults = CheckSettings::default();
        Tracker {
            state: TrackerSnapshot {
                health: initial,
                checks: 0,
                failures: 0,
                consecutive_successes: 0,
                consecutive_failures: 0,
                transitions: 0,
                last_change_unix_ns: 0,
                last_response_us: 0,
            },
            rise: defaults.rise,
            fall: defaults.fall,
        }
    }

    /// Continues from counters stored by an earlier daemon (the pinned HEALTH map), so a
    /// restart neither resets the counters nor flaps the state. The consecutive counts
    /// start over: the new daemon needs `rise`/`fall` fresh checks to change the state.
    pub fn resume(
        health: Health,
        checks: u64,
        failures: u64,
        last_change_unix_ns: u64,
        transitions: u64,
    ) -> Tracker {
        let mut tracker = Tracker::new(health);
        tracker.state.checks = checks;
        tracker.state.failures = failures;
        tracker.state.last_change_unix_ns = last_change_unix_ns;
        tracker.state.transitions = transitions;
        tracker
    }

    /// [`Tracker::resume`] from a HEALTH map value; `None` if it holds no health
    /// (never checked).
    pub fn from_map_value(value: &BackendHealth) -> Option<Tracker> {
        let health = Health::from_state_code(value.state)?;
        let mut tracker = Tracker::resume(
            health,
            value.checks,
            value.failures,
            value.last_change_unix_ns,
            value.transitions,
        );
        tracker.state.last_response_us = value.last_response_us;
        Some(tracker)
    }

    /// Sets the rise and fall counts (values below 1 count as 1).
    pub fn with_thresholds(mut self, rise: u32, fall: u32) -> Tracker {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
        self
    }

    /// Counts one check and returns the health change it caused, if any.
    pub fn record(&mut self, outcome: &CheckOutcome, now: SystemTime) -> Option<Transition> {
        let s = &mut self.state;
        s.checks = s.checks.saturating_add(1);
        s.last_response_us = u32::try_from(outcome.elapsed.as_micros()).unwrap_or(u32::MAX);
        if outcome.ok {
            s.consecutive_successes = s.consecutive_successes.saturating_add(1);
            s.consecutive_failures = 0;
        } else {
            s.failures = s.failures.saturating_add(1);
            s.consecutive_failures = s.consecutive_failures.saturating_add(1);
            s.consecutive_successes = 0;
        }
        let next = match s.health {
            Health::Up if s.consecutive_failures >= self.fall => Health::Down,
            Health::Down if s.consecutive_successes >= self.rise => Health::Up,
            unchanged => unchanged,
        };
        if next == s.health {
            return None;
        }
        let transition = Transition {
            from: s.health,
            to: next,
        };
        s.health = next;
        s.transitions = s.transitions.saturating_add(1);
        s.last_change_unix_ns = unix_ns(now);
        Some(transition)
    }

    pub fn health(&self) -> Health {
        self.state.health
    }

    /// Wall-clock time of the last health change, `None` if it never changed.
    pub fn last_change(&self) -> Option<SystemTime> {
        match self.state.last_change_unix_ns {
            0 => None,
            ns => Some(UNIX_EPOCH + Duration::from_nanos(ns)),
        }
    }

    pub fn rise(&self) -> u32 {
        self.rise
    }

    pub fn fall(&self) -> u32 {
        self.fall
    }

    pub fn snapshot(&self) -> TrackerSnapshot {
        self.state
    }
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

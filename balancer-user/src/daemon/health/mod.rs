//! Active health checks of backends, run by `balancer daemon`.
//!
//! Each backend gets one task ([`spawn_checker`]) that probes it every interval with a
//! TCP connect or an HTTP GET ([`check_once`]), feeds the outcome to a rise/fall state
//! machine ([`Tracker`]) and reports every check to the daemon ([`HealthReport`]). The
//! daemon writes the counters to the pinned HEALTH map after each report and acts on
//! transitions (backend state, failover). Keeping one task per backend means a slow or
//! dead backend only ever delays its own schedule.

mod checker;
mod probe;
mod settings;
#[cfg(test)]
mod tests;
mod tracker;

pub use checker::{spawn_checker, HealthReport};
pub use probe::{check_once, CheckOutcome};
pub use settings::{CheckKind, CheckSettings, INTERVAL_RANGE, STATUS_RANGE, THRESHOLD_RANGE};
pub use tracker::{Health, Tracker, TrackerSnapshot, Transition};

//! One task per backend that checks it on schedule and reports every check.

use std::{net::SocketAddrV4, time::SystemTime};

use tokio::{
    sync::mpsc,
    task::JoinHandle,
    time::{Interval, MissedTickBehavior},
};
use tracing::{debug, info, warn};

use super::{
    probe::{check_once, CheckOutcome},
    settings::{CheckSettings, INTERVAL_RANGE},
    tracker::{Health, Tracker, TrackerSnapshot, Transition},
};

/// What a checker sends after every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthReport {
    /// The caller's name for the backend (e.g. its slot).
    pub id: u32,
    pub target: SocketAddrV4,
    pub outcome: CheckOutcome,
    /// Counters after this check.
    pub snapshot: TrackerSnapshot,
    /// The health change this check caused, if any.
    pub transition: Option<Transition>,
}

/// Checks `target` every `settings.interval`, the first time right away, and sends a
/// [`HealthReport`] after each check. The tracker's rise and fall are set from
/// `settings`, which should have passed [`CheckSettings::validate`].
///
/// A check never overlaps the next: if one (or a send to a full channel) runs late, the
/// schedule shifts instead of bursting to catch up. The task ends once `tx`'s receiver
/// is dropped, without waiting for the next check.
pub fn spawn_checker(
    id: u32,
    target: SocketAddrV4,
    settings: CheckSettings,
    tracker: Tracker,
    tx: mpsc::Sender<HealthReport>,
) -> JoinHandle<()> {
    let tracker = tracker.with_thresholds(settings.rise, settings.fall);
    let checker = Checker {
        id,
        target,
        settings,
        tracker,
    };
    tokio::spawn(checker.run(tx))
}

/// The state of one checker task.
struct Checker {
    id: u32,
    target: SocketAddrV4,
    settings: CheckSettings,
    tracker: Tracker,
}

impl Checker {
    async fn run(mut self, tx: mpsc::Sender<HealthReport>) {
        // tokio panics on a zero period; validated settings never have one.
        let period = self.settings.interval.max(*INTERVAL_RANGE.start());
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let report = tokio::select! {
                () = tx.closed() => break,
                report = self.next_report(&mut ticks) => report,
            };
            if tx.send(report).await.is_err() {
                break;
            }
        }
        debug!(
            id = self.id,
            "health checks of backend {} stopped", self.target
        );
    }

    async fn next_report(&mut self, ticks: &mut Interval) -> HealthReport {
        ticks.tick().await;
        let outcome = check_once(self.target, &self.settings).await;
        let transition = self.tracker.record(&outcome, SystemTime::now());
        match transition {
            Some(transition) => self.log_transition(transition, &outcome),
            None if !outcome.ok => debug!(
                id = self.id,
                "backend {} failed a check: {}", self.target, outcome.detail
            ),
            None => {}
        }
        HealthReport {
            id: self.id,
            target: self.target,
            outcome,
            snapshot: self.tracker.snapshot(),
            transition,
        }
    }

    fn log_transition(&self, transition: Transition, outcome: &CheckOutcome) {
        let s = self.tracker.snapshot();
        match transition.to {
            Health::Down => warn!(
                id = self.id,
                "backend {} down after {} failed checks: {}",
                self.target,
                s.consecutive_failures,
                outcome.detail
            ),
            Health::Up => info!(
                id = self.id,
                "backend {} up after {} successful checks: {} in {:?}",
                self.target,
                s.consecutive_successes,
                outcome.detail,
                outcome.elapsed
            ),
        }
    }
}

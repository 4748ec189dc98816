//! Network I/O: the listener that feeds the member table and the sender of our host
//! messages.

use std::{
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::{Duration, Instant},
};

use tokio::{net::UdpSocket, time::MissedTickBehavior};
use tracing::{debug, info, warn};

use super::*;

/// Lets a few log lines through per window and counts the rest, so a flood of junk
/// cannot flood the logs.
pub(super) struct LogLimiter {
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub(super) fn new(now: Instant) -> Self {
        LogLimiter {
            window_start: now,
            logged: 0,
            suppressed: 0,
        }
    }

    /// Whether to log one more line now; closes the window (reporting what was
    /// suppressed in it) once it has passed.
    pub(super) fn allow(&mut self, now: Instant, what: &str) -> bool {
        if now.saturating_duration_since(self.window_start) >= LOG_WINDOW {
            if self.suppressed > 0 {
                debug!(
                    suppressed = self.suppressed,
                    "{what}: more not logged in the last {LOG_WINDOW:?}"
                );
            }
            *self = LogLimiter::new(now);
        }
        if self.logged < LOG_BURST {
            self.logged += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

pub(super) fn lock(table: &Mutex<MemberTable>) -> MutexGuard<'_, MemberTable> {
    // A panic elsewhere while holding the lock leaves a table that is still consistent
    // (observe only inserts whole rows), so keep going rather than panic too.
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Receives host messages forever and feeds them to `table`. Never returns; bad
/// datagrams and receive errors are counted or logged at debug level, rate-limited.
pub async fn run_listener(socket: Arc<UdpSocket>, table: Arc<Mutex<MemberTable>>) {
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut rejections = LogLimiter::new(Instant::now());
    let mut errors = LogLimiter::new(Instant::now());
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                if errors.allow(Instant::now(), "receive errors") {
                    debug!(error = %e, "receiving a host message");
                }
                tokio::time::sleep(RECV_ERROR_BACKOFF).await;
                continue;
            }
        };
        let now = Instant::now();
        let datagram = &buf[..len];
        let result = lock(&table).observe(from, datagram, unix_ms(), now);
        match result {
            Ok(o) if o.became_up => info!(member = %o.name, %from, "group member is up"),
            Ok(_) => {}
            Err(reason) => {
                if rejections.allow(now, "rejected host messages") {
                    debug!(%from, %reason, "rejected host message");
                }
            }
        }
    }
}

/// Next sequence number of this process: above the previous one and at least the
/// current Unix time in ms, so a restarted process starts above its predecessor.
pub(super) fn next_seq(now_unix_ms: u64) -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let next = |prev: u64| prev.saturating_add(1).max(now_unix_ms);
    match LAST.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| Some(next(p))) {
        Ok(prev) | Err(prev) => next(prev),
    }
}

/// Logs the first failure after a success as a warning (and recovery as info), the
/// repeats at debug level only, so a dead target does not fill the logs.
fn report_send(failing: &mut bool, target: SocketAddr, result: io::Result<usize>) {
    match result {
        Ok(_) if *failing => {
            info!(%target, "sending host messages works again");
            *failing = false;
        }
        Ok(_) => {}
        Err(e) if *failing => debug!(%target, error = %e, "sending a host message"),
        Err(e) => {
            warn!(%target, error = %e, "sending a host message (repeats logged at debug level)");
            *failing = true;
        }
    }
}

/// Sends a host message to every target every `interval`, forever, starting at once.
/// `build` supplies the facts; the timestamp and seq are stamped here. Errors are logged
/// and sending goes on.
pub async fn run_sender(
    socket: UdpSocket,
    targets: Vec<SocketAddr>,
    key: GroupKey,
    interval: Duration,
    build: impl Fn() -> HostMessage,
) {
    // tokio's interval panics on a zero period.
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = vec![false; targets.len()];
    let mut encode_failing = false;
    loop {
        ticker.tick().await;
        let mut msg = build();
        msg.timestamp_ms = unix_ms();
        msg.seq = next_seq(msg.timestamp_ms);
        let datagram = match msg.encode(&key) {
            Ok(d) => {
                encode_failing = false;
                d
            }
            Err(e) => {
                if !std::mem::replace(&mut encode_failing, true) {
                    warn!(error = %e, "cannot build the host message; retrying every interval");
                }
                continue;
            }
        };
        for (target, failing) in targets.iter().zip(&mut failing) {
            let result = socket.send_to(&datagram, target).await;
            report_send(failing, *target, result);
        }
    }
}

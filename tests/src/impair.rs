//! A userspace impairment relay: an L2 forwarder between two interfaces of one network
//! namespace that loses and reorders frames, for tests that need a lossy link on a kernel
//! without netem.
//!
//! Two `AF_PACKET` raw sockets (one per interface, `ETH_P_ALL`, bound by interface index)
//! and one thread per direction copy every frame received on one interface to the other.
//! IPv4 frames are impaired: each is lost with probability `loss`, and each that is not
//! lost is held back with probability `reorder` until the next frame of the same direction
//! has been sent, or for at most `hold` when no frame follows. Other frames (ARP above
//! all) are relayed as they come, so address resolution is not what a test measures.
//! Decisions come from a deterministic PRNG (xorshift64*), seeded per direction.
//!
//! With a `delay` (a long path without netem), every IPv4 frame that is not lost is sent
//! `delay` after it was received, in the order received: a FIFO of (due time, frame) per
//! direction ([`DelayLine`], in reusable buffers), the thread's poll timeout being the
//! time to the next due frame. A reordered frame joins the FIFO when it is released.
//! Frames other than IPv4 are not delayed (ARP is not what a test measures either).
//!
//! The interfaces must hand the relay frames as they would be on a wire: GRO, GSO, TSO and
//! checksum offload off (see [`crate::topology`], which sets that up). A frame larger than
//! `MAX_FRAME` (a GSO super-frame leaking through) cannot be sent on and is counted in
//! [`DirectionStats::oversized`].
//!
//! Dropping the [`Relay`] stops both threads within about [`POLL_MS`] milliseconds (held
//! and delayed frames are sent first, at once) and closes the sockets.

use std::{
    collections::VecDeque,
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{
    netns::Netns,
    rawsock::{self, set_int_opt, Framing, ETH_P_ALL},
    rng::Rng,
};

/// Longest frame relayed: Ethernet header and a 1500-byte MTU, one VLAN tag.
pub const MAX_FRAME: usize = 1518;
/// Longest the relay threads block before checking whether to stop.
pub const POLL_MS: i32 = 20;

const ETH_P_IP: [u8; 2] = [0x08, 0x00];

/// How a relay impairs IPv4 frames. Probabilities are in [0, 1].
#[derive(Clone, Copy, Debug)]
pub struct Impairment {
    pub loss: f64,
    pub reorder: f64,
    /// Longest a reordered frame waits for a frame to overtake it.
    pub hold: Duration,
    /// One-way delay of every IPv4 frame (zero: sent as soon as received).
    pub delay: Duration,
    pub seed: u64,
}

impl Impairment {
    /// A transparent link.
    pub const NONE: Impairment = Impairment {
        loss: 0.0,
        reorder: 0.0,
        hold: Duration::from_millis(3),
        delay: Duration::ZERO,
        seed: 1,
    };

    /// `loss` and `reorder` with a 3 ms hold.
    pub fn new(loss: f64, reorder: f64, seed: u64) -> Impairment {
        Impairment {
            loss,
            reorder,
            hold: Duration::from_millis(3),
            delay: Duration::ZERO,
            seed,
        }
    }

    /// The same with a one-way `delay` (each direction: a round trip through the relay
    /// takes twice that).
    pub fn with_delay(self, delay: Duration) -> Impairment {
        Impairment { delay, ..self }
    }
}

/// Probability as parts per 2^32 (what the threads compare the PRNG's output with).
fn to_threshold(p: f64) -> u32 {
    (p.clamp(0.0, 1.0) * u32::MAX as f64) as u32
}

/// Counters of one direction.
#[derive(Debug, Default)]
pub struct DirectionStats {
    /// Frames received (not counting our own transmissions).
    pub received: AtomicU64,
    /// Frames sent on (reordered ones included).
    pub relayed: AtomicU64,
    /// Frames dropped on purpose.
    pub lost: AtomicU64,
    /// Frames held back and sent after a later one (or after `hold`).
    pub reordered: AtomicU64,
    /// Frames that waited out the delay (sent or still queued).
    pub delayed: AtomicU64,
    /// Most frames queued in the delay line at once.
    pub delay_queue_peak: AtomicU64,
    /// Frames longer than `MAX_FRAME` (dropped: a GSO/GRO super-frame reached the relay).
    pub oversized: AtomicU64,
    /// Sends that failed (e.g. ENOBUFS): also lost.
    pub send_errors: AtomicU64,
    /// Frames the kernel dropped because the relay did not read them in time (its
    /// socket's receive buffer was full): lost too, but not on purpose.
    pub socket_drops: AtomicU64,
}

/// A snapshot of one direction's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionCounts {
    pub received: u64,
    pub relayed: u64,
    pub lost: u64,
    pub reordered: u64,
    pub delayed: u64,
    pub delay_queue_peak: u64,
    pub oversized: u64,
    pub send_errors: u64,
    pub socket_drops: u64,
}

impl DirectionStats {
    pub fn snapshot(&self) -> DirectionCounts {
        DirectionCounts {
            received: self.received.load(Ordering::Relaxed),
            relayed: self.relayed.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            reordered: self.reordered.load(Ordering::Relaxed),
            delayed: self.delayed.load(Ordering::Relaxed),
            delay_queue_peak: self.delay_queue_peak.load(Ordering::Relaxed),
            oversized: self.oversized.load(Ordering::Relaxed),
            send_errors: self.send_errors.load(Ordering::Relaxed),
            socket_drops: self.socket_drops.load(Ordering::Relaxed),
        }
    }
}

/// Settings the threads read for every frame, changeable while the relay runs.
struct Shared {
    stop: AtomicBool,
    loss: AtomicU32,
    reorder: AtomicU32,
    hold_us: AtomicU64,
    delay_us: AtomicU64,
    /// a -> b and b -> a.
    stats: [DirectionStats; 2],
}

impl Shared {
    fn new(imp: Impairment) -> Shared {
        let shared = Shared {
            stop: AtomicBool::new(false),
            loss: AtomicU32::new(0),
            reorder: AtomicU32::new(0),
            hold_us: AtomicU64::new(0),
            delay_us: AtomicU64::new(0),
            stats: Default::default(),
        };
        shared.set(imp);
        shared
    }

    fn set(&self, imp: Impairment) {
        self.loss.store(to_threshold(imp.loss), Ordering::Relaxed);
        self.reorder
            .store(to_threshold(imp.reorder), Ordering::Relaxed);
        self.hold_us
            .store(imp.hold.as_micros() as u64, Ordering::Relaxed);
        self.delay_us
            .store(imp.delay.as_micros() as u64, Ordering::Relaxed);
    }
}

/// A running relay between interfaces `a` and `b` of a namespace; stops when dropped.
pub struct Relay {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    names: (String, String),
}

impl Relay {
    /// Opens the sockets in `ns` and starts relaying between interfaces `a` and `b`.
    pub fn start(ns: &Netns, a: &str, b: &str, imp: Impairment) -> Result<Relay> {
        let (an, bn) = (a.to_string(), b.to_string());
        let (sa, sb) = ns
            .run(move || -> Result<(OwnedFd, OwnedFd)> {
                Ok((packet_socket(&an)?, packet_socket(&bn)?))
            })?
            .with_context(|| format!("opening packet sockets in {}", ns.name()))?;
        let shared = Arc::new(Shared::new(imp));
        let sa = Arc::new(sa);
        let sb = Arc::new(sb);
        let mut threads = Vec::new();
        for (dir, rx, tx) in [(0usize, &sa, &sb), (1, &sb, &sa)] {
            let (rx, tx, shared) = (Arc::clone(rx), Arc::clone(tx), Arc::clone(&shared));
            let seed = imp.seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(dir as u64 + 1));
            let t = std::thread::Builder::new()
                .name(format!("relay-{dir}"))
                .spawn(move || relay_loop(&rx, &tx, &shared, dir, seed))
                .context("spawning a relay thread")?;
            threads.push(t);
        }
        Ok(Relay {
            shared,
            threads,
            names: (a.to_string(), b.to_string()),
        })
    }

    /// Changes the impairment (takes effect from the next frame; frames already in the
    /// delay line keep their due times, and the order is kept).
    pub fn set(&self, imp: Impairment) {
        self.shared.set(imp);
    }

    /// Counters of the direction from interface `a` to `b`.
    pub fn a_to_b(&self) -> DirectionCounts {
        self.shared.stats[0].snapshot()
    }

    /// Counters of the direction from interface `b` to `a`.
    pub fn b_to_a(&self) -> DirectionCounts {
        self.shared.stats[1].snapshot()
    }

    /// One line for test reports.
    pub fn summary(&self) -> String {
        format!(
            "{} -> {}: {:?}; {} -> {}: {:?}",
            self.names.0,
            self.names.1,
            self.a_to_b(),
            self.names.1,
            self.names.0,
            self.b_to_a()
        )
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// An `AF_PACKET` raw socket receiving every frame of interface `ifname` (in the calling
/// thread's namespace), without our own transmissions, with large buffers.
fn packet_socket(ifname: &str) -> Result<OwnedFd> {
    let fd = rawsock::packet_socket(ifname, Framing::Link, ETH_P_ALL)?;
    for (level, name, value, what) in [
        (
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            1,
            "PACKET_IGNORE_OUTGOING",
        ),
        (
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            8 << 20,
            "SO_RCVBUFFORCE",
        ),
        (
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            8 << 20,
            "SO_SNDBUFFORCE",
        ),
    ] {
        set_int_opt(&fd, level, name, value, what)?;
    }
    Ok(fd)
}

fn send_frame(tx: &OwnedFd, frame: &[u8], stats: &DirectionStats) {
    // SAFETY: frame is a valid buffer of the length passed; tx is bound to an interface.
    let n = unsafe {
        libc::send(
            tx.as_raw_fd(),
            frame.as_ptr() as *const libc::c_void,
            frame.len(),
            0,
        )
    };
    if n < 0 {
        stats.send_errors.fetch_add(1, Ordering::Relaxed);
    } else {
        stats.relayed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Frames waiting out the one-way delay, oldest first. Buffers of sent frames are kept
/// for the next ones, so a steady stream allocates nothing.
#[derive(Default)]
pub struct DelayLine {
    queue: VecDeque<(Instant, Vec<u8>)>,
    spare: Vec<Vec<u8>>,
}

impl DelayLine {
    /// Queues a copy of `frame`, to be sent at `due`. Due times are kept in the order
    /// pushed: a frame never overtakes an earlier one, even if its own due time is
    /// earlier (the delay was shortened meanwhile).
    pub fn push(&mut self, due: Instant, frame: &[u8]) {
        let due = match self.queue.back() {
            Some((last, _)) => due.max(*last),
            None => due,
        };
        let mut buf = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(MAX_FRAME));
        buf.clear();
        buf.extend_from_slice(frame);
        self.queue.push_back((due, buf));
    }

    /// When the oldest frame is due, if any is queued.
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|(due, _)| *due)
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Hands every frame due at `now` (all of them if `now` is `None`) to `send`, oldest
    /// first; returns how many.
    pub fn release(&mut self, now: Option<Instant>, mut send: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        while let Some((due, _)) = self.queue.front() {
            if now.is_some_and(|now| *due > now) {
                break;
            }
            let (_, buf) = self.queue.pop_front().expect("front exists");
            send(&buf);
            self.spare.push(buf);
            n += 1;
        }
        n
    }
}

/// How long to block in poll: until the earliest of `deadlines`, at most [`POLL_MS`].
fn poll_timeout(now: Instant, deadlines: impl IntoIterator<Item = Option<Instant>>) -> Duration {
    deadlines
        .into_iter()
        .flatten()
        .map(|d| d.saturating_duration_since(now))
        .fold(Duration::from_millis(POLL_MS as u64), Duration::min)
}

/// Frames received per wakeup before the due ones are sent again (keeps the delay line
/// on time under load).
const RECV_BATCH: usize = 64;

/// One direction of the relay: its sockets, counters and the frames it holds back.
struct Direction<'a> {
    tx: &'a OwnedFd,
    shared: &'a Shared,
    stats: &'a DirectionStats,
    /// A reordered frame and when it goes anyway.
    held: Option<(Vec<u8>, Instant)>,
    delayed: DelayLine,
}

impl Direction<'_> {
    /// Sends `frame` on, or queues it `delay` after `received` (also when the delay is
    /// zero but earlier frames still wait, to keep the order).
    fn emit(&mut self, frame: &[u8], received: Instant, delay: Duration) {
        if delay.is_zero() && self.delayed.is_empty() {
            send_frame(self.tx, frame, self.stats);
            return;
        }
        self.delayed.push(received + delay, frame);
        self.stats.delayed.fetch_add(1, Ordering::Relaxed);
        self.stats
            .delay_queue_peak
            .fetch_max(self.delayed.len() as u64, Ordering::Relaxed);
    }

    fn delay(&self) -> Duration {
        Duration::from_micros(self.shared.delay_us.load(Ordering::Relaxed))
    }

    /// Releases the held frame if its time is up (or `force`), and the due delayed ones.
    fn flush_due(&mut self, now: Instant, force: bool) {
        if self
            .held
            .as_ref()
            .is_some_and(|(_, until)| force || now >= *until)
        {
            let (late, _) = self.held.take().expect("checked");
            let delay = self.delay();
            self.emit(&late, now, delay);
        }
        let (tx, stats) = (self.tx, self.stats);
        self.delayed
            .release((!force).then_some(now), |f| send_frame(tx, f, stats));
    }

    /// Loses, holds back or passes on one received frame.
    fn handle(&mut self, frame: &[u8], now: Instant, rng: &mut Rng) {
        let ipv4 = frame.len() >= 14 && frame[12..14] == ETH_P_IP;
        if !ipv4 {
            send_frame(self.tx, frame, self.stats);
            return;
        }
        if rng.chance(self.shared.loss.load(Ordering::Relaxed)) {
            self.stats.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.held.is_none() && rng.chance(self.shared.reorder.load(Ordering::Relaxed)) {
            let hold = Duration::from_micros(self.shared.hold_us.load(Ordering::Relaxed));
            self.stats.reordered.fetch_add(1, Ordering::Relaxed);
            self.held = Some((frame.to_vec(), now + hold));
            return;
        }
        let delay = self.delay();
        self.emit(frame, now, delay);
        if let Some((late, _)) = self.held.take() {
            self.emit(&late, now, delay);
        }
    }
}

/// Blocks until `fd` is readable or `timeout` passes (microsecond resolution: the delay
/// line's due times are finer than poll's milliseconds); whether it is readable.
fn wait_readable(fd: &OwnedFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask.
    let ready = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    ready > 0
}

/// Adds the frames the kernel dropped on `rx` since the last call to `stats` (reading
/// `PACKET_STATISTICS` resets them).
fn count_socket_drops(rx: &OwnedFd, stats: &DirectionStats) {
    let mut st = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: st and len are valid for the size passed.
    let r = unsafe {
        libc::getsockopt(
            rx.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            &mut st as *mut libc::tpacket_stats as *mut libc::c_void,
            &mut len,
        )
    };
    if r == 0 {
        stats
            .socket_drops
            .fetch_add(u64::from(st.tp_drops), Ordering::Relaxed);
    }
}

/// Batches between two reads of the socket's drop counter while frames keep coming.
const BATCHES_PER_DROP_COUNT: u32 = 64;

/// Relays frames from `rx` to `tx` until `shared.stop` is set.
fn relay_loop(rx: &OwnedFd, tx: &OwnedFd, shared: &Shared, dir: usize, seed: u64) {
    let stats = &shared.stats[dir];
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; 65536];
    let mut d = Direction {
        tx,
        shared,
        stats,
        held: None,
        delayed: DelayLine::default(),
    };
    let mut batches = 0u32;
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        d.flush_due(now, false);
        let timeout = poll_timeout(
            now,
            [
                d.held.as_ref().map(|(_, until)| *until),
                d.delayed.next_due(),
            ],
        );
        if !wait_readable(rx, timeout) {
            count_socket_drops(rx, stats);
            continue;
        }
        batches += 1;
        if batches.is_multiple_of(BATCHES_PER_DROP_COUNT) {
            count_socket_drops(rx, stats);
        }
        let now = Instant::now();
        for _ in 0..RECV_BATCH {
            // SAFETY: all-zero sockaddr_ll is valid for recvfrom to fill.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf and from are valid for the sizes passed.
            let n = unsafe {
                libc::recvfrom(
                    rx.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                    &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                    &mut from_len,
                )
            };
            if n < 0 {
                break;
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let n = n as usize;
            stats.received.fetch_add(1, Ordering::Relaxed);
            if n > MAX_FRAME || n > buf.len() {
                stats.oversized.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            d.handle(&buf[..n], now, &mut rng);
        }
    }
    // Stopping: what is held or queued goes now, in order.
    d.flush_due(Instant::now(), true);
    count_socket_drops(rx, stats);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_rates_match_thresholds() {
        let mut r = Rng::new(42);
        let t = to_threshold(0.02);
        let hits = (0..100_000).filter(|_| r.chance(t)).count();
        assert!((1_700..=2_300).contains(&hits), "{hits}");
        assert!(!(0..1000).any(|_| r.chance(0)));
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        assert!((0..100).all(|_| a.u32() == b.u32()));
    }

    #[test]
    fn delay_line_releases_frames_when_due_in_order() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut line = DelayLine::default();
        assert_eq!(line.next_due(), None);
        line.push(t0 + ms(25), b"one");
        line.push(t0 + ms(26), b"two");
        line.push(t0 + ms(30), b"three");
        assert_eq!(line.next_due(), Some(t0 + ms(25)));
        let mut sent: Vec<Vec<u8>> = Vec::new();
        assert_eq!(
            line.release(Some(t0 + ms(24)), |f| sent.push(f.to_vec())),
            0
        );
        assert_eq!(
            line.release(Some(t0 + ms(26)), |f| sent.push(f.to_vec())),
            2
        );
        assert_eq!(sent, [b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(line.next_due(), Some(t0 + ms(30)));
        assert_eq!(line.len(), 1);
        assert_eq!(
            line.release(Some(t0 + ms(40)), |f| sent.push(f.to_vec())),
            1
        );
        assert_eq!(sent.last().unwrap(), b"three");
        assert!(line.is_empty());
    }

    #[test]
    fn delay_line_never_lets_a_frame_overtake_an_earlier_one() {
        // The delay was shortened between the two pushes: the second frame's own due
        // time is earlier, but it waits for the first.
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut line = DelayLine::default();
        line.push(t0 + ms(50), b"first");
        line.push(t0 + ms(10), b"second");
        let mut sent = Vec::new();
        assert_eq!(
            line.release(Some(t0 + ms(20)), |f| sent.push(f.to_vec())),
            0
        );
        assert_eq!(
            line.release(Some(t0 + ms(50)), |f| sent.push(f.to_vec())),
            2
        );
        assert_eq!(sent, [b"first".to_vec(), b"second".to_vec()]);
    }

    #[test]
    fn delay_line_reuses_its_buffers_and_flushes_everything_on_stop() {
        let t0 = Instant::now();
        let mut line = DelayLine::default();
        let frame = [0xabu8; MAX_FRAME];
        for i in 0..8 {
            line.push(t0 + Duration::from_millis(i), &frame);
        }
        assert_eq!(line.release(None, |f| assert_eq!(f, &frame[..])), 8);
        assert_eq!(line.spare.len(), 8);
        let before: Vec<*const u8> = line.spare.iter().map(|b| b.as_ptr()).collect();
        for i in 0..8 {
            line.push(t0 + Duration::from_secs(3600 + i), b"short");
        }
        // Every frame went into a buffer of the spare list: nothing was allocated.
        assert!(line.spare.is_empty());
        assert!(line.queue.iter().all(|(_, b)| before.contains(&b.as_ptr())));
        // Stopping sends what is queued regardless of its due time.
        let mut n = 0;
        line.release(None, |f| {
            assert_eq!(f, b"short");
            n += 1
        });
        assert_eq!(n, 8);
    }

    #[test]
    fn poll_timeout_is_the_time_to_the_earliest_deadline_at_most_poll_ms() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let cap = ms(POLL_MS as u64);
        assert_eq!(poll_timeout(now, [None, None]), cap);
        assert_eq!(poll_timeout(now, [Some(now + ms(500)), None]), cap);
        assert_eq!(
            poll_timeout(now, [Some(now + ms(7)), Some(now + ms(3))]),
            ms(3)
        );
        assert_eq!(
            poll_timeout(now, [Some(now - ms(1)), Some(now + ms(3))]),
            Duration::ZERO
        );
    }

    #[test]
    fn impairment_delay_defaults_to_zero() {
        assert_eq!(Impairment::NONE.delay, Duration::ZERO);
        let d = Impairment::new(0.01, 0.0, 3).with_delay(Duration::from_millis(25));
        assert_eq!(
            (d.loss, d.delay, d.seed),
            (0.01, Duration::from_millis(25), 3)
        );
    }

    /// A connected pair of `AF_UNIX` datagram sockets that keep frame boundaries: the
    /// relay's transmit side without an interface (no root needed).
    fn frame_pipe() -> (OwnedFd, OwnedFd) {
        use std::os::fd::FromRawFd;
        let mut fds = [0i32; 2];
        // SAFETY: fds has room for the two descriptors.
        let r =
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) };
        assert_eq!(r, 0, "socketpair: {}", std::io::Error::last_os_error());
        // SAFETY: both were just created and nothing else owns them.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    /// The frames waiting on `rx`, without blocking.
    fn drain(rx: &OwnedFd) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [0u8; MAX_FRAME];
        loop {
            // SAFETY: buf is valid for its length.
            let n = unsafe {
                libc::recv(
                    rx.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                return out;
            }
            out.push(buf[..n as usize].to_vec());
        }
    }

    /// An IPv4 frame whose payload carries `k` (an ARP one if not `ipv4`).
    fn frame(k: u8, ipv4: bool) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[12..14].copy_from_slice(if ipv4 { &ETH_P_IP } else { &[0x08, 0x06] });
        f[20] = k;
        f
    }

    #[test]
    fn a_direction_sends_ipv4_frames_after_the_delay_in_order_and_arp_at_once() {
        let (tx, rx) = frame_pipe();
        let ms = Duration::from_millis;
        let shared = Shared::new(Impairment::NONE.with_delay(ms(25)));
        let mut d = Direction {
            tx: &tx,
            shared: &shared,
            stats: &shared.stats[0],
            held: None,
            delayed: DelayLine::default(),
        };
        let mut rng = Rng::new(1);
        let t0 = Instant::now();
        for k in 0..5 {
            d.handle(&frame(k, true), t0 + ms(k as u64), &mut rng);
        }
        d.handle(&frame(99, false), t0 + ms(5), &mut rng);
        // ARP is not delayed.
        assert_eq!(drain(&rx), [frame(99, false)]);
        d.flush_due(t0 + ms(24), false);
        assert!(drain(&rx).is_empty());
        d.flush_due(t0 + ms(27), false);
        assert_eq!(drain(&rx), [frame(0, true), frame(1, true), frame(2, true)]);
        d.flush_due(t0 + ms(29), false);
        assert_eq!(drain(&rx), [frame(3, true), frame(4, true)]);
        let c = shared.stats[0].snapshot();
        assert_eq!((c.relayed, c.delayed, c.delay_queue_peak), (6, 5, 5));
    }

    #[test]
    fn a_direction_loses_and_reorders_before_the_delay_and_flushes_on_stop() {
        let (tx, rx) = frame_pipe();
        let ms = Duration::from_millis;
        let shared = Shared::new(Impairment::new(0.3, 0.2, 7).with_delay(ms(25)));
        let mut d = Direction {
            tx: &tx,
            shared: &shared,
            stats: &shared.stats[0],
            held: None,
            delayed: DelayLine::default(),
        };
        let mut rng = Rng::new(7);
        let t0 = Instant::now();
        for k in 0..100u8 {
            d.handle(&frame(k, true), t0, &mut rng);
            if k % 16 == 15 {
                // Not yet due: nothing goes out, however long the batch.
                d.flush_due(t0 + ms(1), false);
                assert!(drain(&rx).is_empty());
            }
        }
        // Stopping sends what is held and queued at once.
        d.flush_due(t0 + ms(1), true);
        let got: Vec<u8> = drain(&rx).iter().map(|f| f[20]).collect();
        let c = shared.stats[0].snapshot();
        assert!(c.lost > 10 && c.reordered > 5, "{c:?}");
        assert_eq!(got.len() as u64 + c.lost, 100, "{c:?}");
        assert_eq!(c.relayed, got.len() as u64);
        // Some frames came out of order; none was sent twice.
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_ne!(got, sorted, "some frames were reordered");
        let mut dedup = sorted.clone();
        dedup.dedup();
        assert_eq!(dedup, sorted, "no frame sent twice");
    }
}

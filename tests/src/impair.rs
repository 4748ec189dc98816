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
//! The interfaces must hand the relay frames as they would be on a wire: GRO, GSO, TSO and
//! checksum offload off (see [`crate::topology`], which sets that up). A frame larger than
//! `MAX_FRAME` (a GSO super-frame leaking through) cannot be sent on and is counted in
//! [`DirectionStats::oversized`].
//!
//! Dropping the [`Relay`] stops both threads within about [`POLL_MS`] milliseconds (held
//! frames are sent first) and closes the sockets.

use std::{
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
    pub seed: u64,
}

impl Impairment {
    /// A transparent link.
    pub const NONE: Impairment = Impairment {
        loss: 0.0,
        reorder: 0.0,
        hold: Duration::from_millis(3),
        seed: 1,
    };

    /// `loss` and `reorder` with a 3 ms hold.
    pub fn new(loss: f64, reorder: f64, seed: u64) -> Impairment {
        Impairment {
            loss,
            reorder,
            hold: Duration::from_millis(3),
            seed,
        }
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
    /// Frames longer than `MAX_FRAME` (dropped: a GSO/GRO super-frame reached the relay).
    pub oversized: AtomicU64,
    /// Sends that failed (e.g. ENOBUFS): also lost.
    pub send_errors: AtomicU64,
}

/// A snapshot of one direction's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionCounts {
    pub received: u64,
    pub relayed: u64,
    pub lost: u64,
    pub reordered: u64,
    pub oversized: u64,
    pub send_errors: u64,
}

impl DirectionStats {
    pub fn snapshot(&self) -> DirectionCounts {
        DirectionCounts {
            received: self.received.load(Ordering::Relaxed),
            relayed: self.relayed.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            reordered: self.reordered.load(Ordering::Relaxed),
            oversized: self.oversized.load(Ordering::Relaxed),
            send_errors: self.send_errors.load(Ordering::Relaxed),
        }
    }
}

/// Settings the threads read for every frame, changeable while the relay runs.
struct Shared {
    stop: AtomicBool,
    loss: AtomicU32,
    reorder: AtomicU32,
    hold_us: AtomicU64,
    /// a -> b and b -> a.
    stats: [DirectionStats; 2],
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
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            loss: AtomicU32::new(to_threshold(imp.loss)),
            reorder: AtomicU32::new(to_threshold(imp.reorder)),
            hold_us: AtomicU64::new(imp.hold.as_micros() as u64),
            stats: Default::default(),
        });
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

    /// Changes the impairment (takes effect from the next frame).
    pub fn set(&self, imp: Impairment) {
        self.shared
            .loss
            .store(to_threshold(imp.loss), Ordering::Relaxed);
        self.shared
            .reorder
            .store(to_threshold(imp.reorder), Ordering::Relaxed);
        self.shared
            .hold_us
            .store(imp.hold.as_micros() as u64, Ordering::Relaxed);
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

/// Relays frames from `rx` to `tx` until `shared.stop` is set.
fn relay_loop(rx: &OwnedFd, tx: &OwnedFd, shared: &Shared, dir: usize, seed: u64) {
    let stats = &shared.stats[dir];
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; 65536];
    let mut held: Option<(Vec<u8>, Instant)> = None;
    while !shared.stop.load(Ordering::Relaxed) {
        let timeout = match &held {
            Some((_, until)) => {
                let left = until.saturating_duration_since(Instant::now());
                (left.as_micros().div_ceil(1000) as i32).min(POLL_MS)
            }
            None => POLL_MS,
        };
        let mut pfd = libc::pollfd {
            fd: rx.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, timeout) };
        if ready <= 0 {
            if let Some((frame, until)) = &held {
                if Instant::now() >= *until {
                    send_frame(tx, frame, stats);
                    held = None;
                }
            }
            continue;
        }
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
            continue;
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
        let frame = &buf[..n];
        let ipv4 = n >= 14 && frame[12..14] == ETH_P_IP;
        if ipv4 {
            if rng.chance(shared.loss.load(Ordering::Relaxed)) {
                stats.lost.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if held.is_none() && rng.chance(shared.reorder.load(Ordering::Relaxed)) {
                let hold = Duration::from_micros(shared.hold_us.load(Ordering::Relaxed));
                stats.reordered.fetch_add(1, Ordering::Relaxed);
                held = Some((frame.to_vec(), Instant::now() + hold));
                continue;
            }
        }
        send_frame(tx, frame, stats);
        if let Some((late, _)) = held.take() {
            send_frame(tx, &late, stats);
        }
    }
    if let Some((late, _)) = held.take() {
        send_frame(tx, &late, stats);
    }
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
}

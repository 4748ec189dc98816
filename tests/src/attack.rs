//! Raw-socket attack tools for the wire-attack tests (`tests/tests/wire/attacks/`):
//! IPv4/TCP packets built by hand with both checksums ([`build`]), a raw sender
//! (`IPPROTO_RAW`, so the header is the caller's: spoofed sources, any flags and sequence
//! numbers) with paced batches ([`flood`]), a packet-socket [`Sniffer`], a stateless
//! handshake flood that completes syncookie handshakes and never sends data
//! ([`HandshakeFlood`]), and [`RawTcp`], a TCP client driven by hand (segments in any
//! order, overlapping, retransmitted with other bytes).
//!
//! Everything runs in the network namespace of the calling thread. Answers to a spoofed
//! source that is not configured in that namespace come back to its interface (the
//! balancer answers towards the MAC a frame came from) where the sniffer sees them, while
//! the namespace's own stack drops them (it does not forward): nothing answers them with
//! a RST behind the raw client's back.

use std::{
    io::BufReader,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

use crate::{
    http::{self, Response},
    packet::{mss_option, Frame, TcpFlags},
    rawsock::{self, set_int_opt, Framing, ETH_P_ALL, ETH_P_IP},
};

pub use crate::rng::Rng;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// Packets per `sendmmsg` call.
const BATCH: usize = 64;

/// One TCP segment to build: addresses, ports, sequence space, flags, and optionally an
/// MSS option (SYNs) and a payload.
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    pub src: Ipv4Addr,
    pub sport: u16,
    pub dst: Ipv4Addr,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub mss: Option<u16>,
    pub payload: &'a [u8],
}

impl Segment<'static> {
    /// A segment between the two endpoints with sequence numbers 0, no flags, window
    /// 65535, no option and no payload.
    pub fn between(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Segment<'static> {
        Segment {
            src,
            sport,
            dst,
            dport,
            seq: 0,
            ack: 0,
            flags: 0,
            window: 65535,
            mss: None,
            payload: &[],
        }
    }
}

impl Segment<'_> {
    /// The segment as a frame of the one packet builder (the link layer is not sent).
    pub fn frame(&self) -> Frame {
        let flags = TcpFlags {
            syn: self.flags & TCP_SYN != 0,
            ack: self.flags & TCP_ACK != 0,
            fin: self.flags & TCP_FIN != 0,
            rst: self.flags & TCP_RST != 0,
            psh: self.flags & TCP_PSH != 0,
        };
        let mut f = Frame::tcp(
            SocketAddrV4::new(self.src, self.sport),
            SocketAddrV4::new(self.dst, self.dport),
            flags,
        )
        .seq(self.seq)
        .ack_field(self.ack)
        .window(self.window)
        .payload(self.payload);
        if let Some(mss) = self.mss {
            f = f.tcp_options(&mss_option(mss));
        }
        f
    }
}

/// Writes the IPv4 packet (20-byte header, DF, TTL 64) carrying `s` into `out`, with
/// both checksums.
pub fn build_into(s: &Segment, out: &mut Vec<u8>) {
    s.frame().write_ipv4(out);
}

/// [`build_into`] a new buffer.
pub fn build(s: &Segment) -> Vec<u8> {
    let mut v = Vec::new();
    build_into(s, &mut v);
    v
}

/// An IPv4/TCP packet as received.
#[derive(Clone, Copy, Debug)]
pub struct TcpView<'a> {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub payload: &'a [u8],
}

/// Parses an IPv4 packet carrying TCP (no fragments); `None` for anything else.
pub fn parse(ip: &[u8]) -> Option<TcpView<'_>> {
    if ip.len() < 40 || ip[0] >> 4 != 4 || ip[9] != 6 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ihl < 20 || total > ip.len() || total < ihl + 20 {
        return None;
    }
    let t = &ip[ihl..total];
    let doff = usize::from(t[12] >> 4) * 4;
    if doff < 20 || doff > t.len() {
        return None;
    }
    let word = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some(TcpView {
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        sport: u16::from_be_bytes([t[0], t[1]]),
        dport: u16::from_be_bytes([t[2], t[3]]),
        seq: word(&t[4..8]),
        ack: word(&t[8..12]),
        flags: t[13],
        payload: &t[doff..],
    })
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    }
}

/// A raw IPv4 socket (`IPPROTO_RAW`, header included) of the calling thread's namespace.
pub struct RawSender {
    fd: OwnedFd,
}

impl RawSender {
    pub fn new() -> Result<RawSender> {
        // SAFETY: plain socket call.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_RAW,
            )
        };
        ensure!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        // SAFETY: a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Room for a few batches (root may exceed the sysctl limit).
        let _ = set_int_opt(
            &fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            4 << 20,
            "SO_SNDBUFFORCE",
        );
        Ok(RawSender { fd })
    }

    /// Sends one IPv4 packet (built by [`build`]) to its destination address.
    pub fn send(&self, packet: &[u8]) -> Result<()> {
        ensure!(packet.len() >= 20, "not an IPv4 packet");
        let dst = sockaddr_in(Ipv4Addr::new(
            packet[16], packet[17], packet[18], packet[19],
        ));
        // SAFETY: packet and dst are valid for the sizes passed.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr() as *const libc::c_void,
                packet.len(),
                0,
                &dst as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        ensure!(n >= 0, "sendto: {}", std::io::Error::last_os_error());
        Ok(())
    }

    /// Sends the packets with one `sendmmsg` call per [`BATCH`]; returns how many the
    /// kernel took and how many calls failed (e.g. `ENOBUFS`).
    pub fn send_batch(&self, packets: &mut [Vec<u8>]) -> (u64, u64) {
        let (mut sent, mut errors) = (0u64, 0u64);
        for chunk in packets.chunks_mut(BATCH) {
            let dsts: Vec<libc::sockaddr_in> = chunk
                .iter()
                .map(|p| sockaddr_in(Ipv4Addr::new(p[16], p[17], p[18], p[19])))
                .collect();
            let mut iov: Vec<libc::iovec> = chunk
                .iter_mut()
                .map(|p| libc::iovec {
                    iov_base: p.as_mut_ptr() as *mut libc::c_void,
                    iov_len: p.len(),
                })
                .collect();
            let mut msgs: Vec<libc::mmsghdr> = iov
                .iter_mut()
                .zip(&dsts)
                .map(|(v, d)| {
                    // SAFETY: an all-zero msghdr is valid; the fields used are set below.
                    let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
                    h.msg_name = d as *const libc::sockaddr_in as *mut libc::c_void;
                    h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                    h.msg_iov = v as *mut libc::iovec;
                    h.msg_iovlen = 1;
                    libc::mmsghdr {
                        msg_hdr: h,
                        msg_len: 0,
                    }
                })
                .collect();
            // SAFETY: msgs points at chunk.len() valid headers whose buffers outlive the
            // call.
            let n = unsafe {
                libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as u32, 0)
            };
            if n < 0 {
                errors += 1;
                std::thread::sleep(Duration::from_micros(100));
            } else {
                sent += n as u64;
            }
        }
        (sent, errors)
    }
}

/// Paces a sender to `pps` packets per second on average since it started.
struct Pacer {
    started: Instant,
    pps: u64,
}

impl Pacer {
    fn new(pps: u64) -> Pacer {
        Pacer {
            started: Instant::now(),
            pps: pps.max(1),
        }
    }

    /// Sleeps until `done` packets are due.
    fn wait(&self, done: u64) {
        let due = Duration::from_secs_f64(done as f64 / self.pps as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
    }
}

/// What a flood sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct FloodReport {
    /// Packets the kernel took.
    pub sent: u64,
    /// `sendmmsg` calls that failed.
    pub errors: u64,
    pub elapsed: Duration,
}

impl FloodReport {
    /// Achieved packets per second.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Sends packets built by `make` (called once per packet with the generator and a
/// buffer to fill, e.g. with [`build_into`]) for `duration`, at most `pps` per second
/// on average, in batches, through a raw socket of the calling thread's namespace.
pub fn flood(
    duration: Duration,
    pps: u64,
    seed: u64,
    mut make: impl FnMut(&mut Rng, &mut Vec<u8>),
) -> Result<FloodReport> {
    let tx = RawSender::new()?;
    let mut rng = Rng::new(seed);
    let mut packets: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(128)).collect();
    let pacer = Pacer::new(pps);
    let mut report = FloodReport::default();
    let mut attempted = 0u64;
    while pacer.started.elapsed() < duration {
        for p in packets.iter_mut() {
            make(&mut rng, p);
        }
        let (sent, errors) = tx.send_batch(&mut packets);
        report.sent += sent;
        report.errors += errors;
        attempted += BATCH as u64;
        pacer.wait(attempted);
    }
    report.elapsed = pacer.started.elapsed();
    Ok(report)
}

/// A packet socket on one interface of the calling thread's namespace, receiving IPv4
/// packets (without their link header).
pub struct Sniffer {
    fd: OwnedFd,
}

impl Sniffer {
    /// Frames `ifname` receives (not those it sends).
    pub fn incoming(ifname: &str) -> Result<Sniffer> {
        Self::open(ifname, ETH_P_IP)
    }

    /// Frames `ifname` receives and sends (packet sockets see outgoing frames only with
    /// `ETH_P_ALL`).
    pub fn all(ifname: &str) -> Result<Sniffer> {
        Self::open(ifname, ETH_P_ALL)
    }

    fn open(ifname: &str, proto: u16) -> Result<Sniffer> {
        let fd = rawsock::packet_socket(ifname, Framing::Network, proto)?;
        let _ = set_int_opt(
            &fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            16 << 20,
            "SO_RCVBUFFORCE",
        );
        Ok(Sniffer { fd })
    }

    /// The next IPv4 packet into `buf`, waiting at most `timeout` (zero: only what is
    /// queued); its length and whether it was outgoing.
    pub fn recv(&self, buf: &mut [u8], timeout: Duration) -> Option<(usize, bool)> {
        let deadline = Instant::now() + timeout;
        loop {
            // SAFETY: an all-zero sockaddr_ll is valid to receive into.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf and from are valid for the sizes passed.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n >= 0 {
                if from.sll_protocol != ETH_P_IP.to_be() {
                    continue;
                }
                return Some((n as usize, from.sll_pkttype == libc::PACKET_OUTGOING));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, 1000) as i32;
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, ms) };
        }
    }
}

/// What [`handshake_flood`] did.
#[derive(Clone, Copy, Debug, Default)]
pub struct HandshakeReport {
    pub syns: u64,
    pub synacks: u64,
    /// Handshake ACKs sent: connections the attacker considers established.
    pub acks: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

impl HandshakeReport {
    /// Completed handshakes per second.
    pub fn rate(&self) -> f64 {
        self.acks as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A flood of handshakes that are completed and then left silent: see
/// [`HandshakeFlood::run`].
#[derive(Clone, Copy, Debug)]
pub struct HandshakeFlood<'a> {
    /// Interface of the calling thread's namespace that faces the server.
    pub ifname: &'a str,
    pub dst: Ipv4Addr,
    pub dport: u16,
    pub duration: Duration,
    /// SYNs per second at most.
    pub pps: u64,
    pub seed: u64,
}

impl HandshakeFlood<'_> {
    /// Opens TCP handshakes with `dst:dport` from the sources `source` picks (spoofed
    /// addresses that are not configured in the namespace) at `pps` SYNs per second for
    /// `duration`, and completes every one the server answers with the ACK of its
    /// SYN-ACK (`seq` = the SYN-ACK's `ack`, `ack` = its `seq + 1`), as a real client
    /// would; then never sends anything on them. Stateless, as an attacker's tool is.
    /// SYN-ACKs to addresses for which `ours` is false (legit clients) are left alone.
    pub fn run(
        &self,
        source: impl FnMut(&mut Rng) -> (Ipv4Addr, u16),
        ours: impl Fn(Ipv4Addr) -> bool,
    ) -> Result<HandshakeReport> {
        handshake_flood(self, source, ours)
    }
}

fn handshake_flood(
    f: &HandshakeFlood,
    mut source: impl FnMut(&mut Rng) -> (Ipv4Addr, u16),
    ours: impl Fn(Ipv4Addr) -> bool,
) -> Result<HandshakeReport> {
    let (dst, dport, duration) = (f.dst, f.dport, f.duration);
    let tx = RawSender::new()?;
    let rx = Sniffer::incoming(f.ifname)?;
    let mut rng = Rng::new(f.seed);
    let mut report = HandshakeReport::default();
    let mut syns: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(64)).collect();
    let mut acks: Vec<Vec<u8>> = Vec::new();
    let mut buf = vec![0u8; 2048];
    let pacer = Pacer::new(f.pps);
    let mut attempted = 0u64;
    let mut answer = |report: &mut HandshakeReport, acks: &mut Vec<Vec<u8>>| {
        while let Some((n, _)) = rx.recv(&mut buf, Duration::ZERO) {
            let Some(v) = parse(&buf[..n]) else { continue };
            if v.src != dst
                || v.sport != dport
                || v.flags & (TCP_SYN | TCP_ACK | TCP_RST) != TCP_SYN | TCP_ACK
                || !ours(v.dst)
            {
                continue;
            }
            report.synacks += 1;
            let mut s = Segment::between(v.dst, v.dport, dst, dport);
            s.seq = v.ack;
            s.ack = v.seq.wrapping_add(1);
            s.flags = TCP_ACK;
            acks.push(build(&s));
            if acks.len() >= 4 * BATCH {
                break;
            }
        }
        if !acks.is_empty() {
            let (sent, errors) = tx.send_batch(acks);
            report.acks += sent;
            report.errors += errors;
            acks.clear();
        }
    };
    while pacer.started.elapsed() < duration {
        for p in syns.iter_mut() {
            let (src, sport) = source(&mut rng);
            let mut s = Segment::between(src, sport, dst, dport);
            s.seq = rng.u32();
            s.flags = TCP_SYN;
            s.window = 64240;
            s.mss = Some(1460);
            build_into(&s, p);
        }
        let (sent, errors) = tx.send_batch(&mut syns);
        report.syns += sent;
        report.errors += errors;
        attempted += BATCH as u64;
        answer(&mut report, &mut acks);
        pacer.wait(attempted);
    }
    // The last SYN-ACKs.
    let tail = Instant::now();
    while tail.elapsed() < Duration::from_millis(300) {
        answer(&mut report, &mut acks);
        std::thread::sleep(Duration::from_millis(5));
    }
    report.elapsed = pacer.started.elapsed();
    Ok(report)
}

/// A TCP client driven by hand over a raw socket and a sniffer: the test says which
/// bytes go out at which stream offset, in which order and how often. It acknowledges
/// what the server sends in order (so a response can be read) and notes the highest
/// offset the server acknowledged, resets and FINs. Stream offset 0 is sequence number
/// `isn + 1`.
pub struct RawTcp {
    tx: RawSender,
    rx: Sniffer,
    pub src: Ipv4Addr,
    pub sport: u16,
    pub dst: Ipv4Addr,
    pub dport: u16,
    /// The client's ISN.
    pub isn: u32,
    /// The server's ISN as the client sees it (in cookie mode: the syncookie).
    pub peer_isn: u32,
    rcv_nxt: u32,
    /// Highest stream offset the server acknowledged.
    acked: usize,
    /// End of the highest byte sent.
    snd_max: usize,
    received: Vec<u8>,
    /// The server reset the connection.
    pub reset: bool,
    /// The server sent its FIN.
    pub fin: bool,
    buf: Vec<u8>,
}

impl RawTcp {
    /// Opens a connection from `src:sport` (an address not configured in the calling
    /// thread's namespace, whose interface `ifname` faces the server) with ISN `isn`:
    /// SYN (repeated every 300 ms), SYN-ACK, ACK.
    pub fn connect(
        ifname: &str,
        (src, sport): (Ipv4Addr, u16),
        (dst, dport): (Ipv4Addr, u16),
        isn: u32,
        timeout: Duration,
    ) -> Result<RawTcp> {
        let mut c = RawTcp {
            tx: RawSender::new()?,
            rx: Sniffer::incoming(ifname)?,
            src,
            sport,
            dst,
            dport,
            isn,
            peer_isn: 0,
            rcv_nxt: 0,
            acked: 0,
            snd_max: 0,
            received: Vec::new(),
            reset: false,
            fin: false,
            buf: vec![0u8; 65536],
        };
        let deadline = Instant::now() + timeout;
        let mut syn = Segment::between(src, sport, dst, dport);
        syn.seq = isn;
        syn.flags = TCP_SYN;
        syn.window = 64240;
        syn.mss = Some(1460);
        let syn = build(&syn);
        'handshake: loop {
            ensure!(
                Instant::now() < deadline,
                "no SYN-ACK for {src}:{sport} within {timeout:?}"
            );
            c.tx.send(&syn)?;
            let round = Instant::now() + Duration::from_millis(300);
            while Instant::now() < round {
                let Some((n, _)) = c.rx.recv(&mut c.buf, Duration::from_millis(50)) else {
                    continue;
                };
                let Some(v) = parse(&c.buf[..n]) else {
                    continue;
                };
                if !c.is_ours(&v) {
                    continue;
                }
                if v.flags & TCP_RST != 0 {
                    bail!("the handshake of {src}:{sport} was reset");
                }
                if v.flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK
                    && v.ack == isn.wrapping_add(1)
                {
                    c.peer_isn = v.seq;
                    c.rcv_nxt = v.seq.wrapping_add(1);
                    break 'handshake;
                }
            }
        }
        c.send_flags(0, TCP_ACK, &[])?;
        Ok(c)
    }

    fn is_ours(&self, v: &TcpView) -> bool {
        v.src == self.dst && v.sport == self.dport && v.dst == self.src && v.dport == self.sport
    }

    /// Sequence number of stream offset `offset`.
    pub fn seq(&self, offset: usize) -> u32 {
        self.isn.wrapping_add(1).wrapping_add(offset as u32)
    }

    /// Sends `data` at stream offset `offset` (PSH|ACK, acknowledging what was received).
    pub fn send(&mut self, offset: usize, data: &[u8]) -> Result<()> {
        self.send_flags(offset, TCP_PSH | TCP_ACK, data)
    }

    /// Sends data segments (stream offset, bytes) back to back, in one `sendmmsg` call:
    /// the later ones reach the server while it is still busy with the first.
    pub fn burst(&mut self, pieces: &[(usize, &[u8])]) -> Result<()> {
        let mut packets: Vec<Vec<u8>> = pieces
            .iter()
            .map(|(offset, data)| {
                let mut s = Segment::between(self.src, self.sport, self.dst, self.dport);
                s.seq = self.seq(*offset);
                s.ack = self.rcv_nxt;
                s.flags = TCP_PSH | TCP_ACK;
                s.payload = data;
                self.snd_max = self.snd_max.max(offset + data.len());
                build(&s)
            })
            .collect();
        let (sent, _) = self.tx.send_batch(&mut packets);
        ensure!(
            sent == packets.len() as u64,
            "sent {sent} of {} segments",
            packets.len()
        );
        Ok(())
    }

    /// Sends a segment at `offset` with the given flags (ACK number: what was received).
    pub fn send_flags(&mut self, offset: usize, flags: u8, data: &[u8]) -> Result<()> {
        let mut s = Segment::between(self.src, self.sport, self.dst, self.dport);
        s.seq = self.seq(offset);
        s.ack = if flags & TCP_ACK != 0 {
            self.rcv_nxt
        } else {
            0
        };
        s.flags = flags;
        s.payload = data;
        self.snd_max = self.snd_max.max(offset + data.len());
        self.tx.send(&build(&s))
    }

    /// Highest stream offset the server acknowledged.
    pub fn acked(&self) -> usize {
        self.acked
    }

    /// What the server sent, in order.
    pub fn received(&self) -> &[u8] {
        &self.received
    }

    /// Processes what arrives for `wait`: acknowledgements, data (acknowledged), FIN, RST.
    pub fn poll(&mut self, wait: Duration) -> Result<()> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some((n, _)) = self.rx.recv(&mut self.buf, left) else {
                return Ok(());
            };
            let Some(v) = parse(&self.buf[..n]) else {
                continue;
            };
            if !self.is_ours(&v) {
                continue;
            }
            if v.flags & TCP_RST != 0 {
                self.reset = true;
                continue;
            }
            let mut answer = v.flags & TCP_SYN != 0;
            if v.flags & TCP_ACK != 0 {
                let off = v.ack.wrapping_sub(self.isn.wrapping_add(1));
                if (off as i32) >= 0 && off as usize > self.acked {
                    self.acked = off as usize;
                }
            }
            let (seq, len) = (v.seq, v.payload.len() as u32);
            if len > 0 {
                answer = true;
                if seq == self.rcv_nxt {
                    self.received.extend_from_slice(v.payload);
                    self.rcv_nxt = self.rcv_nxt.wrapping_add(len);
                }
            }
            if v.flags & TCP_FIN != 0 {
                answer = true;
                if seq.wrapping_add(len) == self.rcv_nxt {
                    self.fin = true;
                    self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
                }
            }
            if answer {
                let end = self.snd_max;
                self.send_flags(end, TCP_ACK, &[])?;
            }
            if Instant::now() >= deadline {
                return Ok(());
            }
        }
    }

    /// Waits until the server acknowledged everything up to `end`; false on timeout or
    /// reset.
    pub fn wait_acked(&mut self, end: usize, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        while self.acked < end && !self.reset && Instant::now() < deadline {
            self.poll(Duration::from_millis(10))?;
        }
        Ok(self.acked >= end)
    }

    /// Sends `pieces` (stream offset, bytes) once in the order given, then, until the
    /// server acknowledged up to the end of the furthest piece, retransmits every 200 ms
    /// the piece holding the first unacknowledged byte (and those after it), as a TCP
    /// would. Fails on reset or timeout.
    pub fn deliver(&mut self, pieces: &[(usize, &[u8])], timeout: Duration) -> Result<()> {
        for (off, data) in pieces {
            self.send(*off, data)?;
        }
        let end = pieces.iter().map(|(o, d)| o + d.len()).max().unwrap_or(0);
        let deadline = Instant::now() + timeout;
        let mut sorted = pieces.to_vec();
        sorted.sort_by_key(|(o, d)| (*o, d.len()));
        loop {
            if self.wait_acked(end, Duration::from_millis(200))? {
                return Ok(());
            }
            ensure!(
                !self.reset,
                "reset with {} of {end} bytes acknowledged",
                self.acked
            );
            ensure!(
                Instant::now() < deadline,
                "{} of {end} bytes acknowledged after {timeout:?}",
                self.acked
            );
            for (off, data) in &sorted {
                if off + data.len() > self.acked {
                    self.send(*off, data)?;
                }
            }
        }
    }

    /// Reads one HTTP response from what the server sends.
    pub fn response(&mut self, timeout: Duration) -> Result<Response> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.received.is_empty() {
                let mut r = BufReader::new(&self.received[..]);
                if let Ok(resp) = http::read_response(&mut r, false) {
                    return Ok(resp);
                }
            }
            ensure!(
                !self.reset,
                "reset after {} bytes of response",
                self.received.len()
            );
            if Instant::now() >= deadline {
                bail!(
                    "no complete response within {timeout:?} ({} bytes: {:?})",
                    self.received.len(),
                    String::from_utf8_lossy(&self.received[..self.received.len().min(120)])
                );
            }
            self.poll(Duration::from_millis(20))
                .context("reading the response")?;
        }
    }

    /// Ends the connection with a RST at the end of what was sent.
    pub fn abort(&mut self) -> Result<()> {
        let end = self.snd_max;
        self.send_flags(end, TCP_RST | TCP_ACK, &[])
    }
}

/// Opens a keep-alive connection to `to` from the calling thread's namespace, whose
/// interface `ifname` faces it, and reads the connection's ISN from the SYN it sends
/// (for tests that then forge segments on the connection's own tuple).
pub fn connect_reading_isn(ifname: &str, to: SocketAddr) -> Result<(http::Conn, u32)> {
    let sniffer = Sniffer::all(ifname)?;
    let conn = http::Conn::connect(to)?;
    let port = conn.local_addr()?.port();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        let Some((n, outgoing)) = sniffer.recv(&mut buf, Duration::from_millis(100)) else {
            continue;
        };
        let Some(v) = parse(&buf[..n]) else {
            continue;
        };
        if outgoing
            && v.sport == port
            && SocketAddr::from((v.dst, v.dport)) == to
            && v.flags & (TCP_SYN | TCP_ACK) == TCP_SYN
        {
            return Ok((conn, v.seq));
        }
    }
    bail!("did not see the SYN of port {port}")
}

#[cfg(test)]
mod tests {
    use balancer_common::csum;

    use super::*;
    use crate::packet::l4_checksum;

    #[test]
    fn built_segments_parse_back_with_valid_checksums() {
        let mut s = Segment::between(
            Ipv4Addr::new(198, 18, 0, 40),
            40000,
            Ipv4Addr::new(198, 18, 100, 1),
            80,
        );
        s.seq = 0x1234_5678;
        s.ack = 0x9abc_def0;
        s.flags = TCP_PSH | TCP_ACK;
        s.payload = b"GET / HTTP/1.1\r\n\r\n!";
        let p = build(&s);
        let v = parse(&p).unwrap();
        assert_eq!((v.seq, v.ack, v.flags), (s.seq, s.ack, s.flags));
        assert_eq!(v.payload, s.payload);
        // A packet with correct checksums sums to zero (0xffff before inversion).
        assert_eq!(csum::checksum(&p[..20], 0), 0);
        assert_eq!(l4_checksum(s.src, s.dst, 6, &p[20..]), 0);
        // etherparse agrees.
        let h = etherparse::SlicedPacket::from_ip(&p).unwrap();
        match h.transport {
            Some(etherparse::TransportSlice::Tcp(t)) => {
                let ip = match h.net {
                    Some(etherparse::NetSlice::Ipv4(ip)) => ip,
                    _ => panic!("not IPv4"),
                };
                let sum = t
                    .to_header()
                    .calc_checksum_ipv4(&ip.header().to_header(), t.payload())
                    .unwrap();
                assert_eq!(sum, t.checksum());
            }
            _ => panic!("not TCP"),
        }
        s.flags = TCP_SYN;
        s.mss = Some(1460);
        s.payload = &[];
        let p = build(&s);
        assert_eq!(p.len(), 44);
        assert_eq!(&p[40..44], &[2, 4, 0x05, 0xb4]);
        assert_eq!(l4_checksum(s.src, s.dst, 6, &p[20..]), 0);
        // The header as the hand-written builder made it: DF, TTL 64, no id, no TOS.
        assert_eq!(
            &p[..12],
            &[0x45, 0, 0, 44, 0, 0, 0x40, 0, 64, 6, p[10], p[11]]
        );
    }

    #[test]
    fn parse_rejects_what_is_not_tcp_over_ipv4() {
        assert!(parse(&[0u8; 10]).is_none());
        let s = Segment::between(Ipv4Addr::LOCALHOST, 1, Ipv4Addr::LOCALHOST, 2);
        let mut p = build(&s);
        p[9] = 17;
        assert!(parse(&p).is_none());
        let mut p = build(&s);
        p[2..4].copy_from_slice(&1000u16.to_be_bytes());
        assert!(parse(&p).is_none());
    }
}

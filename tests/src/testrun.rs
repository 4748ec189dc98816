//! Harness for running the XDP program on single packets with `BPF_PROG_TEST_RUN`.
//!
//! A [`TestBed`] is one balancer instance loaded and pinned under a unique directory of
//! `/sys/fs/bpf/balancer-test/`, plus a fresh network namespace that gives the program's
//! `bpf_fib_lookup` something to look up, plus a worker thread living in that namespace
//! that performs every `BPF_PROG_TEST_RUN`. Dropping the bed (also when a test panics)
//! stops the worker, removes the pins and deletes the namespace.
//!
//! # How `BPF_PROG_TEST_RUN` behaves for this program (Linux 6.18, verified here)
//!
//! - The kernel resolves everything about the "receiving device" in the network namespace
//!   of the *calling thread*: without a context the packet is seen as received on that
//!   namespace's loopback device (ifindex 1), with an `xdp_md` context on the device named
//!   by `ingress_ifindex`. The program's FIB lookup therefore uses the routes, forwarding
//!   sysctls and neighbour entries of the worker's namespace, never the host's.
//! - `bpf_fib_lookup` needs forwarding enabled on the *ingress* device
//!   (`net.ipv4.conf.<dev>.forwarding`, set for every device, `lo` included, by
//!   `net.ipv4.ip_forward=1` in the namespace), a route to the destination, and a valid
//!   (here: permanent) neighbour entry; without the neighbour the program passes the
//!   packet (`pass_no_neighbour`), without a route it drops it (`drop_no_route`).
//! - Both ways of choosing the ingress work: no context (loopback), and an `xdp_md`
//!   context `{data: 0, data_end: frame length, data_meta: 0, ingress_ifindex: IF,
//!   rx_queue_index: 0, egress_ifindex: 0}` ([`xdp_md`]). Seen here: `ingress_ifindex` 0
//!   means loopback; an index unknown in the calling thread's namespace fails with
//!   `ENODEV` (an index from another namespace would silently name whatever device has it
//!   here); a non-zero `data_meta` or `egress_ifindex`, or `rx_queue_index` beyond the
//!   device's queues, fail with `EINVAL`; a non-zero `data` is taken as that many bytes of
//!   metadata in front of the packet. This kernel has no dummy driver, so the bed's two
//!   interfaces are veth devices (each with its peer in the same namespace):
//!   [`CLIENT_IF`] (clients' side) and [`BACKEND_IF`] (backends' side). The forward
//!   direction thus really changes interface (verdict `XDP_REDIRECT`), and a reply arriving
//!   on the client's interface goes back out of it (`XDP_TX`).
//! - The kernel refuses frames shorter than an Ethernet header (14 bytes) with `EINVAL`
//!   before the program runs.
//! - In this (non-live) mode a redirect is not carried out: the verdict is returned and
//!   the output buffer holds the frame as the program left it.
//! - `duration` is the kernel's `ktime_get_ns()` difference around the program run(s)
//!   divided by `repeat`. Here it comes in steps of about 10 ns. With `repeat = 1` it
//!   also contains a fixed cost of the test loop (timer reads, bottom-half disabling, the
//!   indirect call; about 70 ns here, the same for every program), so compare paths by
//!   their ratio to the `xdp_pass` baseline measured the same way. With `repeat > 1` the
//!   kernel runs the program again on the frame the previous run left (see
//!   `platform.md`), which is only meaningful for paths that do not modify the frame, and
//!   every such call costs tens of milliseconds of wall time (the kernel switches the XDP
//!   dispatcher to the program and back). `balancer-bench` measures accordingly.
//! - An XDP test run gets a whole page as its frame (`frame_sz` = 4 KiB, about 3.5 KiB
//!   of it usable after the headroom), whatever the input's length: `bpf_xdp_adjust_tail`
//!   can grow any frame the balancer builds (at most about 1.6 KB), so the XDP side of
//!   delayed binding's TC fallback (pass the SYN-ACK when the frame cannot grow) cannot
//!   be provoked here. The TC program is run directly instead ([`TestBed::run_tc`]):
//!   an skb test run ([`tc_test_run`]) with a [`skb_ctx`] naming the receiving device;
//!   the output buffer gets the skb as the program left it (grown by
//!   `bpf_skb_change_tail`), and `bpf_redirect` only sets the verdict
//!   (`TC_ACT_REDIRECT`, 7).
//!
//! # Cookie mode
//!
//! [`TestBed::add_cookie_service`] adds a cookie-mode service with server-ID tokens;
//! [`TestBed::rotate_syncookie_secret`] with [`TEST_SECRET`] lets a test compute the
//! syncookies the data plane hands out ([`syncookie`], over [`cookie_window`], CLOCK_TAI
//! in 64-second windows: a test accepts the window before and after its run). Raw map
//! readers ([`TestBed::flow_entries`], [`TestBed::pending_segment`],
//! [`TestBed::backend_counters`], [`TestBed::policy_backend`]) check state, and
//! [`check_frame`] compares an output frame with the frame it must be, field by field
//! and byte by byte.

use std::{
    collections::BTreeMap,
    fs::File,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
};

use crate::netns::{unique_name, Netns};
use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, HashMap, MapData},
    programs::{SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp},
};
use balancer_ebpf::{
    map_names,
    syncookie::{encode_mss, make_cookie, time_window, CookieSecret},
    Backend, Counter, Flow, FlowKey, GlobalStats, PendingSegment, PASS_PROGRAM_NAME, PROTO_TCP,
    RING_SIZE,
};
use balancer_user::{
    addr::ip_to_map,
    dataplane::{self, Balancer, XDP_OBJECT},
    flows::FlowInfo,
    stats::BackendCountersValues,
    BackendSpec, CookieSettings, Proto, ServiceAddr,
};

// --- XDP verdicts -------------------------------------------------------------------

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub fn verdict_name(v: u32) -> &'static str {
    match v {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "unknown verdict",
    }
}

// --- TC verdicts (the `balancer_tc` program) ---------------------------------------

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

pub fn tc_verdict_name(v: u32) -> &'static str {
    match v {
        TC_ACT_OK => "TC_ACT_OK",
        TC_ACT_SHOT => "TC_ACT_SHOT",
        TC_ACT_REDIRECT => "TC_ACT_REDIRECT",
        _ => "unknown TC verdict",
    }
}

// --- Addresses of the bed -----------------------------------------------------------

/// Where the bed's pin directories go (one per bed, removed with it).
pub const PIN_ROOT: &str = "/sys/fs/bpf/balancer-test";

/// The balancer's interface towards clients, and its address and MAC.
pub const CLIENT_IF: &str = "lbc0";
pub const CLIENT_IF_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const CLIENT_IF_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc0];
/// The balancer's interface towards backends (198.18.1.0/24), its address and MAC.
pub const BACKEND_IF: &str = "lbb0";
pub const BACKEND_IF_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const BACKEND_IF_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb0];

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
pub const VIP_PORT: u16 = 80;

/// The MAC the bed gives the neighbour entry of a backend address: `02:00:00:00:XX:YY`
/// from the address' last two octets.
pub fn backend_mac(addr: Ipv4Addr) -> [u8; 6] {
    let o = addr.octets();
    [0x02, 0, 0, 0, o[2], o[3]]
}

/// Backend `n` (0-based) of the bed's backend subnet: 198.18.1.(10 + n).
pub fn backend_addr(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, 10 + n)
}

pub fn vip() -> SocketAddrV4 {
    SocketAddrV4::new(VIP, VIP_PORT)
}

pub fn client(sport: u16) -> SocketAddrV4 {
    SocketAddrV4::new(CLIENT, sport)
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        panic!(
            "these tests need root (BPF_PROG_TEST_RUN, bpffs pins and network namespaces); \
             running as uid {euid}. Run them as root, e.g. `sudo -E cargo test --release -p \
             balancer-tests --test testrun`"
        );
    }
}

// --- Running programs ---------------------------------------------------------------

/// Which device the frame is "received" on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingress {
    /// No context: the namespace's loopback device (ifindex 1).
    Loopback,
    /// The bed's client-side interface ([`CLIENT_IF`]).
    Client,
    /// The bed's backend-side interface ([`BACKEND_IF`]).
    Backend,
}

/// An `xdp_md` for `ctx_in`: receive a frame of `len` bytes on `ifindex`, queue 0.
pub fn xdp_md(len: usize, ifindex: u32) -> [u8; 24] {
    let fields = [0u32, len as u32, 0, ifindex, 0, 0];
    let mut out = [0u8; 24];
    for (chunk, v) in out.chunks_exact_mut(4).zip(fields) {
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    out
}

/// One `BPF_PROG_TEST_RUN` of `prog` on a copy of `frame`; the output frame goes to `out`
/// (`result.data_size_out` bytes).
pub fn test_run(
    prog: &Xdp,
    frame: &[u8],
    ifindex: Option<u32>,
    repeat: u32,
    out: &mut [u8],
) -> Result<TestRunResult> {
    let ctx = ifindex.map(|i| xdp_md(frame.len(), i));
    prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(out),
        ctx_in: ctx.as_ref().map(|c| &c[..]),
        repeat,
        ..Default::default()
    })
    .map_err(|e| {
        let cause = std::error::Error::source(&e)
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        anyhow!(
            "BPF_PROG_TEST_RUN on a {}-byte frame: {e}{cause}",
            frame.len()
        )
    })
}

/// A `struct __sk_buff` (192 bytes) for the `ctx_in` of an skb test run: received on
/// `ifindex`, everything else zero. The kernel takes the device from `ifindex` (in the
/// calling thread's namespace; 0 or 1 means loopback) and the program reads it back as
/// `skb->ifindex`; `ingress_ifindex` becomes `skb->skb_iif`. Fields other than `mark`,
/// `priority`, `ingress_ifindex`, `ifindex`, `cb`, `tstamp`, `wire_len`, `gso_*` and
/// `hwtstamp` must be zero (EINVAL otherwise).
pub fn skb_ctx(ifindex: u32) -> [u8; 192] {
    let mut out = [0u8; 192];
    out[36..40].copy_from_slice(&ifindex.to_ne_bytes()); // ingress_ifindex
    out[40..44].copy_from_slice(&ifindex.to_ne_bytes()); // ifindex
    out
}

/// One skb `BPF_PROG_TEST_RUN` of a TC program on a copy of `frame` (Ethernet header
/// included: TC programs see the link header). The kernel copies the skb as the program
/// left it (grown or shrunk) into `out`; a redirect is only reported, not carried out.
pub fn tc_test_run(
    prog: &SchedClassifier,
    frame: &[u8],
    ifindex: Option<u32>,
    out: &mut [u8],
) -> Result<TestRunResult> {
    let ctx = ifindex.map(skb_ctx);
    prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(out),
        ctx_in: ctx.as_ref().map(|c| &c[..]),
        repeat: 1,
        ..Default::default()
    })
    .map_err(|e| {
        let cause = std::error::Error::source(&e)
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        anyhow!(
            "BPF_PROG_TEST_RUN (skb) on a {}-byte frame: {e}{cause}",
            frame.len()
        )
    })
}

/// What one run of the program did.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub verdict: u32,
    /// The frame as the program left it.
    pub output: Vec<u8>,
    /// Kernel-reported run time (ns, see the module docs for what it contains).
    pub duration_ns: u64,
}

impl RunResult {
    pub fn verdict_name(&self) -> &'static str {
        verdict_name(self.verdict)
    }
}

/// The programs, owned by the worker thread (which lives in the bed's namespace).
pub struct Programs {
    pub balancer: Xdp,
    pin_dir: PathBuf,
    pass: Option<aya::Ebpf>,
    tc: Option<SchedClassifier>,
    /// Interface indexes of [`CLIENT_IF`] and [`BACKEND_IF`].
    pub client_ifindex: u32,
    pub backend_ifindex: u32,
}

impl Programs {
    /// The `xdp_pass` program of the same object (the benchmark baseline), loaded on first
    /// use. The object is loaded with the instance's pin directory as its map pin
    /// directory, so its pinned maps are the instance's existing ones: nothing new is
    /// created or pinned, and nothing is left to clean up.
    pub fn pass(&mut self) -> Result<&Xdp> {
        if self.pass.is_none() {
            let mut ebpf = aya::EbpfLoader::new()
                .default_map_pin_directory(&self.pin_dir)
                .load(XDP_OBJECT)
                .context("loading the XDP object for xdp_pass")?;
            let prog: &mut Xdp = ebpf
                .program_mut(PASS_PROGRAM_NAME)
                .ok_or_else(|| anyhow!("no {PASS_PROGRAM_NAME} program in the object"))?
                .try_into()?;
            prog.load().context("loading xdp_pass")?;
            self.pass = Some(ebpf);
        }
        let prog = self
            .pass
            .as_ref()
            .and_then(|e| e.program(PASS_PROGRAM_NAME))
            .expect("loaded above");
        Ok(prog.try_into()?)
    }

    /// The pinned TC ingress program (`balancer_tc`, delayed binding's fallback), opened
    /// from its pin on first use.
    pub fn tc(&mut self) -> Result<&SchedClassifier> {
        if self.tc.is_none() {
            let path = self.pin_dir.join(dataplane::TC_PROGRAM_PIN);
            let prog = SchedClassifier::from_pin(&path)
                .with_context(|| format!("opening the TC program pinned at {}", path.display()))?;
            self.tc = Some(prog);
        }
        Ok(self.tc.as_ref().expect("opened above"))
    }

    /// The instance's pin directory (maps can be opened from any thread).
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn ifindex(&self, ingress: Ingress) -> Option<u32> {
        match ingress {
            Ingress::Loopback => None,
            Ingress::Client => Some(self.client_ifindex),
            Ingress::Backend => Some(self.backend_ifindex),
        }
    }
}

/// Room the output buffer of a single run leaves for a frame that grows (delayed binding
/// grows a backend's SYN-ACK into the kept first segment, up to 1,536 TCP bytes).
const OUT_ROOM: usize = 2048;

fn run_one(prog: &Xdp, frame: &[u8], ifindex: Option<u32>) -> Result<RunResult> {
    let mut out = vec![0u8; frame.len() + OUT_ROOM];
    let r = test_run(prog, frame, ifindex, 1, &mut out)?;
    out.truncate(r.data_size_out as usize);
    Ok(RunResult {
        verdict: r.return_value,
        output: out,
        duration_ns: r.duration.as_nanos() as u64,
    })
}

fn run_one_tc(prog: &SchedClassifier, frame: &[u8], ifindex: Option<u32>) -> Result<RunResult> {
    let mut out = vec![0u8; frame.len() + OUT_ROOM];
    let r = tc_test_run(prog, frame, ifindex, &mut out)?;
    out.truncate(r.data_size_out as usize);
    Ok(RunResult {
        verdict: r.return_value,
        output: out,
        duration_ns: r.duration.as_nanos() as u64,
    })
}

type Job = Box<dyn FnOnce(&mut Programs) + Send>;

struct Worker {
    tx: Option<mpsc::Sender<Job>>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Worker {
    fn start(netns: &Netns, balancer: Xdp, pin_dir: PathBuf) -> Result<Worker> {
        let ns = File::open(netns.path()).with_context(|| format!("opening {}", netns.path()))?;
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let handle = thread::Builder::new()
            .name("testrun-worker".into())
            .spawn(move || {
                // SAFETY: setns on a valid namespace fd; CLONE_NEWNET affects this thread only.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let _ =
                        ready_tx.send(Err(anyhow!("setns: {}", std::io::Error::last_os_error())));
                    return;
                }
                drop(ns);
                let index = |name: &str| {
                    let c = std::ffi::CString::new(name).unwrap();
                    // SAFETY: valid C string; resolved in this thread's namespace.
                    unsafe { libc::if_nametoindex(c.as_ptr()) }
                };
                let (client_ifindex, backend_ifindex) = (index(CLIENT_IF), index(BACKEND_IF));
                if client_ifindex == 0 || backend_ifindex == 0 {
                    let _ = ready_tx.send(Err(anyhow!("bed interfaces missing in the namespace")));
                    return;
                }
                let mut programs = Programs {
                    balancer,
                    pin_dir,
                    pass: None,
                    tc: None,
                    client_ifindex,
                    backend_ifindex,
                };
                let _ = ready_tx.send(Ok(()));
                for job in rx {
                    job(&mut programs);
                }
            })
            .context("spawning the test-run worker")?;
        let worker = Worker {
            tx: Some(tx),
            handle: Some(handle),
        };
        ready_rx
            .recv()
            .map_err(|_| anyhow!("test-run worker died while starting"))??;
        Ok(worker)
    }

    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Programs) -> T + Send + 'static,
    ) -> Result<T> {
        let (rtx, rrx) = mpsc::channel();
        let job: Job = Box::new(move |p| {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(p)));
            let _ = rtx.send(r.map_err(|e| panic_message(&e)));
        });
        self.tx
            .as_ref()
            .expect("worker running")
            .send(job)
            .map_err(|_| anyhow!("test-run worker is gone"))?;
        rrx.recv()
            .map_err(|_| anyhow!("test-run worker is gone"))?
            .map_err(|m| anyhow!("panic on the test-run worker: {m}"))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "non-string panic".into())
}

/// Removes the instance's pins when dropped.
struct PinGuard(PathBuf);

impl Drop for PinGuard {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = dataplane::detach(&self.0);
        }
    }
}

// --- The test bed -------------------------------------------------------------------

/// One pinned balancer instance in its own namespace, ready for single-packet runs.
pub struct TestBed {
    // Dropped in this order after `Drop::drop` (which stops the worker and closes the
    // balancer handle, whose lock `detach` needs): pins, then the namespace.
    worker: Option<Worker>,
    balancer: Option<Balancer>,
    pins: PinGuard,
    netns: Netns,
    client_ifindex: u32,
    backend_ifindex: u32,
}

impl Drop for TestBed {
    fn drop(&mut self) {
        drop(self.worker.take());
        drop(self.balancer.take());
    }
}

impl TestBed {
    /// A bed with a flow table of `flow_capacity` entries and no services.
    pub fn new(flow_capacity: u32) -> Result<TestBed> {
        require_root();
        let netns = Netns::new("tr")?;
        for (k, v) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.forwarding", "1"),
            ("net.ipv4.conf.default.forwarding", "1"),
        ] {
            netns.sysctl(k, v)?;
        }
        for (name, mac, addr) in [
            (CLIENT_IF, CLIENT_IF_MAC, CLIENT_IF_ADDR),
            (BACKEND_IF, BACKEND_IF_MAC, BACKEND_IF_ADDR),
        ] {
            // A veth pair with both ends in the namespace (this kernel has no dummy
            // driver); the peer only has to be up so the device has carrier.
            let mac = fmt_mac(&mac);
            let peer = format!("{name}p");
            netns.ip(&[
                "link", "add", name, "address", &mac, "type", "veth", "peer", "name", &peer,
            ])?;
            netns.ip(&["addr", "add", &format!("{addr}/24"), "dev", name])?;
            netns.ip(&["link", "set", &peer, "up"])?;
            netns.ip(&["link", "set", name, "up"])?;
        }
        // The FIB helper refuses to forward from a device with forwarding off; lo is the
        // ingress of context-less runs.
        for dev in ["lo", CLIENT_IF, BACKEND_IF] {
            let out = netns.exec(
                "sysctl",
                &["-n", &format!("net.ipv4.conf.{dev}.forwarding")],
            )?;
            let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if v != "1" {
                bail!("net.ipv4.conf.{dev}.forwarding is {v:?} in the test namespace, expected 1");
            }
        }

        let dir = Path::new(PIN_ROOT).join(unique_name("tr"));
        let pins = PinGuard(dir.clone());
        // Every cookie pair is reported (no sampling), so counters are deterministic.
        let config = balancer_ebpf::Config {
            pair_sample_mask: 0,
            ..Default::default()
        };
        dataplane::load_pinned(&dir, flow_capacity, &config)
            .with_context(|| format!("loading the data plane under {}", dir.display()))?;
        let balancer = Balancer::open(&dir)?;
        let program = balancer.program()?;
        let worker = Worker::start(&netns, program, dir.clone())?;
        let (client_ifindex, backend_ifindex) =
            worker.call(|p| (p.client_ifindex, p.backend_ifindex))?;
        Ok(TestBed {
            worker: Some(worker),
            balancer: Some(balancer),
            pins,
            netns,
            client_ifindex,
            backend_ifindex,
        })
    }

    pub fn balancer(&self) -> &Balancer {
        self.balancer.as_ref().expect("open while the bed lives")
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pins.0
    }

    pub fn ifindex(&self, ingress: Ingress) -> u32 {
        match ingress {
            Ingress::Loopback => 1,
            Ingress::Client => self.client_ifindex,
            Ingress::Backend => self.backend_ifindex,
        }
    }

    /// Runs `f` on the worker thread (inside the namespace) with the programs.
    pub fn with_programs<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Programs) -> T + Send + 'static,
    ) -> Result<T> {
        self.worker.as_ref().expect("worker running").call(f)
    }

    /// One run of the balancer program on `frame`.
    pub fn run(&self, frame: &[u8], ingress: Ingress) -> Result<RunResult> {
        let frame = frame.to_vec();
        self.with_programs(move |p| run_one(&p.balancer, &frame, p.ifindex(ingress)))?
    }

    /// One run of the `xdp_pass` baseline on `frame`.
    pub fn run_pass(&self, frame: &[u8], ingress: Ingress) -> Result<RunResult> {
        let frame = frame.to_vec();
        self.with_programs(move |p| {
            let ifindex = p.ifindex(ingress);
            run_one(p.pass()?, &frame, ifindex)
        })?
    }

    /// One run of the TC ingress program (`balancer_tc`) on `frame`, as received on
    /// `ingress`. The verdict is a `TC_ACT_*` value.
    pub fn run_tc(&self, frame: &[u8], ingress: Ingress) -> Result<RunResult> {
        let frame = frame.to_vec();
        self.with_programs(move |p| {
            let ifindex = p.ifindex(ingress);
            run_one_tc(p.tc()?, &frame, ifindex)
        })?
    }

    /// Adds a permanent neighbour entry for `addr` on the backend side, with
    /// [`backend_mac`] as its MAC.
    pub fn add_neighbour(&self, addr: Ipv4Addr) -> Result<()> {
        let mac = fmt_mac(&backend_mac(addr));
        self.netns.ip(&[
            "neigh",
            "replace",
            &addr.to_string(),
            "lladdr",
            &mac,
            "dev",
            BACKEND_IF,
            "nud",
            "permanent",
        ])?;
        Ok(())
    }

    pub fn del_neighbour(&self, addr: Ipv4Addr) -> Result<()> {
        self.netns
            .ip(&["neigh", "del", &addr.to_string(), "dev", BACKEND_IF])?;
        Ok(())
    }

    /// Adds a service and its backends (weight 100 each), with a neighbour entry for every
    /// backend address.
    pub fn add_service(
        &self,
        vip: SocketAddrV4,
        proto: Proto,
        backends: &[SocketAddrV4],
    ) -> Result<ServiceAddr> {
        let addr = ServiceAddr {
            addr: *vip.ip(),
            port: vip.port(),
            proto,
        };
        self.balancer().add_service(addr)?;
        for b in backends {
            self.add_backend(addr, *b)?;
        }
        Ok(addr)
    }

    pub fn add_backend(&self, service: ServiceAddr, backend: SocketAddrV4) -> Result<()> {
        self.add_neighbour(*backend.ip())?;
        self.balancer().add_backend(
            service,
            BackendSpec {
                addr: *backend.ip(),
                port: backend.port(),
                weight: balancer_user::control::DEFAULT_WEIGHT,
                server_id: None,
            },
        )?;
        Ok(())
    }

    /// Sets a backend's state (`balancer_ebpf::backend_state::*`).
    pub fn set_backend_state(
        &self,
        service: ServiceAddr,
        backend: SocketAddrV4,
        state: u8,
    ) -> Result<()> {
        self.balancer()
            .set_backend_state(service, &backend.to_string(), state)?;
        Ok(())
    }

    pub fn remove_backend(&self, service: ServiceAddr, backend: SocketAddrV4) -> Result<()> {
        self.balancer()
            .remove_backend(service, &backend.to_string())?;
        Ok(())
    }

    /// Adds a cookie-mode service (default cookie settings: `JSESSIONID`, `!`, primary
    /// segment 2, secondary 3) and its backends with their server-ID tokens, with a
    /// neighbour entry for every backend address.
    pub fn add_cookie_service(
        &self,
        vip: SocketAddrV4,
        backends: &[(SocketAddrV4, &str)],
    ) -> Result<ServiceAddr> {
        let addr = ServiceAddr {
            addr: *vip.ip(),
            port: vip.port(),
            proto: Proto::Tcp,
        };
        self.balancer()
            .add_service_with(addr, Some(CookieSettings::default()))?;
        for (b, id) in backends {
            self.add_cookie_backend(addr, *b, id)?;
        }
        Ok(addr)
    }

    /// Adds a backend with server-ID token `server_id` to a cookie-mode service.
    pub fn add_cookie_backend(
        &self,
        service: ServiceAddr,
        backend: SocketAddrV4,
        server_id: &str,
    ) -> Result<()> {
        self.add_neighbour(*backend.ip())?;
        self.balancer().add_backend(
            service,
            BackendSpec {
                addr: *backend.ip(),
                port: backend.port(),
                weight: balancer_user::control::DEFAULT_WEIGHT,
                server_id: Some(server_id.to_string()),
            },
        )?;
        Ok(())
    }

    /// Cookie mode: sends the sessions of `failed` to `replacement` (or stops with `None`).
    pub fn set_failover(
        &self,
        service: ServiceAddr,
        failed: SocketAddrV4,
        replacement: Option<SocketAddrV4>,
    ) -> Result<()> {
        let r = replacement.map(|r| r.to_string());
        self.balancer()
            .set_failover(service, &failed.to_string(), r.as_deref())?;
        Ok(())
    }

    /// Installs `secret` as the current syncookie secret (the current one becomes the
    /// previous one).
    pub fn rotate_syncookie_secret(&self, secret: CookieSecret) -> Result<()> {
        self.balancer().rotate_syncookie_secret(secret)?;
        Ok(())
    }

    /// Every entry of the flow table (both directions), raw.
    pub fn flow_entries(&self) -> Result<Vec<(FlowKey, Flow)>> {
        let map: HashMap<MapData, FlowKey, Flow> = self
            .balancer()
            .map(map_names::FLOWS)?
            .try_into()
            .context("FLOWS map")?;
        let mut out = Vec::new();
        for item in map.iter() {
            out.push(item.context("reading FLOWS")?);
        }
        Ok(out)
    }

    /// The flow-table entry of `key`, if any.
    pub fn flow_entry(&self, key: &FlowKey) -> Result<Option<Flow>> {
        Ok(self
            .flow_entries()?
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, f)| f))
    }

    /// Keys of the PENDING map (first segments kept while binding).
    pub fn pending_keys(&self) -> Result<Vec<FlowKey>> {
        let map: HashMap<MapData, FlowKey, PendingSegment> = self
            .balancer()
            .map(map_names::PENDING)?
            .try_into()
            .context("PENDING map")?;
        let mut out = Vec::new();
        for k in map.keys() {
            out.push(k.context("reading PENDING")?);
        }
        Ok(out)
    }

    /// The kept first segment (TCP header and payload) of `key`, if any.
    pub fn pending_segment(&self, key: &FlowKey) -> Result<Option<Vec<u8>>> {
        let map: HashMap<MapData, FlowKey, PendingSegment> = self
            .balancer()
            .map(map_names::PENDING)?
            .try_into()
            .context("PENDING map")?;
        match map.get(key, 0) {
            Ok(seg) => {
                let len = (seg.len as usize).min(seg.bytes.len());
                Ok(Some(seg.bytes[..len].to_vec()))
            }
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("reading PENDING"),
        }
    }

    /// Per-backend counters (summed over CPUs) by backend address.
    pub fn backend_counters(&self) -> Result<BTreeMap<SocketAddrV4, BackendCountersValues>> {
        let mut out = BTreeMap::new();
        for b in self.balancer().stats()?.backends {
            let addr: SocketAddrV4 = b
                .backend
                .parse()
                .with_context(|| format!("backend address {}", b.backend))?;
            out.insert(addr, b.counters);
        }
        Ok(out)
    }

    /// The backend the service's Maglev table gives the client-side 5-tuple `key`
    /// (what cookie mode falls back to), read from the pinned RING and BACKENDS maps and
    /// hashed with the data plane's own `flow_hash`.
    pub fn policy_backend(&self, service: ServiceAddr, key: &FlowKey) -> Result<SocketAddrV4> {
        let id = self
            .balancer()
            .services()?
            .into_iter()
            .find(|s| s.addr == service)
            .with_context(|| format!("no service {service}"))?
            .id;
        let ring: Array<MapData, u32> = self
            .balancer()
            .map(map_names::RING)?
            .try_into()
            .context("RING map")?;
        let backends: Array<MapData, Backend> = self
            .balancer()
            .map(map_names::BACKENDS)?
            .try_into()
            .context("BACKENDS map")?;
        let index = id * RING_SIZE + balancer_ebpf::hash::flow_hash(key) % RING_SIZE;
        let slot = ring.get(&index, 0).context("reading RING")?;
        let b = backends.get(&slot, 0).context("reading BACKENDS")?;
        Ok(SocketAddrV4::new(
            Ipv4Addr::from(b.addr.to_ne_bytes()),
            u16::from_be(b.port),
        ))
    }

    /// The global counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        Ok(Counters(self.balancer().global_counters()?))
    }

    /// Client-side flow entries.
    pub fn flows(&self) -> Result<Vec<FlowInfo>> {
        Ok(self.balancer().flows(usize::MAX)?)
    }

    /// The flow of `client` to `service` (as `flows()` reports it), if any.
    pub fn flow_of(
        &self,
        client: SocketAddrV4,
        service: SocketAddrV4,
        proto: Proto,
    ) -> Result<Option<FlowInfo>> {
        let c = client.to_string();
        let s = format!("{service}/{proto}");
        Ok(self
            .flows()?
            .into_iter()
            .find(|f| f.client == c && f.service == s))
    }
}

fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A snapshot of the global counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters(pub GlobalStats);

impl Counters {
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }

    /// The counters that changed since `before`, by label, with their increase.
    pub fn delta(&self, before: &Counters) -> BTreeMap<&'static str, u64> {
        Counter::ALL
            .iter()
            .filter_map(|c| {
                let d = self.get(*c).wrapping_sub(before.get(*c));
                (d != 0).then_some((c.label(), d))
            })
            .collect()
    }
}

/// Builds the map [`Counters::delta`] returns, from `(counter, increase)` pairs.
pub fn counter_map(entries: &[(Counter, u64)]) -> BTreeMap<&'static str, u64> {
    entries
        .iter()
        .filter(|(_, n)| *n != 0)
        .map(|(c, n)| (c.label(), *n))
        .collect()
}

// --- Cookie mode ----------------------------------------------------------------------

/// The syncookie secret tests install with [`TestBed::rotate_syncookie_secret`], so that
/// they can compute the cookies the data plane hands out.
pub const TEST_SECRET: CookieSecret = CookieSecret {
    k0: 0x0706_0504_0302_0100,
    k1: 0x0f0e_0d0c_0b0a_0908,
};

/// CLOCK_TAI in nanoseconds: the clock `bpf_ktime_get_tai_ns` reads, which sets the
/// syncookie time window.
pub fn tai_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_TAI, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The syncookie time window now.
pub fn cookie_window() -> u32 {
    time_window(tai_ns())
}

/// The flow key of a TCP packet `src -> dst`, as the data plane stores it.
pub fn tcp_key(src: SocketAddrV4, dst: SocketAddrV4) -> FlowKey {
    FlowKey::new(
        ip_to_map(*src.ip()),
        ip_to_map(*dst.ip()),
        src.port().to_be(),
        dst.port().to_be(),
        PROTO_TCP,
    )
}

/// The syncookie the data plane answers a SYN `client -> service` with sequence number
/// `isn` and MSS option `client_mss` (536 for a SYN without one) in window `t`.
pub fn syncookie(
    secret: &CookieSecret,
    client: SocketAddrV4,
    service: SocketAddrV4,
    isn: u32,
    client_mss: u16,
    t: u32,
) -> u32 {
    let k = tcp_key(client, service);
    make_cookie(
        secret,
        k.src,
        k.dst,
        k.sport,
        k.dport,
        isn,
        t,
        encode_mss(client_mss),
    )
}

/// An HTTP request head of exactly `len` bytes whose `Cookie: JSESSIONID=...` header
/// (naming `primary` and `secondary`) is the first header line (`at` = 0.0), the last
/// (1.0), or in between (the fraction of the filler header lines before it). The other
/// lines are realistic browser headers plus `X-Filler-N` lines padding to `len`.
pub fn request_head(len: usize, at: f64, primary: &str, secondary: &str) -> Vec<u8> {
    let request_line = "GET /app/cart?item=42 HTTP/1.1\r\n";
    let cookie =
        format!("Cookie: theme=dark; JSESSIONID=a1b2c3d4e5f6!{primary}!{secondary}; lang=en\r\n");
    let mut fillers: Vec<String> = vec![
        "Host: shop.example.test\r\n".into(),
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
            .into(),
        "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n".into(),
        "Accept-Language: en-US,en;q=0.5\r\n".into(),
        "Accept-Encoding: gzip, deflate, br, zstd\r\n".into(),
        "Referer: https://shop.example.test/app/catalog?page=3&sort=price\r\n".into(),
        "Connection: keep-alive\r\n".into(),
        "Upgrade-Insecure-Requests: 1\r\n".into(),
    ];
    let fixed = request_line.len() + cookie.len() + 2;
    let mut total = fixed + fillers.iter().map(String::len).sum::<usize>();
    assert!(
        total <= len,
        "a {len}-byte head cannot hold the fixed headers ({total} bytes)"
    );
    let mut n = 0;
    while len - total > 0 {
        // "X-Filler-N: " + value + CRLF; at most 100 bytes a line.
        let name = format!("X-Filler-{n}: ");
        let room = len - total;
        let line_len = room.min(100);
        let value_len = line_len.saturating_sub(name.len() + 2);
        if value_len == 0 {
            // Too little room for another line: lengthen the previous filler instead.
            let last = fillers.last_mut().expect("fillers");
            let body = last.trim_end_matches("\r\n").to_string();
            *last = format!("{body}{}\r\n", "x".repeat(room));
            total += room;
            continue;
        }
        let value: String = (0..value_len)
            .map(|i| (b'a' + ((i + n) % 26) as u8) as char)
            .collect();
        fillers.push(format!("{name}{value}\r\n"));
        total += line_len;
        n += 1;
    }
    let pos = ((fillers.len() as f64) * at.clamp(0.0, 1.0)).round() as usize;
    fillers.insert(pos, cookie);
    let mut head = String::from(request_line);
    for l in &fillers {
        head.push_str(l);
    }
    head.push_str("\r\n");
    assert_eq!(head.len(), len, "request head length");
    head.into_bytes()
}

// --- Bulk map access (the scale benchmark) ------------------------------------------

/// `union bpf_attr` as `BPF_MAP_*_BATCH` reads it.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Writes `keys[i] -> values[i]` (flag `BPF_ANY`) into the map behind `fd` with
/// `BPF_MAP_UPDATE_BATCH`: one syscall per 64k entries instead of one per entry (aya 0.14
/// has no batch operations). Fails on the first entry the kernel refuses.
pub fn map_update_batch<K: aya::Pod, V: aya::Pod>(
    fd: std::os::fd::BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    if keys.len() != values.len() {
        bail!("{} keys but {} values", keys.len(), values.len());
    }
    for (k, v) in keys.chunks(65_536).zip(values.chunks(65_536)) {
        let mut attr = BatchAttr {
            keys: k.as_ptr() as u64,
            values: v.as_ptr() as u64,
            count: k.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: attr points to valid key/value arrays of `count` elements of the map's
        // key and value sizes; the kernel only reads them (and writes `count` back).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>() as u32,
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            bail!(
                "BPF_MAP_UPDATE_BATCH: {e} after {} of {} entries of this chunk",
                attr.count,
                k.len()
            );
        }
        if attr.count as usize != k.len() {
            bail!(
                "BPF_MAP_UPDATE_BATCH wrote {} of {} entries",
                attr.count,
                k.len()
            );
        }
    }
    Ok(())
}

/// The kernel's estimate of a map's memory (`memlock` in `/proc/self/fdinfo/<fd>`, from
/// the map type's `map_mem_usage`), in bytes.
pub fn map_memlock(fd: std::os::fd::BorrowedFd<'_>) -> Result<u64> {
    use std::os::fd::AsRawFd as _;
    let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no memlock line in {path}"))
}

//! Running the programs: XDP and TC verdicts, BPF_PROG_TEST_RUN with its contexts, and
//! the worker thread that runs them inside the bed's namespace.

use super::*;

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
    let opts = test_run_options(frame, ctx.as_ref().map(|c| &c[..]), repeat, out);
    prog.test_run(opts)
        .map_err(|e| test_run_error(e, "BPF_PROG_TEST_RUN", frame.len()))
}

/// The options of one test run of `frame` (context `ctx`, `repeat` times) into `out`.
fn test_run_options<'a>(
    frame: &'a [u8],
    ctx: Option<&'a [u8]>,
    repeat: u32,
    out: &'a mut [u8],
) -> TestRunOptions<'a> {
    TestRunOptions {
        data_in: Some(frame),
        data_out: Some(out),
        ctx_in: ctx,
        repeat,
        ..Default::default()
    }
}

/// A failed test run (`what` of a `len`-byte frame), with the kernel's cause.
fn test_run_error(e: ProgramError, what: &str, len: usize) -> anyhow::Error {
    let cause = std::error::Error::source(&e)
        .map(|s| format!(": {s}"))
        .unwrap_or_default();
    anyhow!("{what} on a {len}-byte frame: {e}{cause}")
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
    let opts = test_run_options(frame, ctx.as_ref().map(|c| &c[..]), 1, out);
    prog.test_run(opts)
        .map_err(|e| test_run_error(e, "BPF_PROG_TEST_RUN (skb)", frame.len()))
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
    pub(super) pin_dir: PathBuf,
    pub(super) pass: Option<aya::Ebpf>,
    pub(super) tc: Option<SchedClassifier>,
    /// Interface indexes of [`CLIENT_IF`] and [`BACKEND_IF`].
    pub client_ifindex: u32,
    pub backend_ifindex: u32,
}

impl Programs {
    /// The `xdp_pass` test program (the benchmark baseline), loaded on first use. It uses
    /// no maps, so nothing is pinned and nothing is left to clean up.
    pub fn pass(&mut self) -> Result<&Xdp> {
        if self.pass.is_none() {
            let mut ebpf = aya::EbpfLoader::new()
                .load(TEST_PROGRAMS_OBJECT)
                .context("loading the test programs object for xdp_pass")?;
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

pub(super) fn run_one(prog: &Xdp, frame: &[u8], ifindex: Option<u32>) -> Result<RunResult> {
    let mut out = vec![0u8; frame.len() + OUT_ROOM];
    let r = test_run(prog, frame, ifindex, 1, &mut out)?;
    out.truncate(r.data_size_out as usize);
    Ok(RunResult {
        verdict: r.return_value,
        output: out,
        duration_ns: r.duration.as_nanos() as u64,
    })
}

pub(super) fn run_one_tc(
    prog: &SchedClassifier,
    frame: &[u8],
    ifindex: Option<u32>,
) -> Result<RunResult> {
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

pub(super) struct Worker {
    tx: Option<mpsc::Sender<Job>>,
    pub(super) handle: Option<thread::JoinHandle<()>>,
}

impl Worker {
    pub(super) fn start(netns: &Netns, balancer: Xdp, pin_dir: PathBuf) -> Result<Worker> {
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

    pub(super) fn call<T: Send + 'static>(
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
pub(super) struct PinGuard(pub(super) PathBuf);

impl Drop for PinGuard {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = dataplane::detach(&self.0);
        }
    }
}

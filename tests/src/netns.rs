//! Network namespaces that clean up after themselves.
//!
//! Every namespace gets a unique name (`prefix` + pid + counter), is deleted when its
//! guard drops (also on panic), and code runs inside it either as a child process
//! (`ip netns exec`, or `nsenter --net` for programs that need the host's bpffs) or on a
//! thread that entered it with `setns` (so a test can open sockets in it directly).

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context, Result};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique short name: interface names are limited to 15 bytes, so keep prefixes short.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// A command's stderr as text, trailing whitespace removed (for assertion messages and
/// comparisons with the one-line errors of the CLI).
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim_end().to_string()
}

/// Runs a command, failing with its stderr if it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Runs `ip` with the given arguments.
pub fn ip(args: &[&str]) -> Result<Output> {
    run("ip", args)
}

pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace with a unique name starting with `prefix`, loopback up.
    pub fn new(prefix: &str) -> Result<Netns> {
        let name = unique_name(prefix);
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Runs a program inside the namespace (`ip netns exec`: also gives it the namespace's
    /// /sys, but a fresh mount namespace without the host's bpffs).
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A `Command` that runs `program` in the namespace's network only (`nsenter --net`),
    /// keeping the host's mounts: what `balancer` needs to reach /sys/fs/bpf.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path()))
            .arg("--")
            .arg(program);
        c
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])?;
        Ok(())
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let file = File::open(self.path()).with_context(|| format!("opening {}", self.path()))?;
        let handle = std::thread::spawn(move || {
            enter(&file).expect("setns into test namespace");
            f()
        });
        handle
            .join()
            .map_err(|p| anyhow::anyhow!("thread in namespace panicked: {}", panic_message(&p)))
    }

    /// Enters the namespace on the calling thread for good (for threads spawned to live in
    /// it, e.g. load generators).
    pub fn enter_current_thread(&self) -> Result<()> {
        let file = File::open(self.path()).with_context(|| format!("opening {}", self.path()))?;
        enter(&file)
    }
}

fn enter(file: &File) -> Result<()> {
    // SAFETY: setns on a valid namespace fd; CLONE_NEWNET affects only this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "non-string panic".into())
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace removes every interface in it (and their veth peers).
        let _ = ip(&["netns", "delete", &self.name]);
    }
}

/// A veth pair between two namespaces, with checksum offload off on both ends (the stack
/// would otherwise send partial checksums, which an XDP rewrite cannot complete) and GRO
/// on, which gives each end NAPI so frames redirected into it by XDP are received. Both
/// ends are brought up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    let tmp_a = unique_name("va");
    let tmp_b = unique_name("vb");
    ip(&[
        "link", "add", &tmp_a, "type", "veth", "peer", "name", &tmp_b,
    ])?;
    let moved = ip(&["link", "set", &tmp_a, "netns", a.name(), "name", a_if])
        .and_then(|_| ip(&["link", "set", &tmp_b, "netns", b.name(), "name", b_if]));
    if let Err(e) = moved {
        let _ = ip(&["link", "delete", &tmp_a]);
        let _ = ip(&["link", "delete", &tmp_b]);
        return Err(e);
    }
    for (ns, ifname) in [(a, a_if), (b, b_if)] {
        ns.ip(&["link", "set", ifname, "up"])?;
    }
    // After both ends are up: veth recomputes its peer's XDP transmit capability when GRO
    // changes on a running device, not when a device with GRO already on comes up (seen
    // on 6.18: frames redirected into a peer configured the other way round are dropped).
    for (ns, ifname) in [(a, a_if), (b, b_if)] {
        ns.exec(
            "ethtool",
            &["-K", ifname, "tx", "off", "rx", "off", "gro", "on"],
        )?;
    }
    Ok(())
}

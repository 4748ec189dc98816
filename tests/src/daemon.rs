//! `balancer daemon` as a test runs it: a configuration for a [`Topology`], the daemon
//! process in the gateway's namespace with its own control-socket directory and log
//! file, and cleanup (SIGTERM, then SIGKILL; the files removed) when the guard drops,
//! also when a test panics.

use std::{
    fmt::Write as _,
    fs,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{
    netns,
    topology::{service_arg, Topology, BPFFS_ROOT},
};

/// Settings of [`daemon_config`].
#[derive(Clone, Debug)]
pub struct ConfigOptions {
    pub cookie: bool,
    /// Health-check interval and fall/rise counts.
    pub health_interval: &'static str,
    pub health_timeout: &'static str,
    pub rise: u32,
    pub fall: u32,
    /// `"tcp"` or `"http"` (GET /health).
    pub health_kind: &'static str,
    pub hold_down: &'static str,
    pub pair_sample: u32,
    /// Configured replication pairs: (primary name, secondary name).
    pub pairs: Vec<(String, String)>,
    /// Backends (by index) left out of the configuration.
    pub without: Vec<usize>,
    /// Extra TOML appended (e.g. a `[group]` section).
    pub extra: String,
}

impl Default for ConfigOptions {
    fn default() -> Self {
        ConfigOptions {
            cookie: true,
            health_interval: "200ms",
            health_timeout: "100ms",
            rise: 2,
            fall: 2,
            health_kind: "http",
            hold_down: "2s",
            pair_sample: 1,
            pairs: Vec::new(),
            without: Vec::new(),
            extra: String::new(),
        }
    }
}

/// A daemon configuration for `t`: its instance and interfaces, one service at the
/// topology's VIP with every backend (server id = backend name in cookie mode).
pub fn daemon_config(t: &Topology, o: &ConfigOptions) -> String {
    let mut s = daemon_section(
        t,
        &format!(
            "failover_hold_down = \"{}\"\npair_sample = {}",
            o.hold_down, o.pair_sample
        ),
    );
    let _ = writeln!(
        s,
        "[health]\nkind = \"{}\"\npath = \"/health\"\ninterval = \"{}\"\ntimeout = \"{}\"\nrise = {}\nfall = {}\n",
        o.health_kind, o.health_interval, o.health_timeout, o.rise, o.fall
    );
    s.push_str(&service_section(t, o));
    s.push_str(&o.extra);
    s
}

/// The `[daemon]` section for `t` (its instance and interfaces) with `extra` keys.
pub fn daemon_section(t: &Topology, extra: &str) -> String {
    let ifaces: Vec<String> = t
        .gateway_ifaces
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect();
    format!(
        "[daemon]\ninstance = \"{}\"\ninterfaces = [{}]\n{extra}\n\n",
        t.instance(),
        ifaces.join(", ")
    )
}

/// The service at the topology's VIP with `t`'s backends as `o` says (mode, pairs,
/// backends left out).
pub fn service_section(t: &Topology, o: &ConfigOptions) -> String {
    let mut s = format!(
        "[[service]]\naddress = \"{}\"\nmode = \"{}\"\n\n",
        service_arg(),
        if o.cookie { "cookie" } else { "nat" }
    );
    for (i, b) in t.backends.iter().enumerate() {
        if o.without.contains(&i) {
            continue;
        }
        let _ = writeln!(s, "  [[service.backend]]\n  address = \"{}\"", b.endpoint());
        if o.cookie {
            let _ = writeln!(s, "  server_id = \"{}\"", b.name);
            if let Some((_, sec)) = o.pairs.iter().find(|(p, _)| *p == b.name) {
                let _ = writeln!(s, "  secondary = \"{sec}\"");
            }
        }
        s.push('\n');
    }
    s
}

/// A running `balancer daemon`.
pub struct Daemon {
    child: Option<Child>,
    /// Holds the configuration, the control socket directory and the log.
    pub dir: PathBuf,
    pub config: PathBuf,
    balancer_bin: PathBuf,
    gateway_ns: String,
    instance: String,
}

impl Daemon {
    /// Writes `config` and starts the daemon in `t`'s gateway namespace; returns once
    /// its control socket answers.
    pub fn start(t: &mut Topology, config: &str) -> Result<Daemon> {
        let mut d = Daemon::new(t)?;
        d.write_config(config)?;
        d.spawn()?;
        Ok(d)
    }

    /// A daemon for `t` that does not run yet: its directory exists, so files its
    /// configuration names (group keys) can be written there first; then
    /// [`Daemon::write_config`] and [`Daemon::spawn`].
    pub fn new(t: &mut Topology) -> Result<Daemon> {
        let dir = std::env::temp_dir().join(netns::unique_name("lbd"));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // The daemon attaches: the topology must detach when it goes.
        t.will_be_attached();
        Ok(Daemon {
            child: None,
            config: dir.join("balancer.toml"),
            dir,
            balancer_bin: t.balancer_bin().to_path_buf(),
            gateway_ns: t.gateway.name().to_string(),
            instance: t.instance().to_string(),
        })
    }

    pub fn write_config(&self, config: &str) -> Result<()> {
        fs::write(&self.config, config)
            .with_context(|| format!("writing {}", self.config.display()))
    }

    /// Writes `name` in the daemon's directory with the given mode (e.g. a group key
    /// file, 0600) and returns its path.
    pub fn write_file(&self, name: &str, contents: &str, mode: u32) -> Result<PathBuf> {
        let path = self.dir.join(name);
        write_with_mode(&path, contents.as_bytes(), mode)?;
        Ok(path)
    }

    /// Path of the daemon's control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.run_dir().join(format!("{}.sock", self.instance))
    }

    /// Process id of the running daemon.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Length of the log so far, to read what a later run wrote ([`Daemon::log_since`]).
    pub fn log_len(&self) -> usize {
        self.log().len()
    }

    /// The log from byte `offset` on.
    pub fn log_since(&self, offset: usize) -> String {
        self.log().get(offset..).unwrap_or_default().to_string()
    }

    /// What the CLI shows of the pinned state, without what changes by itself (health
    /// check counters and times, traffic): `service list`, `backend list` (health
    /// reduced to up/down) and `status`. Two dumps are equal when the daemon changed
    /// nothing in between.
    pub fn state_dump(&self) -> Result<Value> {
        let services = self.ctl_json(&["service", "list"])?;
        let mut backends = self.ctl_json(&["backend", "list"])?;
        for b in backends.as_array_mut().into_iter().flatten() {
            if let Some(h) = b.get_mut("health").and_then(Value::as_object_mut) {
                h.retain(|k, _| k == "health");
            }
        }
        let status = self.ctl_json(&["status"])?;
        Ok(serde_json::json!({
            "services": services,
            "backends": backends,
            "status": status,
        }))
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    /// The daemon's log so far (all its runs).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the daemon process (again, after [`Daemon::stop`]) and waits for it.
    pub fn spawn(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("the daemon runs already");
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.gateway_ns))
            .arg(&self.balancer_bin)
            .arg("--bpffs-root")
            .arg(BPFFS_ROOT)
            .arg("--run-dir")
            .arg(self.run_dir())
            .arg("daemon")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        self.child = Some(cmd.spawn().context("starting balancer daemon")?);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!(
                    "the daemon exited ({status}) before it was ready:\n{}",
                    self.log()
                );
            }
            if self.ctl(&["pairs", "--json"])?.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the daemon is not ready after 20 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the daemon process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: libc::c_int) -> Result<()> {
        let child = self.child.as_ref().context("the daemon does not run")?;
        // SAFETY: plain kill(2) on our child's pid.
        if unsafe { libc::kill(child.id() as i32, sig) } != 0 {
            bail!("kill: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops the daemon with SIGTERM and waits for it.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the daemon did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kills the daemon with SIGKILL (no chance to clean up) and waits for it.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// The CLI for this daemon's instance and control socket, in the gateway namespace.
    pub fn ctl(&self, args: &[&str]) -> Result<Output> {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.gateway_ns))
            .arg(&self.balancer_bin)
            .arg("--instance")
            .arg(&self.instance)
            .arg("--bpffs-root")
            .arg(BPFFS_ROOT)
            .arg("--run-dir")
            .arg(self.run_dir())
            .args(args)
            .output()
            .context("running balancer")
    }

    /// [`Daemon::ctl`] with `--json`, parsed; fails with stderr on a non-zero exit.
    pub fn ctl_json(&self, args: &[&str]) -> Result<Value> {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.ctl(&all)?;
        if !out.status.success() {
            bail!(
                "balancer {} failed: {}",
                all.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).context("parsing the CLI's JSON")
    }

    /// Polls `f` every 50 ms until it returns `Some`, or fails after `timeout` with the
    /// daemon's log.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Result<Option<T>>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f()? {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!(
                    "{what}: not within {timeout:?}; daemon log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `backend list --json` as (backend name -> entry), names from the topology.
    pub fn backends(&self) -> Result<Vec<Value>> {
        let v = self.ctl_json(&["backend", "list"])?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("daemon: {e:#}");
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The entry of `backend list --json` for `endpoint`.
pub fn backend_entry<'a>(list: &'a [Value], endpoint: &str) -> Option<&'a Value> {
    list.iter().find(|b| b["backend"] == endpoint)
}

/// A background process of a test (e.g. `balancer agent` in a backend's namespace), with
/// its output in a log file; killed (SIGKILL) when the guard drops, also on panic.
pub struct Background {
    child: Option<Child>,
    log: PathBuf,
}

impl Background {
    /// Spawns `cmd` with stdin closed and stdout and stderr appended to `log`.
    pub fn spawn(mut cmd: Command, log: &Path) -> Result<Background> {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        Ok(Background {
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills it (SIGKILL) and waits for it.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Two server-ID tokens of equal length whose data-plane hashes are equal: the token
/// hash mixes 8-byte words with `h = f((h ^ w) * MUL)`, so with the first words chosen,
/// a second word `b1 = hA ^ hB ^ a1` makes both inputs of the last round equal. Searched
/// for a `b1` of letters and digits (about 1 in 80 000 candidates).
pub fn colliding_tokens() -> (String, String) {
    const SEED: u64 = 0x243f_6a88_85a3_08d3;
    const MUL: u64 = 0x9e37_79b9_7f4a_7c15;
    let word = |h: u64, w: &[u8]| {
        let h = (h ^ u64::from_le_bytes(w.try_into().unwrap())).wrapping_mul(MUL);
        h ^ (h >> 29)
    };
    let start = SEED ^ 16u64.wrapping_mul(MUL);
    let (a0, a1) = (b"collideA", b"suffix00");
    let ha = word(start, a0);
    const ALNUM: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    for n in 0u64.. {
        let mut b0 = *b"collideB";
        let mut k = n;
        for b in b0[..7].iter_mut().rev() {
            *b = ALNUM[(k % 62) as usize];
            k /= 62;
        }
        let hb = word(start, &b0);
        let b1 = (ha ^ hb ^ u64::from_le_bytes(*a1)).to_le_bytes();
        if b1.iter().all(|c| c.is_ascii_alphanumeric()) {
            let a = format!(
                "{}{}",
                std::str::from_utf8(a0).unwrap(),
                std::str::from_utf8(a1).unwrap()
            );
            let b = format!(
                "{}{}",
                std::str::from_utf8(&b0).unwrap(),
                std::str::from_utf8(&b1).unwrap()
            );
            let hash = balancer_common::cookie::token_hash;
            assert_eq!(hash(a.as_bytes()), hash(b.as_bytes()), "{a} {b}");
            assert_ne!(a, b);
            return (a, b);
        }
    }
    unreachable!()
}

/// Writes a new file at `path` (replacing one there) with exactly `mode`: key files and
/// configurations whose permissions the daemon checks.
pub fn write_with_mode(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents)?;
    // The umask may have taken bits off at creation.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// `text` (a configuration file) with the first `from` replaced by `to`; panics unless
/// `from` is there, so a test never runs a file that lacks the edit it meant.
pub fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} is not in\n{text}");
    text.replacen(from, to, 1)
}

//! HAProxy (Debian's `haproxy` package) as the comparison balancer: a configuration that
//! routes on the same cookie segments as the balancer's cookie mode, and the process in
//! a topology's gateway namespace, stopped (and its listening address removed) when the
//! guard drops, also when a test panics.
//!
//! The configuration ([`HaproxyConfig::render`]): `mode http`, one frontend on the given
//! address, one backend with the app servers and, for each server,
//! `use-server NAME if { req.cook(JSESSIONID),field(2,!) -m str NAME }` (the primary
//! named in the WebLogic-style cookie `session!primary!secondary`), then the same rules on
//! `field(3,!)` (the secondary): HAProxy skips a `use-server` rule whose server is down, so
//! a dead primary's sessions go to their secondary once its health check marks it down.
//! Requests without a usable cookie are balanced round robin. Health checks use the same
//! settings as the balancer daemon's ([`HealthConfig`]: interval, timeout, rise, fall, TCP
//! or HTTP). Nothing is logged per request; server state changes go to stderr (which the
//! guard keeps, with the time each line was read).

use std::{
    fmt::Write as _,
    io::{BufRead, BufReader},
    net::{IpAddr, SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use balancer_user::daemon::config::{HealthConfig, HealthKind};

use crate::netns::{self, Netns};

/// Cookie HAProxy routes on (the balancer's cookie mode default).
pub const COOKIE_NAME: &str = "JSESSIONID";

/// HAProxy's `maxconn` (it needs about twice as many file descriptors, within the usual
/// limit of 20,000; the benchmark uses far fewer connections).
pub const MAXCONN: usize = 8000;

/// What [`HaproxyConfig::render`] writes.
#[derive(Clone, Debug)]
pub struct HaproxyConfig {
    /// Where the frontend listens (an address of the gateway namespace; [`Haproxy::start`]
    /// adds it to `lo` if the namespace does not have it).
    pub listen: SocketAddr,
    /// The app servers: (name as written in the cookie, address).
    pub servers: Vec<(String, SocketAddr)>,
    /// Health checks, as the balancer daemon's `[health]` section says.
    pub health: HealthConfig,
    /// `nbthread`: HAProxy's worker threads (the number of CPUs is what one would run).
    pub threads: usize,
    /// `timeout connect` for connections to the servers.
    pub connect_timeout: Duration,
    /// `retries`: further connection attempts to the same server after one failed, each
    /// after a turn-around delay of min(`timeout connect`, 1 s). `None`: HAProxy's default (3).
    pub retries: Option<u32>,
}

impl HaproxyConfig {
    /// The cookie-routing configuration for these servers with the daemon's default
    /// health checks, one thread per CPU, `timeout connect 5s` and default retries.
    pub fn new(listen: SocketAddr, servers: Vec<(String, SocketAddr)>) -> HaproxyConfig {
        HaproxyConfig {
            listen,
            servers,
            health: HealthConfig::default(),
            threads: cpus(),
            connect_timeout: Duration::from_secs(5),
            retries: None,
        }
    }

    /// The configuration file's text.
    pub fn render(&self) -> String {
        let ms = |d: Duration| d.as_millis().max(1);
        let h = &self.health;
        let mut s = String::new();
        let _ = writeln!(s, "global");
        let _ = writeln!(s, "    nbthread {}", self.threads.max(1));
        let _ = writeln!(s, "    maxconn {MAXCONN}");
        let _ = writeln!(s, "    # no `log` line: nothing is logged per request");
        let _ = writeln!(s);
        let _ = writeln!(s, "defaults");
        let _ = writeln!(s, "    mode http");
        let _ = writeln!(s, "    option http-keep-alive");
        let _ = writeln!(s, "    timeout connect {}ms", ms(self.connect_timeout));
        let _ = writeln!(s, "    timeout client 30s");
        let _ = writeln!(s, "    timeout server 30s");
        let _ = writeln!(s, "    timeout http-keep-alive 30s");
        let _ = writeln!(s, "    timeout check {}ms", ms(h.timeout));
        if let Some(r) = self.retries {
            let _ = writeln!(s, "    retries {r}");
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "frontend fe");
        let _ = writeln!(s, "    bind {}", self.listen);
        let _ = writeln!(s, "    maxconn {MAXCONN}");
        let _ = writeln!(s, "    default_backend app");
        let _ = writeln!(s);
        let _ = writeln!(s, "backend app");
        let _ = writeln!(s, "    balance roundrobin");
        if let HealthKind::Http = h.kind {
            let _ = writeln!(s, "    option httpchk GET {}", h.path);
            if let Some(host) = &h.host {
                let _ = writeln!(s, "    http-check send hdr Host {host}");
            }
            let _ = writeln!(s, "    http-check expect status {}", h.expect_status);
        }
        for field in [2, 3] {
            for (name, _) in &self.servers {
                let _ = writeln!(
                    s,
                    "    use-server {name} if {{ req.cook({COOKIE_NAME}),field({field},!) -m str {name} }}"
                );
            }
        }
        for (name, addr) in &self.servers {
            let _ = writeln!(
                s,
                "    server {name} {addr} check inter {} fall {} rise {}",
                ms(h.interval),
                h.fall,
                h.rise
            );
        }
        s
    }
}

/// Online CPUs (at least 1).
pub fn cpus() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// The `haproxy` binary: `$HAPROXY_BIN` if set, else `haproxy` on the PATH or in
/// /usr/sbin (Debian's package).
pub fn haproxy_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("HAPROXY_BIN") {
        return Ok(PathBuf::from(p));
    }
    find_program("haproxy").context("haproxy is not installed (`cargo xtask setup` installs it)")
}

/// A program on the PATH or in /usr/sbin, /usr/bin.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// One line HAProxy wrote to stderr, with when it was read.
#[derive(Clone, Debug)]
pub struct LogLine {
    pub at: Instant,
    pub text: String,
}

/// A running HAProxy in a namespace.
pub struct Haproxy {
    child: Child,
    pub config: HaproxyConfig,
    /// The configuration file's text, as run.
    pub text: String,
    dir: PathBuf,
    ns_path: String,
    ns_name: String,
    /// The listening address was added by [`Haproxy::start`] (removed again on drop).
    added_addr: Option<IpAddr>,
    log: Arc<Mutex<Vec<LogLine>>>,
}

impl Haproxy {
    /// Writes the configuration to a fresh directory, adds the listening address to `lo`
    /// in `ns` if it is not there, starts `haproxy -db -f <file>` there (checking the
    /// configuration first) and waits until it accepts connections.
    pub fn start(ns: &Netns, config: &HaproxyConfig) -> Result<Haproxy> {
        let bin = haproxy_bin()?;
        let dir = std::env::temp_dir().join(netns::unique_name("lbhaproxy"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let text = config.render();
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, &text).with_context(|| format!("writing {}", cfg.display()))?;
        // `haproxy -c`: the configuration is valid.
        let check = ns
            .command(&bin.to_string_lossy())
            .args(["-c", "-q", "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {} -c", bin.display()))?;
        if !check.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            bail!(
                "haproxy rejects the configuration ({}): {}\n{text}",
                check.status,
                String::from_utf8_lossy(&check.stderr).trim(),
            );
        }
        let ip = config.listen.ip();
        let has = ns.ip(&["-o", "addr", "show"])?;
        let added_addr = if String::from_utf8_lossy(&has.stdout).contains(&format!(" {ip}/")) {
            None
        } else {
            ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"])?;
            Some(ip)
        };
        let mut cmd = ns.command(&bin.to_string_lossy());
        cmd.args(["-db", "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Own process group: stopped as a group, and a Ctrl-C at the terminal does not
        // reach it before the harness tears down in order.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let spawned = cmd.spawn();
        let mut h = Haproxy {
            child: match spawned {
                Ok(c) => c,
                Err(e) => {
                    if let Some(ip) = added_addr {
                        let _ = ns.ip(&["addr", "del", &format!("{ip}/32"), "dev", "lo"]);
                    }
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e).with_context(|| format!("starting {}", bin.display()));
                }
            },
            config: config.clone(),
            text,
            dir,
            ns_path: ns.path(),
            ns_name: ns.name().to_string(),
            added_addr,
            log: Arc::new(Mutex::new(Vec::new())),
        };
        let stderr = h.child.stderr.take().expect("piped");
        let log = h.log.clone();
        thread::Builder::new()
            .name("haproxy-log".into())
            .spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(text) = line else { break };
                    if let Ok(mut l) = log.lock() {
                        l.push(LogLine {
                            at: Instant::now(),
                            text,
                        });
                    }
                }
            })
            .context("starting the log reader")?;
        h.wait_listening(ns, Duration::from_secs(10))?;
        Ok(h)
    }

    fn wait_listening(&mut self, ns: &Netns, timeout: Duration) -> Result<()> {
        let addr = self.config.listen;
        let deadline = Instant::now() + timeout;
        loop {
            let ok = ns.run(move || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })?;
            if ok {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "haproxy exited ({status}) before listening on {addr}: {}",
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!("haproxy does not listen on {addr} after {timeout:?}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// User + system CPU time of the process (all its threads) so far, from
    /// `/proc/<pid>/stat`.
    pub fn cpu_time(&self) -> Result<Duration> {
        process_cpu_time(self.pid())
    }

    /// Everything HAProxy wrote to stderr so far, with when each line was read.
    pub fn log(&self) -> Vec<LogLine> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The stderr lines as text.
    pub fn log_text(&self) -> String {
        self.log()
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// When HAProxy reported server `name` DOWN, the first time after `since`.
    pub fn server_down_at(&self, name: &str, since: Instant) -> Option<Instant> {
        let needle = format!("/{name} is DOWN");
        self.log()
            .into_iter()
            .find(|l| l.at >= since && l.text.contains(&needle))
            .map(|l| l.at)
    }

    /// Stops HAProxy (SIGTERM to its process group, SIGKILL after 2 s).
    pub fn stop(&mut self) {
        stop_group(&mut self.child);
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.stop();
        if let Some(ip) = self.added_addr.take() {
            // The namespace may be gone already (then so is the address).
            if std::path::Path::new(&self.ns_path).exists() {
                let _ = netns::ip(&[
                    "-n",
                    &self.ns_name,
                    "addr",
                    "del",
                    &format!("{ip}/32"),
                    "dev",
                    "lo",
                ]);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SIGTERM to the child's process group (it was started as a group leader), a wait of
/// up to 2 s, then SIGKILL to the group; reaps the child.
pub fn stop_group(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let pgid = child.id() as libc::pid_t;
    // SAFETY: kill(2) on the group this child leads.
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    // Whatever is left of the group (workers of a master that exited, or the master).
    // SAFETY: as above.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
}

/// User + system time of process `pid` (every thread) from `/proc/<pid>/stat`.
pub fn process_cpu_time(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) is in parentheses and may contain spaces: fields after
    // the last ')' start at field 3 (state).
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after the state.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .context("short stat")?
            .parse::<u64>()
            .context("stat field")
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_secs_f64(total as f64 / clock_ticks()))
}

/// Clock ticks per second (`_SC_CLK_TCK`).
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_routes_on_both_cookie_segments_and_checks_like_the_daemon() {
        let servers = vec![
            ("be1".to_string(), "198.18.1.10:8080".parse().unwrap()),
            ("be2".to_string(), "198.18.1.11:8080".parse().unwrap()),
        ];
        let mut c = HaproxyConfig::new("198.18.100.1:80".parse().unwrap(), servers);
        c.threads = 2;
        c.retries = Some(0);
        let text = c.render();
        let primary = text
            .find("use-server be1 if { req.cook(JSESSIONID),field(2,!) -m str be1 }")
            .expect(&text);
        let secondary = text
            .find("use-server be2 if { req.cook(JSESSIONID),field(3,!) -m str be2 }")
            .expect(&text);
        assert!(primary < secondary, "{text}");
        assert!(text.contains("server be2 198.18.1.11:8080 check inter 250 fall 2 rise 2"));
        assert!(text.contains("timeout check 200ms"), "{text}");
        assert!(text.contains("nbthread 2"), "{text}");
        assert!(text.contains("retries 0"), "{text}");
        assert!(!text.contains("httpchk"), "{text}");
        assert!(!text.contains("\n    log "), "{text}");
    }

    #[test]
    fn stat_of_this_process_parses() {
        let t = process_cpu_time(std::process::id()).unwrap();
        assert!(t < Duration::from_secs(100_000));
    }
}

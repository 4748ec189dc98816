//! The daemon's status page in a real browser: headless Chromium (Debian's `chromium`,
//! installed by `cargo xtask setup`) in the gateway namespace loads `/`, shows the
//! backends and their states, takes a screenshot, and shows a backend killed in the
//! topology as down within seconds, by its own polling (the page is never reloaded).
//!
//! Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
//! JSON messages ending in a NUL byte, commands on fd 3, answers on fd 4), which needs
//! no WebSocket client and no port.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    os::{fd::FromRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::mpsc::{self, Receiver},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use balancer_tests::{
    daemon::ConfigOptions,
    http,
    session::try_request,
    topology::{vip, Topology},
};
use serde_json::{json, Value};

const PAGE: &str = "http://127.0.0.1:9469/";

/// Chromium's standard error, in its profile directory.
const LOG: &str = "chromium.log";

/// A headless Chromium and its DevTools pipe; killed (its whole process group) on drop.
struct Browser {
    child: Child,
    commands: File,
    answers: Receiver<Value>,
    next_id: u64,
    profile: PathBuf,
}

impl Browser {
    /// Starts Chromium in the gateway namespace with an empty page.
    fn start(t: &Topology, profile: PathBuf) -> Result<Browser> {
        let (to_chrome_read, to_chrome_write) = pipe()?;
        let (from_chrome_read, from_chrome_write) = pipe()?;
        // Its temporary files (it leaves some when killed) go in the profile, which the
        // test removes.
        std::fs::create_dir_all(&profile)?;
        let mut cmd = t.gateway.command("chromium");
        cmd.env("TMPDIR", &profile);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            // No connections of its own: this machine's network is closed to them.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--remote-debugging-pipe",
            "--window-size=1700,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(profile.join(LOG))?)
        .process_group(0);
        // SAFETY: only async-signal-safe fcntl and dup2 between fork and exec. The ends
        // are first copied above fd 10 (close-on-exec), so neither can already be 3 or 4:
        // dup2 onto itself would keep close-on-exec, and one end could overwrite the
        // other. dup2 leaves 3 and 4 without close-on-exec, so Chromium inherits them.
        unsafe {
            cmd.pre_exec(move || {
                let read = libc::fcntl(to_chrome_read, libc::F_DUPFD_CLOEXEC, 10);
                let write = libc::fcntl(from_chrome_write, libc::F_DUPFD_CLOEXEC, 10);
                if read < 0 || write < 0 || libc::dup2(read, 3) < 0 || libc::dup2(write, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .context("starting chromium (cargo xtask setup installs it)")?;
        // SAFETY: the fds are ours, from pipe2, each owned by exactly one File.
        let (commands, answers_file) = unsafe {
            libc::close(to_chrome_read);
            libc::close(from_chrome_write);
            (
                File::from_raw_fd(to_chrome_write),
                File::from_raw_fd(from_chrome_read),
            )
        };
        let (tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(answers_file);
            let mut message = Vec::new();
            while matches!(reader.read_until(0, &mut message), Ok(n) if n > 0) {
                message.pop(); // the NUL
                if let Ok(v) = serde_json::from_slice::<Value>(&message) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
                message.clear();
            }
        });
        Ok(Browser {
            child,
            commands,
            answers,
            next_id: 1,
            profile,
        })
    }

    /// Sends a command (to the page's session when given) and returns its result,
    /// skipping the events in between.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            message["sessionId"] = s.into();
        }
        let mut bytes = serde_json::to_vec(&message)?;
        bytes.push(0);
        if let Err(e) = self.commands.write_all(&bytes) {
            bail!("sending {method} to chromium: {e}; {}", self.exit_report());
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = self
                .answers
                .recv_timeout(left)
                .map_err(|_| anyhow::anyhow!("no answer to {method}; {}", self.exit_report()))?;
            if answer["id"] == id {
                if let Some(e) = answer.get("error") {
                    bail!("{method}: {e}");
                }
                return Ok(answer["result"].clone());
            }
        }
    }

    /// How Chromium ended (if it has) and the end of what it printed.
    fn exit_report(&mut self) -> String {
        let status = match self.child.try_wait() {
            Ok(Some(status)) => format!("chromium exited: {status}"),
            _ => "chromium still runs".to_string(),
        };
        let log = std::fs::read_to_string(self.profile.join(LOG)).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("{status}; its last output:\n{}", tail.join("\n"))
    }

    /// Evaluates `expression` in the page; its value (JSON-serializable).
    fn eval(&mut self, session: &str, expression: &str) -> Result<Value> {
        let r = self.call(
            Some(session),
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("{expression}: {e}");
        }
        Ok(r["result"]["value"].clone())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closed politely first, so it removes its own temporary files.
        let _ = self
            .commands
            .write_all(b"{\"id\":0,\"method\":\"Browser.close\"}\0");
        let closing = Instant::now();
        while closing.elapsed() < Duration::from_secs(3) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The browser and its helpers (renderer, zygote) share its process group.
        // SAFETY: signalling the group of the child this test started.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// A pipe whose ends close on exec (the child gets its copies through dup2).
fn pipe() -> Result<(i32, i32)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe2: {}", std::io::Error::last_os_error());
    }
    Ok((fds[0], fds[1]))
}

/// The backends table as the page shows it: (backend, state, health) per row.
const ROWS: &str = "JSON.stringify([...document.querySelectorAll('#backends tbody tr')]
    .map(r => [r.dataset.backend, r.dataset.state, r.dataset.health]))";

/// The sum of the Conn/s column (the 9th), as the page writes it ("12.5", "1.2k").
const CONNECTION_RATES: &str =
    "[...document.querySelectorAll('#backends tbody tr td:nth-child(9)')]
    .map(td => parseFloat(td.textContent) || 0).reduce((a, b) => a + b, 0)";

/// Lines drawn in the backends' charts (two per backend once two reads are kept).
const CHART_LINES: &str = "document.querySelectorAll('#backends svg.chart polyline').length";

fn rows(b: &mut Browser, session: &str) -> Result<Vec<(String, String, String)>> {
    let text = b.eval(session, ROWS)?;
    Ok(serde_json::from_str(text.as_str().unwrap_or("[]"))?)
}

/// Waits until the page's rows satisfy `ok`; returns them.
fn wait_rows(
    b: &mut Browser,
    session: &str,
    within: Duration,
    what: &str,
    ok: impl Fn(&[(String, String, String)]) -> bool,
) -> Vec<(String, String, String)> {
    let start = Instant::now();
    loop {
        let r = rows(b, session).unwrap();
        if ok(&r) {
            return r;
        }
        assert!(start.elapsed() < within, "{what}: the page shows {r:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Standard base64, as `Page.captureScreenshot` returns the PNG.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &d)| n | (u32::from(d) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[test]
fn status_page_shows_backends_and_follows_a_kill_without_reload() {
    let (mut t, d) = crate::daemon::setup(&ConfigOptions::default());
    let endpoints: Vec<String> = t.backends.iter().map(|b| b.endpoint()).collect();

    let profile = std::env::temp_dir().join(format!("balancer-chromium-{}", t.instance()));
    let mut b = Browser::start(&t, profile).expect("starting chromium");
    let target = b
        .call(None, "Target.createTarget", json!({ "url": PAGE }))
        .unwrap();
    let session = b
        .call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        )
        .unwrap()["sessionId"]
        .as_str()
        .unwrap()
        .to_string();

    // Every backend shown, up and healthy.
    let shown = wait_rows(&mut b, &session, Duration::from_secs(15), "all up", |r| {
        r.len() == endpoints.len() && r.iter().all(|(_, s, h)| s == "up" && h == "up")
    });
    let mut shown_endpoints: Vec<&String> = shown.iter().map(|(e, _, _)| e).collect();
    shown_endpoints.sort();
    let mut expected: Vec<&String> = endpoints.iter().collect();
    expected.sort();
    assert_eq!(shown_endpoints, expected);
    let services = b
        .eval(
            &session,
            "document.querySelectorAll('#services tbody tr').length",
        )
        .unwrap();
    assert_eq!(services, 1);

    // Live rates: traffic through the VIP shows as new connections/s on the page, and
    // the charts draw.
    let traffic_until = Instant::now() + Duration::from_secs(3);
    t.client
        .run(move || {
            while Instant::now() < traffic_until {
                let _ = try_request(vip(), None, None);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .unwrap();
    let start = Instant::now();
    loop {
        let rate = b.eval(&session, CONNECTION_RATES).unwrap();
        let charts = b.eval(&session, CHART_LINES).unwrap();
        if rate.as_f64().is_some_and(|r| r > 0.0) && charts.as_u64() >= Some(2) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no connection rate or chart shown: {rate}, {charts} lines"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A screenshot, kept under target/ for a look.
    let shot = b
        .call(
            Some(&session),
            "Page.captureScreenshot",
            json!({ "format": "png" }),
        )
        .unwrap();
    let png = base64_decode(shot["data"].as_str().unwrap());
    assert!(
        png.len() > 1000 && png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} bytes",
        png.len()
    );
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("status page screenshot: {}", path.display());

    // A mark in the page's global scope: gone if the page were reloaded.
    b.eval(&session, "window.balancerTestMark = 42").unwrap();
    let polls_before = b
        .eval(
            &session,
            "Number(document.getElementById('updated').dataset.polls)",
        )
        .unwrap();

    t.stop_server(0).unwrap();
    let killed = Instant::now();
    let victim = endpoints[0].clone();
    wait_rows(
        &mut b,
        &session,
        Duration::from_secs(8),
        "victim down",
        |r| {
            r.iter()
                .any(|(e, s, h)| *e == victim && s == "down" && h == "down")
        },
    );
    eprintln!(
        "status page: {victim} shown down {:?} after the kill",
        killed.elapsed()
    );
    let others = rows(&mut b, &session).unwrap();
    assert!(
        others
            .iter()
            .filter(|(e, _, _)| *e != victim)
            .all(|(_, s, _)| s == "up"),
        "{others:?}"
    );
    assert_eq!(
        b.eval(&session, "window.balancerTestMark").unwrap(),
        42,
        "page reloaded"
    );
    let polls_after = b
        .eval(
            &session,
            "Number(document.getElementById('updated').dataset.polls)",
        )
        .unwrap();
    assert!(
        polls_after.as_u64() > polls_before.as_u64(),
        "{polls_before} -> {polls_after}"
    );
    // The transition is listed.
    let transitions = b
        .eval(
            &session,
            "document.getElementById('transitions').textContent",
        )
        .unwrap();
    let transitions = transitions.as_str().unwrap();
    assert!(
        transitions.contains(&victim) && transitions.contains("up → down"),
        "{transitions}\n{}",
        d.log()
    );
    drop(b);

    // The JSON the page polls, as scripts read it.
    let addr: std::net::SocketAddr = "127.0.0.1:9469".parse().unwrap();
    let r = t
        .gateway
        .run(move || http::get(addr, "/status.json"))
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let status: Value = serde_json::from_str(&r.text()).unwrap();
    let victim_entry = status["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["backend"] == victim.as_str())
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(victim_entry["state"], "down", "{victim_entry}");
    assert_eq!(victim_entry["health"], "down", "{victim_entry}");
    for key in ["weight", "share", "rates", "totals", "chart"] {
        assert!(victim_entry.get(key).is_some(), "{key}: {victim_entry}");
    }
    assert!(status["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["backend"] == victim.as_str() && e["to"] == "down"));
}

//! The nginx backends and their stub_status counters.

use super::*;

/// nginx `stub_status` counters of one backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NginxStatus {
    pub accepts: u64,
    pub requests: u64,
}

/// Parses nginx's `stub_status` page.
pub fn parse_stub_status(text: &str) -> Result<NginxStatus> {
    // Active connections: 1
    // server accepts handled requests
    //  16 16 31
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if l.trim_start()
            .starts_with("server accepts handled requests")
        {
            let nums: Vec<u64> = lines
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
            ensure!(nums.len() == 3, "stub_status counters: {text}");
            return Ok(NginxStatus {
                accepts: nums[0],
                requests: nums[2],
            });
        }
    }
    bail!("not a stub_status page: {text}")
}

/// nginx on every backend of a topology, killed (and its files removed) on drop.
pub struct NginxBackends {
    children: Vec<Child>,
    dir: PathBuf,
    /// The configuration of backend 0 (the others differ by name and address).
    pub config_text: String,
    /// Each backend's namespace path and nginx address.
    addrs: Vec<(String, SocketAddr)>,
}

/// nginx's configuration for a backend named `name` at `addr`.
pub fn nginx_config(dir: &Path, name: &str, addr: SocketAddr, workers: usize) -> String {
    let d = dir.display();
    format!(
        "daemon off;
master_process on;
worker_processes {workers};
pid {d}/{name}.pid;
error_log stderr error;
events {{ worker_connections 65536; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 60s;
    client_body_temp_path {d}/{name}-body;
    proxy_temp_path {d}/{name}-proxy;
    fastcgi_temp_path {d}/{name}-fastcgi;
    uwsgi_temp_path {d}/{name}-uwsgi;
    scgi_temp_path {d}/{name}-scgi;
    server {{
        listen {addr} reuseport backlog=4096;
        location = {STATUS_PATH} {{ stub_status; }}
        location / {{
            add_header X-Backend {name} always;
            return 200 \"{name}\\n\";
        }}
    }}
}}
"
    )
}

impl NginxBackends {
    /// Starts nginx (`worker_processes` = CPUs) on every backend of `t`, listening on
    /// `addr:BACKEND_PORT`, and waits until each answers its status page.
    pub fn start(t: &Topology) -> Result<NginxBackends> {
        let bin = haproxy::find_program("nginx")
            .context("nginx is not installed (`cargo xtask setup` installs it)")?;
        let dir = std::env::temp_dir().join(netns::unique_name("lbnginx"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut n = NginxBackends {
            children: Vec::new(),
            dir: dir.clone(),
            config_text: String::new(),
            addrs: Vec::new(),
        };
        for b in &t.backends {
            let text = nginx_config(&dir, &b.name, b.socket_addr(), haproxy::cpus());
            if n.config_text.is_empty() {
                n.config_text = text.clone();
            }
            let path = dir.join(format!("{}.conf", b.name));
            std::fs::write(&path, &text)?;
            let mut cmd = b.ns.command(&bin.to_string_lossy());
            cmd.arg("-c")
                .arg(&path)
                .arg("-e")
                .arg("stderr")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            let child = cmd
                .spawn()
                .with_context(|| format!("starting nginx in {}", b.ns.name()))?;
            n.children.push(child);
            n.addrs.push((b.ns.path(), b.socket_addr()));
        }
        for i in 0..n.addrs.len() {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if n.status(i).is_ok() {
                    break;
                }
                if let Some(st) = n.children[i].try_wait()? {
                    bail!("nginx of backend {i} exited ({st})");
                }
                if Instant::now() > deadline {
                    bail!("nginx of backend {i} does not answer after 10 s");
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(n)
    }

    /// The status counters of backend `i` (read from inside its namespace).
    pub fn status(&self, i: usize) -> Result<NginxStatus> {
        let (ns, addr) = self.addrs[i].clone();
        let r = in_ns(&ns, move || http::get(addr, STATUS_PATH))??;
        ensure!(r.status == 200, "status page: {}", r.status);
        parse_stub_status(&r.text())
    }

    /// Every backend's counters.
    pub fn statuses(&self) -> Result<Vec<NginxStatus>> {
        (0..self.addrs.len()).map(|i| self.status(i)).collect()
    }
}

impl Drop for NginxBackends {
    fn drop(&mut self) {
        for c in &mut self.children {
            haproxy::stop_group(c);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

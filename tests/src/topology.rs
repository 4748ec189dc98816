//! Test topologies: a client, the gateway running the balancer, and backends, each in its
//! own network namespace, all in 198.18.0.0/15.
//!
//! Two-arm ([`Topology::two_arm`]):
//! ```text
//! client 198.18.0.2/24 --veth-- [cli0 198.18.0.1/24] gateway [srv0 198.18.1.1/24] --veth--
//!     lan (bridge br0) --veths-- backend i: 198.18.1.(10+i)/24, default via 198.18.1.1
//! ```
//! One-arm ([`Topology::one_arm`]): client, gateway and backends share one bridge; the
//! gateway's single interface `eth0` has 198.18.0.1/24 and 198.18.1.1/24, the client
//! (198.18.0.2/24) reaches the VIPs and backends through 198.18.0.1, the backends
//! (198.18.1.(10+i)/24) answer through 198.18.1.1. Different subnets on one segment keep
//! backends from answering the client directly.
//!
//! Two-arm with a WAN ([`Topology::two_arm_with_wan`]): as two-arm, but the client's link
//! to the gateway passes through a `wan` namespace whose [`impair::Relay`] forwards frames
//! between its interfaces `cli` (to the client) and `gw` (to the gateway's `cli0`), losing
//! and reordering some as its [`Impairment`] says. The relay is an L2 forwarder: addresses
//! and routes are those of two-arm. GRO, GSO, TSO and checksum offload are off on the
//! client's `eth0` and on both wan interfaces, so the relay sees wire-sized frames.
//!
//! In both, the client routes 198.18.0.0/15 (VIPs in 198.18.100.0/24 included) through the
//! gateway, which forwards (`ip_forward=1`, no ICMP redirects). Every veth end has
//! checksum offload off and GRO on (see [`netns::veth`]).
//!
//! The peers of the gateway's interfaces also get a trivial XDP program that returns
//! `XDP_PASS` ([`attach_xdp_pass`]): GRO is enough for frames the balancer *redirects*
//! into a veth, but frames it sends back with `XDP_TX` are queued on the peer and its NAPI
//! is only kicked if the peer has an XDP program (kernel `veth_xdp_flush`); without one
//! they wait until some other packet wakes the peer (seen: SYN-ACKs delayed by a second
//! or more and connections timing out in the one-arm topology).
//!
//! Dropping a `Topology` detaches the balancer instance (removing its pins), kills the
//! test servers, stops the relay (if any) and deletes the namespaces, also when a test
//! panics.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    os::fd::{FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::{
    impair::{Impairment, Relay},
    netns::{self, Netns},
};

/// The service address the tests and the demo use.
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
pub const SERVICE_PORT: u16 = 80;
/// Port the test servers listen on in the backend namespaces.
pub const BACKEND_PORT: u16 = 8080;
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Gateway address on the client side (the client's next hop).
pub const GATEWAY_CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Gateway address on the server side (the backends' default route).
pub const GATEWAY_SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// Bpffs root the `balancer` CLI uses by default.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf/balancer";
/// Most backends a topology can have (addresses 198.18.1.10..).
pub const MAX_BACKENDS: usize = 200;

/// `VIP:SERVICE_PORT`, as a socket address.
pub fn vip() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(VIP, SERVICE_PORT))
}

/// `VIP:SERVICE_PORT` as the CLI takes it.
pub fn service_arg() -> String {
    format!("{VIP}:{SERVICE_PORT}")
}

/// Address of backend `i` (0-based): 198.18.1.(10+i).
pub fn backend_addr(i: usize) -> Ipv4Addr {
    assert!(i < MAX_BACKENDS, "backend index {i} out of range");
    Ipv4Addr::new(198, 18, 1, 10 + i as u8)
}

/// Name of backend `i` (0-based) and of its test server: be1, be2, ...
pub fn backend_name(i: usize) -> String {
    format!("be{}", i + 1)
}

/// The `balancer` binary: `$BALANCER_BIN` if set, else [`built_bin`].
pub fn balancer_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BALANCER_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("BALANCER_BIN={} is not a file", p.display());
        }
        return Ok(p);
    }
    built_bin("balancer").map_err(|e| anyhow!("{e:#}, or set BALANCER_BIN"))
}

/// A binary of this workspace: next to the running executable's directory
/// (`target/<profile>/<name>` for tests in `target/<profile>/deps/`), else in the same
/// directory (binaries in `target/<profile>/`).
pub fn built_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let dir = exe.parent().context("executable has no directory")?;
    let candidates = [dir.join("..").join(name), dir.join(name)];
    for c in &candidates {
        if c.is_file() {
            return Ok(c.clone());
        }
    }
    bail!(
        "the {name} binary is not at {}: build it first (`cargo build --release --bins`)",
        candidates[0].display()
    )
}

/// Taken shared by the tests of a test binary that can run side by side, exclusively by
/// those that load the machine (floods), so that their rates and the others' timings do
/// not disturb each other. Each test binary has its own lock.
static MACHINE: std::sync::RwLock<()> = std::sync::RwLock::new(());

pub fn machine_shared() -> std::sync::RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(|e| e.into_inner())
}

pub fn machine_exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    MACHINE.write().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arms {
    /// Client and backends on different gateway interfaces.
    Two,
    /// Client and backends behind the gateway's single interface.
    One,
}

/// A backend host: its namespace, address and name.
pub struct BackendHost {
    pub ns: Netns,
    pub addr: Ipv4Addr,
    /// Name its test server answers with (be1, be2, ...).
    pub name: String,
}

impl BackendHost {
    /// `addr:BACKEND_PORT` as the CLI takes it.
    pub fn endpoint(&self) -> String {
        format!("{}:{BACKEND_PORT}", self.addr)
    }

    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.addr, BACKEND_PORT))
    }
}

struct Server {
    name: String,
    child: Child,
}

/// The impaired client link of [`Topology::two_arm_with_wan`].
pub struct Wan {
    // Declared before the namespace: the relay stops before the namespace goes.
    pub relay: Relay,
    pub ns: Netns,
}

pub struct Topology {
    // Field order matters only for what Drop::drop leaves: servers are killed there, the
    // namespaces are deleted when the fields drop afterwards.
    servers: Vec<Server>,
    /// The client link's relay and namespace (two-arm with WAN only); stops first.
    pub wan: Option<Wan>,
    /// BPF links of the XDP_PASS programs on the gateway interfaces' peers.
    _pass_links: Vec<OwnedFd>,
    instance: String,
    balancer_bin: PathBuf,
    attach_tried: bool,
    /// Backends run as replicated app servers.
    session_mode: bool,
    pub arms: Arms,
    pub client: Netns,
    pub gateway: Netns,
    /// Interfaces of the gateway the balancer attaches to.
    pub gateway_ifaces: Vec<String>,
    /// Holds the bridge the backends (and, one-arm, everyone) are connected to.
    pub lan: Netns,
    pub backends: Vec<BackendHost>,
}

impl Topology {
    /// Two-arm topology with `n_backends` backends, using [`balancer_bin`].
    pub fn two_arm(n_backends: usize) -> Result<Topology> {
        Self::build(Arms::Two, n_backends, balancer_bin()?)
    }

    /// Two-arm topology whose client link passes through an impairment relay (see the
    /// module documentation), using [`balancer_bin`].
    pub fn two_arm_with_wan(n_backends: usize, impairment: Impairment) -> Result<Topology> {
        Self::build_with(Arms::Two, n_backends, balancer_bin()?, Some(impairment))
    }

    /// Two-arm topology as a user would build a veth lab by hand: like [`Topology::two_arm`]
    /// but with no XDP program on the peers of the gateway's interfaces, so the balancer's
    /// `XDP_TX` frames stall there until `attach --veth-peer-pass` fixes it.
    pub fn two_arm_bare_peers(n_backends: usize) -> Result<Topology> {
        Self::build_inner(Arms::Two, n_backends, balancer_bin()?, None, false)
    }

    /// One-arm topology with `n_backends` backends, using [`balancer_bin`].
    pub fn one_arm(n_backends: usize) -> Result<Topology> {
        Self::build(Arms::One, n_backends, balancer_bin()?)
    }

    /// Builds a topology that runs the given `balancer` binary. On failure, whatever was
    /// created is removed again.
    pub fn build(arms: Arms, n_backends: usize, balancer_bin: PathBuf) -> Result<Topology> {
        Self::build_with(arms, n_backends, balancer_bin, None)
    }

    /// As [`Topology::build`]; with `wan` (two-arm only), the client's link runs through
    /// an impairment relay.
    pub fn build_with(
        arms: Arms,
        n_backends: usize,
        balancer_bin: PathBuf,
        wan: Option<Impairment>,
    ) -> Result<Topology> {
        Self::build_inner(arms, n_backends, balancer_bin, wan, true)
    }

    /// `peer_pass`: attach [`attach_xdp_pass`] to the peers of the gateway's interfaces.
    fn build_inner(
        arms: Arms,
        n_backends: usize,
        balancer_bin: PathBuf,
        wan: Option<Impairment>,
        peer_pass: bool,
    ) -> Result<Topology> {
        crate::harness::root::require_root()?;
        if wan.is_some() && arms != Arms::Two {
            bail!("an impaired client link needs the two-arm topology");
        }
        if n_backends > MAX_BACKENDS {
            bail!("at most {MAX_BACKENDS} backends");
        }
        let client = Netns::new("lbc")?;
        let gateway = Netns::new("lbg")?;
        let lan = Netns::new("lbl")?;
        lan.ip(&["link", "add", "br0", "type", "bridge"])?;
        lan.ip(&["link", "set", "br0", "up"])?;
        // Before the interfaces exist, so they inherit it.
        gateway.exec(
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.default.send_redirects=0",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ],
        )?;
        // The gateway's client-side and server-side addresses, on the given interfaces.
        let add_gateway_addrs = |client_dev: &str, server_dev: &str| -> Result<()> {
            for (addr, dev) in [
                (GATEWAY_CLIENT_ADDR, client_dev),
                (GATEWAY_SERVER_ADDR, server_dev),
            ] {
                gateway.ip(&["addr", "add", &format!("{addr}/24"), "dev", dev])?;
            }
            Ok(())
        };
        let mut pass_links = Vec::new();
        let mut pass = |ns: &Netns, dev: &str| -> Result<()> {
            if peer_pass {
                pass_links.push(attach_xdp_pass(ns, dev)?);
            }
            Ok(())
        };
        let mut wan_ns = None;
        let gateway_ifaces = match arms {
            Arms::Two => {
                match wan {
                    None => {
                        netns::veth(&client, "eth0", &gateway, "cli0")?;
                        pass(&client, "eth0")?;
                    }
                    Some(_) => {
                        let w = Netns::new("lbw")?;
                        // The relay's namespace has no addresses and sends nothing itself.
                        w.exec(
                            "sysctl",
                            &[
                                "-qw",
                                "net.ipv6.conf.all.disable_ipv6=1",
                                "net.ipv6.conf.default.disable_ipv6=1",
                            ],
                        )?;
                        netns::veth(&client, "eth0", &w, "cli")?;
                        netns::veth(&w, "gw", &gateway, "cli0")?;
                        // `gw` is the peer of the balancer's client-side interface: it
                        // needs the XDP_PASS program (see the module documentation).
                        // Offloads go off after it is attached: when GRO changes, veth
                        // recomputes whether `cli0` may redirect into `gw`, which it may
                        // as long as `gw` has a program (and the program keeps `gw`'s
                        // NAPI with GRO off).
                        pass(&w, "gw")?;
                        for (ns, dev) in [(&w, "cli"), (&w, "gw"), (&client, "eth0")] {
                            ns.exec(
                                "ethtool",
                                &[
                                    "-K", dev, "gro", "off", "gso", "off", "tso", "off", "tx",
                                    "off", "rx", "off",
                                ],
                            )?;
                        }
                        wan_ns = Some(w);
                    }
                }
                netns::veth(&gateway, "srv0", &lan, "gw0")?;
                lan.ip(&["link", "set", "gw0", "master", "br0"])?;
                add_gateway_addrs("cli0", "srv0")?;
                pass(&lan, "gw0")?;
                vec!["cli0".to_string(), "srv0".to_string()]
            }
            Arms::One => {
                netns::veth(&client, "eth0", &lan, "cl0")?;
                netns::veth(&gateway, "eth0", &lan, "gw0")?;
                for port in ["cl0", "gw0"] {
                    lan.ip(&["link", "set", port, "master", "br0"])?;
                }
                add_gateway_addrs("eth0", "eth0")?;
                pass(&lan, "gw0")?;
                vec!["eth0".to_string()]
            }
        };
        client.ip(&["addr", "add", &format!("{CLIENT_ADDR}/24"), "dev", "eth0"])?;
        client.ip(&[
            "route",
            "add",
            "198.18.0.0/15",
            "via",
            &GATEWAY_CLIENT_ADDR.to_string(),
        ])?;
        let mut backends = Vec::with_capacity(n_backends);
        for i in 0..n_backends {
            let ns = Netns::new("lbb")?;
            let port = format!("be{i}");
            netns::veth(&ns, "eth0", &lan, &port)?;
            lan.ip(&["link", "set", &port, "master", "br0"])?;
            let addr = backend_addr(i);
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            ns.ip(&[
                "route",
                "add",
                "default",
                "via",
                &GATEWAY_SERVER_ADDR.to_string(),
            ])?;
            backends.push(BackendHost {
                ns,
                addr,
                name: backend_name(i),
            });
        }
        let wan = match (wan_ns, wan) {
            (Some(ns), Some(imp)) => Some(Wan {
                relay: Relay::start(&ns, "cli", "gw", imp)?,
                ns,
            }),
            _ => None,
        };
        Ok(Topology {
            servers: Vec::new(),
            wan,
            _pass_links: pass_links,
            instance: netns::unique_name("lbt"),
            balancer_bin,
            attach_tried: false,
            session_mode: false,
            arms,
            client,
            gateway,
            gateway_ifaces,
            lan,
            backends,
        })
    }

    /// The balancer instance name of this topology (unique per topology).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Pin directory of this topology's instance.
    pub fn pin_dir(&self) -> PathBuf {
        Path::new(BPFFS_ROOT).join(&self.instance)
    }

    pub fn balancer_bin(&self) -> &Path {
        &self.balancer_bin
    }

    /// `balancer --instance <this instance>` in the gateway's network namespace (host
    /// mounts kept, so bpffs is visible).
    pub fn balancer_command(&self) -> Command {
        let mut c = self.gateway.command(&self.balancer_bin.to_string_lossy());
        c.arg("--instance").arg(&self.instance);
        c
    }

    /// Runs the CLI with `args` and returns its output, whatever its exit status.
    pub fn balancer_output(&self, args: &[&str]) -> Result<Output> {
        self.balancer_command()
            .args(args)
            .output()
            .with_context(|| format!("running {}", self.balancer_bin.display()))
    }

    /// Runs the CLI with `args`; fails with its stderr if it exits non-zero.
    pub fn balancer(&self, args: &[&str]) -> Result<Output> {
        let out = self.balancer_output(args)?;
        if !out.status.success() {
            bail!(
                "balancer {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out)
    }

    /// Packets the client's interface dropped on transmit (its peer's queue was full):
    /// what a flood lost before it reached the balancer.
    pub fn client_tx_dropped(&self) -> u64 {
        let out = self
            .client
            .ip(&["-s", "-j", "link", "show", "eth0"])
            .expect("reading the client's link statistics");
        let v: Value = serde_json::from_slice(&out.stdout).expect("`ip -j link` prints JSON");
        v[0]["stats64"]["tx"]["dropped"].as_u64().unwrap_or(0)
    }

    /// Runs the CLI with `args` (which should include `--json`) and parses its stdout.
    pub fn balancer_json(&self, args: &[&str]) -> Result<Value> {
        let out = self.balancer(args)?;
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "balancer {}: output is not JSON: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Attaches the balancer to the gateway's interfaces (native XDP).
    pub fn attach(&mut self) -> Result<()> {
        self.attach_with(&[])
    }

    /// Attaches with extra `attach` arguments (e.g. `--mode generic`).
    pub fn attach_with(&mut self, extra: &[&str]) -> Result<()> {
        let mut args = vec!["attach"];
        for iface in &self.gateway_ifaces {
            args.extend(["--iface", iface.as_str()]);
        }
        args.extend_from_slice(extra);
        self.attach_tried = true;
        self.balancer(&args)?;
        Ok(())
    }

    /// Adds the service `VIP:SERVICE_PORT` with every backend (`addr:BACKEND_PORT`).
    pub fn add_service_with_backends(&self) -> Result<()> {
        self.add_vip_service(false, &[])
    }

    /// Adds the cookie-mode service `VIP:SERVICE_PORT` with every backend, each backend's
    /// server id being its name (be1, be2, ...).
    pub fn add_cookie_service_with_backends(&self) -> Result<()> {
        self.add_vip_service(true, &[])
    }

    /// Adds the service `VIP:SERVICE_PORT` (in cookie mode or not, with `extra` arguments
    /// to `service add`) with every backend; in cookie mode each backend's server id is
    /// its name.
    pub fn add_vip_service(&self, cookie: bool, extra: &[&str]) -> Result<()> {
        let service = service_arg();
        let mut add = vec!["service", "add", service.as_str()];
        if cookie {
            add.push("--cookie");
        }
        add.extend_from_slice(extra);
        self.balancer(&add)?;
        for b in &self.backends {
            let endpoint = b.endpoint();
            let mut args = vec!["backend", "add", service.as_str(), endpoint.as_str()];
            if cookie {
                args.extend(["--server-id", b.name.as_str()]);
            }
            self.balancer(&args)?;
        }
        Ok(())
    }

    /// Global counters (`stats --json` → `global`).
    pub fn global_stats(&self) -> Result<Value> {
        Ok(self.balancer_json(&["stats", "--json"])?["global"].clone())
    }

    /// One global counter.
    pub fn counter(&self, label: &str) -> Result<u64> {
        self.global_stats()?[label]
            .as_u64()
            .with_context(|| format!("no counter {label} in `stats --json`"))
    }

    /// Detaches the balancer now (Drop does it too).
    pub fn detach(&mut self) -> Result<()> {
        self.attach_tried = false;
        self.balancer(&["detach"])?;
        Ok(())
    }

    /// Starts a test server on every backend (`addr:BACKEND_PORT`, named be1, be2, ...)
    /// and waits until each accepts connections.
    pub fn start_servers(&mut self, testsrv: &Path) -> Result<()> {
        for i in 0..self.backends.len() {
            self.spawn_server(i, testsrv)?;
        }
        for i in 0..self.backends.len() {
            self.wait_listening(i)?;
        }
        Ok(())
    }

    /// Starts the test server of backend `i` and waits until it accepts connections.
    pub fn start_server(&mut self, i: usize, testsrv: &Path) -> Result<()> {
        self.spawn_server(i, testsrv)?;
        self.wait_listening(i)
    }

    /// Starts every backend as a replicated app server (`balancer-testsrv` session
    /// mode): server id = backend name, every other backend a peer. Later
    /// [`Topology::start_server`] calls start them the same way.
    pub fn start_session_servers(&mut self, testsrv: &Path) -> Result<()> {
        self.session_mode = true;
        self.start_servers(testsrv)
    }

    /// Something other than [`Topology::attach`] (the daemon) attaches this instance:
    /// detach it when the topology goes.
    pub fn will_be_attached(&mut self) {
        self.attach_tried = true;
    }

    fn spawn_server(&mut self, i: usize, testsrv: &Path) -> Result<()> {
        let peers: Vec<String> = self
            .backends
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i && self.session_mode)
            .map(|(_, o)| format!("{}={}", o.name, o.socket_addr()))
            .collect();
        let b = &self.backends[i];
        if self.servers.iter().any(|s| s.name == b.name) {
            bail!("server {} already runs", b.name);
        }
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", b.ns.name()])
            .arg(testsrv)
            .arg("--listen")
            .arg(b.socket_addr().to_string())
            .arg("--name")
            .arg(&b.name)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if self.session_mode {
            cmd.arg("--server-id").arg(&b.name);
            for p in &peers {
                cmd.arg("--peer").arg(p);
            }
        }
        // Own process group: a Ctrl-C at the terminal reaches the demo (which then tears
        // down in order) but not the servers directly.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} in {}", testsrv.display(), b.ns.name()))?;
        self.servers.push(Server {
            name: b.name.clone(),
            child,
        });
        Ok(())
    }

    fn wait_listening(&mut self, i: usize) -> Result<()> {
        let addr = self.backends[i].socket_addr();
        let name = self.backends[i].name.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let connected = self.backends[i].ns.run(move || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })?;
            if connected {
                return Ok(());
            }
            if let Some(s) = self.servers.iter_mut().find(|s| s.name == name) {
                if let Some(status) = s.child.try_wait()? {
                    bail!("test server {name} exited ({status}) before listening on {addr}");
                }
            }
            if Instant::now() > deadline {
                bail!("test server {name} does not listen on {addr} after 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the test server of backend `i` (e.g. to simulate a failed backend).
    pub fn stop_server(&mut self, i: usize) -> Result<()> {
        let name = &self.backends[i].name;
        let pos = self
            .servers
            .iter()
            .position(|s| &s.name == name)
            .with_context(|| format!("no server {name} runs"))?;
        let mut s = self.servers.remove(pos);
        let _ = s.child.kill();
        s.child.wait()?;
        Ok(())
    }

    /// Index of the backend with this name.
    pub fn backend_index(&self, name: &str) -> Option<usize> {
        self.backends.iter().position(|b| b.name == name)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if self.attach_tried {
            match self.balancer_output(&["detach"]) {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "topology: detaching instance {} failed: {}",
                    self.instance,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => eprintln!("topology: detaching instance {}: {e:#}", self.instance),
            }
            if self.pin_dir().exists() {
                eprintln!(
                    "topology: {} is still there after detach",
                    self.pin_dir().display()
                );
            }
        }
        for s in &mut self.servers {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
        // The namespaces (fields) are deleted when they drop after this.
    }
}

/// Attaches a two-instruction XDP program that returns `XDP_PASS` to interface `ifname`
/// of namespace `ns` (native mode, through a BPF link) and returns the link: closing it
/// (or deleting the interface) detaches the program. Built from raw instructions, so it
/// needs no object file and creates no maps or pins.
pub fn attach_xdp_pass(ns: &Netns, ifname: &str) -> Result<OwnedFd> {
    let ifname = ifname.to_string();
    let what = format!("attaching XDP_PASS to {ifname} in {}", ns.name());
    // The link is created by a thread inside the namespace: the kernel resolves the
    // interface index in the caller's network namespace.
    ns.run(move || -> Result<OwnedFd> {
        let c = std::ffi::CString::new(ifname.clone())?;
        // SAFETY: c is a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if ifindex == 0 {
            bail!("no interface {ifname}");
        }
        let prog = load_xdp_pass()?;
        create_xdp_link(&prog, ifindex)
    })?
    .context(what)
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// The prefix of `union bpf_attr` that BPF_PROG_LOAD reads; the rest stays zero.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    _rest: [u8; 56],
}

/// The prefix of `union bpf_attr` that BPF_LINK_CREATE reads.
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u8; 112],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<OwnedFd> {
    // SAFETY: attr is a properly sized, zero-padded bpf_attr prefix for this command.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn load_xdp_pass() -> Result<OwnedFd> {
    // r0 = XDP_PASS (2); exit.
    let insns: [u64; 2] = [0x0000_0002_0000_00b7, 0x0000_0000_0000_0095];
    let license = b"GPL\0";
    let mut name = [0u8; 16];
    name[..8].copy_from_slice(b"lb_tpass");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: BPF_XDP,
        _rest: [0; 56],
    };
    bpf(BPF_PROG_LOAD, &mut attr).context("BPF_PROG_LOAD of the XDP_PASS program")
}

fn create_xdp_link(prog: &OwnedFd, ifindex: u32) -> Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: XDP_FLAGS_DRV_MODE,
        _rest: [0; 112],
    };
    bpf(BPF_LINK_CREATE, &mut attr).context("BPF_LINK_CREATE (XDP, native mode)")
}

/// `balancer stats --json` of a topology's instance, with accessors that panic with the
/// whole output when a counter is missing (tests).
pub struct Stats(pub Value);

impl Stats {
    pub fn read(t: &Topology) -> Stats {
        Stats(t.balancer_json(&["stats", "--json"]).unwrap())
    }

    pub fn global(&self, label: &str) -> u64 {
        self.0["global"][label]
            .as_u64()
            .unwrap_or_else(|| panic!("no global counter {label}: {}", self.0))
    }

    pub fn backend(&self, endpoint: &str, field: &str) -> u64 {
        self.0["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["backend"] == endpoint)
            .and_then(|b| b[field].as_u64())
            .unwrap_or_else(|| panic!("no counter {field} for {endpoint}: {}", self.0))
    }

    /// The global counters that moved, and each backend's cookie and flow counters, on
    /// one line (for assertion messages).
    pub fn summary(&self) -> String {
        let g = self.0["global"].as_object().unwrap();
        let mut out: Vec<String> = g
            .iter()
            .filter(|(_, v)| v.as_u64() != Some(0))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for b in self.0["backends"].as_array().unwrap() {
            out.push(format!(
                "[{} hits={} misses={} failover={} flows={} pkts_to={}]",
                b["backend"],
                b["cookie_hits"],
                b["cookie_misses"],
                b["failover_redirects"],
                b["new_flows"],
                b["packets_to"]
            ));
        }
        out.join(" ")
    }

    /// Sum of a per-backend counter over every backend.
    pub fn backends_sum(&self, field: &str) -> u64 {
        self.0["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b[field].as_u64().unwrap_or(0))
            .sum()
    }
}

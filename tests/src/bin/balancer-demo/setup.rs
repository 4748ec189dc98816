//! The demo's configuration and the plain (NAT) servers.

use super::*;

pub(crate) fn nat_vip() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(NAT_VIP, SERVICE_PORT))
}

/// The daemon's configuration for the demo, with comments saying what each part does.
pub(crate) fn demo_config(t: &Topology) -> String {
    let ifaces: Vec<String> = t
        .gateway_ifaces
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect();
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"[daemon]
instance = "{}"
interfaces = [{}]     # client side, server side
failover_hold_down = "10s"          # a recovered primary waits this long before it gets its sessions back
pair_sample = 4                     # learn replication pairs from 1 in 4 session cookies

[health]                            # the daemon's defaults, except an HTTP check
kind = "http"
path = "/health"
interval = "250ms"
timeout = "200ms"
rise = 2
fall = 2

[[service]]                         # sessions pinned to the primary named in JSESSIONID
address = "{VIP}:{SERVICE_PORT}"
mode = "cookie"
"#,
        t.instance(),
        ifaces.join(", ")
    );
    for b in &t.backends {
        let _ = writeln!(
            s,
            "  [[service.backend]]\n  address = \"{}\"\n  server_id = \"{}\"             # no `secondary`: learned from the cookies\n",
            b.endpoint(),
            b.name
        );
    }
    let _ = writeln!(
        s,
        "[[service]]                         # plain L4 NAT, Maglev spread, plain servers\naddress = \"{NAT_VIP}:{SERVICE_PORT}\"\nmode = \"nat\"\n"
    );
    for b in &t.backends {
        let _ = writeln!(
            s,
            "  [[service.backend]]\n  address = \"{}:{NAT_BACKEND_PORT}\"\n",
            b.addr
        );
    }
    s.trim_end().to_string() + "\n"
}

/// Starts a plain test server (named like the backend) on `NAT_BACKEND_PORT` in every
/// backend namespace, in its own process group (a Ctrl-C reaches the demo, which tears
/// down in order), and waits until each accepts connections.
pub(crate) fn start_plain_servers(t: &Topology, testsrv: &Path) -> Result<Vec<Child>> {
    let mut children = Vec::new();
    let result = (|| -> Result<()> {
        for b in &t.backends {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", b.ns.name()])
                .arg(testsrv)
                .args(["--listen", &format!("{}:{NAT_BACKEND_PORT}", b.addr)])
                .args(["--name", &b.name])
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            children.push(cmd.spawn().context("starting a plain test server")?);
        }
        for b in &t.backends {
            let addr = SocketAddr::V4(SocketAddrV4::new(b.addr, NAT_BACKEND_PORT));
            let deadline = Instant::now() + Duration::from_secs(10);
            while !b.ns.run(move || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })? {
                if Instant::now() > deadline {
                    bail!(
                        "the plain test server of {} does not listen on {addr}",
                        b.name
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(children),
        Err(e) => {
            for c in &mut children {
                let _ = c.kill();
                let _ = c.wait();
            }
            Err(e)
        }
    }
}

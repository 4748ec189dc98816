//! Permissions of the control socket, the pins and the metrics endpoint.

use super::*;

// ---- 4. Permissions -----------------------------------------------------------------

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// `program args` as user nobody.
fn as_nobody(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap()
}

/// Only root reaches the control socket and the pinned maps; the metrics endpoint is
/// read-only and on loopback.
#[test]
fn control_socket_pins_and_metrics_are_restricted() {
    let mut t = topology();
    let config = daemon_config(&t, &ConfigOptions::default());
    let d = Daemon::start(&mut t, &config).expect("starting the daemon");
    wait_healthy(&d, 3);

    let socket = d.control_socket();
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket(), "{}", socket.display());
    assert_eq!(mode(&socket), 0o600, "{}", socket.display());
    assert_eq!(mode(&d.run_dir()), 0o700, "{}", d.run_dir().display());
    let pin_dir = t.pin_dir();
    for dir in [pin_dir.as_path(), pin_dir.parent().unwrap()] {
        assert_eq!(
            mode(dir) & 0o077,
            0,
            "{} is mode {:o}",
            dir.display(),
            mode(dir)
        );
    }
    let mut pins = 0;
    for e in std::fs::read_dir(&pin_dir).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(
            mode(&p) & 0o077,
            0,
            "{} is mode {:o}",
            p.display(),
            mode(&p)
        );
        pins += 1;
    }
    assert!(pins > 10, "{pins} pins");

    // Others cannot use them.
    let bin = t.balancer_bin().to_path_buf();
    let run_dir = d.run_dir().display().to_string();
    let out = as_nobody(
        &bin,
        &["--instance", t.instance(), "--run-dir", &run_dir, "reload"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is root-only: run as root"),
        "{}",
        stderr(&out)
    );
    let out = as_nobody(&bin, &["--instance", t.instance(), "backend", "list"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("must run as root"),
        "{}",
        stderr(&out)
    );
    for dir in [&pin_dir, &d.run_dir()] {
        let out = as_nobody(Path::new("/bin/ls"), &[&dir.display().to_string()]);
        assert!(!out.status.success(), "nobody lists {}", dir.display());
    }
    let pin = pin_dir.join("BALANCER_BACKENDS");
    let out = as_nobody(Path::new("/bin/cat"), &[&pin.display().to_string()]);
    assert!(!out.status.success(), "nobody reads {}", pin.display());

    // Metrics: GET answers, anything that could change something is refused.
    let text = metrics(&t).unwrap();
    assert!(text.contains("balancer_backend_up{"), "{text}");
    let addr: SocketAddr = "127.0.0.1:9469".parse().unwrap();
    let (post, put, head) = t
        .gateway
        .run(move || -> anyhow::Result<_> {
            let post = http::post(addr, "/metrics", b"x=1")?;
            let put = http::Conn::connect(addr)?.request(
                "PUT",
                "/metrics",
                &[("Connection", "close")],
                b"",
            )?;
            let head = http::Conn::connect(addr)?.request(
                "HEAD",
                "/metrics",
                &[("Connection", "close")],
                b"",
            )?;
            Ok((post, put, head))
        })
        .unwrap()
        .unwrap();
    for r in [&post, &put] {
        assert_eq!(r.status, 405, "{}", r.text());
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    }
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    // Loopback only: not on the gateway's other addresses, nor from the client.
    let gw_side: SocketAddr = SocketAddr::from((GATEWAY_SERVER_ADDR, 9469));
    let refused = t
        .gateway
        .run(move || {
            std::net::TcpStream::connect_timeout(&gw_side, Duration::from_secs(1)).is_err()
        })
        .unwrap();
    assert!(refused, "metrics answer on {gw_side}");
    let from_client: SocketAddr = "198.18.0.1:9469".parse().unwrap();
    let refused = t
        .client
        .run(move || {
            std::net::TcpStream::connect_timeout(&from_client, Duration::from_secs(1)).is_err()
        })
        .unwrap();
    assert!(refused, "metrics answer the client on {from_client}");
}

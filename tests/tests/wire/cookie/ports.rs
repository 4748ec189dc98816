//! Reused client ports, a backend's TIME_WAIT, and SYNs on live spliced connections.

use super::*;

/// A TCP connection to the VIP from the client's address and a fixed source port
/// (`SO_REUSEADDR`, so the port can be taken again right after a connection closed).
fn connect_from_port(port: u16, timeout: Duration) -> anyhow::Result<TcpStream> {
    connect_from_port_to(
        port,
        SocketAddrV4::new(topology::VIP, topology::SERVICE_PORT),
        timeout,
    )
}

/// As [`connect_from_port`], to `remote`.
fn connect_from_port_to(
    port: u16,
    remote: SocketAddrV4,
    timeout: Duration,
) -> anyhow::Result<TcpStream> {
    // SAFETY: plain socket call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    anyhow::ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    let local = sockaddr(topology::CLIENT_ADDR, port);
    let remote = sockaddr(*remote.ip(), remote.port());
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: valid option values and addresses of the sizes passed. SO_SNDTIMEO bounds
    // a blocking connect.
    unsafe {
        anyhow::ensure!(
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
                && libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDTIMEO,
                    &tv as *const libc::timeval as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                ) == 0,
            "setsockopt: {}",
            std::io::Error::last_os_error()
        );
        anyhow::ensure!(
            libc::bind(
                fd.as_raw_fd(),
                &local as *const libc::sockaddr_in as *const libc::sockaddr,
                len
            ) == 0,
            "bind to port {port}: {}",
            std::io::Error::last_os_error()
        );
        anyhow::ensure!(
            libc::connect(
                fd.as_raw_fd(),
                &remote as *const libc::sockaddr_in as *const libc::sockaddr,
                len
            ) == 0,
            "connect from port {port}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(TcpStream::from(fd))
}

/// One `Connection: close` GET with `cookie` on `stream`; the answering backend's name.
/// Returns after the server closed, so the client closes second and its port is free
/// again at once (no TIME_WAIT on the client), as with any HTTP/1.1 server that ends
/// connections itself.
fn get_on(mut stream: TcpStream, cookie: &str) -> anyhow::Result<String> {
    stream.set_read_timeout(Some(http::READ_TIMEOUT))?;
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n",
        vip()
    );
    stream.write_all(req.as_bytes())?;
    let mut reader = std::io::BufReader::new(stream);
    let r = http::read_response(&mut reader, false)?;
    anyhow::ensure!(r.status == 200, "status {}", r.status);
    // Wait for the server's FIN, so that the client closes second.
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest)?;
    anyhow::ensure!(rest.is_empty(), "{} bytes after the response", rest.len());
    Ok(r.text())
}

#[test]
fn reused_client_port_gets_a_new_binding() {
    const PORT: u16 = 61_001;
    let _g = topology::machine_shared();
    let t = setup(3);
    let answers = t
        .client
        .run(|| -> Vec<anyhow::Result<String>> {
            let mut out = Vec::new();
            for (i, primary) in ["be1", "be2", "be2", "be3"].into_iter().enumerate() {
                let got = connect_from_port(PORT, Duration::from_secs(3))
                    .and_then(|s| get_on(s, &session_cookie(i, primary)));
                let failed = got.is_err();
                out.push(got.map_err(|e| e.context(format!("connection {i} for {primary}"))));
                if failed {
                    // The port stays taken by the failed connection.
                    break;
                }
                // The client closes after the server: its port is free right away.
                std::thread::sleep(Duration::from_millis(20));
            }
            out
        })
        .unwrap();
    let s = Stats::read(&t);
    let ctx = s.summary();
    let flows = t.balancer_json(&["flows", "--json"]).unwrap();
    let got: Vec<String> = answers
        .iter()
        .map(|a| match a {
            Ok(n) => n.clone(),
            Err(e) => format!("error: {e:#}"),
        })
        .collect();
    assert_eq!(
        got,
        ["be1", "be2", "be2", "be3"],
        "connections from one client port, one after the other; counters: {ctx}; flows: {flows}"
    );
    assert_eq!(s.global("bindings_completed"), 4, "{ctx}");
}

/// A backend's TIME-WAIT for the client's address and port, left by a connection that
/// went to it directly, takes the binding SYN (another ISN space: that of the client's
/// connection to the VIP) for an old segment about half the time, and answers it with an
/// old ACK. The balancer resets that TIME-WAIT and sends the SYN again at once (XDP
/// passes the ACK to the TC program, which sends both), so no request waits for the
/// client to retransmit its first segment.
#[test]
fn backend_time_wait_of_a_direct_connection_does_not_hold_the_binding() {
    const FIRST_PORT: u16 = 61_100;
    const PORTS: u16 = 24;
    let _g = topology::machine_shared();
    let t = setup(1);
    let backend = match t.backends[0].socket_addr() {
        SocketAddr::V4(a) => a,
        other => panic!("IPv4 backend expected, got {other}"),
    };
    let answers = t
        .client
        .run(move || -> Vec<anyhow::Result<(String, String)>> {
            (FIRST_PORT..FIRST_PORT + PORTS)
                .map(|port| {
                    // Direct: the backend closes first and keeps the TIME-WAIT.
                    let direct = connect_from_port_to(port, backend, Duration::from_secs(3))
                        .and_then(|s| get_on(s, "JSESSIONID=direct!be1"))
                        .map_err(|e| e.context(format!("direct from port {port}")))?;
                    std::thread::sleep(Duration::from_millis(20));
                    let via_vip = connect_from_port(port, Duration::from_secs(3))
                        .and_then(|s| get_on(s, &session_cookie(port as usize, "be1")))
                        .map_err(|e| e.context(format!("through the VIP from port {port}")))?;
                    Ok((direct, via_vip))
                })
                .collect()
        })
        .unwrap();
    let s = Stats::read(&t);
    let ctx = s.summary();
    for a in &answers {
        match a {
            Ok((direct, via_vip)) => {
                assert_eq!((direct.as_str(), via_vip.as_str()), ("be1", "be1"), "{ctx}")
            }
            Err(e) => panic!("{e:#}; counters: {ctx}"),
        }
    }
    let passed = s.global("pass_stale_ack_to_tc");
    assert!(
        passed > 0,
        "no binding met a TIME-WAIT in {PORTS} tries (each about even odds): {ctx}"
    );
    // Each stale ACK was reset once, by TC (XDP resets only a second one per binding),
    // and the only SYNs sent again are TC's: no client had to retransmit.
    assert_eq!(s.global("bind_stale_acks"), passed, "{ctx}");
    assert_eq!(s.global("bind_retransmits"), passed, "{ctx}");
    assert_eq!(s.global("bindings_completed"), PORTS as u64, "{ctx}");
    assert_no_failures(&s);
}

/// A spliced keep-alive connection gets a SYN on its own tuple with ISN `isn + offset`
/// from the client's address, then must go on serving requests.
fn syn_on_a_live_connection(offset: u32) {
    let t = setup(3);
    let cookie = session_cookie(5, "be2");
    let outcome = t
        .client
        .run(move || -> anyhow::Result<Vec<String>> {
            let (mut conn, isn) = attack::connect_reading_isn("eth0", vip())?;
            let port = conn.local_addr()?.port();
            let mut answers = Vec::new();
            let r = conn.request("GET", "/", &[("Cookie", &cookie)], &[])?;
            answers.push(r.text());
            let extra = syn(
                topology::CLIENT_ADDR,
                port,
                topology::VIP,
                topology::SERVICE_PORT,
                isn.wrapping_add(offset),
            );
            RawSender::new()?.send(&attack::build(&extra))?;
            std::thread::sleep(Duration::from_millis(50));
            for i in 0..3 {
                let r = conn
                    .request("GET", "/", &[("Cookie", &cookie)], &[])
                    .map_err(|e| e.context(format!("request {i} after the SYN")))?;
                answers.push(r.text());
            }
            Ok(answers)
        })
        .unwrap();
    let s = Stats::read(&t);
    let ctx = s.summary();
    let answers = outcome.unwrap_or_else(|e| panic!("{e:#}; counters: {ctx}"));
    assert_eq!(answers, ["be2"; 4], "{ctx}");
    assert_eq!(s.global("bindings_completed"), 1, "{ctx}");
}

/// A late copy of the connection's own SYN (same tuple, same ISN), as a network that
/// delays or duplicates packets delivers it.
#[test]
fn duplicate_syn_does_not_break_a_spliced_connection() {
    let _g = topology::machine_shared();
    syn_on_a_live_connection(0);
}

/// A SYN with another ISN on a live connection's tuple, as an off-path attacker who knows
/// (or guesses) the client's address and port can send: it must not tear the connection
/// down (RFC 5961 section 4: a SYN on a synchronized connection gets a challenge ACK
/// whatever its sequence number). The client's own new connection on a reused port
/// (`reused_client_port_gets_a_new_binding`) proves itself by completing the syncookie
/// handshake; a bare SYN proves nothing.
#[test]
fn blind_syn_does_not_break_a_spliced_connection() {
    let _g = topology::machine_shared();
    syn_on_a_live_connection(0x4000_0000);
}

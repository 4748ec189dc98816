//! End-to-end tests of cookie mode (delayed binding): real HTTP clients through the XDP
//! data plane in network namespaces; the backends answer with their name, so every
//! response says which backend the connection was bound to.

use std::path::Path;

use balancer_tests::{
    http::Conn,
    topology::{self, service_arg, vip, Topology},
};

const TESTSRV: &str = env!("CARGO_BIN_EXE_balancer-testsrv");

/// Two-arm topology with `n` backends in a cookie-mode service `VIP:80`, each backend's
/// server id being its name (be1, be2, ...).
fn setup(n: usize) -> Topology {
    if let Err(e) = topology::require_root() {
        panic!("these integration tests need root: {e:#}");
    }
    let mut t = Topology::two_arm(n).expect("building the topology");
    t.attach().expect("attaching the balancer");
    t.start_servers(Path::new(TESTSRV))
        .expect("starting test servers");
    let service = service_arg();
    t.balancer(&["service", "add", &service, "--cookie"])
        .unwrap();
    for b in &t.backends {
        t.balancer(&[
            "backend",
            "add",
            &service,
            &b.endpoint(),
            "--server-id",
            &b.name,
        ])
        .unwrap();
    }
    t
}

/// One GET on a fresh connection with `cookie` (if any); the backend's name.
fn get_with_cookie(cookie: Option<String>) -> anyhow::Result<String> {
    let mut conn = Conn::connect(vip())?;
    let mut headers = vec![("Connection", "close")];
    let value;
    if let Some(c) = cookie {
        value = c;
        headers.push(("Cookie", value.as_str()));
    }
    let r = conn.request("GET", "/", &headers, &[])?;
    anyhow::ensure!(r.status == 200, "status {}", r.status);
    Ok(r.text())
}

#[test]
fn requests_land_on_the_backend_their_cookie_names() {
    let t = setup(3);
    let names: Vec<String> = t.backends.iter().map(|b| b.name.clone()).collect();
    let results = t
        .client
        .run(move || {
            let mut out = Vec::new();
            for i in 0..30 {
                let want = names[i % names.len()].clone();
                let cookie = format!("a=1; JSESSIONID=s{i}!{want}!x; b=2");
                out.push((
                    want,
                    get_with_cookie(Some(cookie)).map_err(|e| format!("{e:#}")),
                ));
            }
            out
        })
        .unwrap();
    let stats = t.balancer_output(&["stats"]).unwrap();
    for (want, got) in &results {
        assert_eq!(
            got.as_deref().map(str::trim),
            Ok(want.as_str()),
            "stats:\n{}",
            String::from_utf8_lossy(&stats.stdout)
        );
    }
}

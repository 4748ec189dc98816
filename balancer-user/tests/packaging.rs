//! The files the Debian package installs from balancer-user/packaging/ are what the
//! binary expects: the example configuration is a valid one, and the unit runs the
//! daemon on it and reloads through `balancer reload`.

use balancer_user::daemon::config::DaemonConfig;

const EXAMPLE_CONFIG: &str = include_str!("../packaging/balancer.toml");
const UNIT: &str = include_str!("../packaging/balancer.service");

#[test]
fn example_configuration_is_valid() {
    let cfg = DaemonConfig::parse(EXAMPLE_CONFIG).expect("the example configuration parses");
    assert_eq!(cfg.daemon.interfaces, ["eth0", "eth1"]);
    assert_eq!(cfg.services.len(), 1);
    assert_eq!(cfg.services[0].backends.len(), 2);
}

#[test]
fn unit_runs_the_daemon_on_the_installed_configuration() {
    let line = |key: &str| {
        UNIT.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in the unit"))
    };
    assert_eq!(
        line("ExecStart="),
        "/usr/sbin/balancer daemon --config /etc/balancer/balancer.toml"
    );
    assert_eq!(line("ExecReload="), "/usr/sbin/balancer reload");
    assert_eq!(line("Restart="), "on-failure");
    assert_eq!(line("RuntimeDirectory="), "balancer");
}

//! Subcommands around the daemon: `daemon`, `reload`, `members`, `pairs`, `agent`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use balancer_user::{
    daemon::config::parse_duration,
    daemon::group::{self, AgentOptions, MemberView},
    daemon::pairs::PairInfo,
    daemon::{
        self,
        control_socket::{self, Command},
        DaemonOptions,
    },
};
use clap::Args;

use crate::print_list;

#[derive(Args)]
pub struct DaemonArgs {
    /// Configuration file (TOML; see the README, "Daemon").
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(Args)]
pub struct AgentArgs {
    /// This member's name in host messages.
    #[arg(long)]
    pub name: Option<String>,
    /// File with the shared group key (mode 0600, at least 32 characters).
    #[arg(long, value_name = "FILE")]
    pub group_key: PathBuf,
    /// Where to send host messages: the balancers' group addresses (repeat).
    #[arg(long = "send-to", value_name = "IP:PORT", required = true)]
    pub send_to: Vec<SocketAddr>,
    /// How often to send, e.g. 1s or 500ms.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// The app server's server-ID token (as written into session cookies).
    #[arg(long)]
    pub server_id: Option<String>,
    /// The token of the server that holds this one's replicated sessions.
    #[arg(long, requires = "server_id")]
    pub secondary: Option<String>,
    /// Address to announce (default: the first non-loopback IPv4 address).
    #[arg(long)]
    pub addr: Option<std::net::Ipv4Addr>,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn run_daemon(bpffs_root: PathBuf, run_dir: PathBuf, args: DaemonArgs) -> Result<()> {
    init_logging();
    let opts = DaemonOptions {
        config: args.config,
        bpffs_root,
        run_dir,
    };
    runtime()?.block_on(daemon::run(opts))?;
    Ok(())
}

pub fn run_agent(args: AgentArgs) -> Result<()> {
    init_logging();
    let opts = AgentOptions {
        name: args.name.unwrap_or_else(group::hostname),
        group_key: args.group_key,
        send_to: args.send_to,
        interval: args.interval,
        server_id: args.server_id,
        secondary: args.secondary,
        addr: args.addr,
    };
    runtime()?.block_on(group::run_agent(opts))?;
    Ok(())
}

fn ask(socket: &Path, cmd: Command) -> Result<serde_json::Value> {
    Ok(control_socket::request(socket, cmd)?)
}

pub fn reload(socket: &Path) -> Result<()> {
    let result = ask(socket, Command::Reload)?;
    println!("reloaded: {result}");
    Ok(())
}

pub fn members(socket: &Path, json: bool) -> Result<()> {
    let result = ask(socket, Command::Members)?;
    let members: Vec<MemberView> = serde_json::from_value(result["members"].clone())
        .context("reading the daemon's member table")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    print_list(
        &members,
        false,
        &[
            "NAME",
            "ROLE",
            "ADDR",
            "LAST-SEEN",
            "OFFSET",
            "TRUSTED",
            "UP",
            "SERVER-ID",
            "SECONDARY",
            "INTERFACES",
        ],
        |m| {
            vec![
                m.name.clone(),
                format!("{:?}", m.role).to_lowercase(),
                m.addr.to_string(),
                format!("{:.1}s", m.last_seen_s),
                format!("{}ms", m.time_offset_ms),
                if m.trusted { "yes" } else { "NO" }.into(),
                if m.up { "up" } else { "down" }.into(),
                m.server_id.clone().unwrap_or_else(|| "-".into()),
                m.secondary.clone().unwrap_or_else(|| "-".into()),
                m.interfaces
                    .iter()
                    .map(|i| format!("{}={}/{}", i.name, i.ip, i.prefix_len))
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        },
    )
}

pub fn pairs(socket: &Path, json: bool) -> Result<()> {
    let result = ask(socket, Command::Pairs)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    let pairs: Vec<PairInfo> =
        serde_json::from_value(result).context("reading the daemon's pairs")?;
    print_list(
        &pairs,
        false,
        &[
            "SERVICE",
            "PRIMARY",
            "SECONDARY",
            "SOURCE",
            "SAMPLES",
            "LAST-SEEN",
        ],
        |p| {
            vec![
                p.service.clone(),
                p.primary.clone(),
                p.secondary.clone(),
                format!("{:?}", p.source).to_lowercase(),
                p.samples.map_or("-".into(), |s| s.to_string()),
                p.last_seen_s.map_or("-".into(), |s| format!("{s:.1}s")),
            ]
        },
    )
}

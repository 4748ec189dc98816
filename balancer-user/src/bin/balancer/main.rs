//! `balancer`: the operator's CLI. Every admin command works from the pinned state of
//! one instance, so it needs no daemon; `daemon` runs the control plane, and `reload`,
//! `members` and `pairs` talk to it. Errors are printed on one line and exit non-zero.

mod daemon_cmds;
mod docs;

use std::{
    net::SocketAddrV4,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Result;
use balancer_common::{Config, Counter, DEFAULT_FLOW_CAPACITY, MAX_FLOW_TIMEOUT_S};
use balancer_user::{
    control::backend_health::HealthInfo,
    daemon::control_socket::{self, DEFAULT_RUN_DIR},
    dataplane::{self, DEFAULT_BPFFS_ROOT},
    model::{addr::parse_endpoint, secret},
    AttachOptions, BackendSpec, BackendState, Balancer, CookieSettings, Mode, Persistence, Proto,
    ServiceAddr, Weight,
};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "balancer",
    version,
    about = "XDP layer-4 load balancer appliance",
    arg_required_else_help = false,
    subcommand_required = true
)]
struct Cli {
    /// Instance name: selects the pin directory <bpffs-root>/<instance>.
    #[arg(long, global = true, default_value = "default")]
    instance: String,
    /// Directory on a bpffs mount that holds the instances.
    #[arg(long, global = true, default_value = DEFAULT_BPFFS_ROOT)]
    bpffs_root: PathBuf,
    /// Directory of the daemons' control sockets.
    #[arg(long, global = true, default_value = DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the data plane (or adopt the pinned one) and attach it to interfaces.
    Attach(AttachArgs),
    /// Detach from all interfaces and remove the instance's program, maps and pins.
    Detach,
    /// Show the instance: pin directory, interfaces, limits.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Manage virtual services (VIP:PORT/proto).
    // A missing subcommand is an error naming the choices, not the help page.
    #[command(subcommand, arg_required_else_help = false, subcommand_required = true)]
    Service(ServiceCmd),
    /// Manage a service's backends.
    #[command(subcommand, arg_required_else_help = false, subcommand_required = true)]
    Backend(BackendCmd),
    /// Show traffic counters from the pinned maps.
    Stats {
        #[arg(long)]
        json: bool,
        /// Repeat every SECONDS until interrupted.
        #[arg(long, value_name = "SECONDS")]
        watch: Option<u64>,
    },
    /// Install a new syncookie secret (the current one stays valid as the previous
    /// generation). Give every balancer node the same file so any node validates the
    /// others' syncookies.
    SyncookieKey {
        /// File with the key: 32 hexadecimal digits. Without it, a random key.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
    },
    /// List connections in the flow table.
    Flows {
        #[arg(long)]
        json: bool,
        /// Show at most this many flows.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Run the control plane: apply a configuration file, check health, fail over.
    /// The instance is the one the file names.
    Daemon(daemon_cmds::DaemonArgs),
    /// Make the running daemon re-read its configuration (like SIGHUP), and say
    /// whether it was applied or rejected.
    Reload,
    /// Show the daemon's group membership table.
    Members {
        #[arg(long)]
        json: bool,
    },
    /// Show the replication pairs the daemon knows, with their source.
    Pairs {
        #[arg(long)]
        json: bool,
    },
    /// Announce this host (an app server) to the balancers with signed host messages.
    Agent(daemon_cmds::AgentArgs),
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (balancer.1 and one per command) to DIR (used by packaging).
    #[command(hide = true)]
    ManPages {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Args)]
struct AttachArgs {
    /// Interface to attach to (repeat for client- and server-facing interfaces).
    #[arg(long = "iface", required = true, value_name = "IFNAME")]
    interfaces: Vec<String>,
    #[arg(long, value_enum, default_value_t = ModeArg::Native)]
    mode: ModeArg,
    /// Flow-table capacity in entries (two per connection); used when the maps are created.
    #[arg(long, default_value_t = DEFAULT_FLOW_CAPACITY)]
    flow_capacity: u32,
    /// Idle timeout of established TCP flows, seconds (1 to 604800, 7 days).
    #[arg(long, default_value_t = Config::default().tcp_established_timeout_s)]
    tcp_timeout: u32,
    /// Idle timeout of TCP flows in handshake or closing, seconds (1 to 604800).
    #[arg(long, default_value_t = Config::default().tcp_transient_timeout_s)]
    tcp_transient_timeout: u32,
    /// Idle timeout of UDP flows, seconds (1 to 604800).
    #[arg(long, default_value_t = Config::default().udp_timeout_s)]
    udp_timeout: u32,
    /// Attach an XDP_PASS program to the veth peer of every interface whose peer has
    /// none, entering the peer's namespace if needed: without one, frames sent back with
    /// XDP_TX (syncookie SYN-ACKs, RSTs) stall on the peer. For veth labs.
    #[arg(long)]
    veth_peer_pass: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Native,
    Generic,
}

#[derive(Args, Clone)]
struct ServiceRef {
    /// Service address, VIP:PORT.
    service: String,
    #[arg(long, default_value = "tcp")]
    proto: String,
}

impl ServiceRef {
    fn parse(&self) -> Result<ServiceAddr> {
        Ok(ServiceAddr::parse(
            &self.service,
            self.proto.parse::<Proto>()?,
        )?)
    }
}

#[derive(Subcommand)]
enum ServiceCmd {
    /// Add a service.
    Add {
        #[command(flatten)]
        service: ServiceRef,
        #[command(flatten)]
        cookie: CookieArgs,
        /// How new connections (cookie mode: those the policy binds) pick their backend:
        /// none (by connection), source (by client address) or source/PREFIX (by client
        /// network, e.g. source/24).
        #[arg(long, default_value = "none", value_name = "none|source[/PREFIX]")]
        persistence: String,
    },
    /// Change how a service's new connections pick their backend (see `service add
    /// --persistence`); connections already open keep theirs.
    Persistence {
        #[command(flatten)]
        service: ServiceRef,
        #[arg(value_name = "none|source[/PREFIX]")]
        persistence: String,
    },
    /// Remove a service and its backends (open connections keep their translation).
    Remove(ServiceRef),
    /// List services.
    List {
        #[arg(long)]
        json: bool,
    },
}

/// Cookie mode (delayed binding on the session cookie; see the README).
#[derive(Args)]
struct CookieArgs {
    /// Pin each connection to the server named in its session cookie
    /// (`NAME=<session>!<primary>!<secondary>`).
    #[arg(long)]
    cookie: bool,
    /// Cookie name (case-sensitive).
    #[arg(long, default_value = "JSESSIONID", requires = "cookie")]
    cookie_name: String,
    /// Character separating the segments of the cookie value.
    #[arg(long, default_value_t = '!', requires = "cookie")]
    cookie_delimiter: char,
    /// 1-based segment holding the primary server's id.
    #[arg(long, default_value_t = 2, requires = "cookie")]
    primary_segment: u8,
    /// 1-based segment holding the secondary server's id (0: none).
    #[arg(long, default_value_t = 3, requires = "cookie")]
    secondary_segment: u8,
}

impl CookieArgs {
    fn settings(&self) -> Option<CookieSettings> {
        self.cookie.then(|| CookieSettings {
            name: self.cookie_name.clone(),
            delimiter: self.cookie_delimiter,
            primary_segment: self.primary_segment,
            secondary_segment: self.secondary_segment,
        })
    }
}

#[derive(Args)]
struct BackendRef {
    #[command(flatten)]
    service: ServiceRef,
    /// Backend address, IP:PORT.
    backend: String,
}

#[derive(Subcommand)]
enum BackendCmd {
    /// Add a backend to a service.
    Add {
        #[command(flatten)]
        target: BackendRef,
        #[arg(long, default_value_t = Weight::DEFAULT.get())]
        weight: u32,
        /// Cookie-mode services: the server id the app server writes into the cookie.
        #[arg(long)]
        server_id: Option<String>,
    },
    /// Cookie mode: send the sessions of BACKEND (as primary) to another backend, the
    /// secondary holding their replicated state; `--clear` stops it.
    Failover {
        #[command(flatten)]
        target: BackendRef,
        /// The backend that takes the sessions.
        #[arg(
            long,
            value_name = "IP:PORT",
            conflicts_with = "clear",
            required_unless_present = "clear"
        )]
        to: Option<String>,
        #[arg(long)]
        clear: bool,
    },
    /// Remove a backend (its open connections keep their translation).
    Remove(BackendRef),
    /// Stop new flows to a backend; its open connections continue.
    Drain(BackendRef),
    /// Let a drained (or down) backend take new flows again.
    Undrain(BackendRef),
    /// Change a backend's weight (1..=10000).
    SetWeight {
        #[command(flatten)]
        target: BackendRef,
        weight: u32,
    },
    /// List backends (of one service, or all).
    List {
        /// Service address VIP:PORT (all services when omitted).
        service: Option<String>,
        #[arg(long, default_value = "tcp")]
        proto: String,
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version go to stdout as clap formats them.
        Err(e) if !e.use_stderr() => e.exit(),
        // Usage errors: one line saying what is wrong (clap's first line), like every
        // other error of this command.
        Err(e) => {
            let rendered = e.to_string();
            // clap's first paragraph is the message; usage and hints follow.
            let message: Vec<&str> = rendered
                .lines()
                .map(str::trim)
                .skip_while(|l| l.is_empty())
                .take_while(|l| !l.is_empty())
                .collect();
            eprintln!(
                "balancer: error: {} (see --help)",
                message.join(" ").trim_start_matches("error: ")
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = run(cli) {
        eprintln!("balancer: error: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// The error and its causes on one line, each cause once.
fn one_line(e: &anyhow::Error) -> String {
    balancer_user::error::one_line(e.as_ref())
}

fn run(cli: Cli) -> Result<()> {
    let Cli {
        instance,
        bpffs_root,
        run_dir,
        command,
    } = cli;
    let dir = dataplane::instance_dir(&bpffs_root, &instance)?;
    let socket = control_socket::socket_path(&run_dir, &instance);
    match command {
        Command::Attach(a) => {
            let opts = AttachOptions {
                interfaces: a.interfaces,
                mode: match a.mode {
                    ModeArg::Native => Mode::Native,
                    ModeArg::Generic => Mode::Generic,
                },
                flow_capacity: a.flow_capacity,
                config: Config {
                    tcp_established_timeout_s: flow_timeout("--tcp-timeout", a.tcp_timeout)?,
                    tcp_transient_timeout_s: flow_timeout(
                        "--tcp-transient-timeout",
                        a.tcp_transient_timeout,
                    )?,
                    udp_timeout_s: flow_timeout("--udp-timeout", a.udp_timeout)?,
                    ..Config::default()
                },
                veth_peer_pass: a.veth_peer_pass,
            };
            let report = dataplane::attach(&dir, &opts)?;
            println!(
                "attached instance '{}' to {}",
                instance,
                report.interfaces.join(", ")
            );
            for name in &report.peer_passes {
                println!("attached the veth peer pass program to the peer of {name}");
            }
            for warning in &report.warnings {
                eprintln!("warning: {warning}");
            }
        }
        Command::Detach => {
            let detached = dataplane::detach(&dir)?;
            println!(
                "detached instance '{}' from {}",
                instance,
                if detached.is_empty() {
                    "no interface".to_string()
                } else {
                    detached.join(", ")
                }
            );
        }
        Command::Status { json } => status(&Balancer::open(&dir)?, &instance, json)?,
        Command::Service(cmd) => service(&dir, cmd)?,
        Command::Backend(cmd) => backend(&dir, cmd)?,
        Command::Stats { json, watch } => {
            let b = Balancer::open(&dir)?;
            loop {
                print_stats(&b, json)?;
                match watch {
                    Some(s) => std::thread::sleep(Duration::from_secs(s.max(1))),
                    None => break,
                }
                if !json {
                    println!();
                }
            }
        }
        Command::SyncookieKey { file } => {
            let secret = match &file {
                Some(path) => secret::secret_from_file(path)?,
                None => secret::random_secret()?,
            };
            Balancer::open(&dir)?.rotate_syncookie_secret(secret)?;
            println!(
                "installed a new syncookie secret ({}); the previous one stays valid for cookies already sent",
                if file.is_some() { "from the key file" } else { "random" }
            );
        }
        Command::Flows { json, limit } => {
            let flows = Balancer::open(&dir)?.flows(limit)?;
            print_list(
                &flows,
                json,
                &[
                    "PROTO", "CLIENT", "SERVICE", "BACKEND", "STATE", "PHASE", "AGE_S", "IDLE_S",
                ],
                |f| {
                    vec![
                        f.proto.to_string(),
                        f.client.to_string(),
                        f.service.to_string(),
                        f.backend.to_string(),
                        f.state.to_string(),
                        f.phase.to_string(),
                        format!("{:.1}", f.age_s),
                        format!("{:.1}", f.idle_s),
                    ]
                },
            )?;
        }
        Command::Daemon(args) => daemon_cmds::run_daemon(bpffs_root, run_dir, args)?,
        Command::Reload => daemon_cmds::reload(&socket)?,
        Command::Members { json } => daemon_cmds::members(&socket, json)?,
        Command::Pairs { json } => daemon_cmds::pairs(&socket, json)?,
        Command::Agent(args) => daemon_cmds::run_agent(args)?,
        Command::Completions { shell } => docs::completions(shell)?,
        Command::ManPages { out } => docs::man_pages(&out)?,
    }
    Ok(())
}

fn flow_timeout(flag: &str, v: u32) -> Result<u32> {
    if v == 0 {
        anyhow::bail!("invalid {flag} '0': a timeout must be at least 1 second");
    }
    if v > MAX_FLOW_TIMEOUT_S {
        anyhow::bail!(
            "invalid {flag} '{v}': a timeout is at most {MAX_FLOW_TIMEOUT_S} seconds (7 days)"
        );
    }
    Ok(v)
}

fn status(b: &Balancer, instance: &str, json: bool) -> Result<()> {
    let interfaces = b.interfaces()?;
    let config = b.config()?;
    let services = b.services()?;
    let veth = b.veth_checks()?;
    if json {
        let v = serde_json::json!({
            "instance": instance,
            "pin_dir": b.dir(),
            "interfaces": interfaces,
            "veth_checks": veth,
            "services": services.len(),
            "tcp_timeout_s": config.tcp_established_timeout_s,
            "tcp_transient_timeout_s": config.tcp_transient_timeout_s,
            "udp_timeout_s": config.udp_timeout_s,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("instance:   {instance}");
        println!("pin dir:    {}", b.dir().display());
        println!(
            "interfaces: {}",
            if interfaces.is_empty() {
                "-".into()
            } else {
                interfaces.join(", ")
            }
        );
        println!("services:   {}", services.len());
        println!(
            "timeouts:   tcp {}s, tcp handshake/closing {}s, udp {}s",
            config.tcp_established_timeout_s, config.tcp_transient_timeout_s, config.udp_timeout_s
        );
        for check in &veth {
            let line = match (&check.peer, &check.warning, &check.error) {
                (_, _, Some(error)) => format!("could not check: {error}"),
                (_, Some(warning), _) => format!("WARNING {warning}"),
                (Some(peer), None, None) if check.peer_pass_pinned => format!(
                    "veth, peer {} has this instance's pass program",
                    peer.peer_name.as_deref().unwrap_or("?")
                ),
                (Some(peer), None, None) => format!(
                    "veth, peer {} has an XDP program",
                    peer.peer_name.as_deref().unwrap_or("?")
                ),
                (None, None, None) => "not a veth".into(),
            };
            println!("xdp_tx:     {}: {line}", check.interface);
        }
    }
    Ok(())
}

// The command functions parse and validate their arguments before opening the instance,
// so a bad argument is reported as such even where no instance is attached.

fn service(dir: &Path, cmd: ServiceCmd) -> Result<()> {
    match cmd {
        ServiceCmd::Add {
            service,
            cookie,
            persistence,
        } => {
            let addr = service.parse()?;
            let settings = cookie.settings();
            if let Some(s) = &settings {
                s.to_config()?;
            }
            let persistence: Persistence = persistence.parse()?;
            let info = Balancer::open(dir)?.add_service_opts(addr, settings, persistence)?;
            if info.persistence != Persistence::None {
                println!("persistence: {}", info.persistence);
            }
            match &info.cookie {
                Some(c) => println!(
                    "added service {} in cookie mode (cookie {}, delimiter '{}', primary segment {}, secondary segment {})",
                    info.service, c.name, c.delimiter, c.primary_segment, c.secondary_segment
                ),
                None => println!("added service {}", info.service),
            }
        }
        ServiceCmd::Persistence {
            service,
            persistence,
        } => {
            let addr = service.parse()?;
            let persistence: Persistence = persistence.parse()?;
            Balancer::open(dir)?.set_persistence(addr, persistence)?;
            println!("service {addr}: persistence {persistence}");
        }
        ServiceCmd::Remove(s) => {
            let addr = s.parse()?;
            Balancer::open(dir)?.remove_service(addr)?;
            println!("removed service {addr}");
        }
        ServiceCmd::List { json } => {
            let services = Balancer::open(dir)?.services()?;
            print_list(
                &services,
                json,
                &[
                    "SERVICE",
                    "MODE",
                    "BACKENDS",
                    "ACTIVE",
                    "COOKIE",
                    "PERSISTENCE",
                ],
                |s| {
                    vec![
                        s.service.to_string(),
                        s.mode.to_string(),
                        s.backends.to_string(),
                        s.active_backends.to_string(),
                        s.cookie
                            .as_ref()
                            .map(|c| {
                                format!(
                                    "{} '{}' {}/{}",
                                    c.name, c.delimiter, c.primary_segment, c.secondary_segment
                                )
                            })
                            .unwrap_or_else(|| "-".into()),
                        s.persistence.to_string(),
                    ]
                },
            )?;
        }
    }
    Ok(())
}

/// A backend command's service and backend address, validated.
fn backend_target(t: &BackendRef) -> Result<(ServiceAddr, SocketAddrV4)> {
    let service = t.service.parse()?;
    Ok((service, parse_endpoint("backend address", &t.backend)?))
}

fn backend(dir: &Path, cmd: BackendCmd) -> Result<()> {
    let info = match cmd {
        BackendCmd::Add {
            target,
            weight,
            server_id,
        } => {
            let (service, endpoint) = backend_target(&target)?;
            let mut spec = BackendSpec::new(endpoint, Weight::new(weight)?);
            spec.server_id = server_id;
            let info = Balancer::open(dir)?.add_backend(service, spec)?;
            println!("added backend {} to {}", info.backend, info.service);
            info
        }
        BackendCmd::Failover {
            target,
            to,
            clear: _,
        } => {
            let (service, endpoint) = backend_target(&target)?;
            let to = to
                .map(|to| parse_endpoint("backend address", &to))
                .transpose()?;
            Balancer::open(dir)?.set_failover(service, endpoint, to)?
        }
        BackendCmd::Remove(t) => {
            let (service, endpoint) = backend_target(&t)?;
            Balancer::open(dir)?.remove_backend(service, endpoint)?;
            println!("removed backend {endpoint} from {service}");
            return Ok(());
        }
        BackendCmd::Drain(t) => {
            let (service, endpoint) = backend_target(&t)?;
            Balancer::open(dir)?.set_backend_state(service, endpoint, BackendState::Draining)?
        }
        BackendCmd::Undrain(t) => {
            let (service, endpoint) = backend_target(&t)?;
            Balancer::open(dir)?.set_backend_state(service, endpoint, BackendState::Up)?
        }
        BackendCmd::SetWeight { target, weight } => {
            let (service, endpoint) = backend_target(&target)?;
            let weight = Weight::new(weight)?;
            Balancer::open(dir)?.set_backend_weight(service, endpoint, weight)?
        }
        BackendCmd::List {
            service,
            proto,
            json,
        } => {
            let filter = match service {
                Some(s) => Some(ServiceAddr::parse(&s, proto.parse::<Proto>()?)?),
                None => None,
            };
            let list = Balancer::open(dir)?.backends(filter)?;
            print_list(
                &list,
                json,
                &[
                    "SERVICE",
                    "BACKEND",
                    "STATE",
                    "WEIGHT",
                    "NEW-FLOW SHARE",
                    "SERVER-ID",
                    "FAILOVER-TO",
                    "HEALTH",
                    "CHECKS",
                    "FAILED",
                    "RESPONSE",
                    "CHANGED",
                ],
                |x| {
                    let mut row = vec![
                        x.service.to_string(),
                        x.backend.to_string(),
                        x.state.to_string(),
                        x.weight.to_string(),
                        format!("{:.1}%", x.table_share * 100.0),
                        x.server_id.clone().unwrap_or_else(|| "-".into()),
                        x.failover_to
                            .map_or_else(|| "-".into(), |to| to.to_string()),
                    ];
                    row.extend(health_cells(x.health.as_ref()));
                    row
                },
            )?;
            return Ok(());
        }
    };
    println!(
        "{} {}: state {}, weight {}, {:.1}% of new flows",
        info.service,
        info.backend,
        info.state,
        info.weight,
        info.table_share * 100.0
    );
    Ok(())
}

/// HEALTH, CHECKS, FAILED, RESPONSE and CHANGED cells of a backend ("-" if unchecked).
fn health_cells(h: Option<&HealthInfo>) -> Vec<String> {
    let Some(h) = h else {
        return vec!["-".into(); 5];
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    vec![
        h.health.to_string(),
        h.checks.to_string(),
        h.failures.to_string(),
        format!("{:.1}ms", h.response_s * 1e3),
        h.last_change_unix_s.map_or("never".into(), |t| {
            format!("{:.0}s ago", (now - t).max(0.0))
        }),
    ]
}

fn print_stats(b: &Balancer, json: bool) -> Result<()> {
    let stats = b.stats()?;
    if json {
        println!("{}", serde_json::to_string(&stats)?);
        return Ok(());
    }
    let rows = Counter::ALL
        .iter()
        .map(|c| {
            vec![
                c.label().to_string(),
                stats.get(*c).to_string(),
                c.help().to_string(),
            ]
        })
        .collect::<Vec<_>>();
    print_table(&["COUNTER", "VALUE", "MEANING"], &rows);
    println!();
    let rows = stats
        .backends
        .iter()
        .map(|x| {
            vec![
                x.service.clone(),
                x.backend.to_string(),
                x.state.to_string(),
                x.counters.new_flows.to_string(),
                x.counters.packets_to.to_string(),
                x.counters.bytes_to.to_string(),
                x.counters.packets_from.to_string(),
                x.counters.bytes_from.to_string(),
                x.health.as_ref().map_or("-", |h| h.health).to_string(),
            ]
        })
        .collect::<Vec<_>>();
    print_table(
        &[
            "SERVICE",
            "BACKEND",
            "STATE",
            "FLOWS",
            "PKTS_TO",
            "BYTES_TO",
            "PKTS_FROM",
            "BYTES_FROM",
            "HEALTH",
        ],
        &rows,
    );
    Ok(())
}

/// Prints a list as pretty JSON, or as a table with one row per item.
pub(crate) fn print_list<T: serde::Serialize>(
    items: &[T],
    json: bool,
    header: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(items)?);
    } else {
        print_table(header, &items.iter().map(row).collect::<Vec<_>>());
    }
    Ok(())
}

/// Prints rows under a header, columns padded to their widest cell.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    if rows.is_empty() {
        println!("(none)");
    }
}

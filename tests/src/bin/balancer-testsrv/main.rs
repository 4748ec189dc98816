//! `balancer-testsrv`: the reference HTTP/1.1 backend of the test bed.
//!
//! Every response names the server (`NAME\n` body and an `X-Backend: NAME` header), so a
//! client sees which backend served it. Routes:
//! - `GET /bytes/N`: N bytes of the deterministic pattern of `balancer_tests::http`
//!   (download tests);
//! - `GET /slow/MS`: waits MS milliseconds, then answers `NAME\n` (holds a request open);
//! - `GET /health`: `ok\n` (the balancer daemon's HTTP health check);
//! - anything else: `NAME\n`. A request body (Content-Length) is read and reported in
//!   `X-Body-Len` and `X-Body-Fnv` (64-bit FNV-1a, hex) (upload tests).
//!
//! A connection whose first byte is not an ASCII letter (a TLS ClientHello, ...) is not
//! HTTP: the server writes `NAME\n` and then echoes every byte it receives until the
//! client closes (tests of non-HTTP traffic see which backend got the bytes, and the
//! bytes themselves).
//!
//! Connections are kept alive (HTTP/1.1 default) unless the client sends
//! `Connection: close` (or speaks HTTP/1.0 without `Connection: keep-alive`).
//! One thread per connection; request parsing ([`read_request`]) and routing ([`route`])
//! are separate so that features such as sessions extend `route` and [`State`] only.
//!
//! **Session mode** (`--server-id ID --peer ID=IP:PORT ...`): a replicated app server, as
//! the balancer's cookie mode expects (the rules are in `balancer_tests::session`):
//! - `GET` or `POST /session` (or any path under `/session/`): increments the counter of
//!   the session named by the `JSESSIONID` cookie (a new session without one), copies the
//!   new state to a secondary peer and only then answers `200` with
//!   `{"server","session","counter","secondary","event","replayed"}` (`secondary` null
//!   when no peer took the copy; `event` new, continued, takeover or lost) and
//!   `Set-Cookie: JSESSIONID=<session>!<ID>!<secondary or NONE>; Path=/`. The cookie
//!   names this server as primary: after a takeover it is re-issued. A session that
//!   cannot be continued here is replaced by a new one with `X-Session-Lost: 1`; one that
//!   another server took over is answered `409` with `X-Session-Owner`. A request that
//!   repeats the session's last `X-Request-Id` is answered again without incrementing.
//! - `POST /_replicate`: a peer's session state (JSON [`Replica`]); `200` stored or
//!   already current, `409` (with `X-Session-Owner`) from a stale primary.
//! - `GET /_sessions`: counters (sessions held as primary and as replica, takeovers,
//!   lost, replications...); `GET /_sessions/SESSION`: what this server holds of one.
//!
//! Replication uses pooled keep-alive connections to the peers with a short timeout
//! (`--replicate-timeout-ms`); no lock is held while a replica is on the wire, so two
//! servers that are each other's secondary cannot deadlock.

mod http;
mod serve;
mod sessions;
#[cfg(test)]
mod tests;
use http::*;
use serve::*;
use sessions::*;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, BufWriter, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use balancer_tests::{
    http::{connection_has, fill_pattern, find_header, read_headers, read_line, Conn, Fnv64},
    session::{
        check_server_id, check_token, new_session_id, Begin, Event, Peer, Peers, Received, Replica,
        SecondaryChoice, SessionCookie, Stats, Store, Update, DEFAULT_COOKIE_NAME, FAIL_COOLDOWN,
    },
};
use clap::Parser;
use serde::Serialize;

/// Idle connections are closed after this long without a request.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Request bodies up to this size are kept in memory (for routes that need the content);
/// longer ones are only counted and digested.
const KEEP_BODY: u64 = 64 * 1024;
/// Largest `/slow/MS` wait.
const MAX_SLOW_MS: u64 = 600_000;
/// Idle replication connections kept per peer.
const MAX_POOLED: usize = 16;

#[derive(Parser)]
#[command(
    name = "balancer-testsrv",
    about = "Reference HTTP/1.1 backend for balancer tests"
)]
struct Args {
    /// Address to listen on, IP:PORT.
    #[arg(long)]
    listen: SocketAddr,
    /// Name this server answers with (body and `X-Backend`); defaults to --server-id.
    #[arg(long, required_unless_present = "server_id")]
    name: Option<String>,
    /// Session mode: the server id this server writes into session cookies (the token
    /// given to `balancer backend add --server-id`).
    #[arg(long, value_parser = parse_server_id)]
    server_id: Option<String>,
    /// Session mode: another app server that can hold replicas (repeat for each).
    #[arg(long = "peer", value_name = "ID=IP:PORT", requires = "server_id")]
    peers: Vec<Peer>,
    /// Session mode: name of the session cookie.
    #[arg(long, default_value = DEFAULT_COOKIE_NAME, value_parser = parse_cookie_name)]
    cookie_name: String,
    /// Session mode: what picks a session's secondary (`partner`: one peer for all of
    /// this server's sessions, as the balancer's per-backend failover expects;
    /// `session`: spread by session id).
    #[arg(long, value_enum, default_value_t = SecondaryChoice::Partner)]
    secondary_choice: SecondaryChoice,
    /// Session mode: how long a peer has to connect and acknowledge a replica.
    #[arg(long, default_value_t = 300, value_name = "MS")]
    replicate_timeout_ms: u64,
}

fn parse_server_id(s: &str) -> Result<String, String> {
    check_server_id(s).map(|()| s.to_string())
}

/// A cookie name: 1-31 HTTP token characters (as the balancer's `--cookie-name`).
fn parse_cookie_name(s: &str) -> Result<String, String> {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if (1..=31).contains(&s.len()) && s.chars().all(tchar) {
        Ok(s.to_string())
    } else {
        Err(format!("cookie name {s:?}: 1-31 token characters"))
    }
}

/// Shared by all connections of the server.
struct State {
    name: String,
    requests: AtomicU64,
    /// Present in session mode.
    sessions: Option<Sessions>,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("balancer-testsrv: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let listener =
        TcpListener::bind(args.listen).with_context(|| format!("listening on {}", args.listen))?;
    let sessions = match &args.server_id {
        Some(id) => Some(Sessions::new(id, &args)?),
        None => None,
    };
    let state = Arc::new(State {
        name: args.name.or(args.server_id).expect("clap requires one"),
        requests: AtomicU64::new(0),
        sessions,
    });
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            // Transient accept failures (e.g. the peer reset before accept, fd pressure):
            // keep serving.
            Err(e) => {
                eprintln!("balancer-testsrv: accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let state = Arc::clone(&state);
        std::thread::spawn(move || {
            if let Err(e) = serve(&state, stream) {
                if !is_timeout_or_reset(&e) {
                    eprintln!("balancer-testsrv: connection: {e}");
                }
            }
        });
    }
    Ok(())
}

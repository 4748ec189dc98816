//! The daemon's control socket: how `balancer reload`, `balancer members` and
//! `balancer pairs` reach a running daemon.
//!
//! A Unix stream socket at `<run dir>/<instance>.sock`, in a directory only root can
//! enter, and itself mode 0600: whoever can talk to it can reconfigure the balancer.
//! One request per connection: a JSON line `{"cmd":"reload"}`, answered with a JSON
//! line `{"ok":true,"result":...}` or `{"ok":false,"error":"..."}`. Binding it also
//! tells whether another daemon runs for the same instance.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};
use tracing::debug;

use crate::error::{io_ctx, Error, Result};

/// Where control sockets live unless `--run-dir` says otherwise.
pub const DEFAULT_RUN_DIR: &str = "/run/balancer";
/// Longest request line accepted.
const MAX_REQUEST: u64 = 4096;
/// How long a client waits for the daemon (a reload applies a whole configuration).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    /// Re-read the configuration file and apply it.
    Reload,
    /// The group membership table.
    Members,
    /// The replication pairs.
    Pairs,
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    cmd: Command,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

impl Response {
    pub fn ok(result: serde_json::Value) -> Response {
        Response {
            ok: true,
            error: None,
            result: Some(result),
        }
    }

    pub fn err(error: impl ToString) -> Response {
        Response {
            ok: false,
            error: Some(error.to_string()),
            result: None,
        }
    }
}

/// A request handed to the daemon's main loop, with where to send the answer.
pub type Pending = (Command, oneshot::Sender<Response>);

/// Path of an instance's control socket.
pub fn socket_path(run_dir: &Path, instance: &str) -> PathBuf {
    run_dir.join(format!("{instance}.sock"))
}

/// Binds the control socket. Fails if a daemon already answers on it; a socket file
/// left by a daemon that died is replaced.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_ctx(format!("creating {}", dir.display())))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_ctx(format!("restricting {}", dir.display())))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::invalid(
                "control socket",
                path.display(),
                "another balancer daemon is running for this instance",
            ));
        }
        std::fs::remove_file(path).map_err(io_ctx(format!("removing stale {}", path.display())))?;
    }
    let listener =
        UnixListener::bind(path).map_err(io_ctx(format!("binding {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_ctx(format!("restricting {}", path.display())))?;
    Ok(listener)
}

/// Removes the control socket's file when the daemon ends, also on an error after it
/// was bound, so no dead socket is left for the CLI to find.
pub struct SocketFile(pub PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Accepts requests and forwards them to the main loop until it goes away.
pub async fn serve(listener: UnixListener, to_daemon: mpsc::Sender<Pending>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let to_daemon = to_daemon.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, to_daemon).await {
                debug!("control socket: {e}");
            }
        });
    }
}

async fn handle(stream: UnixStream, to_daemon: mpsc::Sender<Pending>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::BufReader::new(read.take(MAX_REQUEST)).read_line(&mut line),
    )
    .await;
    let response = match read {
        Ok(Ok(_)) => match serde_json::from_str::<Request>(line.trim()) {
            Ok(req) => {
                let (tx, rx) = oneshot::channel();
                if to_daemon.send((req.cmd, tx)).await.is_err() {
                    Response::err("the daemon is shutting down")
                } else {
                    rx.await
                        .unwrap_or_else(|_| Response::err("the daemon dropped the request"))
                }
            }
            Err(e) => Response::err(format!("bad request: {e}")),
        },
        Ok(Err(e)) => Response::err(format!("reading the request: {e}")),
        Err(_) => Response::err("request not received within 5 s"),
    };
    let mut out = serde_json::to_vec(&response).unwrap_or_default();
    out.push(b'\n');
    write.write_all(&out).await
}

/// Sends one command to the daemon of an instance and returns its result.
pub fn request(path: &Path, cmd: Command) -> Result<serde_json::Value> {
    let not_running = |e: std::io::Error| {
        Error::Daemon(if e.kind() == std::io::ErrorKind::PermissionDenied {
            format!(
                "the control socket {} is root-only: run as root",
                path.display()
            )
        } else {
            format!(
                "no balancer daemon answers on {} ({e}); is it running?",
                path.display()
            )
        })
    };
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(not_running)?;
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(io_ctx("control socket"))?;
    let mut line = serde_json::to_vec(&Request { cmd }).unwrap_or_default();
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(io_ctx("writing to the control socket"))?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(io_ctx("reading the daemon's answer"))?;
    let response: Response = serde_json::from_str(answer.trim())
        .map_err(|e| Error::invalid("daemon answer", answer.trim(), e.to_string()))?;
    match response {
        Response {
            ok: true, result, ..
        } => Ok(result.unwrap_or(serde_json::Value::Null)),
        Response { error, .. } => Err(Error::Daemon(
            error.unwrap_or_else(|| "request failed".into()),
        )),
    }
}

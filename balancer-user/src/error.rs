//! Errors of the control-plane library. Each says what is wrong in words an operator can
//! act on; the CLI prints them on one line.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("must run as root (effective uid {0}): the data plane is managed through bpffs and BPF syscalls")]
    NotRoot(u32),
    #[error("instance '{instance}' is not attached: no pinned data plane at {}", path.display())]
    NotAttached { instance: String, path: PathBuf },
    #[error("service {0} does not exist")]
    UnknownService(String),
    #[error("service {0} already exists")]
    DuplicateService(String),
    #[error("backend {backend} already exists in service {service}")]
    DuplicateBackend { service: String, backend: String },
    #[error("backend {backend} is not in service {service}")]
    UnknownBackend { service: String, backend: String },
    #[error("invalid {what} '{value}': {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("no room for another service (limit {0})")]
    ServicesFull(u32),
    #[error("no room for another backend (limit {0} across all services)")]
    BackendsFull(u32),
    #[error("interface '{0}' does not exist in this network namespace")]
    UnknownInterface(String),
    #[error("interface '{0}' is already attached to this instance")]
    AlreadyAttached(String),
    #[error("{context}: {source}")]
    Map {
        context: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("{context}: {source}")]
    Program {
        context: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    /// An error of a layer above this library (the daemon's configuration or group
    /// messages): those layers convert their own errors into this one, so the library
    /// does not depend on them.
    #[error(transparent)]
    Upper(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// The daemon refused or could not do something; the message says what.
    #[error("{0}")]
    Daemon(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn invalid(what: &'static str, value: impl ToString, reason: impl ToString) -> Self {
        Error::Invalid {
            what,
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// An error and its causes on one line, each cause once: error types here print their
/// source in their own message, and a cause already said is not repeated.
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// Adds a context string to map errors: `map_err(ctx("reading BACKENDS"))`.
pub(crate) fn map_ctx(context: impl Into<String>) -> impl FnOnce(aya::maps::MapError) -> Error {
    let context = context.into();
    move |source| Error::Map { context, source }
}

pub(crate) fn io_ctx(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

pub(crate) fn prog_ctx(
    context: impl Into<String>,
) -> impl FnOnce(aya::programs::ProgramError) -> Error {
    let context = context.into();
    move |source| Error::Program { context, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_says_each_cause_once() {
        let e = io_ctx("reading /x")(std::io::Error::other("no such file"));
        assert_eq!(one_line(&e), "reading /x: no such file");
        let nested = Error::Upper(Box::new(io_ctx("reading /y")(std::io::Error::other(
            "gone",
        ))));
        assert_eq!(one_line(&nested), "reading /y: gone");
    }
}

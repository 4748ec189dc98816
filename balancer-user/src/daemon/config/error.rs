//! Why a configuration was rejected, said in one line.

use std::{fmt, path::PathBuf};

/// Why a configuration was rejected. The `Display` form is one line that says where
/// (file, line and column, or the service and backend) and what is wrong.
///
/// No variant exposes a `source()`: the cause is already in the message, and error
/// chains printed with ": " between links would repeat it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// TOML syntax, or a value of the wrong type, a missing or an unknown key.
    #[error("{}", toml_message(*position, message))]
    Toml {
        /// 1-based line and column, when the parser knows them.
        position: Option<(usize, usize)>,
        message: String,
    },
    /// A well-formed file whose content is not acceptable.
    #[error("{at}: {message}")]
    Invalid { at: String, message: String },
    /// Any of the above, in a named file.
    #[error("{}: {inner}", path.display())]
    InFile {
        path: PathBuf,
        inner: Box<ConfigError>,
    },
}

/// The daemon's configuration errors travel through the library's one `Result` (the library
/// sits below the daemon and does not know this type).
impl From<ConfigError> for crate::Error {
    fn from(e: ConfigError) -> Self {
        crate::Error::Upper(Box::new(e))
    }
}

fn toml_message(position: Option<(usize, usize)>, message: &str) -> String {
    match position {
        Some((line, column)) => format!("line {line}, column {column}: {message}"),
        None => message.to_string(),
    }
}

pub(super) fn invalid(at: impl fmt::Display, message: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        at: at.to_string(),
        message: message.to_string(),
    }
}

impl ConfigError {
    pub(super) fn from_toml(text: &str, e: &toml::de::Error) -> ConfigError {
        let position = e.span().map(|span| line_column(text, span.start));
        // Some parser messages span several lines; the operator gets one.
        let message = e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        ConfigError::Toml { position, message }
    }
}

/// 1-based line and column (in characters) of byte offset `at` in `text`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..text.floor_char_boundary(at.min(text.len()))];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

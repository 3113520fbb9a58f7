//! Typed errors of the library.
//!
//! Each variant says what failed and on which object or path; the CLI adds a hint and maps the
//! [`ErrorKind`] to a documented exit code. No variant ever carries a secret.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The broad class of a failure, used for exit codes and for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad configuration or arguments.
    Config,
    /// The named backup does not exist in the store.
    NotFound,
    /// The passphrase does not open the backup.
    WrongPassphrase,
    /// The backup is damaged, truncated or disagrees with its manifest.
    Corrupt,
    /// A safety rule refused the operation (server_name mismatch, Synapse running, lock held…).
    Refused,
    /// The object store could not be reached or refused the request.
    Storage,
    /// The user interrupted the operation.
    Interrupted,
    /// Local I/O or anything else.
    Other,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),

    #[error("backup {id} was not found in {store}")]
    NotFound { id: String, store: String },

    #[error("the passphrase does not open backup {id} (wrong passphrase, not an OpenPGP backup made with a passphrase, or damaged in its first bytes)")]
    WrongPassphrase { id: String },

    #[error("backup {id} is damaged: {detail}")]
    Corrupt { id: String, detail: String },

    #[error("refused: {0}")]
    Refused(String),

    #[error("object store {store}: {detail}")]
    Storage { store: String, detail: String },

    #[error("interrupted; nothing was changed")]
    Interrupted,

    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config(_) => ErrorKind::Config,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::WrongPassphrase { .. } => ErrorKind::WrongPassphrase,
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::Refused(_) => ErrorKind::Refused,
            Error::Storage { .. } => ErrorKind::Storage,
            Error::Interrupted => ErrorKind::Interrupted,
            Error::Io { .. } | Error::Other(_) => ErrorKind::Other,
        }
    }

    /// Wraps an I/O error with the action and the path it concerned.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub fn config(message: impl Into<String>) -> Self {
        Error::Config(message.into())
    }

    pub fn corrupt(id: &str, detail: impl Into<String>) -> Self {
        Error::Corrupt {
            id: id.to_string(),
            detail: detail.into(),
        }
    }
}

/// Adds a path and an action to a bare `io::Result`.
pub trait IoContext<T> {
    fn at(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(action, path, e))
    }
}

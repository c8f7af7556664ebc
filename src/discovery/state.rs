//! Errors from reading a runtime's on-disk state. Each names the file (or
//! directory) it is about, so a log line is enough to go and look.

use std::io;
use std::path::{Path, PathBuf};

use super::bolt::BoltError;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Bolt(#[from] BoltError),
    #[error("{}: {what}: {source}", path.display())]
    Json {
        path: PathBuf,
        what: String,
        source: serde_json::Error,
    },
    #[error("{}: {what}", path.display())]
    Missing { path: PathBuf, what: String },
    #[error("{}: {problem}", path.display())]
    Invalid { path: PathBuf, problem: String },
    #[error("`{0}` is not a valid containerd namespace or container id")]
    BadIdentifier(String),
}

impl StateError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        StateError::Io {
            path: path.to_owned(),
            source,
        }
    }

    pub(crate) fn json(path: &Path, what: impl Into<String>, source: serde_json::Error) -> Self {
        StateError::Json {
            path: path.to_owned(),
            what: what.into(),
            source,
        }
    }

    pub(crate) fn missing(path: &Path, what: impl Into<String>) -> Self {
        StateError::Missing {
            path: path.to_owned(),
            what: what.into(),
        }
    }

    pub(crate) fn invalid(path: &Path, problem: impl Into<String>) -> Self {
        StateError::Invalid {
            path: path.to_owned(),
            problem: problem.into(),
        }
    }
}

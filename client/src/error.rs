//! The library's typed errors: what can stop a run from starting or from
//! writing its report. Failures of single messages are not errors: they are
//! counted in the report.

use std::path::PathBuf;

/// Why a run could not start or could not write its report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or config value is invalid; the text names the flag.
    #[error("{0}")]
    Config(String),
    /// The server did not accept a connection within the retry budget.
    #[error("cannot reach {url} after {attempts} attempt(s) over {seconds:.1} s: {last}")]
    Unreachable {
        url: String,
        attempts: u32,
        seconds: f64,
        last: String,
    },
    /// Stopped (Ctrl-C) before the first message was sent.
    #[error("interrupted before the run started")]
    Interrupted,
    /// A report file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A chart could not be drawn.
    #[error("cannot draw {path}: {detail}")]
    Chart { path: PathBuf, detail: String },
    /// A thread could not be started (the OS refused; usually a ulimit).
    #[error("cannot start thread {name}: {source}")]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

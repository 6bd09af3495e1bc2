//! The library's typed errors, all here so that the modules that return
//! them and the ones that wrap them never import each other: what can stop
//! a run from starting or from writing its report ([`Error`]), why a
//! connection could not be opened ([`ConnectError`]), why a flag value is
//! not a URL or a duration. Failures of single messages are not errors:
//! they are counted in the report.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Why a run could not start or could not write its report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or config value is invalid; the text names the flag.
    #[error("{0}")]
    Config(String),
    /// A `--url` value is not a server address.
    #[error("--url {text}: {source}")]
    Url {
        text: String,
        #[source]
        source: EndpointError,
    },
    /// The server did not accept a connection within the retry budget;
    /// `last` is why the last attempt failed.
    #[error("cannot reach {url} after {attempts} attempt(s) over {seconds:.1} s: {last}")]
    Unreachable {
        url: String,
        attempts: u32,
        seconds: f64,
        last: ConnectError,
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
    /// A thread the run needs panicked (a bug, not a run condition).
    #[error("the {thread} thread panicked")]
    Panicked { thread: &'static str },
    /// A thread could not be started (the OS refused; usually a ulimit).
    #[error("cannot start thread {name}: {source}")]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why a `--url` value is not a server address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("wss:// is not supported (the client is built without TLS)")]
    Tls,
    #[error("expected a ws:// URL, got {0:?}")]
    NotWebSocket(String),
    #[error("no host in {0:?}")]
    NoHost(String),
    #[error("bad host:port {authority:?} in {text:?}")]
    BadAuthority { authority: String, text: String },
}

/// A duration flag's value that is not one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("expected a duration such as 500ms, 5s, 1.5s or 2m, got {0:?}")]
pub struct DurationError(pub String);

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server's name did not resolve.
    #[error("cannot resolve {authority}: {source}")]
    Resolve {
        authority: String,
        #[source]
        source: io::Error,
    },
    /// The name resolved to no address.
    #[error("no address for {authority}")]
    NoAddress { authority: String },
    /// The last address tried refused, failed or timed out (`TimedOut`
    /// also when the connect deadline passed before it was tried).
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// TCP_NODELAY or a socket timeout could not be set.
    #[error("socket setup: {0}")]
    Socket(#[source] io::Error),
    /// The WebSocket handshake did not finish before the connect deadline.
    #[error("handshake with {url}: timed out")]
    HandshakeTimeout { url: String },
    /// The server refused the upgrade (e.g. `HTTP 404` for a bad room) or
    /// broke the handshake.
    #[error("handshake with {url}: {}", describe(.source))]
    Handshake {
        url: String,
        #[source]
        source: tungstenite::Error,
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

/// A tungstenite error as a person reads it (`HTTP 404`, `connection closed`).
pub(crate) fn describe(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            "connection closed".into()
        }
        tungstenite::Error::Io(e) => e.to_string(),
        tungstenite::Error::Http(resp) => format!("HTTP {}", resp.status()),
        other => other.to_string(),
    }
}

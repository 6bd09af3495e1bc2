//! The library's typed errors, all here so that the modules that return
//! them and the ones that wrap them never import each other: what can stop
//! a run from starting or from writing its report ([`Error`]), why a
//! connection could not be opened ([`ConnectError`]), why a flag value is
//! not a URL, a duration or a query parameter, and why the read API gave
//! no document ([`ApiError`]). Failures of single messages are not
//! errors: they are counted in the report.

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
    /// An `--api-url` value is not a read-API address.
    #[error("--api-url {text}: {source}")]
    ApiUrl {
        text: String,
        #[source]
        source: ApiUrlError,
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

/// Why an `--api-url` value is not a read-API address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiUrlError {
    #[error("https:// is not supported (the client is built without TLS)")]
    Tls,
    #[error("expected an http:// URL, got {0:?}")]
    NotHttp(String),
    #[error("no host in {0:?}")]
    NoHost(String),
    #[error("bad host:port {authority:?} in {text:?}")]
    BadAuthority { authority: String, text: String },
    #[error("a query or fragment does not belong in the API's base URL {0:?} (use --param)")]
    Query(String),
}

/// A `--param` value that is not `KEY=VALUE`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("expected KEY=VALUE, got {0:?}")]
    NoEquals(String),
    #[error("the key of {0:?} is empty; expected KEY=VALUE")]
    EmptyKey(String),
    #[error("the key {0:?} is not a parameter name (letters, digits, '_', '-' or '.')")]
    BadKey(String),
}

/// Why the read API gave no document. Only these end `chatflow-client
/// metrics` with an error; a part of a document that holds `"error"` is
/// shown as that error instead.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No connection: refused, no route, unknown host.
    #[error("cannot reach the API at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// Connected (or still connecting) but no whole answer in time.
    #[error("no answer from {url} within {seconds:.1} s (--api-timeout): {phase} timed out")]
    Timeout {
        url: String,
        seconds: f64,
        phase: String,
    },
    /// An error status with the API's `{"error", "parameter"}` body, or
    /// whatever body came with it.
    #[error("{url}: HTTP {status}: {error}{}", refusal_detail(.parameter, .flag, .retry_after_seconds))]
    Status {
        url: String,
        status: u16,
        error: String,
        /// The query parameter the API blames (400), if any.
        parameter: Option<String>,
        /// The flag that set that parameter (`--room`, `--param`), if we sent it.
        flag: Option<String>,
        /// The API's `retryAfterSeconds` (503).
        retry_after_seconds: Option<f64>,
    },
    /// A 200 whose body is not a JSON object.
    #[error("{url}: the answer is not a JSON document: {detail}")]
    BadBody { url: String, detail: String },
}

impl ApiError {
    /// The exit status of `chatflow-client metrics` for this error: 2 when
    /// the API refused the parameters the user gave (400), 1 otherwise
    /// (unreachable, timed out, 503, 504, an unexpected answer).
    pub fn exit_code(&self) -> u8 {
        match self {
            ApiError::Status { status: 400, .. } => 2,
            _ => 1,
        }
    }
}

/// The parenthesised tail of a refusal: which parameter, set by which
/// flag, and when to retry.
fn refusal_detail(
    parameter: &Option<String>,
    flag: &Option<String>,
    retry_after: &Option<f64>,
) -> String {
    let mut parts = Vec::new();
    match (parameter, flag) {
        (Some(p), Some(f)) => parts.push(format!("parameter {p}, set by {f}")),
        (Some(p), None) => parts.push(format!("parameter {p}")),
        _ => {}
    }
    if let Some(s) = retry_after {
        parts.push(format!("retry after {s} s"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join("; "))
    }
}

/// Why a schedule stage (`--rate` with its length, or one `--ramp`
/// stage) is refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum StageError {
    #[error("the rate {0} is not a number of messages per second above zero (at most 10,000,000)")]
    BadRate(f64),
    #[error("the duration is zero")]
    ZeroDuration,
    #[error("{rate} msgs/s for {seconds} s schedules no message")]
    Empty { rate: f64, seconds: f64 },
    #[error("{messages} messages is more than a run schedules (at most 10,000,000,000)")]
    TooMany { messages: u64 },
}

/// Why a `--ramp` value is refused: the stage at fault as written (1-based)
/// and why.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RampError {
    #[error("no stages; expected RATE:DURATION[,RATE:DURATION...], e.g. 1000:30s,5000:60s")]
    Empty,
    #[error("stage {number} {text:?}: {problem}; expected RATE:DURATION, e.g. 1000:30s")]
    Stage {
        number: usize,
        text: String,
        problem: String,
    },
    #[error("{count} stages; at most {max}")]
    TooManyStages { count: usize, max: usize },
}

/// A `--rate` value that is not a rate.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("expected messages per second, a number above zero such as 1000 or 2.5, got {0:?}")]
pub struct RateError(pub String);

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
    /// The socket could not be bound to its source address (not an
    /// address of this host, or its ephemeral ports are used up).
    #[error("bind to {addr}: {error}")]
    Bind {
        addr: std::net::IpAddr,
        #[source]
        error: io::Error,
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

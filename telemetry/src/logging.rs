//! Logs: `tracing` events written by `tracing-subscriber` to stderr, with
//! a timestamp (RFC 3339, UTC), level, thread name and target, filtered by
//! `RUST_LOG` (default `info`), as text or one JSON object per line
//! (`--log-format` / `LOG_FORMAT`). journald or a log shipper takes
//! stderr as it is.
//!
//! Nothing on a per-message path logs: events are start-up, connection
//! and outage changes, shutdown steps, and refusals that a
//! [`RateLimit`] keeps to a few lines a second however many there are.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `threadName`,
    /// `target`, `fields`).
    Json,
}

/// The log flags both binaries flatten into their arguments.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct LogArgs {
    /// Log format: text or json. Which events are written is RUST_LOG's
    /// (e.g. `info`, `chatflow_server=debug,info`; default info).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Why logging could not be set up.
#[derive(Debug)]
pub enum LogInitError {
    /// RUST_LOG does not parse.
    Filter(String),
}

impl std::fmt::Display for LogInitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogInitError::Filter(why) => write!(f, "RUST_LOG is not a valid filter: {why}"),
        }
    }
}

impl std::error::Error for LogInitError {}

/// Installs the process's subscriber (once; later calls do nothing, so a
/// test binary may call it from every test). A malformed RUST_LOG is an
/// error naming it, not a silent default.
pub fn init(args: &LogArgs) -> Result<(), LogInitError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => {
            EnvFilter::try_new(&spec).map_err(|e| LogInitError::Filter(e.to_string()))?
        }
        _ => EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_thread_names(true)
        .with_target(true);
    let _already_set = match args.log_format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    Ok(())
}

/// Lets one event through per `every` and counts the rest, for logs that
/// could otherwise flood (slow readers disconnected by the thousand). Owned
/// by one thread: no atomics.
#[derive(Debug)]
pub struct RateLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    pub fn new(every: Duration) -> Self {
        RateLimit {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)`: log now, and say `n` more happened since the last line;
    /// `None`: stay quiet (counted).
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_rest_counted() {
        let mut limit = RateLimit::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(limit.allow(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(limit.allow(t0 + Duration::from_millis(i * 100)), None);
        }
        assert_eq!(limit.allow(t0 + Duration::from_millis(1000)), Some(5));
        assert_eq!(limit.allow(t0 + Duration::from_millis(1001)), None);
    }
}

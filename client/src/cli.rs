//! The whole command line: a load run (no subcommand: the flags of
//! [`Args`]) or `chatflow-client metrics` ([`MetricsArgs`]). Only the
//! dispatch lives here; each side's flags and checks are in its own module.

use clap::{Parser, Subcommand};

use crate::config::{Args, RUN_EXIT_STATUS};
use crate::metrics::request::MetricsArgs;

/// A load run's flags, or a subcommand. A run's flags before a subcommand
/// are refused, so `chatflow-client -n 10 metrics` cannot silently drop `-n`.
#[derive(Debug, Parser)]
#[command(
    name = "chatflow-client",
    version,
    about = "ChatFlow load tester: warm-up then main phase over WebSocket, closed loop or open loop (--rate/--ramp: messages at their scheduled times, latency also from those times), ack and delivery latency, CSV, summary.json, .hgrm histograms, metrics.json and SVG charts; --connections-only for connection-count tests. `chatflow-client metrics` shows a server's GET /api/metrics.",
    after_help = RUN_EXIT_STATUS,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: Args,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch GET /api/metrics and print it as tables (or --json).
    Metrics(MetricsArgs),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_interface_is_unchanged_beside_the_metrics_subcommand() {
        // No subcommand: the run's flags as before; `metrics`: its own flags;
        // run flags before `metrics` are refused rather than dropped.
        let cli =
            Cli::try_parse_from(["chatflow-client", "-n", "1000", "--url", "ws://h:1"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.run.messages, Some(1000));
        assert_eq!(cli.run.urls, ["ws://h:1"]);
        let cli = Cli::try_parse_from(["chatflow-client", "metrics", "--room", "5"]).unwrap();
        match cli.command {
            Some(Command::Metrics(m)) => assert_eq!(m.room, Some(5)),
            None => panic!("expected the metrics subcommand"),
        }
        assert!(Cli::try_parse_from(["chatflow-client", "-n", "10", "metrics"]).is_err());
        assert!(Cli::try_parse_from(["chatflow-client", "metrics", "-n", "10"]).is_err());
    }
}

//! `chatflow-client`: ChatFlow's blocking load tester. Std threads, one
//! blocking WebSocket per sender thread, crossbeam channels, HdrHistogram;
//! no async runtime.
//!
//! A run: preflight (every server reachable?), a warm-up phase (short-lived
//! connections), a main phase (persistent connections, `window` messages in
//! flight each; closed loop, or open loop on a [`schedule`] with latency
//! also from each message's intended send time), then a report: text
//! summary, `summary.json`, a per-message CSV, `.hgrm` histograms and SVG
//! charts, and the read API's document for the run's window with the
//! stored count beside the acked one. It measures ack latency (send → ack)
//! and delivery latency (send → the message's broadcast back on the
//! sender's connection). [`hold`] is the other kind of run: idle
//! connections held, and broadcast delivery to them measured.
//!
//! Layout:
//! - [`config`]: a run's flags → validated [`Config`]; the [`Endpoint`] and [`ApiUrl`] addresses;
//! - [`cli`]: the command line: a run or the `metrics` subcommand;
//! - [`schedule`]: an open loop's stages and each message's intended send time;
//! - [`generator`]: the seeded message generator thread and its lanes
//!   (paced by the schedule in an open loop);
//! - [`wire`]: client frames written straight into the output buffer, server frames scanned;
//! - [`connection`]: one blocking WebSocket (connect, flush, blocking or draining reads);
//! - [`error`]: every typed error ([`Error`], [`ConnectError`], [`ApiError`], flag values);
//! - [`breaker`]: the per-server circuit breaker shared by all threads;
//! - [`refusals`]: whether a server is refusing messages (`UNAVAILABLE`),
//!   and its outages;
//! - [`sender`]: a sender thread (window, retries, ack matching, deliveries);
//! - [`delivery`]: matching broadcasts to acked messages by id;
//! - [`latency`]: per-thread histograms and their summaries;
//! - [`hgrm`]: HdrHistogram's `.hgrm` percentile-distribution text;
//! - [`csv`]: the per-message record, the CSV writer thread and the
//!   open loop's per-stage counts;
//! - [`report`]: `summary.json` and the text summary;
//! - [`charts`]: the SVG charts (phases, outages and error bursts marked);
//! - [`progress`]: the progress bar or plain progress lines;
//! - [`threads`]: named threads, SCHED_BATCH and CPU pinning;
//! - [`metrics`]: the read API's `/api/metrics` document: fetched (`ureq`),
//!   read tolerantly, shown as tables (`chatflow-client metrics`), and
//!   polled at a run's end until the stored count settles (`metrics.json`);
//! - [`run`](mod@run): one run from preflight to report;
//! - [`hold`]: `--connections-only`, a connection-count test (openers,
//!   mio holder threads, paced probes, its own report).
//!
//! Retry delays (sender retries and reconnects, preflight) come from the
//! workspace's one jittered back-off, `chatflow_broker::retry::Backoff`.

pub mod breaker;
pub mod charts;
pub mod cli;
pub mod config;
pub mod connection;
pub mod csv;
pub mod delivery;
pub mod error;
pub mod generator;
pub mod hgrm;
pub mod hold;
pub mod latency;
pub mod metrics;
pub mod progress;
pub mod refusals;
pub mod report;
pub mod run;
pub mod schedule;
pub mod sender;
pub mod threads;
pub mod wire;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub use cli::{Cli, Command};
pub use config::{ApiUrl, Args, Config, Endpoint, HoldConfig, PinMode, ProgressMode};
pub use error::{ApiError, ConnectError, DurationError, EndpointError, Error, Result};
pub use hold::HoldReport;
pub use metrics::request::{MetricsArgs, MetricsRequest};
pub use report::{MetricsReport, Report, RunOutcome};
pub use run::run_until;

/// Runs a load test to the end and writes its report (see [`run_until`] to
/// stop it early, e.g. on Ctrl-C).
pub fn run(config: Config) -> Result<Report> {
    run_until(config, Arc::new(AtomicBool::new(false)))
}

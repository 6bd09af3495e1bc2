//! What ChatFlow's server and consumer say about themselves: Prometheus
//! metrics and structured logs, the same way in both binaries.
//!
//! - [`histogram`]: a lock-free fixed-bucket histogram for hot paths, and
//!   what a scrape reads of it;
//! - [`scrape`]: writing families (counters, gauges, histograms, with or
//!   without labels) from a collector at scrape time, and the text
//!   encoding with its content type;
//! - [`process`]: the standard `process_*` metrics, read from `/proc`;
//! - [`build`]: `chatflow_build_info` (version and git commit);
//! - [`logging`]: `tracing` set up from `RUST_LOG` and `--log-format`, and
//!   a rate limit for logs that could otherwise flood.
//!
//! Why collectors rather than the crate's own `Counter`s: the server's
//! counters are per-worker, cache-padded atomics that only their worker
//! writes; reading them at scrape time costs the hot path nothing, while a
//! shared `Counter` would put one contended cache line under every worker.

pub mod build;
pub mod histogram;
pub mod logging;
pub mod process;
pub mod scrape;

pub use histogram::{Histogram, HistogramSnapshot};
pub use logging::{LogArgs, LogFormat, RateLimit};
pub use scrape::{encode, Scrape, CONTENT_TYPE};

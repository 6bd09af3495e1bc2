//! `chatflow-testkit`: what the integration tests of `chatflow-server` and
//! `chatflow-consumer` share, written once. A dev-dependency only
//! (`publish = false`); nothing here ships in a binary.
//!
//! Layout:
//! - [`wait`]: [`wait_until`], polling a condition with a timeout;
//! - [`http`]: [`http_get`], one plain HTTP/1.1 GET, and [`http_request`],
//!   any method with the response's headers;
//! - [`database`]: [`TestDatabase`], a PostgreSQL database of a test's own,
//!   dropped when it ends;
//! - [`names`]: [`unique_namespace`], names no other test or run uses;
//! - [`services`]: where the machine's shared RabbitMQ, Redis and
//!   PostgreSQL listen, [`TopologyGuard`], which deletes a test's
//!   queues and exchanges when dropped, and [`PresenceGuard`], its
//!   presence keys;
//! - [`proxy`]: [`Proxy`], a TCP proxy a test cuts and restores, so an
//!   outage hits only that test's connections, never a shared service;
//! - [`prometheus`]: a `/metrics` page read by a real OpenMetrics parser;
//! - [`limits`]: [`raise_fd_limit`], for tests that hold thousands of
//!   sockets;
//! - [`ws`]: a blocking WebSocket chat client with read timeouts;
//! - [`cli`]: checks of a binary's command line (secrets never shown,
//!   boolean variables in every spelling) and the lock for tests that set
//!   process environment variables.
//!
//! Every wait has a timeout: a broken server fails a test, it never hangs
//! one. Helpers panic with a message saying what was expected, since that
//! is how a test reports.

#![warn(missing_docs)]

pub mod cli;
pub mod database;
pub mod http;
pub mod limits;
pub mod names;
pub mod process;
pub mod prometheus;
pub mod proxy;
pub mod services;
pub mod wait;
pub mod ws;

pub use database::TestDatabase;
pub use http::{http_get, http_request, HttpResponse};
pub use limits::raise_fd_limit;
pub use names::unique_namespace;
pub use process::Reaper;
pub use proxy::Proxy;
pub use services::{HistoryGuard, PresenceGuard, TopologyGuard};
pub use wait::wait_until;

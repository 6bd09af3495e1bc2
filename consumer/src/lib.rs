//! `chatflow-consumer`: takes every message servers published to RabbitMQ,
//! broadcasts it to its room's Redis channel (the exact `message` frame
//! clients receive, so servers forward bytes untouched), then acks it.
//! Persistence to PostgreSQL (issue 5) plugs in between broadcast and ack.
//!
//! Layout:
//! - [`config`]: flags and environment → a validated [`Config`];
//! - [`consumer`]: [`Consumer::start`] / [`Consumer::shutdown`] —
//!   connections, channels, threads, orderly stop;
//! - [`worker`]: one queue's consumer thread: batches, broadcast, ack;
//! - [`inhand`]: which held deliveries may be acked or rejected, and in
//!   which order (multiple-acks never cross a poison message);
//! - [`link`]: AMQP connections, channel leases, reconnection;
//! - [`broadcast`]: per-thread Redis connection, pipelined publish, retry;
//! - [`backoff`]: jittered back-off and shutdown-aware waits;
//! - [`stats`]: per-thread counters, rates, `/health` and `/metrics`;
//! - [`http`]: the small blocking HTTP endpoint serving them.
//!
//! No async runtime: every thread blocks on a crossbeam `select!` or a
//! socket with a timeout, and every one is named and joined on shutdown.

pub mod backoff;
pub mod broadcast;
pub mod config;
pub mod consumer;
pub mod http;
pub mod inhand;
pub mod link;
pub mod stats;
pub mod worker;

pub use config::{Args, Config, ConfigError};
pub use consumer::{Consumer, Monitor};
pub use stats::Health;
pub use worker::Committed;

//! `chatflow-consumer`: takes every message servers published to RabbitMQ,
//! broadcasts it to its room's Redis channel (the exact `message` frame
//! clients receive, so servers forward bytes untouched), stores it in
//! PostgreSQL, and acks it once its row is committed (persistence off: once
//! it is broadcast).
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
//! - [`writer`]: PostgreSQL writer threads: binary COPY batches, dedup of
//!   redeliveries, isolation of rows the database refuses, commit (and
//!   reject) notices back to consumers;
//! - [`partitions`]: schema, day partitions and their upkeep (r2d2 pool);
//! - [`stats`]: per-thread counters, rates, `/health` and `/metrics`;
//! - [`http`]: the small blocking HTTP endpoint serving them (a thread per
//!   connection, capped, one deadline per request).
//!
//! No async runtime: every thread blocks on a crossbeam `select!` or a
//! socket with a timeout, and every one is named and joined on shutdown.

pub mod broadcast;
pub mod config;
pub mod consumer;
pub mod http;
pub mod inhand;
pub mod link;
pub mod partitions;
pub mod stats;
pub mod worker;
pub mod writer;

pub use config::{Args, Config, ConfigError};
pub use consumer::{Consumer, Monitor};
pub use stats::Health;
pub use worker::Committed;

//! `chatflow-consumer`: takes every message servers published to RabbitMQ,
//! appends it to its room's history stream and broadcasts it to its room's
//! Redis channel (the exact `message` frame clients receive, with its
//! history position, so servers forward bytes untouched), stores it in
//! PostgreSQL, and acks it once its row is committed (persistence off: once
//! it is broadcast).
//!
//! Layout, one concern a module:
//! - [`config`]: flags and environment → a validated [`Config`];
//! - [`assignment`]: which queues this instance consumes (`--instances N
//!   --instance K`), as owner or as standby;
//! - [`holding`]: what a queue consumer knows of its standing on its
//!   queue under single-active-consumer (active, waiting, unregistered);
//! - [`owners`]: owner adverts in Redis, from which a standby learns that
//!   an owner registered again (and hands its queue back);
//! - [`consumer`]: [`Consumer::start`] / [`Consumer::shutdown`] —
//!   connections, channels, threads, the one shutdown signal;
//! - [`queue_consumer`]: one queue's thread: batches, broadcast, ack;
//! - [`recent`]: the ids a queue consumer broadcast lately (a repeat is not
//!   broadcast again);
//! - [`inhand`]: which held deliveries may be acked or rejected, and in
//!   which order (multiple-acks never cross a poison message);
//! - [`link`]: AMQP connections, channel leases, reconnection;
//! - [`broadcast`]: per-consumer Redis connection, the batch's pipeline
//!   (appended to each room's history stream and published with its
//!   position, in one script call), retry;
//! - [`handoff`]: what queue consumers and writers send each other (rows
//!   to store, commit notices);
//! - [`writer`]: PostgreSQL writer threads: binary COPY batches, dedup of
//!   redeliveries, isolation of rows the database refuses;
//! - [`partitions`]: schema, day partitions and their upkeep (r2d2 pool);
//! - [`threads`]: spawning named threads that hear the shutdown signal and
//!   whose panics and early stops are recorded;
//! - [`state`]: what every thread shares ([`Shared`](state::Shared));
//! - [`counters`]: per-thread hot counters and their sums;
//! - [`rates`]: the window of per-second snapshots rates come from;
//! - [`window`]: the last 10 s of a cumulative histogram (latency
//!   quantiles of the recent past, not the process lifetime);
//! - [`snapshot`]: the CONSUMER SNAPSHOT the fleet's read API shows;
//! - [`sampler`]: the thread taking those snapshots once a second and
//!   publishing this consumer's to Redis (which is also its Redis probe);
//! - [`health`]: the `/health` document;
//! - [`metrics`]: the same as Prometheus text for `/metrics`;
//! - [`http`]: the small blocking HTTP endpoint serving them (a thread per
//!   connection, capped, one deadline per request).
//! - `fault` (hidden from the docs): test-only fault injection, a writer
//!   or queue consumer panicking on a chosen message text.
//!
//! Dependencies run one way, no two modules import each other: `consumer`
//! wires everything; `queue_consumer` and `writer` meet only in `handoff`;
//! `state` builds on `counters`, `rates` and `threads`; `health` reads
//! `state`, `metrics` encodes `health`, `http` serves both; `snapshot`
//! reads `health` and `window`, `sampler` publishes `snapshot` and the
//! [`owners`] advert; `config` and `state` build on `assignment`,
//! `counters` on `holding`.
//!
//! No async runtime: every thread blocks on a crossbeam `select!` or a
//! socket with a timeout, and every one is named and joined on shutdown.

pub mod assignment;
pub mod broadcast;
pub mod config;
pub mod consumer;
pub mod counters;
#[doc(hidden)]
pub mod fault;
pub mod handoff;
pub mod health;
pub mod holding;
pub mod http;
pub mod inhand;
pub mod link;
pub mod metrics;
pub mod owners;
pub mod partitions;
pub mod queue_consumer;
pub mod rates;
pub mod recent;
pub mod sampler;
pub mod snapshot;
pub mod state;
pub mod threads;
pub mod window;
pub mod writer;

pub use config::{Args, Config, ConfigError};
pub use consumer::{Consumer, Monitor};
pub use handoff::Committed;
pub use health::Health;

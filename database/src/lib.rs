//! `chatflow-database`: everything ChatFlow does with PostgreSQL, in one
//! place. The consumer's writers store through it, the server's read API
//! queries through it, the data generator loads through it.
//!
//! Layout:
//! - [`error`]: PostgreSQL errors in one line ([`describe`]);
//! - [`settings`]: the shared `DB_*` flags ([`DatabaseArgs`], flattened
//!   into server and consumer) and [`DatabaseSettings`];
//! - [`schema`]: `schema.sql`, the day partitions, the rollup backfill;
//! - [`row`]: one stored message ([`Row`]) and time conversions;
//! - [`store`]: writing a batch (binary COPY, or the deduplicating path)
//!   with its rollups, in one transaction;
//! - [`rollup`]: what a batch adds to the rollup tables, and the upsert;
//! - [`window`]: time windows split into rollup buckets and raw edges;
//! - [`read`]: the API's queries (pages, user rooms, active users,
//!   analytics);
//! - [`pool`]: r2d2 pools, the read API's with its stats;
//! - [`generate`]: the data generator (`chatflow-datagen`): realistic
//!   messages loaded through the writers' path;
//! - [`explain`]: `chatflow-datagen explain`, the plans of every read
//!   query, captured with `auto_explain`.
//!
//! Typed results and `postgres::Error`s: callers decide what an error
//! means (the writers classify it by SQLSTATE, the API maps it to a status).

pub mod error;
pub mod explain;
pub mod generate;
pub mod pool;
pub mod read;
pub mod rollup;
pub mod row;
pub mod schema;
pub mod settings;
pub mod store;
pub mod window;

pub use error::describe;
pub use row::Row;
pub use settings::{DatabaseArgs, DatabaseSettings, Secret};
pub use store::{copy_batch, insert_batch_deduplicated, Rollups};
pub use window::Window;

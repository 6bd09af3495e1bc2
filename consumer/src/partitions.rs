//! Partition upkeep and the consumer's other database work (everything that
//! is not a writer's COPY), over a small r2d2 pool (`chatflow-database`'s `pool`): applying the schema when
//! asked, creating the coming days' partitions at start and then hourly
//! (idempotent, so a missed day is caught up), and checking the database for
//! `/health`. The SQL itself lives in `chatflow-database`'s `schema`.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use chatflow_broker::retry::wait;
use chatflow_database::{pool, schema};

use crate::threads::Threads;

/// Days change once a day; an hour keeps a missed run cheap to catch up.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(3600);
/// After a failed run: soon, but without hammering a database that is down.
const UPKEEP_RETRY: Duration = Duration::from_secs(60);

pub use chatflow_database::pool::Pool;

/// Why database work failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{0}")]
    Pool(#[from] pool::PoolError),
    #[error("{0}")]
    Query(#[source] postgres::Error),
}

/// A small pool for non-writer work. Built without connecting, so a
/// database that is down later does not stop the consumer.
pub fn pool(connection: &str) -> Result<Pool, DbError> {
    Ok(pool::pool(connection, 4, Duration::from_secs(2))?)
}

fn client(pool: &Pool) -> Result<pool::Connection, DbError> {
    pool.get()
        .map_err(|e| DbError::Pool(pool::PoolError::Unavailable(e)))
}

/// Applies `schema.sql` (idempotent) and fills the rollups of a database
/// that has messages from before them.
pub fn apply_schema(pool: &Pool) -> Result<(), DbError> {
    schema::apply_schema(&mut *client(pool)?).map_err(DbError::Query)
}

/// Creates the partitions of today (UTC) and the next days; returns how many
/// were new.
pub fn ensure_partitions(pool: &Pool) -> Result<i32, DbError> {
    schema::ensure_partitions(&mut *client(pool)?).map_err(DbError::Query)
}

/// Whether the database answers now.
pub fn database_up(pool: &Pool) -> bool {
    pool.get()
        .map(|mut c| c.simple_query("SELECT 1").is_ok())
        .unwrap_or(false)
}

/// Starts the `partitions` thread: [`ensure_partitions`] every hour (the
/// first an hour from now: start-up has just run it) until shutdown.
pub fn start_upkeep(pool: Pool, threads: &Arc<Threads>) -> std::io::Result<JoinHandle<()>> {
    let shutdown = threads.shutdown().clone();
    threads.spawn("partitions", move || {
        let mut delay = UPKEEP_INTERVAL;
        while !wait(&shutdown, delay) {
            delay = match ensure_partitions(&pool) {
                Ok(created) => {
                    if created > 0 {
                        tracing::info!("partitions: created {created} day partition(s)");
                    }
                    UPKEEP_INTERVAL
                }
                Err(e) => {
                    tracing::warn!("partitions: upkeep failed, retrying in a minute: {e}");
                    UPKEEP_RETRY
                }
            };
        }
    })
}

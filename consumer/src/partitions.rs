//! Partition upkeep and the consumer's other database work (everything that
//! is not a writer's COPY), over an r2d2 pool: applying the schema when
//! asked, creating the coming days' partitions at start and then hourly
//! (idempotent, so a missed day is caught up), and checking the database for
//! `/health`.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use chatflow_broker::retry::wait;
use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;

use crate::threads::Threads;

/// The schema, applied by `setup_database.sh` or with `--apply-schema`.
pub const SCHEMA: &str = include_str!("../../database/schema.sql");

/// Days of partitions kept ahead, today included.
pub const DAYS_AHEAD: i32 = 8;
/// Days change once a day; an hour keeps a missed run cheap to catch up.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(3600);
/// After a failed run: soon, but without hammering a database that is down.
const UPKEEP_RETRY: Duration = Duration::from_secs(60);

pub type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

/// Why database work failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("bad connection string: {0}")]
    Config(#[source] postgres::Error),
    /// No connection within the pool's timeout (the database is down, or
    /// refuses us).
    #[error("{0}")]
    Connect(#[source] r2d2::Error),
    #[error("{0}")]
    Query(#[source] postgres::Error),
}

/// A small pool for non-writer work. Built without connecting, so a
/// database that is down later does not stop the consumer.
pub fn pool(connection: &str) -> Result<Pool, DbError> {
    let config: postgres::Config = connection.parse().map_err(DbError::Config)?;
    let manager = PostgresConnectionManager::new(config, NoTls);
    Ok(r2d2::Pool::builder()
        .max_size(4)
        .min_idle(Some(0))
        .connection_timeout(Duration::from_secs(2))
        .build_unchecked(manager))
}

/// Applies `schema.sql` (idempotent).
pub fn apply_schema(pool: &Pool) -> Result<(), DbError> {
    let mut client = pool.get().map_err(DbError::Connect)?;
    client
        .batch_execute(&format!("SET client_min_messages = warning; {SCHEMA}"))
        .map_err(DbError::Query)
}

/// Creates the partitions of today (UTC) and the next days; returns how many
/// were new.
pub fn ensure_partitions(pool: &Pool) -> Result<i32, DbError> {
    let mut client = pool.get().map_err(DbError::Connect)?;
    let row = client
        .query_one(
            "SELECT chatflow_ensure_partitions((now() AT TIME ZONE 'UTC')::date, $1)",
            &[&DAYS_AHEAD],
        )
        .map_err(DbError::Query)?;
    Ok(row.get(0))
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
                        eprintln!("partitions: created {created} day partition(s)");
                    }
                    UPKEEP_INTERVAL
                }
                Err(e) => {
                    eprintln!("partitions: upkeep failed, retrying in a minute: {e}");
                    UPKEEP_RETRY
                }
            };
        }
    })
}

//! r2d2 pools of PostgreSQL connections: the read API's ([`ReadPool`]:
//! read-only sessions with a statement timeout, checkout counters and wait
//! times for the stats) and the small one the consumer's upkeep uses
//! ([`pool`]). Both are built without connecting, so a process whose
//! database is down still starts; r2d2 reconnects in the background and on
//! each checkout, so they recover by themselves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;
use serde::Serialize;

use crate::settings::DatabaseSettings;

pub type Manager = PostgresConnectionManager<NoTls>;
pub type Pool = r2d2::Pool<Manager>;
pub type Connection = r2d2::PooledConnection<Manager>;

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("bad connection settings: {0}")]
    Config(#[source] postgres::Error),
    /// No connection within the checkout timeout: the database is down or
    /// refuses us, or every connection stayed busy.
    #[error("{0}")]
    Unavailable(#[source] r2d2::Error),
    /// The same, with the last connection error in full (r2d2's own
    /// message stops at postgres' "db error").
    #[error("no connection within the pool timeout: {reason}")]
    Unreachable { reason: String },
}

/// Keeps the last connection error (r2d2 hands each one to its error
/// handler and keeps only postgres' terse `Display` of it).
#[derive(Debug, Default)]
struct LastError(Mutex<Option<(Instant, String)>>);

/// The handler r2d2 owns, sharing the [`LastError`] with the pool.
#[derive(Debug)]
struct KeepLastError(std::sync::Arc<LastError>);

impl r2d2::HandleError<postgres::Error> for KeepLastError {
    fn handle_error(&self, error: postgres::Error) {
        *self.0 .0.lock() = Some((Instant::now(), crate::describe(&error)));
    }
}

/// A pool over `connection` (a libpq-style string) that does not connect
/// until asked.
pub fn pool(
    connection: &str,
    max_size: u32,
    checkout_timeout: Duration,
) -> Result<Pool, PoolError> {
    let config: postgres::Config = connection.parse().map_err(PoolError::Config)?;
    Ok(r2d2::Pool::builder()
        .max_size(max_size)
        .min_idle(Some(0))
        .connection_timeout(checkout_timeout)
        .build_unchecked(Manager::new(config, NoTls)))
}

/// Settings of every read-API session (database/explain/ shows the plans
/// with and without them, at 10M rows):
/// - `default_transaction_read_only`: no API query can write;
/// - `random_page_cost=1.1` (the default 4 prices a random read as on a
///   spinning disk): with 4, a room's page of 1,000 messages in a busy hour
///   was planned over the time index, filtering 42,000 rows (8 ms), or for
///   a quiet room 98,695 rows (19 ms), instead of the room index (1.5–3 ms).
///   On SSDs or cached data — every deployment this targets — 1.1 prices
///   random reads right;
/// - `enable_incremental_sort=off`: even then, for a busy room (6,584
///   rows estimated in the hour) the planner still took the time index —
///   filtering 40,501 rows and sorting each millisecond's ties by
///   `message_id` incrementally (13 ms) — over the room index (4 ms). With
///   no incremental sort, that path needs a full sort before its LIMIT,
///   and the room index wins; no other API query uses one;
/// - `parallel_setup_cost=10000`: the planner sent the 1-hour rollup
///   queries (1 ms of work) to two parallel workers (11 ms); long
///   per-user scans keep theirs;
/// - `jit=off`: JIT compiled the per-user scans for 85–100 ms more than
///   they saved;
/// - `work_mem=64MB`: a day's per-user hash aggregate (1.4M rows) spilled
///   to disk with the default 4 MB (per hash node, per session: at most
///   the pool size × a few nodes).
pub const READ_SESSION: &[(&str, &str)] = &[
    ("default_transaction_read_only", "on"),
    ("random_page_cost", "1.1"),
    ("enable_incremental_sort", "off"),
    ("parallel_setup_cost", "10000"),
    ("jit", "off"),
    ("work_mem", "64MB"),
];

/// How the read API's pool is made.
#[derive(Clone, Debug)]
pub struct ReadPoolConfig {
    pub database: DatabaseSettings,
    /// Connections at most (one per concurrent query).
    pub max_size: u32,
    /// How long a request waits for a connection before it is answered
    /// "unavailable".
    pub checkout_timeout: Duration,
    /// PostgreSQL cancels a read running longer (`statement_timeout`), so
    /// no parameter can hold a connection for long.
    pub statement_timeout: Duration,
    pub connect_timeout: Duration,
}

/// Pool counters as the API reports them.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolStats {
    pub max_size: u32,
    /// Open connections (idle + in use).
    pub connections: u32,
    pub idle: u32,
    pub in_use: u32,
    /// Successful checkouts since start.
    pub checkouts: u64,
    /// Checkouts that gave up (database down, or every connection busy).
    pub timeouts: u64,
    /// 99th percentile of the wait for a connection since start, ms.
    pub wait_ms_p99: f64,
}

/// The read API's pool: read-only sessions (`default_transaction_read_only`:
/// no API query can write), each statement bounded by `statement_timeout`.
pub struct ReadPool {
    pool: Pool,
    last_error: std::sync::Arc<LastError>,
    max_size: u32,
    checkouts: AtomicU64,
    timeouts: AtomicU64,
    wait_us: Mutex<Histogram<u64>>,
}

impl ReadPool {
    pub fn new(config: &ReadPoolConfig) -> Result<ReadPool, PoolError> {
        let mut connection = config
            .database
            .connection_string("chatflow-api", config.connect_timeout);
        let settings: Vec<String> = READ_SESSION
            .iter()
            .map(|(name, value)| format!("-c {name}={value}"))
            .collect();
        connection.push_str(&format!(
            " options='-c statement_timeout={} {}'",
            config.statement_timeout.as_millis().max(1),
            settings.join(" ")
        ));
        let parsed: postgres::Config = connection.parse().map_err(PoolError::Config)?;
        let last_error = std::sync::Arc::new(LastError::default());
        let pool = r2d2::Pool::builder()
            .max_size(config.max_size)
            .min_idle(Some(0))
            .connection_timeout(config.checkout_timeout)
            .error_handler(Box::new(KeepLastError(last_error.clone())))
            .build_unchecked(Manager::new(parsed, NoTls));
        Ok(ReadPool {
            pool,
            last_error,
            max_size: config.max_size,
            checkouts: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            wait_us: Mutex::new(
                Histogram::new_with_bounds(1, 600_000_000, 2).expect("static histogram bounds"),
            ),
        })
    }

    /// A connection, waiting at most the checkout timeout.
    pub fn get(&self) -> Result<Connection, PoolError> {
        let started = Instant::now();
        let result = self.pool.get();
        let waited = started.elapsed().as_micros().max(1) as u64;
        let _ = self.wait_us.lock().record(waited);
        match result {
            Ok(connection) => {
                self.checkouts.fetch_add(1, Ordering::Relaxed);
                Ok(connection)
            }
            Err(e) => {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
                // A connection error seen during this wait says why; an
                // older one may be stale (the pool may just be busy).
                match &*self.last_error.0.lock() {
                    Some((at, reason)) if *at >= started => Err(PoolError::Unreachable {
                        reason: reason.clone(),
                    }),
                    _ => Err(PoolError::Unavailable(e)),
                }
            }
        }
    }

    pub fn stats(&self) -> PoolStats {
        let state = self.pool.state();
        PoolStats {
            max_size: self.max_size,
            connections: state.connections,
            idle: state.idle_connections,
            in_use: state.connections - state.idle_connections,
            checkouts: self.checkouts.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            wait_ms_p99: self.wait_us.lock().value_at_quantile(0.99) as f64 / 1000.0,
        }
    }
}

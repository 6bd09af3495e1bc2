//! Loading a [`Dataset`] into PostgreSQL: the day partitions first, then
//! a generator thread (`datagen-rows`) making batches of rows in time
//! order while writer threads (`datagen-writer-N`, one connection each)
//! store them with [`copy_batch`] (binary COPY and the batch's rollups,
//! one transaction each — the consumer's writers' path). Time order keeps
//! each batch inside a few minutes, so its rollup upsert touches few
//! buckets; two writers overlap one batch's COPY with the other's upsert.
//! This thread only counts what they stored and reports progress.
//!
//! Afterwards, optionally: the verification (the row count grew by exactly
//! the dataset; `chatflow_rebuild_rollups()` recomputes the rollups from
//! the rows and finds them unchanged — minutes on millions of rows), and
//! `VACUUM ANALYZE` (planner statistics, and the visibility map that lets
//! index-only scans skip the heap; on by default).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use chatflow_broker::retry::Backoff;
use chatflow_protocol::flags::bad;
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use postgres::{Client, NoTls};

use super::rows::Generator;
use super::Dataset;
use crate::row::Row;
use crate::settings::DatabaseSettings;
use crate::{copy_batch, insert_batch_deduplicated, schema, Rollups};

/// How to load (nothing here changes the rows).
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub database: DatabaseSettings,
    pub dataset: Dataset,
    /// Rows per COPY (and per transaction).
    pub batch_rows: usize,
    /// Apply `schema.sql` first (idempotent).
    pub apply_schema: bool,
    /// Check the count and the rollups afterwards.
    pub verify: bool,
    /// `VACUUM ANALYZE` the database afterwards.
    pub vacuum_analyze: bool,
    /// COPY connections: one stores a batch while another upserts its
    /// rollups (they meet only on the rollup rows both touch).
    pub writers: usize,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            database: DatabaseSettings::default(),
            dataset: Dataset::default(),
            // 10,000 rows ≈ 10 minutes of 10M-rows-a-week traffic: one COPY
            // of ~1.5 MB, one rollup upsert of ~10 minute buckets.
            batch_rows: 10_000,
            apply_schema: false,
            verify: false,
            vacuum_analyze: true,
            writers: 2,
        }
    }
}

/// Batches made ahead of the COPY: enough to hide the generator's jitter,
/// few enough to bound memory (4 × 10,000 rows ≈ 10 MB).
const QUEUED_BATCHES: usize = 4;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnect back-off, and how long a writer keeps trying through an
/// outage before the load fails (a PostgreSQL restart takes seconds).
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
const OUTAGE_LIMIT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] chatflow_protocol::flags::ConfigError),
    #[error("database {database}: {source}")]
    Database {
        database: String,
        #[source]
        source: postgres::Error,
    },
    #[error("verification failed: {0}")]
    Verify(String),
    #[error("the {0} thread died")]
    Thread(&'static str),
    #[error("the generator made {made} rows, not {expected}")]
    Incomplete { made: u64, expected: u64 },
}

/// Where a load stands (after each batch).
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub rows: u64,
    pub total: u64,
    pub elapsed: Duration,
}

impl Progress {
    pub fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What a load did and how fast.
#[derive(Clone, Debug)]
pub struct LoadReport {
    pub rows: u64,
    /// From the first row made to the last batch committed.
    pub load: Duration,
    /// Time the generator thread spent making rows (not waiting).
    pub generating: Duration,
    /// Time the writers spent waiting for rows (generation not keeping
    /// up), summed over writers.
    pub starved: Duration,
    pub vacuum_analyze: Option<Duration>,
    pub verified: Option<Verified>,
}

impl LoadReport {
    pub fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.load.as_secs_f64().max(1e-9)
    }
}

/// What the verification checked.
#[derive(Clone, Debug)]
pub struct Verified {
    pub count_before: i64,
    pub count_after: i64,
    /// Rollup tables compared (each: rows, md5 of its ordered rows).
    pub rollups: Vec<(&'static str, i64, String)>,
    pub took: Duration,
}

/// A connection named `chatflow-datagen` (in `pg_stat_activity`).
pub fn connect(database: &DatabaseSettings) -> Result<Client, postgres::Error> {
    Client::connect(
        &database.connection_string("chatflow-datagen", CONNECT_TIMEOUT),
        NoTls,
    )
}

fn db_error(database: &DatabaseSettings) -> impl Fn(postgres::Error) -> LoadError + '_ {
    move |source| LoadError::Database {
        database: database.display(),
        source,
    }
}

/// Loads `config.dataset`, calling `progress` after each batch.
pub fn load(
    config: &LoadConfig,
    mut progress: impl FnMut(&Progress),
) -> Result<LoadReport, LoadError> {
    config.dataset.validate()?;
    if config.batch_rows == 0 {
        return Err(bad("batch-rows", "must be at least 1").into());
    }
    if config.writers == 0 {
        return Err(bad("writers", "must be at least 1").into());
    }
    let database = &config.database;
    let db = db_error(database);
    let count_before = {
        let mut client = connect(database).map_err(&db)?;
        if config.apply_schema {
            schema::apply_schema(&mut client).map_err(&db)?;
        }
        let (first_day, days) = config.dataset.partition_days();
        schema::ensure_partitions_from(&mut client, first_day, days).map_err(&db)?;
        if config.verify {
            Some(count(&mut client).map_err(&db)?)
        } else {
            None
        }
    };

    let started = Instant::now();
    let (batches, generator) = spawn_generator(config.dataset.clone(), config.batch_rows);
    let (done_tx, done) = unbounded::<Result<Stored, postgres::Error>>();
    let failed = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..config.writers)
        .map(|index| {
            Writer::spawn(
                index,
                database.clone(),
                batches.clone(),
                done_tx.clone(),
                Arc::clone(&failed),
            )
        })
        .collect();
    // The writers hold the only receivers and senders now: the generator
    // stops when every writer is gone, `done` ends when every writer is.
    drop((batches, done_tx));
    let total = config.dataset.messages;
    let mut rows = 0u64;
    let mut starved = Duration::ZERO;
    let mut failure = None;
    for outcome in done {
        match outcome {
            Ok(stored) => {
                rows += stored.rows;
                starved += stored.waited;
                progress(&Progress {
                    rows,
                    total,
                    elapsed: started.elapsed(),
                });
            }
            Err(e) => {
                // The other writers finish the batch at hand and stop.
                failure.get_or_insert(e);
            }
        }
    }
    for writer in writers {
        writer.join().map_err(|_| LoadError::Thread("writer"))?;
    }
    let generating = generator
        .join()
        .map_err(|_| LoadError::Thread("generator"))?;
    if let Some(e) = failure {
        return Err(db(e));
    }
    let load = started.elapsed();
    if rows != total {
        return Err(LoadError::Incomplete {
            made: rows,
            expected: total,
        });
    }

    // A fresh connection: one kept idle through the load may have died in
    // an outage the writers rode out.
    let mut client = connect(database).map_err(&db)?;
    let verified = match count_before {
        Some(before) => Some(verify(&mut client, before, total).map_err(|e| match e {
            Check::Db(source) => db(source),
            Check::Failed(why) => LoadError::Verify(why),
        })?),
        None => None,
    };
    let vacuum_analyze = if config.vacuum_analyze {
        let at = Instant::now();
        client.batch_execute("VACUUM (ANALYZE)").map_err(&db)?;
        Some(at.elapsed())
    } else {
        None
    };
    Ok(LoadReport {
        rows,
        load,
        generating,
        starved,
        vacuum_analyze,
        verified,
    })
}

/// The generator thread: batches of rows, in order, until the dataset is
/// done or every writer has hung up (a failed load). Its result is the
/// time it spent generating.
fn spawn_generator(
    dataset: Dataset,
    batch_rows: usize,
) -> (Receiver<Vec<Row>>, thread::JoinHandle<Duration>) {
    let (tx, rx) = bounded::<Vec<Row>>(QUEUED_BATCHES);
    let handle = thread::Builder::new()
        .name("datagen-rows".into())
        .spawn(move || {
            let at = Instant::now();
            let generator = Generator::new(&dataset);
            let mut rows = generator.rows();
            let mut busy = at.elapsed();
            loop {
                let at = Instant::now();
                let batch: Vec<Row> = rows.by_ref().take(batch_rows).collect();
                busy += at.elapsed();
                if batch.is_empty() || tx.send(batch).is_err() {
                    return busy;
                }
            }
        })
        .expect("spawn the generator thread");
    (rx, handle)
}

/// What a writer reports per stored batch.
struct Stored {
    rows: u64,
    /// How long it waited for the batch.
    waited: Duration,
}

/// One COPY connection (`datagen-writer-N`): takes batches until there are
/// none, stores each with [`copy_batch`]. A lost connection (PostgreSQL
/// restarting, say) is retried with back-off for up to
/// [`OUTAGE_LIMIT`]; the batch it was writing is then stored through
/// [`insert_batch_deduplicated`], which keeps whatever of it did commit
/// just before the connection went and adds the rest — the consumer's own
/// redelivery path — so an outage neither loses nor doubles rows.
struct Writer {
    database: DatabaseSettings,
    client: Option<Client>,
    backoff: Backoff,
}

impl Writer {
    fn spawn(
        index: usize,
        database: DatabaseSettings,
        batches: Receiver<Vec<Row>>,
        done: Sender<Result<Stored, postgres::Error>>,
        failed: Arc<AtomicBool>,
    ) -> thread::JoinHandle<()> {
        thread::Builder::new()
            .name(format!("datagen-writer-{index}"))
            .spawn(move || {
                let mut writer = Writer {
                    database,
                    client: None,
                    backoff: Backoff::new(RETRY_MIN, RETRY_MAX, index as u64),
                };
                // One writer's failure ends the load: the others stop
                // after the batch at hand.
                while !failed.load(Ordering::Acquire) {
                    let waiting = Instant::now();
                    let Ok(batch) = batches.recv() else { return };
                    let waited = waiting.elapsed();
                    let outcome = writer.store(&batch).map(|()| Stored {
                        rows: batch.len() as u64,
                        waited,
                    });
                    if outcome.is_err() {
                        failed.store(true, Ordering::Release);
                    }
                    if done.send(outcome).is_err() {
                        return;
                    }
                }
            })
            .expect("spawn a writer thread")
    }

    fn store(&mut self, batch: &[Row]) -> Result<(), postgres::Error> {
        let mut outage: Option<Instant> = None;
        loop {
            match self.attempt(batch, outage.is_some()) {
                Ok(()) => {
                    self.backoff.reset();
                    return Ok(());
                }
                Err(e) if self.lost(&e) => {
                    let since = *outage.get_or_insert_with(Instant::now);
                    if since.elapsed() > OUTAGE_LIMIT {
                        return Err(e);
                    }
                    self.client = None;
                    thread::sleep(self.backoff.next_delay());
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn attempt(&mut self, batch: &[Row], after_outage: bool) -> Result<(), postgres::Error> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            let mut client = connect(&self.database)?;
            // A crash loses at most the last batches' commits instead of
            // waiting for a WAL flush per batch; `--verify` would show it.
            client.batch_execute("SET synchronous_commit = off")?;
            self.client = Some(client);
        }
        let client = self.client.as_mut().expect("connected above");
        if after_outage {
            insert_batch_deduplicated(client, batch, Rollups::Maintain).map(drop)
        } else {
            copy_batch(client, batch, Rollups::Maintain)
        }
    }

    /// Whether `e` means the connection (or the server) went away: a
    /// connection-class or shutdown SQLSTATE, or no SQLSTATE at all on a
    /// connection that is gone (refused, reset, closed). Anything the
    /// server answered otherwise (a missing database, a refused row) is
    /// final.
    fn lost(&self, e: &postgres::Error) -> bool {
        match e.code() {
            Some(c) => c.code().starts_with("08") || c.code().starts_with("57P"),
            None => self.client.as_ref().is_none_or(Client::is_closed),
        }
    }
}

fn count(client: &mut Client) -> Result<i64, postgres::Error> {
    Ok(client
        .query_one("SELECT count(*) FROM messages", &[])?
        .get(0))
}

enum Check {
    Db(postgres::Error),
    Failed(String),
}

impl From<postgres::Error> for Check {
    fn from(e: postgres::Error) -> Self {
        Check::Db(e)
    }
}

/// Each rollup table, ordered by its key, as (rows, md5). Bitmaps enter
/// as their own md5 (10,000 of them as text would pass 1 GB).
const ROLLUP_CHECKSUMS: [(&str, &str); 4] = [
    (
        "rollup_room_counts",
        "SELECT count(*), md5(string_agg(r::text, ',' ORDER BY resolution_s, bucket, room_id)) FROM rollup_room_counts r",
    ),
    (
        "rollup_second_counts",
        "SELECT count(*), md5(string_agg(r::text, ',' ORDER BY second)) FROM rollup_second_counts r",
    ),
    (
        "rollup_active_users",
        "SELECT count(*), md5(string_agg(concat_ws(' ', resolution_s, bucket, md5(users::text)), ',' ORDER BY resolution_s, bucket)) FROM rollup_active_users",
    ),
    (
        "user_rooms",
        "SELECT count(*), md5(string_agg(r::text, ',' ORDER BY user_id, room_id)) FROM user_rooms r",
    ),
];

/// Every rollup table's checksum.
pub fn rollup_checksums(
    client: &mut Client,
) -> Result<Vec<(&'static str, i64, String)>, postgres::Error> {
    ROLLUP_CHECKSUMS
        .iter()
        .map(|(table, sql)| {
            let row = client.query_one(*sql, &[])?;
            Ok((
                *table,
                row.get(0),
                row.get::<_, Option<String>>(1).unwrap_or_default(),
            ))
        })
        .collect()
}

fn verify(client: &mut Client, before: i64, loaded: u64) -> Result<Verified, Check> {
    let at = Instant::now();
    let after = count(client)?;
    if after - before != loaded as i64 {
        return Err(Check::Failed(format!(
            "messages went from {before} to {after} rows, not up by {loaded}"
        )));
    }
    let maintained = rollup_checksums(client)?;
    let counted: i64 = client
        .query_one("SELECT chatflow_rebuild_rollups()", &[])?
        .get(0);
    if counted != after {
        return Err(Check::Failed(format!(
            "the rebuild counted {counted} messages, the table has {after}"
        )));
    }
    let rebuilt = rollup_checksums(client)?;
    for (m, r) in maintained.iter().zip(&rebuilt) {
        if m != r {
            return Err(Check::Failed(format!(
                "{}: maintained {} rows (md5 {}), rebuilt {} rows (md5 {})",
                m.0, m.1, m.2, r.1, r.2
            )));
        }
    }
    Ok(Verified {
        count_before: before,
        count_after: after,
        rollups: rebuilt,
        took: at.elapsed(),
    })
}

//! Persistence: the writer threads (`writer-N`) that store every consumed
//! message in PostgreSQL with binary COPY, and tell each queue consumer
//! which of its deliveries are committed (so it may ack them). What they
//! receive and send back is defined in [`handoff`](crate::handoff).
//!
//! Each queue consumer hands its batches of rows to one writer, always the
//! same (consumer index mod writers), as one message per batch (one channel
//! operation per consumer batch, not per row). One writer per consumer
//! matters: a consumer acks in tag order, so if its rows were spread over
//! every writer, any one writer's slow commit would stall every consumer;
//! this way it stalls a quarter of them. Each writer owns its connection
//! and collects up to `batch_rows` rows or `flush_interval` after the
//! first. It collects by polling every few milliseconds rather than waking
//! for every arrival: a hundred queue consumers hand over small batches
//! thousands of times a second, and a wake-up per hand-over cost more CPU
//! than the COPY itself. Then it writes the rows in one transaction:
//!
//! - fast path: `COPY messages … FROM STDIN BINARY`;
//! - when the batch may hold duplicates (a redelivered message, or the fast
//!   path hit a unique violation): COPY into a temporary staging table, then
//!   `INSERT … SELECT … ON CONFLICT DO NOTHING`, so a redelivery never makes
//!   a second row.
//!
//! Both paths (`chatflow-database`'s `store`) add the batch's rollups in the
//! same transaction, counting only the rows that went in.
//!
//! A failed write is classified by its SQLSTATE ([`WriteFailure`]):
//!
//! - *the database is unavailable* (connection lost, shutting down, out of
//!   resources, a conflict between transactions, or anything not pinned on
//!   the rows): the same rows are retried with jittered back-off,
//!   reconnecting as needed; nothing is acknowledged meanwhile, so an
//!   outage stops acks, the broker keeps the backlog, and everything drains
//!   when the database is back — unless the shutdown signal comes first:
//!   then the writer gives up, and the broker redelivers those rows'
//!   messages to the next consumer;
//! - *the database refuses these rows* (a data exception such as a NUL in
//!   `text`, a constraint violation, a value too long): the rows are split
//!   in halves, each written on its own, recursively, until the refusal is
//!   pinned on single rows. Those are handed back to their consumer to be
//!   rejected to the dead-letter queue; every other row is stored and acked
//!   as usual. One bad row in a batch of 1,000 costs about 2·log2(1000) ≈
//!   20 extra statements, and a row is only dead-lettered once it fails
//!   *alone*, so a failure that was about the batch (too big, say) loses
//!   nothing. An outage in the middle of a split falls back to retrying the
//!   part being written: nothing good is dead-lettered because of it.
//!
//! A writer ends when its input disconnects (every queue consumer gone),
//! so on shutdown it still writes what the consumers hand over while they
//! drain.
//!
//! Without that split, one poison row would make its batch fail for ever:
//! the valid rows in it never stored, the consumers mapped to this writer
//! no longer acking, and once their prefetch filled, their broadcasts
//! stopping too.

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chatflow_broker::retry::{is_shutdown, wait, Backoff, Shutdown};
pub use chatflow_database::describe;
use chatflow_database::settings::redact;
use chatflow_database::{copy_batch, insert_batch_deduplicated, Rollups};
use crossbeam_channel::{Receiver, Sender};
use postgres::error::SqlState;
use postgres::{Client, NoTls};

use crate::counters::WriterStats;
use crate::fault::{self, Site};
use crate::handoff::{Committed, Pending};
use crate::threads::Threads;

/// While a batch fills, how often the writer takes what has arrived.
const COLLECT_POLL: Duration = Duration::from_millis(5);
/// Refused rows logged one by one per writer before the log thins out to
/// one line in 100 (every one is counted and in the dead-letter queue).
const REFUSED_LOG_LIMIT: u64 = 10;

/// Where and how to write.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// A libpq-style connection string (`host=… port=… user=… dbname=…`).
    pub connection: String,
    pub writers: usize,
    pub batch_rows: usize,
    pub flush_interval: Duration,
    /// Batches waiting for each writer.
    pub queue_capacity: usize,
    /// First and longest wait between attempts while the database is
    /// unavailable (jittered: four writers do not retry in lockstep).
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Maintain the analytics rollups with every batch (always, but for
    /// the drain benchmark's measurement of what they cost).
    pub rollups: Rollups,
}

/// Why the writers could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database is unreachable or refuses us now.
    #[error("connecting to PostgreSQL ({target}): {}", describe(.source))]
    Connect {
        /// The connection string, password hidden.
        target: String,
        #[source]
        source: postgres::Error,
    },
    #[error("spawning writer-{index}: {source}")]
    Spawn {
        index: usize,
        #[source]
        source: io::Error,
    },
}

/// The writer threads.
pub struct Writers {
    inputs: Vec<Sender<Vec<Pending>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Writers {
    /// Connects every writer (failing if the database is unreachable now)
    /// and starts them (`writer-N`, watched by `threads`, whose shutdown
    /// signal makes a writer give up retrying during an outage).
    /// `notify[i]` reaches queue consumer `i`; `stats` has one entry per
    /// writer.
    pub fn start(
        config: &WriterConfig,
        stats: Arc<Vec<WriterStats>>,
        notify: Vec<Sender<Committed>>,
        threads: &Arc<Threads>,
    ) -> Result<Writers, StartError> {
        // Every connection first: a database that refuses us starts
        // nothing.
        let mut clients = Vec::with_capacity(config.writers);
        for _ in 0..config.writers {
            let client = Client::connect(&config.connection, NoTls).map_err(|source| {
                StartError::Connect {
                    target: redact(&config.connection),
                    source,
                }
            })?;
            clients.push(client);
        }
        let notify = Arc::new(notify);
        let mut writers = Writers {
            inputs: Vec::with_capacity(config.writers),
            threads: Vec::with_capacity(config.writers),
        };
        for (index, client) in clients.into_iter().enumerate() {
            let (input, rows) = crossbeam_channel::bounded(config.queue_capacity);
            stats[index].connected.store(true, Ordering::Release);
            let writer = Writer {
                index,
                config: config.clone(),
                client: Some(client),
                rows,
                notify: notify.clone(),
                stats: stats.clone(),
                shutdown: threads.shutdown().clone(),
            };
            let thread = threads
                .spawn(format!("writer-{index}"), move || writer.run())
                .map_err(|source| StartError::Spawn { index, source })?;
            writers.inputs.push(input);
            writers.threads.push(thread);
        }
        Ok(writers)
    }

    /// Where queue consumer `consumer` sends its batches of rows.
    pub fn sender_for(&self, consumer: usize) -> Sender<Vec<Pending>> {
        self.inputs[consumer % self.inputs.len()].clone()
    }

    /// Lets each writer write what is queued (while the database answers;
    /// after the shutdown signal, a writer facing an outage gives up), and
    /// joins them. Call after the queue consumers have stopped handing
    /// rows over: a writer ends once every sender of its input is gone.
    pub fn shutdown(self) {
        drop(self.inputs);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// What a failed write says about the rows it tried to store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteFailure {
    /// The database cannot take anything now, or the failure cannot be
    /// pinned on the rows: retry the same rows after a back-off, holding
    /// their acks.
    Unavailable,
    /// The database refuses something in these rows and will refuse it
    /// again: find the rows and dead-letter them.
    BadRows,
}

impl WriteFailure {
    /// Classifies a failed write by its SQLSTATE. No SQLSTATE means the
    /// failure happened outside the server's statement handling (connection
    /// refused or lost, timeout, encoding on our side): unavailable.
    pub fn of(error: &postgres::Error) -> WriteFailure {
        match error.code() {
            Some(code) => WriteFailure::of_sqlstate(code),
            None => WriteFailure::Unavailable,
        }
    }

    /// Only classes that describe the *data* are blamed on the rows:
    /// 22 data exception (NUL in `text`: 22021, a timestamp out of range:
    /// 22008, …), 23 integrity constraint violation (a CHECK: 23514), 54
    /// program limit exceeded (a value too long to index). Everything else
    /// holds acks and retries: 08 connection exception, 53 insufficient
    /// resources, 57 operator intervention (57P01 admin shutdown, 57P03
    /// cannot connect now), 40 transaction rollback (serialization,
    /// deadlock), 58 system error, XX internal error — and any other class
    /// too (42 undefined table, permission denied, …): those hit every row
    /// alike, and dead-lettering every message of an outage or of a
    /// misconfiguration would throw good messages away.
    ///
    /// A unique violation (23505) is not a bad row: the row is already
    /// stored. The fast path turns it into the deduplicating path; seen
    /// anywhere else it is a race the retry's `ON CONFLICT` settles.
    pub fn of_sqlstate(code: &SqlState) -> WriteFailure {
        if *code == SqlState::UNIQUE_VIOLATION {
            return WriteFailure::Unavailable;
        }
        match code.code().get(..2) {
            Some("22" | "23" | "54") => WriteFailure::BadRows,
            _ => WriteFailure::Unavailable,
        }
    }
}

/// What became of one row of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Not stored yet (all rows, until their write commits; left so when
    /// the writer stops during an outage: redelivered later).
    Waiting,
    Stored,
    /// Refused on its own by the database: to be dead-lettered.
    Refused,
}

struct Writer {
    index: usize,
    config: WriterConfig,
    client: Option<Client>,
    rows: Receiver<Vec<Pending>>,
    notify: Arc<Vec<Sender<Committed>>>,
    stats: Arc<Vec<WriterStats>>,
    /// After it, a writer facing an outage gives up instead of retrying.
    shutdown: Shutdown,
}

impl Writer {
    fn run(mut self) {
        let mut batch: Vec<Pending> = Vec::with_capacity(self.config.batch_rows);
        let mut fates: Vec<Fate> = Vec::with_capacity(self.config.batch_rows);
        loop {
            // Ends when every queue consumer (and `Writers`) has dropped
            // its sender: only then is nothing more to come.
            let Ok(first) = self.rows.recv() else { return };
            batch.extend(first);
            let deadline = Instant::now() + self.config.flush_interval;
            // A batch may end a little past `batch_rows`: consumer batches
            // are not split.
            while batch.len() < self.config.batch_rows {
                for rows in self.rows.try_iter() {
                    batch.extend(rows);
                    if batch.len() >= self.config.batch_rows {
                        break;
                    }
                }
                let now = Instant::now();
                if batch.len() >= self.config.batch_rows || now >= deadline {
                    break;
                }
                std::thread::sleep(COLLECT_POLL.min(deadline - now));
            }
            if fault::armed() {
                for pending in &batch {
                    fault::strike(Site::Writer, &pending.row.message);
                }
            }
            fates.clear();
            fates.resize(batch.len(), Fate::Waiting);
            let finished = self.store(&batch, &mut fates);
            // Also when stopping early: what did commit is acked now
            // rather than redelivered later.
            self.tell_consumers(&batch, &fates);
            if !finished {
                return; // stopping while the database is down: the rest is not acked, redelivered later
            }
            batch.clear();
        }
    }

    /// Stores the batch, isolating the rows the database refuses: every
    /// row ends `Stored` or `Refused`. False if shutdown comes while the
    /// database is unavailable (rows not written yet stay `Waiting`).
    ///
    /// `todo` holds the ranges still to write, next one last. A refused
    /// range of several rows is replaced by its two halves (first half
    /// written first); a refused single row is the culprit. An unavailable
    /// database retries the range at hand with back-off, so the split
    /// resumes where it was once the database is back.
    fn store(&mut self, batch: &[Pending], fates: &mut [Fate]) -> bool {
        let all = self.stats.clone();
        let stats = &all[self.index];
        let mut backoff = Backoff::new(
            self.config.retry_min,
            self.config.retry_max,
            self.index as u64,
        );
        // Depth ≤ log2(rows) + 1 while splitting: a few entries.
        let mut todo: Vec<Range<usize>> = Vec::with_capacity(16);
        todo.push(0..batch.len());
        while let Some(range) = todo.pop() {
            let rows = &batch[range.clone()];
            let started = Instant::now();
            let error = match self.write(rows) {
                Ok(()) => {
                    stats.connected.store(true, Ordering::Release);
                    stats.batches.fetch_add(1, Ordering::Relaxed);
                    stats.rows.fetch_add(rows.len() as u64, Ordering::Relaxed);
                    let elapsed = started.elapsed();
                    let _ = stats
                        .latency_us
                        .lock()
                        .record(elapsed.as_micros().max(1) as u64);
                    let _ = stats.batch_sizes.lock().record(rows.len() as u64);
                    stats.copy_seconds.observe_duration(elapsed);
                    stats.batch_rows.observe(rows.len() as f64);
                    fates[range].fill(Fate::Stored);
                    backoff.reset();
                    continue;
                }
                Err(error) => error,
            };
            match WriteFailure::of(&error) {
                WriteFailure::BadRows => {
                    // The database answered: it is up, whatever it thinks
                    // of these rows.
                    stats.connected.store(true, Ordering::Release);
                    if rows.len() == 1 {
                        fates[range.start] = Fate::Refused;
                        self.refused(&rows[0], &error);
                    } else {
                        stats.batch_splits.fetch_add(1, Ordering::Relaxed);
                        let middle = range.start + rows.len() / 2;
                        todo.push(middle..range.end);
                        todo.push(range.start..middle);
                    }
                }
                WriteFailure::Unavailable => {
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                    stats.connected.store(false, Ordering::Release);
                    let reason = describe(&error);
                    if stats.retries.load(Ordering::Relaxed) % 20 == 1 {
                        tracing::warn!(
                            "writer-{}: {} rows not stored, retrying: {reason}",
                            self.index,
                            rows.len()
                        );
                    }
                    *stats.last_error.lock() = reason;
                    if is_shutdown(&self.shutdown) {
                        return false;
                    }
                    // Cut short by shutdown, the wait still ends in one
                    // more attempt: the database may just be back.
                    wait(&self.shutdown, backoff.next_delay());
                    todo.push(range);
                }
            }
        }
        true
    }

    /// Counts and logs a row the database refused on its own.
    fn refused(&self, pending: &Pending, error: &postgres::Error) {
        let stats = &self.stats[self.index];
        let count = stats.rows_dead_lettered.fetch_add(1, Ordering::Relaxed) + 1;
        if count <= REFUSED_LOG_LIMIT || count % 100 == 0 {
            let row = &pending.row;
            tracing::warn!(
                "writer-{}: dead-lettering message {} (room {}, user {}; {count} so far): PostgreSQL refuses the row: {}",
                self.index,
                row.message_id,
                row.room_id,
                row.user_id,
                describe(error),
            );
        }
    }

    /// One attempt: connects if needed, then the fast or the dedup path.
    fn write(&mut self, batch: &[Pending]) -> Result<(), postgres::Error> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.client = Some(Client::connect(&self.config.connection, NoTls)?);
        }
        let client = self.client.as_mut().expect("connected above");
        let stats = &self.stats[self.index];
        if !batch.iter().any(|p| p.redelivered) {
            match copy_batch(client, batch, self.config.rollups) {
                Ok(()) => return Ok(()),
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
                Err(e) => return Err(e),
            }
        }
        stats.duplicate_batches.fetch_add(1, Ordering::Relaxed);
        let inserted = insert_batch_deduplicated(client, batch, self.config.rollups)?;
        stats
            .duplicates_dropped
            .fetch_add(batch.len() as u64 - inserted, Ordering::Relaxed);
        Ok(())
    }

    /// Tells each consumer which of its deliveries are now stored, and
    /// which were refused (to be dead-lettered); rows still waiting are
    /// not mentioned.
    fn tell_consumers(&self, batch: &[Pending], fates: &[Fate]) {
        let mut by_consumer: HashMap<(usize, u64), Committed> = HashMap::new();
        for (pending, fate) in batch.iter().zip(fates) {
            let notice = by_consumer
                .entry((pending.consumer, pending.epoch))
                .or_insert_with(|| Committed {
                    epoch: pending.epoch,
                    tags: Vec::new(),
                    rejected: Vec::new(),
                });
            match fate {
                Fate::Stored => notice.tags.push(pending.delivery_tag),
                Fate::Refused => notice.rejected.push(pending.delivery_tag),
                Fate::Waiting => {}
            }
        }
        for ((consumer, _), notice) in by_consumer {
            if notice.tags.is_empty() && notice.rejected.is_empty() {
                continue;
            }
            if let Some(sender) = self.notify.get(consumer) {
                let _ = sender.send(notice);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_data_classes_are_blamed_on_the_rows() {
        use WriteFailure::{BadRows, Unavailable};
        for (code, expected) in [
            // 22 data exception: NUL in text, timestamp out of range, too long.
            (SqlState::CHARACTER_NOT_IN_REPERTOIRE, BadRows),
            (SqlState::DATETIME_FIELD_OVERFLOW, BadRows),
            (SqlState::STRING_DATA_RIGHT_TRUNCATION, BadRows),
            // 23 integrity constraint violation, except "already stored".
            (SqlState::CHECK_VIOLATION, BadRows),
            (SqlState::NOT_NULL_VIOLATION, BadRows),
            (SqlState::UNIQUE_VIOLATION, Unavailable),
            // 54 program limit exceeded.
            (SqlState::PROGRAM_LIMIT_EXCEEDED, BadRows),
            // The database, not the rows.
            (SqlState::CONNECTION_FAILURE, Unavailable),
            (SqlState::ADMIN_SHUTDOWN, Unavailable),
            (SqlState::CANNOT_CONNECT_NOW, Unavailable),
            (SqlState::TOO_MANY_CONNECTIONS, Unavailable),
            (SqlState::DISK_FULL, Unavailable),
            (SqlState::T_R_SERIALIZATION_FAILURE, Unavailable),
            (SqlState::T_R_DEADLOCK_DETECTED, Unavailable),
            (SqlState::SYSTEM_ERROR, Unavailable),
            (SqlState::INTERNAL_ERROR, Unavailable),
            (SqlState::QUERY_CANCELED, Unavailable),
            // Misconfiguration hits every row alike: never dead-letter it.
            (SqlState::UNDEFINED_TABLE, Unavailable),
            (SqlState::INSUFFICIENT_PRIVILEGE, Unavailable),
            (SqlState::READ_ONLY_SQL_TRANSACTION, Unavailable),
        ] {
            assert_eq!(
                WriteFailure::of_sqlstate(&code),
                expected,
                "{}",
                code.code()
            );
        }
        assert_eq!(
            WriteFailure::of_sqlstate(&SqlState::from_code("22P99")),
            BadRows,
            "a code this crate does not name is classified by its class"
        );
    }
}

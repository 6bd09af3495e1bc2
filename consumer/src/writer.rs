//! Persistence: the writer threads that store every consumed message in
//! PostgreSQL with binary COPY, and tell each consumer thread which of its
//! deliveries are committed (so it may ack them).
//!
//! Each consumer thread hands its batches of rows to one writer, always the
//! same (consumer index mod writers), as one message per batch (one channel
//! operation per consumer batch, not per row). One writer per consumer
//! matters: a consumer acks in tag order, so if its rows were spread over
//! every writer, any one writer's slow commit would stall every consumer;
//! this way it stalls a quarter of them. Each writer owns its connection and collects up to `batch_rows`
//! rows or `flush_interval` after the first. It collects by polling every
//! few milliseconds rather than waking for every arrival: a hundred
//! consumer threads hand over small batches thousands of times a second,
//! and a wake-up per hand-over cost more CPU than the COPY itself. Then it
//! writes the rows in one transaction:
//!
//! - fast path: `COPY messages … FROM STDIN BINARY`;
//! - when the batch may hold duplicates (a redelivered message, or the fast
//!   path hit a unique violation): COPY into a temporary staging table, then
//!   `INSERT … SELECT … ON CONFLICT DO NOTHING`, so a redelivery never makes
//!   a second row.
//!
//! A failed batch is kept and retried with backoff, reconnecting as needed;
//! nothing is acknowledged meanwhile, so a database outage stops acks, the
//! broker keeps the backlog, and everything drains when the database is
//! back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chatflow_protocol::Envelope;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::error::SqlState;
use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls};

use crate::worker::Committed;

const COLUMNS: &str =
    "message_id, room_id, user_id, username, message, message_type, client_timestamp, server_timestamp, server_id";
const TYPES: [Type; 9] = [
    Type::UUID,
    Type::INT4,
    Type::INT4,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::TEXT,
];
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often an idle writer looks at the stop flag.
const TICK: Duration = Duration::from_millis(100);
/// While a batch fills, how often the writer takes what has arrived.
const COLLECT_POLL: Duration = Duration::from_millis(5);

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
}

/// One message as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub message_id: uuid::Uuid,
    pub room_id: i32,
    pub user_id: i32,
    pub username: String,
    pub message: String,
    pub message_type: &'static str,
    pub client_timestamp: SystemTime,
    pub server_timestamp: SystemTime,
    pub server_id: String,
}

impl Row {
    pub fn from_envelope(envelope: &Envelope<'_>) -> Row {
        Row {
            message_id: envelope.message_id.as_uuid(),
            room_id: envelope.room_id as i32,
            user_id: envelope.user_id as i32,
            username: envelope.username.to_string(),
            message: envelope.message.to_string(),
            message_type: envelope.message_type.as_str(),
            client_timestamp: unix_ms(envelope.client_timestamp_ms),
            server_timestamp: unix_ms(envelope.server_timestamp.0),
            server_id: envelope.server_id.to_string(),
        }
    }
}

fn unix_ms(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// A row on its way to a writer, with the delivery it came from.
pub struct Pending {
    pub row: Row,
    /// Index of the consumer thread to tell when it is committed.
    pub consumer: usize,
    /// The consumer's channel lease the delivery came on (tags are per
    /// channel).
    pub epoch: u64,
    pub delivery_tag: u64,
    /// The broker redelivered it: it may already be stored.
    pub redelivered: bool,
}

/// One writer's counters and COPY latencies.
pub struct WriterStats {
    pub rows: AtomicU64,
    pub batches: AtomicU64,
    pub duplicate_batches: AtomicU64,
    pub duplicates_dropped: AtomicU64,
    pub retries: AtomicU64,
    pub connected: AtomicBool,
    pub last_error: Mutex<String>,
    /// Microseconds per committed batch (COPY + commit).
    pub latency_us: Mutex<Histogram<u64>>,
    pub batch_sizes: Mutex<Histogram<u64>>,
}

impl Default for WriterStats {
    fn default() -> Self {
        WriterStats {
            rows: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            duplicate_batches: AtomicU64::new(0),
            duplicates_dropped: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            last_error: Mutex::new(String::new()),
            latency_us: Mutex::new(
                Histogram::new_with_bounds(1, 600_000_000, 2).expect("valid bounds"),
            ),
            batch_sizes: Mutex::new(
                Histogram::new_with_bounds(1, 1_000_000, 2).expect("valid bounds"),
            ),
        }
    }
}

/// The writer threads.
pub struct Writers {
    inputs: Vec<Sender<Vec<Pending>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Writers {
    /// Connects every writer (failing if the database is unreachable now)
    /// and starts them. `notify[i]` reaches consumer thread `i`; `stats`
    /// has one entry per writer.
    pub fn start(
        config: &WriterConfig,
        stats: Arc<Vec<WriterStats>>,
        notify: Vec<Sender<Committed>>,
    ) -> anyhow::Result<Writers> {
        let stop = Arc::new(AtomicBool::new(false));
        let notify = Arc::new(notify);
        let mut threads = Vec::new();
        let mut inputs = Vec::new();
        for index in 0..config.writers {
            let (input, rows) = crossbeam_channel::bounded(config.queue_capacity);
            inputs.push(input);
            let client = Client::connect(&config.connection, NoTls)
                .map_err(|e| anyhow::anyhow!("PostgreSQL ({}): {e}", redact(&config.connection)))?;
            stats[index].connected.store(true, Ordering::Release);
            let writer = Writer {
                index,
                config: config.clone(),
                client: Some(client),
                rows,
                notify: notify.clone(),
                stats: stats.clone(),
                stop: stop.clone(),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("writer-{index}"))
                    .spawn(move || writer.run())?,
            );
        }
        Ok(Writers {
            inputs,
            stop,
            threads,
        })
    }

    /// Where consumer `consumer` sends its batches of rows.
    pub fn sender_for(&self, consumer: usize) -> Sender<Vec<Pending>> {
        self.inputs[consumer % self.inputs.len()].clone()
    }

    /// Writes what is queued (while the database answers), then stops.
    /// Call after the consumers have stopped handing rows over.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::Release);
        drop(self.inputs);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Hides the password of a connection string in messages.
fn redact(connection: &str) -> String {
    connection
        .split_whitespace()
        .map(|part| {
            if part.starts_with("password=") {
                "password=***"
            } else {
                part
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

struct Writer {
    index: usize,
    config: WriterConfig,
    client: Option<Client>,
    rows: Receiver<Vec<Pending>>,
    notify: Arc<Vec<Sender<Committed>>>,
    stats: Arc<Vec<WriterStats>>,
    stop: Arc<AtomicBool>,
}

impl Writer {
    fn run(mut self) {
        let mut batch: Vec<Pending> = Vec::with_capacity(self.config.batch_rows);
        loop {
            let first = match self.rows.recv_timeout(TICK) {
                Ok(rows) => rows,
                Err(RecvTimeoutError::Timeout) if self.stop.load(Ordering::Acquire) => return,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
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
            if !self.write_until_committed(&batch) {
                return; // stopping while the database is down: not acked, redelivered later
            }
            self.tell_consumers(&batch);
            batch.clear();
        }
    }

    /// Retries the batch until it commits; false if told to stop first.
    fn write_until_committed(&mut self, batch: &[Pending]) -> bool {
        let all = self.stats.clone();
        let stats = &all[self.index];
        let mut backoff = BACKOFF_FIRST;
        loop {
            let started = Instant::now();
            match self.write(batch) {
                Ok(()) => {
                    stats.connected.store(true, Ordering::Release);
                    stats.batches.fetch_add(1, Ordering::Relaxed);
                    stats.rows.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    let _ = stats
                        .latency_us
                        .lock()
                        .record(started.elapsed().as_micros().max(1) as u64);
                    let _ = stats.batch_sizes.lock().record(batch.len() as u64);
                    return true;
                }
                Err(e) => {
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                    stats.connected.store(false, Ordering::Release);
                    *stats.last_error.lock() = e.to_string();
                    if stats.retries.load(Ordering::Relaxed) % 20 == 1 {
                        eprintln!(
                            "writer-{}: batch of {} rows not stored, retrying: {e}",
                            self.index,
                            batch.len()
                        );
                    }
                    if self.stop.load(Ordering::Acquire) {
                        return false;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
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
            match copy_batch(client, batch) {
                Ok(()) => return Ok(()),
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
                Err(e) => return Err(e),
            }
        }
        stats.duplicate_batches.fetch_add(1, Ordering::Relaxed);
        let inserted = insert_batch_deduplicated(client, batch)?;
        stats
            .duplicates_dropped
            .fetch_add(batch.len() as u64 - inserted, Ordering::Relaxed);
        Ok(())
    }

    /// Tells each consumer which of its deliveries are now stored.
    fn tell_consumers(&self, batch: &[Pending]) {
        let mut by_consumer: HashMap<(usize, u64), Vec<u64>> = HashMap::new();
        for pending in batch {
            by_consumer
                .entry((pending.consumer, pending.epoch))
                .or_default()
                .push(pending.delivery_tag);
        }
        for ((consumer, epoch), tags) in by_consumer {
            if let Some(sender) = self.notify.get(consumer) {
                let _ = sender.send(Committed { epoch, tags });
            }
        }
    }
}

fn write_rows(
    writer: &mut BinaryCopyInWriter<'_>,
    batch: &[Pending],
) -> Result<(), postgres::Error> {
    for pending in batch {
        let r = &pending.row;
        let values: [&(dyn ToSql + Sync); 9] = [
            &r.message_id,
            &r.room_id,
            &r.user_id,
            &r.username,
            &r.message,
            &r.message_type,
            &r.client_timestamp,
            &r.server_timestamp,
            &r.server_id,
        ];
        writer.write(&values)?;
    }
    Ok(())
}

/// The fast path: one binary COPY straight into the partitioned table.
pub fn copy_batch(client: &mut Client, batch: &[Pending]) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    {
        let sink = tx.copy_in(&format!("COPY messages ({COLUMNS}) FROM STDIN BINARY"))?;
        let mut writer = BinaryCopyInWriter::new(sink, &TYPES);
        write_rows(&mut writer, batch)?;
        writer.finish()?;
    }
    tx.commit()
}

/// The dedup path: COPY into a per-session staging table, then insert what
/// is not stored yet. Returns how many rows were new.
pub fn insert_batch_deduplicated(
    client: &mut Client,
    batch: &[Pending],
) -> Result<u64, postgres::Error> {
    let mut tx = client.transaction()?;
    tx.batch_execute(
        "CREATE TEMP TABLE IF NOT EXISTS messages_staging (LIKE messages INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
    )?;
    {
        let sink = tx.copy_in(&format!(
            "COPY messages_staging ({COLUMNS}) FROM STDIN BINARY"
        ))?;
        let mut writer = BinaryCopyInWriter::new(sink, &TYPES);
        write_rows(&mut writer, batch)?;
        writer.finish()?;
    }
    let inserted = tx.execute(
        &format!("INSERT INTO messages ({COLUMNS}) SELECT {COLUMNS} FROM messages_staging ON CONFLICT DO NOTHING"),
        &[],
    )?;
    tx.commit()?;
    Ok(inserted)
}

//! The hot counters: what every queue consumer, link, writer and the Redis
//! probe count and flag as they work, and their sums.
//!
//! Each queue consumer writes only its own cache-padded [`QueueStats`] (no
//! shared cache line on the hot path; its histograms sit behind a lock only
//! a reader ever contends); each writer its own [`WriterStats`]; readers
//! sum them ([`Counters::totals`]). Everything here is relaxed atomics:
//! counters are read for reports, never to order other memory.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use chatflow_telemetry::histogram::{BATCH_ROWS, LATENCY_SECONDS};
use chatflow_telemetry::{Histogram as Buckets, HistogramSnapshot};
use crossbeam_utils::CachePadded;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

use crate::holding::Holding;

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// A histogram from 1 to `high` with `digits` significant figures.
pub fn histogram(high: u64, digits: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, high, digits).expect("static histogram bounds")
}

/// One queue consumer's counters and state.
pub struct QueueStats {
    /// Deliveries taken from RabbitMQ (good or poison, first or redelivered).
    pub consumed: AtomicU64,
    /// `message` frames published to Redis.
    pub broadcasts: AtomicU64,
    /// Deliveries not broadcast because their id was broadcast lately (a
    /// retry republished under its first id, or a redelivery).
    pub broadcasts_suppressed: AtomicU64,
    /// Deliveries acked to RabbitMQ.
    pub acked: AtomicU64,
    /// Deliveries the broker flagged as redelivered.
    pub redelivered: AtomicU64,
    /// Deliveries rejected to the dead-letter queue: undecodable, or their
    /// row refused by the database.
    pub dead_lettered: AtomicU64,
    /// Redis pipelines published (one per batch with anything to broadcast).
    pub batches: AtomicU64,
    /// Failed Redis attempts (connect or publish).
    pub redis_errors: AtomicU64,
    /// Redis connections re-established after a failure.
    pub redis_reconnects: AtomicU64,
    /// Channels this consumer lost and got again.
    pub channel_reopens: AtomicU64,
    /// Consuming on a live channel right now.
    pub amqp_up: AtomicBool,
    /// The last Redis attempt succeeded.
    pub redis_up: AtomicBool,
    /// Its standing on the queue (single active consumer): written on
    /// each change only, never per delivery.
    pub holding: Mutex<Holding>,
    /// When (Unix ms) the newest registration this queue's owner
    /// advertises was made (0: none advertised, or no answer from Redis);
    /// written by the sampler, read by a standby (see `owners`).
    pub owner_registered_ms: AtomicI64,
    /// Registrations that got their first delivery (became active).
    pub activations: AtomicU64,
    /// Standby registrations handed back to the queue's owner.
    pub yields: AtomicU64,
    pub histograms: Mutex<Histograms>,
    /// The same distributions in Prometheus buckets (cumulative, for
    /// `/metrics`; lock-free). Lag is per broadcast message here, where
    /// the hdr histogram above keeps each batch's oldest.
    pub buckets: QueueBuckets,
}

/// A queue consumer's Prometheus histograms.
pub struct QueueBuckets {
    /// Server timestamp → broadcast published, per message, seconds.
    pub lag: Buckets,
    /// One Redis pipeline round trip, seconds.
    pub publish: Buckets,
    /// Deliveries per batch.
    pub batch: Buckets,
}

impl Default for QueueBuckets {
    fn default() -> Self {
        QueueBuckets {
            lag: Buckets::seconds(LATENCY_SECONDS),
            publish: Buckets::seconds(LATENCY_SECONDS),
            batch: Buckets::counts(BATCH_ROWS),
        }
    }
}

impl Default for QueueStats {
    fn default() -> Self {
        QueueStats {
            consumed: AtomicU64::new(0),
            broadcasts: AtomicU64::new(0),
            broadcasts_suppressed: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            redis_errors: AtomicU64::new(0),
            redis_reconnects: AtomicU64::new(0),
            channel_reopens: AtomicU64::new(0),
            amqp_up: AtomicBool::new(false),
            redis_up: AtomicBool::new(true),
            holding: Mutex::new(Holding::default()),
            owner_registered_ms: AtomicI64::new(0),
            activations: AtomicU64::new(0),
            yields: AtomicU64::new(0),
            histograms: Mutex::new(Histograms::new()),
            buckets: QueueBuckets::default(),
        }
    }
}

/// Latency and size distributions of one queue consumer.
pub struct Histograms {
    /// One Redis pipeline round trip, microseconds.
    pub publish_us: Histogram<u64>,
    /// Server timestamp → broadcast published, milliseconds: the time a
    /// message spent in the broker and the consumer.
    pub lag_ms: Histogram<u64>,
    /// Deliveries per batch.
    pub batch_size: Histogram<u64>,
}

impl Histograms {
    pub fn new() -> Self {
        // Three significant figures: a few KiB per histogram.
        Histograms {
            publish_us: histogram(60_000_000, 3),
            lag_ms: histogram(3_600_000, 3),
            batch_size: histogram(65_536, 3),
        }
    }

    fn add(&mut self, other: &Histograms) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.publish_us.add(&other.publish_us);
        let _ = self.lag_ms.add(&other.lag_ms);
        let _ = self.batch_size.add(&other.batch_size);
    }
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms::new()
    }
}

/// [`QueueBuckets`] of every queue consumer, as one scrape read them.
pub struct QueueBucketsSnapshot {
    pub lag: HistogramSnapshot,
    pub publish: HistogramSnapshot,
    pub batch: HistogramSnapshot,
}

/// One AMQP connection's state, kept by its link thread.
#[derive(Default)]
pub struct LinkStats {
    pub connected: AtomicBool,
    /// Connections re-established after a loss.
    pub reconnects: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

/// Redis as the sampler's periodic PING sees it, so an idle consumer still
/// reports a Redis outage.
pub struct RedisProbe {
    pub up: AtomicBool,
    pub last_error: Mutex<Option<String>>,
}

impl Default for RedisProbe {
    fn default() -> Self {
        RedisProbe {
            up: AtomicBool::new(true),
            last_error: Mutex::new(None),
        }
    }
}

/// One PostgreSQL writer's counters and COPY latencies.
pub struct WriterStats {
    pub rows: AtomicU64,
    pub batches: AtomicU64,
    pub duplicate_batches: AtomicU64,
    pub duplicates_dropped: AtomicU64,
    pub retries: AtomicU64,
    /// Rows the database refused on their own (a bad row, not an outage),
    /// handed back to be rejected to the dead-letter queue. A row whose
    /// reject did not reach the broker (channel lost) comes back and is
    /// counted again.
    pub rows_dead_lettered: AtomicU64,
    /// Refused writes split in two to find the refused rows.
    pub batch_splits: AtomicU64,
    pub connected: AtomicBool,
    pub last_error: Mutex<String>,
    /// Microseconds per committed batch (COPY + commit).
    pub latency_us: Mutex<Histogram<u64>>,
    pub batch_sizes: Mutex<Histogram<u64>>,
    /// COPY + commit per committed batch, seconds (Prometheus buckets).
    pub copy_seconds: Buckets,
    /// Rows per committed batch (Prometheus buckets).
    pub batch_rows: Buckets,
}

impl WriterStats {
    /// COPY + commit latency, microseconds: up to 10 minutes, 2 figures.
    pub fn latency_histogram() -> Histogram<u64> {
        histogram(600_000_000, 2)
    }

    /// Rows per committed batch.
    pub fn batch_size_histogram() -> Histogram<u64> {
        histogram(1_000_000, 2)
    }
}

impl Default for WriterStats {
    fn default() -> Self {
        WriterStats {
            rows: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            duplicate_batches: AtomicU64::new(0),
            duplicates_dropped: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            rows_dead_lettered: AtomicU64::new(0),
            batch_splits: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            last_error: Mutex::new(String::new()),
            latency_us: Mutex::new(WriterStats::latency_histogram()),
            batch_sizes: Mutex::new(WriterStats::batch_size_histogram()),
            copy_seconds: Buckets::seconds(LATENCY_SECONDS),
            batch_rows: Buckets::counts(BATCH_ROWS),
        }
    }
}

/// Every writer's histograms merged: cumulative since start.
pub struct WriterHistograms {
    /// COPY + commit per batch, microseconds.
    pub latency_us: Histogram<u64>,
    /// Rows per committed batch.
    pub batch_sizes: Histogram<u64>,
}

/// Every counter of the process, grouped by who writes it.
pub struct Counters {
    /// Indexed like the queues this instance consumes
    /// ([`Shared::queues`](crate::state::Shared::queues)).
    pub queues: Vec<CachePadded<QueueStats>>,
    /// The room of each of `queues`.
    room_of: Vec<u32>,
    /// Rooms in the topology (per-room sums have one entry per room).
    rooms: usize,
    /// One per AMQP connection.
    pub links: Vec<LinkStats>,
    pub redis_probe: RedisProbe,
    /// One per PostgreSQL writer (none with persistence off); shared with
    /// the writers, which are started apart from the rest.
    pub writers: Arc<Vec<WriterStats>>,
}

/// Totals since start.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub consumed: u64,
    pub broadcasts: u64,
    pub broadcasts_suppressed: u64,
    pub acked: u64,
    pub redelivered: u64,
    pub dead_lettered: u64,
    pub batches: u64,
    pub redis_errors: u64,
    pub redis_reconnects: u64,
    pub amqp_reconnects: u64,
    pub channel_reopens: u64,
}

impl Counters {
    /// Counters for queues in the rooms `room_of` (one entry per queue
    /// consumed, each in 1..=`rooms`).
    pub fn new(room_of: Vec<u32>, rooms: u32, links: usize, writers: usize) -> Self {
        Counters {
            queues: (0..room_of.len())
                .map(|_| CachePadded::new(QueueStats::default()))
                .collect(),
            room_of,
            rooms: rooms as usize,
            links: (0..links).map(|_| LinkStats::default()).collect(),
            redis_probe: RedisProbe::default(),
            writers: Arc::new((0..writers).map(|_| WriterStats::default()).collect()),
        }
    }

    fn sum_queues(&self, f: fn(&QueueStats) -> &AtomicU64) -> u64 {
        self.queues.iter().map(|q| load(f(q))).sum()
    }

    /// The sum of one counter over every writer.
    pub fn sum_writers(&self, f: fn(&WriterStats) -> &AtomicU64) -> u64 {
        self.writers.iter().map(|w| load(f(w))).sum()
    }

    pub fn totals(&self) -> Totals {
        Totals {
            consumed: self.sum_queues(|q| &q.consumed),
            broadcasts: self.sum_queues(|q| &q.broadcasts),
            broadcasts_suppressed: self.sum_queues(|q| &q.broadcasts_suppressed),
            acked: self.sum_queues(|q| &q.acked),
            redelivered: self.sum_queues(|q| &q.redelivered),
            dead_lettered: self.sum_queues(|q| &q.dead_lettered),
            batches: self.sum_queues(|q| &q.batches),
            redis_errors: self.sum_queues(|q| &q.redis_errors),
            redis_reconnects: self.sum_queues(|q| &q.redis_reconnects),
            amqp_reconnects: self.links.iter().map(|l| load(&l.reconnects)).sum(),
            channel_reopens: self.sum_queues(|q| &q.channel_reopens),
        }
    }

    /// Per-room consumed totals, room 1 first (0 for a room none of whose
    /// queues this instance consumes).
    pub fn consumed_per_room(&self) -> Vec<u64> {
        let mut rooms = vec![0; self.rooms];
        for (q, &room) in self.queues.iter().zip(&self.room_of) {
            rooms[room as usize - 1] += load(&q.consumed);
        }
        rooms
    }

    /// Rows committed by every writer.
    pub fn rows_stored(&self) -> u64 {
        self.sum_writers(|w| &w.rows)
    }

    /// Every queue consumer's histograms merged.
    pub fn histograms(&self) -> Histograms {
        let mut all = Histograms::new();
        for q in &self.queues {
            all.add(&q.histograms.lock());
        }
        all
    }

    /// Every writer's histograms merged (each writer's lock is held only
    /// while its histograms are added).
    pub fn writer_histograms(&self) -> WriterHistograms {
        let mut all = WriterHistograms {
            latency_us: WriterStats::latency_histogram(),
            batch_sizes: WriterStats::batch_size_histogram(),
        };
        for w in self.writers.iter() {
            // Same bounds on both sides: adding cannot fail.
            let _ = all.latency_us.add(&*w.latency_us.lock());
            let _ = all.batch_sizes.add(&*w.batch_sizes.lock());
        }
        all
    }

    /// The Prometheus histograms of every queue consumer, summed.
    pub fn queue_buckets(&self) -> QueueBucketsSnapshot {
        let mut all = QueueBucketsSnapshot {
            lag: HistogramSnapshot::empty(LATENCY_SECONDS),
            publish: HistogramSnapshot::empty(LATENCY_SECONDS),
            batch: HistogramSnapshot::empty(BATCH_ROWS),
        };
        for q in &self.queues {
            all.lag.add(&q.buckets.lag.snapshot());
            all.publish.add(&q.buckets.publish.snapshot());
            all.batch.add(&q.buckets.batch.snapshot());
        }
        all
    }

    /// The writers' Prometheus histograms: (COPY + commit seconds, rows
    /// per batch), summed.
    pub fn writer_buckets(&self) -> (HistogramSnapshot, HistogramSnapshot) {
        let mut copy = HistogramSnapshot::empty(LATENCY_SECONDS);
        let mut rows = HistogramSnapshot::empty(BATCH_ROWS);
        for w in self.writers.iter() {
            copy.add(&w.copy_seconds.snapshot());
            rows.add(&w.batch_rows.snapshot());
        }
        (copy, rows)
    }

    /// Queue consumers consuming on a live channel.
    pub fn amqp_up(&self) -> usize {
        self.queues
            .iter()
            .filter(|q| q.amqp_up.load(Ordering::Relaxed))
            .count()
    }

    /// Queue consumers whose last Redis attempt succeeded.
    pub fn redis_up(&self) -> usize {
        self.queues
            .iter()
            .filter(|q| q.redis_up.load(Ordering::Relaxed))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_queues_and_rooms_sum_their_shards() {
        let c = Counters::new(vec![1, 1, 1, 1, 1, 2, 2, 2, 2, 2], 3, 2, 0);
        add(&c.queues[0].consumed, 3);
        add(&c.queues[4].consumed, 4);
        add(&c.queues[7].consumed, 5);
        add(&c.queues[7].dead_lettered, 1);
        add(&c.links[1].reconnects, 2);
        assert_eq!(c.consumed_per_room(), vec![7, 5, 0]);
        let t = c.totals();
        assert_eq!((t.consumed, t.dead_lettered, t.amqp_reconnects), (12, 1, 2));
    }
}

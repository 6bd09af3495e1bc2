//! Counters, connection state, rates and the two documents built from them:
//! `/health` (JSON) and `/metrics` (Prometheus text).
//!
//! Each consumer thread writes only its own cache-padded [`ThreadStats`]
//! (no shared cache line on the hot path; its histograms sit behind a lock
//! only a reader ever contends); readers sum them. Per-room rates come from
//! the sampler thread, which snapshots per-room totals once a second.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatflow_protocol::SHARDS_PER_ROOM;
use crossbeam_utils::CachePadded;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

use crate::config::Config;
use crate::writer::WriterStats;

/// Rates are averaged over this window: long enough to smooth batching,
/// short enough to show a stall within seconds.
pub const RATE_WINDOW: Duration = Duration::from_secs(5);

/// One consumer thread's counters and state.
pub struct ThreadStats {
    /// Deliveries taken from RabbitMQ (good or poison, first or redelivered).
    pub consumed: AtomicU64,
    /// `message` frames published to Redis.
    pub broadcasts: AtomicU64,
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
    /// Channels this thread lost and got again.
    pub channel_reopens: AtomicU64,
    /// Consuming on a live channel right now.
    pub amqp_up: AtomicBool,
    /// The last Redis attempt succeeded.
    pub redis_up: AtomicBool,
    pub histograms: Mutex<Histograms>,
}

/// Latency and size distributions of one thread.
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
    fn new() -> Self {
        // Three significant figures: a few KiB per histogram.
        let h = |high| Histogram::new_with_bounds(1, high, 3).expect("static histogram bounds");
        Histograms {
            publish_us: h(60_000_000),
            lag_ms: h(3_600_000),
            batch_size: h(65_536),
        }
    }

    fn add(&mut self, other: &Histograms) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.publish_us.add(&other.publish_us);
        let _ = self.lag_ms.add(&other.lag_ms);
        let _ = self.batch_size.add(&other.batch_size);
    }
}

impl Default for ThreadStats {
    fn default() -> Self {
        ThreadStats {
            consumed: AtomicU64::new(0),
            broadcasts: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            redis_errors: AtomicU64::new(0),
            redis_reconnects: AtomicU64::new(0),
            channel_reopens: AtomicU64::new(0),
            amqp_up: AtomicBool::new(false),
            redis_up: AtomicBool::new(true),
            histograms: Mutex::new(Histograms::new()),
        }
    }
}

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
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
#[derive(Default)]
pub struct RedisProbe {
    pub up: AtomicBool,
    pub last_error: Mutex<Option<String>>,
}

/// Everything the threads and readers share.
pub struct Shared {
    pub config: Config,
    pub started: Instant,
    pub shutting_down: AtomicBool,
    /// Indexed like the queues: thread `i` is room `i / 5 + 1`, shard `i % 5`.
    pub threads: Vec<CachePadded<ThreadStats>>,
    pub links: Vec<LinkStats>,
    /// Which link (AMQP connection) each thread uses.
    pub link_of: Vec<usize>,
    pub redis_probe: RedisProbe,
    pub rates: Mutex<RateWindow>,
    /// Source of [`Lease`](crate::link::Lease) epochs.
    pub epochs: AtomicU64,
    /// One per PostgreSQL writer (none with persistence off).
    pub writers: Arc<Vec<WriterStats>>,
}

impl Shared {
    pub fn new(config: Config, link_of: Vec<usize>) -> Self {
        let config_persistence = (config.enable_persistence, config.database.writers);
        let threads = (0..config.consumer_count())
            .map(|_| CachePadded::new(ThreadStats::default()))
            .collect();
        let links = (0..config.amqp_connections)
            .map(|_| LinkStats::default())
            .collect();
        Shared {
            config,
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
            threads,
            links,
            link_of,
            redis_probe: RedisProbe {
                up: AtomicBool::new(true),
                last_error: Mutex::new(None),
            },
            rates: Mutex::new(RateWindow::default()),
            epochs: AtomicU64::new(0),
            writers: Arc::new(if config_persistence.0 {
                (0..config_persistence.1)
                    .map(|_| WriterStats::default())
                    .collect()
            } else {
                Vec::new()
            }),
        }
    }

    /// (room, shard) of consumer thread `index`.
    pub fn queue_of(index: usize) -> (u32, u32) {
        let per_room = SHARDS_PER_ROOM as usize;
        ((index / per_room) as u32 + 1, (index % per_room) as u32)
    }

    pub fn totals(&self) -> Totals {
        let sum = |f: fn(&ThreadStats) -> &AtomicU64| -> u64 {
            self.threads
                .iter()
                .map(|t| f(t).load(Ordering::Relaxed))
                .sum()
        };
        Totals {
            consumed: sum(|t| &t.consumed),
            broadcasts: sum(|t| &t.broadcasts),
            acked: sum(|t| &t.acked),
            redelivered: sum(|t| &t.redelivered),
            dead_lettered: sum(|t| &t.dead_lettered),
            batches: sum(|t| &t.batches),
            redis_errors: sum(|t| &t.redis_errors),
            redis_reconnects: sum(|t| &t.redis_reconnects),
            amqp_reconnects: self
                .links
                .iter()
                .map(|l| l.reconnects.load(Ordering::Relaxed))
                .sum(),
            channel_reopens: sum(|t| &t.channel_reopens),
        }
    }

    /// Per-room consumed totals, room 1 first.
    pub fn consumed_per_room(&self) -> Vec<u64> {
        self.threads
            .chunks(SHARDS_PER_ROOM as usize)
            .map(|room| {
                room.iter()
                    .map(|t| t.consumed.load(Ordering::Relaxed))
                    .sum()
            })
            .collect()
    }

    /// The sampler's tick: records the current totals for the rates.
    pub fn sample(&self) {
        let snapshot = Snapshot {
            at: Instant::now(),
            per_room: self.consumed_per_room(),
            broadcasts: self.totals().broadcasts,
            rows: self.rows_stored(),
        };
        self.rates.lock().push(snapshot);
    }

    /// Rows committed by every writer.
    pub fn rows_stored(&self) -> u64 {
        self.writers
            .iter()
            .map(|w| w.rows.load(Ordering::Relaxed))
            .sum()
    }

    fn database_status(&self) -> Option<DatabaseStatus> {
        if !self.config.enable_persistence {
            return None;
        }
        let sum = |f: fn(&WriterStats) -> &AtomicU64| -> u64 {
            self.writers
                .iter()
                .map(|w| f(w).load(Ordering::Relaxed))
                .sum()
        };
        let writers_connected = self
            .writers
            .iter()
            .filter(|w| w.connected.load(Ordering::Relaxed))
            .count();
        let mut latency =
            Histogram::<u64>::new_with_bounds(1, 600_000_000, 2).expect("valid bounds");
        let mut sizes = Histogram::<u64>::new_with_bounds(1, 1_000_000, 2).expect("valid bounds");
        for w in self.writers.iter() {
            let _ = latency.add(&*w.latency_us.lock());
            let _ = sizes.add(&*w.batch_sizes.lock());
        }
        let last_error = self
            .writers
            .iter()
            .filter(|w| !w.connected.load(Ordering::Relaxed))
            .map(|w| w.last_error.lock().clone())
            .find(|e| !e.is_empty());
        let rows_per_second = self.rates.lock().rates(0).rows;
        Some(DatabaseStatus {
            address: self.config.database.display(),
            connected: writers_connected == self.writers.len(),
            writers: self.writers.len(),
            writers_connected,
            rows: sum(|w| &w.rows),
            rows_per_second,
            batches: sum(|w| &w.batches),
            duplicate_batches: sum(|w| &w.duplicate_batches),
            duplicates_dropped: sum(|w| &w.duplicates_dropped),
            retries: sum(|w| &w.retries),
            rows_dead_lettered: sum(|w| &w.rows_dead_lettered),
            batch_splits: sum(|w| &w.batch_splits),
            copy_latency_us: Quantiles::of(&latency),
            batch_rows: Quantiles::of(&sizes),
            last_error,
        })
    }

    fn histograms(&self) -> Histograms {
        let mut all = Histograms::new();
        for t in &self.threads {
            all.add(&t.histograms.lock());
        }
        all
    }

    /// The `/health` document.
    pub fn health(&self) -> Health {
        let amqp_consumers_up = self
            .threads
            .iter()
            .filter(|t| t.amqp_up.load(Ordering::Relaxed))
            .count();
        let redis_consumers_up = self
            .threads
            .iter()
            .filter(|t| t.redis_up.load(Ordering::Relaxed))
            .count();
        let consumers = self.threads.len();
        let links: Vec<LinkStatus> = self
            .links
            .iter()
            .enumerate()
            .map(|(index, l)| LinkStatus {
                index,
                connected: l.connected.load(Ordering::Relaxed),
                consumers: self.link_of.iter().filter(|&&i| i == index).count(),
                consumers_up: self
                    .threads
                    .iter()
                    .zip(&self.link_of)
                    .filter(|(t, &i)| i == index && t.amqp_up.load(Ordering::Relaxed))
                    .count(),
                reconnects: l.reconnects.load(Ordering::Relaxed),
                last_error: l.last_error.lock().clone(),
            })
            .collect();
        let rabbitmq_connected =
            amqp_consumers_up == consumers && links.iter().all(|l| l.connected);
        let probe_up = self.redis_probe.up.load(Ordering::Relaxed);
        let redis_connected = probe_up && redis_consumers_up == consumers;
        let redis_error = self.redis_probe.last_error.lock().clone();

        let mut reasons = Vec::new();
        if !rabbitmq_connected {
            let mut reason = format!(
                "rabbitmq at {}: {amqp_consumers_up} of {consumers} consumers connected",
                self.config.amqp_display()
            );
            if let Some(error) = links.iter().find_map(|l| l.last_error.as_ref()) {
                let _ = write!(reason, " (last error: {error})");
            }
            reasons.push(reason);
        }
        if !redis_connected {
            let mut reason = format!(
                "redis at {}: broadcasts failing on {} of {consumers} consumers",
                self.config.redis_display(),
                consumers - redis_consumers_up
            );
            if !probe_up {
                reason.push_str(", ping failing");
            }
            if let Some(error) = &redis_error {
                let _ = write!(reason, " (last error: {error})");
            }
            reasons.push(reason);
        }
        let database = self.database_status();
        if let Some(db) = database.as_ref().filter(|db| !db.connected) {
            let mut reason = format!(
                "postgresql at {}: {} of {} writers failing, acks held back",
                self.config.database.display(),
                db.writers - db.writers_connected,
                db.writers
            );
            if let Some(error) = &db.last_error {
                let _ = write!(reason, " (last error: {error})");
            }
            reasons.push(reason);
        }
        let status = if self.shutting_down.load(Ordering::Relaxed) {
            "shutting_down"
        } else if reasons.is_empty() {
            "ok"
        } else {
            "degraded"
        };

        let rates = self
            .rates
            .lock()
            .rates(self.config.rooms().count() as usize);
        let consumed = self.consumed_per_room();
        let per_room = consumed
            .iter()
            .enumerate()
            .map(|(i, &consumed)| RoomStatus {
                room: i as u32 + 1,
                consumed,
                consumed_per_second: rates.per_room.get(i).copied().unwrap_or(0.0),
            })
            .collect();
        let h = self.histograms();
        Health {
            status,
            reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            namespace: self.config.services.topology.namespace.clone(),
            rooms: self.config.rooms().count(),
            consumers,
            prefetch: self.config.prefetch,
            ack_batch: self.config.ack_batch,
            persistence: self.config.enable_persistence,
            rabbitmq: RabbitStatus {
                address: self.config.amqp_display(),
                connected: rabbitmq_connected,
                consumers_connected: amqp_consumers_up,
                connections: links,
            },
            redis: RedisStatus {
                address: self.config.redis_display(),
                connected: redis_connected,
                ping_ok: probe_up,
                consumers_connected: redis_consumers_up,
                last_error: redis_error,
            },
            rates: Rates {
                window_seconds: rates.window.as_secs_f64(),
                consumed_per_second: rates.per_room.iter().sum(),
                broadcasts_per_second: rates.broadcasts,
            },
            database,
            per_room,
            totals: self.totals(),
            latency: Latency {
                redis_publish_us: Quantiles::of(&h.publish_us),
                lag_ms: Quantiles::of(&h.lag_ms),
                batch_size: Quantiles::of(&h.batch_size),
            },
        }
    }

    /// `/metrics` in the Prometheus text format.
    pub fn prometheus(&self) -> String {
        let health = self.health();
        let t = &health.totals;
        let mut out = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP chatflow_consumer_{name} {help}");
            let _ = writeln!(out, "# TYPE chatflow_consumer_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "chatflow_consumer_{name}{labels} {value}");
            }
        };
        let one = |v: u64| vec![(String::new(), v as f64)];
        let flag = |b: bool| vec![(String::new(), if b { 1.0 } else { 0.0 })];
        let per_room: Vec<(String, f64)> = health
            .per_room
            .iter()
            .map(|r| (format!("{{room=\"{}\"}}", r.room), r.consumed as f64))
            .collect();
        metric(
            "consumed_total",
            "counter",
            "Deliveries taken from RabbitMQ, per room.",
            &per_room,
        );
        for (name, help, value) in [
            (
                "broadcasts_total",
                "Message frames published to Redis.",
                t.broadcasts,
            ),
            ("acked_total", "Deliveries acked to RabbitMQ.", t.acked),
            (
                "redelivered_total",
                "Deliveries flagged redelivered by the broker.",
                t.redelivered,
            ),
            (
                "dead_lettered_total",
                "Deliveries rejected to the dead-letter queue (undecodable, or their row refused by the database).",
                t.dead_lettered,
            ),
            ("batches_total", "Redis pipelines published.", t.batches),
            (
                "redis_errors_total",
                "Failed Redis attempts.",
                t.redis_errors,
            ),
            (
                "redis_reconnects_total",
                "Redis connections re-established after a failure.",
                t.redis_reconnects,
            ),
            (
                "amqp_reconnects_total",
                "AMQP connections re-established after a loss.",
                t.amqp_reconnects,
            ),
            (
                "channel_reopens_total",
                "Consumer channels lost and opened again.",
                t.channel_reopens,
            ),
        ] {
            metric(name, "counter", help, &one(value));
        }
        metric(
            "rabbitmq_connected",
            "gauge",
            "1 when every consumer is consuming on a live channel.",
            &flag(health.rabbitmq.connected),
        );
        metric(
            "consumers_connected",
            "gauge",
            "Consumers consuming on a live channel.",
            &one(health.rabbitmq.consumers_connected as u64),
        );
        metric(
            "redis_connected",
            "gauge",
            "1 when Redis answers and every consumer's last publish succeeded.",
            &flag(health.redis.connected),
        );
        metric(
            "degraded",
            "gauge",
            "1 while /health reports degraded.",
            &flag(health.status == "degraded"),
        );
        if let Some(db) = &health.database {
            metric(
                "database_connected",
                "gauge",
                "1 when every PostgreSQL writer's last batch committed.",
                &flag(db.connected),
            );
            for (name, help, value) in [
                (
                    "rows_stored_total",
                    "Rows committed to PostgreSQL.",
                    db.rows,
                ),
                ("copy_batches_total", "Batches committed.", db.batches),
                (
                    "duplicate_batches_total",
                    "Batches written through the deduplicating staging path.",
                    db.duplicate_batches,
                ),
                (
                    "duplicates_dropped_total",
                    "Redelivered rows already stored, dropped by ON CONFLICT.",
                    db.duplicates_dropped,
                ),
                (
                    "write_retries_total",
                    "Failed batch attempts, retried.",
                    db.retries,
                ),
                (
                    "rows_dead_lettered_total",
                    "Rows PostgreSQL refused on their own, rejected to the dead-letter queue.",
                    db.rows_dead_lettered,
                ),
                (
                    "batch_splits_total",
                    "Refused writes split in two to find the refused rows.",
                    db.batch_splits,
                ),
            ] {
                metric(name, "counter", help, &one(value));
            }
        }
        // A summary's samples: quantiles as labels, the count as the
        // `_count` suffix (the "labels" string is appended to the name).
        let summary = |q: &Quantiles, scale: f64| -> Vec<(String, f64)> {
            vec![
                ("{quantile=\"0.5\"}".to_string(), q.p50 as f64 * scale),
                ("{quantile=\"0.99\"}".to_string(), q.p99 as f64 * scale),
                ("{quantile=\"1\"}".to_string(), q.max as f64 * scale),
                ("_count".to_string(), q.count as f64),
            ]
        };
        if let Some(db) = &health.database {
            metric(
                "copy_seconds",
                "summary",
                "COPY and commit of one batch.",
                &summary(&db.copy_latency_us, 1e-6),
            );
        }
        let l = &health.latency;
        metric(
            "redis_publish_seconds",
            "summary",
            "Redis pipeline round trip.",
            &summary(&l.redis_publish_us, 1e-6),
        );
        metric(
            "lag_seconds",
            "summary",
            "Server timestamp to broadcast published.",
            &summary(&l.lag_ms, 1e-3),
        );
        metric(
            "batch_size",
            "summary",
            "Deliveries per batch.",
            &summary(&l.batch_size, 1.0),
        );
        metric(
            "uptime_seconds",
            "gauge",
            "Seconds since start.",
            &[(String::new(), health.uptime_seconds)],
        );
        out
    }
}

/// Totals since start.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub consumed: u64,
    pub broadcasts: u64,
    pub acked: u64,
    pub redelivered: u64,
    pub dead_lettered: u64,
    pub batches: u64,
    pub redis_errors: u64,
    pub redis_reconnects: u64,
    pub amqp_reconnects: u64,
    pub channel_reopens: u64,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// `ok`, `degraded` (see `reason`) or `shutting_down`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub uptime_seconds: f64,
    pub namespace: String,
    pub rooms: u32,
    pub consumers: usize,
    pub prefetch: u16,
    pub ack_batch: usize,
    pub persistence: bool,
    pub rabbitmq: RabbitStatus,
    pub redis: RedisStatus,
    /// Present with persistence on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseStatus>,
    pub rates: Rates,
    pub per_room: Vec<RoomStatus>,
    pub totals: Totals,
    pub latency: Latency,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RabbitStatus {
    pub address: String,
    pub connected: bool,
    pub consumers_connected: usize,
    pub connections: Vec<LinkStatus>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkStatus {
    pub index: usize,
    pub connected: bool,
    pub consumers: usize,
    pub consumers_up: usize,
    pub reconnects: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedisStatus {
    pub address: String,
    pub connected: bool,
    pub ping_ok: bool,
    pub consumers_connected: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseStatus {
    pub address: String,
    pub connected: bool,
    pub writers: usize,
    pub writers_connected: usize,
    pub rows: u64,
    pub rows_per_second: f64,
    pub batches: u64,
    pub duplicate_batches: u64,
    pub duplicates_dropped: u64,
    pub retries: u64,
    /// Rows the database refused on their own, handed back to be
    /// dead-lettered (a bad row, never an outage).
    pub rows_dead_lettered: u64,
    /// Refused writes split in two to find the refused rows.
    pub batch_splits: u64,
    /// COPY + commit per batch, microseconds.
    pub copy_latency_us: Quantiles,
    pub batch_rows: Quantiles,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rates {
    pub window_seconds: f64,
    pub consumed_per_second: f64,
    pub broadcasts_per_second: f64,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomStatus {
    pub room: u32,
    pub consumed: u64,
    pub consumed_per_second: f64,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    pub redis_publish_us: Quantiles,
    pub lag_ms: Quantiles,
    pub batch_size: Quantiles,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Quantiles {
    pub count: u64,
    pub p50: u64,
    pub p95: u64,
    pub p99: u64,
    pub max: u64,
}

impl Quantiles {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Quantiles::default();
        }
        Quantiles {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p95: h.value_at_quantile(0.95),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        }
    }
}

struct Snapshot {
    at: Instant,
    per_room: Vec<u64>,
    broadcasts: u64,
    rows: u64,
}

/// The last [`RATE_WINDOW`] of once-a-second snapshots.
#[derive(Default)]
pub struct RateWindow {
    snapshots: VecDeque<Snapshot>,
}

struct Computed {
    window: Duration,
    per_room: Vec<f64>,
    broadcasts: f64,
    rows: f64,
}

impl RateWindow {
    fn push(&mut self, snapshot: Snapshot) {
        self.snapshots.push_back(snapshot);
        while self.snapshots.len() > 2
            && snapshot_age(&self.snapshots[0], self.snapshots.back()) > RATE_WINDOW
        {
            self.snapshots.pop_front();
        }
    }

    fn rates(&self, rooms: usize) -> Computed {
        let (Some(first), Some(last)) = (self.snapshots.front(), self.snapshots.back()) else {
            return Computed {
                window: Duration::ZERO,
                per_room: vec![0.0; rooms],
                broadcasts: 0.0,
                rows: 0.0,
            };
        };
        let window = last.at.duration_since(first.at);
        let secs = window.as_secs_f64();
        let rate = |a: u64, b: u64| {
            if secs > 0.0 {
                b.saturating_sub(a) as f64 / secs
            } else {
                0.0
            }
        };
        Computed {
            window,
            per_room: first
                .per_room
                .iter()
                .zip(&last.per_room)
                .map(|(&a, &b)| rate(a, b))
                .collect(),
            broadcasts: rate(first.broadcasts, last.broadcasts),
            rows: rate(first.rows, last.rows),
        }
    }
}

fn snapshot_age(first: &Snapshot, last: Option<&Snapshot>) -> Duration {
    last.map_or(Duration::ZERO, |l| l.at.duration_since(first.at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        let config = Config {
            services: chatflow_broker::BrokerSettings::default()
                .with_topology("chatflow", chatflow_protocol::Rooms::new(2).unwrap()),
            amqp_connections: 2,
            enable_persistence: false,
            ..Config::default()
        };
        Shared::new(config, vec![0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    }

    #[test]
    fn threads_map_to_rooms_and_shards() {
        assert_eq!(Shared::queue_of(0), (1, 0));
        assert_eq!(Shared::queue_of(4), (1, 4));
        assert_eq!(Shared::queue_of(5), (2, 0));
        assert_eq!(Shared::queue_of(99), (20, 4));
    }

    #[test]
    fn totals_sum_threads_and_rooms_sum_their_shards() {
        let s = shared();
        add(&s.threads[0].consumed, 3);
        add(&s.threads[4].consumed, 4);
        add(&s.threads[7].consumed, 5);
        add(&s.threads[7].dead_lettered, 1);
        assert_eq!(s.consumed_per_room(), vec![7, 5]);
        assert_eq!(s.totals().consumed, 12);
        assert_eq!(s.totals().dead_lettered, 1);
    }

    #[test]
    fn health_is_degraded_with_a_reason_until_every_consumer_is_up() {
        let s = shared();
        let h = s.health();
        assert_eq!(h.status, "degraded");
        assert!(h.reason.as_deref().unwrap().contains("rabbitmq"));
        for t in &s.threads {
            t.amqp_up.store(true, Ordering::Relaxed);
        }
        for l in &s.links {
            l.connected.store(true, Ordering::Relaxed);
        }
        assert_eq!(s.health().status, "ok");
        s.threads[3].redis_up.store(false, Ordering::Relaxed);
        let h = s.health();
        assert_eq!(h.status, "degraded");
        assert!(
            h.reason.as_deref().unwrap().contains("redis"),
            "{:?}",
            h.reason
        );
    }

    #[test]
    fn rates_come_from_the_snapshot_window() {
        let mut w = RateWindow::default();
        let t0 = Instant::now();
        w.push(Snapshot {
            at: t0,
            per_room: vec![0, 10],
            broadcasts: 0,
            rows: 0,
        });
        w.push(Snapshot {
            at: t0 + Duration::from_secs(2),
            per_room: vec![100, 10],
            broadcasts: 50,
            rows: 40,
        });
        let r = w.rates(2);
        assert_eq!(r.per_room, vec![50.0, 0.0]);
        assert_eq!(r.broadcasts, 25.0);
        assert_eq!(r.rows, 20.0);
    }

    #[test]
    fn prometheus_text_has_help_type_and_samples() {
        let s = shared();
        add(&s.threads[6].consumed, 9);
        let text = s.prometheus();
        assert!(text.contains("# TYPE chatflow_consumer_consumed_total counter\n"));
        assert!(
            text.contains("chatflow_consumer_consumed_total{room=\"2\"} 9\n"),
            "{text}"
        );
        assert!(text.contains("chatflow_consumer_dead_lettered_total 0\n"));
        assert!(text.contains("chatflow_consumer_redis_publish_seconds_count 0\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("chatflow_consumer_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}

//! The CONSUMER SNAPSHOT (server/API.md): what this consumer says about
//! itself to the fleet once a second — status and reason, per-second
//! rates over the last 5 s (the [`rates`](crate::rates) window), the lag
//! from server timestamp to broadcast, the database writers' counters,
//! COPY+commit latency and batch-size quantiles, those three over the last
//! 10 s ([`SnapshotWindows`]), and the `/health` totals. The sampler builds it from [`Health`] and publishes it to the
//! fleet registry in Redis (`chatflow_broker::fleet`), where every
//! server's read API finds it.
//!
//! `reason` and `database` are `null` rather than absent when there is
//! none (healthy; persistence off), so every snapshot has the same keys.
//! Keys are only ever added (`lagMs` came after the first version), so a
//! reader of another version still finds every key it knows.

use std::time::{Duration, Instant};

use chatflow_protocol::ServerTime;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::counters::{Totals, WriterHistograms};
use crate::health::{Health, Quantiles};
use crate::window::{HistogramWindow, QUANTILE_WINDOW};

/// One consumer's snapshot, camelCase as published.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerSnapshot {
    pub consumer_id: String,
    /// `ok`, `degraded` or `shutting_down`, as `/health` says.
    pub status: &'static str,
    /// Why `degraded`.
    pub reason: Option<String>,
    pub published_at: ServerTime,
    /// 0 when published; a reader replaces it with the age it sees.
    pub age_seconds: f64,
    pub uptime_seconds: f64,
    /// Queue consumers (one per room queue).
    pub queues: usize,
    pub consumed_per_second: f64,
    pub broadcasts_per_second: f64,
    /// Rows committed per second (0 with persistence off).
    pub rows_per_second: f64,
    /// Server timestamp → broadcast published to Redis, over the last
    /// 10 s, milliseconds: the time a message spent in the broker and the
    /// consumer before it went out to the servers.
    pub lag_ms: Quantiles,
    /// `null` with persistence off.
    pub database: Option<DatabaseSnapshot>,
    pub totals: Totals,
}

/// The writers' side.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSnapshot {
    pub writers: usize,
    pub writers_connected: usize,
    pub rows: u64,
    pub batches: u64,
    pub retries: u64,
    pub duplicate_batches: u64,
    pub rows_dead_lettered: u64,
    /// COPY + commit per batch over the last 10 s, milliseconds.
    pub copy_commit_ms: MsQuantiles,
    /// Rows per committed batch over the last 10 s.
    pub batch_rows: Quantiles,
}

/// Quantiles of a microsecond histogram, in milliseconds (to the
/// microsecond).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MsQuantiles {
    pub count: u64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl MsQuantiles {
    pub fn of_us(h: &Histogram<u64>) -> Self {
        let q = Quantiles::of(h);
        let ms = |us: u64| us as f64 / 1000.0;
        MsQuantiles {
            count: q.count,
            p50: ms(q.p50),
            p95: ms(q.p95),
            p99: ms(q.p99),
            max: ms(q.max),
        }
    }
}

/// The last [`QUANTILE_WINDOW`] of the histograms the snapshot shows
/// quantiles of (the writers' and the queue consumers' lag), fed by the
/// sampler once a second.
pub struct SnapshotWindows {
    copy_us: HistogramWindow,
    batch_rows: HistogramWindow,
    lag_ms: HistogramWindow,
}

impl SnapshotWindows {
    pub fn new() -> Self {
        SnapshotWindows::with_window(QUANTILE_WINDOW)
    }

    pub fn with_window(window: Duration) -> Self {
        SnapshotWindows {
            copy_us: HistogramWindow::new(window),
            batch_rows: HistogramWindow::new(window),
            lag_ms: HistogramWindow::new(window),
        }
    }

    /// Adds the writers' cumulative histograms and the queue consumers'
    /// cumulative lag as of `at`.
    pub fn push(&mut self, at: Instant, writers: WriterHistograms, lag_ms: Histogram<u64>) {
        self.copy_us.push(at, writers.latency_us);
        self.batch_rows.push(at, writers.batch_sizes);
        self.lag_ms.push(at, lag_ms);
    }
}

impl Default for SnapshotWindows {
    fn default() -> Self {
        SnapshotWindows::new()
    }
}

impl ConsumerSnapshot {
    /// The snapshot of consumer `id` from `health` and the writers' recent
    /// histograms, published `at`.
    pub fn of(id: &str, health: &Health, windows: &SnapshotWindows, at: ServerTime) -> Self {
        let database = health.database.as_ref().map(|db| DatabaseSnapshot {
            writers: db.writers,
            writers_connected: db.writers_connected,
            rows: db.rows,
            batches: db.batches,
            retries: db.retries,
            duplicate_batches: db.duplicate_batches,
            rows_dead_lettered: db.rows_dead_lettered,
            copy_commit_ms: MsQuantiles::of_us(&windows.copy_us.recent()),
            batch_rows: Quantiles::of(&windows.batch_rows.recent()),
        });
        ConsumerSnapshot {
            consumer_id: id.to_string(),
            status: health.status,
            reason: health.reason.clone(),
            published_at: at,
            age_seconds: 0.0,
            uptime_seconds: round3(health.uptime_seconds),
            queues: health.consumers,
            consumed_per_second: round3(health.rates.consumed_per_second),
            broadcasts_per_second: round3(health.rates.broadcasts_per_second),
            rows_per_second: round3(health.database.as_ref().map_or(0.0, |d| d.rows_per_second)),
            lag_ms: Quantiles::of(&windows.lag_ms.recent()),
            database,
            totals: health.totals.clone(),
        }
    }
}

/// Seconds and rates to the thousandth: more digits are noise.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::{add, Histograms, WriterStats};
    use crate::state::for_tests;

    #[test]
    fn the_snapshot_has_the_api_shape() {
        let (_trigger, shared) = for_tests(2);
        add(&shared.counters.queues[3].consumed, 4);
        let health = Health::of(&shared);
        let windows = SnapshotWindows::new();
        let json = serde_json::to_value(ConsumerSnapshot::of(
            "c-1",
            &health,
            &windows,
            ServerTime(0),
        ))
        .unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        let mut want = vec![
            "consumerId",
            "status",
            "reason",
            "publishedAt",
            "ageSeconds",
            "uptimeSeconds",
            "queues",
            "consumedPerSecond",
            "broadcastsPerSecond",
            "rowsPerSecond",
            "lagMs",
            "database",
            "totals",
        ];
        want.sort_unstable();
        assert_eq!(keys, want);
        assert_eq!(json["consumerId"], "c-1");
        assert_eq!(json["queues"], 10);
        assert_eq!(json["database"], serde_json::Value::Null, "persistence off");
        assert_eq!(json["totals"]["consumed"], 4);
        assert_eq!(json["publishedAt"], "1970-01-01T00:00:00.000Z");
    }

    /// The snapshot's latency and lag are the window's, not the process
    /// lifetime's.
    #[test]
    fn quantiles_come_from_the_window() {
        let (_trigger, mut shared) = for_tests(1);
        shared.config.enable_persistence = true;
        let t0 = Instant::now();
        let mut windows = SnapshotWindows::with_window(Duration::from_secs(10));
        let mut latency = WriterStats::latency_histogram();
        let mut sizes = WriterStats::batch_size_histogram();
        latency.record(4_100).unwrap();
        sizes.record(900).unwrap();
        let cumulative = |l: &Histogram<u64>, s: &Histogram<u64>| WriterHistograms {
            latency_us: l.clone(),
            batch_sizes: s.clone(),
        };
        let mut lag = Histograms::new().lag_ms;
        lag.record(900).unwrap();
        windows.push(t0, cumulative(&latency, &sizes), lag.clone());
        latency.record(12_500).unwrap();
        sizes.record(1000).unwrap();
        lag.record(35).unwrap();
        windows.push(
            t0 + Duration::from_secs(1),
            cumulative(&latency, &sizes),
            lag.clone(),
        );
        let health = Health::of(&shared);
        let snapshot = ConsumerSnapshot::of("c", &health, &windows, ServerTime::now());
        assert_eq!(
            snapshot.lag_ms.count, 1,
            "the 900 ms lag is before the window"
        );
        assert_eq!(snapshot.lag_ms.max, 35);
        let db = snapshot.database.expect("persistence on");
        assert_eq!(
            db.copy_commit_ms.count, 1,
            "the 4.1 ms one is before the window"
        );
        assert!(
            (db.copy_commit_ms.max - 12.5).abs() < 0.1,
            "{:?}",
            db.copy_commit_ms
        );
        assert_eq!(db.batch_rows.count, 1);
        // Two significant figures: 1000 reads back within 1%.
        assert!(
            (1000..=1010).contains(&db.batch_rows.max),
            "{:?}",
            db.batch_rows
        );
    }
}

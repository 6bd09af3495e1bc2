//! A histogram with fixed buckets whose `observe` is two relaxed atomic
//! adds (its bucket and the sum): safe to call from any number of threads
//! on a hot path, with no lock. A scrape reads it into a
//! [`HistogramSnapshot`], which adds up across threads or workers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency buckets in seconds, from 100 µs (a loopback ack) to 10 s (an
/// outage waited out), roughly ×2.5 apart.
pub const LATENCY_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Batch sizes in rows, up to the writers' largest batch and beyond.
pub const BATCH_ROWS: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

/// Counts of observations per bucket, and their sum.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations in `(bounds[i-1], bounds[i]]`; the last slot is
    /// everything above the highest bound (`+Inf`).
    buckets: Box<[AtomicU64]>,
    /// The sum in units of `1 / scale` (nanoseconds for seconds), so it is
    /// an integer add.
    sum: AtomicU64,
    scale: f64,
}

impl Histogram {
    /// A histogram of durations, summed in nanoseconds.
    pub fn seconds(bounds: &'static [f64]) -> Self {
        Self::new(bounds, 1e9)
    }

    /// A histogram of whole numbers (rows, bytes).
    pub fn counts(bounds: &'static [f64]) -> Self {
        Self::new(bounds, 1.0)
    }

    fn new(bounds: &'static [f64], scale: f64) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds ascend");
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            scale,
        }
    }

    /// Records one value (in the histogram's unit: seconds or a count).
    pub fn observe(&self, value: f64) {
        let value = if value.is_finite() {
            value.max(0.0)
        } else {
            0.0
        };
        // The first bucket whose upper bound is >= value (`le` semantics).
        let slot = self.bounds.partition_point(|&bound| bound < value);
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum
            .fetch_add((value * self.scale) as u64, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, elapsed: Duration) {
        self.observe(elapsed.as_secs_f64());
    }

    /// What a scrape reports. Buckets and sum are read one after the
    /// other, so under load the sum may include an observation the buckets
    /// miss; the count is the buckets' total, so `+Inf` always equals
    /// `_count` as Prometheus requires.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            buckets: (self.buckets.iter())
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum.load(Ordering::Relaxed) as f64 / self.scale,
        }
    }
}

/// A histogram as read by one scrape.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    bounds: &'static [f64],
    buckets: Vec<u64>,
    sum: f64,
}

impl HistogramSnapshot {
    /// An empty snapshot with these buckets (the start of a sum).
    pub fn empty(bounds: &'static [f64]) -> Self {
        HistogramSnapshot {
            bounds,
            buckets: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// (upper bound, observations in that bucket alone), ending with
    /// `+Inf`: what the encoder takes.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        (self.bounds.iter().copied())
            .chain([f64::INFINITY])
            .zip(self.buckets.iter().copied())
            .collect()
    }

    /// Adds another snapshot of the same buckets (another worker's).
    pub fn add(&mut self, other: &HistogramSnapshot) {
        assert_eq!(self.bounds, other.bounds, "snapshots of the same buckets");
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.sum += other.sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_their_le_bucket() {
        let h = Histogram::counts(&[1.0, 10.0, 100.0]);
        for v in [0.0, 1.0, 1.5, 10.0, 99.0, 100.0, 101.0, 1e9] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(
            s.buckets(),
            vec![(1.0, 2), (10.0, 2), (100.0, 2), (f64::INFINITY, 2)]
        );
        assert_eq!(s.count(), 8);
        assert_eq!(s.sum(), 0.0 + 1.0 + 1.0 + 10.0 + 99.0 + 100.0 + 101.0 + 1e9);
    }

    #[test]
    fn durations_sum_in_seconds_and_snapshots_add() {
        let a = Histogram::seconds(LATENCY_SECONDS);
        let b = Histogram::seconds(LATENCY_SECONDS);
        a.observe_duration(Duration::from_micros(300));
        b.observe_duration(Duration::from_millis(20));
        b.observe(f64::NAN);
        let mut total = HistogramSnapshot::empty(LATENCY_SECONDS);
        total.add(&a.snapshot());
        total.add(&b.snapshot());
        assert_eq!(total.count(), 3);
        assert!((total.sum() - 0.0203).abs() < 1e-9, "{}", total.sum());
        let buckets = total.buckets();
        // 300 µs ≤ 0.0005; 20 ms ≤ 0.025; NaN counts as 0 (≤ 0.0001).
        assert_eq!(buckets.iter().find(|b| b.0 == 0.0005).unwrap().1, 1);
        assert_eq!(buckets.iter().find(|b| b.0 == 0.025).unwrap().1, 1);
        assert_eq!(buckets[0].1, 1);
    }
}

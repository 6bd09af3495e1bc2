//! Latency recording: one HdrHistogram per thread and kind (ack, delivery),
//! in microseconds with 3 significant digits, merged once at the end — no
//! sharing on the send path. Also the summary numbers, the percentile
//! curve the charts draw and the `.hgrm` text ([`crate::hgrm`]).

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest recordable latency; beyond it values saturate (and show as this).
/// A minute is far past every timeout the client uses.
const MAX_US: u64 = 60_000_000;
/// The bound of [`Latencies::long`]: an hour. Latency from a message's
/// intended send time, and how late it was sent, grow without a timeout
/// bounding them when the system cannot keep up with an open-loop rate.
const LONG_MAX_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds.
#[derive(Clone, Debug)]
pub struct Latencies {
    hist: Histogram<u64>,
}

impl Latencies {
    pub fn new() -> Self {
        Latencies {
            // 1 µs .. 60 s at 3 significant digits: ~100 KiB, fixed.
            hist: Histogram::new_with_bounds(1, MAX_US, 3)
                .expect("static histogram bounds are valid"),
        }
    }

    /// Up to an hour instead of a minute (~190 KiB instead of ~140): for
    /// the open loop's corrected latencies and send lag. Merges only with
    /// histograms made the same way.
    pub fn long() -> Self {
        Latencies {
            hist: Histogram::new_with_bounds(1, LONG_MAX_US, 3)
                .expect("static histogram bounds are valid"),
        }
    }

    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.hist.saturating_record(us);
    }

    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides: cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The histogram itself (µs), for the `.hgrm` export.
    pub fn hist(&self) -> &Histogram<u64> {
        &self.hist
    }

    /// HdrHistogram's percentile distribution in milliseconds (the `.hgrm`
    /// file HdrHistogram's plotter reads).
    pub fn hgrm(&self) -> String {
        crate::hgrm::percentile_distribution(&self.hist, HGRM_TICKS, US_PER_MS)
    }

    pub fn mean_ms(&self) -> f64 {
        self.hist.mean() / 1000.0
    }

    pub fn stats(&self) -> Option<LatencyStats> {
        if self.hist.is_empty() {
            return None;
        }
        let q = |p: f64| self.hist.value_at_quantile(p) as f64 / 1000.0;
        Some(LatencyStats {
            count: self.hist.len(),
            mean: self.hist.mean() / 1000.0,
            p50: q(0.50),
            p95: q(0.95),
            p99: q(0.99),
            p999: q(0.999),
            min: self.hist.min() as f64 / 1000.0,
            max: self.hist.max() as f64 / 1000.0,
        })
    }

    /// The percentile curve: (percentile 0..100, latency ms), dense in the
    /// tail (each halving of the remaining distance gets the same number of
    /// points), as HdrHistogram plots are drawn.
    pub fn percentile_curve(&self) -> Vec<(f64, f64)> {
        if self.hist.is_empty() {
            return Vec::new();
        }
        self.hist
            .iter_quantiles(8)
            .map(|v| {
                (
                    v.quantile_iterated_to() * 100.0,
                    v.value_iterated_to() as f64 / 1000.0,
                )
            })
            .collect()
    }
}

/// Percentile ticks per half distance in `.hgrm` files: HdrHistogram's
/// own default (and wrk2's), so files compare line by line.
const HGRM_TICKS: u32 = 5;
/// `.hgrm` values are in milliseconds; recorded values are microseconds.
const US_PER_MS: f64 = 1000.0;

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

/// Summary numbers, milliseconds.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LatencyStats {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub min: f64,
    pub max: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        // 1..=1000 ms: the percentiles are the values themselves (±0.1%).
        let mut l = Latencies::new();
        for ms in 1..=1000u64 {
            l.record(Duration::from_millis(ms));
        }
        let s = l.stats().unwrap();
        assert_eq!(s.count, 1000);
        assert!((s.mean - 500.5).abs() < 1.0, "{s:?}");
        assert!((s.p50 - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99 - 990.0).abs() < 1.5, "{s:?}");
        assert!(
            (s.min - 1.0).abs() < 0.01 && (s.max - 1000.0).abs() < 1.0,
            "{s:?}"
        );
        let curve = l.percentile_curve();
        assert!(curve
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert!((curve.last().unwrap().0 - 100.0).abs() < 1e-9);
    }

    #[test]
    fn merging_adds_counts_and_empty_has_no_stats() {
        let mut a = Latencies::new();
        let mut b = Latencies::new();
        a.record(Duration::from_micros(10));
        b.record(Duration::from_micros(30));
        a.merge(&b);
        assert_eq!(a.count(), 2);
        assert!((a.mean_ms() - 0.02).abs() < 1e-4);
        assert!(Latencies::new().stats().is_none());
        // Zero and huge values are kept, clamped into range.
        a.record(Duration::ZERO);
        a.record(Duration::from_secs(3600));
        assert_eq!(a.count(), 4);
    }
}

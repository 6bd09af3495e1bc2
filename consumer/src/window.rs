//! Quantiles of the recent past from cumulative histograms: the writers'
//! COPY+commit and batch-size histograms only ever grow (the hot path
//! records, nobody resets), so the observations of the last
//! [`QUANTILE_WINDOW`] are the newest cumulative copy minus the one taken
//! that long before. The sampler pushes a copy once a second and keeps
//! just enough of them to reach back one window.
//!
//! Why copies rather than resetting or rotating histograms on the writers:
//! the writers keep one histogram each, untouched, and `/health` keeps its
//! since-start quantiles; only the sampler pays, once a second, for a
//! clone and a subtraction (a few thousand counters each).
//!
//! Memory: window/interval + 1 copies of each histogram — eleven of the
//! COPY latency (≈24 KiB each) and of the batch sizes (≈14 KiB each).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Latency quantiles in the fleet snapshot cover this much of the past:
/// long enough for a few COPY batches (one every 500 ms per busy writer),
/// short enough that a slow spell shows and then clears.
pub const QUANTILE_WINDOW: Duration = Duration::from_secs(10);

/// The last [`QUANTILE_WINDOW`] of cumulative copies of one histogram.
pub struct HistogramWindow {
    window: Duration,
    copies: VecDeque<(Instant, Histogram<u64>)>,
}

impl HistogramWindow {
    pub fn new(window: Duration) -> Self {
        HistogramWindow {
            window,
            copies: VecDeque::new(),
        }
    }

    /// Adds the cumulative histogram as of `at`, and forgets copies no
    /// longer needed: the oldest kept is the newest one at least a window
    /// older than `at`.
    pub fn push(&mut self, at: Instant, cumulative: Histogram<u64>) {
        self.copies.push_back((at, cumulative));
        while self
            .copies
            .get(1)
            .is_some_and(|(next, _)| at.duration_since(*next) >= self.window)
        {
            self.copies.pop_front();
        }
    }

    /// What was recorded between the oldest copy kept and the newest (the
    /// last window, once the sampler has run that long; everything since
    /// the first copy before). Empty before two copies.
    pub fn recent(&self) -> Histogram<u64> {
        let (Some((_, oldest)), Some((_, newest))) = (self.copies.front(), self.copies.back())
        else {
            return Histogram::new(1).expect("a histogram of 1 significant figure");
        };
        let mut recent = newest.clone();
        // Cumulative copies of one histogram: every count of the older is
        // at most the newer's, and both have the same bounds.
        if recent.subtract(oldest).is_err() {
            // Only if the histogram went backwards (it never does): show
            // nothing rather than a wrong distribution.
            recent.reset();
        }
        recent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::WriterStats;

    /// One cumulative histogram fed for 15 seconds: 40 ms and 10 ms COPYs
    /// for the first 3 s, then nothing. Ten seconds after the last write
    /// the window is empty; before that it holds what was recorded within
    /// the last ten seconds, not since start.
    #[test]
    fn the_window_forgets_what_is_older_than_ten_seconds() {
        let t0 = Instant::now();
        let mut cumulative = WriterStats::latency_histogram();
        let mut w = HistogramWindow::new(QUANTILE_WINDOW);
        assert_eq!(w.recent().len(), 0);
        w.push(t0, cumulative.clone());
        for s in 1..=15u64 {
            if s <= 3 {
                cumulative.record(40_000).unwrap();
                cumulative.record(10_000).unwrap();
            }
            w.push(t0 + Duration::from_secs(s), cumulative.clone());
            let recent = w.recent();
            match s {
                1..=10 => assert_eq!(recent.len(), 2 * s.min(3), "at {s}s"),
                11 => assert_eq!(recent.len(), 4, "the first second's two left"),
                12 => assert_eq!(recent.len(), 2),
                _ => assert_eq!(recent.len(), 0, "at {s}s, ten seconds after the last"),
            }
            if !recent.is_empty() {
                assert_eq!(recent.max(), cumulative.max(), "at {s}s");
            }
        }
        assert_eq!(cumulative.len(), 6, "the cumulative copy is untouched");
        assert!(w.copies.len() <= 11, "{} copies kept", w.copies.len());
    }

    #[test]
    fn quantiles_are_those_of_the_window_only() {
        let t0 = Instant::now();
        let mut cumulative = WriterStats::batch_size_histogram();
        let mut w = HistogramWindow::new(Duration::from_secs(10));
        // A thousand 1000-row batches long ago, then ten of 10 rows.
        for _ in 0..1000 {
            cumulative.record(1000).unwrap();
        }
        w.push(t0, cumulative.clone());
        w.push(t0 + Duration::from_secs(20), cumulative.clone());
        for _ in 0..10 {
            cumulative.record(10).unwrap();
        }
        w.push(t0 + Duration::from_secs(21), cumulative.clone());
        let recent = w.recent();
        assert_eq!(recent.len(), 10);
        assert_eq!(recent.value_at_quantile(0.99), 10);
        assert_eq!(recent.max(), 10);
    }
}

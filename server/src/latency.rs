//! A lock-free latency histogram a worker records into on its hot path
//! ([`LatencyHistogram`], one per worker, like its counters), the
//! cumulative counts readers sum from it ([`LatencyCounts`]), and the last
//! [`LATENCY_WINDOW`] of those counts as quantiles ([`LatencyWindow`]).
//!
//! Buckets are log-linear over microseconds: exact below 8 µs, then eight
//! buckets per power of two, so a quantile reads back within 12.5% of the
//! true value (it is reported as its bucket's upper bound: never lower
//! than the truth). 240 buckets reach 2^32 µs (71 minutes); anything
//! longer lands in the last one. Recording is one relaxed `fetch_add`: no
//! lock, no allocation, nothing another worker touches.
//!
//! Like the consumer's histograms the counts only ever grow; the window is
//! the newest cumulative copy minus the one taken a window before, so the
//! workers never reset anything and a reader pays only once a second.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Quantiles in the fleet snapshot cover this much of the past (the
/// consumer's latency window): long enough to hold a few thousand acks
/// under load, short enough that a slow spell shows and then clears.
pub const LATENCY_WINDOW: Duration = Duration::from_secs(10);

/// Buckets per power of two (3 bits of mantissa).
const SUB: usize = 8;
const SUB_BITS: u32 = 3;
/// Values of 2^MAX_EXP µs and more share the last bucket.
const MAX_EXP: u32 = 32;
/// 8 exact buckets for 0..8 µs, then 8 per octave from 2^3 to 2^32.
pub const BUCKETS: usize = SUB + (MAX_EXP - SUB_BITS) as usize * SUB;

/// The bucket of `us` microseconds.
fn bucket(us: u64) -> usize {
    if us < SUB as u64 {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros();
    if exp >= MAX_EXP {
        return BUCKETS - 1;
    }
    let shift = exp - SUB_BITS;
    // (us >> shift) is in 8..16: the leading one and three more bits.
    (shift as usize) * SUB + (us >> shift) as usize
}

/// The largest value bucket `index` holds, in microseconds.
fn upper_bound(index: usize) -> u64 {
    if index < SUB {
        return index as u64;
    }
    let shift = (index / SUB - 1) as u32;
    let mantissa = (index % SUB + SUB) as u64;
    ((mantissa + 1) << shift) - 1
}

/// One worker's histogram: cumulative counts per bucket.
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64; BUCKETS]>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: Box::new([const { AtomicU64::new(0) }; BUCKETS]),
        }
    }
}

impl LatencyHistogram {
    /// Counts one observation of `elapsed`.
    pub fn record(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// Adds this histogram's counts to `into` (relaxed reads: a count may
    /// be a moment behind, never wrong).
    pub fn add_to(&self, into: &mut LatencyCounts) {
        for (sum, count) in into.0.iter_mut().zip(self.buckets.iter()) {
            *sum += count.load(Ordering::Relaxed);
        }
    }
}

/// Counts per bucket, as read from one histogram or summed over several.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencyCounts(Box<[u64; BUCKETS]>);

impl Default for LatencyCounts {
    fn default() -> Self {
        LatencyCounts(Box::new([0; BUCKETS]))
    }
}

impl LatencyCounts {
    pub fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    /// What was counted in `self` but not yet in `older` (an earlier copy
    /// of the same cumulative counts).
    fn since(&self, older: &LatencyCounts) -> LatencyCounts {
        let mut recent = self.clone();
        for (now, then) in recent.0.iter_mut().zip(older.0.iter()) {
            *now = now.saturating_sub(*then);
        }
        recent
    }

    /// The value at quantile `q` (0..=1), in microseconds: the upper
    /// bound of the bucket holding the observation of that rank.
    fn value_at(&self, q: f64, count: u64) -> u64 {
        let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0;
        for (index, n) in self.0.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return upper_bound(index);
            }
        }
        upper_bound(BUCKETS - 1)
    }

    /// Count, p50, p95, p99 and max, in milliseconds (zeros when empty).
    pub fn quantiles_ms(&self) -> LatencyQuantiles {
        let count = self.count();
        if count == 0 {
            return LatencyQuantiles::default();
        }
        let ms = |q| self.value_at(q, count) as f64 / 1000.0;
        LatencyQuantiles {
            count,
            p50: ms(0.5),
            p95: ms(0.95),
            p99: ms(0.99),
            max: ms(1.0),
        }
    }
}

/// Quantiles of a window, in milliseconds (to the microsecond), camelCase
/// as published.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencyQuantiles {
    pub count: u64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// The last [`LATENCY_WINDOW`] of cumulative copies, one a second.
pub struct LatencyWindow {
    window: Duration,
    copies: VecDeque<(Instant, LatencyCounts)>,
}

impl Default for LatencyWindow {
    fn default() -> Self {
        LatencyWindow::new(LATENCY_WINDOW)
    }
}

impl LatencyWindow {
    pub fn new(window: Duration) -> Self {
        LatencyWindow {
            window,
            copies: VecDeque::new(),
        }
    }

    /// Adds the cumulative counts as of `at`, and forgets copies no longer
    /// needed: the oldest kept is the newest one at least a window older.
    pub fn push(&mut self, at: Instant, cumulative: LatencyCounts) {
        self.copies.push_back((at, cumulative));
        while self
            .copies
            .get(1)
            .is_some_and(|(next, _)| at.duration_since(*next) >= self.window)
        {
            self.copies.pop_front();
        }
    }

    /// What was counted between the oldest copy kept and the newest
    /// (empty before two copies).
    pub fn recent(&self) -> LatencyCounts {
        match (self.copies.front(), self.copies.back()) {
            (Some((_, oldest)), Some((_, newest))) => newest.since(oldest),
            _ => LatencyCounts::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_bounds_hold_their_values() {
        assert_eq!(BUCKETS, 240);
        let mut last = 0;
        for us in (0..5000).chain([1 << 20, (1 << 20) + 1, (1 << 32) - 1]) {
            let b = bucket(us);
            assert!(
                b == last || b == last + 1 || us > 5000,
                "{us}: {b} after {last}"
            );
            last = b;
            assert!(upper_bound(b) >= us, "{us} above its bucket's bound");
            // Within 12.5% (exact below 8 µs).
            assert!(upper_bound(b) as f64 <= us as f64 * 1.125 + 1.0, "{us}");
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket(1 << 32), BUCKETS - 1);
        assert_eq!(bucket((1 << 32) - 1), BUCKETS - 1);
    }

    #[test]
    fn quantiles_read_back_within_a_bucket() {
        let h = LatencyHistogram::default();
        // 98 fast acks of 1 ms, one of 20 ms, one of 300 ms.
        for _ in 0..98 {
            h.record(Duration::from_millis(1));
        }
        h.record(Duration::from_millis(20));
        h.record(Duration::from_millis(300));
        let mut counts = LatencyCounts::default();
        h.add_to(&mut counts);
        let q = counts.quantiles_ms();
        assert_eq!(q.count, 100);
        assert!((1.0..1.13).contains(&q.p50), "{q:?}");
        assert!((1.0..1.13).contains(&q.p95), "{q:?}");
        assert!((20.0..22.6).contains(&q.p99), "{q:?}");
        assert!((300.0..337.6).contains(&q.max), "{q:?}");
        assert_eq!(
            LatencyCounts::default().quantiles_ms(),
            LatencyQuantiles::default()
        );
    }

    /// The window holds what was recorded within it, not since start.
    #[test]
    fn the_window_forgets_what_is_older_than_it() {
        let h = LatencyHistogram::default();
        let copy = || {
            let mut c = LatencyCounts::default();
            h.add_to(&mut c);
            c
        };
        let t0 = Instant::now();
        let mut w = LatencyWindow::new(Duration::from_secs(3));
        w.push(t0, copy());
        for _ in 0..10 {
            h.record(Duration::from_millis(50));
        }
        w.push(t0 + Duration::from_secs(1), copy());
        assert_eq!(w.recent().count(), 10);
        h.record(Duration::from_millis(2));
        w.push(t0 + Duration::from_secs(2), copy());
        w.push(t0 + Duration::from_secs(3), copy());
        assert_eq!(w.recent().count(), 11, "all within 3 s");
        w.push(t0 + Duration::from_secs(4), copy());
        let recent = w.recent();
        assert_eq!(recent.count(), 1, "the 50 ms ones left the window");
        assert!(recent.quantiles_ms().max < 3.0);
        w.push(t0 + Duration::from_secs(6), copy());
        assert_eq!(w.recent().count(), 0);
        assert!(w.copies.len() <= 4);
    }
}

//! Rates: the last [`RATE_WINDOW`] of once-a-second snapshots of the
//! counters (taken by the sampler thread), and the per-second rates
//! between the window's first and last snapshot.
//!
//! Snapshots rather than per-event timestamps: the hot path only counts,
//! and a reader computes a rate from two numbers.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::counters::Counters;

/// Rates are averaged over this window: long enough to smooth batching,
/// short enough to show a stall within seconds.
pub const RATE_WINDOW: Duration = Duration::from_secs(5);

/// The totals rates are computed from, at one instant.
pub struct Snapshot {
    pub at: Instant,
    /// Consumed per room, room 1 first.
    pub per_room: Vec<u64>,
    pub broadcasts: u64,
    /// Rows committed.
    pub rows: u64,
}

impl Snapshot {
    /// The counters now.
    pub fn of(counters: &Counters) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            per_room: counters.consumed_per_room(),
            broadcasts: counters.totals().broadcasts,
            rows: counters.rows_stored(),
        }
    }
}

/// Per-second rates over a window.
pub struct WindowRates {
    /// How long the window actually spans (zero until two snapshots).
    pub window: Duration,
    pub per_room: Vec<f64>,
    pub broadcasts: f64,
    pub rows: f64,
}

/// The last [`RATE_WINDOW`] of snapshots.
#[derive(Default)]
pub struct RateWindow {
    snapshots: VecDeque<Snapshot>,
}

impl RateWindow {
    /// Adds a snapshot and forgets those that fell out of the window (two
    /// are always kept, so a rate exists however slow the sampler is).
    pub fn push(&mut self, snapshot: Snapshot) {
        self.snapshots.push_back(snapshot);
        while self.snapshots.len() > 2 && self.span() > RATE_WINDOW {
            self.snapshots.pop_front();
        }
    }

    fn span(&self) -> Duration {
        match (self.snapshots.front(), self.snapshots.back()) {
            (Some(first), Some(last)) => last.at.duration_since(first.at),
            _ => Duration::ZERO,
        }
    }

    /// The rates over the window, for `rooms` rooms (all zero until there
    /// are two snapshots).
    pub fn rates(&self, rooms: usize) -> WindowRates {
        let (Some(first), Some(last)) = (self.snapshots.front(), self.snapshots.back()) else {
            return WindowRates {
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
        WindowRates {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, secs: u64, per_room: Vec<u64>, broadcasts: u64, rows: u64) -> Snapshot {
        Snapshot {
            at: t0 + Duration::from_secs(secs),
            per_room,
            broadcasts,
            rows,
        }
    }

    #[test]
    fn rates_come_from_the_snapshot_window() {
        let mut w = RateWindow::default();
        let t0 = Instant::now();
        assert_eq!(w.rates(2).per_room, vec![0.0, 0.0]);
        w.push(at(t0, 0, vec![0, 10], 0, 0));
        w.push(at(t0, 2, vec![100, 10], 50, 40));
        let r = w.rates(2);
        assert_eq!(r.per_room, vec![50.0, 0.0]);
        assert_eq!(r.broadcasts, 25.0);
        assert_eq!(r.rows, 20.0);
    }

    #[test]
    fn old_snapshots_leave_the_window() {
        let mut w = RateWindow::default();
        let t0 = Instant::now();
        for s in 0..10 {
            w.push(at(t0, s, vec![s * 10], 0, 0));
        }
        let r = w.rates(1);
        assert_eq!(r.window, RATE_WINDOW);
        assert_eq!(r.per_room, vec![10.0]);
    }
}

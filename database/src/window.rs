//! Time windows and how a rollup answer covers one exactly.
//!
//! A window `[start, end)` has microsecond bounds, but rollups hold whole
//! buckets (seconds, minutes, hours, aligned to the Unix epoch). An exact
//! answer therefore splits the window ([`Window::split`]): the largest
//! run of whole coarse buckets in the middle, whole finer buckets on each
//! side of it, and at the very edges, the partial buckets, answered from
//! raw rows. For a window of hours that is one hour range, at most two
//! minute ranges (≤ 59 buckets each) and at most two raw ranges shorter
//! than a minute: the work is bounded by the window's length in buckets,
//! not by its number of messages (except for the raw edges, which hold
//! less than two minutes of traffic).

use std::time::SystemTime;

use crate::row::{from_unix_micros, unix_micros};

const MICROS: i64 = 1_000_000;

/// A half-open time window `[start, end)`, microseconds since the Unix
/// epoch, `start < end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

/// Where one piece of a split window is answered from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Raw rows of `messages`: the partial buckets at the edges.
    Raw,
    /// Whole rollup buckets of this many seconds.
    Buckets(i64),
}

/// A window cut into pieces, each answered from one [`Source`]. The pieces
/// do not overlap and cover the window exactly.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Split {
    pub pieces: Vec<(Source, Range)>,
}

/// A half-open microsecond range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub start: i64,
    pub end: i64,
}

impl Range {
    /// An empty range: SQL `x >= a AND x < a` matches nothing.
    pub const EMPTY: Range = Range { start: 0, end: 0 };

    pub fn start_time(&self) -> SystemTime {
        from_unix_micros(self.start)
    }

    pub fn end_time(&self) -> SystemTime {
        from_unix_micros(self.end)
    }
}

impl Window {
    /// A window from two instants; `None` unless `start < end`.
    pub fn new(start: SystemTime, end: SystemTime) -> Option<Window> {
        let (start, end) = (unix_micros(start), unix_micros(end));
        (start < end).then_some(Window { start, end })
    }

    pub fn start_time(&self) -> SystemTime {
        from_unix_micros(self.start)
    }

    pub fn end_time(&self) -> SystemTime {
        from_unix_micros(self.end)
    }

    /// Length in seconds.
    pub fn seconds(&self) -> f64 {
        (self.end - self.start) as f64 / MICROS as f64
    }

    /// Cuts the window for rollups of the given bucket widths (seconds,
    /// ascending, each a multiple of the one before, e.g. `[60, 3600]`).
    pub fn split(&self, widths: &[i64]) -> Split {
        let mut split = Split::default();
        let mut source = Source::Raw;
        let (mut lo, mut hi) = (self.start, self.end);
        for &width in widths {
            let step = width * MICROS;
            let inner_lo = ceil_to(lo, step);
            let inner_hi = hi.div_euclid(step) * step;
            if inner_lo >= inner_hi {
                break;
            }
            if lo < inner_lo {
                split.push(source, lo, inner_lo);
            }
            if inner_hi < hi {
                split.push(source, inner_hi, hi);
            }
            (lo, hi, source) = (inner_lo, inner_hi, Source::Buckets(width));
        }
        if lo < hi {
            split.push(source, lo, hi);
        }
        split.pieces.sort_by_key(|(_, r)| r.start);
        split
    }
}

fn ceil_to(value: i64, step: i64) -> i64 {
    -((-value).div_euclid(step) * step)
}

impl Split {
    fn push(&mut self, source: Source, start: i64, end: i64) {
        self.pieces.push((source, Range { start, end }));
    }

    /// The bounds of the usual shape of a split for `[MINUTE, HOUR]`
    /// rollups, in the order the rollup statements take them: the hour
    /// range, the two minute ranges, the two raw ranges (`$1`..`$10`,
    /// absent pieces as empty ranges).
    pub fn hour_minute_raw_bounds(&self) -> [SystemTime; 10] {
        let hours = self.ranges(Source::Buckets(3600), 1);
        let minutes = self.ranges(Source::Buckets(60), 2);
        let raw = self.ranges(Source::Raw, 2);
        [
            hours[0].start_time(),
            hours[0].end_time(),
            minutes[0].start_time(),
            minutes[0].end_time(),
            minutes[1].start_time(),
            minutes[1].end_time(),
            raw[0].start_time(),
            raw[0].end_time(),
            raw[1].start_time(),
            raw[1].end_time(),
        ]
    }

    /// The pieces from `source`, padded with empty ranges to `n` (SQL
    /// statements take a fixed number of ranges per source).
    pub fn ranges(&self, source: Source, n: usize) -> Vec<Range> {
        let mut ranges: Vec<Range> = self
            .pieces
            .iter()
            .filter(|(s, _)| *s == source)
            .map(|(_, r)| *r)
            .collect();
        assert!(
            ranges.len() <= n,
            "a split has at most two pieces per level"
        );
        ranges.resize(n, Range::EMPTY);
        ranges
    }
}

/// Bounds as the parameter list of a statement.
pub fn params(bounds: &[SystemTime]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    bounds
        .iter()
        .map(|b| b as &(dyn postgres::types::ToSql + Sync))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = MICROS;

    fn check_covers(window: Window, widths: &[i64]) {
        let split = window.split(widths);
        let mut at = window.start;
        for (source, range) in &split.pieces {
            assert_eq!(range.start, at, "{window:?} {split:?}");
            assert!(range.start < range.end);
            if let Source::Buckets(w) = source {
                assert_eq!(range.start.rem_euclid(w * S), 0, "aligned start");
                assert_eq!(range.end.rem_euclid(w * S), 0, "aligned end");
            }
            at = range.end;
        }
        assert_eq!(at, window.end, "{window:?} {split:?}");
        for source in [Source::Raw, Source::Buckets(60), Source::Buckets(3600)] {
            assert!(split.pieces.iter().filter(|(s, _)| *s == source).count() <= 2);
        }
    }

    #[test]
    fn a_window_of_hours_is_hours_minutes_and_raw_edges() {
        // 20:00:30.5 → 23:15:10
        let w = Window {
            start: (20 * 3600 + 30) * S + S / 2,
            end: (23 * 3600 + 15 * 60 + 10) * S,
        };
        let split = w.split(&[60, 3600]);
        assert_eq!(
            split.pieces,
            vec![
                (
                    Source::Raw,
                    Range {
                        start: w.start,
                        end: (20 * 3600 + 60) * S
                    }
                ),
                (
                    Source::Buckets(60),
                    Range {
                        start: (20 * 3600 + 60) * S,
                        end: 21 * 3600 * S
                    }
                ),
                (
                    Source::Buckets(3600),
                    Range {
                        start: 21 * 3600 * S,
                        end: 23 * 3600 * S
                    }
                ),
                (
                    Source::Buckets(60),
                    Range {
                        start: 23 * 3600 * S,
                        end: (23 * 3600 + 15 * 60) * S
                    }
                ),
                (
                    Source::Raw,
                    Range {
                        start: (23 * 3600 + 15 * 60) * S,
                        end: w.end
                    }
                ),
            ]
        );
    }

    #[test]
    fn short_and_aligned_windows() {
        // Inside one minute: raw only.
        let w = Window {
            start: 10 * S,
            end: 50 * S,
        };
        assert_eq!(
            w.split(&[60, 3600]).pieces,
            vec![(
                Source::Raw,
                Range {
                    start: 10 * S,
                    end: 50 * S
                }
            )]
        );
        // Exactly one hour: one hour bucket, nothing else.
        let w = Window {
            start: 3600 * S,
            end: 7200 * S,
        };
        assert_eq!(
            w.split(&[60, 3600]).pieces,
            vec![(
                Source::Buckets(3600),
                Range {
                    start: 3600 * S,
                    end: 7200 * S
                }
            )]
        );
        // Negative times split the same way.
        check_covers(
            Window {
                start: -7_201 * S - 3,
                end: 59 * S + 1,
            },
            &[60, 3600],
        );
    }

    #[test]
    fn every_split_covers_its_window_exactly() {
        // A deterministic sweep of odd starts and lengths.
        let mut x: i64 = 0x2545_f491;
        for _ in 0..5000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let start = (x >> 20).rem_euclid(400_000 * S) - 100_000 * S;
            let len = 1 + (x >> 7).rem_euclid(30_000 * S);
            let w = Window {
                start,
                end: start + len,
            };
            check_covers(w, &[60, 3600]);
            check_covers(w, &[1]);
            check_covers(w, &[60]);
        }
    }
}

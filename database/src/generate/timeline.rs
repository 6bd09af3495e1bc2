//! When messages are sent: how many in each second of the window, with a
//! daily cycle, noise and bursts, adding up to exactly the requested
//! number.
//!
//! The intensity of second `t` is
//!
//! `profile(hour of day, UTC) × day factor × minute factor × second factor × burst`
//!
//! - [`DAILY_PROFILE`]: relative activity per UTC hour, linearly
//!   interpolated: quiet at night (04:00, 0.10), busy in the evening
//!   (20:00, 1.00);
//! - a factor per day in `[0.85, 1.15)`, per minute in `[0.75, 1.25)` and
//!   per second in `[0.5, 1.5)`: the series is not a smooth curve;
//! - bursts: a hot room every [`BURST_GAP_MEAN_S`] (3 h) on average
//!   (exponential gaps), lasting 30 s to 15 min (log-uniform, mean ~4 min),
//!   multiplying the traffic by 2 to 5; during one, the extra messages go
//!   to that room. About 2% of the time, 7% of the messages (5% in the hot
//!   room).
//!
//! Counts come from the cumulative intensity: second `t` gets
//! `round(N·C(t+1)/W) − round(N·C(t)/W)` messages (`C` the cumulative
//! intensity, `W` its total), so they add up to exactly `N` and follow the
//! shape at any `N`. The intensity is computed twice, once for `W` and once
//! while streaming, from the same seed: nothing of window length is stored.

use super::rng::Rng;

/// Relative activity at the start of each UTC hour (interpolated within).
pub const DAILY_PROFILE: [f64; 24] = [
    0.45, 0.30, 0.18, 0.12, 0.10, 0.12, 0.20, 0.35, // 00–07
    0.55, 0.70, 0.78, 0.82, 0.85, 0.82, 0.80, 0.82, // 08–15
    0.85, 0.88, 0.92, 0.97, 1.00, 0.95, 0.80, 0.62, // 16–23
];
/// Mean seconds between the starts of two bursts.
pub const BURST_GAP_MEAN_S: f64 = 10_800.0;
const BURST_MIN_S: f64 = 30.0;
const BURST_MAX_S: f64 = 900.0;
const BURST_MULTIPLIER: (f64, f64) = (2.0, 5.0);
const DAY_FACTOR: (f64, f64) = (0.85, 1.15);
const MINUTE_FACTOR: (f64, f64) = (0.75, 1.25);
const SECOND_FACTOR: (f64, f64) = (0.5, 1.5);

/// A stretch of seconds when one room is hot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Burst {
    /// Window-relative seconds `[start, end)`.
    pub start: u64,
    pub end: u64,
    pub room: i32,
    /// Traffic during the burst is this many times the usual.
    pub multiplier: f64,
}

impl Burst {
    /// The chance that a message sent during the burst belongs to it.
    pub fn share(&self) -> f64 {
        1.0 - 1.0 / self.multiplier
    }
}

/// The activity profile at `seconds_of_day` (0..86400).
pub fn daily(seconds_of_day: u64) -> f64 {
    let hour = (seconds_of_day / 3600) as usize % 24;
    let within = (seconds_of_day % 3600) as f64 / 3600.0;
    let (a, b) = (DAILY_PROFILE[hour], DAILY_PROFILE[(hour + 1) % 24]);
    a + (b - a) * within
}

/// The bursts of a window of `seconds`, in order, never overlapping.
pub fn bursts(seconds: u64, mut room: impl FnMut(&mut Rng) -> i32, rng: &mut Rng) -> Vec<Burst> {
    let mut out = Vec::new();
    let mut at = rng.exponential(BURST_GAP_MEAN_S);
    loop {
        let start = at as u64;
        if start >= seconds {
            return out;
        }
        let length = (BURST_MIN_S.ln() + (BURST_MAX_S / BURST_MIN_S).ln() * rng.unit()).exp();
        let end = (start + length as u64).min(seconds);
        out.push(Burst {
            start,
            end,
            room: room(rng),
            multiplier: rng.between(BURST_MULTIPLIER.0, BURST_MULTIPLIER.1),
        });
        at = end as f64 + rng.exponential(BURST_GAP_MEAN_S);
    }
}

/// The intensity of every second of a window, in order (see the module
/// docs). Cloning it replays the same sequence.
#[derive(Clone, Debug)]
struct Intensity<'a> {
    /// Unix seconds of the window's start (for the time of day).
    start_unix_s: i64,
    seconds: u64,
    bursts: &'a [Burst],
    rng: Rng,
    at: u64,
    next_burst: usize,
    day_factor: f64,
    minute_factor: f64,
}

impl<'a> Intensity<'a> {
    fn new(start_unix_s: i64, seconds: u64, bursts: &'a [Burst], rng: Rng) -> Intensity<'a> {
        Intensity {
            start_unix_s,
            seconds,
            bursts,
            rng,
            at: 0,
            next_burst: 0,
            day_factor: 1.0,
            minute_factor: 1.0,
        }
    }
}

impl<'a> Iterator for Intensity<'a> {
    /// (intensity, the burst under way).
    type Item = (f64, Option<&'a Burst>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.seconds {
            return None;
        }
        let unix = self.start_unix_s + self.at as i64;
        let of_day = unix.rem_euclid(86_400) as u64;
        if self.at == 0 || of_day == 0 {
            self.day_factor = self.rng.between(DAY_FACTOR.0, DAY_FACTOR.1);
        }
        if self.at == 0 || unix.rem_euclid(60) == 0 {
            self.minute_factor = self.rng.between(MINUTE_FACTOR.0, MINUTE_FACTOR.1);
        }
        let mut w = daily(of_day)
            * self.day_factor
            * self.minute_factor
            * self.rng.between(SECOND_FACTOR.0, SECOND_FACTOR.1);
        while self
            .bursts
            .get(self.next_burst)
            .is_some_and(|b| b.end <= self.at)
        {
            self.next_burst += 1;
        }
        let burst = self
            .bursts
            .get(self.next_burst)
            .filter(|b| b.start <= self.at);
        if let Some(b) = burst {
            w *= b.multiplier;
        }
        self.at += 1;
        Some((w, burst))
    }
}

/// How many messages each second of the window gets.
#[derive(Clone, Debug)]
pub struct Timeline {
    start_unix_s: i64,
    seconds: u64,
    messages: u64,
    bursts: Vec<Burst>,
    rng: Rng,
    total: f64,
}

impl Timeline {
    /// `messages` spread over `seconds` seconds from `start_unix_s`.
    pub fn new(
        start_unix_s: i64,
        seconds: u64,
        messages: u64,
        bursts: Vec<Burst>,
        rng: Rng,
    ) -> Timeline {
        let total = Intensity::new(start_unix_s, seconds, &bursts, rng.clone())
            .map(|(w, _)| w)
            .sum();
        Timeline {
            start_unix_s,
            seconds,
            messages,
            bursts,
            rng,
            total,
        }
    }

    pub fn bursts(&self) -> &[Burst] {
        &self.bursts
    }

    /// Every second with at least one message, in order:
    /// (window-relative second, messages, the burst under way).
    pub fn seconds(&self) -> Seconds<'_> {
        Seconds {
            intensity: Intensity::new(
                self.start_unix_s,
                self.seconds,
                &self.bursts,
                self.rng.clone(),
            ),
            messages: self.messages,
            total: self.total,
            cumulative: 0.0,
            assigned: 0,
            at: 0,
        }
    }
}

/// The iterator of [`Timeline::seconds`].
#[derive(Debug)]
pub struct Seconds<'a> {
    intensity: Intensity<'a>,
    messages: u64,
    total: f64,
    cumulative: f64,
    assigned: u64,
    at: u64,
}

impl<'a> Iterator for Seconds<'a> {
    type Item = (u64, u64, Option<&'a Burst>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let Some((w, burst)) = self.intensity.next() else {
                // The streamed sum repeats the total's additions in the
                // same order, so the last target is exactly `messages`.
                debug_assert_eq!(self.assigned, self.messages);
                return None;
            };
            let second = self.at;
            self.at += 1;
            self.cumulative += w;
            let target = ((self.cumulative / self.total) * self.messages as f64)
                .round()
                .min(self.messages as f64) as u64;
            let count = target.saturating_sub(self.assigned);
            if count > 0 {
                self.assigned += count;
                return Some((second, count, burst));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeline(messages: u64, seconds: u64) -> Timeline {
        let mut rng = Rng::stream(1, 9);
        let bursts = bursts(seconds, |_| 3, &mut rng);
        Timeline::new(1_796_083_200, seconds, messages, bursts, rng)
    }

    #[test]
    fn counts_add_up_exactly_at_any_size() {
        for (messages, seconds) in [
            (1, 86_400),
            (7, 3600),
            (20_000, 7 * 86_400),
            (1_000_000, 86_400),
        ] {
            let t = timeline(messages, seconds);
            let mut last = None;
            let mut sum = 0;
            for (s, n, _) in t.seconds() {
                assert!(s < seconds);
                assert!(last.is_none_or(|l| s > l), "seconds in order, once");
                assert!(n > 0);
                last = Some(s);
                sum += n;
            }
            assert_eq!(sum, messages, "{messages} over {seconds}");
        }
    }

    #[test]
    fn evenings_are_busier_than_nights_and_bursts_are_hot() {
        let t = timeline(2_000_000, 7 * 86_400);
        let mut by_hour = [0u64; 24];
        let mut in_bursts = 0;
        for (s, n, burst) in t.seconds() {
            by_hour[((s % 86_400) / 3600) as usize] += n;
            if burst.is_some() {
                in_bursts += n;
            }
        }
        let ratio = by_hour[20] as f64 / by_hour[4] as f64;
        assert!((6.0..14.0).contains(&ratio), "{by_hour:?}");
        assert!(!t.bursts().is_empty());
        let burst_seconds: u64 = t.bursts().iter().map(|b| b.end - b.start).sum();
        // Bursts hold several times their share of time.
        let time_share = burst_seconds as f64 / (7.0 * 86_400.0);
        let message_share = in_bursts as f64 / 2_000_000.0;
        assert!(
            message_share > 2.0 * time_share,
            "{message_share} vs {time_share}"
        );
        for pair in t.bursts().windows(2) {
            assert!(pair[0].end <= pair[1].start);
        }
    }

    #[test]
    fn the_profile_is_continuous_across_hours_and_midnight() {
        assert_eq!(daily(4 * 3600), 0.10);
        assert_eq!(daily(20 * 3600), 1.00);
        assert!((daily(86_399) - 0.45).abs() < 0.001);
    }
}

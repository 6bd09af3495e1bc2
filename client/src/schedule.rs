//! The open-loop schedule: when each message of a main phase is *meant* to
//! be sent, whatever the system under test is doing. One or more stages
//! (`--rate`, or `--ramp 1000:30s,5000:60s`), each a constant rate for a
//! duration; message `k` of the phase has an intended send time, an offset
//! from the phase's start, fixed before the run begins.
//!
//! That fixed time is what makes the measurement honest (coordinated
//! omission, as wrk2 corrects it): a sender that falls behind sends late,
//! and the latency counted from the intended time includes the wait, where
//! a closed-loop client would simply not have sent the messages a stall
//! kept it from sending.
//!
//! Invariants: stages are non-empty, each schedules at least one message,
//! and within a stage message `j` is due at `start + j / rate` (so the
//! arrival rate is exact, not drawn). Offsets are nanoseconds.

use std::time::Duration;

use crate::error::StageError;

/// Most stages a ramp may have: the report keeps three histograms per
/// stage (~140 KiB each), and a ramp longer than this is a script's job.
pub const MAX_STAGES: usize = 64;
/// Highest rate accepted, messages per second: far beyond what one client
/// machine can send (it keeps a typo from scheduling billions at once).
pub const MAX_RATE: f64 = 10_000_000.0;
/// Most messages a schedule may hold: a 30-minute endurance run at
/// 500K msgs/s is 900M; the bound only keeps offsets and counts sane.
pub const MAX_MESSAGES: u64 = 10_000_000_000;

const NANOS: f64 = 1e9;

/// One stage: `rate` messages per second for `duration`.
#[derive(Clone, Debug, PartialEq)]
pub struct Stage {
    /// Messages per second.
    pub rate: f64,
    pub duration: Duration,
    /// `rate × duration`, rounded; at least 1.
    pub messages: u64,
    /// Offset of the stage's start from the phase's start, ns.
    pub start_ns: u64,
    /// Index of the stage's first message in the phase.
    pub first: u64,
}

impl Stage {
    /// Offset of the stage's end from the phase's start, ns.
    pub fn end_ns(&self) -> u64 {
        self.start_ns + self.duration.as_nanos() as u64
    }

    /// When its `j`-th message is due, from the phase's start, ns.
    fn due_ns(&self, j: u64) -> u64 {
        self.start_ns + (j as f64 * NANOS / self.rate) as u64
    }
}

/// A main phase's whole schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    stages: Vec<Stage>,
    /// From `--ramp` (the report names stages then), not `--rate`.
    ramp: bool,
}

impl Schedule {
    /// `--rate` for `--duration`: `rate × duration` messages.
    pub fn constant(rate: f64, duration: Duration) -> Result<Schedule, StageError> {
        Schedule::build(&[(rate, duration)], false).map_err(|(_, e)| e)
    }

    /// `--rate` for `messages` (`-n` less the warm-up): the duration is
    /// what they take at that rate.
    pub fn for_messages(rate: f64, messages: u64) -> Result<Schedule, StageError> {
        check_rate(rate)?;
        if messages == 0 {
            return Err(StageError::Empty { rate, seconds: 0.0 });
        }
        if messages > MAX_MESSAGES {
            return Err(StageError::TooMany { messages });
        }
        let duration = Duration::from_secs_f64(messages as f64 / rate);
        Ok(Schedule {
            stages: vec![Stage {
                rate,
                duration,
                messages,
                start_ns: 0,
                first: 0,
            }],
            ramp: false,
        })
    }

    /// `--ramp` stages, in order. On error, the 0-based index of the stage
    /// at fault and why.
    pub fn ramp(stages: &[(f64, Duration)]) -> Result<Schedule, (usize, StageError)> {
        Schedule::build(stages, true)
    }

    fn build(stages: &[(f64, Duration)], ramp: bool) -> Result<Schedule, (usize, StageError)> {
        let mut out = Vec::with_capacity(stages.len());
        let (mut start_ns, mut first) = (0u64, 0u64);
        for (i, &(rate, duration)) in stages.iter().enumerate() {
            check_rate(rate).map_err(|e| (i, e))?;
            if duration.is_zero() {
                return Err((i, StageError::ZeroDuration));
            }
            let exact = rate * duration.as_secs_f64();
            let messages = exact.round();
            if messages < 1.0 {
                let seconds = duration.as_secs_f64();
                return Err((i, StageError::Empty { rate, seconds }));
            }
            let messages = messages as u64;
            if first + messages > MAX_MESSAGES {
                return Err((
                    i,
                    StageError::TooMany {
                        messages: first + messages,
                    },
                ));
            }
            out.push(Stage {
                rate,
                duration,
                messages,
                start_ns,
                first,
            });
            start_ns += duration.as_nanos() as u64;
            first += messages;
        }
        Ok(Schedule { stages: out, ramp })
    }

    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// Made from `--ramp` stages.
    pub fn is_ramp(&self) -> bool {
        self.ramp
    }

    /// Messages scheduled in all.
    pub fn total(&self) -> u64 {
        self.stages.iter().map(|s| s.messages).sum()
    }

    /// The whole schedule's length.
    pub fn duration(&self) -> Duration {
        self.stages.iter().map(|s| s.duration).sum()
    }

    /// Messages per second over the whole schedule.
    pub fn offered_rate(&self) -> f64 {
        let secs = self.duration().as_secs_f64();
        if secs > 0.0 {
            self.total() as f64 / secs
        } else {
            0.0
        }
    }

    /// The stage message `k` belongs to (the last one for `k` past the end).
    pub fn stage_of(&self, k: u64) -> usize {
        self.stages
            .partition_point(|s| s.first + s.messages <= k)
            .min(self.stages.len() - 1)
    }

    /// When message `k` is due, ns from the phase's start.
    pub fn due_ns(&self, k: u64) -> u64 {
        let s = &self.stages[self.stage_of(k)];
        s.due_ns(k - s.first)
    }

    /// The stage whose window holds `offset_ns` (the time, not the
    /// message): `None` past the schedule's end.
    pub fn stage_at(&self, offset_ns: u64) -> Option<usize> {
        let i = self.stages.partition_point(|s| s.end_ns() <= offset_ns);
        (i < self.stages.len()).then_some(i)
    }

    /// The first due time at or after `offset_ns`; `None` when every
    /// message was due before it.
    pub fn next_due_at_or_after(&self, offset_ns: u64) -> Option<u64> {
        let i = self.stages.partition_point(|s| s.end_ns() <= offset_ns);
        for s in &self.stages[i..] {
            if offset_ns <= s.start_ns {
                return Some(s.start_ns);
            }
            let into = (offset_ns - s.start_ns) as f64;
            // The float estimate may land one message early or late.
            let mut j = (into * s.rate / NANOS).floor() as u64;
            while j < s.messages && s.due_ns(j) < offset_ns {
                j += 1;
            }
            if j < s.messages {
                return Some(s.due_ns(j));
            }
        }
        None
    }

    /// Every due time in order, ns (what the generator stamps).
    pub fn dues(&self) -> impl Iterator<Item = u64> + '_ {
        self.stages
            .iter()
            .flat_map(|s| (0..s.messages).map(move |j| s.due_ns(j)))
    }
}

fn check_rate(rate: f64) -> Result<(), StageError> {
    if rate.is_finite() && rate > 0.0 && rate <= MAX_RATE {
        Ok(())
    } else {
        Err(StageError::BadRate(rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_constant_rate_spaces_messages_evenly() {
        // 4 msgs/s for 2 s: 8 messages every 250 ms, the last before the end.
        let s = Schedule::constant(4.0, 2 * S).unwrap();
        assert_eq!(s.total(), 8);
        let dues: Vec<u64> = s.dues().collect();
        assert_eq!(dues, (0..8).map(|k| k * 250_000_000).collect::<Vec<_>>());
        assert_eq!(s.due_ns(7), 1_750_000_000);
        assert_eq!(s.offered_rate(), 4.0);
        assert!(!s.is_ramp());
    }

    #[test]
    fn for_messages_takes_as_long_as_they_need() {
        let s = Schedule::for_messages(1000.0, 4500).unwrap();
        assert_eq!(s.total(), 4500);
        assert_eq!(s.duration(), Duration::from_millis(4500));
        assert!(Schedule::for_messages(1000.0, 0).is_err());
        assert!(Schedule::for_messages(0.0, 10).is_err());
    }

    #[test]
    fn ramp_stages_follow_each_other() {
        // 10/s for 1 s then 100/s for 0.5 s: 10 + 50 messages; the second
        // stage starts at 1 s with messages 10 ms apart.
        let s = Schedule::ramp(&[(10.0, S), (100.0, S / 2)]).unwrap();
        assert!(s.is_ramp());
        assert_eq!(s.total(), 60);
        assert_eq!(s.stage_of(9), 0);
        assert_eq!(s.stage_of(10), 1);
        assert_eq!(s.stage_of(1_000), 1, "past the end: the last stage");
        assert_eq!(s.due_ns(9), 900_000_000);
        assert_eq!(s.due_ns(10), 1_000_000_000);
        assert_eq!(s.due_ns(11), 1_010_000_000);
        assert_eq!(s.stages()[1].first, 10);
        assert_eq!(s.stages()[1].end_ns(), 1_500_000_000);
        assert_eq!(s.stage_at(999_999_999), Some(0));
        assert_eq!(s.stage_at(1_000_000_000), Some(1));
        assert_eq!(s.stage_at(1_500_000_000), None);
        let dues: Vec<u64> = s.dues().collect();
        assert_eq!(dues.len(), 60);
        assert!(dues.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(s.offered_rate(), 40.0);
    }

    #[test]
    fn the_next_due_time_after_an_instant() {
        let s = Schedule::ramp(&[(10.0, S), (100.0, S / 2)]).unwrap();
        assert_eq!(s.next_due_at_or_after(0), Some(0));
        assert_eq!(s.next_due_at_or_after(1), Some(100_000_000));
        assert_eq!(s.next_due_at_or_after(100_000_000), Some(100_000_000));
        // Between the last message of stage 1 and the start of stage 2.
        assert_eq!(s.next_due_at_or_after(950_000_000), Some(1_000_000_000));
        assert_eq!(s.next_due_at_or_after(1_495_000_000), None);
        assert_eq!(s.next_due_at_or_after(u64::MAX / 2), None);
    }

    #[test]
    fn bad_stages_say_which_and_why() {
        assert_eq!(
            Schedule::ramp(&[(10.0, S), (-1.0, S)]),
            Err((1, StageError::BadRate(-1.0)))
        );
        assert_eq!(
            Schedule::ramp(&[(10.0, Duration::ZERO)]),
            Err((0, StageError::ZeroDuration))
        );
        assert!(matches!(
            Schedule::ramp(&[(10.0, S), (1.0, Duration::from_millis(100))]),
            Err((1, StageError::Empty { .. }))
        ));
        assert!(matches!(
            Schedule::constant(f64::NAN, S),
            Err(StageError::BadRate(_))
        ));
        assert!(matches!(
            Schedule::constant(MAX_RATE, Duration::from_secs(10_000)),
            Err(StageError::TooMany { .. })
        ));
    }
}

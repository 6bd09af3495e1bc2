//! The data generator behind `chatflow-datagen`: realistic messages, in
//! time order, loaded through the writers' own path ([`crate::copy_batch`]
//! with [`crate::Rollups::Maintain`]), so the rollups are exactly what the
//! consumer would have built.
//!
//! - [`Dataset`]: what to generate (everything that decides the rows); the
//!   same dataset gives the same rows, byte for byte;
//! - [`rng`]: the generator's own pseudo-random streams;
//! - [`population`]: users (Zipf-like activity), rooms, favourite rooms;
//! - [`timeline`]: messages per second (daily cycle, noise, bursts);
//! - [`text`]: message text;
//! - [`rows`]: the rows themselves, in time order ([`Generator`]);
//! - [`load`]: the pipeline (a generator thread feeding the COPY),
//!   progress, the optional verification, `VACUUM ANALYZE`;
//! - [`args`]: the command line's flags, validated into [`LoadConfig`].

pub mod args;
pub mod load;
pub mod population;
pub mod rng;
pub mod rows;
pub mod text;
pub mod timeline;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chatflow_protocol::flags::{bad, ConfigError};
use chatflow_protocol::message::USER_ID_MAX;
use chatflow_protocol::routing::Rooms;

pub use args::LoadArgs;
pub use load::{load, LoadConfig, LoadError, LoadReport, Progress};
pub use rows::Generator;

/// What to generate. Every field decides the rows; how they are written
/// ([`LoadConfig`]) does not.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Rows in all.
    pub messages: u64,
    /// Length of the window in seconds (the command line takes days); it
    /// ends at `end`.
    pub seconds: u64,
    /// End of the window (exclusive); whole seconds.
    pub end: SystemTime,
    /// Rooms `1..=rooms`.
    pub rooms: u32,
    /// Users `1..=users`.
    pub users: u32,
    /// The exponent `s` of the users' activity `rank^-s`.
    pub user_skew: f64,
    pub seed: u64,
}

/// 2026-12-01T00:00:00Z.
pub const DEFAULT_END_UNIX_S: u64 = 1_796_083_200;
/// The longest window: a year (of day partitions).
pub const MAX_SECONDS: u64 = 366 * 86_400;

impl Default for Dataset {
    fn default() -> Self {
        Dataset {
            messages: 1_000_000,
            seconds: 7 * 86_400,
            end: UNIX_EPOCH + Duration::from_secs(DEFAULT_END_UNIX_S),
            rooms: Rooms::DEFAULT.count(),
            users: USER_ID_MAX,
            // Top user ~4.5%, top 1% of users ~47% of messages (see
            // `population`).
            user_skew: 0.9,
            seed: 1,
        }
    }
}

impl Dataset {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.messages == 0 {
            return Err(bad("messages", "must be at least 1"));
        }
        if !(60..=MAX_SECONDS).contains(&self.seconds) || self.seconds % 60 != 0 {
            return Err(bad(
                "days",
                format!(
                    "the window must be whole minutes, at most {} days",
                    MAX_SECONDS / 86_400
                ),
            ));
        }
        Rooms::new(self.rooms).map_err(|e| bad("rooms", e))?;
        if !(1..=USER_ID_MAX).contains(&self.users) {
            return Err(bad("users", format!("must be in 1..={USER_ID_MAX}")));
        }
        if !(self.user_skew.is_finite() && (0.0..=3.0).contains(&self.user_skew)) {
            return Err(bad("user-skew", "must be in [0, 3]"));
        }
        let end = self
            .end
            .duration_since(UNIX_EPOCH)
            .map_err(|_| bad("end", "must be after 1970"))?;
        if end.subsec_nanos() != 0 {
            return Err(bad("end", "must be a whole second"));
        }
        if end.as_secs() < self.seconds {
            return Err(bad("end", "the window must start after 1970"));
        }
        Ok(())
    }

    /// The window's start, Unix seconds.
    pub fn start_unix_s(&self) -> i64 {
        self.end_unix_s() - self.seconds as i64
    }

    /// The window's end (exclusive), Unix seconds.
    pub fn end_unix_s(&self) -> i64 {
        self.end
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    }

    /// The UTC days the window touches: the first, and how many.
    pub fn partition_days(&self) -> (chrono::NaiveDate, i32) {
        let day = |s: i64| {
            chrono::DateTime::from_timestamp(s, 0)
                .expect("validated window")
                .date_naive()
        };
        let first = day(self.start_unix_s());
        let last = day(self.end_unix_s() - 1);
        (first, (last - first).num_days() as i32 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_ending_at_midnight_needs_exactly_its_days() {
        let d = Dataset::default();
        d.validate().unwrap();
        let (first, days) = d.partition_days();
        assert_eq!(first.to_string(), "2026-11-24");
        assert_eq!(days, 7);
        let ragged = Dataset {
            end: d.end + Duration::from_secs(3600),
            ..d.clone()
        };
        assert_eq!(ragged.partition_days().1, 8);
    }

    #[test]
    fn refusals_name_their_flag() {
        let cases: [(Dataset, &str); 5] = [
            (
                Dataset {
                    messages: 0,
                    ..Dataset::default()
                },
                "--messages",
            ),
            (
                Dataset {
                    seconds: 0,
                    ..Dataset::default()
                },
                "--days",
            ),
            (
                Dataset {
                    rooms: 0,
                    ..Dataset::default()
                },
                "--rooms",
            ),
            (
                Dataset {
                    users: 100_001,
                    ..Dataset::default()
                },
                "--users",
            ),
            (
                Dataset {
                    end: UNIX_EPOCH + Duration::from_millis(1_796_083_200_500),
                    ..Dataset::default()
                },
                "--end",
            ),
        ];
        for (d, flag) in cases {
            assert!(
                d.validate().unwrap_err().to_string().contains(flag),
                "{flag}"
            );
        }
    }
}

//! `chatflow-datagen`'s load flags ([`LoadArgs`]), validated into a
//! [`LoadConfig`]. The database flags are the shared `DB_*` ones.

use std::time::{Duration, UNIX_EPOCH};

use chatflow_protocol::flags::{bad, ConfigError};
use clap::Args;

use super::load::LoadConfig;
use super::Dataset;
use crate::settings::DatabaseArgs;

/// Load N generated messages into a database.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Messages to load. (An `Option` so that `explain` can go without it;
    /// clap still requires it for a load.)
    #[arg(long, required = true)]
    pub messages: Option<u64>,
    /// Days the messages span (the window ends at --end).
    #[arg(long, default_value_t = 7)]
    pub days: u32,
    /// End of the window (exclusive), RFC 3339, a whole second.
    #[arg(long, default_value = "2026-12-01T00:00:00Z")]
    pub end: String,
    /// Rooms 1..=ROOMS.
    #[arg(long, env = "ROOMS", default_value_t = 20)]
    pub rooms: u32,
    /// Users 1..=USERS (at most 100000).
    #[arg(long, default_value_t = 100_000)]
    pub users: u32,
    /// Exponent s of the users' activity, rank^-s (0: all alike).
    #[arg(long, default_value_t = 0.9)]
    pub user_skew: f64,
    /// Seed: the same flags and seed give the same rows.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Rows per COPY (one transaction each, with its rollups).
    #[arg(long, default_value_t = 10_000)]
    pub batch_rows: usize,
    /// COPY connections working in parallel.
    #[arg(long, default_value_t = 2)]
    pub writers: usize,
    /// Apply the schema first (idempotent).
    #[arg(long)]
    pub apply_schema: bool,
    /// Afterwards, check the row count and that chatflow_rebuild_rollups()
    /// leaves the rollups unchanged (slow: minutes for 10M rows).
    #[arg(long)]
    pub verify: bool,
    /// Skip the final VACUUM ANALYZE (statistics and visibility map).
    #[arg(long)]
    pub no_vacuum: bool,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

impl LoadArgs {
    pub fn into_config(self) -> Result<LoadConfig, ConfigError> {
        let end = chrono::DateTime::parse_from_rfc3339(&self.end)
            .map_err(|e| bad("end", format!("{:?} is not RFC 3339: {e}", self.end)))?;
        let end_s = u64::try_from(end.timestamp()).map_err(|_| bad("end", "must be after 1970"))?;
        if end.timestamp_subsec_nanos() != 0 {
            return Err(bad("end", "must be a whole second"));
        }
        if !(1..=366).contains(&self.days) {
            return Err(bad("days", "must be in 1..=366"));
        }
        let dataset = Dataset {
            messages: self
                .messages
                .ok_or_else(|| bad("messages", "is required"))?,
            seconds: u64::from(self.days) * 86_400,
            end: UNIX_EPOCH + Duration::from_secs(end_s),
            rooms: self.rooms,
            users: self.users,
            user_skew: self.user_skew,
            seed: self.seed,
        };
        dataset.validate()?;
        if !(1..=1_000_000).contains(&self.batch_rows) {
            return Err(bad("batch-rows", "must be in 1..=1000000"));
        }
        if !(1..=16).contains(&self.writers) {
            return Err(bad("writers", "must be in 1..=16"));
        }
        Ok(LoadConfig {
            database: self.database.into_settings()?,
            dataset,
            batch_rows: self.batch_rows,
            apply_schema: self.apply_schema,
            verify: self.verify,
            vacuum_analyze: !self.no_vacuum,
            writers: self.writers,
        })
    }
}

//! The schema (`database/schema.sql`, applied by `setup_database.sh` or a
//! consumer's `--apply-schema`) and the day partitions: creating the
//! coming days' and filling the rollups of a database upgraded from before
//! them.

use postgres::GenericClient;

/// The schema: idempotent, every statement may run again.
pub const SCHEMA: &str = include_str!("../schema.sql");

/// Days of partitions kept ahead, today included.
pub const DAYS_AHEAD: i32 = 8;

/// Applies [`SCHEMA`], then fills the rollups if the database has messages
/// from before them (a no-op otherwise; see `chatflow_backfill_rollups`).
pub fn apply_schema(client: &mut impl GenericClient) -> Result<(), postgres::Error> {
    client.batch_execute(&format!("SET client_min_messages = warning; {SCHEMA}"))?;
    client.batch_execute("SELECT chatflow_backfill_rollups()")
}

/// Creates the partitions of today (UTC) and the next days; returns how
/// many were new.
pub fn ensure_partitions(client: &mut impl GenericClient) -> Result<i32, postgres::Error> {
    let row = client.query_one(
        "SELECT chatflow_ensure_partitions((now() AT TIME ZONE 'UTC')::date, $1)",
        &[&DAYS_AHEAD],
    )?;
    Ok(row.get(0))
}

/// Creates the partitions of `days` UTC days from `first_day`
/// (`YYYY-MM-DD`), e.g. for data loaded into the past.
pub fn ensure_partitions_from(
    client: &mut impl GenericClient,
    first_day: chrono::NaiveDate,
    days: i32,
) -> Result<i32, postgres::Error> {
    let row = client.query_one(
        "SELECT chatflow_ensure_partitions($1::text::date, $2)",
        &[&first_day.format("%Y-%m-%d").to_string(), &days],
    )?;
    Ok(row.get(0))
}

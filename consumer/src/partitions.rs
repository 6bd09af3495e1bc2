//! Partition upkeep and the consumer's other database work (everything that
//! is not a writer's COPY), over an r2d2 pool: applying the schema when
//! asked, creating the coming days' partitions at start and then hourly
//! (idempotent, so a missed day is caught up), and checking the database for
//! `/health`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;

/// The schema, applied by `setup_database.sh` or with `--apply-schema`.
pub const SCHEMA: &str = include_str!("../../database/schema.sql");

/// Days of partitions kept ahead, today included.
pub const DAYS_AHEAD: i32 = 8;
const UPKEEP_INTERVAL: Duration = Duration::from_secs(3600);

pub type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

/// A small pool for non-writer work. Built without connecting, so a
/// database that is down later does not stop the consumer.
pub fn pool(connection: &str) -> anyhow::Result<Pool> {
    let config: postgres::Config = connection.parse()?;
    let manager = PostgresConnectionManager::new(config, NoTls);
    Ok(r2d2::Pool::builder()
        .max_size(4)
        .min_idle(Some(0))
        .connection_timeout(Duration::from_secs(2))
        .build_unchecked(manager))
}

/// Applies `schema.sql` (idempotent).
pub fn apply_schema(pool: &Pool) -> anyhow::Result<()> {
    let mut client = pool.get()?;
    client.batch_execute(&format!("SET client_min_messages = warning; {SCHEMA}"))?;
    Ok(())
}

/// Creates the partitions of today (UTC) and the next days; returns how many
/// were new.
pub fn ensure_partitions(pool: &Pool) -> anyhow::Result<i32> {
    let mut client = pool.get()?;
    let row = client.query_one(
        "SELECT chatflow_ensure_partitions((now() AT TIME ZONE 'UTC')::date, $1)",
        &[&DAYS_AHEAD],
    )?;
    Ok(row.get(0))
}

/// Whether the database answers now.
pub fn database_up(pool: &Pool) -> bool {
    pool.get()
        .map(|mut c| c.simple_query("SELECT 1").is_ok())
        .unwrap_or(false)
}

/// Runs [`ensure_partitions`] every hour until `stop`.
pub fn start_upkeep(pool: Pool, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("partitions".to_string())
        .spawn(move || {
            let mut next = Instant::now() + UPKEEP_INTERVAL;
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(200));
                if Instant::now() < next {
                    continue;
                }
                match ensure_partitions(&pool) {
                    Ok(created) => {
                        if created > 0 {
                            eprintln!("partitions: created {created} day partition(s)");
                        }
                        next = Instant::now() + UPKEEP_INTERVAL;
                    }
                    Err(e) => {
                        eprintln!("partitions: upkeep failed, retrying in a minute: {e}");
                        next = Instant::now() + Duration::from_secs(60);
                    }
                }
            }
        })
}

//! `chatflow-datagen`: flags → config, then one of
//!
//! - (no subcommand) load generated messages
//!   ([`chatflow_database::generate`]), printing progress and the rate;
//! - `explain`: capture the plan of every read query
//!   ([`chatflow_database::explain`]).

use std::time::{Duration, Instant};

use anyhow::Context;
use chatflow_database::explain::{explain, ExplainArgs};
use chatflow_database::generate::{load, LoadArgs, Progress};
use clap::{Parser, Subcommand};

/// Load realistic generated messages into a ChatFlow database (through the
/// writers' COPY path, rollups included), or capture the read queries' plans.
#[derive(Debug, Parser)]
#[command(
    name = "chatflow-datagen",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every read query with representative parameters and write its
    /// EXPLAIN (ANALYZE, BUFFERS), captured by auto_explain, to a file.
    Explain(ExplainArgs),
}

/// Progress lines at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Explain(args)) => run_explain(args),
        None => run_load(cli.load),
    }
}

fn refuse(e: impl std::fmt::Display) -> ! {
    eprintln!("chatflow-datagen: {e}");
    std::process::exit(2);
}

fn run_load(args: LoadArgs) -> anyhow::Result<()> {
    let config = args.into_config().unwrap_or_else(|e| refuse(e));
    let d = &config.dataset;
    println!(
        "chatflow-datagen: {} messages over {} days ending {}, {} rooms, {} users (skew {}), seed {}, into {} in batches of {} over {} connections",
        d.messages,
        d.seconds as f64 / 86_400.0,
        chatflow_database::read::rfc3339(d.end),
        d.rooms,
        d.users,
        d.user_skew,
        d.seed,
        config.database.display(),
        config.batch_rows,
        config.writers,
    );
    let mut last = Instant::now();
    let report = load(&config, |p: &Progress| {
        if last.elapsed() >= PROGRESS_EVERY || p.rows == p.total {
            last = Instant::now();
            let left = (p.total - p.rows) as f64 / p.rows_per_second().max(1.0);
            println!(
                "  {:>11} rows ({:5.1}%) in {:7.1} s: {:8.0} rows/s, ~{:.0} s to go",
                p.rows,
                100.0 * p.rows as f64 / p.total as f64,
                p.elapsed.as_secs_f64(),
                p.rows_per_second(),
                left
            );
        }
    })
    .context("chatflow-datagen: the load failed")?;
    println!(
        "chatflow-datagen: loaded {} rows in {:.1} s: {:.0} rows/s (generating {:.1} s on its own thread; the COPY waited {:.1} s for rows)",
        report.rows,
        report.load.as_secs_f64(),
        report.rows_per_second(),
        report.generating.as_secs_f64(),
        report.starved.as_secs_f64(),
    );
    if let Some(v) = &report.verified {
        println!(
            "chatflow-datagen: verified in {:.1} s: messages {} → {} rows; chatflow_rebuild_rollups() left every rollup as maintained:",
            v.took.as_secs_f64(),
            v.count_before,
            v.count_after
        );
        for (table, rows, md5) in &v.rollups {
            println!("  {table}: {rows} rows, md5 {md5}");
        }
    }
    if let Some(took) = report.vacuum_analyze {
        println!(
            "chatflow-datagen: VACUUM ANALYZE in {:.1} s",
            took.as_secs_f64()
        );
    }
    Ok(())
}

fn run_explain(args: ExplainArgs) -> anyhow::Result<()> {
    let config = args.into_config().unwrap_or_else(|e| refuse(e));
    let captured = explain(&config).context("chatflow-datagen explain")?;
    for c in &captured {
        println!("{:>10.3} ms  {}", c.duration_ms, c.path.display());
    }
    println!(
        "chatflow-datagen explain: {} plans in {}",
        captured.len(),
        config.out_dir.display()
    );
    Ok(())
}

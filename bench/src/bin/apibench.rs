//! `apibench`: the read API's latency per endpoint. For each endpoint it
//! makes `--calls` requests one after another with varied parameters
//! (rooms, users and 1-hour windows drawn from the dataset's span), and
//! reports p50 / p99 / max of the round trip seen by the client and of the
//! server's own `totalMs`, plus the largest single query (`timingsMs`).
//!
//! ```text
//! cargo run --release -p chatflow-bench --bin apibench -- \
//!     --api-url http://127.0.0.1:8082 --data-end 2026-12-01T00:00:00Z --data-days 7
//! ```
//!
//! Run it against a server whose database was loaded by `chatflow-datagen`
//! (database/README.md); `--only NAME` runs one endpoint.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(name = "apibench", about = "Latency of each read API endpoint")]
struct Args {
    /// The API's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8082")]
    api_url: String,
    /// Requests per endpoint.
    #[arg(long, default_value_t = 100)]
    calls: u32,
    /// The end of the dataset's span (chatflow-datagen's --end).
    #[arg(long)]
    data_end: String,
    /// Days the dataset spans (chatflow-datagen's --days).
    #[arg(long, default_value_t = 7)]
    data_days: u32,
    /// Rooms (the server's --rooms).
    #[arg(long, default_value_t = 20)]
    rooms: u32,
    /// Seeds the parameter choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run only this endpoint (room-messages, user-messages, user-rooms,
    /// active-users, analytics, analytics-day, metrics).
    #[arg(long)]
    only: Option<String>,
    /// Also list each endpoint's N slowest requests with their timings.
    #[arg(long, default_value_t = 0)]
    show_slowest: usize,
}

/// A small deterministic generator for the parameters.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

struct Span {
    start_ms: i64,
    end_ms: i64,
}

impl Span {
    /// A window of `hours` starting at a random whole minute plus a ragged
    /// offset, inside the span.
    fn window(&self, rng: &mut Lcg, hours: i64) -> (String, String) {
        let len = hours * 3_600_000;
        let room = (self.end_ms - self.start_ms - len).max(1);
        let start = self.start_ms + rng.below(room as u64) as i64;
        (rfc3339(start), rfc3339(start + len))
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("in range")
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// Latencies of one endpoint, in microseconds.
struct Stats {
    /// (client ms, target, timings) of every call, for `--show-slowest`.
    calls: Vec<(f64, String, String)>,
    client: Histogram<u64>,
    server: Histogram<u64>,
    slowest_query: (f64, String),
    rows: u64,
}

impl Stats {
    fn new() -> Stats {
        let h = || Histogram::new_with_bounds(1, 600_000_000, 3).expect("static bounds");
        Stats {
            calls: Vec::new(),
            client: h(),
            server: h(),
            slowest_query: (0.0, String::new()),
            rows: 0,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let end = chrono::DateTime::parse_from_rfc3339(&args.data_end)
        .context("--data-end is not an RFC 3339 timestamp")?
        .timestamp_millis();
    let span = Span {
        start_ms: end - i64::from(args.data_days) * 86_400_000,
        end_ms: end,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .into();
    let base = args.api_url.trim_end_matches('/').to_string();
    let get = |target: &str| -> anyhow::Result<(Duration, Value)> {
        let started = Instant::now();
        let mut response = agent
            .get(&format!("{base}{target}"))
            .call()
            .with_context(|| format!("GET {target}"))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()?;
        let took = started.elapsed();
        if status != 200 {
            bail!("GET {target}: {status} {body}");
        }
        Ok((took, serde_json::from_str(&body)?))
    };

    // Users worth asking about: the busiest of a few random hours (heavy
    // histories) and random ids (typical ones).
    let mut rng = Lcg(args.seed);
    let mut heavy = Vec::new();
    for _ in 0..5 {
        let (start, end) = span.window(&mut rng, 1);
        let (_, doc) = get(&format!("/api/analytics?start={start}&end={end}&topN=10"))?;
        for u in doc["topUsers"].as_array().into_iter().flatten() {
            heavy.push(u["userId"].as_i64().unwrap_or(1));
        }
    }
    if heavy.is_empty() {
        bail!("the dataset has no messages in the span given (--data-end, --data-days)");
    }

    let endpoints = [
        "room-messages",
        "user-messages",
        "user-rooms",
        "active-users",
        "analytics",
        "analytics-day",
        "metrics",
    ];
    println!(
        "apibench: {} calls per endpoint against {base}, {} ({} days to {})",
        args.calls,
        rfc3339(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)?
                .as_millis() as i64
        ),
        args.data_days,
        args.data_end
    );
    println!(
        "| endpoint | parameters | rows/answer (mean) | client p50 ms | client p99 ms | client max ms | server totalMs p50 | server totalMs p99 | slowest query (ms) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for name in endpoints {
        if args.only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let mut stats = Stats::new();
        let mut described = String::new();
        for call in 0..args.calls {
            let user = if call % 2 == 0 {
                heavy[rng.below(heavy.len() as u64) as usize]
            } else {
                1 + rng.below(100_000) as i64
            };
            let room = 1 + rng.below(u64::from(args.rooms));
            let (start, end) = span.window(&mut rng, 1);
            let (target, what) = match name {
                "room-messages" => (
                    format!("/api/rooms/{room}/messages?start={start}&end={end}&limit=1000"),
                    "random room, random 1 h window, limit 1000",
                ),
                "user-messages" => (
                    format!(
                        "/api/users/{user}/messages?limit=100&order={}",
                        if call % 4 < 2 { "desc" } else { "asc" }
                    ),
                    "heavy and random users, whole history, limit 100",
                ),
                "user-rooms" => (format!("/api/users/{user}/rooms"), "heavy and random users"),
                "active-users" => (
                    format!("/api/active-users?start={start}&end={end}"),
                    "random 1 h window (ragged)",
                ),
                "analytics" => (
                    format!("/api/analytics?start={start}&end={end}&topN=10"),
                    "random 1 h window, topN 10",
                ),
                "analytics-day" => {
                    let (start, end) = span.window(&mut rng, 24);
                    (
                        format!("/api/analytics?start={start}&end={end}&topN=10"),
                        "random 24 h window, topN 10",
                    )
                }
                _ => (
                    format!("/api/metrics?start={start}&end={end}"),
                    "random 1 h window, defaults",
                ),
            };
            described = what.to_string();
            let (took, doc) = get(&target)?;
            stats.client.record(took.as_micros().max(1) as u64)?;
            let total = doc["totalMs"].as_f64().unwrap_or(0.0);
            stats.server.record((total * 1000.0).max(1.0) as u64)?;
            if let Some(timings) = doc["timingsMs"].as_object() {
                for (query, ms) in timings {
                    let ms = ms.as_f64().unwrap_or(0.0);
                    if ms > stats.slowest_query.0 {
                        stats.slowest_query = (ms, query.clone());
                    }
                }
            }
            stats.calls.push((
                took.as_secs_f64() * 1000.0,
                target.clone(),
                doc["timingsMs"].to_string(),
            ));
            stats.rows += doc["count"]
                .as_u64()
                .or_else(|| doc["rooms"].as_array().map(|r| r.len() as u64))
                .unwrap_or(1);
        }
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "| {name} | {described} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} ({}) |",
            stats.rows as f64 / f64::from(args.calls),
            ms(&stats.client, 0.5),
            ms(&stats.client, 0.99),
            stats.client.max() as f64 / 1000.0,
            ms(&stats.server, 0.5),
            ms(&stats.server, 0.99),
            stats.slowest_query.0,
            stats.slowest_query.1,
        );
        if args.show_slowest > 0 {
            stats.calls.sort_by(|a, b| b.0.total_cmp(&a.0));
            for (ms, target, timings) in stats.calls.iter().take(args.show_slowest) {
                eprintln!("  {ms:8.2} ms  {target}  {timings}");
            }
        }
    }
    Ok(())
}

//! Test harness: a real `chatflow-server` in-process on 127.0.0.1:0, a
//! small fast client config, a fresh report directory per test, and readers
//! for the files a run writes.

#![allow(dead_code)] // each test binary uses part of the harness

pub mod api;
pub mod fake;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chatflow_client::{Config, Endpoint, ProgressMode};
use chatflow_server::{BrokerKind, Server};

pub fn start_server(broker: BrokerKind) -> Server {
    Server::start(chatflow_server::Config {
        bind: "127.0.0.1:0".parse().unwrap(),
        workers: 2,
        // Tests run in parallel on a small machine.
        pin_workers: false,
        broker,
        shutdown_grace: Duration::from_millis(300),
        ..chatflow_server::Config::default()
    })
    .expect("server starts")
}

/// A fresh, empty report directory under cargo's per-test scratch space.
pub fn out_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "client-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A small run against `base` with short timeouts, so failures end fast.
/// The end-of-run metrics fetch is off: the derived API (port 8082) could
/// be anything on a shared machine; the metrics tests turn it on with a
/// fake API of their own.
pub fn config(base: &str, name: &str) -> Config {
    Config {
        urls: vec![Endpoint::parse(base).unwrap()],
        total: 2_000,
        threads: 20,
        window: 4,
        warmup_threads: 20,
        warmup_messages: 20,
        seed: Some(7),
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        breaker_cooldown: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
        ack_timeout: Duration::from_secs(3),
        delivery_timeout: Duration::from_secs(2),
        give_up_after: Duration::from_secs(5),
        out_dir: Some(out_dir(name)),
        progress: ProgressMode::Off,
        tick: Duration::from_millis(20),
        metrics: false,
        ..Config::default()
    }
}

pub fn summary(dir: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("summary.json")).expect("summary.json written");
    serde_json::from_str(&text).expect("summary.json is JSON")
}

/// The CSV's data rows (header checked and dropped).
pub fn csv_rows(dir: &std::path::Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(dir.join("messages.csv")).expect("messages.csv written");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("timestamp,messageType,latencyMs,statusCode,roomId")
    );
    lines
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

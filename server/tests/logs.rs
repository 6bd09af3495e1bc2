//! The server binary's logs as an operator reads them: JSON lines with a
//! timestamp, level, thread name and target (`--log-format json`), the
//! effective configuration at start with the password hidden, every
//! shutdown step; text lines by default; `RUST_LOG` filtering; and a
//! malformed `RUST_LOG` refused at start, naming it.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_chatflow-server");
const SECRET: &str = "s3cr3t-in-the-logs";

/// Runs the server (memory broker, no API) with `extra` flags and
/// `rust_log`, sends one message, stops it with SIGTERM, and returns its
/// stderr.
fn run_and_stop(extra: &[&str], rust_log: Option<&str>) -> String {
    let mut command = memory_binary(1);
    command
        .args(["--drain-secs", "0"])
        .args(extra)
        .env("RABBITMQ_PASSWORD", SECRET)
        .env_remove("LOG_FORMAT")
        .stderr(Stdio::piped());
    match rust_log {
        Some(filter) => command.env("RUST_LOG", filter),
        None => command.env_remove("RUST_LOG"),
    };
    let mut child = Reaper(command.spawn().expect("the server binary starts"));
    // Held open to the end: printing to a closed pipe fails.
    let (addr, stdout) = listening_addr(&mut child.0);
    let mut client = connect(addr, 1);
    assert_eq!(
        request(&mut client, message(1, "logged?", "l1"))["type"],
        "ack"
    );
    drop(client);
    signal(&child.0, libc::SIGTERM);
    wait_for_exit(&mut child.0);
    let mut stderr = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    drop(stdout);
    assert!(!stderr.contains(SECRET), "a secret in the logs:\n{stderr}");
    stderr
}

#[test]
fn json_logs_carry_time_level_thread_and_every_shutdown_step() {
    let stderr = run_and_stop(&["--log-format", "json"], None);
    let events: Vec<Value> = (stderr.lines())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(events.len() >= 6, "{stderr}");
    for event in &events {
        let time = event["timestamp"].as_str().expect("a timestamp");
        assert!(
            chrono::DateTime::parse_from_rfc3339(time).is_ok(),
            "not RFC 3339: {time}"
        );
        assert!(
            event["level"].is_string() && event["target"].is_string(),
            "{event}"
        );
        assert!(event["threadName"].is_string(), "{event}");
    }
    let said = |needle: &str| {
        (events.iter()).find(|e| e["message"].as_str().is_some_and(|m| m.contains(needle)))
    };
    let start = said("starting with").unwrap_or_else(|| panic!("no start-up line:\n{stderr}"));
    assert_eq!(start["level"], "INFO");
    assert_eq!(start["threadName"], "main");
    assert!(
        start["commit"].is_string() && start["version"].is_string(),
        "{start}"
    );
    // The effective configuration, with the password shown as ***.
    let config = start["message"].as_str().unwrap();
    assert!(
        config.contains("***") && config.contains("max_connections"),
        "{config}"
    );
    for step in [
        "shutdown 1/5",
        "shutdown 2/5",
        "shutdown 3/5",
        "shutdown 4/5",
        "shutdown 5/5",
    ] {
        assert!(said(step).is_some(), "no {step:?} in\n{stderr}");
    }
    assert!(said("signal 15").is_some(), "{stderr}");
}

#[test]
fn text_logs_by_default_and_rust_log_filters() {
    let stderr = run_and_stop(&[], None);
    let first = stderr.lines().next().unwrap_or_default();
    // `2026-12-02T01:02:03.456789Z  INFO main chatflow_server: starting …`
    let (time, rest) = first.split_once(' ').unwrap_or_default();
    assert!(
        chrono::DateTime::parse_from_rfc3339(time).is_ok(),
        "{first}"
    );
    assert!(rest.contains("INFO") && rest.contains("main"), "{first}");
    assert!(stderr.contains("shutdown 5/5: stopped"), "{stderr}");

    // Warnings only: none of the info lines.
    let quiet = run_and_stop(&[], Some("warn"));
    assert!(!quiet.contains("starting with"), "{quiet}");
    assert!(!quiet.contains("shutdown 1/5"), "{quiet}");
}

#[test]
fn a_malformed_rust_log_is_refused_naming_it() {
    let output = Command::new(BIN)
        .args(["--broker", "memory", "--api-bind", "off"])
        .env("RUST_LOG", "chatflow_server=[")
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("RUST_LOG"), "{stderr}");
}

//! Failures end the run with honest numbers and never hang it: a server
//! stopped or crashing mid-run, an unreachable server, Ctrl-C, bad flags.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chatflow_client::{ConnectError, Error, Report, RunOutcome};
use chatflow_server::BrokerKind;
use common::fake::{Fake, Quirks};
use common::*;

/// A long run with fast failure handling, so an outage ends it in seconds.
fn outage_config(url: &str, name: &str) -> chatflow_client::Config {
    chatflow_client::Config {
        total: 5_000_000,
        warmup_threads: 0,
        window: 2,
        retries: 3,
        breaker_threshold: 3,
        give_up_after: Duration::from_millis(1_500),
        ..config(url, name)
    }
}

/// The invariants of a run cut short by an outage.
fn assert_outage_accounting(r: &Report, dir: &std::path::Path) {
    assert_eq!(r.outcome, RunOutcome::Aborted);
    assert_eq!(r.exit_code(), 3);
    assert!(
        r.total.acked > 0,
        "some messages went through before the outage"
    );
    assert!(
        r.total.failed > 0,
        "messages in hand at the outage count as failed"
    );
    assert!(r.connections.retries > 0, "failed sends were retried");
    assert!(
        r.connections.breaker_openings >= 1,
        "the breaker opened: {}",
        r.render()
    );
    // Every planned message is acked, failed or never sent: none vanish.
    assert_eq!(
        r.total.acked + r.total.failed + r.total.not_sent,
        r.total.planned
    );
    // The CSV has a row for each acked and each failed message, and the
    // non-OK rows are exactly the failed ones.
    let rows = csv_rows(dir);
    assert_eq!(rows.len() as u64, r.total.acked + r.total.failed);
    let failed_rows = rows.iter().filter(|row| row[3] != "OK").count() as u64;
    assert_eq!(failed_rows, r.total.failed);
    let s = summary(dir);
    assert_eq!(s["outcome"], "aborted");
    assert_eq!(s["total"]["failed"], r.total.failed);
    assert!(s["abortReason"]
        .as_str()
        .unwrap()
        .contains("--give-up-after"));
}

#[test]
fn a_server_stopped_mid_run_gives_retries_breaker_openings_and_a_correct_failed_count() {
    // Graceful stop (close 1001, listener gone): the run retries, opens the
    // breaker, gives up after --give-up-after, and every message is accounted for.
    let server = start_server(BrokerKind::Memory);
    let cfg = outage_config(&format!("ws://{}", server.local_addr()), "stopped");
    let dir = cfg.out_dir.clone().unwrap();
    let started = Instant::now();
    let run = std::thread::spawn(move || chatflow_client::run(cfg));
    std::thread::sleep(Duration::from_millis(700));
    server.shutdown().unwrap();
    let report = run.join().unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "the run ended (hang detector)"
    );
    assert_outage_accounting(&report, &dir);
    // The failed attempts are counted per second and marked on the chart.
    assert!(report.errors_per_second.iter().sum::<u64>() > 0);
    let chart = std::fs::read_to_string(report.files.throughput_chart.as_ref().unwrap()).unwrap();
    assert!(chart.contains("error burst"), "the errors are marked");
}

#[test]
fn a_server_crashing_mid_run_is_handled_the_same_way() {
    // Connections dropped without a close frame, then connection refused.
    let fake = Fake::start(Quirks::default());
    let cfg = outage_config(&fake.url(), "crashed");
    let dir = cfg.out_dir.clone().unwrap();
    let run = std::thread::spawn(move || chatflow_client::run(cfg));
    std::thread::sleep(Duration::from_millis(500));
    drop(fake);
    let report = run.join().unwrap().unwrap();
    assert_outage_accounting(&report, &dir);
}

/// A port on which nothing listens.
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("ws://{}", l.local_addr().unwrap())
}

#[test]
fn an_unreachable_server_is_a_clear_error_after_the_retries() {
    // Preflight tries 1 + retries times with backoff, then names the URL and the typed cause.
    let url = dead_url();
    let mut cfg = config(&url, "unreachable");
    cfg.retries = 2;
    let started = Instant::now();
    match chatflow_client::run(cfg) {
        Err(Error::Unreachable {
            url: u,
            attempts,
            last,
            ..
        }) => {
            assert_eq!(u, format!("{url}/chat/1"));
            assert_eq!(attempts, 3);
            // The cause is typed: the last attempt's address refused.
            match &last {
                ConnectError::Connect { source, .. } => {
                    assert_eq!(
                        source.kind(),
                        std::io::ErrorKind::ConnectionRefused,
                        "{last}"
                    )
                }
                other => panic!("expected a refused connect, got {other:?}"),
            }
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "gave up instead of hanging"
    );
}

#[test]
fn the_binary_exits_non_zero_with_a_message_when_the_server_is_unreachable() {
    // Exit status 1 and one line naming the server, within the retry budget.
    let out = Command::new(env!("CARGO_BIN_EXE_chatflow-client"))
        .args([
            "--url",
            &dead_url(),
            "--retries",
            "1",
            "--backoff",
            "10ms",
            "--progress",
            "off",
        ])
        .args(["--out", out_dir("bin-unreachable").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach ws://127.0.0.1:") && err.contains("2 attempt"),
        "{err}"
    );
}

#[test]
fn bad_flags_are_named_and_exit_2() {
    // clap's own errors and our cross-flag checks both name the flag.
    for (args, flag) in [
        (&["--threads", "many"][..], "--threads"),
        (&["--window", "0"][..], "--window"),
        (&["--threads", "4"][..], "--rooms"),
        (&["--url", "wss://x:1"][..], "--url"),
        (&["--ack-timeout", "soon"][..], "--ack-timeout"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_chatflow-client"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}

#[test]
fn ctrl_c_stops_the_run_and_still_writes_the_report() {
    // SIGINT mid-run: exit 130, summary.json says interrupted, counts add up.
    let server = start_server(BrokerKind::Memory);
    let dir = out_dir("ctrl-c");
    let child = Command::new(env!("CARGO_BIN_EXE_chatflow-client"))
        .args(["--url", &format!("ws://{}", server.local_addr())])
        .args([
            "-n",
            "5000000",
            "--warmup-threads",
            "0",
            "--threads",
            "20",
            "--progress",
            "off",
        ])
        .args(["--out", dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "stopped promptly (hang detector)"
    );
    server.shutdown().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("INTERRUPTED") && stdout.contains("summary.json"),
        "{stdout}"
    );
    let s = summary(&dir);
    assert_eq!(s["outcome"], "interrupted");
    let (acked, failed, not_sent) = (
        s["total"]["acked"].as_u64().unwrap(),
        s["total"]["failed"].as_u64().unwrap(),
        s["total"]["notSent"].as_u64().unwrap(),
    );
    assert!(acked > 0 && not_sent > 0);
    assert_eq!(acked + failed + not_sent, 5_000_000);
    assert_eq!(csv_rows(&dir).len() as u64, acked + failed);
}

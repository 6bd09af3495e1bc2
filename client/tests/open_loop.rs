//! The open loop (`--rate`, `--ramp`) against a real in-process server and
//! a scripted one that stalls: the schedule is kept (counts, never ahead of
//! time), a stall shows in the latency from the intended send time and not
//! in the latency from the actual send, each ramp stage is reported, the
//! `.hgrm` files are HdrHistogram's format, and bad `--ramp` values are
//! refused naming the stage.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chatflow_client::schedule::Schedule;
use chatflow_client::{Config, Report, RunOutcome};
use chatflow_server::BrokerKind;
use common::fake::{Fake, Quirks};
use common::*;

/// The harness's small run as an open loop on `schedule`, without warm-up
/// (so every CSV row is the schedule's).
fn open_config(url: &str, name: &str, schedule: Schedule) -> Config {
    Config {
        warmup_threads: 0,
        open_loop: Some(schedule),
        ..config(url, name)
    }
}

/// A `.hgrm` file's data rows: (value ms, percentile, total count).
fn hgrm_rows(path: &Path) -> Vec<(f64, f64, u64)> {
    let text = std::fs::read_to_string(path).expect(".hgrm written");
    let mut lines = text.lines();
    assert_eq!(
        lines
            .next()
            .map(str::split_whitespace)
            .map(Iterator::collect::<Vec<_>>),
        Some(vec![
            "Value",
            "Percentile",
            "TotalCount",
            "1/(1-Percentile)"
        ]),
        "{}",
        path.display()
    );
    assert_eq!(lines.next(), Some(""));
    let rows: Vec<(f64, f64, u64)> = lines
        .take_while(|l| !l.starts_with('#'))
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (
                cols[0].parse().unwrap(),
                cols[1].parse().unwrap(),
                cols[2].parse().unwrap(),
            )
        })
        .collect();
    assert!(text.contains("#[Mean    = ") && text.contains("#[Buckets = "));
    rows
}

/// Bounds on how many samples are at least `ms`, from the percentile steps:
/// (at least, at most).
fn samples_at_least(rows: &[(f64, f64, u64)], ms: f64) -> (u64, u64) {
    let total = rows.last().map_or(0, |r| r.2);
    let below = rows
        .iter()
        .filter(|r| r.0 < ms)
        .map(|r| r.2)
        .max()
        .unwrap_or(0);
    let through = rows.iter().find(|r| r.0 >= ms).map_or(total, |r| r.2);
    (total - through, total - below)
}

fn file(report: &Report, name: &str) -> std::path::PathBuf {
    let path = report.files.dir.join(name);
    assert!(
        report.files.histograms.contains(&path),
        "{name} in {:?}",
        report.files.histograms
    );
    path
}

#[test]
fn an_open_loop_sends_its_count_at_its_rate_and_never_ahead_of_schedule() {
    // 2,000 msgs/s for 2 s over 20 connections: exactly 4,000 messages, all
    // acked; the k-th send is never before k/2,000 s into the schedule; the
    // achieved rate is the offered one within tolerance.
    let server = start_server(BrokerKind::Memory);
    let schedule = Schedule::constant(2000.0, Duration::from_secs(2)).unwrap();
    let cfg = open_config(&format!("ws://{}", server.local_addr()), "open", schedule);
    let dir = cfg.out_dir.clone().unwrap();
    let report = chatflow_client::run(cfg).unwrap();
    server.shutdown().unwrap();

    assert_eq!(report.outcome, RunOutcome::Completed);
    assert_eq!(
        (
            report.total.planned,
            report.total.acked,
            report.total.failed
        ),
        (4_000, 4_000, 0)
    );
    let o = report.open_loop.as_ref().expect("an open-loop report");
    assert_eq!((o.scheduled_messages, o.offered_rate), (4_000, 2_000.0));
    assert_eq!(o.scheduled_seconds, 2.0);
    // Never faster than offered (nothing goes out early); slower only by
    // what a loaded machine adds.
    assert!(
        (1_000.0..=2_020.0).contains(&o.achieved_rate),
        "achieved {}",
        o.achieved_rate
    );
    assert_eq!(o.stages.len(), 1);
    assert_eq!((o.stages[0].planned, o.stages[0].acked), (4_000, 4_000));
    let lag = o.send_lag_ms.as_ref().unwrap();
    assert_eq!(lag.count, 4_000, "every message's send lag is counted");

    // The schedule, from the CSV: sorted send times never run ahead of it.
    let s = summary(&dir);
    assert_eq!(s["settings"]["mode"], "open");
    let start = chrono::DateTime::parse_from_rfc3339(s["openLoop"]["startedAt"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    let mut sent: Vec<i64> = csv_rows(&dir)
        .iter()
        .map(|row| {
            chrono::DateTime::parse_from_rfc3339(&row[0])
                .unwrap()
                .timestamp_millis()
        })
        .collect();
    assert_eq!(sent.len(), 4_000);
    sent.sort_unstable();
    for (k, &t) in sent.iter().enumerate() {
        // Message k is due k/2 ms in; 3 ms for the two clocks' rounding.
        let due = start + (k as i64) / 2;
        assert!(
            t >= due - 3,
            "send {k} at +{} ms, due at +{} ms",
            t - start,
            due - start
        );
    }

    // Latency both ways and their files: corrected is never below uncorrected.
    let corrected = o.ack_latency_ms.corrected.as_ref().unwrap();
    let uncorrected = report.ack_latency_ms.as_ref().unwrap();
    assert_eq!((corrected.count, uncorrected.count), (4_000, 4_000));
    assert!(corrected.max >= uncorrected.max * 0.999);
    for name in [
        "ack-latency.hgrm",
        "ack-latency-corrected.hgrm",
        "delivery-latency.hgrm",
        "delivery-latency-corrected.hgrm",
        "send-lag.hgrm",
    ] {
        let rows = hgrm_rows(&file(&report, name));
        let last = rows.last().unwrap();
        assert_eq!(last.1, 1.0, "{name} ends at percentile 1.0");
        assert_eq!(last.2, 4_000, "{name} counts every message");
    }
    let text = report.render();
    assert!(
        text.contains("open     offered 2,000 msgs/s for 2.0 s (4,000 messages)"),
        "{text}"
    );
    assert!(
        text.contains("ack (intended)") && text.contains("ack (actual)"),
        "{text}"
    );
    let chart = std::fs::read_to_string(report.files.throughput_chart.as_ref().unwrap()).unwrap();
    assert!(chart.contains("main: 2,000/s"), "the phase is marked");
}

#[test]
fn a_stall_shows_in_the_latency_from_the_intended_time_not_from_the_send() {
    // The server stalls for 1 s mid-run. Closed-loop style (from the
    // actual send), only the few messages in flight then wait; from their
    // intended times, every message due during the stall does.
    let fake = Fake::start(Quirks {
        stall: Some((Duration::from_secs(1), Duration::from_secs(1))),
        ..Quirks::default()
    });
    let schedule = Schedule::constant(500.0, Duration::from_secs(3)).unwrap();
    let cfg = Config {
        rooms: 2,
        threads: 4,
        window: 1,
        ..open_config(&fake.url(), "stall", schedule)
    };
    let in_flight = (cfg.threads * cfg.window) as u64;
    let report = chatflow_client::run(cfg).unwrap();
    assert_eq!(
        (report.total.acked, report.total.failed),
        (1_500, 0),
        "{:?}",
        report.status_codes
    );
    let o = report.open_loop.as_ref().unwrap();
    let corrected = o.ack_latency_ms.corrected.as_ref().unwrap();
    let uncorrected = report.ack_latency_ms.as_ref().unwrap();
    assert!(
        corrected.max >= 800.0,
        "the stall is in the corrected max: {corrected:?}"
    );
    assert!(corrected.p99 >= 500.0, "and in its p99: {corrected:?}");
    assert!(
        uncorrected.p99 < corrected.p99 / 2.0,
        "uncorrected p99 {} vs corrected {}",
        uncorrected.p99,
        corrected.p99
    );
    // Counted from the histograms: ~250 messages were due in the stall's
    // first half; at most the in-flight ones waited that long after
    // their send.
    let (at_least, _) = samples_at_least(
        &hgrm_rows(&file(&report, "ack-latency-corrected.hgrm")),
        500.0,
    );
    let (_, at_most) = samples_at_least(&hgrm_rows(&file(&report, "ack-latency.hgrm")), 500.0);
    assert!(at_least >= 100, "{at_least} corrected samples ≥ 500 ms");
    assert!(
        at_most <= in_flight + 4,
        "{at_most} uncorrected samples ≥ 500 ms"
    );
    // The senders fell behind: said so, with how far.
    assert!(!o.kept_up);
    assert!(
        o.send_lag_ms.as_ref().unwrap().max >= 500.0,
        "{:?}",
        o.send_lag_ms
    );
    assert!(o.late_messages >= 100, "{}", o.late_messages);
    let text = report.render();
    assert!(
        text.contains("COULD NOT KEEP UP: the senders fell behind schedule by up to"),
        "{text}"
    );
}

#[test]
fn a_ramp_reports_each_stage_and_marks_it_on_the_chart() {
    // 500/s for 1 s then 1,500/s for 1 s: each stage's messages, acks and
    // latency; every ack counted in one stage's window or after the end.
    let server = start_server(BrokerKind::Memory);
    let schedule = Schedule::ramp(&[
        (500.0, Duration::from_secs(1)),
        (1500.0, Duration::from_secs(1)),
    ])
    .unwrap();
    let cfg = open_config(&format!("ws://{}", server.local_addr()), "ramp", schedule);
    let dir = cfg.out_dir.clone().unwrap();
    let report = chatflow_client::run(cfg).unwrap();
    server.shutdown().unwrap();

    assert_eq!((report.total.acked, report.total.failed), (2_000, 0));
    let o = report.open_loop.as_ref().unwrap();
    let stages: Vec<(usize, f64, u64, u64, u64)> = o
        .stages
        .iter()
        .map(|s| (s.stage, s.rate, s.planned, s.acked, s.failed))
        .collect();
    assert_eq!(
        stages,
        vec![(1, 500.0, 500, 500, 0), (2, 1500.0, 1500, 1500, 0)]
    );
    let in_windows: f64 = o.stages.iter().map(|s| s.throughput * s.seconds).sum();
    assert_eq!(in_windows.round() as u64 + o.acked_after_schedule, 2_000);
    for s in &o.stages {
        assert!(s.ack_latency_ms.corrected.is_some() && s.ack_latency_ms.uncorrected.is_some());
        assert!(s.send_lag_ms.is_some());
    }
    assert!(
        (o.stages[1].start_offset_seconds - o.stages[0].start_offset_seconds - 1.0).abs() < 1e-9
    );
    let json = summary(&dir);
    assert_eq!(json["openLoop"]["stages"].as_array().unwrap().len(), 2);
    assert_eq!(json["openLoop"]["stages"][1]["planned"], 1_500);
    let text = report.render();
    assert!(
        text.contains("stage ") && text.contains("ack p99 intended"),
        "{text}"
    );
    let chart = std::fs::read_to_string(report.files.throughput_chart.as_ref().unwrap()).unwrap();
    assert!(chart.contains("stage 1: 500/s") && chart.contains("stage 2: 1,500/s"));
}

#[test]
fn malformed_ramps_exit_2_naming_the_flag_and_the_stage() {
    for (value, stage) in [
        ("1000:30s,5000", "stage 2 \"5000\""),
        ("1000:30s,x:5s", "stage 2 \"x:5s\""),
        ("1000:never", "stage 1 \"1000:never\""),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_chatflow-client"))
            .args(["--ramp", value])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--ramp") && err.contains(stage),
            "{value}: {err}"
        );
    }
    // --duration with -n, and --duration without --rate, name the flags.
    for (args, flags) in [
        (
            &["-n", "10", "--rate", "5", "--duration", "2s"][..],
            &["--messages", "--duration"][..],
        ),
        (&["--duration", "2s"][..], &["--duration", "--rate"][..]),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_chatflow-client"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(flags.iter().all(|f| err.contains(f)), "{args:?}: {err}");
    }
}

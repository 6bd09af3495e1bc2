//! Load runs against a real in-process server (memory broker): counts,
//! files and charts agree with what happened.

mod common;

use chatflow_client::RunOutcome;
use chatflow_server::BrokerKind;
use common::*;

#[test]
fn a_small_run_acks_and_delivers_every_message_and_summary_json_matches() {
    // Warm-up + pipelined main phase: every message acked and broadcast
    // back to its sender, and summary.json says exactly that.
    let server = start_server(BrokerKind::Memory);
    let cfg = config(&format!("ws://{}", server.local_addr()), "small");
    let dir = cfg.out_dir.clone().unwrap();
    let report = chatflow_client::run(cfg).unwrap();
    server.shutdown().unwrap();

    assert_eq!(report.outcome, RunOutcome::Completed);
    assert_eq!(report.exit_code(), 0);
    assert_eq!(
        (
            report.total.acked,
            report.total.failed,
            report.total.not_sent
        ),
        (2_000, 0, 0)
    );
    assert_eq!((report.warmup.acked, report.main.acked), (400, 1_600));
    assert_eq!(
        (report.delivery.observed, report.delivery.missing),
        (2_000, 0)
    );
    assert!(report.delivery.latency_ms.is_some() && report.ack_latency_ms.is_some());

    let s = summary(&dir);
    assert_eq!(s["outcome"], "completed");
    assert_eq!(s["total"]["acked"], 2_000);
    assert_eq!(s["total"]["failed"], 0);
    assert_eq!(s["total"]["notSent"], 0);
    assert_eq!(s["warmup"]["acked"], 400);
    assert_eq!(s["main"]["acked"], 1_600);
    assert_eq!(s["delivery"]["observed"], 2_000);
    // 20 warm-up connections + 20 main ones; nothing failed, nothing retried.
    assert_eq!(s["connections"]["opened"], 40);
    assert_eq!(s["connections"]["retries"], 0);
    assert_eq!(s["connections"]["breakerOpenings"], 0);
    assert_eq!(s["statusCodes"]["OK"], 2_000);
    let types: u64 = ["TEXT", "JOIN", "LEAVE"]
        .iter()
        .map(|k| s["messageTypes"][k]["acked"].as_u64().unwrap())
        .sum();
    assert_eq!(types, 2_000);
    let rooms = s["rooms"].as_array().unwrap();
    assert_eq!(rooms.len(), 20);
    assert_eq!(
        rooms
            .iter()
            .map(|r| r["acked"].as_u64().unwrap())
            .sum::<u64>(),
        1_600
    );
    let per_second: u64 = s["ackedPerSecond"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(per_second, 2_000);
    assert_eq!(s["settings"]["seed"], 7);
    assert_eq!(s["settings"]["pin"], "auto");
    for key in ["mean", "p50", "p95", "p99", "p999", "min", "max"] {
        assert!(s["ackLatencyMs"][key].as_f64().unwrap() > 0.0, "{key}");
        assert!(
            s["delivery"]["latencyMs"][key].as_f64().unwrap() > 0.0,
            "{key}"
        );
    }
    assert!(s["littlesLaw"]["predictedThroughput"].as_f64().unwrap() > 0.0);

    // The presence check: every main connection asked, and every user its
    // acked JOINs (less its LEAVEs) made present was listed (the warm-up's
    // users may still be there, within their grace).
    let p = &report.presence;
    assert!(p.checked && p.matched, "{p:?}");
    assert_eq!(
        (p.connections, p.refused, p.unanswered, p.missing),
        (20, 0, 0, 0),
        "{p:?}"
    );
    assert!(p.ours > 0 && p.listed >= p.ours && p.frames > 0, "{p:?}");
    assert_eq!(s["presence"]["matched"], true);
    assert_eq!(s["presence"]["ours"], p.ours);
}

#[test]
fn the_csv_has_one_row_per_message() {
    // One row per message with the five documented columns, all OK, rooms in range.
    let server = start_server(BrokerKind::Memory);
    let cfg = config(&format!("ws://{}", server.local_addr()), "csv");
    let dir = cfg.out_dir.clone().unwrap();
    chatflow_client::run(cfg).unwrap();
    server.shutdown().unwrap();

    let rows = csv_rows(&dir);
    assert_eq!(rows.len(), 2_000);
    for row in &rows {
        assert_eq!(row.len(), 5, "{row:?}");
        assert!(row[0].ends_with('Z') && row[0].len() == 24, "{row:?}");
        assert!(["TEXT", "JOIN", "LEAVE"].contains(&row[1].as_str()));
        assert!(row[2].parse::<f64>().unwrap() >= 0.0);
        assert_eq!(row[3], "OK");
        assert!((1..=20).contains(&row[4].parse::<u32>().unwrap()));
    }
}

#[test]
fn the_svg_charts_exist_and_contain_the_plotted_series() {
    // throughput.svg and latency.svg are written, with lines and legends.
    let server = start_server(BrokerKind::Memory);
    let cfg = config(&format!("ws://{}", server.local_addr()), "charts");
    let report = chatflow_client::run(cfg).unwrap();
    server.shutdown().unwrap();

    let t = std::fs::read_to_string(report.files.throughput_chart.as_ref().unwrap()).unwrap();
    assert!(t.starts_with("<svg") && t.contains("<polyline"));
    assert!(t.contains("1-second buckets") && t.contains("10-second buckets"));
    let l = std::fs::read_to_string(report.files.latency_chart.as_ref().unwrap()).unwrap();
    // Legend entries are text elements of their own.
    assert!(
        l.contains("<polyline")
            && l.contains(">\nack\n</text>")
            && l.contains(">\ndelivery\n</text>")
    );
    // Two series drawn with data: at least two polylines of several points.
    let long_lines = l
        .split("<polyline")
        .skip(1)
        .filter(|p| {
            p.split("points=\"")
                .nth(1)
                .is_some_and(|pts| pts.split(' ').count() > 5)
        })
        .count();
    assert!(long_lines >= 2, "{long_lines}");
}

#[test]
fn without_broadcasts_delivery_is_reported_as_none_observed_and_the_wait_is_bounded() {
    // --broker none acks but never broadcasts: the run still ends, after at
    // most the delivery timeout, and says no delivery was observed.
    let server = start_server(BrokerKind::None);
    let mut cfg = config(&format!("ws://{}", server.local_addr()), "nobroker");
    cfg.delivery_timeout = std::time::Duration::from_millis(300);
    let started = std::time::Instant::now();
    let report = chatflow_client::run(cfg).unwrap();
    server.shutdown().unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "hang detector"
    );
    assert_eq!(report.total.acked, 2_000);
    assert_eq!(
        (report.delivery.observed, report.delivery.missing),
        (0, 2_000)
    );
    assert!(report.delivery.latency_ms.is_none());
    assert!(
        report.render().contains("none observed"),
        "{}",
        report.render()
    );
}

#[test]
fn with_no_delivery_the_run_does_not_wait_for_broadcasts() {
    // --no-delivery against --broker none: no wait at all, nothing counted missing.
    let server = start_server(BrokerKind::None);
    let mut cfg = config(&format!("ws://{}", server.local_addr()), "nodelivery");
    cfg.delivery = false;
    cfg.delivery_timeout = std::time::Duration::from_secs(300);
    let started = std::time::Instant::now();
    let report = chatflow_client::run(cfg).unwrap();
    server.shutdown().unwrap();
    // Waiting out the 300 s delivery timeout would take far longer.
    assert!(started.elapsed() < std::time::Duration::from_secs(120));
    assert_eq!(report.total.acked, 2_000);
    assert_eq!((report.delivery.observed, report.delivery.missing), (0, 0));
    assert!(report.render().contains("not measured"));
}

//! The end of a load run (real in-process server, memory broker) against a
//! scripted read API: `metrics.json` for the run's window, the stored count
//! beside the acked count after the settle wait, and a run that still
//! succeeds when the API is unreachable or unavailable.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use chatflow_client::{ApiUrl, Config, RunOutcome};
use chatflow_server::BrokerKind;
use common::api::{self, Answer, FakeApi};
use common::*;
use serde_json::json;

/// The harness's small run with the end-of-run fetch on, against `api`.
fn run_config(server: &chatflow_server::Server, api: &str, name: &str) -> Config {
    Config {
        metrics: true,
        api_url: Some(ApiUrl::parse(api).unwrap()),
        ..config(&format!("ws://{}", server.local_addr()), name)
    }
}

fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("file written")).expect("JSON")
}

#[test]
fn a_run_writes_metrics_json_for_its_window_and_shows_the_stored_count() {
    // Stored = acked on the first poll: metrics.json is the served document,
    // the window covers the run in whole seconds, summary says 2,000 of 2,000.
    let fake = FakeApi::start(vec![Answer::ok(&api::document_storing(2_000))]);
    let server = start_server(BrokerKind::Memory);
    let cfg = run_config(&server, &fake.url(), "metrics-ok");
    let dir = cfg.out_dir.clone().unwrap();
    let before = chrono::Utc::now();
    let report = chatflow_client::run(cfg).unwrap();
    let after = chrono::Utc::now();
    server.shutdown().unwrap();

    assert_eq!(report.exit_code(), 0);
    let m = &report.metrics;
    assert!(m.fetched, "{m:?}");
    assert_eq!(
        (m.stored_messages, m.acked, m.polls),
        (Some(2_000), 2_000, 1)
    );
    assert_eq!(m.wait_ended, Some("reached"));
    assert_eq!(
        read_json(&dir.join("metrics.json")),
        api::document_storing(2_000)
    );
    assert_eq!(report.files.metrics, Some(dir.join("metrics.json")));
    let text = report.render();
    assert!(
        text.contains("stored   2,000 of 2,000 acked messages in the run's window (1 poll over"),
        "{text}"
    );
    assert!(text.contains("metrics.json"));

    // The request: the run's window, rounded outward to whole seconds.
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let (path, query) = api::path_and_query(&requests[0]);
    assert_eq!(path, "/api/metrics");
    let keys: Vec<&str> = query.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["start", "end"]);
    let time = |v: &str| chrono::DateTime::parse_from_rfc3339(v).unwrap();
    let (start, end) = (time(&query[0].1), time(&query[1].1));
    assert_eq!(start.timestamp_subsec_nanos(), 0);
    assert_eq!(end.timestamp_subsec_nanos(), 0);
    assert!(start <= before && start > before - chrono::Duration::seconds(1));
    assert!(end > start && end <= after + chrono::Duration::seconds(1));

    let s = summary(&dir);
    assert_eq!(s["metrics"]["storedMessages"], 2_000);
    assert_eq!(s["metrics"]["acked"], 2_000);
    assert_eq!(s["metrics"]["fetched"], true);
    assert_eq!(s["metrics"]["apiUrl"], fake.url());
    assert_eq!(s["metrics"]["window"]["start"], query[0].1);
    assert_eq!(
        s["files"]["metrics"],
        dir.join("metrics.json").to_str().unwrap()
    );
}

#[test]
fn the_run_polls_until_the_stored_count_reaches_the_acked_count() {
    // The consumers commit late: 1,200 then 1,900 then 2,000 stored; three polls.
    let fake = FakeApi::start(vec![
        Answer::ok(&api::document_storing(1_200)),
        Answer::ok(&api::document_storing(1_900)),
        Answer::ok(&api::document_storing(2_000)),
    ]);
    let server = start_server(BrokerKind::Memory);
    let cfg = run_config(&server, &fake.url(), "metrics-poll");
    let dir = cfg.out_dir.clone().unwrap();
    let report = chatflow_client::run(cfg).unwrap();
    server.shutdown().unwrap();

    let m = &report.metrics;
    assert_eq!((m.stored_messages, m.polls), (Some(2_000), 3), "{m:?}");
    assert_eq!(m.wait_ended, Some("reached"));
    assert_eq!(fake.requests().len(), 3);
    // The same window on every poll.
    let windows: Vec<_> = fake
        .requests()
        .iter()
        .map(|r| api::path_and_query(r).1)
        .collect();
    assert!(windows.windows(2).all(|w| w[0] == w[1]), "{windows:?}");
    // metrics.json is the last document.
    assert_eq!(
        read_json(&dir.join("metrics.json"))["analytics"]["totalMessages"],
        2_000
    );
    assert!(!report.render().contains("not stored"));
}

#[test]
fn a_stored_count_that_stops_short_is_reported_as_a_finding() {
    // 1,990 stored and not growing: the wait ends when the count stalls
    // (well before --metrics-settle 20s), the run still exits 0, and the
    // summary says 10 acked messages were not stored.
    let fake = FakeApi::start(vec![Answer::ok(&api::document_storing(1_990))]);
    let server = start_server(BrokerKind::Memory);
    let cfg = Config {
        metrics_settle: Duration::from_secs(20),
        ..run_config(&server, &fake.url(), "metrics-short")
    };
    let dir = cfg.out_dir.clone().unwrap();
    let report = chatflow_client::run(cfg).unwrap();
    server.shutdown().unwrap();

    assert_eq!(report.exit_code(), 0, "a finding, not a client error");
    let m = &report.metrics;
    assert_eq!(m.stored_messages, Some(1_990));
    assert_eq!(m.wait_ended, Some("stalled"));
    assert!(m.polls >= 2, "polled while waiting: {m:?}");
    assert!(
        m.waited_seconds < 15.0,
        "stalled, not the 20 s bound: {m:?}"
    );
    let text = report.render();
    assert!(
        text.contains("stored   1,990 of 2,000 acked messages")
            && text.contains("10 acked but not stored after the count stopped growing")
            && text.contains("not a client error"),
        "{text}"
    );
    assert_eq!(summary(&dir)["metrics"]["waitEnded"], "stalled");
}

#[test]
fn the_settle_wait_is_bounded_by_metrics_settle() {
    // A count still growing on every poll: the wait ends at --metrics-settle.
    let answers = (0..100)
        .map(|i| Answer::ok(&api::document_storing(1_000 + i)))
        .collect();
    let fake = FakeApi::start(answers);
    let server = start_server(BrokerKind::Memory);
    let cfg = Config {
        metrics_settle: Duration::from_millis(1_200),
        ..run_config(&server, &fake.url(), "metrics-bound")
    };
    let report = chatflow_client::run(cfg).unwrap();
    server.shutdown().unwrap();

    let m = &report.metrics;
    assert_eq!(m.wait_ended, Some("limit"), "{m:?}");
    assert!(m.polls >= 2 && m.waited_seconds < 10.0, "{m:?}");
    assert!(
        report.render().contains("after 1.2 s (--metrics-settle)"),
        "{}",
        report.render()
    );
}

#[test]
fn with_the_api_unreachable_the_run_succeeds_and_says_metrics_were_not_fetched() {
    // Connection refused: exit 0, the reason names the URL, no metrics.json.
    let url = api::dead_api_url();
    let server = start_server(BrokerKind::Memory);
    let cfg = run_config(&server, &url, "metrics-unreachable");
    let dir = cfg.out_dir.clone().unwrap();
    let report = chatflow_client::run(cfg).unwrap();
    server.shutdown().unwrap();

    assert_eq!(report.outcome, RunOutcome::Completed);
    assert_eq!(report.exit_code(), 0);
    assert!(!report.metrics.fetched);
    let text = report.render();
    assert!(
        text.contains(&format!(
            "metrics  not fetched: cannot reach the API at {url}/api/metrics?start="
        )),
        "{text}"
    );
    assert!(!dir.join("metrics.json").exists());
    let s = summary(&dir);
    assert_eq!(s["metrics"]["fetched"], false);
    assert!(s["metrics"]["storedMessages"].is_null());
    assert!(s["metrics"]["reason"]
        .as_str()
        .unwrap()
        .contains("cannot reach"));
}

#[test]
fn an_api_without_a_database_does_not_fail_the_run() {
    // 503 (a server with --broker memory and no PostgreSQL): one poll, the
    // API's error in the summary, exit 0.
    let fake = FakeApi::start(vec![Answer::error(
        503,
        json!({"error": "database unavailable: connection refused", "retryAfterSeconds": 1}),
    )]);
    let server = start_server(BrokerKind::Memory);
    let cfg = run_config(&server, &fake.url(), "metrics-503");
    let dir = cfg.out_dir.clone().unwrap();
    let report = chatflow_client::run(cfg).unwrap();
    server.shutdown().unwrap();

    assert_eq!(report.exit_code(), 0);
    assert_eq!(fake.requests().len(), 1);
    assert!(
        report
            .render()
            .contains("HTTP 503: database unavailable: connection refused"),
        "{}",
        report.render()
    );
    assert!(!dir.join("metrics.json").exists());
}

#[test]
fn a_document_without_analytics_is_saved_but_has_no_stored_count() {
    // analytics: {"error"}: metrics.json written, the summary says why there is no count.
    let mut doc = api::fleet_document();
    doc["analytics"] = json!({"error": "statement timeout"});
    let fake = FakeApi::start(vec![Answer::ok(&doc)]);
    let server = start_server(BrokerKind::Memory);
    let cfg = run_config(&server, &fake.url(), "metrics-noanalytics");
    let dir = cfg.out_dir.clone().unwrap();
    let report = chatflow_client::run(cfg).unwrap();
    server.shutdown().unwrap();

    assert_eq!(report.exit_code(), 0);
    assert_eq!(report.metrics.wait_ended, Some("noCount"));
    assert_eq!(fake.requests().len(), 1, "no polling without a count");
    assert_eq!(read_json(&dir.join("metrics.json")), doc);
    assert!(
        report
            .render()
            .contains("metrics  fetched, but no stored count: analytics: error: statement timeout"),
        "{}",
        report.render()
    );
}

#[test]
fn no_metrics_turns_the_fetch_off() {
    // Config metrics off: no request, the summary says so.
    let fake = FakeApi::start(vec![Answer::ok(&api::document_storing(2_000))]);
    let server = start_server(BrokerKind::Memory);
    let cfg = Config {
        metrics: false,
        ..run_config(&server, &fake.url(), "metrics-off")
    };
    let dir = cfg.out_dir.clone().unwrap();
    let report = chatflow_client::run(cfg).unwrap();
    server.shutdown().unwrap();

    assert!(fake.requests().is_empty());
    assert!(report.render().contains("metrics  off (--no-metrics)"));
    assert!(!dir.join("metrics.json").exists());
    assert_eq!(summary(&dir)["metrics"]["enabled"], false);
}

#[test]
fn the_binary_runs_as_before_and_fetches_metrics_from_api_url() {
    // `chatflow-client -n ... --url ws://... --api-url http://...`: the
    // run interface is unchanged and the summary shows the stored count.
    let fake = FakeApi::start(vec![Answer::ok(&api::document_storing(1_000))]);
    let server = start_server(BrokerKind::Memory);
    let dir = out_dir("bin-metrics");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_chatflow-client"))
        .args(["--url", &format!("ws://{}", server.local_addr())])
        .args(["-n", "1000", "--threads", "20", "--warmup-threads", "0"])
        .args(["--progress", "off", "--no-charts", "--seed", "3"])
        .args(["--api-url", &fake.url(), "--metrics-settle", "2s"])
        .args(["--out", dir.to_str().unwrap()])
        .output()
        .unwrap();
    server.shutdown().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "hang detector"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("stored   1,000 of 1,000 acked messages"),
        "{stdout}"
    );
    assert!(dir.join("metrics.json").exists());
    assert_eq!(summary(&dir)["metrics"]["storedMessages"], 1_000);
}

//! The monitoring files shipped in `tuning/prometheus/` against the real
//! metrics: Prometheus accepts the scrape config and the alert rules
//! (`promtool check config`), and every metric the Grafana dashboard and
//! the rules query is on a live server's or consumer's `/metrics` page
//! (after some traffic, so histograms and queue depths exist) — a renamed
//! metric fails here instead of drawing an empty panel.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use chatflow_consumer::Consumer;
use chatflow_testkit::database::TestDatabase;
use chatflow_testkit::prometheus;
use common::chat::*;
use common::{namespace, persistent, wait_until, Broker};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tuning/prometheus");

#[test]
fn promtool_accepts_the_scrape_config_and_the_rules() {
    let output = Command::new("promtool")
        .args(["check", "config", &format!("{DIR}/prometheus.yml")])
        .output()
        .expect("promtool runs (scripts/ensure-tools.sh promtool)");
    let said = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    assert!(said.contains("SUCCESS: 1 rule files found"), "{said}");
}

/// Metric names in PromQL expressions (ours and the standard process ones).
fn queried_metrics(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        let starts_name = (i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
            && (rest.starts_with("chatflow_") || rest.starts_with("process_"));
        if starts_name {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.insert(rest[..len].to_string());
            i += len;
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn every_metric_the_dashboard_and_rules_query_exists() {
    let dashboard = std::fs::read_to_string(format!("{DIR}/grafana-dashboard.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let exprs: Vec<String> = (json["panels"].as_array().expect("panels").iter())
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("an expr").to_string())
        .collect();
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    let rules = std::fs::read_to_string(format!("{DIR}/chatflow-rules.yml")).unwrap();
    let wanted: BTreeSet<String> = exprs
        .iter()
        .flat_map(|e| queried_metrics(e))
        .chain(queried_metrics(&rules))
        .collect();
    assert!(
        wanted.contains("chatflow_server_ack_latency_seconds_bucket"),
        "{wanted:?}"
    );

    // A live fleet of one of each, with traffic, persistence on.
    let ns = namespace();
    let db = TestDatabase::new(&ns);
    let config = persistent(&ns, 2, &db.name);
    let _broker = Broker::new(&config);
    let consumer = Consumer::start(config).expect("consumer starts");
    let server = server_with_api(&ns, 2, "dash", Some(&db.name));
    let mut client = connect(&server, 1);
    for i in 0..10 {
        send(&mut client, chat_message(3, "seen", &format!("d{i}")));
    }
    wait_until("the messages are stored", || db.rows() == 10);
    let api = server.api_addr().unwrap();
    let page_of = |addr| {
        let (status, body) = chatflow_testkit::http_get(addr, "/metrics", "", common::TIMEOUT);
        assert_eq!(status, 200, "{body}");
        prometheus::parse(&body)
    };
    wait_until("the queue depths are sampled", || {
        page_of(api)
            .named("chatflow_rabbitmq_queue_messages_ready")
            .count()
            > 0
    });
    let mut exposed = BTreeSet::new();
    for page in [page_of(api), page_of(consumer.metrics_addr())] {
        exposed.extend(page.samples.into_iter().map(|s| s.name));
    }
    let missing: Vec<&String> = wanted.difference(&exposed).collect();
    assert!(
        missing.is_empty(),
        "queried but not exposed: {missing:?}\nexposed: {exposed:?}"
    );
    drop(client);
    server.shutdown().expect("the server stops");
    consumer.shutdown().expect("the consumer stops");
}

//! `GET /metrics` on the API port, read by a real OpenMetrics parser: the
//! page parses, every counter `/health` has moves with traffic (and health
//! checks move only the plain-HTTP counter), connections show per worker,
//! and with RabbitMQ the ack and confirm latency histograms count every
//! acked message and the room queues' depths show what waits in them.

mod common;

use std::net::SocketAddr;

use chatflow_database::DatabaseSettings;
use chatflow_server::config::ApiConfig;
use chatflow_server::{BrokerKind, Config, Server};
use chatflow_testkit::prometheus::{self, Page};
use common::*;

/// The API on port 0 over a database nobody creates: `/metrics` needs
/// none (the pool connects only when a query asks).
fn with_api(config: Config) -> Server {
    Server::start(Config {
        api: Some(ApiConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            threads: 2,
            database: DatabaseSettings {
                name: unique_namespace("metrics-nodb"),
                ..DatabaseSettings::default()
            },
            ..ApiConfig::default()
        }),
        ..config
    })
    .expect("server starts")
}

fn scrape(api: SocketAddr) -> Page {
    let response = chatflow_testkit::http::http_request(api, "GET", "/metrics", TIMEOUT);
    assert_eq!(response.status, 200, "{}", response.body);
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    prometheus::parse(&response.body)
}

#[test]
fn the_page_parses_and_its_counters_follow_the_traffic() {
    let server = with_api(config(BrokerKind::Memory));
    let api = server.api_addr().unwrap();
    let before = scrape(api);
    for family in [
        "chatflow_server_messages_accepted",
        "chatflow_server_connections",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds",
        "chatflow_build_info",
        "chatflow_api_requests",
    ] {
        assert!(before.types.contains_key(family), "no family {family}");
    }
    assert_eq!(before.types["chatflow_server_messages_accepted"], "counter");
    assert_eq!(before.sum("chatflow_server_connections"), 0.0);
    let build = before.named("chatflow_build_info").next().unwrap();
    assert_eq!(build.labels["binary"], "chatflow-server");
    assert!(!build.labels["commit"].is_empty() && !build.labels["version"].is_empty());
    assert!(before.sum("process_resident_memory_bytes") > 1e6);

    // Two members of room 3; one sends five messages, each broadcast to both.
    let mut sender = connect(server.local_addr(), 3);
    let mut listener = connect(server.local_addr(), 3);
    for i in 0..5 {
        let ack = request(&mut sender, message(42, "counted", &format!("m{i}")));
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    for _ in 0..5 {
        recv_kind(&mut listener, "message");
    }
    let (status, _) = http_get(server.local_addr(), "/health", "");
    assert_eq!(status, 200);
    http_get(server.local_addr(), "/livez", "");

    let after = scrape(api);
    let moved = |name: &str| after.sum(name) - before.sum(name);
    assert_eq!(moved("chatflow_server_messages_accepted_total"), 5.0);
    assert_eq!(moved("chatflow_server_broadcast_frames_sent_total"), 10.0);
    assert_eq!(
        moved("chatflow_server_websocket_connections_opened_total"),
        2.0
    );
    // The health checks are plain HTTP: counted there, not as WebSockets.
    assert_eq!(moved("chatflow_server_http_requests_total"), 2.0);
    assert_eq!(moved("chatflow_server_tcp_accepted_total"), 4.0);
    assert_eq!(moved("chatflow_server_messages_rejected_total"), 0.0);
    // Open connections, per worker (two workers, two connections).
    assert_eq!(after.named("chatflow_server_connections").count(), 2);
    assert_eq!(after.sum("chatflow_server_connections"), 2.0);
    assert_eq!(after.value("chatflow_server_ready", &[]), 1.0);
    // The scrapes themselves, on the API port.
    assert!(
        after.value(
            "chatflow_api_requests_total",
            &[("route", "metrics"), ("code", "200")]
        ) >= 1.0
    );
    // No RabbitMQ publishers: no publish histograms.
    assert!(!after
        .types
        .contains_key("chatflow_server_ack_latency_seconds"));

    // Another method is a 405 naming GET.
    let refused = chatflow_testkit::http::http_request(api, "POST", "/metrics", TIMEOUT);
    assert_eq!(refused.status, 405, "{}", refused.body);
    assert!(refused.body.contains("GET"), "{}", refused.body);
    drop((sender, listener));
    server.shutdown().expect("the server stops cleanly");
}

#[test]
fn with_rabbitmq_every_ack_is_in_the_latency_histograms() {
    let namespace = unique_namespace("metrics");
    let config = rabbit_config(&namespace, 2);
    let _guard = TopologyGuard(config.services.topology.clone());
    let server = with_api(config);
    let api = server.api_addr().unwrap();
    let mut client = connect(server.local_addr(), 2);
    for i in 0..20 {
        let ack = request(&mut client, message(7, "timed", &format!("t{i}")));
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let page = scrape(api);
    assert_eq!(
        page.types["chatflow_server_ack_latency_seconds"],
        "histogram"
    );
    // Every ack was answered after its confirm was observed.
    assert_eq!(
        page.value("chatflow_server_ack_latency_seconds_count", &[]),
        20.0
    );
    assert_eq!(
        page.value(
            "chatflow_server_ack_latency_seconds_bucket",
            &[("le", "+Inf")]
        ),
        20.0
    );
    assert!(page.value("chatflow_server_ack_latency_seconds_sum", &[]) > 0.0);
    assert_eq!(
        page.value("chatflow_server_broker_confirm_latency_seconds_count", &[]),
        20.0
    );
    // The messages were named: the sent log was asked at least once.
    assert!(page.value("chatflow_server_sent_log_claim_seconds_count", &[]) >= 1.0);
    assert_eq!(page.sum("chatflow_server_publishes_in_flight"), 0.0);
    let publishers = page.named("chatflow_server_publisher_up").count() as f64;
    assert!(publishers >= 1.0);
    assert_eq!(page.sum("chatflow_server_publisher_up"), publishers);
    assert_eq!(
        page.value("chatflow_server_links_down", &[("role", "publishing")]),
        0.0
    );
    // No consumer runs: the 20 messages wait in the room's queues, and the
    // queue-depth sampler (every 2 s) shows them per shard.
    eventually("the queue depths show the 20 messages", || {
        let page = scrape(api);
        page.named("chatflow_rabbitmq_queue_messages_ready").count() == 10
            && page.sum("chatflow_rabbitmq_queue_messages_ready") == 20.0
    });
    let page = scrape(api);
    let room2: f64 = (page.named("chatflow_rabbitmq_queue_messages_ready"))
        .filter(|s| s.labels["room"] == "2")
        .map(|s| s.value)
        .sum();
    assert_eq!(room2, 20.0);
    assert_eq!(page.value("chatflow_rabbitmq_queue_sample_ok", &[]), 1.0);
    drop(client);
    server.shutdown().expect("the server stops cleanly");
}

/// A nack (here a full queue refusing a publish) makes the publisher reopen
/// its channel once nothing else is in flight, and the page counts it; the
/// new channel publishes (another shard still acks) and no confirm went
/// overdue.
#[test]
fn a_nack_reopens_the_publishers_channel_and_is_counted() {
    let namespace = unique_namespace("reopen");
    let mut config = rabbit_config(&namespace, 1);
    config.services.topology.queue_max_length = Some(2);
    let _guard = TopologyGuard(config.services.topology.clone());
    let server = with_api(config);
    let api = server.api_addr().unwrap();
    assert_eq!(
        scrape(api).sum("chatflow_server_publisher_channel_reopens_total"),
        0.0
    );
    // A channel is reopened at most every 250 ms from its opening.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut client = connect(server.local_addr(), 1);
    // User 5 always goes to shard 0, which takes up to max + 1 = 3.
    let replies: Vec<_> = (0..5)
        .map(|i| request(&mut client, message(5, "fill", &format!("f{i}"))))
        .collect();
    assert!(
        replies.iter().any(|r| r["code"] == "UNAVAILABLE"),
        "{replies:?}"
    );
    eventually("the nack reopened the channel", || {
        scrape(api).sum("chatflow_server_publisher_channel_reopens_total") >= 1.0
    });
    assert_eq!(
        request(&mut client, message(6, "other shard", "o"))["type"],
        "ack"
    );
    assert_eq!(
        scrape(api).sum("chatflow_server_confirms_overdue_total"),
        0.0
    );
    drop(client);
    server.shutdown().expect("the server stops cleanly");
}

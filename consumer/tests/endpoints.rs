//! The consumer's health and metrics port, and start-up refusals.

mod common;

use chatflow_consumer::{Config, Consumer};
use common::*;

/// `/health` says ok with connection state and totals once consuming,
/// `/metrics` is Prometheus text with per-room counters, other paths are
/// 404, and `health()` is the same document.
#[test]
fn health_and_metrics_answer() {
    let ns = namespace();
    let config = config(&ns, 2);
    let mut broker = Broker::new(&config);
    let consumer = Consumer::start(config).expect("consumer starts");
    let addr = consumer.metrics_addr();
    wait_until("health ok", || consumer.health().status == "ok");

    let (status, body) = http_get(addr, "/health");
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).expect("health is JSON");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["namespace"], ns.as_str());
    assert_eq!(health["consumers"], 10);
    assert_eq!(health["rabbitmq"]["connected"], true);
    assert_eq!(health["rabbitmq"]["consumersConnected"], 10);
    assert_eq!(health["redis"]["connected"], true);
    assert_eq!(health["perRoom"].as_array().unwrap().len(), 2);
    for key in [
        "consumed",
        "broadcasts",
        "redelivered",
        "deadLettered",
        "redisErrors",
        "redisReconnects",
        "amqpReconnects",
    ] {
        assert_eq!(health["totals"][key], 0, "{key}");
    }

    let messages: Vec<TestMessage> = (0..3).map(|i| message(2, i + 1, "hello")).collect();
    broker.publish_messages(&messages);
    wait_until("acked", || consumer.health().totals.acked == 3);
    let (status, metrics) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("# TYPE chatflow_consumer_consumed_total counter\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("chatflow_consumer_consumed_total{room=\"1\"} 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("chatflow_consumer_consumed_total{room=\"2\"} 3\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("chatflow_consumer_broadcasts_total 3\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("chatflow_consumer_rabbitmq_connected 1\n"),
        "{metrics}"
    );

    let (status, _) = http_get(addr, "/nope");
    assert_eq!(status, 404);
    assert_eq!(consumer.health().per_room[1].consumed, 3);
    consumer.shutdown().expect("clean shutdown");
}

/// Start-up fails with an error naming the setting: a database that does
/// not exist, an unreachable broker.
#[test]
fn start_refuses_what_it_cannot_do() {
    let ns = namespace();
    let mut persistent = Config {
        enable_persistence: true,
        ..config(&ns, 1)
    };
    persistent.database.name = "chatflow_no_such_database".to_string();
    // The topology is declared before the database is checked: delete it
    // at the end.
    let _broker = Broker::new(&persistent);
    let err = format!("{:#}", Consumer::start(persistent).err().expect("refused"));
    assert!(
        err.contains("--db-name") && err.contains("chatflow_no_such_database"),
        "{err}"
    );

    let nowhere = Config {
        // Nothing listens on port 1.
        rabbitmq_port: 1,
        ..config(&ns, 1)
    };
    let err = format!("{:#}", Consumer::start(nowhere).err().expect("refused"));
    assert!(err.contains("RabbitMQ at 127.0.0.1:1"), "{err}");
}

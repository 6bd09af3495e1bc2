//! The consumer's CONSUMER SNAPSHOT in the fleet registry, against real
//! RabbitMQ, Redis and PostgreSQL: published once a second while it runs,
//! read back by a server's `FleetReader` with the right counts, and
//! withdrawn when the consumer stops. (The 10 s latency window itself is
//! unit-tested in `window.rs` with synthetic histograms.)

mod common;

use chatflow_consumer::{Config, Consumer};
use chatflow_server::fleet::{FleetReader, Latest};
use chatflow_testkit::database::TestDatabase;
use common::*;
use serde_json::Value;

/// How a server configured like `config` reads the fleet.
fn reader(config: &Config) -> FleetReader {
    let server = chatflow_server::Config {
        broker: chatflow_server::BrokerKind::Rabbitmq,
        services: config.services.clone(),
        ..chatflow_server::Config::default()
    };
    FleetReader::new(&server, Latest::default()).unwrap()
}

/// A persistent consumer's snapshot counts what it consumed and stored,
/// with rates and COPY latencies of the last seconds; it is gone from the
/// fleet as soon as the consumer stops.
#[test]
fn the_consumer_publishes_its_snapshot_and_withdraws_it_on_stop() {
    let ns = namespace();
    let db = TestDatabase::new(&ns);
    let config = Config {
        consumer_id: "fleet-c-1".to_string(),
        ..persistent(&ns, 1, &db.name)
    };
    let mut broker = Broker::new(&config);
    let fleet = reader(&config);
    let consumer = Consumer::start(config).expect("consumer starts");
    wait_until("health ok", || consumer.health().status == "ok");

    let messages: Vec<TestMessage> = (0..5).map(|i| message(1, i + 1, "hello")).collect();
    broker.publish_messages(&messages);
    wait_until("stored and acked", || consumer.health().totals.acked == 5);
    let mut part = Value::Null;
    wait_until("the snapshot shows the 5 rows", || {
        part = serde_json::to_value(fleet.read_consumers()).unwrap();
        part["consumers"][0]["database"]["rows"] == 5
    });
    assert_eq!(part["source"], "redis");
    let consumers = part["consumers"].as_array().unwrap();
    assert_eq!(consumers.len(), 1, "{part}");
    let snapshot = &consumers[0];
    assert_eq!(snapshot["consumerId"], "fleet-c-1");
    assert_eq!(snapshot["status"], "ok");
    assert_eq!(snapshot["reason"], Value::Null);
    assert_eq!(snapshot["queues"], 5);
    assert_eq!(snapshot["totals"]["consumed"], 5);
    assert!(
        snapshot["consumedPerSecond"].as_f64().unwrap() > 0.0,
        "{snapshot}"
    );
    assert!(
        snapshot["rowsPerSecond"].as_f64().unwrap() > 0.0,
        "{snapshot}"
    );
    assert!(snapshot["ageSeconds"].as_f64().unwrap() < 1.5, "{snapshot}");
    let db_part = &snapshot["database"];
    assert_eq!(db_part["writers"], 4);
    assert_eq!(db_part["writersConnected"], 4);
    let copies = db_part["copyCommitMs"]["count"].as_u64().unwrap();
    assert!(copies >= 1, "the batches of the last 10 s: {db_part}");
    assert!(db_part["copyCommitMs"]["max"].as_f64().unwrap() > 0.0);
    assert_eq!(db_part["batchRows"]["count"], copies);

    consumer.shutdown().unwrap();
    let part = serde_json::to_value(fleet.read_consumers()).unwrap();
    assert_eq!(part["consumers"], serde_json::json!([]), "{part}");
}

//! Outages of this consumer's own connections to RabbitMQ and Redis, made
//! with a TCP proxy in front of the shared services (the services keep
//! running for everyone else; stopping them is another test suite's job).

mod common;

use std::collections::HashMap;

use chatflow_consumer::Consumer;
use common::proxy::Proxy;
use common::*;

fn redis_addr() -> std::net::SocketAddr {
    "127.0.0.1:6379".parse().unwrap()
}

fn amqp_addr() -> std::net::SocketAddr {
    "127.0.0.1:5672".parse().unwrap()
}

fn batch(n: u32, text: &str) -> Vec<TestMessage> {
    (0..n).map(|i| message(1, i + 1, text)).collect()
}

/// Redis cut mid-run: batches are kept unacked and retried, health says
/// degraded, and when Redis is back everything is broadcast and acked.
#[test]
fn redis_outage_holds_acks_and_recovers() {
    let ns = namespace();
    let proxy = Proxy::start(redis_addr());
    let mut config = config(&ns, 1);
    config
        .services
        .redis
        .set_direct(chatflow_broker::HostPort::loopback(proxy.port()));
    let mut broker = Broker::new(&config);
    let subscriber = Subscriber::new(&broker.topology);
    let consumer = Consumer::start(config).expect("consumer starts");

    let before = batch(10, "before");
    broker.publish_messages(&before);
    subscriber.take(10);
    wait_until("first acks", || consumer.health().totals.acked == 10);

    proxy.cut();
    let during = batch(20, "during");
    broker.publish_messages(&during);
    wait_until("degraded on redis errors", || {
        let h = consumer.health();
        h.status == "degraded"
            && h.reason.as_deref().is_some_and(|r| r.contains("redis"))
            && h.totals.redis_errors > 0
    });
    assert_eq!(
        consumer.health().totals.acked,
        10,
        "nothing acked without its broadcast"
    );

    proxy.restore();
    let got = count_ids(&subscriber.take(20));
    for m in &during {
        assert!(
            got.contains_key(&m.message_id),
            "{} not broadcast",
            m.message_id
        );
    }
    wait_until("acked and healthy again", || {
        let h = consumer.health();
        h.totals.acked == 30 && h.status == "ok"
    });
    assert!(consumer.health().totals.redis_reconnects >= 1);
    consumer.shutdown().expect("clean shutdown");
    assert_eq!(broker.total_depth(), 0);
}

/// RabbitMQ connection cut while idle: consumers notice, health says
/// degraded, the link reconnects and re-declares, consuming resumes and
/// messages published meanwhile are delivered.
#[test]
fn amqp_outage_reconnects_and_resumes() {
    let ns = namespace();
    let proxy = Proxy::start(amqp_addr());
    let mut config = config(&ns, 1);
    config
        .services
        .amqp
        .set_single_node(chatflow_broker::HostPort::loopback(proxy.port()));
    let mut broker = Broker::new(&config);
    let subscriber = Subscriber::new(&broker.topology);
    let consumer = Consumer::start(config).expect("consumer starts");
    broker.publish_messages(&batch(5, "before"));
    subscriber.take(5);
    wait_until("first acks", || consumer.health().totals.acked == 5);

    proxy.cut();
    wait_until("degraded on rabbitmq", || {
        let h = consumer.health();
        h.status == "degraded" && h.reason.as_deref().is_some_and(|r| r.contains("rabbitmq"))
    });
    let during = batch(10, "during");
    broker.publish_messages(&during);
    proxy.restore();

    // An ack is fire-and-forget in AMQP: one sent just before the cut may
    // never reach the broker, so a "before" message may come back
    // (flagged redelivered). Messages published during the outage arrive
    // once each.
    let mut got = HashMap::new();
    while during.iter().any(|m| !got.contains_key(&m.message_id)) {
        for (_, payload) in subscriber.take(1) {
            *got.entry(message_id(&payload)).or_insert(0usize) += 1;
        }
    }
    assert!(during.iter().all(|m| got[&m.message_id] == 1), "{got:?}");
    wait_until("every delivery acked and healthy again", || {
        let h = consumer.health();
        h.status == "ok" && h.totals.acked == 15 + h.totals.redelivered
    });
    assert!(consumer.health().totals.amqp_reconnects >= 1);
    consumer.shutdown().expect("clean shutdown");
    assert_eq!(broker.total_depth(), 0);
}

/// Deliveries held unacked (Redis down) when the RabbitMQ connection dies
/// are redelivered by the broker on the new channel, flagged and counted,
/// and every message is broadcast at least once — none lost.
#[test]
fn unacked_deliveries_are_redelivered_after_a_connection_loss() {
    let ns = namespace();
    let redis = Proxy::start(redis_addr());
    let amqp = Proxy::start(amqp_addr());
    let mut config = config(&ns, 1);
    config
        .services
        .redis
        .set_direct(chatflow_broker::HostPort::loopback(redis.port()));
    config
        .services
        .amqp
        .set_single_node(chatflow_broker::HostPort::loopback(amqp.port()));
    let mut broker = Broker::new(&config);
    let subscriber = Subscriber::new(&broker.topology);
    let consumer = Consumer::start(config).expect("consumer starts");

    redis.cut();
    let held = batch(10, "held");
    broker.publish_messages(&held);
    wait_until("a batch held on redis errors", || {
        consumer.health().totals.redis_errors > 0
    });
    amqp.cut();
    // The broker requeues the held deliveries when it sees the connection
    // go; then both services come back.
    wait_until("held deliveries requeued", || broker.total_depth() == 10);
    amqp.restore();
    redis.restore();

    let mut seen = std::collections::HashSet::new();
    while seen.len() < held.len() {
        for (_, payload) in subscriber.take(1) {
            seen.insert(message_id(&payload));
        }
    }
    wait_until("redelivered and acked", || {
        let t = consumer.health().totals;
        t.redelivered >= 1 && t.acked == 10
    });
    assert!(consumer.health().totals.amqp_reconnects >= 1);
    consumer.shutdown().expect("clean shutdown");
    assert_eq!(broker.total_depth(), 0);
}

/// Shutdown during a Redis outage does not hang on the retry loop: it
/// returns Ok promptly, acks nothing it could not broadcast, and leaves
/// those messages queued for the next consumer.
#[test]
fn shutdown_during_a_redis_outage_is_prompt_and_loses_nothing() {
    let ns = namespace();
    let redis = Proxy::start(redis_addr());
    let mut config = config(&ns, 1);
    config
        .services
        .redis
        .set_direct(chatflow_broker::HostPort::loopback(redis.port()));
    let mut broker = Broker::new(&config);
    let consumer = Consumer::start(config).expect("consumer starts");
    redis.cut();
    broker.publish_messages(&batch(20, "stuck"));
    wait_until("a batch held on redis errors", || {
        consumer.health().totals.redis_errors > 0
    });
    let monitor = consumer.monitor();
    let started = std::time::Instant::now();
    consumer.shutdown().expect("clean shutdown");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "prompt (a hang detector, not a performance bound)"
    );
    assert_eq!(monitor.health().totals.acked, 0);
    wait_until("all 20 back in the queues", || broker.total_depth() == 20);
}

/// `/health` is readiness: with its Redis cut the consumer answers 503
/// (status degraded, the reason naming Redis) while `/livez` stays 200,
/// and 200 again once Redis is back.
#[test]
fn health_is_503_while_redis_is_cut_and_200_after() {
    let ns = namespace();
    let proxy = Proxy::start(redis_addr());
    let mut config = config(&ns, 1);
    config
        .services
        .redis
        .set_direct(chatflow_broker::HostPort::loopback(proxy.port()));
    let _broker = Broker::new(&config);
    let consumer = Consumer::start(config).expect("consumer starts");
    let addr = consumer.metrics_addr();
    wait_until("ready", || http_get(addr, "/health").0 == 200);

    proxy.cut();
    wait_until("not ready while Redis is cut", || {
        http_get(addr, "/health").0 == 503
    });
    let (_, body) = http_get(addr, "/health");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["reason"].as_str().unwrap().contains("redis"),
        "{health}"
    );
    let (status, body) = http_get(addr, "/livez");
    assert_eq!(status, 200, "alive all along: {body}");

    proxy.restore();
    wait_until("ready again", || http_get(addr, "/health").0 == 200);
    consumer.shutdown().expect("clean shutdown");
}

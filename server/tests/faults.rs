//! Outages of the server's own connections to RabbitMQ and Redis. The
//! server reaches each service through a `chatflow_testkit::Proxy`, and a
//! test cuts and restores the proxy: to the server that is the service
//! going away and coming back, while the shared services keep running for
//! every other test on the machine. So these tests run in parallel with
//! the rest, and a failing one cannot leave a service down.

mod common;

use std::time::{Duration, Instant};

use chatflow_protocol::Topology;
use chatflow_server::Server;
use chatflow_testkit::services::{amqp_addr, redis_addr, AMQP_URL, REDIS_URL};
use chatflow_testkit::Proxy;
use common::*;

/// A RabbitMQ-backed server whose AMQP and Redis connections both go
/// through proxies. Fields drop in order, so the topology is deleted last,
/// pass or fail.
struct Routed {
    server: Server,
    amqp: Proxy,
    redis: Proxy,
    topology: Topology,
    _guard: TopologyGuard,
}

impl Routed {
    fn start(tag: &str) -> Routed {
        Routed::start_with(tag, |_| {})
    }

    /// Like `start`, with the test's own settings on top.
    fn start_with(tag: &str, settings: impl FnOnce(&mut chatflow_server::Config)) -> Routed {
        let namespace = unique_namespace(tag);
        let amqp = Proxy::start(amqp_addr());
        let redis = Proxy::start(redis_addr());
        let mut config = rabbit_config(&namespace, 1);
        settings(&mut config);
        config
            .services
            .amqp
            .set_single_node(chatflow_broker::HostPort::loopback(amqp.port()));
        config
            .services
            .redis
            .set_direct(chatflow_broker::HostPort::loopback(redis.port()));
        let topology = config.services.topology.clone();
        let guard = TopologyGuard(topology.clone());
        let server = Server::start(config).expect("server starts through the proxies");
        // Otherwise a cut would prove nothing.
        assert!(amqp.relayed() >= 1, "the publishers go through the proxy");
        assert!(
            redis.relayed() >= 1,
            "the subscriber goes through the proxy"
        );
        Routed {
            server,
            amqp,
            redis,
            topology,
            _guard: guard,
        }
    }
}

/// Sends messages on one connection until `want` ("ack" or "error") comes
/// back; returns the reply.
fn until_reply(client: &mut Client, want: &str, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    let mut last = serde_json::Value::Null;
    while Instant::now() < deadline {
        last = request(client, message(1, "probe", "p"));
        if last["type"] == want {
            return last;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no {want} within {within:?}; last reply {last}");
}

/// Publishes a broadcast frame on the room's channel straight to Redis
/// (as a consumer would); returns how many subscribers got it, -1 if Redis
/// did not answer.
fn publish(channel: &str, text: &str) -> i64 {
    let frame = format!(
        r#"{{"type":"message","messageId":"0190a5c0-0000-7000-8000-000000000001","roomId":1,"userId":1,"username":"user1","message":"{text}","messageType":"TEXT","timestamp":"2026-11-27T02:00:00Z","serverTimestamp":"2026-11-27T02:00:00.001Z"}}"#
    );
    redis::Client::open(REDIS_URL)
        .and_then(|c| c.get_connection())
        .and_then(|mut c| redis::cmd("PUBLISH").arg(channel).arg(frame).query(&mut c))
        .unwrap_or(-1)
}

/// With its RabbitMQ connections cut, the server answers messages with
/// UNAVAILABLE (never a false ack) and /health is 503 (degraded, naming
/// the publisher) while /livez stays 200; once they are restored, the same
/// WebSocket gets acks again without a restart and /health is 200.
#[test]
fn rabbitmq_outage_gives_unavailable_then_recovers() {
    let routed = Routed::start("rabbit-down");
    let addr = routed.server.local_addr();
    let mut client = connect(addr, 1);
    assert_eq!(
        request(&mut client, message(1, "before", "b"))["type"],
        "ack"
    );

    routed.amqp.cut();
    let refused = until_reply(&mut client, "error", Duration::from_secs(30));
    assert_eq!(refused["code"], "UNAVAILABLE");
    let (status, h) = health_with_status(addr);
    assert_eq!((status, &h["status"]), (503, &"degraded".into()), "{h}");
    assert!(
        h["broker"]["detail"].as_str().unwrap().contains("rabbitmq"),
        "{h}"
    );
    assert!(
        h["reasons"][0]
            .as_str()
            .unwrap()
            .contains("rabbitmq publisher-0"),
        "{h}"
    );
    assert_eq!(http_get(addr, "/livez", "").0, 200);
    // The outage is this server's alone: the shared broker still serves.
    amiquip::Connection::insecure_open(AMQP_URL)
        .expect("RabbitMQ itself stays up")
        .close()
        .unwrap();

    routed.amqp.restore();
    let ack = until_reply(&mut client, "ack", Duration::from_secs(60));
    assert_eq!(ack["status"], "OK");
    eventually("health is ok again", || health(addr)["status"] == "ok");
    assert_eq!(health_with_status(addr).0, 200);
    routed.server.shutdown().unwrap();
}

/// With its Redis connection cut, the server says degraded; once it is
/// restored, the server resubscribes by itself (once) and broadcasts
/// published afterwards reach room members again.
#[test]
fn redis_outage_is_survived_by_resubscribing() {
    let routed = Routed::start("redis-down");
    let addr = routed.server.local_addr();
    let mut member = connect(addr, 1);
    let channel = routed.topology.redis_channel(1);
    assert_eq!(publish(&channel, "before"), 1);
    assert_eq!(recv_kind(&mut member, "message")["message"], "before");

    routed.redis.cut();
    eventually("the server notices Redis is gone", || {
        health(addr)["status"] == "degraded"
    });
    eventually("Redis dropped the cut subscription", || {
        publish(&channel, "during") == 0
    });

    routed.redis.restore();
    // Within its back-off, the subscriber comes back by itself.
    eventually("the server resubscribed", || {
        publish(&channel, "after") == 1
    });
    assert_eq!(recv_kind(&mut member, "message")["message"], "after");
    let h = health(addr);
    assert_eq!(h["status"], "ok", "{h}");
    assert!(
        h["broker"]["detail"]
            .as_str()
            .unwrap()
            .contains("1 reconnects"),
        "{h}"
    );
    routed.server.shutdown().unwrap();
}

/// When RabbitMQ takes a message and then goes quiet (its confirms held
/// back, the connection open), the client hears `UNAVAILABLE` ("it may have
/// been stored") once `confirm_timeout` has passed, not silence; when the
/// held confirm finally arrives it answers nobody a second time, and the
/// client's retry under the same clientMessageId is acked.
#[test]
fn a_confirm_that_does_not_come_is_answered_after_the_confirm_timeout() {
    let timeout = Duration::from_secs(1);
    let routed = Routed::start_with("confirm-held", |c| c.confirm_timeout = timeout);
    let mut client = connect(routed.server.local_addr(), 1);
    assert_eq!(
        request(&mut client, message(1, "before", "b"))["type"],
        "ack"
    );

    routed.amqp.hold_replies();
    let sent = Instant::now();
    let reply = request(&mut client, message(1, "held", "h1"));
    let waited = sent.elapsed();
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "UNAVAILABLE");
    assert_eq!(reply["clientMessageId"], "h1");
    let text = reply["message"].as_str().unwrap();
    assert!(text.contains("did not confirm it in time"), "{text}");
    assert!(text.contains("may have been stored"), "{text}");
    assert!(
        waited >= timeout,
        "answered after {waited:?}, before the timeout"
    );

    routed.amqp.release_replies();
    // Time for the held confirm to arrive: were it answered again, that
    // answer would be the next frame here, before the reply to "a1".
    std::thread::sleep(Duration::from_millis(500));
    let after = request(&mut client, message(1, "after", "a1"));
    assert_eq!(
        (&after["type"], &after["clientMessageId"]),
        (&"ack".into(), &"a1".into()),
        "{after}"
    );
    let retry = request(&mut client, message(1, "held", "h1"));
    assert_eq!(retry["type"], "ack", "{retry}");
    assert_eq!(retry["clientMessageId"], "h1");
    routed.server.shutdown().unwrap();
}

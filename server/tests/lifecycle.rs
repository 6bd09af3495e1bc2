//! A server's life as a load balancer and its clients see it: `/health`
//! is readiness (503 once the Redis subscription has been down past its
//! grace), and `/livez` 200 all along.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use chatflow_server::Server;
use common::*;

/// `GET /livez`: it must answer 200 with its tiny body.
fn assert_live(addr: SocketAddr) {
    let (status, body) = http_get(addr, "/livez", "");
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("livez is JSON");
    assert_eq!(body["status"], "alive");
}

/// The Redis subscription cut (through a proxy, so only this server's
/// link) past its grace makes /health 503 ("broadcasts missed") while
/// /livez stays 200; once the subscriber is back it is 200 and ok again.
#[test]
fn health_is_503_once_the_subscription_is_down_past_its_grace() {
    use chatflow_testkit::services::{amqp_addr, redis_addr};
    use chatflow_testkit::Proxy;

    let namespace = unique_namespace("sub-grace");
    let redis = Proxy::start(redis_addr());
    let amqp = Proxy::start(amqp_addr());
    let mut config = rabbit_config(&namespace, 1);
    config.services.redis.port = redis.port();
    config.services.amqp.port = amqp.port();
    config.subscription_grace = Duration::from_secs(1);
    let _guard = TopologyGuard(config.services.topology.clone());
    let server = Server::start(config).expect("server starts");
    let addr = server.local_addr();
    assert_eq!(health_with_status(addr).0, 200);

    redis.cut();
    // Every answer on the way agrees with its own `ready` (the helper checks).
    eventually("not ready past the grace", || {
        health_with_status(addr).0 == 503
    });
    let h = health(addr);
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(
        h["reasons"][0]
            .as_str()
            .unwrap()
            .contains("broadcasts missed"),
        "{h}"
    );
    assert_live(addr);

    redis.restore();
    eventually("ready and ok again", || {
        let (status, h) = health_with_status(addr);
        status == 200 && h["status"] == "ok"
    });
    server.shutdown().unwrap();
}

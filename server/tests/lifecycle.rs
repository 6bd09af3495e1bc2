//! A server's life as a load balancer and its clients see it: `/health`
//! is readiness (503 once the Redis subscription has been down past its
//! grace), `/livez` 200 all along, and a peer that stops answering pings
//! is closed.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use chatflow_server::config::Liveness;
use chatflow_server::{BrokerKind, Config, Server};
use common::*;

/// `GET /livez`: it must answer 200 with its tiny body.
fn assert_live(addr: SocketAddr) {
    let (status, body) = http_get(addr, "/livez", "");
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("livez is JSON");
    assert_eq!(body["status"], "alive");
}

/// A peer that did the handshake and then never reads nor answers is
/// pinged after `ping_interval`, closed with 1001 `pong_timeout` later
/// and counted; a client that reads (so answers pings) stays connected.
#[test]
fn a_client_that_stops_answering_pings_is_closed_with_1001() {
    let ping = Duration::from_secs(1);
    let pong = Duration::from_secs(1);
    let server = Server::start(Config {
        liveness: Liveness {
            ping_interval: Some(ping),
            pong_timeout: pong,
            ..Liveness::default()
        },
        ..config(BrokerKind::Memory)
    })
    .unwrap();
    let addr = server.local_addr();
    let opened = Instant::now();
    let mut silent = TcpStream::connect(addr).unwrap();
    write!(
        silent,
        "GET /chat/1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut alive = connect(addr, 1);
    eventually("both are open", || health(addr)["connections"] == 2);

    // `alive` reads all along: tungstenite answers each ping as it reads.
    chatflow_testkit::ws::set_read_timeout(&mut alive, Duration::from_millis(100));
    eventually("the silent peer is closed", || {
        let _ = chatflow_testkit::ws::next_json(&mut alive);
        health(addr)["totals"]["pingTimeouts"] == 1
    });
    let elapsed = opened.elapsed();
    assert!(
        elapsed >= ping + pong,
        "not before ping + pong: {elapsed:?}"
    );
    assert_eq!(health(addr)["connections"], 1);
    chatflow_testkit::ws::set_read_timeout(&mut alive, TIMEOUT);
    assert_eq!(
        request(&mut alive, message(1, "still here", "s"))["type"],
        "ack"
    );

    // What the silent peer was sent: the 101, a ping, then a 1001 close.
    silent.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut bytes = Vec::new();
    let _ = silent.read_to_end(&mut bytes);
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(bytes.starts_with(b"HTTP/1.1 101 "));
    let frames = &bytes[head_end..];
    assert_eq!(&frames[..2], &[0x89, 0x00], "an empty ping");
    assert_eq!(frames[2], 0x88, "then a close");
    assert_eq!(u16::from_be_bytes([frames[4], frames[5]]), 1001);
    server.shutdown().unwrap();
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

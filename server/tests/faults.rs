//! Outages of the real shared services: RabbitMQ stopped and started, Redis
//! restarted. These stop services every other test uses, so the tests in
//! this binary run one at a time (cargo runs test binaries one after
//! another) and put the services back even when they fail.

mod common;

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chatflow_server::Server;
use common::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed: {status}");
}

/// Starts the broker app again when dropped, so a failing test cannot leave
/// RabbitMQ down for the rest of the suite.
struct RabbitBack;
impl Drop for RabbitBack {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "start_app"])
            .status();
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "await_startup"])
            .status();
    }
}

/// Restarts Redis when dropped.
struct RedisBack;
impl Drop for RedisBack {
    fn drop(&mut self) {
        let _ = Command::new("../scripts/ensure-services.sh")
            .arg("redis")
            .status();
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

/// With RabbitMQ stopped, messages get UNAVAILABLE (never a false ack) and
/// /health says degraded; once it is back, the same connection gets acks.
#[test]
fn stopped_broker_gives_unavailable_then_recovers() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let namespace = unique_namespace("rabbit-down");
    let server = Server::start(rabbit_config(&namespace, 1)).unwrap();
    let _guard = TopologyGuard(rabbit_config(&namespace, 1).services.topology);
    let addr = server.local_addr();
    let mut client = connect(addr, 1);
    assert_eq!(
        request(&mut client, message(1, "before", "b"))["type"],
        "ack"
    );

    let back = RabbitBack;
    run("rabbitmqctl", &["-q", "stop_app"]);
    let refused = until_reply(&mut client, "error", Duration::from_secs(30));
    assert_eq!(refused["code"], "UNAVAILABLE");
    let h = health(addr);
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(
        h["broker"]["detail"].as_str().unwrap().contains("rabbitmq"),
        "{h}"
    );

    drop(back); // start_app and wait for the broker
    let ack = until_reply(&mut client, "ack", Duration::from_secs(60));
    assert_eq!(ack["status"], "OK");
    eventually("health is ok again", || health(addr)["status"] == "ok");
    server.shutdown().unwrap();
}

/// After Redis restarts, the server resubscribes by itself: broadcasts
/// published afterwards reach room members again.
#[test]
fn redis_restart_is_survived_by_resubscribing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let namespace = unique_namespace("redis-restart");
    let server = Server::start(rabbit_config(&namespace, 1)).unwrap();
    let topology = rabbit_config(&namespace, 1).services.topology;
    let _guard = TopologyGuard(topology.clone());
    let addr = server.local_addr();
    let mut member = connect(addr, 1);
    let channel = topology.redis_channel(1);
    let frame = |text: &str| {
        format!(
            r#"{{"type":"message","messageId":"0190a5c0-0000-7000-8000-000000000001","roomId":1,"userId":1,"username":"user1","message":"{text}","messageType":"TEXT","timestamp":"2026-11-27T02:00:00Z","serverTimestamp":"2026-11-27T02:00:00.001Z"}}"#
        )
    };
    let publish = |text: &str| -> i64 {
        redis::Client::open("redis://127.0.0.1:6379/")
            .and_then(|c| c.get_connection())
            .and_then(|mut c| {
                redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(frame(text))
                    .query(&mut c)
            })
            .unwrap_or(-1)
    };
    assert_eq!(publish("before"), 1);
    assert_eq!(recv_kind(&mut member, "message")["message"], "before");

    {
        let _back = RedisBack;
        let _ = Command::new("redis-cli")
            .args(["shutdown", "nosave"])
            .status();
        eventually("the server notices Redis is gone", || {
            health(addr)["status"] == "degraded"
        });
    }
    // Redis is back (RedisBack restarted it); the subscriber comes back by
    // itself within its backoff.
    eventually("the server resubscribed", || publish("after") == 1);
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
    server.shutdown().unwrap();
}

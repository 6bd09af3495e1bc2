//! The consumer's health and metrics port — its answers, and that slow,
//! idle or too many clients hold nobody else up (issue 8) — and start-up
//! refusals.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use chatflow_consumer::{Config, Consumer};
use common::*;

/// A hang detector, not a performance bound: the port's deadline for a
/// request head is 2 s, and the attacks below would hold it far longer.
const PROMPT: Duration = Duration::from_secs(5);

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
    // Read by a real OpenMetrics parser, which refuses a malformed page.
    let page = chatflow_testkit::prometheus::parse(&metrics);
    assert_eq!(page.types["chatflow_consumer_consumed"], "counter");
    let consumed = |room| page.value("chatflow_consumer_consumed_total", &[("room", room)]);
    assert_eq!((consumed("1"), consumed("2")), (0.0, 3.0));
    assert_eq!(page.sum("chatflow_consumer_broadcasts_total"), 3.0);
    assert_eq!(page.sum("chatflow_consumer_rabbitmq_connected"), 1.0);
    // Each broadcast message's lag, and the batches it came in.
    assert_eq!(page.types["chatflow_consumer_lag_seconds"], "histogram");
    assert_eq!(page.sum("chatflow_consumer_lag_seconds_count"), 3.0);
    assert!(page.sum("chatflow_consumer_batch_deliveries_count") >= 1.0);
    assert!(page.sum("chatflow_consumer_redis_publish_seconds_count") >= 1.0);
    assert!(page.sum("process_open_fds") > 0.0);
    assert_eq!(page.named("chatflow_build_info").count(), 1);

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
    persistent.database.settings.name = "chatflow_no_such_database".to_string();
    // The topology is declared before the database is checked: delete it
    // at the end.
    let _broker = Broker::new(&persistent);
    let err = format!("{:#}", Consumer::start(persistent).err().expect("refused"));
    assert!(
        err.contains("--db-name") && err.contains("chatflow_no_such_database"),
        "{err}"
    );

    let mut nowhere = config(&ns, 1);
    // Nothing listens on port 1.
    nowhere
        .services
        .amqp
        .set_single_node(chatflow_broker::HostPort::loopback(1));
    let err = format!("{:#}", Consumer::start(nowhere).err().expect("refused"));
    assert!(err.contains("RabbitMQ at 127.0.0.1:1"), "{err}");
}

/// A slowloris: sends a request head one byte every 300 ms (80 bytes: 24 s
/// if nobody stops it), reading between bytes. Returns what the server
/// answered (empty if it just closed) and when that happened.
fn slowloris(addr: SocketAddr) -> (String, Duration) {
    let head = format!(
        "GET /health HTTP/1.1\r\nHost: slow\r\nX-Slow: {}\r\n\r\n",
        "a".repeat(40)
    );
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    for byte in head.bytes() {
        if stream.write_all(&[byte]).is_err() {
            break; // closed on us
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                response.extend_from_slice(&buf[..n]);
                stream.set_read_timeout(Some(TIMEOUT)).unwrap();
                let _ = stream.read_to_end(&mut response);
                break;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    (
        String::from_utf8_lossy(&response).into_owned(),
        started.elapsed(),
    )
}

/// A slowloris holds up nobody: /health answers 200 to another client at
/// once while it dribbles, and the slowloris itself gets 408 at its 2 s
/// deadline instead of holding a thread for as long as it likes.
#[test]
fn a_slow_client_holds_up_nobody_and_gets_408_at_its_deadline() {
    let ns = namespace();
    let config = config(&ns, 1);
    let _broker = Broker::new(&config);
    let consumer = Consumer::start(config).expect("consumer starts");
    let addr = consumer.metrics_addr();
    wait_until("health ok", || consumer.health().status == "ok");
    let slow = thread::spawn(move || slowloris(addr));
    // Let it connect and send a few bytes first.
    thread::sleep(Duration::from_millis(700));
    let started = Instant::now();
    let (status, body) = http_get(addr, "/health");
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < PROMPT,
        "/health waited {:?} behind the slowloris",
        started.elapsed()
    );
    let (answer, elapsed) = slow.join().unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer:?}"
    );
    assert!(answer.contains("Connection: close\r\n"), "{answer}");
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < PROMPT,
        "cut off at its deadline, not before and not when done sending: {elapsed:?}"
    );
    consumer.shutdown().expect("clean shutdown");
}

/// 100 idle connections — more than the 64 served at once — do not stop
/// /health from answering: the ones past the cap get 503 at once, the
/// rest 408 at their deadline, and a monitor asking meanwhile gets an
/// answer at once and 200 within the deadline.
#[test]
fn idle_connections_do_not_stop_health_from_answering() {
    let ns = namespace();
    let config = config(&ns, 1);
    let _broker = Broker::new(&config);
    let consumer = Consumer::start(config).expect("consumer starts");
    let addr = consumer.metrics_addr();
    wait_until("health ok", || consumer.health().status == "ok");
    let idle: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(addr).expect("connects"))
        .collect();
    let started = Instant::now();
    let mut answers = Vec::new();
    loop {
        let asked = Instant::now();
        let (status, body) = http_get(addr, "/health");
        assert!(asked.elapsed() < PROMPT, "an answer, at once");
        answers.push(status);
        match status {
            200 => break,
            503 => assert!(body.contains("too many connections"), "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
        assert!(
            started.elapsed() < PROMPT,
            "no 200 while idle connections are held: {answers:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    // Every idle connection was answered and closed: 503 past the cap,
    // 408 at the deadline for those that were served.
    let (mut timed_out, mut busy) = (0, 0);
    for mut stream in idle {
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        if answer.starts_with("HTTP/1.1 408 ") {
            timed_out += 1;
        } else if answer.starts_with("HTTP/1.1 503 ") {
            busy += 1;
        } else {
            panic!("unexpected answer to an idle connection: {answer:?}");
        }
    }
    assert_eq!(timed_out + busy, 100);
    assert!(timed_out <= 64, "at most 64 served at once: {timed_out}");
    let (status, _) = http_get(addr, "/health");
    assert_eq!(status, 200);
    consumer.shutdown().expect("clean shutdown");
}

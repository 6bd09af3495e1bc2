//! Failures of the real moving parts, end to end: the consumer killed with
//! SIGKILL and restarted, PostgreSQL stopped and started, Redis restarted.
//! These stop shared services, so the tests of this binary run one at a
//! time (cargo runs test binaries one after another) and put every service
//! back even when they fail.

mod common;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use chatflow_consumer::{Config, Consumer};
use chatflow_testkit::database::TestDatabase;
use chatflow_testkit::Reaper;
use common::chat::*;
use common::{config, namespace, wait_until, Broker};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The consumer binary, configured like `persistent` below.
fn spawn_consumer(ns: &str, db: &TestDatabase) -> Reaper {
    let child = Command::new(env!("CARGO_BIN_EXE_chatflow-consumer"))
        .env("NAMESPACE", ns)
        .env("ROOMS", "1")
        .env("AMQP_CONNECTIONS", "1")
        .env("METRICS_BIND", "127.0.0.1:0")
        .env("DB_USER", "postgres")
        .env("DB_NAME", &db.name)
        .env("FLUSH_INTERVAL_MS", "50")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("consumer binary starts");
    // Reaped on drop: a failing test once left this consumer running.
    Reaper(child)
}

fn persistent(ns: &str, db: &TestDatabase) -> Config {
    let mut c = Config {
        enable_persistence: true,
        ..config(ns, 1)
    };
    c.database.settings.name = db.name.clone();
    c.database.flush_interval = Duration::from_millis(50);
    c
}

/// Collects the ids of every broadcast a room member receives.
struct Listener {
    seen: Arc<Mutex<HashSet<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Listener {
    fn new(mut client: Client) -> Listener {
        set_timeout(&mut client, Duration::from_millis(200));
        let seen = Arc::new(Mutex::new(HashSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(frame) = next_frame(&mut client) {
                        if frame["type"] == "message" {
                            seen.lock()
                                .unwrap()
                                .insert(frame["messageId"].as_str().unwrap().to_string());
                        }
                    }
                }
            })
        };
        Listener {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn has_all(&self, ids: &HashSet<String>) -> bool {
        ids.is_subset(&self.seen.lock().unwrap())
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends `count` messages keeping `window` in flight; returns the ids of the
/// acked ones and how many got an error. `between` runs after each reply.
/// Sends `count` messages named `{batch}-{n}` (names are unique per
/// `batch`: the same name again would be a retry of the same message),
/// `window` in flight, calling `between` after each ack.
fn send_all(
    client: &mut Client,
    batch: &str,
    count: usize,
    window: usize,
    mut between: impl FnMut(usize),
) -> (HashSet<String>, usize) {
    let (mut acked, mut errors, mut sent, mut answered) = (HashSet::new(), 0, 0, 0);
    while answered < count {
        while sent < count && sent - answered < window {
            send(
                client,
                chat_message(sent as u32 % 1000 + 1, "fault", &format!("{batch}-{sent}")),
            );
            sent += 1;
        }
        let frame = next_frame(client).expect("a reply before the timeout");
        match frame["type"].as_str().unwrap() {
            "ack" => {
                acked.insert(frame["messageId"].as_str().unwrap().to_string());
                answered += 1;
                between(acked.len());
            }
            "error" => {
                errors += 1;
                answered += 1;
            }
            _ => {}
        }
    }
    (acked, errors)
}

/// The consumer is SIGKILLed mid-run and started again: every acked message
/// is delivered at least once and stored exactly once — nothing missing, no
/// duplicate rows.
#[test]
fn consumer_killed_mid_run_loses_nothing() {
    let _serial = serial();
    let ns = namespace();
    let db = TestDatabase::new(&ns).with_schema();
    let _broker = Broker::new(&persistent(&ns, &db));
    let server = server(&ns, 1, "server-k");
    let listener = Listener::new(connect(&server, 1));
    let mut consumer = Some(spawn_consumer(&ns, &db));
    let mut client = connect(&server, 1);
    let (acked, errors) = send_all(&mut client, "run", 3000, 32, |n| {
        if n == 1000 {
            consumer.take().unwrap().kill();
        }
        if n == 1800 {
            consumer = Some(spawn_consumer(&ns, &db));
        }
    });
    assert_eq!(errors, 0, "the broker stayed up: every message is accepted");
    assert_eq!(acked.len(), 3000);
    wait_until("every acked message is stored", || db.rows() == 3000);
    let stored: HashSet<String> = db.ids().into_iter().collect();
    assert_eq!(stored, acked, "stored exactly the acked messages");
    assert_eq!(
        db.count("SELECT count(DISTINCT message_id) FROM messages"),
        3000,
        "no duplicates"
    );
    wait_until("every acked message was delivered", || {
        listener.has_all(&acked)
    });
    consumer.take().unwrap().kill();
    server.shutdown().unwrap();
}

/// Starts a service (`postgres`, `redis`) again when dropped, even when
/// the test fails.
struct ServiceBack(&'static str);
impl Drop for ServiceBack {
    fn drop(&mut self) {
        let _ = Command::new("../scripts/ensure-services.sh")
            .arg(self.0)
            .status();
    }
}

fn postgres_cluster(action: &str) {
    let version = std::fs::read_dir("/etc/postgresql")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .max()
        .unwrap();
    let status = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", action])
        .status()
        .unwrap();
    assert!(status.success(), "pg_ctlcluster {action}");
}

/// PostgreSQL stops for a few seconds mid-run: broadcasts go on, acks to
/// RabbitMQ wait, /health says degraded, and once it is back every acked
/// message is stored exactly once.
#[test]
fn database_outage_loses_nothing() {
    let _serial = serial();
    let ns = namespace();
    let db = TestDatabase::new(&ns).with_schema();
    let _broker = Broker::new(&persistent(&ns, &db));
    let consumer = Consumer::start(persistent(&ns, &db)).unwrap();
    let server = server(&ns, 1, "server-p");
    let listener = Listener::new(connect(&server, 1));
    let mut client = connect(&server, 1);
    let back = ServiceBack("postgres");
    let mut degraded_seen = false;
    let mut outage_started = None;
    let (acked, errors) = send_all(&mut client, "run", 3000, 16, |n| {
        if n == 800 {
            postgres_cluster("stop");
            outage_started = Some(Instant::now());
        }
        if let Some(started) = outage_started {
            if !degraded_seen && consumer.health().status == "degraded" {
                degraded_seen = true;
            }
            if started.elapsed() > Duration::from_secs(3) {
                postgres_cluster("start");
                outage_started = None;
            }
        }
    });
    if outage_started.is_some() {
        postgres_cluster("start");
    }
    drop(back);
    assert_eq!(errors, 0);
    assert!(degraded_seen, "health reported the outage");
    wait_until("every acked message is stored", || db.rows() == 3000);
    let stored: HashSet<String> = db.ids().into_iter().collect();
    assert_eq!(stored, acked);
    wait_until("broadcasts never stopped", || listener.has_all(&acked));
    let health = consumer.health();
    assert!(health.database.unwrap().retries > 0);
    server.shutdown().unwrap();
    consumer.shutdown().unwrap();
}

/// Redis restarts mid-run: consumer and server both reconnect by
/// themselves and broadcasts resume, without restarting anything; named
/// messages sent meanwhile are refused as never sent and go through when
/// retried.
#[test]
fn redis_restart_mid_run_broadcasts_resume() {
    let _serial = serial();
    let ns = namespace();
    let db = TestDatabase::new(&ns).with_schema();
    let _broker = Broker::new(&persistent(&ns, &db));
    let consumer = Consumer::start(persistent(&ns, &db)).unwrap();
    let server = server(&ns, 1, "server-r");
    let listener = Listener::new(connect(&server, 1));
    let mut client = connect(&server, 1);
    let (before, _) = send_all(&mut client, "before", 200, 8, |_| {});
    wait_until("broadcasts flow", || listener.has_all(&before));
    {
        let _back = ServiceBack("redis");
        let _ = Command::new("redis-cli")
            .args(["shutdown", "nosave"])
            .status();
        // Named messages sent while Redis is down are refused as never
        // sent (the sent log that makes retries idempotent is in Redis):
        // accepting them could store a later retry twice.
        let (during, errors) = send_all(&mut client, "during", 100, 8, |_| {});
        assert_eq!((during.len(), errors), (0, 100));
    }
    wait_until("the server is subscribed again", || {
        server.health().status == "ok"
    });
    // Their retries go through once the server reaches the sent log again
    // (as a client finds out by retrying: probed with one named message).
    wait_until("named messages are accepted again", || {
        send_all(&mut client, "probe", 1, 1, |_| {}).1 == 0
    });
    let (retried, errors) = send_all(&mut client, "during", 100, 8, |_| {});
    assert_eq!((retried.len(), errors), (100, 0));
    let (after, _) = send_all(&mut client, "after", 200, 8, |_| {});
    wait_until("broadcasts sent after the restart arrive", || {
        listener.has_all(&after) && listener.has_all(&retried)
    });
    // 200 before, the probe, the 100 retried, 200 after: each once.
    wait_until("everything is stored", || db.rows() == 501);
    server.shutdown().unwrap();
    consumer.shutdown().unwrap();
}

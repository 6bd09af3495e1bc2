//! Test harness: the real RabbitMQ (127.0.0.1:5672, guest/guest) and Redis
//! (127.0.0.1:6379). Every test gets its own namespace, so its exchange,
//! queues, dead-letter queue and Redis channels are its own, and deletes its
//! topology at the end ([`Broker`]'s drop). Timeouts everywhere: a broken
//! consumer fails a test instead of hanging it. What the server's tests
//! share with these lives in `chatflow-testkit`; this file wraps it under
//! the names the tests here use.

#![allow(dead_code)] // each test binary uses part of the harness

pub mod chat;
pub mod process;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use amiquip::{AmqpProperties, Confirm, ConfirmSmoother, Connection, Publish};
use chatflow_broker::Declare;
use chatflow_consumer::Config;
use chatflow_protocol::{
    routing_key, ClientMessage, Envelope, IdGenerator, Rooms, ServerTime, Topology,
};
use chatflow_testkit::TopologyGuard;
use crossbeam_channel::{Receiver, RecvTimeoutError};

#[allow(unused_imports)] // like dead_code above: each binary uses a part
pub use chatflow_testkit::proxy;
pub use chatflow_testkit::services::{AMQP_URL, REDIS_URL};

/// Longest any single wait in a test may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// A namespace no other test (or run) uses.
pub fn namespace() -> String {
    chatflow_testkit::unique_namespace("consumer")
}

/// A consumer configuration for tests: its own namespace, few rooms, one
/// AMQP connection, port 0 for metrics, quick retries.
pub fn config(namespace: &str, rooms: u32) -> Config {
    let mut services = chatflow_broker::BrokerSettings::default()
        .with_topology(namespace, Rooms::new(rooms).unwrap());
    services.amqp.connect_timeout = Duration::from_secs(2);
    services.redis.timeout = Duration::from_secs(1);
    Config {
        services,
        amqp_connections: 1,
        metrics_bind: "127.0.0.1:0".parse().unwrap(),
        retry_min: Duration::from_millis(20),
        retry_max: Duration::from_millis(500),
        // Broadcast-then-ack tests; persistence tests turn it on with a
        // database of their own.
        enable_persistence: false,
        ..Config::default()
    }
}

/// [`config`] storing in `database` (the schema applied at start, short
/// flushes so tests see their rows soon).
pub fn persistent(namespace: &str, rooms: u32, database: &str) -> Config {
    let mut config = Config {
        enable_persistence: true,
        ..config(namespace, rooms)
    };
    config.database.settings.name = database.to_string();
    config.database.apply_schema = true;
    config.database.flush_interval = Duration::from_millis(50);
    config
}

/// Polls `condition` until it holds; panics after [`TIMEOUT`].
pub fn wait_until(what: &str, condition: impl FnMut() -> bool) {
    chatflow_testkit::wait_until(what, TIMEOUT, condition);
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A message as a server would publish it.
pub struct TestMessage {
    pub room: u32,
    pub shard: u32,
    pub body: Vec<u8>,
    /// The `message` frame the consumer must broadcast, byte for byte.
    pub frame: String,
    pub message_id: String,
}

/// The envelope of a valid message from `user` in `room`.
pub fn message(room: u32, user: u32, text: &str) -> TestMessage {
    static IDS: OnceLock<Mutex<IdGenerator>> = OnceLock::new();
    let json = serde_json::json!({
        "userId": user.to_string(),
        "username": format!("user{user}"),
        "message": text,
        "timestamp": "2026-11-27T02:00:00.123Z",
        "messageType": "TEXT",
    })
    .to_string();
    let parsed = ClientMessage::parse(&json).expect("valid test message");
    let now = now_ms();
    let id = IDS
        .get_or_init(|| Mutex::new(IdGenerator::new()))
        .lock()
        .unwrap()
        .next_id(now);
    let envelope = Envelope::accepted(&parsed, room, id, ServerTime(now), "test-server");
    TestMessage {
        room,
        shard: envelope.shard(),
        body: envelope.encode(),
        frame: envelope.broadcast_json(),
        message_id: id.to_string(),
    }
}

/// The test's own AMQP access: publishing as a server would, reading queue
/// depths, and deleting the topology when dropped.
pub struct Broker {
    pub topology: Topology,
    connection: Option<Connection>,
    /// Deletes the topology once the connection is closed (`None` for
    /// extra publishers). Fields drop after [`Broker`]'s own `drop`.
    _cleanup: Option<TopologyGuard>,
}

impl Broker {
    /// Connects and declares the topology (as the server does at start-up).
    pub fn new(config: &Config) -> Broker {
        Broker::open(config, true)
    }

    /// A second handle for another thread; it does not delete anything.
    pub fn publisher(config: &Config) -> Broker {
        Broker::open(config, false)
    }

    fn open(config: &Config, owner: bool) -> Broker {
        let topology = config.topology();
        let mut connection =
            Connection::insecure_open(AMQP_URL).expect("RabbitMQ on 127.0.0.1:5672");
        let channel = connection.open_channel(None).unwrap();
        topology.declare(&channel).expect("declare topology");
        channel.close().unwrap();
        Broker {
            _cleanup: owner.then(|| TopologyGuard(topology.clone())),
            topology,
            connection: Some(connection),
        }
    }

    fn connection(&mut self) -> &mut Connection {
        self.connection.as_mut().unwrap()
    }

    /// Publishes persistent messages with routing key `room.{r}.{s}`, and
    /// waits until the broker confirmed every one.
    pub fn publish(&mut self, messages: &[&[u8]], keys: &[String]) {
        let exchange = self.topology.exchange();
        let channel = self.connection().open_channel(None).unwrap();
        let confirms = channel.listen_for_publisher_confirms().unwrap();
        channel.enable_publisher_confirms().unwrap();
        for (body, key) in messages.iter().zip(keys) {
            let properties = AmqpProperties::default().with_delivery_mode(2);
            channel
                .basic_publish(
                    exchange.clone(),
                    Publish::with_properties(body, key.clone(), properties),
                )
                .unwrap();
        }
        let mut smoother = ConfirmSmoother::new();
        let mut acked = 0;
        let deadline = Instant::now() + TIMEOUT;
        while acked < messages.len() {
            let confirm = confirms
                .recv_deadline(deadline)
                .expect("publisher confirms within the timeout");
            for c in smoother.process(confirm) {
                match c {
                    Confirm::Ack(_) => acked += 1,
                    Confirm::Nack(p) => panic!("broker nacked publish {}", p.delivery_tag),
                }
            }
        }
        channel.close().unwrap();
    }

    pub fn publish_messages(&mut self, messages: &[TestMessage]) {
        let bodies: Vec<&[u8]> = messages.iter().map(|m| m.body.as_slice()).collect();
        let keys: Vec<String> = messages
            .iter()
            .map(|m| routing_key(m.room, m.shard))
            .collect();
        self.publish(&bodies, &keys);
    }

    /// Ready messages in a queue (unacked ones are not counted).
    pub fn depth(&mut self, queue: &str) -> u32 {
        // A passive declare that fails closes its channel: use a fresh one.
        let channel = self.connection().open_channel(None).unwrap();
        let count = channel
            .queue_declare_passive(queue)
            .expect("queue exists")
            .declared_message_count()
            .unwrap_or(0);
        channel.close().unwrap();
        count
    }

    /// Ready messages over every room queue.
    pub fn total_depth(&mut self) -> u32 {
        let queues: Vec<String> = self
            .topology
            .shards()
            .map(|(r, s)| self.topology.queue(r, s))
            .collect();
        queues.iter().map(|q| self.depth(q)).sum()
    }

    /// Takes (and acks) every ready message of a queue.
    pub fn drain(&mut self, queue: &str) -> Vec<Vec<u8>> {
        let channel = self.connection().open_channel(None).unwrap();
        let mut bodies = Vec::new();
        while let Some(get) = channel.basic_get(queue, false).unwrap() {
            bodies.push(get.delivery.body.clone());
            get.ack(&channel).unwrap();
        }
        channel.close().unwrap();
        bodies
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            let _ = connection.close();
        }
    }
}

/// A Redis subscriber to every room channel of a namespace, on its own
/// thread, as a server would be.
pub struct Subscriber {
    rx: Receiver<(String, String)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Subscriber {
    /// Subscribes and returns once the subscription is known to be live (a
    /// sentinel published after it has come back).
    pub fn new(topology: &Topology) -> Subscriber {
        let (tx, rx) = crossbeam_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let pattern = topology.redis_pattern();
        let thread = thread::Builder::new()
            .name("test-subscriber".to_string())
            .spawn(move || {
                let client = redis::Client::open(REDIS_URL).unwrap();
                let mut con = client.get_connection().expect("Redis on 127.0.0.1:6379");
                let mut pubsub = con.as_pubsub();
                pubsub.psubscribe(&pattern).unwrap();
                pubsub
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                while !stopping.load(Ordering::Relaxed) {
                    match pubsub.get_message() {
                        Ok(msg) => {
                            let payload: String = msg.get_payload().unwrap();
                            let _ = tx.send((msg.get_channel_name().to_string(), payload));
                        }
                        Err(e) if e.is_timeout() => {}
                        Err(e) => panic!("subscriber: {e}"),
                    }
                }
            })
            .unwrap();
        let subscriber = Subscriber {
            rx,
            stop,
            thread: Some(thread),
        };
        let sentinel = format!("{}:room:sentinel", topology.namespace);
        let client = redis::Client::open(REDIS_URL).unwrap();
        let mut con = client.get_connection().unwrap();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let _: i64 = redis::cmd("PUBLISH")
                .arg(&sentinel)
                .arg("ready")
                .query(&mut con)
                .unwrap();
            match subscriber.rx.recv_timeout(Duration::from_millis(100)) {
                Ok((channel, _)) if channel == sentinel => break,
                Ok(other) => panic!("unexpected message before any was sent: {other:?}"),
                Err(_) => assert!(Instant::now() < deadline, "subscription never became live"),
            }
        }
        // Later sentinels may still be in flight: skip them when reading.
        subscriber
    }

    /// The next `n` broadcasts (channel, payload), sentinels skipped.
    pub fn take(&self, n: usize) -> Vec<(String, String)> {
        let deadline = Instant::now() + TIMEOUT;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.rx.recv_deadline(deadline) {
                Ok((channel, _)) if channel.ends_with(":room:sentinel") => {}
                Ok(message) => out.push(message),
                Err(RecvTimeoutError::Timeout) => {
                    panic!("timed out after {} of {n} broadcasts", out.len())
                }
                Err(RecvTimeoutError::Disconnected) => panic!("subscriber thread died"),
            }
        }
        out
    }

    /// Broadcasts received so far, without waiting.
    pub fn try_take_all(&self) -> Vec<(String, String)> {
        self.rx
            .try_iter()
            .filter(|(c, _)| !c.ends_with(":room:sentinel"))
            .collect()
    }

    /// Waits until nothing arrives for `quiet`, returning what did.
    pub fn take_until_quiet(&self, quiet: Duration) -> Vec<(String, String)> {
        let mut out = Vec::new();
        while let Ok(message) = self.rx.recv_timeout(quiet) {
            if !message.0.ends_with(":room:sentinel") {
                out.push(message);
            }
        }
        out
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A broadcast payload without the `"position"` its room's history gave
/// it (the frame the server published, as [`TestMessage::frame`] holds
/// it); panics if it has none.
pub fn unpositioned(payload: &str) -> String {
    let position = chatflow_protocol::Position::of_frame(payload)
        .unwrap_or_else(|| panic!("a broadcast with a position: {payload}"));
    let suffix = format!(",\"position\":\"{position}\"}}");
    let head = payload
        .strip_suffix(&suffix)
        .expect("the position ends the frame");
    format!("{head}}}")
}

/// The `messageId` of a broadcast payload.
pub fn message_id(payload: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(payload).expect("broadcast is JSON");
    v["messageId"].as_str().expect("messageId").to_string()
}

/// Counts broadcasts per message id.
pub fn count_ids(broadcasts: &[(String, String)]) -> HashMap<String, usize> {
    let mut ids = HashMap::new();
    for (_, payload) in broadcasts {
        *ids.entry(message_id(payload)).or_insert(0) += 1;
    }
    ids
}

/// A plain HTTP/1.1 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    chatflow_testkit::http_get(addr, path, "", TIMEOUT)
}

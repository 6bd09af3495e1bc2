//! Live fleet statistics against real services: the `fleet-stats`
//! publisher's snapshot of a real server (in memory with `--broker memory`,
//! in Redis with the RabbitMQ broker), read back by the [`FleetReader`];
//! the reader through a Redis outage; snapshots that expire or go stale;
//! and RabbitMQ queue depths.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use amiquip::{AmqpProperties, Confirm, ConfirmSmoother, Connection, Publish};
use chatflow_broker::fleet::Registry;
use chatflow_broker::{shutdown_signal, Declare};
use chatflow_protocol::time::now_ms;
use chatflow_protocol::{routing_key, Topology};
use chatflow_server::fleet::{FleetReader, QueueDepths, StatsPublisher};
use chatflow_server::{BrokerKind, Config, Server};
use chatflow_testkit::services::{redis_addr, AMQP_URL, REDIS_URL};
use chatflow_testkit::Proxy;
use common::*;
use crossbeam_channel::TryRecvError;
use serde_json::{json, Value};

/// Sends `n` messages from one client in room 1 and waits for each ack.
/// The client is returned to be kept: a broadcast reaching it after it
/// closed would not be sent, nor counted.
fn chat(server: &Server, n: usize) -> Client {
    let mut client = connect(server.local_addr(), 1);
    for i in 0..n {
        let reply = request(&mut client, message(7, "hello", &i.to_string()));
        assert_eq!(reply["type"], "ack", "{reply}");
    }
    client
}

/// Starts a publisher of `server`'s health with `config`'s broker and
/// Redis, and waits for its first snapshot; the returned closure stops
/// and joins it.
fn publish(server: &Arc<Server>, config: &Config) -> (StatsPublisher, impl FnOnce(StatsPublisher)) {
    let (mut stop, shutdown) = shutdown_signal();
    let watched = server.clone();
    let publisher = StatsPublisher::start(config, Box::new(move || watched.health()), shutdown)
        .expect("publisher starts");
    let stop = move |mut publisher: StatsPublisher| {
        stop.signal();
        publisher.join();
    };
    // Traffic before the first sample would never show in a rate.
    eventually("the first snapshot", || publisher.latest().get().is_some());
    (publisher, stop)
}

/// The one server document of a servers part.
fn only_server(part: &Value) -> &Value {
    let servers = part["servers"].as_array().expect("servers");
    assert_eq!(servers.len(), 1, "{part}");
    &servers[0]
}

/// With `--broker memory` there is no Redis: the snapshot is kept in
/// memory, counts the traffic, and the reader shows it as `local`.
#[test]
fn a_memory_server_snapshot_counts_its_traffic_locally() {
    let config = common::config(BrokerKind::Memory);
    let server = Arc::new(Server::start(config.clone()).expect("server starts"));
    let (publisher, stop) = publish(&server, &config);
    let reader = FleetReader::new(&config, publisher.latest()).unwrap();
    let _member = chat(&server, 3);
    // A message's broadcast may reach its member after the ack: wait for
    // both counts.
    eventually("the snapshot counts 3 messages at a positive rate", || {
        publisher.latest().get().is_some_and(|s| {
            s.totals.messages_accepted == 3
                && s.totals.broadcast_frames_sent == 3
                && s.accepted_per_second > 0.0
        })
    });
    let part = serde_json::to_value(reader.read_servers()).unwrap();
    assert_eq!(part["source"], "local");
    let snapshot = only_server(&part);
    assert_eq!(snapshot["serverId"], "test");
    assert_eq!(snapshot["status"], "ok");
    assert_eq!(snapshot["workers"], 2);
    assert_eq!(snapshot["totals"]["messagesAccepted"], 3);
    // Each message is broadcast back to its one member.
    assert_eq!(snapshot["totals"]["broadcastFramesSent"], 3);
    assert!(snapshot["ageSeconds"].as_f64().unwrap() < 1.5, "{snapshot}");
    let consumers = serde_json::to_value(reader.read_consumers()).unwrap();
    assert_eq!(consumers["error"], "not available with --broker memory");
    assert_eq!(publisher.stats().published, 0, "nothing goes to Redis");
    stop(publisher);
    Arc::into_inner(server).unwrap().shutdown().unwrap();
}

/// With RabbitMQ, the snapshot goes to Redis and any reader sees it; a
/// Redis cut makes the reader answer an error at once (not hang) and the
/// publisher count failures; after the restore both recover; a clean
/// stop withdraws the snapshot.
#[test]
fn a_rabbitmq_server_snapshot_goes_through_redis_and_survives_an_outage() {
    let namespace = unique_namespace("fleet");
    let config = rabbit_config(&namespace, 1);
    let _guard = TopologyGuard(config.services.topology.clone());
    let server = Arc::new(Server::start(config.clone()).expect("server with RabbitMQ starts"));
    // Publisher and reader reach Redis through a proxy; the server's own
    // subscriber does not.
    let proxy = Proxy::start(redis_addr());
    let mut fleet_config = config.clone();
    fleet_config
        .services
        .redis
        .set_direct(chatflow_broker::HostPort::loopback(proxy.port()));
    fleet_config.services.redis.timeout = Duration::from_secs(1);
    let (publisher, stop) = publish(&server, &fleet_config);
    let reader = FleetReader::new(&fleet_config, publisher.latest()).unwrap();

    let _member = chat(&server, 3);
    let mut part = Value::Null;
    eventually("Redis has a snapshot counting 3 messages", || {
        part = serde_json::to_value(reader.read_servers()).unwrap();
        part["servers"][0]["totals"]["messagesAccepted"] == 3
            && part["servers"][0]["acceptedPerSecond"].as_f64() > Some(0.0)
    });
    assert_eq!(part["source"], "redis");
    assert!(part.get("error").is_none(), "{part}");
    let snapshot = only_server(&part);
    assert_eq!(snapshot["serverId"], "test");
    assert_eq!(snapshot["status"], "ok");
    assert!(snapshot["ageSeconds"].as_f64().unwrap() < 1.5, "{snapshot}");
    assert!(
        proxy.relayed() >= 2,
        "publisher and reader go through the proxy"
    );

    proxy.cut();
    let started = Instant::now();
    let part = serde_json::to_value(reader.read_servers()).unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let error = part["error"].as_str().expect("an error while cut");
    assert!(
        error.starts_with(&format!("redis at 127.0.0.1:{}", proxy.port())),
        "{error}"
    );
    assert_eq!(part["servers"], json!([]));
    let failures = publisher.stats().failures;
    eventually("the publisher counts failures", || {
        let stats = publisher.stats();
        !stats.connected && stats.failures > failures && stats.last_error.is_some()
    });

    proxy.restore();
    let published = publisher.stats().published;
    eventually("the publisher publishes again", || {
        let stats = publisher.stats();
        stats.connected && stats.published > published
    });
    eventually("the reader reads a fresh snapshot again", || {
        let part = serde_json::to_value(reader.read_servers()).unwrap();
        part["servers"][0]["ageSeconds"].as_f64() < Some(1.5)
    });

    stop(publisher);
    let part = serde_json::to_value(reader.read_servers()).unwrap();
    assert_eq!(
        part["servers"],
        json!([]),
        "withdrawn on a clean stop: {part}"
    );
    Arc::into_inner(server).unwrap().shutdown().unwrap();
}

/// A Redis that takes connections and never answers costs a read at most
/// the configured timeout, lock wait included: two API requests reading
/// at once both answer an error within it.
#[test]
fn a_silent_redis_costs_a_read_at_most_the_redis_timeout() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    // Accepts and holds every connection, answering nothing, until told.
    let (done, finished) = crossbeam_channel::bounded::<()>(0);
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        silent.set_nonblocking(true).unwrap();
        let until = Instant::now() + TIMEOUT;
        while Instant::now() < until && finished.try_recv() == Err(TryRecvError::Empty) {
            match silent.accept() {
                Ok((stream, _)) => held.push(stream),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    let mut config = common::rabbit_config("silent", 1);
    config
        .services
        .redis
        .set_direct(chatflow_broker::HostPort::loopback(port));
    config.services.redis.timeout = Duration::from_millis(400);
    let reader = Arc::new(FleetReader::new(&config, Default::default()).unwrap());
    let started = Instant::now();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let reader = reader.clone();
            std::thread::spawn(move || serde_json::to_value(reader.read_servers()).unwrap())
        })
        .collect();
    for part in readers.into_iter().map(|r| r.join().unwrap()) {
        let error = part["error"].as_str().expect("an error");
        assert!(
            error.starts_with(&format!("redis at 127.0.0.1:{port}: ")),
            "{error}"
        );
    }
    let took = started.elapsed();
    assert!(took < Duration::from_millis(700), "two reads took {took:?}");
    drop(done);
    holder.join().unwrap();
}

/// Deletes a namespace's registry keys when dropped, pass or fail.
struct RegistryGuard(Vec<String>);

impl Drop for RegistryGuard {
    fn drop(&mut self) {
        if let Ok(mut con) = redis::Client::open(REDIS_URL).and_then(|c| c.get_connection()) {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&self.0).query(&mut con);
        }
    }
}

/// A key that expired (a publisher that died) and an id whose last
/// publish is older than 10 s leave the reader's view; a document that is
/// not a snapshot is listed as unreadable; consumers are read like servers.
#[test]
fn expired_and_stale_snapshots_leave_the_readers_view() {
    let namespace = unique_namespace("fleet-expiry");
    let topology = Topology::new(&namespace, chatflow_protocol::Rooms::new(1).unwrap());
    let (servers, consumers) = (Registry::servers(&topology), Registry::consumers(&topology));
    let _guard = RegistryGuard(vec![
        servers.index().to_string(),
        consumers.index().to_string(),
        servers.key("dies"),
        servers.key("lives"),
        servers.key("stale"),
        servers.key("garbled"),
        consumers.key("c-1"),
    ]);
    let mut con = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_connection()
        .unwrap();
    let now = now_ms();
    let doc = |field: &str, id: &str| {
        json!({field: id, "publishedAt": chatflow_protocol::ServerTime(now).to_string(), "ageSeconds": 0.0})
            .to_string()
    };
    let ttl = Duration::from_secs(10);
    servers
        .publish(
            &mut con,
            "dies",
            &doc("serverId", "dies"),
            Duration::from_secs(1),
            now,
        )
        .unwrap();
    servers
        .publish(&mut con, "lives", &doc("serverId", "lives"), ttl, now)
        .unwrap();
    servers
        .publish(
            &mut con,
            "stale",
            &doc("serverId", "stale"),
            ttl,
            now - 11_000,
        )
        .unwrap();
    servers
        .publish(&mut con, "garbled", "{not json", ttl, now)
        .unwrap();
    consumers
        .publish(&mut con, "c-1", &doc("consumerId", "c-1"), ttl, now)
        .unwrap();

    let mut config = common::rabbit_config(&namespace, 1);
    config.services.redis.timeout = Duration::from_secs(1);
    let reader = FleetReader::new(&config, Default::default()).unwrap();
    let ids = |part: &Value| -> Vec<String> {
        part["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["serverId"].as_str().unwrap().to_string())
            .collect()
    };
    let part = serde_json::to_value(reader.read_servers()).unwrap();
    assert_eq!(
        ids(&part),
        ["dies", "lives"],
        "sorted by id, stale one left out: {part}"
    );
    assert_eq!(part["unreadable"], json!(["garbled"]));
    eventually("the expired key leaves the view", || {
        ids(&serde_json::to_value(reader.read_servers()).unwrap()) == ["lives"]
    });
    let part = serde_json::to_value(reader.read_consumers()).unwrap();
    assert_eq!(part["source"], "redis");
    assert_eq!(part["consumers"][0]["consumerId"], "c-1");
    assert!(part["consumers"][0]["ageSeconds"].as_f64().unwrap() >= 0.0);
}

/// Ready messages nobody consumes are counted per shard, and a queue that
/// does not exist (its 404 closes the channel) is listed while the rest
/// are still counted.
#[test]
fn queue_depths_count_ready_messages_and_list_missing_queues() {
    let namespace = unique_namespace("depths");
    let config = rabbit_config(&namespace, 1);
    let topology = config.services.topology.clone();
    let _guard = TopologyGuard(topology.clone());
    let mut connection = Connection::insecure_open(AMQP_URL).expect("RabbitMQ on 127.0.0.1:5672");
    let channel = connection.open_channel(None).unwrap();
    topology.declare(&channel).unwrap();
    let confirms = channel.listen_for_publisher_confirms().unwrap();
    channel.enable_publisher_confirms().unwrap();
    for shard in [2, 2, 2, 4] {
        let publish =
            Publish::with_properties(b"{}", routing_key(1, shard), AmqpProperties::default());
        channel.basic_publish(topology.exchange(), publish).unwrap();
    }
    // One confirm may cover several publishes (`multiple`): count them.
    let mut smoother = ConfirmSmoother::new();
    let mut confirmed = 0;
    while confirmed < 4 {
        let confirm = confirms.recv_timeout(TIMEOUT).expect("a confirm");
        for confirm in smoother.process(confirm) {
            assert!(matches!(confirm, Confirm::Ack(_)), "{confirm:?}");
            confirmed += 1;
        }
    }
    channel.close().unwrap();
    connection.close().unwrap();

    // Polls two rooms while only room 1 exists.
    let mut polled = config.clone();
    polled.services.topology.rooms = chatflow_protocol::Rooms::new(2).unwrap();
    let (mut stop, shutdown) = shutdown_signal();
    let mut depths = QueueDepths::start(&polled, shutdown).unwrap();
    let mut part = Value::Null;
    eventually("4 ready messages are counted", || {
        part = serde_json::to_value(depths.latest()).unwrap();
        part["totalMessages"] == 4
    });
    assert_eq!(part["source"], "rabbitmq");
    assert!(part.get("error").is_none(), "{part}");
    assert!(part["ageSeconds"].as_f64().unwrap() < 2.5, "{part}");
    assert_eq!(
        part["rooms"][0],
        json!({"roomId": 1, "messages": 4, "consumers": 0, "shards": [0, 0, 3, 0, 1]})
    );
    assert_eq!(part["rooms"][1]["messages"], 0);
    let missing: Vec<String> = (0..5).map(|s| format!("{namespace}.room.2.{s}")).collect();
    assert_eq!(part["missingQueues"], json!(missing));
    eprintln!(
        "queue-depths poll of 10 queues (5 missing): {:?}",
        depths.last_poll_time()
    );
    stop.signal();
    depths.join();
}

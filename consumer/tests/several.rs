//! Several `chatflow-consumer` processes on the same queues (each queue
//! single-active-consumer), as real child processes against the shared
//! RabbitMQ, Redis and a PostgreSQL database of each test's own: a standby
//! takes over from a consumer killed with SIGKILL; two instances of
//! `--instances 2` each hold their own share; an owner back after a
//! takeover gets its queues handed back. Throughout, with messages
//! published steadily: every message is broadcast, its first broadcast in
//! its sender's order (a repeat only of an id already broadcast), and
//! stored exactly once. Where `rabbitmqctl` runs, RabbitMQ's own view of
//! which consumer is active must match what `/health` says.
//!
//! The tests run one at a time (they kill processes and time takeovers;
//! a shared 2-core machine is noisy enough).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use chatflow_consumer::Config;
use chatflow_testkit::database::TestDatabase;
use common::process::{broker_consumers, unix_ms, ConsumerProcess};
use common::{message, message_id, namespace, persistent, wait_until, Broker, Subscriber};
use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Senders: two per shard (a sender's shard is its id mod 5), so every
/// queue of the room carries traffic.
const USERS: u32 = 10;

/// The bound a takeover or hand-back must stay within: generous, for a
/// shared noisy machine; the measured times are printed.
const TAKEOVER_BOUND_MS: i64 = 30_000;

/// One published message: its id and sender.
#[derive(Clone, Debug)]
struct Sent {
    id: String,
    user: u32,
}

/// Publishes to room 1 steadily from its own thread, as servers would:
/// batches of 10 (one message of each sender), each confirmed before the
/// next, with a pause between, so messages keep arriving across a kill.
struct Publisher {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
    thread: Option<JoinHandle<Vec<Sent>>>,
}

impl Publisher {
    fn start(config: &Config) -> Publisher {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, count, config) = (stop.clone(), count.clone(), config.clone());
            thread::spawn(move || {
                let mut broker = Broker::publisher(&config);
                let mut sent = Vec::new();
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    let batch: Vec<_> = (1..=USERS)
                        .map(|user| message(1, user, &format!("u{user} #{seq}")))
                        .collect();
                    seq += 1;
                    broker.publish_messages(&batch);
                    sent.extend(batch.iter().zip(1..).map(|(m, user)| Sent {
                        id: m.message_id.clone(),
                        user,
                    }));
                    count.store(sent.len(), Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(20));
                }
                sent
            })
        };
        Publisher {
            stop,
            count,
            thread: Some(thread),
        }
    }

    fn published(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Waits until `more` further messages are confirmed.
    fn publish_more(&self, more: usize) {
        let target = self.published() + more;
        wait_until("the publisher goes on", || self.published() >= target);
    }

    /// Stops; every message it published, in publish order.
    fn finish(mut self) -> Vec<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("the publisher")
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The environment every consumer of a test gets: its namespace, one
/// room, its database, quick flushes.
fn env<'a>(ns: &'a str, db: &'a TestDatabase) -> Vec<(&'a str, &'a str)> {
    vec![
        ("NAMESPACE", ns),
        ("ROOMS", "1"),
        ("AMQP_CONNECTIONS", "1"),
        ("DB_NAME", &db.name),
        ("FLUSH_INTERVAL_MS", "50"),
    ]
}

/// Instance `k` of 2, standing by after 1 s.
fn instance_args(k: &'static str) -> [&'static str; 6] {
    [
        "--instances",
        "2",
        "--instance",
        k,
        "--standby-delay-secs",
        "1",
    ]
}

/// The role of every queue in `process`'s `/health`, by shard.
fn roles(process: &ConsumerProcess) -> HashMap<u32, String> {
    (process.queues().values())
        .map(|q| {
            (
                q["shard"].as_u64().unwrap() as u32,
                q["role"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Waits until `process` holds `shards` with `role`.
fn wait_for_role(process: &ConsumerProcess, shards: &[u32], role: &str) {
    wait_until(
        &format!("{} {role} on shards {shards:?}", process.name),
        || {
            let roles = roles(process);
            shards
                .iter()
                .all(|s| roles.get(s).map(String::as_str) == Some(role))
        },
    );
}

/// Waits until `process` is registered (waiting or active) on all 5.
fn wait_registered(process: &ConsumerProcess) {
    wait_until(
        &format!("{} registered on every queue", process.name),
        || {
            let roles = roles(process);
            roles.len() == 5
                && roles
                    .values()
                    .all(|r| r.as_str() == "waiting" || r.as_str() == "active")
        },
    );
}

/// The moment (Unix ms) the latest of `shards` became active at `process`.
fn active_since(process: &ConsumerProcess, shards: &[u32]) -> Vec<i64> {
    let queues = process.queues();
    let mut since: Vec<i64> = (queues.values())
        .filter(|q| shards.contains(&(q["shard"].as_u64().unwrap() as u32)))
        .map(|q| {
            assert_eq!(q["role"], "active", "{q}");
            q["sinceUnixMs"].as_i64().unwrap()
        })
        .collect();
    since.sort();
    since
}

fn totals(process: &ConsumerProcess) -> Value {
    process.health()["totals"].clone()
}

/// Where `rabbitmqctl` runs: RabbitMQ's active consumer of every queue of
/// the namespace is the registration `/health` calls active, and every
/// registration `/health` calls waiting is one RabbitMQ keeps waiting.
fn assert_broker_agrees(ns: &str, processes: &[&ConsumerProcess]) {
    if broker_consumers(ns).is_none() {
        eprintln!("rabbitmqctl cannot run here: RabbitMQ's own view is not checked");
        return;
    }
    // RabbitMQ updates its consumer records as it applies each change:
    // give it a moment.
    let deadline = Instant::now() + common::TIMEOUT;
    loop {
        let broker = broker_consumers(ns).expect("rabbitmqctl ran before");
        let mut disagreements = Vec::new();
        for process in processes {
            for (queue, q) in process.queues() {
                let Some(tag) = q["consumerTag"].as_str() else {
                    disagreements.push(format!("{}: {queue} unregistered", process.name));
                    continue;
                };
                let seen = broker
                    .get(&queue)
                    .and_then(|cs| cs.iter().find(|c| c.tag == tag));
                let active = q["role"] == "active";
                match seen {
                    Some(c) if c.active == active => {}
                    other => disagreements.push(format!(
                        "{}: {queue} is {} in /health, RabbitMQ says {other:?}",
                        process.name, q["role"]
                    )),
                }
            }
        }
        for (queue, consumers) in &broker {
            let active = consumers.iter().filter(|c| c.active).count();
            if queue.contains(".room.") && active != 1 {
                disagreements.push(format!("{queue}: {active} active consumers: {consumers:?}"));
            }
        }
        if disagreements.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "RabbitMQ disagrees with /health:\n{}",
            disagreements.join("\n")
        );
        thread::sleep(Duration::from_millis(250));
    }
}

/// Every message of `sent` was broadcast — the first broadcast of each
/// sender's messages in publish order, any repeat one of an id already
/// broadcast — and stored exactly once. Returns the repeats.
fn assert_delivered_in_order_and_stored_once(
    sent: &[Sent],
    subscriber: &Subscriber,
    db: &TestDatabase,
) -> usize {
    let mut place: HashMap<&str, (u32, usize)> = HashMap::new();
    let mut per_user: HashMap<u32, usize> = HashMap::new();
    for m in sent {
        let n = per_user.entry(m.user).or_default();
        place.insert(&m.id, (m.user, *n));
        *n += 1;
    }
    // Broadcast in order: the next unseen message of each sender.
    let mut next: HashMap<u32, usize> = HashMap::new();
    let mut repeats = 0;
    let mut broadcasts = 0;
    let deadline = Instant::now() + common::TIMEOUT;
    while next.values().sum::<usize>() < sent.len() {
        assert!(
            Instant::now() < deadline,
            "only {} of {} messages broadcast",
            next.values().sum::<usize>(),
            sent.len()
        );
        for (_, payload) in subscriber.take_until_quiet(Duration::from_millis(500)) {
            broadcasts += 1;
            let id = message_id(&payload);
            let &(user, index) = place
                .get(id.as_str())
                .unwrap_or_else(|| panic!("a broadcast nobody published: {payload}"));
            let expected = next.entry(user).or_default();
            if index < *expected {
                repeats += 1; // already broadcast: a redelivery's repeat
            } else {
                assert_eq!(
                    index, *expected,
                    "user {user}: message {index} broadcast before message {expected} (order broken)"
                );
                *expected += 1;
            }
        }
    }
    assert_eq!(broadcasts, sent.len() + repeats);
    wait_until("every message is stored", || {
        db.rows() as usize >= sent.len()
    });
    assert_eq!(db.rows() as usize, sent.len(), "one row per message");
    let stored: HashSet<String> = db.ids().into_iter().collect();
    let published: HashSet<String> = sent.iter().map(|m| m.id.clone()).collect();
    assert_eq!(stored, published, "stored exactly the published messages");
    repeats
}

/// Two consumers with every queue (the default 1 of 1): the first started
/// is active on all five, the second waits; SIGKILL the first mid-run and
/// the second takes every queue over, within a bound, losing nothing and
/// keeping each sender's order.
#[test]
fn the_standby_takes_over_when_the_active_consumer_is_killed() {
    let _serial = serial();
    let ns = namespace();
    let db = TestDatabase::new(&ns).with_schema();
    let config = persistent(&ns, 1, &db.name);
    let _broker = Broker::new(&config);
    let subscriber = Subscriber::new(&config.topology());
    let env = env(&ns, &db);
    let mut first = ConsumerProcess::start("first", &env, &[]);
    wait_registered(&first);
    let second = ConsumerProcess::start("second", &env, &[]);
    wait_registered(&second);

    let publisher = Publisher::start(&config);
    let all = [0, 1, 2, 3, 4];
    wait_for_role(&first, &all, "active");
    publisher.publish_more(200);
    assert!(
        roles(&second).values().all(|r| r == "waiting"),
        "{:?}",
        roles(&second)
    );
    assert_eq!(totals(&second)["consumed"], 0, "the standby got nothing");
    assert_broker_agrees(&ns, &[&first, &second]);

    let killed_at = first.kill();
    wait_for_role(&second, &all, "active");
    let since = active_since(&second, &all);
    let takeover: Vec<i64> = since.iter().map(|s| s - killed_at).collect();
    println!(
        "takeover (SIGKILL of the active consumer → first delivery at the standby), per queue: {takeover:?} ms"
    );
    assert!(
        takeover.iter().all(|&ms| ms < TAKEOVER_BOUND_MS),
        "{takeover:?}"
    );
    publisher.publish_more(300);
    let sent = publisher.finish();
    let repeats = assert_delivered_in_order_and_stored_once(&sent, &subscriber, &db);
    println!(
        "{} messages, {repeats} broadcast again after the kill",
        sent.len()
    );
    let health = second.health();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["instance"]["activations"], 5);
    assert_broker_agrees(&ns, &[&second]);
    second.stop();
}

/// `--instances 2`: each instance is active on its own share (shards 0,
/// 2, 4 and 1, 3 of the room) and waits on the other's, so both broadcast
/// and store part of the load; `/health`, `/metrics` and RabbitMQ agree.
#[test]
fn two_instances_each_hold_their_own_share() {
    let _serial = serial();
    let ns = namespace();
    let db = TestDatabase::new(&ns).with_schema();
    let config = persistent(&ns, 1, &db.name);
    let _broker = Broker::new(&config);
    let subscriber = Subscriber::new(&config.topology());
    let env = env(&ns, &db);
    let one = ConsumerProcess::start("one", &env, &instance_args("1"));
    let two = ConsumerProcess::start("two", &env, &instance_args("2"));
    wait_registered(&one);
    wait_registered(&two);

    let publisher = Publisher::start(&config);
    wait_for_role(&one, &[0, 2, 4], "active");
    wait_for_role(&two, &[1, 3], "active");
    publisher.publish_more(300);
    let sent = publisher.finish();
    let repeats = assert_delivered_in_order_and_stored_once(&sent, &subscriber, &db);
    assert_eq!(repeats, 0, "nothing failed over: nothing broadcast twice");

    let shares: [(&ConsumerProcess, &[u32], &[u32], u64); 2] = [
        (&one, &[0, 2, 4], &[1, 3], 1),
        (&two, &[1, 3], &[0, 2, 4], 2),
    ];
    for (process, owned, other, k) in shares {
        let health = process.health();
        assert_eq!(health["status"], "ok", "{health}");
        let instance = &health["instance"];
        assert_eq!(
            (
                instance["instance"].as_u64(),
                instance["instances"].as_u64()
            ),
            (Some(k), Some(2))
        );
        assert_eq!(instance["owned"]["active"], owned.len());
        assert_eq!(instance["standingBy"]["waiting"], other.len());
        let queues = process.queues();
        for q in queues.values() {
            let shard = q["shard"].as_u64().unwrap() as u32;
            let (duty, role) = if owned.contains(&shard) {
                ("owner", "active")
            } else {
                ("standby", "waiting")
            };
            assert_eq!(
                (q["duty"].as_str(), q["role"].as_str()),
                (Some(duty), Some(role)),
                "{q}"
            );
            if role == "waiting" {
                assert_eq!(q["deliveries"], 0, "{q}");
            }
        }
        // The load is spread: each stored and broadcast its share.
        let rows = health["database"]["rows"].as_u64().unwrap();
        assert!(rows > 0, "{} stored nothing", process.name);
        assert!(health["totals"]["broadcasts"].as_u64().unwrap() > 0);
        let (status, metrics) = common::http_get(process.addr, "/metrics");
        assert_eq!(status, 200);
        for line in [
            format!(
                "chatflow_consumer_queues{{duty=\"owner\",role=\"active\"}} {}.0",
                owned.len()
            ),
            format!(
                "chatflow_consumer_queues{{duty=\"standby\",role=\"waiting\"}} {}.0",
                other.len()
            ),
            format!("chatflow_consumer_instance {k}.0"),
        ] {
            assert!(
                metrics.lines().any(|l| l == line),
                "no {line:?} in\n{metrics}"
            );
        }
    }
    let rows = |p: &ConsumerProcess| p.health()["database"]["rows"].as_u64().unwrap();
    assert_eq!(rows(&one) + rows(&two), sent.len() as u64);
    assert_broker_agrees(&ns, &[&one, &two]);
    one.stop();
    two.stop();
}

/// An owner killed mid-run: the other instance's standbys take its queues
/// over; the owner started again registers behind them, and they hand the
/// queues back (one hand-back each) — in order, nothing lost, every
/// message stored once.
#[test]
fn an_owner_back_after_a_takeover_gets_its_queues_back() {
    let _serial = serial();
    let ns = namespace();
    let db = TestDatabase::new(&ns).with_schema();
    let config = persistent(&ns, 1, &db.name);
    let _broker = Broker::new(&config);
    let subscriber = Subscriber::new(&config.topology());
    let env = env(&ns, &db);
    let mut one = ConsumerProcess::start("one", &env, &instance_args("1"));
    let two = ConsumerProcess::start("two", &env, &instance_args("2"));
    wait_registered(&one);
    wait_registered(&two);

    let publisher = Publisher::start(&config);
    let (mine, theirs) = ([0, 2, 4], [1, 3]);
    wait_for_role(&one, &mine, "active");
    wait_for_role(&two, &theirs, "active");
    publisher.publish_more(200);

    let killed_at = one.kill();
    wait_for_role(&two, &mine, "active");
    let takeover: Vec<i64> = (active_since(&two, &mine).iter())
        .map(|s| s - killed_at)
        .collect();
    println!("takeover by the standbys after SIGKILL, per queue: {takeover:?} ms");
    assert!(
        takeover.iter().all(|&ms| ms < TAKEOVER_BOUND_MS),
        "{takeover:?}"
    );
    publisher.publish_more(200);

    let restarted_at = unix_ms();
    let again = ConsumerProcess::start("one-again", &env, &instance_args("1"));
    wait_for_role(&again, &mine, "active");
    wait_for_role(&two, &mine, "waiting");
    let back: Vec<i64> = (active_since(&again, &mine).iter())
        .map(|s| s - restarted_at)
        .collect();
    println!("hand-back (owner started → first delivery at the owner), per queue: {back:?} ms");
    assert!(back.iter().all(|&ms| ms < TAKEOVER_BOUND_MS), "{back:?}");
    let health = two.health();
    assert_eq!(
        health["instance"]["yields"], 3,
        "one hand-back per queue: {health}"
    );
    publisher.publish_more(300);
    let sent = publisher.finish();
    let repeats = assert_delivered_in_order_and_stored_once(&sent, &subscriber, &db);
    println!(
        "{} messages, {repeats} broadcast again (after the kill and the hand-backs)",
        sent.len()
    );
    wait_for_role(&again, &theirs, "waiting");
    assert_broker_agrees(&ns, &[&again, &two]);
    again.stop();
    two.stop();
}

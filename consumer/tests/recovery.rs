//! History recovery through the whole system (RabbitMQ → consumer → Redis
//! stream and pub/sub → servers → clients): a client resuming with
//! `?since=` gets exactly what it missed, then live messages; a position
//! older than the retained history is said, and filled from PostgreSQL
//! where the server has a database; and a server whose Redis subscription
//! is cut mid-stream fills what it missed, so every listener on every
//! server gets every message, in order, once.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use chatflow_consumer::Consumer;
use chatflow_protocol::{Position, Recovery, RecoveryReason, Topology};
use chatflow_testkit::database::TestDatabase;
use chatflow_testkit::ws;
use common::chat::*;
use common::proxy::Proxy;
use common::*;
use serde_json::Value;

/// `n` messages in room 1 from 50 senders (all five shards).
fn batch(n: usize, text: &str) -> Vec<TestMessage> {
    (0..n)
        .map(|i| message(1, (i % 50) as u32 + 1, &format!("{text} {i}")))
        .collect()
}

/// A WebSocket resuming room 1 of `server` after `since`.
fn resume(server: &chatflow_server::Server, since: Position) -> Client {
    ws::connect_to(
        server.local_addr(),
        &format!("/chat/1?since={since}"),
        Duration::from_secs(30),
    )
}

fn position(frame: &Value) -> Option<Position> {
    frame["position"].as_str().map(|p| p.parse().unwrap())
}

fn id(frame: &Value) -> String {
    frame["messageId"].as_str().unwrap().to_string()
}

/// The next `n` message frames (acks and others skipped).
fn messages(client: &mut Client, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let frame = next_frame(client)
            .unwrap_or_else(|| panic!("timed out after {} of {n} messages", out.len()));
        if frame["type"] == "message" {
            out.push(frame);
        }
    }
    out
}

/// Frames until the `recovery` one: (messages before it, the recovery).
fn replay(client: &mut Client) -> (Vec<Value>, Recovery) {
    let mut before = Vec::new();
    loop {
        let frame = next_frame(client).expect("the replay and its recovery frame");
        match frame["type"].as_str() {
            Some("message") => before.push(frame),
            Some("recovery") => return (before, Recovery::parse(&frame.to_string()).unwrap()),
            _ => {}
        }
    }
}

/// Message frames until nothing comes for `quiet`.
fn until_quiet(client: &mut Client, quiet: Duration) -> Vec<Value> {
    set_timeout(client, quiet);
    let mut out = Vec::new();
    while let Some(frame) = next_frame(client) {
        if frame["type"] == "message" {
            out.push(frame);
        }
    }
    out
}

/// The message ids of room 1's history after `after`, in stream order.
fn history_after(topology: &Topology, after: Position) -> Vec<String> {
    let mut con = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_connection()
        .unwrap();
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(topology.history_stream(1))
        .arg(format!("({after}"))
        .arg("+")
        .query(&mut con)
        .unwrap();
    entries
        .into_iter()
        .map(|(_, fields)| {
            let v: Value = serde_json::from_str(&fields[0].1).unwrap();
            id(&v)
        })
        .collect()
}

fn acked(consumer: &Consumer, n: usize) {
    wait_until(&format!("{n} messages acked"), || {
        consumer.health().totals.acked >= n as u64
    });
}

/// A client that missed 1,000 messages and resumes with `since` while
/// others keep talking gets exactly the room's history after `since`, in
/// stream order, then one `recovery` frame (recovered), then the live
/// messages: no gap and no duplicate at the seam.
#[test]
fn a_resumed_client_gets_exactly_what_it_missed_then_live() {
    let ns = namespace();
    let config = config(&ns, 1);
    let mut broker = Broker::new(&config); // deletes queues and streams at the end
    let consumer = Consumer::start(config.clone()).expect("consumer starts");
    let server = server(&ns, 1, "server-a");

    let mut away = connect(&server, 1);
    broker.publish_messages(&batch(10, "before"));
    let seen = messages(&mut away, 10);
    let since = position(seen.last().unwrap()).expect("broadcasts carry positions");
    drop(away);
    let missed = batch(1000, "missed");
    broker.publish_messages(&missed);
    acked(&consumer, 1010);

    // Others keep talking while it resumes.
    let live = {
        let config = config.clone();
        thread::spawn(move || {
            let mut broker = Broker::publisher(&config);
            for round in 0..15 {
                broker.publish_messages(&batch(20, &format!("live {round}")));
                thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut back = resume(&server, since);
    let (replayed, recovery) = replay(&mut back);
    live.join().unwrap();
    acked(&consumer, 1310);
    let after_seam = until_quiet(&mut back, Duration::from_millis(1500));

    assert!(recovery.recovered, "{recovery:?}");
    assert_eq!(recovery.reason, None);
    assert_eq!(recovery.since, since);
    assert_eq!(recovery.replayed, replayed.len() as u64);
    assert_eq!(Some(recovery.position), position(replayed.last().unwrap()));
    let replayed_ids: HashSet<String> = replayed.iter().map(id).collect();
    assert!(
        missed.iter().all(|m| replayed_ids.contains(&m.message_id)),
        "every missed message is replayed"
    );
    // Replay and live together are the room's history after `since`,
    // exactly and in order.
    let got: Vec<&Value> = replayed.iter().chain(&after_seam).collect();
    let got_ids: Vec<String> = got.iter().map(|f| id(f)).collect();
    assert_eq!(got_ids.len(), 1300);
    assert_eq!(got_ids, history_after(&broker.topology, since));
    assert!(got.windows(2).all(|w| position(w[0]) < position(w[1])));
    server.shutdown().unwrap();
    consumer.shutdown().unwrap();
}

/// A position older than the retained history (HISTORY_MAX_LEN 100, 600
/// messages later): the `recovery` frame says `TRIMMED`. A server with a
/// database first fills the trimmed part from PostgreSQL (no positions),
/// then replays what the stream holds — together exactly the messages
/// after `since`, each once; a server without one replays the stream only
/// and says it could not fill.
#[test]
fn a_trimmed_position_is_said_and_filled_from_the_database() {
    let ns = namespace();
    let db = TestDatabase::new(&ns);
    let mut config = persistent(&ns, 1, &db.name);
    config.history.max_len = 100;
    let mut broker = Broker::new(&config);
    let consumer = Consumer::start(config).expect("consumer starts");
    let with_db = server_with_api(&ns, 1, "server-db", Some(&db.name));
    let without_db = server(&ns, 1, "server-plain");

    let mut away = connect(&with_db, 1);
    broker.publish_messages(&batch(5, "before"));
    let since = position(messages(&mut away, 5).last().unwrap()).unwrap();
    drop(away);
    // Later messages get later server timestamps than `since`'s millisecond.
    thread::sleep(Duration::from_millis(5));
    let missed = batch(600, "missed");
    broker.publish_messages(&missed);
    // With persistence on, an ack follows the commit: all rows stored.
    acked(&consumer, 605);
    let held = history_after(&broker.topology, Position::ZERO);
    assert!(held.len() < 300, "the history was trimmed ({})", held.len());

    let (frames, recovery) = replay(&mut resume(&with_db, since));
    assert!(!recovery.recovered);
    assert_eq!(recovery.reason, Some(RecoveryReason::Trimmed));
    let (filled, replayed): (Vec<&Value>, Vec<&Value>) =
        frames.iter().partition(|f| position(f).is_none());
    assert!(filled.iter().all(|f| position(f).is_none()));
    assert_eq!(recovery.from_database, filled.len() as u64);
    assert_eq!(recovery.replayed, replayed.len() as u64);
    assert!(!filled.is_empty());
    assert!(
        frames[..filled.len()].iter().all(|f| position(f).is_none()),
        "the database's part comes first"
    );
    let replayed_ids: Vec<String> = replayed.iter().map(|f| id(f)).collect();
    assert_eq!(replayed_ids, held, "then the whole retained history");
    let mut all: Vec<String> = frames.iter().map(id).collect();
    all.sort();
    let mut expected: Vec<String> = missed.iter().map(|m| m.message_id.clone()).collect();
    expected.sort();
    assert_eq!(all, expected, "together: each missed message once");

    let (frames, recovery) = replay(&mut resume(&without_db, since));
    assert_eq!(recovery.reason, Some(RecoveryReason::Trimmed));
    assert_eq!(recovery.from_database, 0);
    assert!(
        recovery.detail.as_deref().unwrap().contains("no database"),
        "{recovery:?}"
    );
    let ids: Vec<String> = frames.iter().map(id).collect();
    assert_eq!(ids, held);
    with_db.shutdown().unwrap();
    without_db.shutdown().unwrap();
    consumer.shutdown().unwrap();
}

/// What one listener heard: message ids in arrival order, and when.
type Heard = Arc<Mutex<Vec<(String, Instant)>>>;

/// A listener thread reading room 1 until `stop`.
fn listen(mut client: Client, stop: Arc<AtomicBool>) -> (Heard, thread::JoinHandle<()>) {
    let heard: Heard = Arc::default();
    let thread = {
        let heard = heard.clone();
        thread::spawn(move || {
            set_timeout(&mut client, Duration::from_millis(200));
            while !stop.load(Ordering::Relaxed) {
                if let Some(frame) = next_frame(&mut client) {
                    if frame["type"] == "message" {
                        heard.lock().unwrap().push((id(&frame), Instant::now()));
                    }
                }
            }
        })
    };
    (heard, thread)
}

/// Redis cut mid-stream for server A's subscriber (a proxy in front of
/// Redis for A only): when it is back, A fills from the history what was
/// published meanwhile, so every listener on both servers gets every
/// message, in the room's order, once. Prints how long after Redis came
/// back A's listeners had everything.
#[test]
fn a_redis_cut_loses_no_broadcast_on_any_server() {
    let ns = namespace();
    let config = config(&ns, 1);
    let mut broker = Broker::new(&config);
    let consumer = Consumer::start(config.clone()).expect("consumer starts");
    let proxy = Proxy::start("127.0.0.1:6379".parse().unwrap());
    let a = server_through_redis(&ns, 1, "server-a", proxy.port());
    let b = server(&ns, 1, "server-b");
    assert!(
        proxy.relayed() >= 1,
        "A's subscriber goes through the proxy"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let listeners: Vec<(&str, Heard, thread::JoinHandle<()>)> =
        [(&a, "A"), (&a, "A"), (&b, "B"), (&b, "B")]
            .into_iter()
            .map(|(server, name)| {
                let (heard, thread) = listen(connect(server, 1), stop.clone());
                (name, heard, thread)
            })
            .collect();

    const N: usize = 1500;
    let sent: Vec<TestMessage> = batch(N, "m");
    let mut restored_at = None;
    let mut before_restore = HashSet::new();
    for (i, chunk) in sent.chunks(50).enumerate() {
        broker.publish_messages(chunk);
        if restored_at.is_none() {
            before_restore.extend(chunk.iter().map(|m| m.message_id.clone()));
        }
        thread::sleep(Duration::from_millis(40));
        if i == 8 {
            proxy.cut();
        }
        if i == 20 {
            proxy.restore();
            restored_at = Some(Instant::now());
        }
    }
    acked(&consumer, N);
    let restored_at = restored_at.unwrap();
    let everything = |heard: &Heard| heard.lock().unwrap().len() >= N;
    wait_until("every listener has every message", || {
        listeners.iter().all(|(_, heard, _)| everything(heard))
    });
    // Late duplicates would show up now.
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let order = history_after(&broker.topology, Position::ZERO);
    assert_eq!(order.len(), N);
    let mut recovered_in = Duration::ZERO;
    for (name, heard, thread) in listeners {
        thread.join().unwrap();
        let heard = heard.lock().unwrap();
        let ids: Vec<&String> = heard.iter().map(|(id, _)| id).collect();
        assert_eq!(ids.len(), N, "server {name}: each message once");
        assert!(
            ids.iter().zip(&order).all(|(a, b)| *a == b),
            "server {name}: in the room's order"
        );
        if name == "A" {
            let last = heard
                .iter()
                .filter(|(id, _)| before_restore.contains(id))
                .map(|(_, at)| *at)
                .max()
                .unwrap();
            recovered_in = recovered_in.max(last.saturating_duration_since(restored_at));
        }
    }
    let detail = a.health().broker.detail;
    assert!(detail.contains("1 reconnects"), "{detail}");
    eprintln!(
        "redis cut: server A's listeners had every message {:.0} ms after Redis was back ({detail})",
        recovered_in.as_secs_f64() * 1e3,
    );
    a.shutdown().unwrap();
    b.shutdown().unwrap();
    consumer.shutdown().unwrap();
}

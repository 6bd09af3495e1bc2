//! Each room's history against the real RabbitMQ and Redis: every
//! broadcast is appended to its room's stream and published with that
//! entry's id as its `position`, in stream order; retention trims by count
//! and by age; the benchmarks' `--no-history` publishes as before.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use chatflow_consumer::Consumer;
use chatflow_protocol::position::with_position;
use chatflow_protocol::{Position, Topology};
use common::*;

/// A room's stream, oldest first: (position, frame as appended).
fn stream(topology: &Topology, room: u32) -> Vec<(Position, String)> {
    let mut con = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_connection()
        .unwrap();
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(topology.history_stream(room))
        .arg("-")
        .arg("+")
        .query(&mut con)
        .unwrap();
    entries
        .into_iter()
        .map(|(id, mut fields)| (id.parse().unwrap(), fields.remove("frame").unwrap()))
        .collect()
}

/// `XINFO STREAM` of a room's stream as (length, entries ever added).
fn info(topology: &Topology, room: u32) -> (u64, u64) {
    let mut con = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_connection()
        .unwrap();
    let fields: HashMap<String, redis::Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(topology.history_stream(room))
        .query(&mut con)
        .unwrap();
    let length: u64 = redis::from_redis_value(fields["length"].clone()).unwrap();
    let added: u64 = redis::from_redis_value(fields["entries-added"].clone()).unwrap();
    (length, added)
}

/// What a subscriber heard is exactly each room's stream in order: every
/// payload is its stream entry's frame with the entry's id spliced in as
/// `position`, and one sender's messages keep their order.
#[test]
fn broadcasts_carry_their_stream_position_in_stream_order() {
    let ns = namespace();
    let config = config(&ns, 2);
    let mut broker = Broker::new(&config); // deletes queues and streams at the end
    let subscriber = Subscriber::new(&broker.topology);
    let messages: Vec<TestMessage> = (0..300)
        .map(|i| message(i % 2 + 1, i % 7 + 1, &format!("m{i}")))
        .collect();
    broker.publish_messages(&messages);
    let consumer = Consumer::start(config).expect("consumer starts");

    let got = subscriber.take(messages.len());
    for room in 1..=2 {
        let heard: Vec<&str> = got
            .iter()
            .filter(|(channel, _)| *channel == broker.topology.redis_channel(room))
            .map(|(_, payload)| payload.as_str())
            .collect();
        let kept = stream(&broker.topology, room);
        assert_eq!(heard.len(), 150);
        assert_eq!(kept.len(), 150, "every broadcast appended once");
        for (payload, (position, frame)) in heard.iter().zip(&kept) {
            assert_eq!(*payload, with_position(frame, *position));
            assert_eq!(Position::of_frame(payload), Some(*position));
        }
        assert!(kept.windows(2).all(|w| w[0].0 < w[1].0));
        // Per sender, the stream keeps the sending order.
        let mut last: HashMap<u64, u32> = HashMap::new();
        for (_, frame) in &kept {
            let v: serde_json::Value = serde_json::from_str(frame).unwrap();
            let seq: u32 = v["message"].as_str().unwrap()[1..].parse().unwrap();
            if let Some(before) = last.insert(v["userId"].as_u64().unwrap(), seq) {
                assert!(before < seq, "{before} then {seq}");
            }
        }
    }
    consumer.shutdown().expect("clean shutdown");
}

/// Retention by count: with HISTORY_MAX_LEN 50, a room that got 600
/// messages keeps about 50 (Redis trims whole 100-entry nodes), its newest,
/// and counts all 600 as added (how servers tell a trimmed history).
#[test]
fn a_history_is_trimmed_to_its_length() {
    let ns = namespace();
    let mut config = config(&ns, 1);
    config.history.max_len = 50;
    let mut broker = Broker::new(&config);
    let subscriber = Subscriber::new(&broker.topology);
    let messages: Vec<TestMessage> = (0..600).map(|i| message(1, i % 5 + 1, "m")).collect();
    broker.publish_messages(&messages);
    let consumer = Consumer::start(config).expect("consumer starts");
    subscriber.take(messages.len());

    let (length, added) = info(&broker.topology, 1);
    assert!((50..=250).contains(&length), "{length} entries kept");
    assert_eq!(added, 600);
    let kept = stream(&broker.topology, 1);
    let newest = &kept.last().unwrap().1;
    assert!(messages.iter().any(|m| m.frame == *newest));
    consumer.shutdown().expect("clean shutdown");
}

/// Retention by age: with HISTORY_MAX_AGE_SECS 1, the entries of a burst
/// more than a second old are gone once a new message is appended.
#[test]
fn a_history_is_trimmed_by_age() {
    let ns = namespace();
    let mut config = config(&ns, 1);
    config.history.max_age = Some(Duration::from_secs(1));
    let mut broker = Broker::new(&config);
    let subscriber = Subscriber::new(&broker.topology);
    let consumer = Consumer::start(config).expect("consumer starts");
    // More than a node's worth (100 entries), so `~` may drop a whole one.
    let old: Vec<TestMessage> = (0..250).map(|i| message(1, i % 5 + 1, "old")).collect();
    broker.publish_messages(&old);
    subscriber.take(old.len());
    std::thread::sleep(Duration::from_millis(1500));
    broker.publish_messages(&[message(1, 1, "new")]);
    subscriber.take(1);

    let kept = stream(&broker.topology, 1);
    assert!(kept.len() < 200, "{} entries kept", kept.len());
    assert!(kept.last().unwrap().1.contains("\"new\""));
    consumer.shutdown().expect("clean shutdown");
}

/// The hidden `--no-history` (for measuring the append): frames are
/// published exactly as servers encoded them, with no position, and no
/// stream is written.
#[test]
fn without_the_history_broadcasts_have_no_position() {
    let ns = namespace();
    let mut config = config(&ns, 1);
    config.history.enabled = false;
    let mut broker = Broker::new(&config);
    let subscriber = Subscriber::new(&broker.topology);
    let messages: Vec<TestMessage> = (0..20).map(|i| message(1, i + 1, "plain")).collect();
    broker.publish_messages(&messages);
    let consumer = Consumer::start(config).expect("consumer starts");

    let got = subscriber.take(messages.len());
    for m in &messages {
        assert!(got.iter().any(|(_, payload)| *payload == m.frame));
    }
    assert!(stream(&broker.topology, 1).is_empty());
    consumer.shutdown().expect("clean shutdown");
}

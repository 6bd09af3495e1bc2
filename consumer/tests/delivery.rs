//! The consumer against the real RabbitMQ and Redis: broadcast, ack,
//! dead-lettering, batching under a backlog, and shutdown while messages
//! flow.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use chatflow_consumer::fault::{self, Site};
use chatflow_consumer::Consumer;
use chatflow_protocol::routing_key;
use common::*;

/// Envelopes published to the exchange reach exactly their room's Redis
/// channel as the exact `message` frame, once each, and are acked.
#[test]
fn messages_are_broadcast_to_their_room_and_acked() {
    let ns = namespace();
    let config = config(&ns, 2);
    let mut broker = Broker::new(&config);
    let subscriber = Subscriber::new(&broker.topology);
    let consumer = Consumer::start(config).expect("consumer starts");

    // Rooms 1 and 2, several shards (user mod 5), two in one queue.
    let messages = vec![
        message(1, 12, "first"),
        message(1, 17, "second, same queue as first"),
        message(2, 10, "room two"),
        message(2, 11, "room two, shard one"),
        message(1, 3, "é \"quoted\" <tag>"),
    ];
    broker.publish_messages(&messages);

    let got = subscriber.take(messages.len());
    for m in &messages {
        let (channel, payload) = got
            .iter()
            .find(|(_, p)| message_id(p) == m.message_id)
            .unwrap_or_else(|| panic!("{} was not broadcast", m.message_id));
        assert_eq!(channel, &broker.topology.redis_channel(m.room));
        assert_eq!(
            unpositioned(payload),
            m.frame,
            "payload is exactly the message frame, with its position"
        );
    }
    assert!(count_ids(&got).values().all(|&n| n == 1));

    wait_until("every message acked", || {
        consumer.health().totals.acked == 5
    });
    let monitor = consumer.monitor();
    consumer.shutdown().expect("clean shutdown");
    let totals = monitor.health().totals;
    assert_eq!(
        (totals.consumed, totals.broadcasts, totals.acked),
        (5, 5, 5)
    );
    assert_eq!((totals.dead_lettered, totals.redelivered), (0, 0));
    // Acked, so nothing went back to the queues when the channels closed.
    assert_eq!(broker.total_depth(), 0);
    assert!(
        subscriber.try_take_all().is_empty(),
        "no duplicate broadcast"
    );
}

/// A poison message between valid ones in one queue is rejected to the
/// dead-letter queue, while the valid ones before and after it are
/// broadcast in order and acked.
#[test]
fn poison_messages_are_dead_lettered_and_the_queue_keeps_flowing() {
    let ns = namespace();
    let config = config(&ns, 1);
    let mut broker = Broker::new(&config);
    let subscriber = Subscriber::new(&broker.topology);

    // Users 3, 8, 13, 18 are all shard 3: one queue, one consumer thread.
    let good = [
        message(1, 3, "one"),
        message(1, 8, "two"),
        message(1, 13, "three"),
        message(1, 18, "four"),
    ];
    let poison_a: &[u8] = b"not json at all";
    let poison_b: &[u8] = br#"{"messageId":"x","roomId":1}"#;
    let bodies: Vec<&[u8]> = vec![
        &good[0].body,
        &good[1].body,
        poison_a,
        &good[2].body,
        poison_b,
        &good[3].body,
    ];
    let keys = vec![routing_key(1, 3); bodies.len()];
    // Published before the consumer starts, so they arrive as one batch
    // with the poison in its middle.
    broker.publish(&bodies, &keys);
    let consumer = Consumer::start(config).expect("consumer starts");

    let got = subscriber.take(good.len());
    let frames: Vec<String> = got.iter().map(|(_, p)| unpositioned(p)).collect();
    let expected: Vec<&str> = good.iter().map(|m| m.frame.as_str()).collect();
    assert_eq!(frames, expected, "valid messages broadcast in queue order");

    wait_until("acks and rejects", || {
        let t = consumer.health().totals;
        t.acked == 4 && t.dead_lettered == 2
    });
    let dlq = broker.topology.dead_letter_queue();
    wait_until("poison in the dead-letter queue", || {
        broker.depth(&dlq) == 2
    });
    assert_eq!(
        broker.drain(&dlq),
        vec![poison_a.to_vec(), poison_b.to_vec()]
    );

    consumer.shutdown().expect("clean shutdown");
    assert_eq!(broker.depth(&broker.topology.queue(1, 3)), 0);
}

/// A backlog of 5,003 messages over all five queues — full batches and a
/// partial last one — is broadcast once each, in per-sender order, and
/// acked without stalling.
#[test]
fn a_backlog_drains_completely_with_a_partial_final_batch() {
    const N: usize = 5_003;
    let ns = namespace();
    let config = config(&ns, 1);
    let mut broker = Broker::new(&config);
    let subscriber = Subscriber::new(&broker.topology);
    let messages: Vec<TestMessage> = (0..N)
        .map(|i| message(1, (i % 40) as u32 + 1, &i.to_string()))
        .collect();
    broker.publish_messages(&messages);
    let consumer = Consumer::start(config).expect("consumer starts");

    let got = subscriber.take(N);
    let ids = count_ids(&got);
    assert_eq!(ids.len(), N, "every message broadcast");
    assert!(ids.values().all(|&n| n == 1), "none twice");
    // One sender's messages go through one queue and one thread: in order.
    let mut last: HashMap<u64, usize> = HashMap::new();
    for (_, payload) in &got {
        let v: serde_json::Value = serde_json::from_str(payload).unwrap();
        let user = v["userId"].as_u64().unwrap();
        let seq: usize = v["message"].as_str().unwrap().parse().unwrap();
        if let Some(prev) = last.insert(user, seq) {
            assert!(prev < seq, "user {user}: {seq} after {prev}");
        }
    }
    wait_until("every message acked", || {
        consumer.health().totals.acked == N as u64
    });
    let health = consumer.health();
    assert!(health.totals.batches < N as u64, "messages were batched");
    assert!(
        health.latency.batch_size.max <= 100,
        "batches bounded by ACK_BATCH"
    );
    consumer.shutdown().expect("clean shutdown");
    assert_eq!(broker.total_depth(), 0);
}

/// Shutdown while messages flow returns Ok promptly; what it acked was
/// broadcast, the rest is still queued, and the next consumer delivers it:
/// nothing is lost.
#[test]
fn shutdown_while_flowing_leaves_unacked_messages_for_the_next_consumer() {
    let ns = namespace();
    let config = config(&ns, 1);
    let mut broker = Broker::new(&config);
    let subscriber = Subscriber::new(&broker.topology);

    // A backlog, plus a publisher that keeps publishing during shutdown.
    let backlog: Vec<TestMessage> = (0..2_000)
        .map(|i| message(1, i % 25 + 1, "backlog"))
        .collect();
    broker.publish_messages(&backlog);
    let mut published: Vec<String> = backlog.iter().map(|m| m.message_id.clone()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (stop, config) = (stop.clone(), config.clone());
        thread::spawn(move || {
            let mut broker = Broker::publisher(&config);
            let mut ids = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<TestMessage> =
                    (0..100).map(|i| message(1, i % 25 + 1, "live")).collect();
                broker.publish_messages(&batch);
                ids.extend(batch.into_iter().map(|m| m.message_id));
            }
            ids
        })
    };

    let consumer = Consumer::start(config.clone()).expect("consumer starts");
    wait_until("some messages acked", || {
        consumer.health().totals.acked >= 300
    });
    let monitor = consumer.monitor();
    let started = Instant::now();
    consumer.shutdown().expect("clean shutdown while flowing");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "shutdown is prompt (a hang detector, not a performance bound)"
    );
    stop.store(true, Ordering::Relaxed);
    published.extend(publisher.join().expect("publisher"));

    let totals = monitor.health().totals;
    let n = published.len() as u64;
    assert!(
        totals.acked < n,
        "shut down while messages were still queued"
    );
    assert!(
        totals.broadcasts >= totals.acked,
        "nothing acked unbroadcast"
    );
    // Everything not acked is back in (or still in) the queues.
    wait_until("unacked messages requeued", || {
        broker.total_depth() as u64 == n - totals.acked
    });

    // The next consumer delivers the rest.
    let second = Consumer::start(config).expect("second consumer starts");
    let mut seen = HashMap::new();
    let deadline = Instant::now() + TIMEOUT;
    while seen.len() < published.len() {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} delivered",
            seen.len()
        );
        for (_, payload) in subscriber.take(1) {
            *seen.entry(message_id(&payload)).or_insert(0usize) += 1;
        }
    }
    for id in &published {
        assert!(seen.contains_key(id), "{id} lost");
    }
    wait_until("second consumer acked the rest", || {
        second.health().totals.acked == n - totals.acked
    });
    second.shutdown().expect("clean shutdown");
    assert_eq!(broker.total_depth(), 0);
}

/// A queue consumer that panics shows in /health: status degraded naming
/// its thread, no longer counted as connected; its delivery goes back to
/// the queue, unacked; the other queues keep flowing; and shutdown reports
/// the panic. The panic comes from the hidden fault hook
/// (`chatflow_consumer::fault`), keyed by a text only this test sends.
#[test]
fn a_queue_consumer_that_panics_shows_in_health() {
    let ns = namespace();
    let config = config(&ns, 1);
    let mut broker = Broker::new(&config);
    let consumer = Consumer::start(config).expect("consumer starts");
    wait_until("health ok", || consumer.health().status == "ok");
    let marker = format!("panic the consumer of {ns}");
    fault::panic_on(Site::QueueConsumer, &marker);
    // User 2: queue (1, 2), consumer-r1s2.
    broker.publish_messages(&[message(1, 2, &marker)]);
    wait_until("the dead consumer in /health", || {
        consumer
            .health()
            .dead_threads
            .iter()
            .any(|d| d.name == "consumer-r1s2")
    });
    let health = consumer.health();
    assert_eq!(health.status, "degraded");
    let reason = health.reason.unwrap();
    assert!(
        reason.contains("consumer-r1s2 panicked: fault injected"),
        "{reason}"
    );
    let queue = broker.topology.queue(1, 2);
    wait_until("its delivery back in the queue", || {
        broker.depth(&queue) == 1
    });
    // Other queues keep flowing (their link may have to reconnect first).
    broker.publish_messages(&[message(1, 1, "still flowing")]);
    wait_until("the other queue's message acked", || {
        consumer.health().totals.acked == 1
    });
    assert_eq!(
        consumer.health().rabbitmq.consumers_connected,
        4,
        "the dead one is not counted"
    );
    let err = consumer.shutdown().expect_err("a thread panicked");
    assert!(err.to_string().contains("consumer-r1s2"), "{err}");
}

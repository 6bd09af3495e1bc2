//! The broadcaster's late replies against the real Redis: batches written
//! and not yet read back are confirmed in order, and a connection lost
//! before their replies were read publishes every one of them again.

mod common;

use chatflow_broker::retry::shutdown_signal;
use chatflow_consumer::broadcast::{Batch, Broadcaster, Published};
use chatflow_consumer::counters::QueueStats;
use chatflow_testkit::HistoryGuard;
use common::proxy::Proxy;
use common::{config, namespace};

fn redis() -> redis::Connection {
    redis::Client::open(common::REDIS_URL)
        .unwrap()
        .get_connection()
        .unwrap()
}

/// A batch of one frame for room 1 whose text is `text`.
fn batch_of(text: &str) -> Batch {
    let mut batch = Batch::with_capacity(1);
    batch.push(1, format!(r#"{{"type":"message","text":"{text}"}}"#));
    batch
}

/// The texts in room 1's history stream, oldest first.
fn history(con: &mut redis::Connection, stream: &str) -> Vec<String> {
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(con)
        .unwrap();
    entries
        .into_iter()
        .map(|(_, fields)| {
            let frame = &fields[1];
            let text = frame.split(r#""text":""#).nth(1).expect("a text field");
            text.split('"').next().unwrap().to_string()
        })
        .collect()
}

#[test]
fn sent_batches_are_read_back_in_order_when_confirmed() {
    let ns = namespace();
    let config = config(&ns, 1);
    let _history = HistoryGuard(config.topology());
    let stream = config.topology().history_stream(1);
    let stats = QueueStats::default();
    let (_stop, shutdown) = shutdown_signal();
    let mut broadcaster = Broadcaster::new("test".into(), &config, 1).unwrap();

    for text in ["a", "b", "c"] {
        assert_eq!(
            broadcaster.send(batch_of(text), &stats, &shutdown),
            Published::Yes
        );
    }
    assert_eq!(broadcaster.unconfirmed(), 3, "no reply read at send");
    assert_eq!(broadcaster.confirm(&stats, &shutdown), Published::Yes);
    assert_eq!(broadcaster.unconfirmed(), 0);
    assert_eq!(history(&mut redis(), &stream), ["a", "b", "c"]);
    assert_eq!(
        stats
            .redis_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn a_connection_lost_before_its_replies_were_read_publishes_them_again() {
    let ns = namespace();
    let proxy = Proxy::start(chatflow_testkit::services::redis_addr());
    let mut config = config(&ns, 1);
    config
        .services
        .redis
        .set_direct(chatflow_broker::HostPort::loopback(proxy.port()));
    let _history = HistoryGuard(config.topology());
    let stream = config.topology().history_stream(1);
    let stats = QueueStats::default();
    let (_stop, shutdown) = shutdown_signal();
    let mut broadcaster = Broadcaster::new("test".into(), &config, 1).unwrap();

    assert_eq!(
        broadcaster.send(batch_of("a"), &stats, &shutdown),
        Published::Yes
    );
    assert_eq!(broadcaster.confirm(&stats, &shutdown), Published::Yes);
    // The connection goes while "b" and "c" are written or in flight:
    // neither reply can be read on it any more. Redis comes back a little
    // later (a send that sees the cut retries until then).
    proxy.cut();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(300));
            proxy.restore();
        });
        for text in ["b", "c"] {
            assert_eq!(
                broadcaster.send(batch_of(text), &stats, &shutdown),
                Published::Yes
            );
        }
        assert_eq!(broadcaster.confirm(&stats, &shutdown), Published::Yes);
    });
    assert_eq!(broadcaster.unconfirmed(), 0);
    assert!(
        stats
            .redis_errors
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "the lost connection was seen"
    );
    let texts = history(&mut redis(), &stream);
    // Whatever Redis took before the cut may be there twice; nothing is
    // missing, and each first appears in the order sent.
    let mut first_seen: Vec<&str> = Vec::new();
    for text in &texts {
        if !first_seen.contains(&text.as_str()) {
            first_seen.push(text);
        }
    }
    assert_eq!(first_seen, ["a", "b", "c"], "history: {texts:?}");
}

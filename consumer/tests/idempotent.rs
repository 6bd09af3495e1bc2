//! Idempotent sends over the real path (two servers, RabbitMQ, the
//! consumer, Redis, PostgreSQL): a `(userId, clientMessageId)` names one
//! message. Its retry — on the same connection or through another server —
//! gets the first ack (same `messageId` and `serverTimestamp`), is stored
//! once and broadcast once; a name whose first send never got confirmed is
//! published again under the id the sent log holds; another user's message
//! of the same `clientMessageId` is another message; and with the sent log
//! unreachable a named message is refused as never sent (an unnamed one
//! still goes through).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use chatflow_consumer::Consumer;
use chatflow_testkit::database::TestDatabase;
use chatflow_testkit::Proxy;
use common::chat::*;
use common::{namespace, persistent, wait_until, Broker};
use serde_json::Value;

/// Sends `text` and returns its reply (ack or error), skipping broadcasts.
fn reply(client: &mut Client, text: String) -> Value {
    send(client, text);
    loop {
        let frame = next_frame(client).expect("a reply before the timeout");
        if frame["type"] != "message" {
            return frame;
        }
    }
}

/// Every broadcast a listener receives until it has been quiet for `quiet`:
/// message id → how many times.
fn broadcasts(listener: &mut Client, quiet: Duration) -> HashMap<String, usize> {
    set_timeout(listener, quiet);
    let mut seen = HashMap::new();
    while let Some(frame) = next_frame(listener) {
        if frame["type"] == "message" {
            *seen
                .entry(frame["messageId"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
    }
    seen
}

#[test]
fn a_retry_anywhere_gets_the_first_ack_and_makes_one_message() {
    let ns = namespace();
    let db = TestDatabase::new(&ns);
    let config = persistent(&ns, 1, &db.name);
    let _broker = Broker::new(&config);
    let consumer = Consumer::start(config).expect("consumer starts");
    let a = server(&ns, 1, "server-a");
    let b = server(&ns, 1, "server-b");
    let mut listener = connect(&b, 1);
    let mut on_a = connect(&a, 1);
    let mut on_b = connect(&b, 1);

    let first = reply(&mut on_a, chat_message(42, "hello once", "msg-1"));
    assert_eq!(first["type"], "ack", "{first}");
    // The same name again: on the same connection, and through server B.
    let same = reply(&mut on_a, chat_message(42, "hello once", "msg-1"));
    let elsewhere = reply(&mut on_b, chat_message(42, "hello once", "msg-1"));
    for retry in [&same, &elsewhere] {
        assert_eq!(retry["type"], "ack", "{retry}");
        assert_eq!(retry["messageId"], first["messageId"]);
        assert_eq!(retry["serverTimestamp"], first["serverTimestamp"]);
        assert_eq!(retry["clientMessageId"], "msg-1");
    }
    // Another user's message of the same name is a message of its own.
    let other = reply(&mut on_b, chat_message(7, "hello too", "msg-1"));
    assert_eq!(other["type"], "ack");
    assert_ne!(other["messageId"], first["messageId"]);

    wait_until("both messages stored", || db.rows() == 2);
    let id = first["messageId"].as_str().unwrap().to_string();
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM messages WHERE message_id = '{id}'"
        )),
        1,
        "stored once"
    );
    let seen = broadcasts(&mut listener, Duration::from_secs(2));
    assert_eq!(seen.get(&id), Some(&1), "broadcast once: {seen:?}");
    assert_eq!(seen.len(), 2, "{seen:?}");
    let health = consumer.health();
    assert_eq!(
        health.totals.broadcasts_suppressed, 2,
        "the two republished copies"
    );
    a.shutdown().unwrap();
    b.shutdown().unwrap();
    consumer.shutdown().unwrap();
}

#[test]
fn an_unconfirmed_first_send_is_published_again_under_its_id() {
    let ns = namespace();
    let db = TestDatabase::new(&ns);
    let config = persistent(&ns, 1, &db.name);
    let topology = config.topology();
    let _broker = Broker::new(&config);
    let consumer = Consumer::start(config).expect("consumer starts");
    let a = server(&ns, 1, "server-a");
    // A first send that reached the sent log but never the broker (its
    // server died in between): the log holds its id and time.
    let id = chatflow_protocol::IdGenerator::with_instance(77).next_id(1_796_000_000_000);
    let mut redis = redis::Client::open("redis://127.0.0.1:6379/")
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(topology.sent_key(5, "lost-1"))
        .arg(format!("{id}|1796000000000"))
        .arg("EX")
        .arg(60)
        .query(&mut redis)
        .unwrap();
    let mut listener = connect(&a, 1);
    let mut client = connect(&a, 1);
    let ack = reply(&mut client, chat_message(5, "did it go?", "lost-1"));
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["messageId"], id.to_string());
    assert_eq!(ack["serverTimestamp"], "2026-11-30T00:53:20.000Z");
    wait_until("stored under the first id", || {
        db.count(&format!(
            "SELECT count(*) FROM messages WHERE message_id = '{id}'"
        )) == 1
    });
    let seen = broadcasts(&mut listener, Duration::from_secs(2));
    assert_eq!(seen.get(&id.to_string()), Some(&1), "{seen:?}");
    a.shutdown().unwrap();
    consumer.shutdown().unwrap();
}

#[test]
fn without_the_sent_log_named_messages_are_refused_as_never_sent() {
    let ns = namespace();
    let config = common::config(&ns, 1);
    let _broker = Broker::new(&config);
    let consumer = Consumer::start(config).expect("consumer starts");
    // Server A reaches Redis through a proxy the test cuts.
    let proxy = Proxy::start("127.0.0.1:6379".parse().unwrap());
    let a = server_with_redis(&ns, 1, "server-a", proxy.port());
    let mut client = connect(&a, 1);
    assert_eq!(
        reply(&mut client, chat_message(9, "before", "n-1"))["type"],
        "ack"
    );
    proxy.cut();
    let refused = reply(&mut client, chat_message(9, "during", "n-2"));
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "UNAVAILABLE");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("never reached the broker"),
        "{refused}"
    );
    // A message without a name needs no log.
    let mut unnamed: Value = serde_json::from_str(&chat_message(9, "anonymous", "x")).unwrap();
    unnamed.as_object_mut().unwrap().remove("clientMessageId");
    assert_eq!(reply(&mut client, unnamed.to_string())["type"], "ack");
    proxy.restore();
    wait_until("named messages go through again", || {
        reply(&mut client, chat_message(9, "after", "n-3"))["type"] == "ack"
    });
    a.shutdown().unwrap();
    consumer.shutdown().unwrap();
}

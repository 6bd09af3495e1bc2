//! The whole path with real services: WebSocket client → server A →
//! RabbitMQ → consumer → Redis → servers A and B → room members, and
//! PostgreSQL.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use chatflow_consumer::{Config, Consumer};
use chatflow_testkit::database::TestDatabase;
use common::chat::*;
use common::{config, namespace, wait_until, Broker};

/// Messages sent to server A reach the room's members on server B (and on
/// A), in each sender's order, reach nobody in another room, and are each
/// stored once.
#[test]
fn messages_cross_servers_in_order_and_are_stored() {
    let ns = namespace();
    let db = TestDatabase::new(&ns);
    let mut consumer_config = Config {
        enable_persistence: true,
        ..config(&ns, 2)
    };
    consumer_config.database.settings.name = db.name.clone();
    consumer_config.database.apply_schema = true;
    consumer_config.database.flush_interval = Duration::from_millis(50);
    let _broker = Broker::new(&consumer_config); // deletes the topology at the end
    let consumer = Consumer::start(consumer_config).expect("consumer starts");
    let a = server(&ns, 2, "server-a");
    let b = server(&ns, 2, "server-b");

    let mut sender = connect(&a, 1);
    let mut on_a = connect(&a, 1);
    let mut on_b: Vec<Client> = (0..3).map(|_| connect(&b, 1)).collect();
    let mut other_room = connect(&b, 2);

    const N: usize = 150;
    for i in 0..N {
        send(
            &mut sender,
            chat_message(42, &format!("m{i}"), &i.to_string()),
        );
    }
    let mut acked = HashSet::new();
    while acked.len() < N {
        let frame = next_frame(&mut sender).expect("an ack before the timeout");
        match frame["type"].as_str().unwrap() {
            "ack" => {
                acked.insert(frame["messageId"].as_str().unwrap().to_string());
            }
            "message" => {}
            other => panic!("unexpected {other}: {frame}"),
        }
    }
    for member in on_b.iter_mut().chain(std::iter::once(&mut on_a)) {
        for i in 0..N {
            let frame = next_frame(member).expect("a broadcast before the timeout");
            assert_eq!(frame["type"], "message");
            assert_eq!(frame["message"], format!("m{i}"), "per-sender order");
            assert_eq!(frame["roomId"], 1);
            assert!(acked.contains(frame["messageId"].as_str().unwrap()));
        }
    }
    // Room 2 got none of it: its first frame is the ack of its own message.
    send(&mut other_room, chat_message(7, "room two", "r2"));
    let first = next_frame(&mut other_room).unwrap();
    assert_eq!(first["type"], "ack", "{first}");

    wait_until("every acked message is stored", || {
        db.rows() == N as i64 + 1
    });
    let stored: HashSet<String> = db.ids().into_iter().collect();
    assert!(acked.is_subset(&stored));
    let servers: i64 = db.count("SELECT count(DISTINCT server_id) FROM messages WHERE room_id = 1");
    assert_eq!(servers, 1, "all room-1 messages were accepted by server A");
    a.shutdown().unwrap();
    b.shutdown().unwrap();
    consumer.shutdown().unwrap();
}

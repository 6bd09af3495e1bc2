//! The server's side of the distributed path against real RabbitMQ and
//! Redis: acks wait for publisher confirms, envelopes land in the right
//! quorum queue, broker refusals become UNAVAILABLE, and broadcasts arriving
//! on Redis reach the room's members.

mod common;

use amiquip::{Connection, ConsumerMessage, ConsumerOptions};
use chatflow_protocol::{shard_of, Envelope};
use chatflow_server::Server;
use common::*;

fn amqp() -> Connection {
    Connection::insecure_open("amqp://guest:guest@127.0.0.1:5672/%2f")
        .expect("RabbitMQ on 127.0.0.1:5672")
}

/// An acked message is in its (room, shard) quorum queue, persistent, with
/// the envelope the consumer needs.
#[test]
fn acked_messages_are_in_their_quorum_queue() {
    let namespace = unique_namespace("queue");
    let server = Server::start(rabbit_config(&namespace, 2)).expect("server with RabbitMQ starts");
    let topology = server_topology(&namespace, 2);
    let _guard = TopologyGuard(topology.clone());
    let mut client = connect(server.local_addr(), 2);
    let ack = request(&mut client, message(12, "durable", "d1"));
    assert_eq!(ack["type"], "ack", "{ack}");

    let mut connection = amqp();
    let channel = connection.open_channel(None).unwrap();
    let queue = channel
        .queue_declare_passive(topology.queue(2, shard_of(12)))
        .unwrap();
    let consumer = queue.consume(ConsumerOptions::default()).unwrap();
    let delivery = match consumer.receiver().recv_timeout(TIMEOUT).unwrap() {
        ConsumerMessage::Delivery(d) => d,
        other => panic!("expected a delivery, got {other:?}"),
    };
    assert_eq!(delivery.properties.delivery_mode(), &Some(2), "persistent");
    let envelope = Envelope::decode(&delivery.body).unwrap();
    assert_eq!(
        envelope.message_id.to_string(),
        ack["messageId"].as_str().unwrap()
    );
    assert_eq!(envelope.room_id, 2);
    assert_eq!(envelope.user_id, 12);
    assert_eq!(envelope.message, "durable");
    assert_eq!(envelope.server_id, "test");
    consumer.ack(delivery).unwrap();
    // Dropping a consumer whose cancel is still in flight can tear down the
    // whole connection (amiquip; see CRATES.md), so wait for the cancel's
    // answer before dropping it.
    consumer.cancel().unwrap();
    loop {
        match consumer.receiver().recv_timeout(TIMEOUT).unwrap() {
            ConsumerMessage::Delivery(_) => continue,
            ConsumerMessage::ClientCancelled => break,
            other => panic!("expected the cancel's answer, got {other:?}"),
        }
    }
    drop(consumer);
    drop(queue);
    channel.close().unwrap();
    connection.close().unwrap();
    server.shutdown().unwrap();
}

/// When the broker refuses a message (here: its queue is at the configured
/// maximum length), the client gets UNAVAILABLE, and the connection goes on.
#[test]
fn broker_refusals_become_unavailable_errors() {
    let namespace = unique_namespace("nack");
    let mut config = rabbit_config(&namespace, 1);
    config.services.topology.queue_max_length = Some(2);
    let server = Server::start(config).unwrap();
    let _guard = TopologyGuard(server_topology_with_max(&namespace, 1, 2));
    let mut client = connect(server.local_addr(), 1);
    // User 5 always goes to shard 0. Quorum queues apply the limit once a
    // queue is over it, so up to max + 1 messages are accepted; after the
    // first refusal every further message is refused too.
    let replies: Vec<_> = (0..6)
        .map(|i| request(&mut client, message(5, "fill", &i.to_string())))
        .collect();
    let accepted = replies.iter().take_while(|r| r["type"] == "ack").count();
    assert!(
        (2..=3).contains(&accepted),
        "accepted {accepted}: {replies:?}"
    );
    for refused in &replies[accepted..] {
        assert_eq!(refused["type"], "error", "{refused}");
        assert_eq!(refused["code"], "UNAVAILABLE");
        assert!(refused["message"].as_str().unwrap().contains("refused"));
    }
    assert_eq!(replies[5]["clientMessageId"], "5");
    // Another shard of the room still has room.
    assert_eq!(
        request(&mut client, message(6, "other shard", "4"))["type"],
        "ack"
    );
    let totals = &health(server.local_addr())["totals"];
    assert_eq!(totals["messagesUnavailable"], 6 - accepted as u64);
    server.shutdown().unwrap();
}

/// A broadcast published on a room's Redis channel (as a consumer does)
/// reaches that room's members on every worker, unchanged, and nobody else.
#[test]
fn redis_broadcasts_reach_the_rooms_members() {
    let namespace = unique_namespace("redis");
    let server = Server::start(rabbit_config(&namespace, 3)).unwrap();
    let topology = server_topology(&namespace, 3);
    let _guard = TopologyGuard(topology.clone());
    let addr = server.local_addr();
    let mut members: Vec<Client> = (0..6).map(|_| connect(addr, 3)).collect();
    let mut outsider = connect(addr, 1);
    let frame = r#"{"type":"message","messageId":"0190a5c0-0000-7000-8000-000000000001","roomId":3,"userId":1,"username":"user1","message":"via redis","messageType":"TEXT","timestamp":"2026-11-27T02:00:00Z","serverTimestamp":"2026-11-27T02:00:00.001Z"}"#;
    let mut redis = redis::Client::open("redis://127.0.0.1:6379/")
        .unwrap()
        .get_connection()
        .unwrap();
    // The subscription is made before start returns.
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg(topology.redis_channel(3))
        .arg(frame)
        .query(&mut redis)
        .unwrap();
    assert_eq!(receivers, 1, "exactly one subscriber: this server");
    for member in members.iter_mut() {
        let got = recv_kind(member, "message");
        assert_eq!(
            got,
            serde_json::from_str::<serde_json::Value>(frame).unwrap()
        );
    }
    // The members have it, so a wrongly delivered copy would already sit in
    // the outsider's stream ahead of anything newer: its next frame must be
    // the ack of its own message.
    send(&mut outsider, message(7, "mine", "o"));
    assert_eq!(recv(&mut outsider)["type"], "ack");
    server.shutdown().unwrap();
}

fn server_topology(namespace: &str, rooms: u32) -> chatflow_protocol::Topology {
    rabbit_config(namespace, rooms).services.topology
}

fn server_topology_with_max(namespace: &str, rooms: u32, max: u32) -> chatflow_protocol::Topology {
    let mut topology = server_topology(namespace, rooms);
    topology.queue_max_length = Some(max);
    topology
}

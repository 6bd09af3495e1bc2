//! The broker boundary with a broker that answers later, from its own
//! thread, the way a durable broker answers with publisher confirms: acks go
//! out only on its word, refusals become UNAVAILABLE errors, and a client
//! that left before the answer costs nothing. Also: a broker that panics on
//! a worker's thread, to see a dead worker in `/health`.

mod common;

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use chatflow_protocol::Envelope;
use chatflow_server::broker::{Broker, Outcome};
use chatflow_server::fanout::{Fanout, PublishError, Ticket, WorkerEvent};
use chatflow_server::{BrokerKind, Server};
use common::*;
use crossbeam_channel::{unbounded, Sender};
use tungstenite::Utf8Bytes;

/// Answers every publish after a short delay on another thread; refuses
/// messages whose text is "refuse me".
struct DeferredBroker {
    requests: Sender<(Ticket, u32, String, bool)>,
}

impl DeferredBroker {
    fn start(fanout: Fanout) -> Arc<dyn Broker> {
        let (requests, incoming) = unbounded::<(Ticket, u32, String, bool)>();
        thread::spawn(move || {
            for (ticket, room, frame, refuse) in incoming {
                thread::sleep(Duration::from_millis(5));
                // Confirm first, then deliver: the order of the real path
                // (publisher confirm, then consumer, then Redis fan-out).
                let result = if refuse {
                    Err(PublishError::Nacked)
                } else {
                    Ok(None)
                };
                fanout.send_to(ticket.worker, WorkerEvent::Published { ticket, result });
                if !refuse {
                    fanout.broadcast(room, Utf8Bytes::from(frame), None);
                }
            }
        });
        Arc::new(DeferredBroker { requests })
    }
}

impl Broker for DeferredBroker {
    fn kind(&self) -> BrokerKind {
        BrokerKind::Memory
    }

    fn publish(&self, ticket: Ticket, envelope: &Envelope<'_>, _: Option<&str>) -> Outcome {
        let refuse = envelope.message == "refuse me";
        let _ = self
            .requests
            .send((ticket, envelope.room_id, envelope.broadcast_json(), refuse));
        Outcome::Pending
    }
}

fn start_deferred() -> Server {
    Server::start_with(
        config(BrokerKind::Memory),
        Box::new(|_, fanout| Ok(DeferredBroker::start(fanout))),
    )
    .unwrap()
}

/// Pending publishes are acked when the broker confirms, refused ones get
/// UNAVAILABLE with the client's id, and the connection keeps working.
#[test]
fn acks_wait_for_the_broker_and_refusals_become_unavailable() {
    let server = start_deferred();
    let addr = server.local_addr();
    let mut client = connect(addr, 4);
    let ack = request(&mut client, message(3, "confirmed", "a"));
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["clientMessageId"], "a");
    assert_eq!(recv_kind(&mut client, "message")["message"], "confirmed");

    let refused = request(&mut client, message(3, "refuse me", "b"));
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "UNAVAILABLE");
    assert_eq!(refused["clientMessageId"], "b");
    // A nack does not prove the message unstored: the text must not say so.
    assert_eq!(refused["message"], PublishError::Nacked.message());
    assert!(refused["message"]
        .as_str()
        .unwrap()
        .contains("may have been stored"));

    // Pipelined: answers come back for every message, matched by id.
    for i in 0..50 {
        send(
            &mut client,
            message(
                3,
                if i % 10 == 0 { "refuse me" } else { "ok" },
                &i.to_string(),
            ),
        );
    }
    let mut seen = std::collections::HashMap::new();
    while seen.len() < 50 {
        let frame = recv(&mut client);
        if frame["type"] != "message" {
            seen.insert(
                frame["clientMessageId"].as_str().unwrap().to_string(),
                frame["type"].clone(),
            );
        }
    }
    for i in 0..50 {
        let expected = if i % 10 == 0 { "error" } else { "ack" };
        assert_eq!(seen[&i.to_string()], expected, "message {i}");
    }
    let totals = &health(addr)["totals"];
    assert_eq!(totals["messagesAccepted"], 46);
    assert_eq!(totals["messagesUnavailable"], 6);
    server.shutdown().unwrap();
}

/// A client that disconnects before the broker answers leaves no trace and
/// no one else gets its ack.
#[test]
fn answers_for_departed_clients_are_dropped() {
    let server = start_deferred();
    let addr = server.local_addr();
    let mut leaver = connect(addr, 6);
    send(&mut leaver, message(8, "bye", "gone"));
    drop(leaver);
    // A new client probably reuses the departed one's slab slot.
    let mut next = connect(addr, 6);
    let ack = request(&mut next, message(9, "hello", "mine"));
    assert_eq!(ack["clientMessageId"], "mine");
    eventually("the departed client's message was still accepted", || {
        health(addr)["totals"]["messagesAccepted"] == 2
    });
    server.shutdown().unwrap();
}

/// Acks every message except "panic", on which it panics: on the worker's
/// thread, since `publish` runs there.
struct PanickingBroker;

impl Broker for PanickingBroker {
    fn kind(&self) -> BrokerKind {
        BrokerKind::Memory
    }

    fn publish(&self, _ticket: Ticket, envelope: &Envelope<'_>, _: Option<&str>) -> Outcome {
        if envelope.message == "panic" {
            panic!("test broker: panicking on a worker thread on purpose");
        }
        Outcome::Accepted
    }
}

/// A worker that panics shows in /health at once (degraded, and which
/// worker), gives back its connection slots, leaves the other worker
/// serving, and makes shutdown report the panic. (The panic message in the
/// test output is expected.)
#[test]
fn a_worker_that_panics_shows_in_health() {
    let server = Server::start_with(
        config(BrokerKind::Memory),
        Box::new(|_, _| Ok(Arc::new(PanickingBroker) as Arc<dyn Broker>)),
    )
    .unwrap();
    let addr = server.local_addr();
    let mut victim = connect(addr, 1);
    assert_eq!(request(&mut victim, message(1, "fine", "a"))["type"], "ack");
    assert_eq!(server.health().status, "ok");
    assert!(server.health().dead_workers.is_empty());

    send(&mut victim, message(1, "panic", "b"));
    assert!(
        victim.read().is_err(),
        "the connection dies with its worker"
    );
    eventually("the dead worker is reported", || {
        !server.health().dead_workers.is_empty()
    });
    let health = server.health();
    assert_eq!(health.status, "degraded");
    assert_eq!(health.dead_workers.len(), 1);
    assert!(health.dead_workers[0] < 2);
    assert_eq!(health.connections, 0, "its connection slot was given back");

    // The survivor answers, over HTTP and WebSocket alike.
    let over_http = common::health(addr);
    assert_eq!(over_http["status"], "degraded");
    assert_eq!(
        over_http["deadWorkers"],
        serde_json::json!(health.dead_workers)
    );
    let mut survivor = connect(addr, 1);
    assert_eq!(
        request(&mut survivor, message(2, "still here", "c"))["type"],
        "ack"
    );
    drop(survivor);

    let stopped = server.shutdown();
    assert!(
        stopped
            .as_ref()
            .is_err_and(|e| e.to_string().contains("panicked")),
        "{stopped:?}"
    );
}

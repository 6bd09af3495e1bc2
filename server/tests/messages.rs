//! Acks, validation errors, broadcasts and the HTTP side of the server, over
//! real sockets with real tungstenite clients.

mod common;

use std::collections::HashSet;

use chatflow_server::BrokerKind;
use common::*;

/// A valid message is acked with every documented field.
#[test]
fn valid_message_gets_an_ack_with_the_documented_fields() {
    let server = start(BrokerKind::None);
    let mut client = connect(server.local_addr(), 7);
    let ack = request(&mut client, message(42, "hello", "c-1"));
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["status"], "OK");
    assert_eq!(ack["roomId"], 7);
    assert_eq!(ack["clientMessageId"], "c-1");
    assert_eq!(ack["timestamp"], "2026-11-27T02:00:00.123Z");
    let id: chatflow_protocol::MessageId = ack["messageId"].as_str().unwrap().parse().unwrap();
    assert_eq!(id.as_uuid().get_version_num(), 7);
    let server_ts = ack["serverTimestamp"].as_str().unwrap();
    assert!(
        chatflow_protocol::time::parse_rfc3339_ms(server_ts).is_some(),
        "{server_ts}"
    );
    server.shutdown().unwrap();
}

/// Every kind of invalid message gets an error naming its code and field,
/// and the same connection then gets a valid message acked.
#[test]
fn invalid_messages_get_errors_and_the_connection_stays_usable() {
    let server = start(BrokerKind::None);
    let mut client = connect(server.local_addr(), 1);
    let ts = "2026-11-27T02:00:00Z";
    let cases = [
        ("not json".to_string(), "BAD_JSON", None),
        ("[1,2,3]".to_string(), "BAD_JSON", None),
        (
            format!(r#"{{"userId":0,"username":"user1","message":"hi","timestamp":"{ts}","messageType":"TEXT"}}"#),
            "VALIDATION_FAILED",
            Some(("userId", "OUT_OF_RANGE")),
        ),
        (
            format!(r#"{{"userId":"100001","username":"user1","message":"hi","timestamp":"{ts}","messageType":"TEXT"}}"#),
            "VALIDATION_FAILED",
            Some(("userId", "OUT_OF_RANGE")),
        ),
        (
            format!(r#"{{"userId":1,"username":"ab","message":"hi","timestamp":"{ts}","messageType":"TEXT"}}"#),
            "VALIDATION_FAILED",
            Some(("username", "TOO_SHORT")),
        ),
        (
            format!(r#"{{"userId":1,"username":"bad name","message":"hi","timestamp":"{ts}","messageType":"TEXT"}}"#),
            "VALIDATION_FAILED",
            Some(("username", "INVALID_CHARACTERS")),
        ),
        (
            format!(
                r#"{{"userId":1,"username":"user1","message":"{}","timestamp":"{ts}","messageType":"TEXT"}}"#,
                "é".repeat(501)
            ),
            "VALIDATION_FAILED",
            Some(("message", "TOO_LONG")),
        ),
        (
            format!(r#"{{"userId":1,"username":"user1","message":"","timestamp":"{ts}","messageType":"TEXT"}}"#),
            "VALIDATION_FAILED",
            Some(("message", "TOO_SHORT")),
        ),
        (
            r#"{"userId":1,"username":"user1","message":"hi","timestamp":"yesterday","messageType":"TEXT"}"#.to_string(),
            "VALIDATION_FAILED",
            Some(("timestamp", "INVALID_FORMAT")),
        ),
        (
            format!(r#"{{"userId":1,"username":"user1","message":"hi","timestamp":"{ts}","messageType":"text"}}"#),
            "VALIDATION_FAILED",
            Some(("messageType", "UNKNOWN_VALUE")),
        ),
        (
            format!(r#"{{"userId":1,"username":"user1","message":"hi","timestamp":"{ts}"}}"#),
            "VALIDATION_FAILED",
            Some(("messageType", "MISSING")),
        ),
        (
            format!(r#"{{"userId":true,"username":"user1","message":"hi","timestamp":"{ts}","messageType":"TEXT"}}"#),
            "VALIDATION_FAILED",
            Some(("userId", "WRONG_TYPE")),
        ),
    ];
    for (text, code, field) in cases {
        let reply = request(&mut client, text.clone());
        assert_eq!(reply["type"], "error", "{text}");
        assert_eq!(reply["status"], "ERROR", "{text}");
        assert_eq!(reply["code"], code, "{text}");
        assert!(!reply["message"].as_str().unwrap().is_empty());
        if let Some((field, reason)) = field {
            assert_eq!(reply["field"], field, "{text}");
            assert_eq!(reply["reason"], reason, "{text}");
        }
        // The connection is still good for a valid message.
        let ack = request(&mut client, message(5, "still here", "ok"));
        assert_eq!(ack["type"], "ack", "after {text}");
    }
    let totals = &health(server.local_addr())["totals"];
    assert_eq!(totals["messagesRejected"], 12);
    assert_eq!(totals["messagesAccepted"], 12);
    server.shutdown().unwrap();
}

/// The clientMessageId comes back on errors too, so pipelined clients can
/// match every reply.
#[test]
fn errors_echo_the_client_message_id() {
    let server = start(BrokerKind::None);
    let mut client = connect(server.local_addr(), 1);
    let text = r#"{"userId":1,"username":"x","message":"hi","timestamp":"2026-11-27T02:00:00Z","messageType":"TEXT","clientMessageId":"abc"}"#;
    let reply = request(&mut client, text.to_string());
    assert_eq!(reply["code"], "VALIDATION_FAILED");
    assert_eq!(reply["clientMessageId"], "abc");
    server.shutdown().unwrap();
}

/// A broadcast reaches every member of the room on every worker, the
/// sender included, and nobody in another room.
#[test]
fn broadcast_reaches_the_whole_room_on_every_worker_and_no_one_else() {
    let server = start(BrokerKind::Memory);
    let addr = server.local_addr();
    let mut room3: Vec<Client> = (0..16).map(|_| connect(addr, 3)).collect();
    let mut room4: Vec<Client> = (0..4).map(|_| connect(addr, 4)).collect();
    // SO_REUSEPORT spreads connections by hash; 20 connections leave both
    // workers empty-handed with probability 2^-19.
    let per_worker = health(addr)["connectionsPerWorker"].clone();
    assert!(
        per_worker
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n.as_u64().unwrap() > 0),
        "both workers hold members: {per_worker}"
    );
    let ack = request(&mut room3[0], message(9, "to room 3", "b-1"));
    assert_eq!(ack["type"], "ack");
    let id = ack["messageId"].clone();
    for (i, client) in room3.iter_mut().enumerate() {
        let frame = recv_kind(client, "message");
        assert_eq!(frame["messageId"], id, "member {i}");
        assert_eq!(frame["roomId"], 3);
        assert_eq!(frame["userId"], 9);
        assert_eq!(frame["username"], "user9");
        assert_eq!(frame["message"], "to room 3");
        assert_eq!(frame["messageType"], "TEXT");
        assert_eq!(frame["timestamp"], "2026-11-27T02:00:00.123Z");
        assert!(frame["serverTimestamp"].is_string());
    }
    // Room 4 sees only its own message: the room-3 broadcast never came.
    let ack = request(&mut room4[0], message(10, "to room 4", "b-2"));
    let id4 = ack["messageId"].clone();
    for client in room4.iter_mut() {
        let frame = recv_kind(client, "message");
        assert_eq!(frame["messageId"], id4);
        assert_eq!(frame["roomId"], 4);
    }
    let totals = &health(addr)["totals"];
    assert_eq!(totals["broadcastFramesSent"], 20);
    server.shutdown().unwrap();
}

/// Messages of one sender reach room members in the order sent.
#[test]
fn one_senders_messages_arrive_in_order() {
    let server = start(BrokerKind::Memory);
    let addr = server.local_addr();
    let mut sender = connect(addr, 2);
    let mut listener = connect(addr, 2);
    for i in 0..200 {
        send(&mut sender, message(1, &format!("m{i}"), &i.to_string()));
    }
    for i in 0..200 {
        let frame = recv_kind(&mut listener, "message");
        assert_eq!(frame["message"], format!("m{i}"));
    }
    let mut ids = HashSet::new();
    for _ in 0..200 {
        ids.insert(recv_kind(&mut sender, "ack")["messageId"].to_string());
    }
    assert_eq!(ids.len(), 200, "every ack has its own id");
    server.shutdown().unwrap();
}

/// Paths other than /chat/{room} and /health, and rooms out of range, get
/// HTTP errors before any upgrade; /health answers 200 with JSON.
#[test]
fn http_routes_and_errors() {
    let server = start(BrokerKind::Memory);
    let addr = server.local_addr();
    let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    for (path, expected) in [
        ("/nope", 404),
        ("/chat/0", 404),
        ("/chat/21", 404),
        ("/chat/abc", 400),
        ("/", 404),
    ] {
        let (status, body) = http_get(addr, path, upgrade);
        assert_eq!(status, expected, "{path}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(!v["error"].as_str().unwrap().is_empty(), "{path}: {body}");
    }
    let (status, _) = http_get(addr, "/chat/1", "");
    assert_eq!(
        status, 426,
        "a plain GET of a chat path asks for an upgrade"
    );
    assert!(tungstenite::connect(format!("ws://{addr}/chat/99")).is_err());

    let h = health(addr);
    assert_eq!(h["status"], "ok");
    assert_eq!(h["workers"], 2);
    assert_eq!(h["broker"]["kind"], "memory");
    assert!(h["uptimeSeconds"].as_f64().unwrap() >= 0.0);
    let _client = connect(addr, 1);
    eventually("health counts the connection", || {
        health(addr)["connections"] == 1
    });
    server.shutdown().unwrap();
}

/// Connections past MAX_CONNECTIONS are refused with 503 at the handshake;
/// a slot frees when a client leaves.
#[test]
fn connections_over_the_limit_get_503() {
    let server = chatflow_server::Server::start(chatflow_server::Config {
        max_connections: 3,
        ..config(BrokerKind::None)
    })
    .unwrap();
    let addr = server.local_addr();
    let mut clients: Vec<Client> = (0..3).map(|_| connect(addr, 1)).collect();
    match tungstenite::connect(format!("ws://{addr}/chat/1")) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("expected a 503, got {:?}", other.map(|(_, r)| r.status())),
    }
    clients.pop().unwrap().close(None).unwrap();
    eventually("a slot frees up", || {
        tungstenite::connect(format!("ws://{addr}/chat/1")).is_ok()
    });
    assert!(
        health(addr)["totals"]["refusedOverCapacity"]
            .as_u64()
            .unwrap()
            >= 1
    );
    server.shutdown().unwrap();
}

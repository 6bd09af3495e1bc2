//! The whole path with real services: WebSocket client → server A →
//! RabbitMQ → consumer → Redis → servers A and B → room members, and
//! PostgreSQL — and back out through the read API: a load run's acked
//! messages are what the API pages out and counts, and the run's
//! `metrics.json` says so.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use chatflow_client::{ApiUrl, Endpoint, ProgressMode};
use chatflow_consumer::Consumer;
use chatflow_testkit::database::TestDatabase;
use common::chat::*;
use common::{namespace, persistent, wait_until, Broker};

/// Messages sent to server A reach the room's members on server B (and on
/// A), in each sender's order, reach nobody in another room, and are each
/// stored once.
#[test]
fn messages_cross_servers_in_order_and_are_stored() {
    let ns = namespace();
    let db = TestDatabase::new(&ns);
    let consumer_config = persistent(&ns, 2, &db.name);
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
    // Room 2 got none of it: up to the ack of its own message it hears
    // only that message (whose broadcast may overtake its ack: the ack
    // waits for the confirm's trip back through the publisher thread).
    send(&mut other_room, chat_message(7, "room two", "r2"));
    loop {
        let frame = next_frame(&mut other_room).expect("the ack before the timeout");
        if frame["type"] == "ack" {
            break;
        }
        assert_eq!(frame["type"], "message", "{frame}");
        assert_eq!(frame["roomId"], 2, "only room 2's own message: {frame}");
        assert_eq!(frame["message"], "room two", "{frame}");
    }

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

/// A load run through the whole system, then the read side: the API pages
/// out exactly the run's acked messages, its analytics count them, and the
/// client's end-of-run fetch writes `metrics.json` with the stored count
/// equal to the acked one.
#[test]
fn a_load_run_is_read_back_through_the_api() {
    let ns = namespace();
    let db = TestDatabase::new(&ns);
    let consumer_config = persistent(&ns, 2, &db.name);
    let _broker = Broker::new(&consumer_config);
    let consumer = Consumer::start(consumer_config).expect("consumer starts");
    let server = server_with_api(&ns, 2, "server-api", Some(&db.name));
    let api = server.api_addr().expect("the API is on");

    let out = std::env::temp_dir().join(format!("chatflow-e2e-{ns}"));
    let _ = std::fs::remove_dir_all(&out);
    let report = chatflow_client::run(chatflow_client::Config {
        urls: vec![Endpoint::parse(&format!("ws://{}", server.local_addr())).unwrap()],
        rooms: 2,
        total: 600,
        threads: 4,
        window: 4,
        warmup_threads: 0,
        seed: Some(3),
        out_dir: Some(out.clone()),
        progress: ProgressMode::Off,
        charts: false,
        delivery_timeout: Duration::from_secs(5),
        api_url: Some(ApiUrl::parse(&format!("http://{api}")).unwrap()),
        metrics_settle: Duration::from_secs(20),
        ..chatflow_client::Config::default()
    })
    .expect("the run completes");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let acked = summary["metrics"]["acked"].as_u64().unwrap();
    assert_eq!(acked, 600, "{summary}");
    assert_eq!(
        summary["metrics"]["storedMessages"], 600,
        "{}",
        summary["metrics"]
    );
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["analytics"]["totalMessages"], 600);
    assert_eq!(
        metrics["coreQueries"]["activeUsers"],
        metrics["analytics"]["activeUsers"]
    );
    assert_eq!(report.exit_code(), 0, "the run succeeded");

    // Every stored row, paged out of both rooms, is one of the run's.
    let mut paged = HashSet::new();
    for room in 1..=2 {
        let mut target = format!("/api/rooms/{room}/messages?limit=250");
        loop {
            let (status, body) =
                chatflow_testkit::http_request(api, "GET", &target, Duration::from_secs(10))
                    .into_parts();
            assert_eq!(status, 200, "{body}");
            let page: serde_json::Value = serde_json::from_str(&body).unwrap();
            for m in page["messages"].as_array().unwrap() {
                assert!(paged.insert(m["messageId"].as_str().unwrap().to_string()));
            }
            match page["nextCursor"].as_str() {
                Some(c) => target = format!("/api/rooms/{room}/messages?limit=250&cursor={c}"),
                None => break,
            }
        }
    }
    let stored: HashSet<String> = db.ids().into_iter().collect();
    assert_eq!(paged, stored, "the API pages out exactly what is stored");
    assert_eq!(stored.len(), 600);
    let _ = std::fs::remove_dir_all(&out);
    server.shutdown().unwrap();
    consumer.shutdown().unwrap();
}

//! `chatflow-client metrics` (the real binary) against a real server's
//! read API over a real PostgreSQL database seeded with known messages:
//! the tables show what is stored.

mod common;

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use chatflow_database::row::unix_ms;
use chatflow_database::{copy_batch, schema, DatabaseSettings, Rollups, Row};
use chatflow_server::config::ApiConfig;
use chatflow_server::{BrokerKind, Server};
use chatflow_testkit::database::TestDatabase;
use chatflow_testkit::unique_namespace;

fn row(n: u128, user: i32, room: i32, text: &str, ms: i64) -> Row {
    Row {
        message_id: uuid::Uuid::from_u128(((ms as u128) << 64) | n),
        room_id: room,
        user_id: user,
        username: format!("user{user}"),
        message: text.to_string(),
        message_type: "TEXT",
        client_timestamp: unix_ms(ms),
        server_timestamp: unix_ms(ms),
        server_id: "live".into(),
    }
}

#[test]
fn the_tables_show_what_a_live_server_has_stored() {
    let db = TestDatabase::new(&unique_namespace("client-live")).with_schema();
    let mut client = db.client();
    schema::ensure_partitions(&mut client).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut rows: Vec<Row> = (0..30)
        .map(|i| {
            row(
                i,
                4242,
                6,
                &format!("hello number {i}"),
                now - 60_000 + i as i64,
            )
        })
        .collect();
    rows.push(row(99, 7, 3, "a lone message", now - 30_000));
    copy_batch(&mut client, &rows, Rollups::Maintain).unwrap();

    let server = Server::start(chatflow_server::Config {
        bind: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        pin_workers: false,
        broker: BrokerKind::Memory,
        api: Some(ApiConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            threads: 1,
            database: DatabaseSettings {
                name: db.name.clone(),
                ..DatabaseSettings::default()
            },
            ..ApiConfig::default()
        }),
        ..chatflow_server::Config::default()
    })
    .expect("server starts");
    let api = format!("http://{}", server.api_addr().unwrap());
    let out = Command::new(env!("CARGO_BIN_EXE_chatflow-client"))
        .args(["metrics", "--api-url", &api, "--limit", "5"])
        .output()
        .expect("the binary runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The busiest room and user of the last hour, their newest messages,
    // and the counts.
    assert!(text.contains("hello number 29"), "{text}");
    assert!(
        !text.contains("hello number 20 "),
        "only the 5 newest: {text}"
    );
    assert!(text.contains("4242"), "{text}");
    assert!(text.contains("31"), "31 messages in the window: {text}");
    let json = Command::new(env!("CARGO_BIN_EXE_chatflow-client"))
        .args(["metrics", "--api-url", &api, "--json"])
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).expect("--json is JSON");
    assert_eq!(doc["analytics"]["totalMessages"], 31);
    assert_eq!(doc["coreQueries"]["roomMessages"]["roomId"], 6);
    assert_eq!(doc["coreQueries"]["userMessages"]["userId"], 4242);
    assert_eq!(doc["coreQueries"]["activeUsers"], 2);
    server.shutdown().unwrap();
}

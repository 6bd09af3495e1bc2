//! Persistence against real PostgreSQL (a database per test), RabbitMQ and
//! Redis: the schema and its setup script, every consumed message stored
//! exactly once with its contents, duplicates dropped, rows without a day
//! partition caught by the DEFAULT one.

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime};

use chatflow_consumer::writer::{copy_batch, insert_batch_deduplicated, Pending, Row};
use chatflow_consumer::{partitions, Config, Consumer};
use common::database::{TestDatabase, ADMIN};
use common::*;

/// A persistent consumer writing into `db`.
fn persistent(ns: &str, rooms: u32, db: &TestDatabase) -> Config {
    let mut config = Config {
        enable_persistence: true,
        ..config(ns, rooms)
    };
    config.database.user = "postgres".to_string();
    config.database.name = db.name.clone();
    config.database.apply_schema = true;
    config.database.flush_interval = Duration::from_millis(50);
    config
}

fn row(user: i32, server_timestamp: SystemTime) -> Row {
    Row {
        message_id: chatflow_protocol::IdGenerator::new()
            .next_id(chatflow_protocol::time::now_ms())
            .as_uuid(),
        room_id: 1,
        user_id: user,
        username: format!("user{user}"),
        message: "hello".to_string(),
        message_type: "TEXT",
        client_timestamp: server_timestamp,
        server_timestamp,
        server_id: "test".to_string(),
    }
}

fn pending(row: Row, redelivered: bool) -> Pending {
    Pending {
        row,
        consumer: 0,
        epoch: 0,
        delivery_tag: 1,
        redelivered,
    }
}

/// The schema applies to an empty database, and setup_database.sh run a
/// second time changes nothing (same schema dump, same partitions).
#[test]
fn setup_script_applies_the_schema_and_is_idempotent() {
    let ns = namespace();
    let name = format!("cf_setup_{}", ns.replace(['-', '.'], "_")).to_lowercase();
    let role = format!("{name}_role");
    let setup = || {
        let out = Command::new("../database/setup_database.sh")
            .env("DB_USER", &role)
            .env("DB_PASSWORD", "not-a-real-secret")
            .env("DB_NAME", &name)
            .output()
            .expect("setup_database.sh runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let dump = || {
        let out = Command::new("pg_dump")
            .args(["-h", "127.0.0.1", "-U", "postgres", "--schema-only", &name])
            .output()
            .expect("pg_dump runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // pg_dump brackets its output with a random \restrict key.
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    setup();
    let first = dump();
    assert!(first.contains("PARTITION BY RANGE (server_timestamp)"));
    assert!(first.contains("messages_default"));
    setup();
    assert!(dump() == first, "a second run changed the schema");

    let db = TestDatabase { name };
    assert_eq!(
        db.count("SELECT count(*) FROM pg_inherits WHERE inhparent = 'messages'::regclass"),
        9,
        "today + 7 days + DEFAULT"
    );
    drop(db);
    let mut admin = postgres::Client::connect(ADMIN, postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!("DROP ROLE IF EXISTS \"{role}\""))
        .unwrap();
}

/// Every message through the consumer becomes exactly one row with its
/// contents, and is acked only then.
#[test]
fn consumed_messages_are_stored_once_with_their_contents() {
    let ns = namespace();
    let db = TestDatabase::new(&ns);
    let config = persistent(&ns, 2, &db);
    let mut broker = Broker::new(&config);
    let messages: Vec<TestMessage> = (0..600)
        .map(|i| message(i % 2 + 1, i + 1, &format!("stored {i}")))
        .collect();
    broker.publish_messages(&messages);
    let consumer = Consumer::start(config).expect("consumer starts");
    wait_until("every message is stored", || db.rows() == 600);
    wait_until("every message is acked", || {
        consumer.health().totals.acked == 600
    });
    assert_eq!(broker.total_depth(), 0);
    let mut ids = db.ids();
    ids.sort();
    let mut expected: Vec<String> = messages.iter().map(|m| m.message_id.clone()).collect();
    expected.sort();
    assert_eq!(ids, expected);
    let sample = db
        .client()
        .query_one(
            "SELECT room_id, user_id, username, message, message_type, server_id FROM messages WHERE message_id = $1::text::uuid",
            &[&messages[7].message_id],
        )
        .unwrap();
    assert_eq!(sample.get::<_, i32>(0), 2);
    assert_eq!(sample.get::<_, i32>(1), 8);
    assert_eq!(sample.get::<_, String>(2), "user8");
    assert_eq!(sample.get::<_, String>(3), "stored 7");
    assert_eq!(sample.get::<_, String>(4), "TEXT");
    assert_eq!(sample.get::<_, String>(5), "test-server");
    let health = consumer.health();
    let database = health.database.expect("database section");
    assert!(database.connected);
    assert_eq!(database.rows, 600);
    consumer.shutdown().unwrap();
}

/// The same messages delivered twice still give one row each: the second
/// delivery's COPY hits the primary key and the batch goes through the
/// deduplicating path.
#[test]
fn duplicate_deliveries_make_no_second_row() {
    let ns = namespace();
    let db = TestDatabase::new(&ns);
    let config = persistent(&ns, 1, &db);
    let mut broker = Broker::new(&config);
    let messages: Vec<TestMessage> = (0..200).map(|i| message(1, i + 1, "twice")).collect();
    broker.publish_messages(&messages);
    broker.publish_messages(&messages);
    let consumer = Consumer::start(config).unwrap();
    wait_until("both copies are acked", || {
        consumer.health().totals.acked == 400
    });
    assert_eq!(db.rows(), 200);
    let database = consumer.health().database.unwrap();
    assert!(database.duplicate_batches >= 1);
    assert_eq!(database.duplicates_dropped, 200);
    consumer.shutdown().unwrap();
}

/// The writer paths directly: a batch flagged redelivered goes through
/// staging and drops what is stored; the plain COPY refuses a duplicate.
#[test]
fn writer_paths_deduplicate_redeliveries() {
    let db = TestDatabase::new(&namespace()).with_schema();
    let mut client = db.client();
    partitions::ensure_partitions(&partitions::pool(&db.connection()).unwrap()).unwrap();
    let now = SystemTime::now();
    let batch: Vec<Pending> = (1..=50).map(|u| pending(row(u, now), false)).collect();
    copy_batch(&mut client, &batch).unwrap();
    let err = copy_batch(&mut client, &batch[..1]).unwrap_err();
    assert_eq!(
        err.code(),
        Some(&postgres::error::SqlState::UNIQUE_VIOLATION)
    );
    let again: Vec<Pending> = batch.iter().map(|p| pending(p.row.clone(), true)).collect();
    assert_eq!(insert_batch_deduplicated(&mut client, &again).unwrap(), 0);
    let mut mixed = again;
    mixed.push(pending(row(99, now), true));
    assert_eq!(insert_batch_deduplicated(&mut client, &mixed).unwrap(), 1);
    assert_eq!(db.rows(), 51);
}

/// A row whose day has no partition lands in DEFAULT instead of failing,
/// and moves to its own partition when upkeep creates it.
#[test]
fn rows_without_a_partition_land_in_default() {
    let db = TestDatabase::new(&namespace()).with_schema();
    let mut client = db.client();
    let far = SystemTime::now() + Duration::from_secs(400 * 86_400);
    copy_batch(&mut client, &[pending(row(5, far), false)]).unwrap();
    assert_eq!(
        db.count("SELECT count(*) FROM messages_default"),
        1,
        "the row is in the DEFAULT partition"
    );
    let created: i32 = client
        .query_one(
            "SELECT chatflow_ensure_partitions((now() + interval '400 days')::date, 1)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(created, 1);
    assert_eq!(db.count("SELECT count(*) FROM messages_default"), 0);
    assert_eq!(db.rows(), 1, "moved, not lost");
}

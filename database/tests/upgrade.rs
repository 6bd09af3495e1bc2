//! An existing database upgrades in place: a database made by the schema
//! before the rollups (kept as a fixture), holding messages, is brought up
//! to date by `setup_database.sh` — the old indexes replaced by the new
//! ones, the rollups filled from the stored messages exactly as the writers
//! would have made them — and a second run changes nothing.

use std::process::Command;

use chatflow_database::row::unix_ms;
use chatflow_database::{copy_batch, Rollups, Row};
use chatflow_testkit::database::TestDatabase;
use chatflow_testkit::unique_namespace;

const OLD_SCHEMA: &str = include_str!("fixtures/schema-before-rollups.sql");

fn rows() -> Vec<Row> {
    // 2026-11-30T10:00:00Z onwards, a message every 7 s, 500 of them.
    (0..500)
        .map(|i: i64| Row {
            message_id: uuid::Uuid::from_u128(0x1000 + i as u128),
            room_id: 1 + (i % 7) as i32,
            user_id: 1 + (i * 37 % 90) as i32,
            username: "someone".into(),
            message: format!("m{i}"),
            message_type: if i % 10 == 0 { "JOIN" } else { "TEXT" },
            client_timestamp: unix_ms(1_796_032_800_000 + i * 7_000),
            server_timestamp: unix_ms(1_796_032_800_000 + i * 7_000),
            server_id: "old".into(),
        })
        .collect()
}

fn setup(db: &TestDatabase) {
    let out = Command::new("./setup_database.sh")
        .env("DB_USER", "postgres")
        .env("DB_PASSWORD", "")
        .env("DB_NAME", &db.name)
        .output()
        .expect("setup_database.sh runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn indexes(db: &TestDatabase) -> Vec<String> {
    db.client()
        .query(
            "SELECT indexname::text FROM pg_indexes WHERE tablename = 'messages' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn rollup_checksum(db: &TestDatabase) -> String {
    db.client()
        .query_one(
            "SELECT md5(string_agg(t, '|' ORDER BY t)) FROM (
                SELECT row(r.*)::text AS t FROM rollup_room_counts r
                UNION ALL SELECT row(s.*)::text FROM rollup_second_counts s
                UNION ALL SELECT row(a.resolution_s, a.bucket, md5(a.users::text))::text FROM rollup_active_users a
                UNION ALL SELECT row(u.*)::text FROM user_rooms u) x",
            &[],
        )
        .unwrap()
        .get(0)
}

#[test]
fn a_database_from_before_the_rollups_upgrades_in_place() {
    let db = TestDatabase::new(&unique_namespace("upgrade"));
    let mut client = db.client();
    client
        .batch_execute(&format!("SET client_min_messages = warning; {OLD_SCHEMA}"))
        .unwrap();
    client
        .batch_execute("SELECT chatflow_ensure_partitions('2026-11-30', 2)")
        .unwrap();
    let rows = rows();
    copy_batch(&mut client, &rows, Rollups::Skip).unwrap();
    assert!(indexes(&db).contains(&"messages_room_time".to_string()));

    setup(&db);
    let after = indexes(&db);
    for new in [
        "messages_room_page",
        "messages_user_page",
        "messages_time_activity",
    ] {
        assert!(after.contains(&new.to_string()), "{new} in {after:?}");
    }
    for old in [
        "messages_room_time",
        "messages_user_time",
        "messages_time_user",
    ] {
        assert!(!after.contains(&old.to_string()), "{old} dropped");
    }
    assert_eq!(db.rows(), 500, "no message lost");
    assert_eq!(
        db.count("SELECT sum(messages)::int8 FROM rollup_second_counts"),
        500,
        "every stored message rolled up once"
    );
    assert_eq!(db.count("SELECT sum(messages)::int8 FROM user_rooms"), 500);
    let upgraded = rollup_checksum(&db);

    // What the writers would have made of the same rows.
    let fresh = TestDatabase::new(&unique_namespace("upgrade-fresh")).with_schema();
    let mut fresh_client = fresh.client();
    fresh_client
        .batch_execute("SELECT chatflow_ensure_partitions('2026-11-30', 2)")
        .unwrap();
    copy_batch(&mut fresh_client, &rows, Rollups::Maintain).unwrap();
    assert_eq!(rollup_checksum(&fresh), upgraded);

    // A second run changes nothing (the backfill does not double-count).
    setup(&db);
    assert_eq!(rollup_checksum(&db), upgraded);
    assert_eq!(indexes(&db), after);
}

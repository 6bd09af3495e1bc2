//! `chatflow-datagen` against real PostgreSQL (a database per test): a load
//! stores exactly its dataset with rollups a rebuild agrees with, the same
//! seed loads the same rows, the distributions are the documented ones,
//! and `explain` writes a plan per read query naming the real indexes.

use std::collections::HashMap;
use std::path::PathBuf;

use chatflow_database::explain::{explain, ExplainConfig};
use chatflow_database::generate::{load, Dataset, Generator, LoadConfig, LoadReport};
use chatflow_database::DatabaseSettings;
use chatflow_testkit::database::TestDatabase;
use chatflow_testkit::unique_namespace;

const ROWS: u64 = 20_000;

/// Two hours, not seven days: the minute bitmaps (one per minute with
/// traffic) dominate a small load's cost — a week has 10,080 of them — and
/// `chatflow_rebuild_rollups()` builds each in PL/pgSQL (~10 ms apiece).
fn dataset(seed: u64) -> Dataset {
    Dataset {
        messages: ROWS,
        seconds: 2 * 3600,
        seed,
        ..Dataset::default()
    }
}

fn load_into(db: &TestDatabase, dataset: Dataset, verify: bool, vacuum: bool) -> LoadReport {
    let config = LoadConfig {
        database: DatabaseSettings {
            name: db.name.clone(),
            ..DatabaseSettings::default()
        },
        dataset,
        batch_rows: 3_000,
        apply_schema: true,
        verify,
        vacuum_analyze: vacuum,
        writers: 2,
    };
    load(&config, |_| {}).expect("the load succeeds")
}

/// md5 of every stored row, in key order.
fn rows_checksum(db: &TestDatabase) -> String {
    db.client()
        .query_one(
            "SELECT md5(string_agg(m::text, E'\\n' ORDER BY message_id, server_timestamp)) FROM messages m",
            &[],
        )
        .unwrap()
        .get(0)
}

/// Exactly N rows land in the window's day partitions, and the rollups
/// maintained batch by batch (two writers) are what a rebuild computes.
#[test]
fn a_load_stores_exactly_its_rows_with_rollups_a_rebuild_agrees_with() {
    let db = TestDatabase::new(&unique_namespace("datagen-load"));
    let d = dataset(1);
    let report = load_into(&db, d.clone(), true, false);
    assert_eq!(report.rows, ROWS);
    let verified = report.verified.expect("verified");
    assert_eq!(
        (verified.count_before, verified.count_after),
        (0, ROWS as i64)
    );
    assert_eq!(db.rows(), ROWS as i64);
    assert_eq!(
        db.count("SELECT count(*) FROM messages_default"),
        0,
        "every row in its day"
    );
    let window = db.count(&format!(
        "SELECT count(*) FROM messages WHERE server_timestamp >= to_timestamp({}) AND server_timestamp < to_timestamp({})",
        d.start_unix_s(),
        d.end_unix_s()
    ));
    assert_eq!(window, ROWS as i64, "every timestamp inside the window");
    assert_eq!(
        db.count("SELECT count(*) FROM messages WHERE client_timestamp >= server_timestamp"),
        0,
        "clients stamp before the server"
    );
}

/// Writers whose connections are killed mid-load (as a PostgreSQL restart
/// would) reconnect and store their batch through the deduplicating path:
/// still exactly N rows, rollups still what a rebuild computes.
#[test]
fn a_load_rides_out_killed_connections() {
    let db = TestDatabase::new(&unique_namespace("datagen-outage"));
    let config = LoadConfig {
        database: DatabaseSettings {
            name: db.name.clone(),
            ..DatabaseSettings::default()
        },
        dataset: dataset(5),
        batch_rows: 1_000,
        apply_schema: true,
        verify: true,
        vacuum_analyze: false,
        writers: 2,
    };
    let mut admin = db.client();
    let mut killed = 0;
    let report = load(&config, |p| {
        if p.rows == 5_000 || p.rows == 12_000 {
            let row = admin
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                      WHERE datname = current_database() AND application_name = 'chatflow-datagen'",
                    &[],
                )
                .unwrap();
            killed += row.get::<_, i64>(0);
        }
    })
    .expect("the load survives");
    assert!(killed >= 2, "connections were killed ({killed})");
    assert_eq!(report.rows, ROWS);
    assert!(report.verified.is_some());
    assert_eq!(db.rows(), ROWS as i64);
}

/// The same seed loads byte-identical rows; another seed, other rows.
#[test]
fn the_same_seed_loads_the_same_rows_and_another_seed_others() {
    let checksums: Vec<String> = [1, 1, 2]
        .into_iter()
        .map(|seed| {
            let db = TestDatabase::new(&unique_namespace("datagen-seed"));
            load_into(&db, dataset(seed), false, false);
            rows_checksum(&db)
        })
        .collect();
    assert_eq!(checksums[0], checksums[1]);
    assert_ne!(checksums[0], checksums[2]);
}

/// Type mix, the busiest user's share, favourite rooms and the daily cycle
/// are what `generate`'s docs say, within sampling tolerance.
#[test]
fn the_distributions_are_the_documented_ones() {
    let db = TestDatabase::new(&unique_namespace("datagen-mix"));
    // A whole day, for the daily cycle.
    let d = Dataset {
        seconds: 86_400,
        ..dataset(3)
    };
    load_into(&db, d.clone(), false, false);
    let generator = Generator::new(&d);
    let population = generator.population();
    let mut client = db.client();
    let share = |sql: &str| db.count(sql) as f64 / ROWS as f64;

    let text = share("SELECT count(*) FROM messages WHERE message_type = 'TEXT'");
    let join = share("SELECT count(*) FROM messages WHERE message_type = 'JOIN'");
    assert!((text - 0.90).abs() < 0.01, "TEXT {text}");
    assert!((join - 0.05).abs() < 0.008, "JOIN {join}");

    let top = population.user_of_rank(0);
    let top_share = share(&format!(
        "SELECT count(*) FROM messages WHERE user_id = {top}"
    ));
    assert!(
        (top_share - population.top_user_share()).abs() < 0.008,
        "top user {top}: {top_share} vs {}",
        population.top_user_share()
    );
    assert_eq!(
        client
            .query_one(
                "SELECT user_id FROM messages GROUP BY 1 ORDER BY count(*) DESC LIMIT 1",
                &[]
            )
            .unwrap()
            .get::<_, i32>(0),
        top,
        "the busiest user is rank 0's"
    );

    // Users with 20+ messages post most of them in their favourite rooms
    // (~87% outside bursts, which take ~5% of all messages) and use few
    // rooms overall.
    let mut per_user: HashMap<i32, Vec<(i32, i64)>> = HashMap::new();
    for row in client
        .query("SELECT user_id, room_id, messages FROM user_rooms", &[])
        .unwrap()
    {
        per_user
            .entry(row.get(0))
            .or_default()
            .push((row.get(1), row.get(2)));
    }
    let (mut in_favourites, mut total) = (0i64, 0i64);
    for (user, rooms) in &per_user {
        let n: i64 = rooms.iter().map(|r| r.1).sum();
        if n < 20 {
            continue;
        }
        let favourites = population.favourites(*user);
        in_favourites += rooms
            .iter()
            .filter(|r| favourites.contains(&r.0))
            .map(|r| r.1)
            .sum::<i64>();
        total += n;
    }
    let favourite_share = in_favourites as f64 / total as f64;
    assert!(
        (0.78..0.92).contains(&favourite_share),
        "favourites {favourite_share}"
    );
    let users = per_user.len() as f64;
    let rooms_per_user = per_user.values().map(|r| r.len()).sum::<usize>() as f64 / users;
    assert!(rooms_per_user < 2.0, "rooms per user {rooms_per_user}");

    let evening = share("SELECT count(*) FROM messages WHERE extract(hour FROM server_timestamp AT TIME ZONE 'UTC') BETWEEN 18 AND 21");
    let night = share("SELECT count(*) FROM messages WHERE extract(hour FROM server_timestamp AT TIME ZONE 'UTC') BETWEEN 2 AND 5");
    assert!(evening > 3.0 * night, "evening {evening} vs night {night}");
}

/// `explain` writes one file per read query, each headed by its dataset
/// and parameters, with plans that name the indexes the queries are for.
#[test]
fn explain_writes_a_plan_per_read_query_naming_its_index() {
    let db = TestDatabase::new(&unique_namespace("datagen-explain"));
    load_into(&db, dataset(4), false, true);
    let out: PathBuf = std::env::temp_dir().join(&db.name);
    let captured = explain(&ExplainConfig {
        database: DatabaseSettings {
            name: db.name.clone(),
            ..DatabaseSettings::default()
        },
        out_dir: out.clone(),
        settings: vec![("jit".into(), "off".into())],
        server_defaults: false,
    })
    .expect("auto_explain is available on the test server");
    let read = |name: &str| std::fs::read_to_string(out.join(format!("{name}.txt"))).unwrap();
    let names: Vec<&str> = captured.iter().map(|c| c.name).collect();
    for name in [
        "room_page_asc",
        "room_page_desc_cursor",
        "user_page_heavy",
        "user_page_typical",
        "user_rooms_heavy",
        "active_users_7d",
        "room_counts_1d",
        "series_second_1h",
        "series_hour_1d",
        "per_user_1d",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
        let plan = read(name);
        assert!(plan.contains("20000 rows over 0.1 days"), "{name}: header");
        assert!(plan.contains("Buffers: shared"), "{name}: BUFFERS");
        assert!(plan.contains("actual time="), "{name}: ANALYZE");
        assert!(
            plan.contains("session:    the read API's (default_transaction_read_only=on, random_page_cost=1.1")
                && plan.contains("jit=off)"),
            "{name}: settings"
        );
    }
    // Partition indexes are named after their columns
    // (messages_YYYYMMDD_user_id_server_timestamp_message_id_idx is
    // messages_user_page's).
    assert!(read("user_page_heavy").contains("user_id_server_timestamp_message_id_idx"));
    assert!(read("user_rooms_heavy").contains("user_rooms_pkey"));
    std::fs::remove_dir_all(&out).unwrap();
}

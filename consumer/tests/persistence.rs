//! Persistence against real PostgreSQL (a database per test), RabbitMQ and
//! Redis: the schema and its setup script, every consumed message stored
//! exactly once with its contents, duplicates dropped, rows without a day
//! partition caught by the DEFAULT one; and rows PostgreSQL refuses (issue
//! 8, hostile input): a failed write is classified by its SQLSTATE, a
//! refused row is isolated by splitting its batch and dead-lettered while
//! every good row is stored, broadcast and acked, and an outage — even in
//! the middle of a split — still only holds acks back.

mod common;

use std::process::Command;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chatflow_broker::{shutdown_signal, ShutdownTrigger};
use chatflow_consumer::counters::WriterStats;
use chatflow_consumer::fault::{self, Site};
use chatflow_consumer::handoff::{Pending, Row};
use chatflow_consumer::threads::Threads;
use chatflow_consumer::writer::{describe, WriteFailure, WriterConfig, Writers};
use chatflow_consumer::{partitions, Committed, Config, Consumer};
use chatflow_database::Rollups::Maintain;
use chatflow_database::{copy_batch, insert_batch_deduplicated};
use chatflow_testkit::database::{TestDatabase, ADMIN};
use common::proxy::Proxy;
use common::*;
use crossbeam_channel::Receiver;
use postgres::error::SqlState;
use postgres::{Client, NoTls};

/// A persistent consumer writing into `db`.
fn persistent(ns: &str, rooms: u32, db: &TestDatabase) -> Config {
    common::persistent(ns, rooms, &db.name)
}

/// A valid row from `user`, stamped `at`.
fn row(user: i32, at: SystemTime) -> Row {
    Row {
        message_id: chatflow_protocol::IdGenerator::new()
            .next_id(chatflow_protocol::time::now_ms())
            .as_uuid(),
        room_id: 1,
        user_id: user,
        username: format!("user{user}"),
        message: format!("hello from {user}"),
        message_type: "TEXT",
        client_timestamp: at,
        server_timestamp: at,
        server_id: "test".to_string(),
    }
}

/// A row as queue consumer 0 hands it over, on the channel of epoch 1.
fn pending(row: Row, tag: u64, redelivered: bool) -> Pending {
    Pending {
        row,
        consumer: 0,
        epoch: 1,
        delivery_tag: tag,
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
    let batch: Vec<Pending> = (1..=50).map(|u| pending(row(u, now), 1, false)).collect();
    copy_batch(&mut client, &batch, Maintain).unwrap();
    let err = copy_batch(&mut client, &batch[..1], Maintain).unwrap_err();
    assert_eq!(
        err.code(),
        Some(&postgres::error::SqlState::UNIQUE_VIOLATION)
    );
    let again: Vec<Pending> = batch
        .iter()
        .map(|p| pending(p.row.clone(), 1, true))
        .collect();
    assert_eq!(
        insert_batch_deduplicated(&mut client, &again, Maintain).unwrap(),
        0
    );
    let mut mixed = again;
    mixed.push(pending(row(99, now), 1, true));
    assert_eq!(
        insert_batch_deduplicated(&mut client, &mixed, Maintain).unwrap(),
        1
    );
    assert_eq!(db.rows(), 51);
}

/// A row whose day has no partition lands in DEFAULT instead of failing,
/// and moves to its own partition when upkeep creates it.
#[test]
fn rows_without_a_partition_land_in_default() {
    let db = TestDatabase::new(&namespace()).with_schema();
    let mut client = db.client();
    let far = SystemTime::now() + Duration::from_secs(400 * 86_400);
    copy_batch(&mut client, &[pending(row(5, far), 1, false)], Maintain).unwrap();
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

/// The envelope of a message whose text holds a NUL, as an older server
/// (which did not refuse NUL) or anyone able to publish could send it.
/// It decodes and broadcasts fine; PostgreSQL `text` refuses it (22021).
fn with_nul(room: u32, user: u32) -> TestMessage {
    let mut m = message(room, user, "placeholder");
    let mut envelope: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
    envelope["message"] = "poison \u{0} row".into();
    m.body = serde_json::to_vec(&envelope).unwrap();
    assert!(
        String::from_utf8_lossy(&m.body).contains(r"\u0000"),
        "the NUL travels escaped, as JSON has it"
    );
    m
}

fn good_row(user: i32) -> Row {
    row(user, SystemTime::now())
}

/// Rows PostgreSQL refuses, one per kind of refusal.
fn bad_row(kind: usize) -> Row {
    let mut row = good_row(1);
    match kind % 3 {
        // 22021 character_not_in_repertoire.
        0 => row.message = "nul \u{0} here".to_string(),
        // 23514 check_violation: user_id BETWEEN 1 AND 100000.
        1 => row.user_id = 0,
        // 22008 datetime_field_overflow: before 4713 BC.
        _ => row.client_timestamp = UNIX_EPOCH - Duration::from_secs(400_000_000_000),
    }
    row
}

/// A batch of `n` rows (tags 1..=n) where the rows at `bad` are refused.
fn batch(n: usize, bad: &[usize]) -> Vec<Pending> {
    (0..n)
        .map(|i| {
            let row = match bad.iter().position(|&b| b == i) {
                Some(kind) => bad_row(kind),
                None => good_row(i as i32 % 100_000 + 1),
            };
            pending(row, i as u64 + 1, false)
        })
        .collect()
}

/// One writer on `connection`, reporting to one consumer; stopped by
/// [`stop`].
struct OneWriter {
    writers: Writers,
    stats: Arc<Vec<WriterStats>>,
    notices: Receiver<Committed>,
    trigger: ShutdownTrigger,
}

fn one_writer(connection: String, batch_rows: usize) -> OneWriter {
    let config = WriterConfig {
        connection,
        writers: 1,
        batch_rows,
        flush_interval: Duration::from_millis(50),
        queue_capacity: 16,
        retry_min: Duration::from_millis(20),
        retry_max: Duration::from_millis(200),
        rollups: Maintain,
    };
    let stats = Arc::new(vec![WriterStats::default()]);
    let (notify, notices) = crossbeam_channel::unbounded();
    let (trigger, shutdown) = shutdown_signal();
    let writers = Writers::start(
        &config,
        stats.clone(),
        vec![notify],
        &Threads::new(shutdown),
    )
    .expect("writer connects");
    OneWriter {
        writers,
        stats,
        notices,
        trigger,
    }
}

fn stop(mut w: OneWriter) {
    w.trigger.signal();
    w.writers.shutdown();
}

/// Collects notices until every one of `n` tags is accounted for:
/// (committed tags, rejected tags), each sorted.
fn outcome(notices: &Receiver<Committed>, n: usize) -> (Vec<u64>, Vec<u64>) {
    let (mut stored, mut rejected) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + TIMEOUT;
    while stored.len() + rejected.len() < n {
        let notice = notices
            .recv_deadline(deadline)
            .expect("the writer reports on every row in time");
        assert_eq!(notice.epoch, 1);
        stored.extend(notice.tags);
        rejected.extend(notice.rejected);
    }
    stored.sort_unstable();
    rejected.sort_unstable();
    (stored, rejected)
}

fn count(stats: &WriterStats, f: fn(&WriterStats) -> &AtomicU64) -> u64 {
    f(stats).load(std::sync::atomic::Ordering::Relaxed)
}

/// Real failures, classified: what the rows hold is blamed on the rows;
/// a lost, refused or terminated connection and a missing table are the
/// database's (never dead-letter over them).
#[test]
fn failures_are_classified_by_sqlstate() {
    let db = TestDatabase::new(&namespace()).with_schema();
    let mut client = db.client();
    for kind in 0..3 {
        let err =
            copy_batch(&mut client, &[pending(bad_row(kind), 1, false)], Maintain).unwrap_err();
        let expected = [
            SqlState::CHARACTER_NOT_IN_REPERTOIRE,
            SqlState::CHECK_VIOLATION,
            SqlState::DATETIME_FIELD_OVERFLOW,
        ][kind]
            .clone();
        assert_eq!(err.code(), Some(&expected), "{err}");
        assert_eq!(WriteFailure::of(&err), WriteFailure::BadRows, "{err}");
        // Logged with the server's reason and code, not just "db error".
        let text = describe(&err);
        assert!(text.contains(expected.code()), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }
    // The connection is still good after a refused row.
    let row = pending(good_row(5), 1, false);
    copy_batch(&mut client, std::slice::from_ref(&row), Maintain).unwrap();
    // Already stored: not a bad row (the dedup path's business).
    let err = copy_batch(&mut client, &[row], Maintain).unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION));
    assert_eq!(WriteFailure::of(&err), WriteFailure::Unavailable);

    // Nothing listens on port 1: no SQLSTATE at all.
    let Err(err) = Client::connect(
        "host=127.0.0.1 port=1 user=postgres connect_timeout=2",
        NoTls,
    ) else {
        panic!("nothing listens on port 1");
    };
    assert_eq!(err.code(), None);
    assert_eq!(WriteFailure::of(&err), WriteFailure::Unavailable);

    // The administrator terminates our backend (57P01, or a closed
    // connection, depending on when the client notices).
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    db.client()
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    let err = copy_batch(&mut client, &[pending(good_row(6), 1, false)], Maintain).unwrap_err();
    assert!(
        err.code().is_none_or(|c| *c == SqlState::ADMIN_SHUTDOWN),
        "{err}"
    );
    assert_eq!(WriteFailure::of(&err), WriteFailure::Unavailable);

    // No schema: every row would fail alike (42P01), none is to blame.
    let empty = TestDatabase::new(&namespace());
    let err = copy_batch(
        &mut empty.client(),
        &[pending(good_row(7), 1, false)],
        Maintain,
    )
    .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNDEFINED_TABLE));
    assert_eq!(WriteFailure::of(&err), WriteFailure::Unavailable);
}

/// A batch of 1,000 with three refused rows (first, middle, last; three
/// kinds of refusal): the writer splits it, stores the 997 good rows,
/// reports the three as rejected, and does it in a few dozen statements.
#[test]
fn a_writer_isolates_refused_rows_by_splitting() {
    let db = TestDatabase::new(&namespace()).with_schema();
    partitions::ensure_partitions(&partitions::pool(&db.connection()).unwrap()).unwrap();
    let w = one_writer(db.connection(), 1000);
    let bad = [0, 500, 999];
    let rows = batch(1000, &bad);
    let good_ids: Vec<String> = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| !bad.contains(i))
        .map(|(_, p)| p.row.message_id.to_string())
        .collect();
    w.writers.sender_for(0).send(rows).unwrap();
    let (stored, rejected) = outcome(&w.notices, 1000);
    assert_eq!(rejected, vec![1, 501, 1000], "exactly the refused rows");
    assert_eq!(stored.len(), 997);
    assert_eq!(db.rows(), 997);
    let mut ids = db.ids();
    ids.sort();
    let mut expected = good_ids;
    expected.sort();
    assert_eq!(ids, expected);
    let stats = &w.stats[0];
    assert_eq!(count(stats, |s| &s.rows_dead_lettered), 3);
    assert_eq!(count(stats, |s| &s.retries), 0, "no outage, no retry");
    // Each refused row costs about one split per halving: ≤ 3 × log2(1000).
    let splits = count(stats, |s| &s.batch_splits);
    assert!((1..=30).contains(&splits), "{splits} splits");
    assert!(stats.connected.load(std::sync::atomic::Ordering::Relaxed));
    stop(w);
}

/// The database goes away in the middle of a split (many refused rows
/// make it long): the writer falls back to retrying with back-off, and
/// once the database is back it finishes — every good row stored, only
/// the refused rows rejected, nothing good dead-lettered for the outage.
#[test]
fn an_outage_in_the_middle_of_a_split_only_delays_it() {
    let db = TestDatabase::new(&namespace()).with_schema();
    partitions::ensure_partitions(&partitions::pool(&db.connection()).unwrap()).unwrap();
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap());
    let w = one_writer(
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={} connect_timeout=2",
            proxy.port(),
            db.name
        ),
        1000,
    );
    let bad: Vec<usize> = (0..1000).step_by(10).collect();
    w.writers.sender_for(0).send(batch(1000, &bad)).unwrap();
    let stats = &w.stats[0];
    wait_until("the split is under way", || {
        count(stats, |s| &s.batch_splits) >= 5
    });
    proxy.cut();
    let dead_lettered_at_cut = count(stats, |s| &s.rows_dead_lettered);
    assert!(
        dead_lettered_at_cut < bad.len() as u64,
        "cut before the split ended ({dead_lettered_at_cut} rows isolated)"
    );
    wait_until("the writer sees the outage", || {
        count(stats, |s| &s.retries) > 0
    });
    assert!(!stats.connected.load(std::sync::atomic::Ordering::Relaxed));
    std::thread::sleep(Duration::from_millis(500));
    proxy.restore();
    let (stored, rejected) = outcome(&w.notices, 1000);
    let expected_rejected: Vec<u64> = bad.iter().map(|&i| i as u64 + 1).collect();
    assert_eq!(rejected, expected_rejected, "only the refused rows");
    assert_eq!(stored.len(), 900);
    assert_eq!(db.rows(), 900);
    assert_eq!(count(stats, |s| &s.rows_dead_lettered), 100);
    stop(w);
}

/// The attack from issue 8: a NUL message ahead of 300 good ones from the
/// same sender (one queue, one consumer, one writer). The 300 are stored,
/// broadcast and acked; the poison one alone is in the dead-letter queue;
/// the queue drains; /health and /metrics count it and show no writer
/// failing.
#[test]
fn a_refused_row_is_dead_lettered_and_the_rest_stored() {
    let ns = namespace();
    let db = TestDatabase::new(&ns);
    let config = persistent(&ns, 1, &db);
    let mut broker = Broker::new(&config);
    let subscriber = Subscriber::new(&broker.topology);
    let poison = with_nul(1, 7);
    let good: Vec<TestMessage> = (0..300)
        .map(|i| message(1, 7, &format!("good {i}")))
        .collect();
    let queue = broker.topology.queue(1, poison.shard);
    // Published before the consumer starts, so the poison row shares its
    // writer batch with good ones.
    let mut all = vec![poison];
    all.extend(good);
    broker.publish_messages(&all);
    let (poison, good) = (&all[0], &all[1..]);
    let consumer = Consumer::start(config).expect("consumer starts");

    // Broadcast comes before persistence: the poison message is broadcast
    // too (it decodes), then its row is refused.
    let broadcast = count_ids(&subscriber.take(301));
    for m in good {
        assert_eq!(broadcast.get(&m.message_id), Some(&1), "broadcast once");
    }
    wait_until("the good rows are stored", || db.rows() == 300);
    wait_until("acked and dead-lettered", || {
        let t = consumer.health().totals;
        t.acked == 300 && t.dead_lettered == 1
    });
    let dlq = broker.topology.dead_letter_queue();
    wait_until("the poison message in the dead-letter queue", || {
        broker.depth(&dlq) == 1
    });
    let dead = broker.drain(&dlq);
    assert_eq!(dead.len(), 1);
    let dead: serde_json::Value = serde_json::from_slice(&dead[0]).unwrap();
    assert_eq!(dead["messageId"], poison.message_id.as_str());
    assert_eq!(broker.depth(&queue), 0);
    assert_eq!(broker.total_depth(), 0);

    let mut ids = db.ids();
    ids.sort();
    let mut expected: Vec<String> = good.iter().map(|m| m.message_id.clone()).collect();
    expected.sort();
    assert_eq!(ids, expected, "every good row, and not the poison one");

    wait_until("health settles to ok", || consumer.health().status == "ok");
    let (status, body) = http_get(consumer.metrics_addr(), "/health");
    assert_eq!(status, 200);
    assert!(!body.contains("writers failing"), "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["database"]["connected"], true);
    assert_eq!(health["database"]["rowsDeadLettered"], 1);
    assert_eq!(health["database"]["rows"], 300);
    assert_eq!(health["totals"]["deadLettered"], 1);
    let (_, metrics) = http_get(consumer.metrics_addr(), "/metrics");
    let page = chatflow_testkit::prometheus::parse(&metrics);
    assert_eq!(page.sum("chatflow_consumer_rows_dead_lettered_total"), 1.0);
    assert_eq!(page.sum("chatflow_consumer_rows_stored_total"), 300.0);
    // Every committed batch is in the COPY histogram.
    assert_eq!(
        page.sum("chatflow_consumer_copy_seconds_count"),
        page.sum("chatflow_consumer_copy_batches_total")
    );
    assert_eq!(page.sum("chatflow_consumer_batch_rows_sum"), 300.0);
    consumer.shutdown().expect("clean shutdown");
    assert!(
        subscriber.try_take_all().is_empty(),
        "nothing redelivered, nothing broadcast twice"
    );
}

/// A writer that panics shows in /health: 503, status degraded naming the dead
/// writer, then each queue consumer it served, which stops at its next
/// hand-over instead of stalling silently; their messages go back to the
/// queue, unacked; `/metrics` counts the dead threads and shutdown reports
/// the panic. The panic comes from the hidden fault hook
/// (`chatflow_consumer::fault`), keyed by a text only this test sends.
#[test]
fn a_writer_that_panics_shows_in_health() {
    let ns = namespace();
    let db = TestDatabase::new(&ns);
    let mut config = persistent(&ns, 1, &db);
    config.database.writers = 1;
    let mut broker = Broker::new(&config);
    let consumer = Consumer::start(config).expect("consumer starts");
    wait_until("health ok", || consumer.health().status == "ok");
    let marker = format!("panic the writer of {ns}");
    fault::panic_on(Site::Writer, &marker);
    // User 3: queue (1, 3), consumer-r1s3.
    broker.publish_messages(&[message(1, 3, &marker)]);
    wait_until("the dead writer in /health", || {
        consumer
            .health()
            .dead_threads
            .iter()
            .any(|d| d.name == "writer-0")
    });
    let (status, body) = http_get(consumer.metrics_addr(), "/health");
    assert_eq!(status, 503, "degraded is not ready");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "degraded");
    let reason = health["reason"].as_str().unwrap();
    assert!(
        reason.contains("writer-0 panicked: fault injected"),
        "{reason}"
    );
    assert_eq!(health["deadThreads"][0]["name"], "writer-0");

    broker.publish_messages(&[message(1, 8, "after the writer died")]);
    wait_until("its queue consumer stopped, saying why", || {
        consumer
            .health()
            .dead_threads
            .iter()
            .any(|d| d.name == "consumer-r1s3" && d.reason.contains("writer is gone"))
    });
    let queue = broker.topology.queue(1, 3);
    wait_until("both messages back in their queue", || {
        broker.depth(&queue) == 2
    });
    assert_eq!(consumer.health().totals.acked, 0);
    assert_eq!(db.rows(), 0);
    let metrics = consumer.metrics();
    assert!(
        metrics.contains("chatflow_consumer_dead_threads 2.0\n"),
        "{metrics}"
    );
    let err = consumer.shutdown().expect_err("a thread panicked");
    assert!(err.to_string().contains("writer-0"), "{err}");
}

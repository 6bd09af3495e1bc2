//! The write path and the read queries against real PostgreSQL (a database
//! per test): rollups maintained batch by batch equal a rebuild from the
//! stored rows (through the fast path, the deduplicating path with
//! redeliveries, and a backfill of rows stored without them), and every
//! read query answers exactly what a brute-force count over the same rows
//! says, for windows with ragged edges.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use chatflow_database::read::active_users::active_users;
use chatflow_database::read::analytics::{per_user, room_counts, series};
use chatflow_database::read::pages::{page, Order, PageRequest, Subject};
use chatflow_database::read::user_rooms::user_rooms;
use chatflow_database::row::{unix_micros, unix_ms};
use chatflow_database::{copy_batch, insert_batch_deduplicated, schema, Rollups, Row, Window};
use chatflow_testkit::database::TestDatabase;
use chatflow_testkit::unique_namespace;
use postgres::Client;

/// A small deterministic generator (no dependency on `rand` here).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// 2026-11-30T00:00:00Z: data lives in the past, in partitions of its own.
const BASE_MS: i64 = 1_796_083_200_000;

fn rows(n: usize, seed: u64, span_ms: i64) -> Vec<Row> {
    let mut rng = Lcg(seed);
    let mut out: Vec<Row> = (0..n)
        .map(|i| {
            // A skewed user population: a few very busy users, many rare.
            let user = if rng.next(4) == 0 {
                1 + rng.next(5) as i32
            } else {
                1 + rng.next(100_000) as i32
            };
            let at = BASE_MS + rng.next(span_ms as u64) as i64;
            let kind = match rng.next(20) {
                0 => "JOIN",
                1 => "LEAVE",
                _ => "TEXT",
            };
            Row {
                message_id: uuid::Uuid::from_u128(
                    ((at as u128) << 64) | (seed as u128) << 32 | i as u128,
                ),
                room_id: 1 + rng.next(20) as i32,
                user_id: user,
                username: format!("user{user}"),
                message: format!("message {i}"),
                message_type: kind,
                client_timestamp: unix_ms(at - 5),
                server_timestamp: unix_ms(at),
                server_id: "test".into(),
            }
        })
        .collect();
    out.sort_by_key(|r| r.server_timestamp);
    out
}

fn database() -> (TestDatabase, Client) {
    let db = TestDatabase::new(&unique_namespace("db")).with_schema();
    let mut client = db.client();
    let day = chrono::DateTime::from_timestamp_millis(BASE_MS)
        .unwrap()
        .date_naive();
    schema::ensure_partitions_from(&mut client, day, 3).unwrap();
    (db, client)
}

/// Every rollup table, as sorted text, for comparisons.
fn rollups(client: &mut Client) -> Vec<String> {
    [
        "SELECT resolution_s, bucket, room_id, text_messages, join_messages, leave_messages FROM rollup_room_counts",
        "SELECT second, messages FROM rollup_second_counts",
        "SELECT resolution_s, bucket, md5(users::text) FROM rollup_active_users",
        "SELECT user_id, room_id, messages, last_activity FROM user_rooms",
    ]
    .iter()
    .flat_map(|sql| {
        let text = format!("SELECT row({})::text FROM ({sql}) t ORDER BY 1", "t.*");
        client
            .query(&text, &[])
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    })
    .collect()
}

fn rebuild(client: &mut Client) -> i64 {
    client
        .query_one("SELECT chatflow_rebuild_rollups()", &[])
        .unwrap()
        .get(0)
}

/// Rollups written batch by batch — fast path, then redeliveries through
/// the deduplicating path (old rows, new rows, one message twice in a
/// batch) — are exactly what a rebuild from `messages` computes.
#[test]
fn incremental_rollups_equal_a_rebuild() {
    let (_db, mut client) = database();
    let all = rows(6_000, 7, 5 * 3_600_000);
    let (first, rest) = all.split_at(4_000);
    for batch in first.chunks(700) {
        copy_batch(&mut client, batch, Rollups::Maintain).unwrap();
    }
    // A redelivered batch: 300 rows already stored, 1,000 new, and one new
    // message twice.
    let mut redelivered: Vec<Row> = first[100..400].to_vec();
    redelivered.extend_from_slice(&rest[..1_000]);
    redelivered.push(rest[0].clone());
    let inserted = insert_batch_deduplicated(&mut client, &redelivered, Rollups::Maintain).unwrap();
    assert_eq!(inserted, 1_000);
    copy_batch(&mut client, &rest[1_000..], Rollups::Maintain).unwrap();

    let incremental = rollups(&mut client);
    assert!(!incremental.is_empty());
    assert_eq!(
        rebuild(&mut client),
        6_000,
        "rebuild counts every stored row once"
    );
    assert_eq!(rollups(&mut client), incremental);
}

/// A database with messages from before the rollups is filled by the
/// backfill (as setup_database.sh runs it), once.
#[test]
fn backfill_fills_rollups_of_an_upgraded_database_once() {
    let (_db, mut client) = database();
    let all = rows(2_000, 11, 3 * 3_600_000);
    copy_batch(&mut client, &all, Rollups::Skip).unwrap();
    assert!(rollups(&mut client).is_empty());
    let filled: i64 = client
        .query_one("SELECT chatflow_backfill_rollups()", &[])
        .unwrap()
        .get(0);
    assert_eq!(filled, 2_000);
    let backfilled = rollups(&mut client);
    let again: i64 = client
        .query_one("SELECT chatflow_backfill_rollups()", &[])
        .unwrap()
        .get(0);
    assert_eq!(again, 0, "a second run is a no-op");
    // The backfill's bitmaps and counts are those the writers would make.
    let (_db2, mut fresh) = database();
    copy_batch(&mut fresh, &all, Rollups::Maintain).unwrap();
    assert_eq!(rollups(&mut fresh), backfilled);
}

/// Brute-force answers over the rows in memory.
struct Model<'a> {
    rows: &'a [Row],
}

impl Model<'_> {
    fn within(&self, w: Window) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(move |r| {
            let t = unix_micros(r.server_timestamp);
            t >= w.start && t < w.end
        })
    }

    fn active(&self, w: Window) -> u64 {
        self.within(w)
            .map(|r| r.user_id)
            .collect::<BTreeSet<_>>()
            .len() as u64
    }

    fn per_room(&self, w: Window) -> BTreeMap<i32, (i64, i64, i64)> {
        let mut out = BTreeMap::new();
        for r in self.within(w) {
            let e: &mut (i64, i64, i64) = out.entry(r.room_id).or_default();
            match r.message_type {
                "JOIN" => e.1 += 1,
                "LEAVE" => e.2 += 1,
                _ => e.0 += 1,
            }
        }
        out
    }

    fn per_user(&self, w: Window) -> BTreeMap<i32, (i64, BTreeSet<i32>)> {
        let mut out: BTreeMap<i32, (i64, BTreeSet<i32>)> = BTreeMap::new();
        for r in self.within(w) {
            let e = out.entry(r.user_id).or_default();
            e.0 += 1;
            e.1.insert(r.room_id);
        }
        out
    }

    fn series(&self, w: Window, step_s: i64) -> Vec<i64> {
        let step = step_s * 1_000_000;
        let first = w.start.div_euclid(step);
        let last = (w.end - 1).div_euclid(step);
        let mut counts = vec![0; (last - first + 1) as usize];
        for r in self.within(w) {
            counts[(unix_micros(r.server_timestamp).div_euclid(step) - first) as usize] += 1;
        }
        counts
    }
}

fn window(from_ms: i64, to_ms: i64) -> Window {
    Window::new(unix_ms(BASE_MS + from_ms), unix_ms(BASE_MS + to_ms)).unwrap()
}

/// Active users, room and type counts, series at every step and the
/// per-user analytics equal brute force for windows with ragged edges,
/// aligned windows, windows inside one minute, and empty ones.
#[test]
fn analytics_equal_brute_force_over_ragged_windows() {
    let (_db, mut client) = database();
    let all = rows(8_000, 3, 4 * 3_600_000);
    for batch in all.chunks(1_000) {
        copy_batch(&mut client, batch, Rollups::Maintain).unwrap();
    }
    let model = Model { rows: &all };
    let windows = [
        window(0, 4 * 3_600_000),                       // everything, aligned
        window(1_234, 3 * 3_600_000 + 59_999),          // ragged both ends, spans hours
        window(3_600_000 - 1, 3_600_000 + 1),           // two ms around an hour boundary
        window(61_000, 119_000),                        // inside one minute's neighbourhood
        window(7_200_000 + 30_500, 7_200_000 + 40_500), // inside one minute
        window(5 * 3_600_000, 6 * 3_600_000),           // after the data: empty
    ];
    for w in windows {
        assert_eq!(
            active_users(&mut client, w).unwrap(),
            model.active(w),
            "{w:?}"
        );
        let counts = room_counts(&mut client, w).unwrap();
        let got: BTreeMap<i32, (i64, i64, i64)> = counts
            .iter()
            .map(|(&room, c)| (room, (c.text, c.join, c.leave)))
            .collect();
        assert_eq!(got, model.per_room(w), "{w:?}");
        for step in [1, 60, 3600] {
            let s = series(&mut client, w, step).unwrap().unwrap();
            assert_eq!(s.counts, model.series(w, step), "{w:?} step {step}");
            assert_eq!(unix_micros(s.start).rem_euclid(step * 1_000_000), 0);
        }
        let users = per_user(&mut client, w, 5).unwrap();
        let expected = model.per_user(w);
        assert_eq!(users.users as usize, expected.len(), "{w:?}");
        let mut top: Vec<(i32, i64, i64)> = expected
            .iter()
            .map(|(&u, (n, rooms))| (u, *n, rooms.len() as i64))
            .collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        top.truncate(5);
        let got: Vec<(i32, i64, i64)> = users
            .top
            .iter()
            .map(|t| (t.user_id, t.messages, t.rooms))
            .collect();
        assert_eq!(got, top, "{w:?}");
        let mut messages_per_user = BTreeMap::new();
        let mut rooms_per_user = BTreeMap::new();
        for (n, rooms) in expected.values() {
            *messages_per_user.entry(*n).or_insert(0) += 1;
            *rooms_per_user.entry(rooms.len() as i64).or_insert(0) += 1;
        }
        assert_eq!(users.messages_per_user, messages_per_user, "{w:?}");
        assert_eq!(users.rooms_per_user, rooms_per_user, "{w:?}");
    }
}

/// A user's rooms (rollup) and paged history (keyset, both directions)
/// equal brute force; the pages join up with no gap or repeat.
#[test]
fn user_rooms_and_pages_equal_brute_force() {
    let (_db, mut client) = database();
    let all = rows(3_000, 5, 2 * 3_600_000);
    copy_batch(&mut client, &all, Rollups::Maintain).unwrap();
    for user in [1, 2, 3] {
        let mut expected: BTreeMap<i32, (i64, SystemTime)> = BTreeMap::new();
        for r in all.iter().filter(|r| r.user_id == user) {
            let e = expected.entry(r.room_id).or_insert((0, UNIX_EPOCH));
            e.0 += 1;
            e.1 = e.1.max(r.server_timestamp);
        }
        let got = user_rooms(&mut client, user).unwrap();
        assert_eq!(got.len(), expected.len());
        for room in &got {
            assert_eq!(expected[&room.room_id], (room.messages, room.last_activity));
        }
        assert!(got.windows(2).all(|w| w[0].messages >= w[1].messages));
    }
    let absent = (1..=100_000)
        .find(|u| all.iter().all(|r| r.user_id != *u))
        .unwrap();
    assert!(
        user_rooms(&mut client, absent).unwrap().is_empty(),
        "a user who never posted has no rooms"
    );

    let start = unix_ms(BASE_MS + 600_000);
    let end = unix_ms(BASE_MS + 5_400_000);
    for (subject, order) in [
        (Subject::Room(7), Order::Asc),
        (Subject::Room(7), Order::Desc),
        (Subject::User(1), Order::Asc),
    ] {
        let mut expected: Vec<&Row> = all
            .iter()
            .filter(|r| match subject {
                Subject::Room(id) => r.room_id == id,
                Subject::User(id) => r.user_id == id,
            })
            .filter(|r| r.server_timestamp >= start && r.server_timestamp < end)
            .collect();
        expected.sort_by_key(|r| (r.server_timestamp, r.message_id));
        if order == Order::Desc {
            expected.reverse();
        }
        let mut walked = Vec::new();
        let mut after = None;
        loop {
            let p = page(
                &mut client,
                &PageRequest {
                    subject,
                    start: Some(start),
                    end: Some(end),
                    order,
                    limit: 17,
                    after,
                },
            )
            .unwrap();
            assert!(p.messages.len() <= 17);
            walked.extend(p.messages.iter().map(|m| m.message_id));
            match p.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let expected_ids: Vec<uuid::Uuid> = expected.iter().map(|r| r.message_id).collect();
        assert!(expected_ids.len() > 17, "enough rows for several pages");
        assert_eq!(walked, expected_ids, "{subject:?} {order:?}");
    }
}

/// Rooms past 63 (beyond the one-aggregate bitmask) are counted exactly
/// too: the per-user analytics fall back to counting (user, room) pairs.
#[test]
fn per_user_rooms_are_exact_past_room_63() {
    let (_db, mut client) = database();
    let mut all = rows(2_000, 13, 3_600_000);
    for (i, row) in all.iter_mut().enumerate() {
        row.room_id = 55 + (i % 20) as i32; // rooms 55..=74
    }
    copy_batch(&mut client, &all, Rollups::Maintain).unwrap();
    let model = Model { rows: &all };
    let w = window(0, 3_600_000);
    let users = per_user(&mut client, w, 3).unwrap();
    let expected = model.per_user(w);
    let mut rooms_per_user = BTreeMap::new();
    for (_, rooms) in expected.values() {
        *rooms_per_user.entry(rooms.len() as i64).or_insert(0) += 1;
    }
    assert_eq!(users.rooms_per_user, rooms_per_user);
    assert_eq!(users.users as usize, expected.len());
    let top = &users.top[0];
    assert_eq!(expected[&top.user_id].1.len() as i64, top.rooms);
}

/// The active-users bitmaps are stored with lz4 wherever the server has it
/// (schema.sql: pglz cost 0.87 ms an update on a sparse bitmap), and still
/// read back exactly: a sparse minute written by the writers' path comes
/// back lz4-compressed and holds the batch's users.
#[test]
fn active_user_bitmaps_are_lz4_compressed_where_the_server_has_it() {
    let (_db, mut client) = database();
    let has_lz4 = client
        .batch_execute("SET default_toast_compression = 'lz4'; RESET default_toast_compression")
        .is_ok();
    let method: i8 = client
        .query_one(
            "SELECT attcompression FROM pg_attribute
             WHERE attrelid = 'rollup_active_users'::regclass AND attname = 'users'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        method as u8 == b'l',
        has_lz4,
        "attcompression {:?}",
        method as u8 as char
    );

    // One minute, a few hundred users: a bitmap of mostly zeros.
    let batch = rows(300, 21, 50_000);
    copy_batch(&mut client, &batch, Rollups::Maintain).unwrap();
    let users: BTreeSet<i32> = batch.iter().map(|r| r.user_id).collect();
    // A whole minute: the reader answers from the minute's bitmap alone.
    assert_eq!(
        active_users(&mut client, window(0, 60_000)).unwrap(),
        users.len() as u64
    );
    if has_lz4 {
        let stored: Option<String> = client
            .query_one(
                "SELECT pg_column_compression(users) FROM rollup_active_users WHERE resolution_s = 60",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(stored.as_deref(), Some("lz4"));
    }
}

//! The read API (server/API.md) over HTTP against real PostgreSQL (a
//! database per test): a hand-counted set of messages answers every core
//! query and every analytics number exactly, and again after more inserts;
//! paging walks a room's whole history with no gap or repeat while inserts
//! go on; parameters at and past their edges give empty results or 400s
//! naming the parameter (SQL metacharacters included, which change
//! nothing); the API answers 503 while PostgreSQL is cut off — the
//! WebSocket port unaffected — and recovers by itself, also when the
//! server started with the database already down; a query past the
//! statement timeout is a 504.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chatflow_database::row::unix_ms;
use chatflow_database::{copy_batch, schema, DatabaseSettings, Rollups, Row};
use chatflow_server::config::ApiConfig;
use chatflow_server::{BrokerKind, Config, Server};
use chatflow_testkit::database::TestDatabase;
use chatflow_testkit::{http_request, HttpResponse, Proxy};
use common::*;
use serde_json::Value;

/// 2026-11-30T10:00:00Z: the hand-counted messages live in the past.
const T10: i64 = 1_796_032_800_000;
const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;

fn at(ms: i64) -> String {
    chatflow_database::read::rfc3339(unix_ms(ms))
}

/// A row of `user` in `room`, stamped `ms`; `n` makes its id unique and
/// orders ids within one millisecond.
fn row(n: u128, user: i32, room: i32, kind: &'static str, ms: i64) -> Row {
    Row {
        message_id: uuid::Uuid::from_u128(((ms as u128) << 64) | n),
        room_id: room,
        user_id: user,
        username: format!("user{user}"),
        message: format!("message {n} from {user}"),
        message_type: kind,
        client_timestamp: unix_ms(ms - 3),
        server_timestamp: unix_ms(ms),
        server_id: "seed".into(),
    }
}

/// Twelve messages between 10:00 and 12:00, counted by hand below.
fn known() -> Vec<Row> {
    vec![
        row(1, 1, 2, "TEXT", T10 + 1_000),
        row(2, 1, 2, "TEXT", T10 + 2_000),
        row(3, 1, 2, "TEXT", T10 + 3_000),
        row(4, 1, 2, "TEXT", T10 + 4_000),
        row(5, 1, 2, "TEXT", T10 + 5_000),
        row(6, 1, 3, "JOIN", T10 + 30 * MIN),
        row(7, 2, 2, "TEXT", T10 + MIN),
        row(8, 2, 2, "TEXT", T10 + HOUR - 1),
        row(9, 2, 2, "TEXT", T10 + HOUR),
        row(10, 3, 5, "LEAVE", T10 + HOUR + 30 * MIN),
        row(11, 100_000, 20, "TEXT", T10 + 15 * MIN + 500),
        row(12, 100_000, 20, "TEXT", T10 + 15 * MIN + 500),
    ]
}

struct Fixture {
    db: TestDatabase,
    server: Server,
    api: SocketAddr,
}

fn api_config(database: &str, port: u16) -> ApiConfig {
    ApiConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        threads: 2,
        database: DatabaseSettings {
            name: database.to_string(),
            port,
            ..DatabaseSettings::default()
        },
        pool_size: 4,
        pool_timeout: Duration::from_secs(1),
        ..ApiConfig::default()
    }
}

fn server_with_api(api: ApiConfig) -> Server {
    Server::start(Config {
        api: Some(api),
        ..config(BrokerKind::Memory)
    })
    .expect("server starts")
}

/// A database with the schema, partitions for the seed's days, `rows`
/// stored through the writers' path, and a server whose API reads it.
fn fixture(tag: &str, rows: &[Row]) -> Fixture {
    let db = TestDatabase::new(&unique_namespace(tag)).with_schema();
    let mut client = db.client();
    let day = chrono::DateTime::from_timestamp_millis(T10)
        .unwrap()
        .date_naive();
    schema::ensure_partitions_from(&mut client, day, 2).unwrap();
    schema::ensure_partitions(&mut client).unwrap();
    copy_batch(&mut client, rows, Rollups::Maintain).unwrap();
    let server = server_with_api(api_config(&db.name, 5432));
    let api = server.api_addr().expect("the API is on");
    Fixture { db, server, api }
}

fn get(addr: SocketAddr, target: &str) -> HttpResponse {
    http_request(addr, "GET", target, TIMEOUT)
}

/// A 200's JSON document.
fn ok(addr: SocketAddr, target: &str) -> Value {
    let response = get(addr, target);
    assert_eq!(response.status, 200, "{target}: {}", response.body);
    assert_eq!(response.header("Content-Type"), Some("application/json"));
    let doc: Value = serde_json::from_str(&response.body).expect("JSON");
    assert!(doc["totalMs"].as_f64().unwrap() >= 0.0, "{target}: totalMs");
    assert!(doc["timingsMs"].is_object(), "{target}: timingsMs");
    doc
}

/// A 400 naming `parameter`.
fn refused(addr: SocketAddr, target: &str, parameter: &str) -> String {
    let response = get(addr, target);
    assert_eq!(response.status, 400, "{target}: {}", response.body);
    let doc: Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(doc["parameter"], parameter, "{target}: {}", response.body);
    doc["error"].as_str().unwrap().to_string()
}

fn ids(doc: &Value) -> Vec<u128> {
    doc["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            uuid::Uuid::parse_str(m["messageId"].as_str().unwrap())
                .unwrap()
                .as_u128()
                & 0xffff
        })
        .collect()
}

/// Every core query and every analytics number of the hand-counted set,
/// then again after three more messages are stored.
#[test]
fn core_queries_and_analytics_are_exact() {
    let f = fixture("api-exact", &known());
    let window = format!("start={}&end={}", at(T10), at(T10 + 2 * HOUR));

    // A room's messages, in time order (ties on the millisecond by id).
    let room2 = ok(f.api, "/api/rooms/2/messages");
    assert_eq!(ids(&room2), vec![1, 2, 3, 4, 5, 7, 8, 9]);
    assert_eq!(room2["count"], 8);
    assert!(room2["nextCursor"].is_null());
    let first = &room2["messages"][0];
    assert_eq!(first["userId"], 1);
    assert_eq!(first["username"], "user1");
    assert_eq!(first["messageType"], "TEXT");
    assert_eq!(first["message"], "message 1 from 1");
    assert_eq!(first["serverTimestamp"], at(T10 + 1_000));
    assert_eq!(first["timestamp"], at(T10 + 997));
    assert_eq!(first["serverId"], "seed");
    assert!(room2["timingsMs"]["roomMessages"].as_f64().is_some());
    let newest = ok(f.api, "/api/rooms/2/messages?order=desc&limit=3");
    assert_eq!(ids(&newest), vec![9, 8, 7]);
    assert!(newest["nextCursor"].is_string());
    let ranged = ok(
        f.api,
        &format!(
            "/api/rooms/2/messages?start={}&end={}",
            at(T10 + 3_000),
            at(T10 + HOUR)
        ),
    );
    assert_eq!(
        ids(&ranged),
        vec![3, 4, 5, 7, 8],
        "start inclusive, end exclusive"
    );
    assert_eq!(ids(&ok(f.api, "/api/rooms/20/messages")), vec![11, 12]);

    // A user's history and rooms.
    assert_eq!(
        ids(&ok(f.api, "/api/users/1/messages")),
        vec![1, 2, 3, 4, 5, 6]
    );
    let rooms = ok(f.api, "/api/users/1/rooms");
    assert_eq!(
        rooms["rooms"],
        serde_json::json!([
            {"roomId": 2, "messages": 5, "lastActivity": at(T10 + 5_000)},
            {"roomId": 3, "messages": 1, "lastActivity": at(T10 + 30 * MIN)},
        ])
    );
    assert_eq!(
        ok(f.api, "/api/users/4242/rooms")["rooms"],
        serde_json::json!([])
    );
    assert_eq!(ok(f.api, "/api/users/4242/messages")["count"], 0);

    // Active users: the whole set, a ragged window, an empty one.
    assert_eq!(
        ok(f.api, &format!("/api/active-users?{window}"))["activeUsers"],
        4
    );
    let ragged = format!("start={}&end={}", at(T10 + 3_000), at(T10 + HOUR));
    assert_eq!(
        ok(f.api, &format!("/api/active-users?{ragged}"))["activeUsers"],
        3
    );
    let empty = format!("start={}&end={}", at(T10 - HOUR), at(T10));
    assert_eq!(
        ok(f.api, &format!("/api/active-users?{empty}"))["activeUsers"],
        0
    );

    // The analytics of the whole set.
    let a = ok(f.api, &format!("/api/analytics?{window}&topN=3"));
    assert_eq!(a["totalMessages"], 12);
    assert_eq!(
        a["messageTypes"],
        serde_json::json!({"TEXT": 10, "JOIN": 1, "LEAVE": 1})
    );
    assert_eq!(a["activeUsers"], 4);
    assert!((a["messagesPerSecond"].as_f64().unwrap() - 12.0 / 7200.0).abs() < 1e-12);
    assert_eq!(
        a["topUsers"],
        serde_json::json!([
            {"userId": 1, "messages": 6, "rooms": 2},
            {"userId": 2, "messages": 3, "rooms": 1},
            {"userId": 100000, "messages": 2, "rooms": 1},
        ])
    );
    assert_eq!(
        a["topRooms"],
        serde_json::json!([
            {"roomId": 2, "messages": 8},
            {"roomId": 20, "messages": 2},
            {"roomId": 3, "messages": 1},
        ])
    );
    assert_eq!(
        a["participation"]["messagesPerUser"],
        serde_json::json!([
            {"min": 1, "max": 1, "users": 1},
            {"min": 2, "max": 3, "users": 2},
            {"min": 4, "max": 7, "users": 1},
        ])
    );
    assert_eq!(
        a["participation"]["roomsPerUser"],
        serde_json::json!([{"rooms": 1, "users": 3}, {"rooms": 2, "users": 1}])
    );
    // Two hours: per minute and per hour, no per second.
    assert!(a["series"]["perSecond"].is_null());
    assert_eq!(a["series"]["perHour"]["counts"], serde_json::json!([10, 2]));
    assert_eq!(a["series"]["perHour"]["start"], at(T10));
    let minutes: Vec<i64> = a["series"]["perMinute"]["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_i64().unwrap())
        .collect();
    assert_eq!(minutes.len(), 120);
    assert_eq!(minutes.iter().sum::<i64>(), 12);
    assert_eq!(
        (minutes[0], minutes[1], minutes[15], minutes[30]),
        (5, 1, 2, 1)
    );
    assert_eq!((minutes[59], minutes[60], minutes[90]), (1, 1, 1));
    for part in ["roomCounts", "series", "perUser"] {
        assert!(a["timingsMs"][part].as_f64().is_some(), "{part} timed");
    }

    // A ragged window of under an hour has a per-second series too.
    let r = ok(f.api, &format!("/api/analytics?{ragged}"));
    assert_eq!(r["totalMessages"], 8);
    let seconds = r["series"]["perSecond"]["counts"].as_array().unwrap();
    assert_eq!(seconds.len(), 3600 - 3);
    assert_eq!(r["series"]["perSecond"]["start"], at(T10 + 3_000));
    assert_eq!(seconds.iter().map(|n| n.as_i64().unwrap()).sum::<i64>(), 8);

    // The one document: busiest room and user chosen, newest first.
    let m = ok(f.api, &format!("/api/metrics?{window}&limit=2"));
    let core = &m["coreQueries"];
    assert_eq!(core["roomMessages"]["roomId"], 2);
    assert_eq!(
        core["roomMessages"]["chosenBy"],
        "busiest room in the window"
    );
    assert_eq!(ids(&core["roomMessages"]), vec![9, 8]);
    assert_eq!(core["userMessages"]["userId"], 1);
    assert_eq!(ids(&core["userMessages"]), vec![6, 5]);
    assert_eq!(core["activeUsers"], 4);
    assert_eq!(core["userRooms"]["rooms"].as_array().unwrap().len(), 2);
    assert_eq!(m["analytics"]["totalMessages"], 12);
    assert_eq!(m["live"]["database"]["pool"]["maxSize"], 4);
    assert!(m["live"]["servers"]["servers"].is_array());
    let chosen = ok(f.api, &format!("/api/metrics?{window}&roomId=20&userId=3"));
    assert_eq!(
        chosen["coreQueries"]["roomMessages"]["chosenBy"],
        "requested"
    );
    assert_eq!(ids(&chosen["coreQueries"]["roomMessages"]), vec![12, 11]);
    assert_eq!(ids(&chosen["coreQueries"]["userMessages"]), vec![10]);

    // Three more messages: every rollup follows.
    let mut client = f.db.client();
    copy_batch(
        &mut client,
        &[
            row(13, 3, 2, "TEXT", T10 + 45 * MIN),
            row(14, 4, 2, "TEXT", T10 + 2 * HOUR - 1),
            row(15, 1, 4, "TEXT", T10 + HOUR + 10 * MIN),
        ],
        Rollups::Maintain,
    )
    .unwrap();
    let b = ok(f.api, &format!("/api/analytics?{window}&topN=2"));
    assert_eq!(b["totalMessages"], 15);
    assert_eq!(b["messageTypes"]["TEXT"], 13);
    assert_eq!(b["activeUsers"], 5);
    assert_eq!(
        b["topUsers"],
        serde_json::json!([
            {"userId": 1, "messages": 7, "rooms": 3},
            {"userId": 2, "messages": 3, "rooms": 1},
        ])
    );
    assert_eq!(
        b["topRooms"][0],
        serde_json::json!({"roomId": 2, "messages": 10})
    );
    assert_eq!(b["series"]["perHour"]["counts"], serde_json::json!([11, 4]));
    assert_eq!(
        b["participation"]["roomsPerUser"],
        serde_json::json!([{"rooms": 1, "users": 3}, {"rooms": 2, "users": 1}, {"rooms": 3, "users": 1}])
    );
    assert_eq!(
        ok(f.api, &format!("/api/active-users?{window}"))["activeUsers"],
        5
    );
    assert_eq!(ok(f.api, "/api/users/3/rooms")["rooms"][0]["roomId"], 2);
    f.server.shutdown().unwrap();
}

/// A window longer than `--api-max-user-window-hours` gets its analytics
/// without the per-user scan, saying so; distinct users still come exact
/// from the bitmaps, and /api/metrics says why it picked user 1.
#[test]
fn long_windows_leave_out_the_per_user_part_and_say_so() {
    let db = TestDatabase::new(&unique_namespace("api-long")).with_schema();
    let mut client = db.client();
    let day = chrono::DateTime::from_timestamp_millis(T10)
        .unwrap()
        .date_naive();
    schema::ensure_partitions_from(&mut client, day, 2).unwrap();
    copy_batch(&mut client, &known(), Rollups::Maintain).unwrap();
    let server = server_with_api(ApiConfig {
        max_user_window: Duration::from_secs(3600),
        ..api_config(&db.name, 5432)
    });
    let api = server.api_addr().unwrap();
    let two_hours = format!("start={}&end={}", at(T10), at(T10 + 2 * HOUR));
    let a = ok(api, &format!("/api/analytics?{two_hours}"));
    assert_eq!(a["totalMessages"], 12);
    assert_eq!(a["activeUsers"], 4, "from the bitmaps");
    assert!(
        a["topUsers"].is_null() && a["participation"].is_null(),
        "{a}"
    );
    assert!(
        a["perUserOmitted"]
            .as_str()
            .unwrap()
            .contains("at most 1 h"),
        "{a}"
    );
    assert!(a["timingsMs"]["perUser"].is_null() && a["timingsMs"]["activeUsers"].is_number());
    let one_hour = format!("start={}&end={}", at(T10), at(T10 + HOUR));
    let b = ok(api, &format!("/api/analytics?{one_hour}"));
    assert_eq!(b["topUsers"][0]["userId"], 1, "an hour is within the limit");
    assert!(b.get("perUserOmitted").is_none());
    let m = ok(api, &format!("/api/metrics?{two_hours}"));
    assert_eq!(m["coreQueries"]["userMessages"]["userId"], 1);
    assert!(m["coreQueries"]["userMessages"]["chosenBy"]
        .as_str()
        .unwrap()
        .contains("not computed"));
    server.shutdown().unwrap();
}

/// Walking a room's history page by page while another thread keeps
/// storing messages in it: every message stored before the walk is seen
/// exactly once, and the walk never goes backwards (no repeat, no gap
/// among what sorts after the cursor).
#[test]
fn paging_walks_the_whole_history_while_inserts_continue() {
    let history: Vec<Row> = (0..1_500)
        .map(|i| {
            row(
                i as u128,
                1 + (i % 50),
                7,
                "TEXT",
                T10 + (i as i64) * 997 / 3,
            )
        })
        .collect();
    let f = fixture("api-paging", &history);
    let stop = Arc::new(AtomicBool::new(false));
    let inserted = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, inserted) = (stop.clone(), inserted.clone());
        let mut client = f.db.client();
        std::thread::spawn(move || {
            let mut n = 10_000u128;
            while !stop.load(Ordering::Relaxed) {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as i64;
                let batch: Vec<Row> = (0..5)
                    .map(|k| {
                        n += 1;
                        row(n, 9, 7, "TEXT", now + k)
                    })
                    .collect();
                copy_batch(&mut client, &batch, Rollups::Maintain).unwrap();
                inserted.fetch_add(5, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    for order in ["asc", "desc"] {
        let mut seen = Vec::new();
        let mut keys = Vec::new();
        let mut target = format!("/api/rooms/7/messages?order={order}&limit=97");
        // Descending walks start from what exists when they start (new
        // rows sort before the cursor), so they end; ascending walks are
        // bounded to the history's end so they end too.
        if order == "asc" {
            target.push_str(&format!("&end={}", at(T10 + 600_000)));
        }
        loop {
            let page = ok(f.api, &target);
            for m in page["messages"].as_array().unwrap() {
                let id = uuid::Uuid::parse_str(m["messageId"].as_str().unwrap()).unwrap();
                keys.push((m["serverTimestamp"].as_str().unwrap().to_string(), id));
                seen.push(id);
            }
            match page["nextCursor"].as_str() {
                Some(cursor) => {
                    let base = target.split("&cursor=").next().unwrap().to_string();
                    target = format!("{base}&cursor={cursor}");
                }
                None => break,
            }
        }
        let mut sorted = keys.clone();
        sorted.sort();
        if order == "desc" {
            sorted.reverse();
        }
        assert_eq!(keys, sorted, "{order}: the walk never goes backwards");
        let unique: HashSet<_> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "{order}: no message twice");
        for r in &history {
            assert!(
                unique.contains(&r.message_id),
                "{order}: {} missed",
                r.message_id
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(
        inserted.load(Ordering::Relaxed) > 0,
        "inserts went on meanwhile"
    );
    f.server.shutdown().unwrap();
}

/// Parameters at and past their edges: empty results where the question
/// is fair, a 400 naming the parameter where it is not; unknown paths are
/// 404, other methods 405; SQL metacharacters are just bad values and
/// change nothing.
#[test]
fn bad_parameters_are_refused_by_name() {
    let f = fixture("api-edges", &known());
    let a = f.api;
    refused(a, "/api/rooms/21/messages", "roomId");
    refused(a, "/api/rooms/0/messages", "roomId");
    refused(a, "/api/rooms/x/messages", "roomId");
    refused(a, "/api/users/100001/messages", "userId");
    refused(a, "/api/users/0/rooms", "userId");
    refused(
        a,
        "/api/users/1%27%3B%20DROP%20TABLE%20messages%3B--/rooms",
        "userId",
    );
    refused(a, "/api/rooms/1/messages?start=yesterday", "start");
    refused(a, "/api/rooms/1/messages?end=2026-13-01T00:00:00Z", "end");
    refused(
        a,
        "/api/rooms/1/messages?start=%27%3B%20DROP%20TABLE%20messages%3B--",
        "start",
    );
    refused(
        a,
        &format!("/api/rooms/1/messages?start={}&end={}", at(T10), at(T10)),
        "start",
    );
    refused(a, "/api/rooms/1/messages?limit=0", "limit");
    refused(a, "/api/rooms/1/messages?limit=1001", "limit");
    refused(
        a,
        "/api/rooms/1/messages?limit=99999999999999999999999",
        "limit",
    );
    refused(a, "/api/rooms/1/messages?limit=-5", "limit");
    refused(a, "/api/rooms/1/messages?order=sideways", "order");
    refused(a, "/api/rooms/1/messages?cursor=not-a-cursor", "cursor");
    refused(
        a,
        "/api/rooms/1/messages?cursor=%27%20OR%201%3D1--",
        "cursor",
    );
    refused(a, "/api/rooms/1/messages?limit=1&limit=2", "limit");
    refused(
        a,
        "/api/rooms/1/messages?strat=2026-12-01T00:00:00Z",
        "strat",
    );
    refused(a, "/api/users/1/rooms?limit=5", "limit");
    refused(a, "/api/analytics?topN=0", "topN");
    refused(a, "/api/analytics?topN=101", "topN");
    refused(a, "/api/metrics?roomId=21", "roomId");
    refused(a, "/api/metrics?userId=abc", "userId");
    let long = refused(
        a,
        &format!(
            "/api/analytics?start={}&end={}",
            at(T10 - 200 * HOUR),
            at(T10)
        ),
        "start",
    );
    assert!(long.contains("--api-max-window-hours"), "{long}");
    refused(
        a,
        &format!("/api/active-users?start={}&end={}", at(T10), at(T10 - 1)),
        "start",
    );
    // A cursor of room 2 handed to room 3, or used the other way round.
    let page = ok(a, "/api/rooms/2/messages?limit=1");
    let cursor = page["nextCursor"].as_str().unwrap();
    let other = refused(
        a,
        &format!("/api/rooms/3/messages?cursor={cursor}"),
        "cursor",
    );
    assert!(other.contains("another query"), "{other}");
    refused(
        a,
        &format!("/api/rooms/2/messages?order=desc&cursor={cursor}"),
        "cursor",
    );
    assert_eq!(
        ids(&ok(
            a,
            &format!("/api/rooms/2/messages?limit=1&cursor={cursor}")
        )),
        vec![2]
    );

    // Fair questions with empty answers.
    assert_eq!(ok(a, "/api/rooms/1/messages?limit=1000")["count"], 0);
    let before = format!("start={}&end={}", at(T10 - 2 * HOUR), at(T10 - HOUR));
    let nothing = ok(a, &format!("/api/analytics?{before}"));
    assert_eq!(nothing["totalMessages"], 0);
    assert_eq!(nothing["topUsers"], serde_json::json!([]));
    assert_eq!(nothing["messagesPerSecond"], 0.0);
    let m = ok(a, &format!("/api/metrics?{before}"));
    assert_eq!(
        m["coreQueries"]["roomMessages"]["chosenBy"],
        "no messages in the window: room 1"
    );

    // Paths and methods.
    // (`/` is the live dashboard: server/tests/dashboard.rs.)
    for path in ["/api/nope", "/api/rooms/1", "/index.html", "/api/metrics/"] {
        let r = get(a, path);
        assert_eq!(r.status, 404, "{path}");
        assert!(serde_json::from_str::<Value>(&r.body).unwrap()["error"].is_string());
    }
    for method in ["POST", "PUT", "DELETE"] {
        let r = http_request(a, method, "/api/metrics", TIMEOUT);
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("Allow"), Some("GET, HEAD"));
    }
    assert_eq!(f.db.rows(), 12, "nothing was dropped or added");
    f.server.shutdown().unwrap();
}

/// PostgreSQL cut off (through a proxy: only this server's connections):
/// the API answers 503 with the reason and Retry-After, the WebSocket
/// port keeps acking, and the API recovers by itself once it is back. A
/// server started while the database is down starts and recovers too.
#[test]
fn database_outage_is_a_503_and_recovers() {
    let db = TestDatabase::new(&unique_namespace("api-outage")).with_schema();
    let mut client = db.client();
    schema::ensure_partitions(&mut client).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    copy_batch(
        &mut client,
        &[row(1, 5, 1, "TEXT", now - 1_000)],
        Rollups::Maintain,
    )
    .unwrap();
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap());
    proxy.cut();
    // Down from the start: the server starts anyway.
    let server = server_with_api(api_config(&db.name, proxy.port()));
    let api = server.api_addr().unwrap();
    let down = get(api, "/api/users/5/rooms");
    assert_eq!(down.status, 503, "{}", down.body);
    assert_eq!(down.header("Retry-After"), Some("1"));
    let doc: Value = serde_json::from_str(&down.body).unwrap();
    assert!(
        doc["error"]
            .as_str()
            .unwrap()
            .starts_with("database unavailable"),
        "{}",
        down.body
    );
    // The WebSocket side does not care.
    let mut ws = connect(server.local_addr(), 1);
    assert_eq!(
        request(&mut ws, message(5, "still here", "c1"))["type"],
        "ack"
    );

    proxy.restore();
    eventually("the API answers once PostgreSQL is back", || {
        get(api, "/api/users/5/rooms").status == 200
    });
    assert_eq!(ok(api, "/api/users/5/rooms")["rooms"][0]["messages"], 1);

    // Cut again mid-life, with connections pooled: 503, then back.
    proxy.cut();
    eventually("503 while cut", || get(api, "/api/analytics").status == 503);
    assert_eq!(
        request(&mut ws, message(5, "still here", "c2"))["type"],
        "ack"
    );
    proxy.restore();
    eventually("recovered", || get(api, "/api/analytics").status == 200);
    server.shutdown().unwrap();
}

/// A query that runs past the statement timeout is cancelled by PostgreSQL
/// and answered 504 (a rollup table locked by another session makes the
/// query wait).
#[test]
fn a_query_past_the_statement_timeout_is_a_504() {
    let db = TestDatabase::new(&unique_namespace("api-timeout")).with_schema();
    let server = server_with_api(ApiConfig {
        statement_timeout: Duration::from_millis(300),
        ..api_config(&db.name, 5432)
    });
    let api = server.api_addr().unwrap();
    let mut locker = db.client();
    let mut tx = locker.transaction().unwrap();
    tx.batch_execute("LOCK TABLE user_rooms IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let r = get(api, "/api/users/1/rooms");
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(r.body.contains("statement timeout"), "{}", r.body);
    tx.rollback().unwrap();
    assert_eq!(get(api, "/api/users/1/rooms").status, 200);
    server.shutdown().unwrap();
}

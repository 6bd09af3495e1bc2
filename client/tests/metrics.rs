//! `chatflow-client metrics` (the real binary) against a scripted read API:
//! the tables show the document's values, `--json` the document itself,
//! parameters reach the query string, and every failure is a clear error
//! with the documented exit status.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::api::{self, Answer, FakeApi};
use serde_json::json;

/// `chatflow-client metrics ARGS --api-url API`.
fn metrics(api: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chatflow-client"))
        .arg("metrics")
        .args(["--api-url", api])
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `line`'s whitespace-separated words.
fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// Asserts that some line of `text` is exactly `row`'s words (a table row).
fn assert_row(text: &str, row: &[&str]) {
    assert!(
        text.lines().any(|l| words(l) == row),
        "no row {row:?} in:\n{text}"
    );
}

#[test]
fn the_tables_show_the_values_of_the_document() {
    // Every section of a full fleet document, checked on its numbers and ids.
    let fake = FakeApi::start(vec![Answer::ok(&api::fleet_document())]);
    let out = metrics(&fake.url(), &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    assert!(
        text.starts_with(
            "ChatFlow metrics  window 2026-12-01T20:00:00.000Z → 2026-12-01T20:05:00.000Z\n  generated 2026-12-01T20:05:00.120Z in 61.0 ms\n"
        ),
        "{text}"
    );
    // Core queries: the room list with its newest message first, user
    // history with its rooms, active users, the user's rooms table.
    assert!(text.contains("room 7 messages (busiest room in the window): 3 in the document"));
    let newest = text
        .lines()
        .position(|l| l.contains("hello from the canned doc"));
    let older = text.lines().position(|l| l.contains("joined"));
    assert!(newest < older, "newest first");
    assert_row(
        &text,
        &[
            "20:04:59.950",
            "user12",
            "TEXT",
            "hello",
            "from",
            "the",
            "canned",
            "doc",
        ],
    );
    assert_row(&text, &["20:04:58.001", "user4711", "JOIN", "joined"]);
    assert!(text.contains("user 12 history (busiest user in the window): 2 in the document"));
    assert_row(
        &text,
        &["20:01:02.003", "3", "TEXT", "over", "in", "room", "three"],
    );
    assert!(text.contains("active users  8,301"));
    assert!(text.contains("user 12 rooms: 2"));
    assert_row(&text, &["3", "9", "2026-12-01T20:01:02.003Z"]);
    // Analytics: totals, type mix, series, top tables, participation.
    assert!(text.contains("messages      15,000 stored, 50.0 msgs/s, 8,301 active users"));
    assert!(text.contains("types         JOIN 750 (5.0%), LEAVE 750 (5.0%), TEXT 13,500 (90.0%)"));
    assert!(text.contains("per minute    5 buckets of 60 s: min 2,880, avg 3,000, max 3,120"));
    assert!(text.contains("per second    300 buckets of 1 s: min 48, avg 50.0, max 52"));
    assert!(text.contains("per hour      1 bucket of 3,600 s: min 15,000"));
    assert_row(&text, &["4711", "29", "0.2%", "2"]);
    assert_row(&text, &["7", "940", "6.3%"]);
    assert_row(&text, &["2-3", "2,701", "32.5%"]);
    assert_row(&text, &["2", "2,301", "27.7%"]);
    // Live: servers, consumers, queues, pool.
    assert!(text.contains("servers (redis): 2"));
    let server = [
        "ip-10-0-0-5-4242",
        "ok",
        "0.4",
        "813",
        "1,000",
        "5,120",
        "256,000",
        "17",
    ];
    assert_row(&text, &server);
    let server = [
        "ip-10-0-0-6-999",
        "ok",
        "0.6",
        "790",
        "998",
        "4,880",
        "244,000",
        "0",
    ];
    assert_row(&text, &server);
    let consumer = [
        "ip-10-0-0-9-777",
        "ok",
        "0.7",
        "10,000",
        "9,990",
        "4.10",
        "12.50",
        "2",
    ];
    assert_row(&text, &consumer);
    assert!(text.contains("queues (rabbitmq): 12 messages queued, sampled 0.8 s ago"));
    assert_row(&text, &["2", "12", "5", "3", "0", "9", "0", "0"]);
    assert!(text.contains("database postgres@127.0.0.1:5432/chatflow\n"));
    assert!(text.contains(
        "pool: 3 of 8 connections open (1 in use, 2 idle), 1,200 checkouts, 0 timeouts, wait p99 0.40 ms"
    ));
    assert!(text.contains("timings (ms)  activeUsers 2.10, consumers 0.20,"));
    // No line is wider than a terminal.
    for line in text.lines() {
        assert!(line.chars().count() <= 100, "{line}");
    }
    assert_eq!(fake.requests(), ["GET /api/metrics HTTP/1.1"]);
}

#[test]
fn lines_limits_the_message_lines_shown_and_says_how_many_more() {
    // --lines 1: the newest message only, and a note of the other two.
    let fake = FakeApi::start(vec![Answer::ok(&api::fleet_document())]);
    let text = stdout(&metrics(&fake.url(), &["--lines", "1"]));
    assert!(text.contains("hello from the canned doc"));
    assert!(!text.contains("joined"), "{text}");
    assert!(text.contains("… 2 more in the document (--lines N, or --json)"));
}

#[test]
fn parts_that_hold_an_error_are_printed_as_that_error() {
    // Redis and RabbitMQ parts failed: each says why, exit 0, the rest still shows.
    let fake = FakeApi::start(vec![Answer::ok(&api::degraded_document())]);
    let out = metrics(&fake.url(), &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        text.contains("servers: error (redis): redis at 127.0.0.1:6379: connection refused"),
        "{text}"
    );
    assert!(text.contains("consumers: error: not available with --broker memory"));
    assert!(text.contains("queues: error: not available with --broker memory"));
    assert!(text.contains("15,000 stored") && text.contains("database postgres@"));
}

#[test]
fn json_prints_the_served_document_pretty_in_its_own_key_order() {
    // --json: valid JSON equal to what was served, indented, keys as sent.
    let mut doc = api::fleet_document();
    // Served with `generatedAt` first (as the real API orders it), not in
    // serde_json's sorted order, to see that the order survives.
    let generated = doc.as_object_mut().unwrap().remove("generatedAt").unwrap();
    let sorted = doc.to_string();
    let body = format!("{{\"generatedAt\":{generated},{}", &sorted[1..]);
    doc["generatedAt"] = generated;
    let fake = FakeApi::start(vec![Answer { status: 200, body }]);
    let out = metrics(&fake.url(), &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let printed: serde_json::Value = serde_json::from_str(&text).expect("--json prints JSON");
    assert_eq!(printed, doc);
    let head = "{\n  \"generatedAt\": \"2026-12-01T20:05:00.120Z\",\n  \"analytics\": {\n";
    assert!(text.starts_with(head), "{}", &text[..120]);
}

#[test]
fn params_and_shortcuts_arrive_in_the_query_string() {
    // Every shortcut and --param reaches the API, decoded to the values given.
    let fake = FakeApi::start(vec![Answer::ok(&api::fleet_document())]);
    let out = metrics(
        &fake.url(),
        &[
            "--room",
            "5",
            "--user",
            "12",
            "--start",
            "2026-12-01T20:00:00+01:00",
            "--end",
            "2026-12-01T21:00:00Z",
            "--limit",
            "20",
            "--top",
            "3",
            "--param",
            "order=desc",
            "--param",
            "note=a b&c=d",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let (path, query) = api::path_and_query(&requests[0]);
    assert_eq!(path, "/api/metrics");
    let expected = [
        ("start", "2026-12-01T20:00:00+01:00"),
        ("end", "2026-12-01T21:00:00Z"),
        ("roomId", "5"),
        ("userId", "12"),
        ("limit", "20"),
        ("topN", "3"),
        ("order", "desc"),
        ("note", "a b&c=d"),
    ];
    let query: Vec<(&str, &str)> = query
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(query, expected);
}

#[test]
fn bad_param_syntax_is_refused_naming_the_flag_before_any_request() {
    // Exit 2, the flag named, and the API never asked.
    let fake = FakeApi::start(vec![Answer::ok(&api::fleet_document())]);
    for (args, flag) in [
        (&["--param", "roomId"][..], "--param"),
        (&["--param", "=5"][..], "--param"),
        (&["--param", "room id=5"][..], "--param"),
        (&["--room", "five"][..], "--room"),
        (&["--start", "yesterday"][..], "--start"),
        (&["--room", "5", "--param", "roomId=6"][..], "--room"),
        (&["--api-timeout", "soon"][..], "--api-timeout"),
    ] {
        let out = metrics(&fake.url(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(flag), "{args:?}: {}", stderr(&out));
    }
    let out = metrics("https://127.0.0.1:1", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--api-url"), "{}", stderr(&out));
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
}

#[test]
fn a_400_names_the_parameter_and_the_flag_that_set_it_and_exits_2() {
    // The API's {"error","parameter"} body, traced back to --room / --param.
    let fake = FakeApi::start(vec![
        Answer::error(
            400,
            json!({"error": "roomId 99 is outside 1..=20", "parameter": "roomId"}),
        ),
        Answer::error(
            400,
            json!({"error": "unknown parameter strat", "parameter": "strat"}),
        ),
    ]);
    let out = metrics(&fake.url(), &["--room", "99"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("HTTP 400: roomId 99 is outside 1..=20 (parameter roomId, set by --room)"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{}/api/metrics?roomId=99", fake.url())),
        "{err}"
    );
    let out = metrics(&fake.url(), &["--param", "strat=2026-12-01T20:00:00Z"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("(parameter strat, set by --param strat=2026-12-01T20:00:00Z)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_503_a_504_and_a_404_exit_1_with_the_apis_error() {
    // Unavailable, timed-out and unknown-endpoint answers: exit 1, the API's words shown.
    for (status, body, shown) in [
        (
            503,
            json!({"error": "database unavailable: pool timed out", "retryAfterSeconds": 1}),
            "HTTP 503: database unavailable: pool timed out (retry after 1 s)",
        ),
        (
            504,
            json!({"error": "statement timeout after 5 s", "parameter": null}),
            "HTTP 504: statement timeout after 5 s",
        ),
        (
            404,
            json!({"error": "no such endpoint: /api/metrics"}),
            "HTTP 404: no such endpoint: /api/metrics",
        ),
    ] {
        let fake = FakeApi::start(vec![Answer::error(status, body)]);
        let out = metrics(&fake.url(), &[]);
        assert_eq!(out.status.code(), Some(1), "{status}");
        assert!(stderr(&out).contains(shown), "{status}: {}", stderr(&out));
        assert!(stdout(&out).is_empty());
    }
}

#[test]
fn an_unreachable_api_is_named_and_exits_1() {
    // Connection refused: the URL in the message, exit 1, promptly.
    let url = api::dead_api_url();
    let started = Instant::now();
    let out = metrics(&url, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("cannot reach the API at {url}/api/metrics")),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(30), "hang detector");
}

#[test]
fn an_api_that_never_answers_times_out_within_api_timeout() {
    // Accepted but silent: exit 1 after about --api-timeout, which the message names.
    let fake = FakeApi::silent();
    let started = Instant::now();
    let out = metrics(&fake.url(), &["--api-timeout", "500ms"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("within 0.5 s (--api-timeout)"), "{err}");
    assert!(took < Duration::from_secs(30), "hang detector: {took:?}");
    assert_eq!(fake.requests().len(), 1, "the request was sent");
}

#[test]
fn a_body_that_is_not_a_json_document_exits_1() {
    // A 200 with HTML, or with JSON that is not an object: a clear error, no panic.
    for body in ["<html>proxy page</html>", "[1, 2, 3]"] {
        let fake = FakeApi::start(vec![Answer {
            status: 200,
            body: body.into(),
        }]);
        let out = metrics(&fake.url(), &[]);
        assert_eq!(out.status.code(), Some(1), "{body}");
        assert!(
            stderr(&out).contains("the answer is not a JSON document"),
            "{body}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn a_left_out_per_user_part_is_explained_not_reported_missing() {
    // A window past the server's --api-max-user-window-hours.
    let mut doc = api::fleet_document();
    doc["analytics"]["topUsers"] = serde_json::Value::Null;
    doc["analytics"]["participation"] = serde_json::Value::Null;
    doc["analytics"]["perUserOmitted"] =
        json!("top users and participation are computed for windows of at most 24 h");
    let fake = FakeApi::start(vec![Answer::ok(&doc)]);
    let out = metrics(&fake.url(), &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        text.contains("top users and participation: top users and participation are computed for windows of at most 24 h"),
        "{text}"
    );
    assert!(
        !text.contains("participation: not in the document"),
        "{text}"
    );
    assert!(
        text.contains("top rooms"),
        "the rest is still shown: {text}"
    );
}

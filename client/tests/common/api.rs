//! A scripted stand-in for a server's read API (port 8082, `server/API.md`):
//! a std `TcpListener` thread that answers each request with the next
//! canned answer (the last one repeated), records every request line, and
//! can also stay silent (accept, never answer) for timeouts. Plus canned
//! `/api/metrics` documents that follow the contract field for field.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// One canned HTTP answer.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    /// 200 with `doc` as compact JSON (as the API sends it).
    pub fn ok(doc: &Value) -> Answer {
        Answer {
            status: 200,
            body: doc.to_string(),
        }
    }

    /// An error status with the API's `{"error", "parameter"}` body.
    pub fn error(status: u16, body: Value) -> Answer {
        Answer {
            status,
            body: body.to_string(),
        }
    }
}

pub struct FakeApi {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeApi {
    /// Answers the n-th request with `answers[n]`, or the last one after that.
    pub fn start(answers: Vec<Answer>) -> FakeApi {
        assert!(!answers.is_empty());
        Self::spawn(Some(answers))
    }

    /// Accepts connections and reads the requests but never answers.
    pub fn silent() -> FakeApi {
        Self::spawn(None)
    }

    fn spawn(answers: Option<Vec<Answer>>) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (requests2, stop2) = (Arc::clone(&requests), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let Some(line) = read_request(&stream) else {
                            continue;
                        };
                        let n = {
                            let mut r = requests2.lock().unwrap();
                            r.push(line);
                            r.len() - 1
                        };
                        match &answers {
                            Some(answers) => answer(stream, &answers[n.min(answers.len() - 1)]),
                            None => held.push(stream),
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        FakeApi {
            addr,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// The API's base URL, for `--api-url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request line received, e.g. `GET /api/metrics?roomId=5 HTTP/1.1`.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads a request's head (to the blank line, within 5 s); its first line.
fn read_request(mut stream: &TcpStream) -> Option<String> {
    stream.set_nonblocking(false).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if Instant::now() > deadline {
            return None;
        }
        match stream.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return None,
        }
    }
    let text = String::from_utf8_lossy(&head);
    text.lines().next().map(str::to_string)
}

fn answer(mut stream: TcpStream, a: &Answer) {
    let reason = match a.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    };
    let retry = if a.status == 503 {
        "Retry-After: 1\r\n"
    } else {
        ""
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{retry}Connection: close\r\n\r\n{}",
        a.status,
        a.body.len(),
        a.body
    );
    let _ = stream.flush();
}

/// The path and decoded query pairs of a request line.
pub fn path_and_query(request_line: &str) -> (String, Vec<(String, String)>) {
    let target = request_line.split(' ').nth(1).expect("GET target HTTP/1.1");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let pairs = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect();
    (path.to_string(), pairs)
}

/// Percent-decoding (`+` is a literal plus in the query: the client
/// encodes spaces as `%20`).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).expect("valid percent escape"));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// A message as the API serves it.
fn message(room: u64, user: u64, kind: &str, text: &str, at: &str) -> Value {
    json!({
        "messageId": format!("0190a8f0-0000-7000-8000-{:012}", room * 100_000 + user),
        "roomId": room, "userId": user, "username": format!("user{user}"),
        "message": text, "messageType": kind,
        "timestamp": at, "serverTimestamp": at, "serverId": "ip-10-0-0-5-4242"
    })
}

/// The fleet's document for 20:00 → 20:05: every part present, numbers
/// chosen to be recognisable in the tables.
pub fn fleet_document() -> Value {
    let per_minute = [3050u64, 2950, 3120, 3000, 2880];
    // Each minute spread over its seconds, so the series agree with each other.
    let per_second: Vec<u64> = per_minute
        .iter()
        .flat_map(|&m| (0..60).map(move |s| m / 60 + u64::from(s < m % 60)))
        .collect();
    json!({
        "generatedAt": "2026-12-01T20:05:00.120Z",
        "window": {"start": "2026-12-01T20:00:00.000Z", "end": "2026-12-01T20:05:00.000Z"},
        "coreQueries": {
            "roomMessages": {"roomId": 7, "chosenBy": "busiest room in the window", "count": 3, "messages": [
                message(7, 12, "TEXT", "hello from the canned doc", "2026-12-01T20:04:59.950Z"),
                message(7, 4711, "JOIN", "joined", "2026-12-01T20:04:58.001Z"),
                message(7, 12, "LEAVE", "bye", "2026-12-01T20:04:57.500Z"),
            ]},
            "userMessages": {"userId": 12, "chosenBy": "busiest user in the window", "count": 2, "messages": [
                message(7, 12, "TEXT", "hello from the canned doc", "2026-12-01T20:04:59.950Z"),
                message(3, 12, "TEXT", "over in room three", "2026-12-01T20:01:02.003Z"),
            ]},
            "activeUsers": 8301,
            "userRooms": {"userId": 12, "rooms": [
                {"roomId": 7, "messages": 31, "lastActivity": "2026-12-01T20:04:59.950Z"},
                {"roomId": 3, "messages": 9, "lastActivity": "2026-12-01T20:01:02.003Z"},
            ]},
        },
        "analytics": {
            "window": {"start": "2026-12-01T20:00:00.000Z", "end": "2026-12-01T20:05:00.000Z"},
            "totalMessages": 15000,
            "messageTypes": {"TEXT": 13500, "JOIN": 750, "LEAVE": 750},
            "activeUsers": 8301,
            "messagesPerSecond": 50.0,
            "series": {
                "perSecond": {"start": "2026-12-01T20:00:00.000Z", "stepSeconds": 1, "counts": per_second},
                "perMinute": {"start": "2026-12-01T20:00:00.000Z", "stepSeconds": 60, "counts": per_minute},
                "perHour": {"start": "2026-12-01T20:00:00.000Z", "stepSeconds": 3600, "counts": [15000]},
            },
            "topUsers": [{"userId": 12, "messages": 31, "rooms": 4}, {"userId": 4711, "messages": 29, "rooms": 2}],
            "topRooms": [{"roomId": 7, "messages": 940}, {"roomId": 3, "messages": 870}],
            "participation": {
                "messagesPerUser": [
                    {"min": 1, "max": 1, "users": 5012}, {"min": 2, "max": 3, "users": 2701},
                    {"min": 4, "max": 7, "users": 588}
                ],
                "roomsPerUser": [{"rooms": 1, "users": 6000}, {"rooms": 2, "users": 2301}],
            },
        },
        "live": {
            "servers": {"source": "redis", "servers": [
                {"serverId": "ip-10-0-0-5-4242", "status": "ok", "publishedAt": "2026-12-01T20:04:59.700Z",
                 "ageSeconds": 0.4, "uptimeSeconds": 812.5, "workers": 2, "connections": 1000,
                 "acceptedPerSecond": 5120.0, "broadcastFramesPerSecond": 256000.0,
                 "unavailablePerSecond": 0.0, "rejectedPerSecond": 0.0,
                 "totals": {"messagesAccepted": 4100000, "broadcastFramesSent": 205000000, "slowReaderDisconnects": 17}},
                {"serverId": "ip-10-0-0-6-999", "status": "ok", "publishedAt": "2026-12-01T20:04:59.500Z",
                 "ageSeconds": 0.6, "uptimeSeconds": 790.0, "workers": 2, "connections": 998,
                 "acceptedPerSecond": 4880.0, "broadcastFramesPerSecond": 244000.0,
                 "unavailablePerSecond": 0.0, "rejectedPerSecond": 0.0,
                 "totals": {"messagesAccepted": 3900000, "broadcastFramesSent": 195000000, "slowReaderDisconnects": 0}},
            ]},
            "consumers": {"source": "redis", "consumers": [
                {"consumerId": "ip-10-0-0-9-777", "status": "ok", "reason": null,
                 "publishedAt": "2026-12-01T20:04:59.300Z", "ageSeconds": 0.7, "uptimeSeconds": 800.1,
                 "queues": 100, "consumedPerSecond": 10000.0, "broadcastsPerSecond": 10000.0, "rowsPerSecond": 9990.0,
                 "database": {"writers": 4, "writersConnected": 4, "rows": 8000000, "batches": 9000, "retries": 2,
                              "duplicateBatches": 0, "rowsDeadLettered": 0,
                              "copyCommitMs": {"count": 40, "p50": 4.1, "p95": 8.0, "p99": 12.5, "max": 14.0},
                              "batchRows": {"count": 40, "p50": 900, "p95": 1000, "p99": 1000, "max": 1000}},
                 "totals": {"messagesConsumed": 8000000}},
            ]},
            "queues": {"source": "rabbitmq", "ageSeconds": 0.8, "totalMessages": 12, "rooms": [
                {"roomId": 1, "messages": 0, "consumers": 5, "shards": [0, 0, 0, 0, 0]},
                {"roomId": 2, "messages": 12, "consumers": 5, "shards": [3, 0, 9, 0, 0]},
            ]},
            "database": {"pool": {"maxSize": 8, "connections": 3, "idle": 2, "inUse": 1,
                                  "checkouts": 1200, "timeouts": 0, "waitMsP99": 0.4},
                         "address": "postgres@127.0.0.1:5432/chatflow"},
        },
        "timingsMs": {"roomMessages": 0.84, "userMessages": 0.61, "activeUsers": 2.1, "userRooms": 0.12,
                      "roomCounts": 1.9, "series": 2.2, "perUser": 38.0, "servers": 0.3, "consumers": 0.2,
                      "queues": 0.01},
        "totalMs": 61.0
    })
}

/// The same document with the parts a single server without Redis or
/// RabbitMQ cannot have saying why, as the contract puts it.
pub fn degraded_document() -> Value {
    let mut doc = fleet_document();
    doc["live"]["servers"] = json!({"source": "redis",
        "error": "redis at 127.0.0.1:6379: connection refused", "servers": []});
    doc["live"]["consumers"] = json!({"error": "not available with --broker memory"});
    doc["live"]["queues"] = json!({"error": "not available with --broker memory"});
    doc
}

/// The fleet document with `analytics.totalMessages` set to `stored`.
pub fn document_storing(stored: u64) -> Value {
    let mut doc = fleet_document();
    doc["analytics"]["totalMessages"] = json!(stored);
    doc
}

/// A port on which nothing listens.
pub fn dead_api_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

//! The read API's port under hostile clients: endless header lines and
//! header floods are refused (431) without the server buffering them;
//! silent and half-sent requests are cut at the I/O timeout (408); past
//! the connection limit a client is told 503 at once instead of costing a
//! thread; and through all of it the WebSocket port and well-behaved API
//! clients are served.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use chatflow_database::DatabaseSettings;
use chatflow_server::config::ApiConfig;
use chatflow_server::{BrokerKind, Config, Server};
use chatflow_testkit::database::TestDatabase;
use chatflow_testkit::http_request;
use common::*;

fn start(db: &TestDatabase, max_connections: usize, io_timeout: Duration) -> Server {
    Server::start(Config {
        api: Some(ApiConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            threads: 2,
            max_connections,
            io_timeout,
            database: DatabaseSettings {
                name: db.name.clone(),
                ..DatabaseSettings::default()
            },
            pool_size: 2,
            ..ApiConfig::default()
        }),
        ..config(BrokerKind::Memory)
    })
    .expect("server starts")
}

/// A well-behaved request still gets its 200, and the WebSocket port its ack.
fn canary(server: &Server, ws: &mut Client, n: &mut u32) {
    let api = server.api_addr().unwrap();
    let r = http_request(api, "GET", "/api/users/1/rooms", TIMEOUT);
    assert_eq!(r.status, 200, "{}", r.body);
    *n += 1;
    let reply = request(ws, message(1, "canary", &format!("c{n}")));
    assert_eq!(reply["type"], "ack");
}

/// Everything the server sends until it closes (or `limit` passes).
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> String {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the server neither answered nor closed: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes `bytes` until the server stops reading (it answered and closed),
/// returning how many it took.
fn flood(stream: &mut TcpStream, chunk: &[u8], most: usize) -> usize {
    let mut sent = 0;
    while sent < most {
        match stream.write(chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    sent
}

#[test]
fn hostile_heads_are_refused_and_nobody_else_waits() {
    let db = TestDatabase::new(&unique_namespace("api-hostile")).with_schema();
    let server = start(&db, 64, Duration::from_secs(1));
    let api: SocketAddr = server.api_addr().unwrap();
    let mut ws = connect(server.local_addr(), 1);
    let mut n = 0;
    canary(&server, &mut ws, &mut n);

    // An endless request line: refused after a few KiB, never buffered.
    let mut endless = TcpStream::connect(api).unwrap();
    endless
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    endless.write_all(b"GET /api/metrics?").unwrap();
    let sent = flood(&mut endless, &[b'a'; 4096], 64 << 20);
    assert!(
        sent < 64 << 20,
        "the server stopped reading an endless line"
    );
    let answer = read_until_closed(&mut endless, TIMEOUT);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    canary(&server, &mut ws, &mut n);

    // An endless header value.
    let mut endless = TcpStream::connect(api).unwrap();
    endless
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    endless
        .write_all(b"GET /api/metrics HTTP/1.1\r\nX-Big: ")
        .unwrap();
    assert!(flood(&mut endless, &[b'b'; 4096], 64 << 20) < 64 << 20);
    canary(&server, &mut ws, &mut n);

    // A thousand short headers.
    let mut many = TcpStream::connect(api).unwrap();
    let mut head = String::from("GET /api/users/1/rooms HTTP/1.1\r\nHost: t\r\n");
    for i in 0..1000 {
        head.push_str(&format!("X-{i}: v\r\n"));
    }
    head.push_str("\r\n");
    let _ = many.write_all(head.as_bytes());
    let answer = read_until_closed(&mut many, TIMEOUT);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    canary(&server, &mut ws, &mut n);

    // Half a request, then silence: cut at the I/O timeout (1 s here).
    let started = Instant::now();
    let mut half = TcpStream::connect(api).unwrap();
    half.write_all(b"GET /api/users/1/rooms HTTP/1.1\r\nHo")
        .unwrap();
    let answer = read_until_closed(&mut half, TIMEOUT);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert!(
        started.elapsed() < TIMEOUT,
        "cut by the timeout, not by the test"
    );
    canary(&server, &mut ws, &mut n);
    server.shutdown().unwrap();
}

#[test]
fn past_the_connection_limit_clients_are_told_at_once() {
    let db = TestDatabase::new(&unique_namespace("api-capacity")).with_schema();
    // Idle connections hold their slot for the I/O timeout: long enough
    // for the test to see the limit.
    let server = start(&db, 8, Duration::from_secs(5));
    let api = server.api_addr().unwrap();
    let mut ws = connect(server.local_addr(), 1);
    let mut n = 0;
    // Eight connections that each sent one byte and then nothing (each
    // holds a thread of the HTTP server until the I/O timeout).
    let idle: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(api).unwrap();
            s.write_all(b"G").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let over = http_request(api, "GET", "/api/users/1/rooms", TIMEOUT);
    assert_eq!(over.status, 503, "{}", over.body);
    assert_eq!(over.header("Retry-After"), Some("1"));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "told at once, not after a timeout"
    );
    // The WebSocket port does not share the limit.
    n += 1;
    assert_eq!(
        request(&mut ws, message(1, "ws", &format!("w{n}")))["type"],
        "ack"
    );
    drop(idle);
    eventually("the API takes requests again", || {
        http_request(api, "GET", "/api/users/1/rooms", TIMEOUT).status == 200
    });
    canary(&server, &mut ws, &mut n);
    server.shutdown().unwrap();
}

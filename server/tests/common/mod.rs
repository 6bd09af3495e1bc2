//! Test harness: a real server on 127.0.0.1:0 and real tungstenite clients,
//! with timeouts everywhere so a broken server fails a test instead of
//! hanging it.

#![allow(dead_code)] // each test binary uses part of the harness

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use chatflow_server::{BrokerKind, Config, Server};
use serde_json::Value;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub const TIMEOUT: Duration = Duration::from_secs(10);

pub type Client = WebSocket<MaybeTlsStream<TcpStream>>;

/// A test configuration: port 0, two unpinned workers (tests run in
/// parallel on a small machine), short grace periods.
pub fn config(broker: BrokerKind) -> Config {
    Config {
        bind: "127.0.0.1:0".parse().unwrap(),
        workers: 2,
        pin_workers: false,
        broker,
        shutdown_grace: Duration::from_millis(500),
        server_id: "test".to_string(),
        ..Config::default()
    }
}

pub fn start(broker: BrokerKind) -> Server {
    Server::start(config(broker)).expect("server starts")
}

/// A namespace no other test run uses: exchange, queues and Redis channels
/// of a test all carry it.
pub fn unique_namespace(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "test-{tag}-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A RabbitMQ-backed test configuration in its own namespace with `rooms`
/// rooms (few rooms, few queues: declaring is quick).
pub fn rabbit_config(namespace: &str, rooms: u32) -> Config {
    let mut config = config(BrokerKind::Rabbitmq);
    config.services.topology.rooms = chatflow_protocol::Rooms::new(rooms).unwrap();
    config.services.topology.namespace = namespace.to_string();
    config
}

/// Deletes a test namespace's RabbitMQ topology when dropped, pass or fail.
pub struct TopologyGuard(pub chatflow_protocol::Topology);

impl Drop for TopologyGuard {
    fn drop(&mut self) {
        if let Ok(mut connection) =
            amiquip::Connection::insecure_open("amqp://guest:guest@127.0.0.1:5672/%2f")
        {
            if let Ok(channel) = connection.open_channel(None) {
                let _ = chatflow_broker::Declare::delete(&self.0, &channel);
            }
            let _ = connection.close();
        }
    }
}

/// Raises this process's descriptor limit to its hard limit (tests that
/// hold thousands of sockets on both ends).
pub fn raise_fd_limit() -> u64 {
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur
    }
}

pub fn connect(addr: SocketAddr, room: u32) -> Client {
    let (client, response) =
        tungstenite::connect(format!("ws://{addr}/chat/{room}")).expect("WebSocket connects");
    assert_eq!(response.status(), 101);
    if let MaybeTlsStream::Plain(stream) = client.get_ref() {
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
    }
    client
}

/// A valid client message from `user`.
pub fn message(user: u32, text: &str, client_id: &str) -> String {
    serde_json::json!({
        "userId": user.to_string(),
        "username": format!("user{user}"),
        "message": text,
        "timestamp": "2026-11-27T02:00:00.123Z",
        "messageType": "TEXT",
        "clientMessageId": client_id,
    })
    .to_string()
}

pub fn send(client: &mut Client, text: String) {
    client.send(Message::text(text)).expect("send");
}

/// The next text frame as JSON (pings and pongs skipped).
pub fn recv(client: &mut Client) -> Value {
    loop {
        match client.read().expect("a frame before the timeout") {
            Message::Text(text) => return serde_json::from_str(&text).expect("frames are JSON"),
            Message::Close(frame) => panic!("unexpected close: {frame:?}"),
            _ => continue,
        }
    }
}

/// The next frame of `kind` ("ack", "error", "message"), skipping others.
pub fn recv_kind(client: &mut Client, kind: &str) -> Value {
    loop {
        let frame = recv(client);
        if frame["type"] == kind {
            return frame;
        }
    }
}

/// Sends `text` and returns the reply to it (its ack or error), skipping
/// broadcasts.
pub fn request(client: &mut Client, text: String) -> Value {
    send(client, text);
    loop {
        let frame = recv(client);
        if frame["type"] != "message" {
            return frame;
        }
    }
}

/// A plain HTTP/1.1 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n{headers}\r\n").unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {raw:?}"));
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

pub fn health(addr: SocketAddr) -> Value {
    let (status, body) = http_get(addr, "/health", "");
    assert_eq!(status, 200);
    serde_json::from_str(&body).expect("health is JSON")
}

/// Polls `check` until it holds or the timeout passes.
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for: {what}");
}

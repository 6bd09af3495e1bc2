//! Test harness: a real server on 127.0.0.1:0 and real tungstenite clients,
//! with timeouts everywhere so a broken server fails a test instead of
//! hanging it. What the consumer's tests share with these lives in
//! `chatflow-testkit`; this file wraps it under the names the tests here use.

#![allow(dead_code)] // each test binary uses part of the harness

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use chatflow_server::{BrokerKind, Config, Server};
use chatflow_testkit::ws;
use serde_json::Value;

pub use chatflow_testkit::ws::Client;
#[allow(unused_imports)] // like dead_code above: each binary uses a part
pub use chatflow_testkit::{raise_fd_limit, unique_namespace, TopologyGuard};

/// Longest any single read or wait in a test may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

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

/// A started test server ([`config`]) with `broker`.
pub fn start(broker: BrokerKind) -> Server {
    Server::start(config(broker)).expect("server starts")
}

/// A RabbitMQ-backed test configuration in its own namespace with `rooms`
/// rooms (few rooms, few queues: declaring is quick).
pub fn rabbit_config(namespace: &str, rooms: u32) -> Config {
    let mut config = config(BrokerKind::Rabbitmq);
    config.services.topology.rooms = chatflow_protocol::Rooms::new(rooms).unwrap();
    config.services.topology.namespace = namespace.to_string();
    config
}

/// A WebSocket to `/chat/{room}` whose reads give up after [`TIMEOUT`].
pub fn connect(addr: SocketAddr, room: u32) -> Client {
    ws::connect(addr, room, TIMEOUT)
}

/// A valid client message from `user`.
pub fn message(user: u32, text: &str, client_id: &str) -> String {
    ws::chat_message(user, text, client_id)
}

/// Sends one text frame.
pub fn send(client: &mut Client, text: String) {
    ws::send_text(client, text);
}

/// The next text frame as JSON (pings and pongs skipped).
pub fn recv(client: &mut Client) -> Value {
    ws::next_json(client).expect("a frame before the timeout")
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

/// A plain HTTP/1.1 GET with extra `headers`: (status, body).
pub fn http_get(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    chatflow_testkit::http_get(addr, path, headers, TIMEOUT)
}

/// `GET /health` as JSON, whether ready (200) or not (503); the status
/// must agree with the document's `ready`.
pub fn health(addr: SocketAddr) -> Value {
    health_with_status(addr).1
}

/// `GET /health`: its status code and its JSON.
pub fn health_with_status(addr: SocketAddr) -> (u16, Value) {
    let (status, body) = http_get(addr, "/health", "");
    let health: Value = serde_json::from_str(&body).expect("health is JSON");
    let expected = if health["ready"] == true { 200 } else { 503 };
    assert_eq!(status, expected, "{health}");
    (status, health)
}

/// Polls `check` until it holds; panics after [`TIMEOUT`].
pub fn eventually(what: &str, check: impl FnMut() -> bool) {
    chatflow_testkit::wait_until(what, TIMEOUT, check);
}

// The server binary run as a child process.

/// The server binary on a free loopback port with the memory broker,
/// `workers` unpinned workers and no API, its stdout piped (its first line
/// says where it listens: [`listening_addr`]). Callers add the rest.
pub fn memory_binary(workers: usize) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chatflow-server"));
    command
        .args(["--bind", "127.0.0.1:0", "--broker", "memory"])
        .args(["--workers", &workers.to_string(), "--no-pin"])
        .args(["--api-bind", "off"])
        .stdout(Stdio::piped());
    command
}

/// Where the binary says it listens (its first line of output), and the
/// rest of its output.
pub fn listening_addr(child: &mut Child) -> (SocketAddr, BufReader<ChildStdout>) {
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .strip_prefix("chatflow-server listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (addr.parse().unwrap(), stdout)
}

/// Sends `signal` to the child.
pub fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
}

/// Waits (at most [`TIMEOUT`]) for the child to exit.
pub fn wait_for_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the server did not exit");
        thread::sleep(Duration::from_millis(20));
    }
}

#[allow(unused_imports)] // each test binary uses a part of the harness
pub use chatflow_testkit::Reaper;

//! Hostile input (issue 8): every way a client can abuse the HTTP request
//! head, the WebSocket framing, the JSON inside a frame, or the output path,
//! each against a real server on port 0, with the answer the server must
//! give. Throughout every group a canary in the same room (one on each
//! worker) sends a message and must get its ack and its broadcast, so an
//! attack that hurts anyone but the attacker fails the test.
//!
//! This file owns its raw clients: a request writer that reads the HTTP
//! answer up to the server's close, and a WebSocket client over a plain
//! `TcpStream` with its own frame encoder (masking, RSV bits, any opcode,
//! any length) and decoder, so nothing between the test and the server can
//! repair a malformed byte. Close codes are read from the server's close
//! frame bytes.

mod common;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use chatflow_server::{BrokerKind, Config, Server};
use common::*;
use serde_json::Value;

/// Every attacker and canary of a group meets in this room.
const ROOM: u32 = 7;
/// RFC 6455 §1.3's sample key and the accept value it must produce.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
const TS: &str = "2026-11-27T02:00:00.123Z";
/// The headers of a valid upgrade (after the request line and Host).
const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
/// The largest frame the default configuration reads.
const MAX_FRAME: usize = chatflow_protocol::message::MAX_CLIENT_MESSAGE_BYTES;

// ---------------------------------------------------------------------------
// Canaries
// ---------------------------------------------------------------------------

/// Ordinary clients in [`ROOM`], at least one on every worker, that prove
/// the server still serves its room.
struct Canaries {
    clients: Vec<Client>,
    /// Whether the broker broadcasts (memory) or only acks (none).
    broadcasts: bool,
    sent: u32,
}

impl Canaries {
    /// Opens canaries until every worker holds one. Call before the group's
    /// attackers connect: it reads the per-worker gauge of open WebSockets.
    fn cover(addr: SocketAddr, broadcasts: bool) -> Canaries {
        let mut clients = Vec::new();
        // SO_REUSEPORT spreads by 4-tuple hash: 32 tries all landing on one
        // of two workers is a 2^-31 chance.
        while clients.len() < 32 {
            clients.push(connect(addr, ROOM));
            let open = clients.len() as u64;
            let mut per_worker = Vec::new();
            eventually("every canary is counted by its worker", || {
                per_worker = health(addr)["connectionsPerWorker"]
                    .as_array()
                    .expect("connectionsPerWorker is a list")
                    .iter()
                    .map(|n| n.as_u64().unwrap())
                    .collect();
                per_worker.iter().sum::<u64>() == open
            });
            if per_worker.iter().all(|&n| n > 0) {
                let mut canaries = Canaries {
                    clients,
                    broadcasts,
                    sent: 0,
                };
                canaries.check("before any attack");
                return canaries;
            }
        }
        panic!("32 canaries and still a worker without one");
    }

    /// Every canary sends a message and gets its ack (and, with a
    /// broadcasting broker, its own broadcast).
    fn check(&mut self, when: &str) {
        for (i, client) in self.clients.iter_mut().enumerate() {
            self.sent += 1;
            let id = format!("canary-{}", self.sent);
            let text = format!("canary {} {when}", self.sent);
            send(client, message(90_000 + i as u32, &text, &id));
            let (mut acked, mut heard) = (false, !self.broadcasts);
            let deadline = Instant::now() + TIMEOUT;
            while !(acked && heard) {
                assert!(
                    Instant::now() < deadline,
                    "canary {i} {when}: no ack and broadcast within {TIMEOUT:?}"
                );
                let frame = recv(client);
                match frame["type"].as_str() {
                    // Earlier acks were all read: the next one is this one.
                    Some("ack") => {
                        assert_eq!(frame["clientMessageId"], id, "canary {i} {when}");
                        acked = true;
                    }
                    Some("message") if frame["message"] == text => heard = true,
                    // Other members' broadcasts.
                    Some("message") => {}
                    _ => panic!("canary {i} {when}: unexpected frame {frame}"),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Raw HTTP
// ---------------------------------------------------------------------------

/// An HTTP answer read up to the server's close.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    /// The value of header `name` (case-insensitive), if present.
    fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A GET request with `headers` (each ending in CRLF) for `target`.
fn get(target: &str, headers: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: test\r\n{headers}\r\n")
}

/// Writes `request` in one write and reads the answer until the server
/// closes. A reset, or silence past the timeout, fails: every refusal is
/// an answer followed by a clean close.
fn exchange(addr: SocketAddr, what: &str, request: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream
        .write_all(request)
        .unwrap_or_else(|e| panic!("{what}: writing the request failed: {e}"));
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // A 101 is not followed by a close: its head is the whole answer.
        if raw.starts_with(b"HTTP/1.1 101 ") && raw.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "{what}: the connection ended with `{e}` instead of an answer and a clean close; got {:?}",
                String::from_utf8_lossy(&raw)
            ),
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{what}: not an HTTP answer (bare close?): {text:?}"));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no HTTP/1.1 status line: {text:?}"));
    let answer = Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    };
    if let Some(length) = answer.header("content-length") {
        assert_eq!(
            length.parse::<usize>().ok(),
            Some(answer.body.len()),
            "{what}: Content-Length disagrees with the body: {text:?}"
        );
    }
    answer
}

/// Asserts `request` is refused with `status`, a JSON body saying so, and a
/// close; returns the answer for further checks.
fn refused(addr: SocketAddr, what: &str, request: &[u8], status: u16) -> Answer {
    let answer = exchange(addr, what, request);
    assert_eq!(
        answer.status, status,
        "{what}: {}\r\n\r\n{}",
        answer.head, answer.body
    );
    assert_eq!(
        answer.header("content-type"),
        Some("application/json"),
        "{what}"
    );
    assert_eq!(answer.header("connection"), Some("close"), "{what}");
    let body: Value = serde_json::from_str(&answer.body)
        .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {:?}", answer.body));
    assert_eq!(body["status"], status, "{what}: {body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: no error text: {body}"
    );
    answer
}

// ---------------------------------------------------------------------------
// Raw WebSocket
// ---------------------------------------------------------------------------

const OP_CONTINUE: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const FIN: u8 = 0x80;
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A client frame: `first` is the first header byte as sent (FIN, RSV bits
/// and opcode, any of them wrong on purpose); the payload is masked unless
/// `masked` is false.
fn raw_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A well-formed masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    raw_frame(if fin { FIN } else { 0 } | opcode, payload, true)
}

/// `payload` as one message in `pieces` fragments (the first pieces may be
/// empty when the payload is short).
fn fragmented(opcode: u8, payload: &[u8], pieces: usize) -> Vec<u8> {
    let size = payload.len().div_ceil(pieces);
    let mut out = Vec::new();
    for i in 0..pieces {
        let start = (i * size).min(payload.len());
        let end = ((i + 1) * size).min(payload.len());
        let op = if i == 0 { opcode } else { OP_CONTINUE };
        out.extend(frame(i + 1 == pieces, op, &payload[start..end]));
    }
    out
}

/// A close frame carrying `code`.
fn close_frame(code: u16) -> Vec<u8> {
    frame(true, OP_CLOSE, &code.to_be_bytes())
}

/// What the server sent next.
#[derive(Debug)]
enum Event {
    Text(Value),
    Binary,
    Ping,
    Pong,
    Close(Option<u16>),
    Eof,
    Reset,
    /// Nothing arrived within [`TIMEOUT`], and the connection is open.
    Silence,
}

fn ended_by(e: io::Error) -> Event {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => Event::Eof,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => Event::Reset,
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Event::Silence,
        _ => panic!("read failed: {e}"),
    }
}

/// A WebSocket client that sends exactly the bytes it is given.
struct RawWs {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RawWs {
    /// Connects and upgrades to [`ROOM`] with a valid request.
    fn open(addr: SocketAddr) -> RawWs {
        let (head, ws) = RawWs::upgrade(
            TcpStream::connect(addr).unwrap(),
            get(&format!("/chat/{ROOM}"), UPGRADE).as_bytes(),
        );
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        ws
    }

    /// Writes `request` on `stream` and reads the answer's head (not a byte
    /// further: frames may follow it).
    fn upgrade(stream: TcpStream, request: &[u8]) -> (String, RawWs) {
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut writer = stream.try_clone().unwrap();
        writer.write_all(request).unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let n = reader
                .read_line(&mut line)
                .expect("an answer to the upgrade");
            assert!(n > 0, "closed before the answer's head ended: {head:?}");
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        (head, RawWs { reader, writer })
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("the server reads");
    }

    fn send_text(&mut self, text: &str) {
        self.send(&frame(true, OP_TEXT, text.as_bytes()));
    }

    /// The next frame, or how the connection ended.
    fn next(&mut self) -> Event {
        let mut head = [0u8; 2];
        if let Err(e) = self.reader.read_exact(&mut head) {
            return ended_by(e);
        }
        assert!(head[0] & FIN != 0, "the server fragments nothing: {head:?}");
        assert_eq!(head[0] & 0x70, 0, "the server sets no RSV bit");
        assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
        let len = match head[1] & 0x7f {
            126 => {
                let mut ext = [0u8; 2];
                if let Err(e) = self.reader.read_exact(&mut ext) {
                    return ended_by(e);
                }
                u64::from(u16::from_be_bytes(ext))
            }
            127 => {
                let mut ext = [0u8; 8];
                if let Err(e) = self.reader.read_exact(&mut ext) {
                    return ended_by(e);
                }
                u64::from_be_bytes(ext)
            }
            n => u64::from(n),
        };
        assert!(len < 1 << 20, "a server frame of {len} bytes");
        let mut payload = vec![0u8; len as usize];
        if let Err(e) = self.reader.read_exact(&mut payload) {
            return ended_by(e);
        }
        match head[0] & 0x0f {
            0x1 => Event::Text(serde_json::from_slice(&payload).expect("text frames are JSON")),
            0x2 => Event::Binary,
            0x8 => Event::Close(
                (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
            ),
            0x9 => Event::Ping,
            0xA => Event::Pong,
            other => panic!("the server sent opcode {other:#x}"),
        }
    }

    /// The next ack or error (broadcasts, pings and pongs skipped).
    fn reply(&mut self) -> Value {
        loop {
            match self.next() {
                Event::Text(v) if v["type"] == "message" => {}
                Event::Text(v) => return v,
                Event::Ping | Event::Pong => {}
                other => panic!("expected a reply, got {other:?}"),
            }
        }
    }

    /// Reads to the server's close frame: the text frames before it (room
    /// broadcasts left out) and the close code.
    fn until_close(&mut self, what: &str) -> (Vec<Value>, Option<u16>) {
        let mut texts = Vec::new();
        loop {
            match self.next() {
                Event::Text(v) if v["type"] == "message" => {}
                Event::Text(v) => texts.push(v),
                Event::Ping | Event::Pong | Event::Binary => {}
                Event::Close(code) => return (texts, code),
                end => panic!("{what}: {end:?} instead of a close frame; before it: {texts:?}"),
            }
        }
    }
}

/// A client message with raw JSON for `userId` and `message`.
fn raw_message(user_id: &str, message: &str, client_id: &str) -> String {
    format!(
        r#"{{"userId":{user_id},"username":"attacker","message":{message},"timestamp":"{TS}","messageType":"TEXT","clientMessageId":"{client_id}"}}"#
    )
}

/// Asserts `reply` is the ack of the message with `client_id`.
fn assert_ack(reply: &Value, client_id: &str, what: &str) {
    assert_eq!(reply["type"], "ack", "{what}: {reply}");
    assert_eq!(reply["clientMessageId"], client_id, "{what}: {reply}");
}

// ---------------------------------------------------------------------------
// HTTP before the upgrade
// ---------------------------------------------------------------------------

/// Every malformed, unsupported or smuggling-shaped request gets an HTTP
/// error with a JSON body and a clean close, and the room keeps flowing.
#[test]
fn refused_requests_get_a_json_http_error_then_a_clean_close() {
    let server = start(BrokerKind::Memory);
    let addr = server.local_addr();
    let mut canaries = Canaries::cover(addr, true);
    let chat = format!("/chat/{ROOM}");
    let valid = get(&chat, UPGRADE);
    let with = |headers: &str| get(&chat, headers);
    let v13 = "Sec-WebSocket-Version: 13\r\n";
    let key = format!("Sec-WebSocket-Key: {KEY}\r\n");
    let up_conn = "Upgrade: websocket\r\nConnection: Upgrade\r\n";
    let big_header = format!("X-Big: {}\r\n", "a".repeat(9 * 1024));
    let many_headers: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let then = |head: &str, tail: &[u8]| [head.as_bytes(), tail].concat();

    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "garbage request line",
            b"\x00\x01\x02 not http\r\n\r\n".to_vec(),
            400,
        ),
        ("a request line alone", b"HELLO\r\n\r\n".to_vec(), 400),
        (
            "a head over 8 KiB",
            with(&format!("{UPGRADE}{big_header}")).into_bytes(),
            431,
        ),
        (
            "more than 32 headers",
            with(&format!("{UPGRADE}{many_headers}")).into_bytes(),
            431,
        ),
        ("POST", valid.replacen("GET", "POST", 1).into_bytes(), 405),
        (
            "DELETE /health",
            b"DELETE /health HTTP/1.1\r\n\r\n".to_vec(),
            405,
        ),
        ("path /", get("/", UPGRADE).into_bytes(), 404),
        ("path /chat", get("/chat", UPGRADE).into_bytes(), 404),
        (
            "path /chatroom/7",
            get("/chatroom/7", UPGRADE).into_bytes(),
            404,
        ),
        ("path /CHAT/7", get("/CHAT/7", UPGRADE).into_bytes(), 404),
        ("path /health/x", get("/health/x", "").into_bytes(), 404),
        ("room abc", get("/chat/abc", UPGRADE).into_bytes(), 400),
        ("room -1", get("/chat/-1", UPGRADE).into_bytes(), 400),
        ("room 0", get("/chat/0", UPGRADE).into_bytes(), 404),
        ("room 21", get("/chat/21", UPGRADE).into_bytes(), 404),
        (
            "room 999999999",
            get("/chat/999999999", UPGRADE).into_bytes(),
            404,
        ),
        ("no upgrade at all", with("").into_bytes(), 426),
        (
            "Upgrade: websocketx",
            with(&format!(
                "Upgrade: websocketx\r\nConnection: Upgrade\r\n{v13}{key}"
            ))
            .into_bytes(),
            426,
        ),
        (
            "no Connection header",
            with(&format!("Upgrade: websocket\r\n{v13}{key}")).into_bytes(),
            400,
        ),
        (
            "Connection: keep-alive",
            with(&format!(
                "Upgrade: websocket\r\nConnection: keep-alive\r\n{v13}{key}"
            ))
            .into_bytes(),
            400,
        ),
        ("no key", with(&format!("{up_conn}{v13}")).into_bytes(), 400),
        (
            "short key",
            with(&format!("{up_conn}{v13}Sec-WebSocket-Key: abc\r\n")).into_bytes(),
            400,
        ),
        (
            "empty key",
            with(&format!("{up_conn}{v13}Sec-WebSocket-Key:\r\n")).into_bytes(),
            400,
        ),
        (
            "non-base64 key",
            with(&format!(
                "{up_conn}{v13}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=!\r\n"
            ))
            .into_bytes(),
            400,
        ),
        (
            "a 16-byte key with a character outside base64",
            with(&format!(
                "{up_conn}{v13}Sec-WebSocket-Key: dGhlIHNhbXBsZ%Bub25jZQ==\r\n"
            ))
            .into_bytes(),
            400,
        ),
        (
            "two keys",
            with(&format!("{up_conn}{v13}{key}{key}")).into_bytes(),
            400,
        ),
        (
            "HTTP/1.0 upgrade",
            valid.replacen("HTTP/1.1", "HTTP/1.0", 1).into_bytes(),
            400,
        ),
        (
            "a quote in the query",
            get(&format!("{chat}?a=\"b\""), UPGRADE).into_bytes(),
            400,
        ),
        (
            "a brace in the query",
            get(&format!("{chat}?{{x}}"), UPGRADE).into_bytes(),
            400,
        ),
        (
            "a bad %zz escape",
            get(&format!("{chat}?a=%zz"), UPGRADE).into_bytes(),
            400,
        ),
        (
            "a % at the end",
            get(&format!("{chat}?a=%"), UPGRADE).into_bytes(),
            400,
        ),
        (
            "absolute-form target",
            get(&format!("http://test{chat}"), UPGRADE).into_bytes(),
            400,
        ),
        ("asterisk target", get("*", UPGRADE).into_bytes(), 400),
        (
            "Content-Length: 5 and a body",
            then(&with(&format!("{UPGRADE}Content-Length: 5\r\n")), b"hello"),
            400,
        ),
        (
            "Content-Length: 5 and no body yet",
            with(&format!("{UPGRADE}Content-Length: 5\r\n")).into_bytes(),
            400,
        ),
        (
            "Transfer-Encoding: chunked",
            then(
                &with(&format!("{UPGRADE}Transfer-Encoding: chunked\r\n")),
                b"0\r\n\r\n",
            ),
            400,
        ),
        (
            "Content-Length and Transfer-Encoding",
            then(
                &with(&format!(
                    "{UPGRADE}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"
                )),
                b"0\r\n\r\n",
            ),
            400,
        ),
        (
            "two different Content-Lengths",
            with(&format!(
                "{UPGRADE}Content-Length: 0\r\nContent-Length: 5\r\n"
            ))
            .into_bytes(),
            400,
        ),
        (
            "the same Content-Length twice",
            then(
                &with(&format!(
                    "{UPGRADE}Content-Length: 5\r\nContent-Length: 5\r\n"
                )),
                b"hello",
            ),
            400,
        ),
        (
            "/health with a body",
            then(&get("/health", "Content-Length: 5\r\n"), b"hello"),
            400,
        ),
        (
            "a pipelined second request",
            then(&valid, get("/health", "").as_bytes()),
            400,
        ),
        (
            "/health and a pipelined /health",
            then(&get("/health", ""), get("/health", "").as_bytes()),
            400,
        ),
        (
            "a WebSocket frame before the 101",
            then(
                &valid,
                &frame(true, OP_TEXT, message(1, "early", "e").as_bytes()),
            ),
            400,
        ),
    ];
    for (what, request, status) in &cases {
        refused(addr, what, request, *status);
        canaries.check(what);
    }

    // The refusals that name what would be accepted say so in a header.
    let answer = refused(
        addr,
        "POST",
        valid.replacen("GET", "POST", 1).as_bytes(),
        405,
    );
    assert_eq!(answer.header("allow"), Some("GET"));
    let answer = refused(
        addr,
        "version 8",
        with(&format!("{up_conn}Sec-WebSocket-Version: 8\r\n{key}")).as_bytes(),
        426,
    );
    assert_eq!(answer.header("sec-websocket-version"), Some("13"));
    let answer = refused(
        addr,
        "no version",
        with(&format!("{up_conn}{key}")).as_bytes(),
        426,
    );
    assert_eq!(answer.header("sec-websocket-version"), Some("13"));
    let answer = refused(addr, "no upgrade", with("").as_bytes(), 426);
    assert_eq!(answer.header("upgrade"), Some("websocket"));
    canaries.check("after every refusal");

    // No refused request became a WebSocket.
    let totals = &health(addr)["totals"];
    assert_eq!(totals["connectionsAccepted"], canaries.clients.len());
    drop(canaries);
    server.shutdown().unwrap();
}

/// A request head that never completes (silent, partial, or dribbled a byte
/// at a time) is dropped at the handshake timeout, unanswered, and counted.
#[test]
fn unfinished_request_heads_are_dropped_at_the_handshake_timeout() {
    let timeout = Duration::from_secs(1);
    let server = Server::start(Config {
        handshake_timeout: timeout,
        ..config(BrokerKind::Memory)
    })
    .unwrap();
    let addr = server.local_addr();
    let mut canaries = Canaries::cover(addr, true);
    let before = health(addr)["totals"]["handshakeTimeouts"]
        .as_u64()
        .unwrap();

    let started = Instant::now();
    let mut silent = TcpStream::connect(addr).unwrap();
    let mut partial = TcpStream::connect(addr).unwrap();
    partial
        .write_all(format!("GET /chat/{ROOM} HTTP/1.1\r\nHost: x\r\n").as_bytes())
        .unwrap();
    // The slow loris: a byte every 100 ms, never the end of the head.
    let mut dribbled = TcpStream::connect(addr).unwrap();
    let mut dribbler = dribbled.try_clone().unwrap();
    let dribbling = thread::spawn(move || {
        let head = format!("GET /chat/{ROOM} HTTP/1.1\r\nX-Slow: ");
        let bytes = head.bytes().chain(std::iter::repeat(b'a'));
        for b in bytes.take(100) {
            if dribbler.write_all(&[b]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    });
    canaries.check("while three heads are unfinished");

    for (what, stream) in [
        ("silent", &mut silent),
        ("partial", &mut partial),
        ("dribbled", &mut dribbled),
    ] {
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut got = Vec::new();
        // EOF or reset: the server drops the connection without an answer.
        match stream.read_to_end(&mut got) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("{what}: not dropped within {TIMEOUT:?}: {e}"),
        }
        assert!(got.is_empty(), "{what}: dropped with an answer: {got:?}");
        // Not before the timeout (the dribbler kept sending all along).
        assert!(
            started.elapsed() >= timeout - Duration::from_millis(100),
            "{what}: dropped after {:?}, before the {timeout:?} timeout",
            started.elapsed()
        );
    }
    dribbling.join().unwrap();
    eventually("the three timeouts are counted", || {
        health(addr)["totals"]["handshakeTimeouts"] == before + 3
    });
    canaries.check("after the timeouts");
    drop(canaries);
    server.shutdown().unwrap();
}

/// Unusual but valid upgrades (several Upgrade and Connection tokens, a
/// compression offer, which the 101 declines) open a WebSocket that acks.
#[test]
fn unusual_but_valid_upgrades_open_a_websocket() {
    let server = start(BrokerKind::Memory);
    let addr = server.local_addr();
    let mut canaries = Canaries::cover(addr, true);
    let chat = format!("/chat/{ROOM}");
    let cases = [
        (
            "Upgrade: h2c, websocket with Connection: keep-alive, Upgrade",
            get(
                &chat,
                &format!("Upgrade: h2c, websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n"),
            ),
        ),
        (
            "lower-case names and tokens, a query",
            get(
                &format!("{chat}?page=0&x=%41"),
                &format!("upgrade: WebSocket\r\nconnection: upgrade\r\nsec-websocket-version: 13\r\nsec-websocket-key: {KEY}\r\n"),
            ),
        ),
        (
            "a permessage-deflate offer",
            get(
                &chat,
                &format!("{UPGRADE}Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"),
            ),
        ),
        (
            "Content-Length: 0",
            get(&chat, &format!("{UPGRADE}Content-Length: 0\r\n")),
        ),
    ];
    for (i, (what, request)) in cases.iter().enumerate() {
        let (head, mut ws) = RawWs::upgrade(TcpStream::connect(addr).unwrap(), request.as_bytes());
        assert!(head.starts_with("HTTP/1.1 101 "), "{what}: {head}");
        let header = |name: &str| {
            head.split("\r\n").skip(1).find_map(|line| {
                let (n, v) = line.split_once(':')?;
                n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
            })
        };
        assert_eq!(
            header("sec-websocket-accept"),
            Some(ACCEPT),
            "{what}: {head}"
        );
        assert_eq!(
            header("sec-websocket-extensions"),
            None,
            "{what}: the 101 agreed to an extension: {head}"
        );
        let id = format!("valid-{i}");
        ws.send_text(&message(100 + i as u32, "plain frame", &id));
        assert_ack(&ws.reply(), &id, what);
        canaries.check(what);
    }
    drop(canaries);
    server.shutdown().unwrap();
}

// ---------------------------------------------------------------------------
// WebSocket framing
// ---------------------------------------------------------------------------

/// Each framing violation ends the connection with its RFC 6455 close code,
/// after one TOO_LARGE error frame where size is the problem.
#[test]
fn framing_violations_close_with_the_rfc_code() {
    let server = start(BrokerKind::Memory);
    let addr = server.local_addr();
    let mut canaries = Canaries::cover(addr, true);
    let valid = message(200, "valid", "v");
    let json = valid.as_bytes();
    let protocol = 1002;
    let invalid_utf8 = 1007;
    let too_big = 1009;

    // 2^63: a length no 64-bit reader may take at its word.
    let mut huge_header = vec![FIN | OP_TEXT, 0x80 | 127];
    huge_header.extend_from_slice(&(1u64 << 63).to_be_bytes());
    huge_header.extend_from_slice(&MASK);
    let mut endless_continuations = frame(false, OP_TEXT, b"{");
    for _ in 0..20_000 {
        endless_continuations.extend(frame(false, OP_CONTINUE, b""));
    }
    let open_then = |first: &[u8], second: Vec<u8>| [first, &second[..]].concat();
    let half = frame(false, OP_TEXT, &json[..10]);

    // (what, bytes, close code, the error frame's code if one comes first)
    let cases: Vec<(&str, Vec<u8>, u16, Option<&str>)> = vec![
        (
            "an unmasked client frame",
            raw_frame(FIN | OP_TEXT, json, false),
            protocol,
            None,
        ),
        (
            "RSV1",
            raw_frame(FIN | 0x40 | OP_TEXT, json, true),
            protocol,
            None,
        ),
        (
            "RSV2",
            raw_frame(FIN | 0x20 | OP_TEXT, json, true),
            protocol,
            None,
        ),
        (
            "RSV3",
            raw_frame(FIN | 0x10 | OP_TEXT, json, true),
            protocol,
            None,
        ),
        (
            "reserved data opcode 3",
            frame(true, 0x3, json),
            protocol,
            None,
        ),
        (
            "reserved control opcode 0xB",
            frame(true, 0xB, b""),
            protocol,
            None,
        ),
        (
            "a ping of 126 bytes",
            frame(true, OP_PING, &[b'p'; 126]),
            protocol,
            None,
        ),
        (
            "a fragmented ping",
            frame(false, OP_PING, b"p"),
            protocol,
            None,
        ),
        (
            "a continuation with no start",
            frame(true, OP_CONTINUE, json),
            protocol,
            None,
        ),
        (
            "a new text frame inside a fragmented message",
            open_then(&half, frame(true, OP_TEXT, json)),
            protocol,
            None,
        ),
        ("a close with code 999", close_frame(999), protocol, None),
        ("a close with code 1005", close_frame(1005), protocol, None),
        ("a close with code 1006", close_frame(1006), protocol, None),
        (
            "a close with a 1-byte payload",
            frame(true, OP_CLOSE, &[3]),
            protocol,
            None,
        ),
        (
            "a close whose reason is not UTF-8",
            frame(true, OP_CLOSE, &[0x03, 0xe8, 0xff, 0xfe]),
            invalid_utf8,
            None,
        ),
        (
            "invalid bytes",
            frame(true, OP_TEXT, b"{\"a\":\"\xff\xfe\"}"),
            invalid_utf8,
            None,
        ),
        (
            "an overlong '/'",
            frame(true, OP_TEXT, b"{\"a\":\"\xc0\xaf\"}"),
            invalid_utf8,
            None,
        ),
        (
            "an encoded surrogate",
            frame(true, OP_TEXT, b"{\"a\":\"\xed\xa0\x80\"}"),
            invalid_utf8,
            None,
        ),
        (
            "a truncated sequence",
            frame(true, OP_TEXT, b"{\"a\":\"\xf0\x9f\x98\"}"),
            invalid_utf8,
            None,
        ),
        (
            "invalid bytes in the last fragment",
            open_then(&half, frame(true, OP_CONTINUE, b"\xff")),
            invalid_utf8,
            None,
        ),
        ("a 2^63 length", huge_header, too_big, Some("TOO_LARGE")),
        (
            "a frame one byte over the limit",
            frame(true, OP_TEXT, &[b' '; MAX_FRAME + 1]),
            too_big,
            Some("TOO_LARGE"),
        ),
        (
            "a message over the limit in two fragments",
            open_then(
                &frame(false, OP_TEXT, &[b' '; MAX_FRAME / 2 + 1]),
                frame(true, OP_CONTINUE, &[b' '; MAX_FRAME / 2 + 1]),
            ),
            too_big,
            Some("TOO_LARGE"),
        ),
        (
            "65 fragments",
            fragmented(OP_TEXT, json, 65),
            too_big,
            Some("TOO_LARGE"),
        ),
        (
            "20,000 empty continuations",
            endless_continuations,
            too_big,
            Some("TOO_LARGE"),
        ),
    ];
    for (what, bytes, code, error) in cases {
        let mut ws = RawWs::open(addr);
        ws.send(&bytes);
        let (texts, close) = ws.until_close(what);
        assert_eq!(
            close,
            Some(code),
            "{what}: errors before the close: {texts:?}"
        );
        match error {
            Some(error) => {
                assert_eq!(texts.len(), 1, "{what}: {texts:?}");
                assert_eq!(texts[0]["type"], "error", "{what}");
                assert_eq!(texts[0]["code"], error, "{what}: {}", texts[0]);
            }
            None => assert!(texts.is_empty(), "{what}: {texts:?}"),
        }
        canaries.check(what);
    }
    drop(canaries);
    server.shutdown().unwrap();
}

/// Legal but unusual frames are served: binary (UNSUPPORTED_FRAME, stays
/// open), 10 or 64 fragments, pings between fragments, a ping flood, and a
/// character split across fragments.
#[test]
fn legal_but_unusual_frames_are_served() {
    let server = start(BrokerKind::Memory);
    let addr = server.local_addr();
    let mut canaries = Canaries::cover(addr, true);
    let mut ws = RawWs::open(addr);

    ws.send(&frame(true, OP_BINARY, &[1, 2, 3]));
    let error = ws.reply();
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["code"], "UNSUPPORTED_FRAME", "{error}");
    ws.send_text(&message(300, "after binary", "after-binary"));
    assert_ack(&ws.reply(), "after-binary", "after a binary frame");
    canaries.check("after a binary frame");

    for pieces in [10, 64] {
        let id = format!("in-{pieces}");
        let json = message(300, &format!("in {pieces} fragments"), &id);
        ws.send(&fragmented(OP_TEXT, json.as_bytes(), pieces));
        assert_ack(&ws.reply(), &id, &format!("{pieces} fragments"));
        canaries.check(&format!("after {pieces} fragments"));
    }

    // A ping between two fragments is answered and does not count.
    let json = message(300, "ping inside", "ping-inside");
    let (a, b) = json.as_bytes().split_at(20);
    ws.send(
        &[
            frame(false, OP_TEXT, a),
            frame(true, OP_PING, b"hi"),
            frame(true, OP_CONTINUE, b),
        ]
        .concat(),
    );
    let (mut pong, mut ack) = (false, None);
    while !pong || ack.is_none() {
        match ws.next() {
            Event::Pong => pong = true,
            Event::Text(v) if v["type"] == "ack" => ack = Some(v),
            Event::Text(_) => {}
            other => panic!("expected a pong and an ack, got {other:?}"),
        }
    }
    assert_ack(&ack.unwrap(), "ping-inside", "a ping between fragments");

    // 40,000 pings and then a message, with nothing read for a second:
    // pongs are coalesced (never an unbounded queue) and the ack arrives.
    let mut flood: Vec<u8> = (0..40_000u32)
        .flat_map(|i| frame(true, OP_PING, &i.to_be_bytes()))
        .collect();
    flood.extend(frame(
        true,
        OP_TEXT,
        message(300, "after pings", "after-pings").as_bytes(),
    ));
    ws.send(&flood);
    thread::sleep(Duration::from_secs(1));
    let mut pongs = 0;
    let ack = loop {
        match ws.next() {
            Event::Pong => pongs += 1,
            Event::Text(v) if v["type"] == "ack" => break v,
            Event::Text(_) => {}
            other => panic!("expected pongs and an ack, got {other:?}"),
        }
    };
    assert_ack(&ack, "after-pings", "after a ping flood");
    assert!((1..=40_000).contains(&pongs), "{pongs} pongs");
    canaries.check("after a ping flood");

    // "😀" is F0 9F 98 80: split it across two fragments.
    let json = message(300, "split 😀 char", "split-char");
    let at = json.find('😀').unwrap() + 2;
    let (a, b) = json.as_bytes().split_at(at);
    ws.send(&[frame(false, OP_TEXT, a), frame(true, OP_CONTINUE, b)].concat());
    assert_eq!(ws.reply()["clientMessageId"], "split-char");
    canaries.check("after every legal shape");
    drop(canaries);
    server.shutdown().unwrap();
}

/// A message whose frames stop arriving is closed with 1008 after
/// `message_timeout`, whether or not pings keep bytes flowing.
#[test]
fn a_message_that_never_completes_is_closed_with_1008() {
    let timeout = Duration::from_secs(1);
    let server = Server::start(Config {
        message_timeout: timeout,
        ..config(BrokerKind::Memory)
    })
    .unwrap();
    let addr = server.local_addr();
    let mut canaries = Canaries::cover(addr, true);
    let json = message(400, "never finished", "n");
    let started = Instant::now();
    let mut first_fragment = RawWs::open(addr);
    first_fragment.send(&frame(false, OP_TEXT, &json.as_bytes()[..30]));
    let mut half_frame = RawWs::open(addr);
    half_frame.send(&frame(true, OP_TEXT, json.as_bytes())[..20]);
    // Pings every 200 ms keep bytes flowing but complete nothing.
    let mut pinged = RawWs::open(addr);
    pinged.send(&frame(false, OP_TEXT, &json.as_bytes()[..30]));
    let mut pinger = pinged.writer.try_clone().unwrap();
    let pinging = thread::spawn(move || {
        for _ in 0..25 {
            thread::sleep(Duration::from_millis(200));
            if pinger.write_all(&frame(true, OP_PING, b"alive")).is_err() {
                return;
            }
        }
    });
    canaries.check("while three messages hang");

    for (what, ws) in [
        ("first fragment only", &mut first_fragment),
        ("half a frame", &mut half_frame),
        ("fragments and pings", &mut pinged),
    ] {
        let (texts, close) = ws.until_close(what);
        assert_eq!(close, Some(1008), "{what}: {texts:?}");
        assert!(
            started.elapsed() >= timeout,
            "{what}: closed after {:?}, before the {timeout:?} timeout",
            started.elapsed()
        );
        // Exactly the error saying why; never an ack for a partial message.
        assert_eq!(texts.len(), 1, "{what}: {texts:?}");
        assert_eq!(texts[0]["type"], "error", "{what}: {texts:?}");
        assert_eq!(texts[0]["code"], "TIMEOUT", "{what}: {texts:?}");
    }
    pinging.join().unwrap();
    canaries.check("after the stalled messages");
    drop(canaries);
    server.shutdown().unwrap();
}

// ---------------------------------------------------------------------------
// JSON and Unicode
// ---------------------------------------------------------------------------

/// What an error frame must say: its code, field and reason (`None`: no
/// field, or any reason).
type ErrorSays = (&'static str, Option<&'static str>, Option<&'static str>);

/// JSON bombs and Unicode edge cases get exactly one error frame each, with
/// the protocol's code and field; storable Unicode is acked and broadcast
/// unchanged.
#[test]
fn json_bombs_and_unicode_edge_cases_get_one_error_each() {
    let server = start(BrokerKind::Memory);
    let addr = server.local_addr();
    let mut canaries = Canaries::cover(addr, true);
    let mut attacker = connect(addr, ROOM);
    const USER: u32 = 777;

    // Nesting: a field's value is read as "any JSON value" whose insides
    // are skipped without recursion, so balanced nesting is a wrong type;
    // unbalanced nesting is JSON that ends too soon.
    let nested_arrays = format!("{}1{}", "[".repeat(3_400), "]".repeat(3_400));
    let open_arrays = "[".repeat(6_800);
    let nested_objects = format!("{}1{}", r#"{"a":"#.repeat(1_130), "}".repeat(1_130));
    let open_objects = r#"{"a":"#.repeat(1_350);
    // The longest strings of escapes a frame can carry: a full 8 KiB frame
    // is refused for its size before any JSON is read.
    let newline_escapes = format!("\"{}\"", "\\n".repeat(3_400));
    let unicode_escapes = format!("\"{}\"", "\\u00e9".repeat(1_130));
    let ok = "\"hi\"";
    let bad_json = ("BAD_JSON", None, None);
    let field = |field: &'static str, reason: Option<&'static str>| {
        ("VALIDATION_FAILED", Some(field), reason)
    };
    // (what, frame, (code, field, reason))
    let cases: Vec<(&str, String, ErrorSays)> = vec![
        (
            "3,400 nested arrays in userId",
            raw_message(&nested_arrays, ok, "b1"),
            field("userId", Some("WRONG_TYPE")),
        ),
        (
            "6,800 unclosed arrays in userId",
            raw_message(&open_arrays, ok, "b1u"),
            bad_json,
        ),
        (
            "1,130 nested objects in message",
            raw_message("1", &nested_objects, "b1o"),
            field("message", Some("WRONG_TYPE")),
        ),
        (
            "1,350 unclosed objects in message",
            raw_message("1", &open_objects, "b1p"),
            bad_json,
        ),
        ("3,400 nested arrays alone", nested_arrays.clone(), bad_json),
        (
            "1,130 nested objects alone",
            nested_objects.clone(),
            field("userId", Some("MISSING")),
        ),
        (
            "6,800 bytes of \\n escapes",
            raw_message("1", &newline_escapes, "b2"),
            field("message", Some("TOO_LONG")),
        ),
        (
            "6,780 bytes of \\u escapes",
            raw_message("1", &unicode_escapes, "b3"),
            field("message", Some("TOO_LONG")),
        ),
        (
            "duplicate userId",
            raw_message("1", ok, "b4").replacen('{', r#"{"userId":2,"#, 1),
            bad_json,
        ),
        (
            "duplicate message",
            raw_message("1", ok, "b5").replacen('{', r#"{"message":"x","#, 1),
            bad_json,
        ),
        ("userId 1e999", raw_message("1e999", ok, "b6"), bad_json),
        (
            "userId -0",
            raw_message("-0", ok, "b7"),
            field("userId", None),
        ),
        (
            "userId 1.5",
            raw_message("1.5", ok, "b8"),
            field("userId", Some("WRONG_TYPE")),
        ),
        (
            "userId 1e2",
            raw_message("1e2", ok, "b9"),
            field("userId", Some("WRONG_TYPE")),
        ),
        (
            "userId 2^64",
            raw_message("18446744073709551616", ok, "b10"),
            field("userId", None),
        ),
        (
            "a lone leading surrogate",
            raw_message("1", r#""a\ud800b""#, "b11"),
            bad_json,
        ),
        (
            "a lone trailing surrogate",
            raw_message("1", r#""a\udc00b""#, "b12"),
            bad_json,
        ),
        (
            "an escaped NUL",
            raw_message("1", r#""a\u0000b""#, "b13"),
            field("message", Some("INVALID_CHARACTERS")),
        ),
        (
            "a NUL in clientMessageId",
            raw_message("1", ok, r"c\u0000"),
            field("clientMessageId", Some("INVALID_CHARACTERS")),
        ),
        (
            "501 emoji",
            message(USER, &"😀".repeat(501), "b14"),
            field("message", Some("TOO_LONG")),
        ),
        ("an empty frame", String::new(), bad_json),
        ("null", "null".to_string(), bad_json),
        (
            "a BOM before the object",
            format!("\u{feff}{}", message(USER, "x", "b15")),
            bad_json,
        ),
    ];
    for (i, (what, text, (code, field, reason))) in cases.into_iter().enumerate() {
        assert!(
            text.len() <= MAX_FRAME,
            "{what}: {} bytes is refused for size",
            text.len()
        );
        let error = request(&mut attacker, text);
        assert_eq!(error["type"], "error", "{what}: {error}");
        assert_eq!(error["code"], code, "{what}: {error}");
        match field {
            Some(field) => assert_eq!(error["field"], field, "{what}: {error}"),
            None => assert!(error.get("field").is_none(), "{what}: {error}"),
        }
        if let Some(reason) = reason {
            assert_eq!(error["reason"], reason, "{what}: {error}");
        }
        if what == "an escaped NUL" {
            assert!(
                error["message"].as_str().unwrap().contains("NUL"),
                "{error}"
            );
        }
        // Exactly one error: the next reply is this message's ack.
        let id = format!("after-{i}");
        let ack = request(&mut attacker, message(USER, "still here", &id));
        assert_ack(&ack, &id, what);
        canaries.check(what);
    }

    // Accepted as sent, and broadcast unchanged.
    let valid_with_pad = |pad: String, id: &str| {
        format!(
            r#"{{"pad":{pad},"userId":{USER},"username":"user{USER}","message":"padded","timestamp":"{TS}","messageType":"TEXT","clientMessageId":"{id}"}}"#
        )
    };
    let padded = [
        (
            "6.6 KB of escapes in an unknown field",
            valid_with_pad(format!("\"{}\"", "\\u0041".repeat(1_100)), "pad-escapes"),
            "pad-escapes",
        ),
        (
            "1,100 nested objects in an unknown field",
            valid_with_pad(
                format!("{}1{}", r#"{"a":"#.repeat(1_100), "}".repeat(1_100)),
                "pad-nested",
            ),
            "pad-nested",
        ),
    ];
    let accepted = [
        ("a BOM in the message", "\u{feff}hello".to_string()),
        (
            "an RTL override",
            "abc \u{202e}olleh\u{202c} def".to_string(),
        ),
        (
            "zero-width characters",
            "a\u{200b}b\u{200c}c\u{200d}d\u{2060}e".to_string(),
        ),
        (
            "a ZWJ family and combining marks",
            "👨\u{200d}👩\u{200d}👧 e\u{301}\u{302}".to_string(),
        ),
        ("500 emoji", "😀".repeat(500)),
        (
            "control characters other than NUL",
            "tab\tbell\u{7}del\u{7f}".to_string(),
        ),
    ];
    for (i, (what, text)) in accepted.iter().enumerate() {
        let id = format!("ok-{i}");
        assert_ack(&request(&mut attacker, message(USER, text, &id)), &id, what);
        let own = loop {
            let frame = recv_kind(&mut attacker, "message");
            if frame["userId"] == USER {
                break frame;
            }
        };
        assert_eq!(own["message"], text.as_str(), "{what}");
        canaries.check(what);
    }
    for (what, text, id) in padded {
        assert!(text.len() <= MAX_FRAME, "{what}: {} bytes", text.len());
        assert_ack(&request(&mut attacker, text), id, what);
        canaries.check(what);
    }
    drop(canaries);
    server.shutdown().unwrap();
}

/// Nesting far deeper than any stack (10,000 and 1,000,000 levels) gets one
/// error frame, never a stack overflow, and the connection stays open.
#[test]
fn nesting_far_deeper_than_any_stack_is_refused_without_overflow() {
    // A size limit that lets the bombs through to the JSON parser.
    let server = Server::start(Config {
        max_message_size: 8 << 20,
        ..config(BrokerKind::Memory)
    })
    .unwrap();
    let addr = server.local_addr();
    let mut canaries = Canaries::cover(addr, true);
    let mut attacker = connect(addr, ROOM);
    for depth in [10_000, 1_000_000] {
        let cases = [
            (
                "balanced arrays in userId",
                raw_message(
                    &format!("{}1{}", "[".repeat(depth), "]".repeat(depth)),
                    "\"hi\"",
                    "deep",
                ),
                ("VALIDATION_FAILED", Some("userId")),
            ),
            (
                "balanced objects in userId",
                raw_message(
                    &format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth)),
                    "\"hi\"",
                    "deep",
                ),
                ("VALIDATION_FAILED", Some("userId")),
            ),
            (
                "unclosed objects in userId",
                raw_message(&r#"{"a":"#.repeat(depth), "\"hi\"", "deep"),
                ("BAD_JSON", None),
            ),
            (
                "unclosed arrays alone",
                "[".repeat(depth),
                ("BAD_JSON", None),
            ),
        ];
        for (shape, bomb, (code, field)) in cases {
            let what = format!("{depth} levels: {shape}");
            let error = request(&mut attacker, bomb);
            assert_eq!(error["code"], code, "{what}: {error}");
            match field {
                Some(field) => assert_eq!(error["field"], field, "{what}: {error}"),
                None => assert!(error.get("field").is_none(), "{what}: {error}"),
            }
            let ack = request(&mut attacker, message(778, "still here", "after-deep"));
            assert_ack(&ack, "after-deep", &what);
            canaries.check(&what);
        }
    }
    drop(canaries);
    server.shutdown().unwrap();
}

// ---------------------------------------------------------------------------
// Clients that send without reading
// ---------------------------------------------------------------------------

/// Writes `frames` from a second thread while nothing is read for two
/// seconds (a canary checks in meanwhile), then reads until `expected`
/// replies arrived or the connection ended. Asserts the only two acceptable
/// outcomes: every reply and the connection still serving, or an ended
/// connection counted as a slow-reader disconnect. Returns the replies.
fn flood(
    addr: SocketAddr,
    canaries: &mut Canaries,
    what: &str,
    frames: Vec<u8>,
    expected: usize,
) -> Vec<Value> {
    let mut ws = RawWs::open(addr);
    let mut writer = ws.writer.try_clone().unwrap();
    let writing = thread::spawn(move || writer.write_all(&frames));
    let pause = Instant::now();
    canaries.check(&format!("{what}: while the flood is not read"));
    thread::sleep(Duration::from_secs(2).saturating_sub(pause.elapsed()));
    let mut replies = Vec::with_capacity(expected);
    let ended = loop {
        if replies.len() == expected {
            break None;
        }
        match ws.next() {
            Event::Text(v) => replies.push(v),
            Event::Ping | Event::Pong => {}
            end => break Some(end),
        }
    };
    let written = writing.join().unwrap();
    match ended {
        None => {
            written.unwrap_or_else(|e| panic!("{what}: every reply came, yet writing failed: {e}"));
            // Nothing more was sent, and the connection still serves.
            ws.send_text(&message(1, "after the flood", "after-flood"));
            let ack = ws.reply();
            assert_eq!(ack["clientMessageId"], "after-flood", "{what}: {ack}");
        }
        Some(Event::Silence) => panic!(
            "{what}: {} of {expected} replies, then {TIMEOUT:?} of silence on a connection that stays open",
            replies.len()
        ),
        Some(end) => {
            assert!(
                matches!(end, Event::Close(_) | Event::Eof | Event::Reset),
                "{what}: {end:?}"
            );
            let disconnects = health(addr)["totals"]["slowReaderDisconnects"]
                .as_u64()
                .unwrap();
            assert!(
                disconnects >= 1,
                "{what}: {} of {expected} replies, then {end:?}, but no slow-reader disconnect was counted",
                replies.len()
            );
        }
    }
    canaries.check(&format!("{what}: after the flood"));
    replies
}

/// Floods a fresh `--broker none` server with `count` frames sent without
/// reading, then checks every reply with `check(index, reply)`.
fn never_reading_client(
    what: &str,
    count: usize,
    frame_of: impl Fn(usize) -> Vec<u8>,
    check: impl Fn(usize, &Value),
) {
    let server = start(BrokerKind::None);
    let addr = server.local_addr();
    let mut canaries = Canaries::cover(addr, false);
    let frames: Vec<u8> = (0..count).flat_map(frame_of).collect();
    let replies = flood(addr, &mut canaries, what, frames, count);
    for (i, reply) in replies.iter().enumerate() {
        check(i, reply);
    }
    drop(canaries);
    server.shutdown().unwrap();
}

/// 30,000 messages sent without reading get every ack, in order (or a
/// counted slow-reader cut; never fewer acks on an open connection).
#[test]
fn a_client_that_never_reads_its_acks_gets_every_one_in_order() {
    never_reading_client(
        "30,000 messages",
        30_000,
        |i| {
            frame(
                true,
                OP_TEXT,
                message(1, "flood", &i.to_string()).as_bytes(),
            )
        },
        |i, reply| {
            assert_eq!(reply["type"], "ack", "reply {i}: {reply}");
            assert_eq!(
                reply["clientMessageId"],
                i.to_string(),
                "reply {i}: {reply}"
            );
        },
    );
}

/// 30,000 invalid messages sent without reading get every error, in order
/// (or a counted slow-reader cut).
#[test]
fn a_client_that_never_reads_its_errors_gets_every_one_in_order() {
    never_reading_client(
        "30,000 invalid messages",
        30_000,
        |i| {
            frame(
                true,
                OP_TEXT,
                raw_message("0", "\"x\"", &i.to_string()).as_bytes(),
            )
        },
        |i, reply| {
            assert_eq!(reply["code"], "VALIDATION_FAILED", "reply {i}: {reply}");
            assert_eq!(reply["field"], "userId", "reply {i}: {reply}");
            assert_eq!(
                reply["clientMessageId"],
                i.to_string(),
                "reply {i}: {reply}"
            );
        },
    );
}

/// 40,000 binary frames sent without reading get every UNSUPPORTED_FRAME
/// error (or a counted slow-reader cut).
#[test]
fn a_client_that_never_reads_binary_frame_errors_gets_every_one() {
    never_reading_client(
        "40,000 binary frames",
        40_000,
        |_| frame(true, OP_BINARY, &[1, 2, 3]),
        |i, reply| assert_eq!(reply["code"], "UNSUPPORTED_FRAME", "reply {i}: {reply}"),
    );
}

/// A member of a busy room that never reads is closed as a slow reader,
/// while every other member keeps getting every broadcast.
#[test]
fn a_never_reading_room_member_is_closed_and_the_room_keeps_flowing() {
    let server = start(BrokerKind::Memory);
    let addr = server.local_addr();
    let mut canaries = Canaries::cover(addr, true);
    // A small receive buffer (fixed: no autotuning) and no reads at all.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let (head, mut silent) = RawWs::upgrade(
        TcpStream::from(socket),
        get(&format!("/chat/{ROOM}"), UPGRADE).as_bytes(),
    );
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let mut sender = connect(addr, ROOM);
    let mut reader = connect(addr, ROOM);
    let members = canaries.clients.len() + 3;
    eventually("every member is in", || {
        health(addr)["connections"] == members
    });

    // 450 characters, numbered so the reader can check the order.
    let text = |n: usize| format!("{n:06}{}", "z".repeat(444));
    let batch = 50;
    let mut sent = 0;
    let mut after_cut = None;
    // 400 batches of 50 broadcasts of ~600 bytes (12 MB) is far past any
    // kernel buffer plus the 256 KiB bound: a hang detector, not a target.
    for round in 0..400 {
        for _ in 0..batch {
            send(&mut sender, message(500, &text(sent), &sent.to_string()));
            sent += 1;
        }
        // The sender reads its acks and its own broadcasts.
        let (mut acks, mut own) = (0, 0);
        while acks < batch || own < batch {
            match recv(&mut sender)["type"].as_str() {
                Some("ack") => acks += 1,
                Some("message") => own += 1,
                other => panic!("sender: unexpected {other:?}"),
            }
        }
        // The reader gets every broadcast, in order.
        let mut next = sent - batch;
        while next < sent {
            let frame = recv_kind(&mut reader, "message");
            if frame["userId"] == 500 {
                assert_eq!(frame["message"], text(next), "broadcast {next}");
                next += 1;
            }
        }
        canaries.check(&format!("round {round}"));
        if after_cut.is_none() && health(addr)["totals"]["slowReaderDisconnects"] != 0 {
            after_cut = Some(round);
        }
        // Three more rounds after the cut: the room still flows.
        if after_cut.is_some_and(|cut| round >= cut + 3) {
            break;
        }
    }
    assert!(
        after_cut.is_some(),
        "{sent} broadcasts and no slow-reader disconnect was counted"
    );
    assert_eq!(health(addr)["totals"]["slowReaderDisconnects"], 1);
    eventually("only the silent member left", || {
        health(addr)["connections"] == members - 1
    });
    // The silent member finds its connection ended once it does read:
    // broadcasts, then a close (1008) or the end of the stream.
    let end = loop {
        match silent.next() {
            Event::Text(_) | Event::Ping | Event::Pong | Event::Binary => {}
            end => break end,
        }
    };
    match end {
        Event::Close(code) => assert_eq!(code, Some(1008)),
        Event::Eof | Event::Reset => {}
        other => panic!("the cut member's connection did not end: {other:?}"),
    }
    drop(canaries);
    server.shutdown().unwrap();
}

// ---------------------------------------------------------------------------
// Counters and start-up
// ---------------------------------------------------------------------------

/// After plain HTTP requests, bare TCP connections and WebSockets (closed
/// every way) have all ended, the /health totals add up.
#[test]
fn health_counters_add_up_after_mixed_traffic() {
    let server = start(BrokerKind::Memory);
    let addr = server.local_addr();
    // Plain HTTP requests answered so far (the /health calls included).
    let mut http = 0u64;
    let health_doc = |http: &mut u64| {
        let doc = health(addr);
        *http += 1;
        doc
    };
    for _ in 0..3 {
        health_doc(&mut http);
    }
    let refusals: [(&str, Vec<u8>, u16); 6] = [
        ("POST", b"POST /chat/1 HTTP/1.1\r\n\r\n".to_vec(), 405),
        ("404", get("/nope", "").into_bytes(), 404),
        ("426", get("/chat/1", "").into_bytes(), 426),
        ("garbage", b"\x00\x01\r\n\r\n".to_vec(), 400),
        (
            "431",
            get("/health", &"X: y\r\n".repeat(40)).into_bytes(),
            431,
        ),
        (
            "pipelined",
            [get("/health", ""), get("/health", "")]
                .concat()
                .into_bytes(),
            400,
        ),
    ];
    for (what, request, status) in &refusals {
        refused(addr, what, request, *status);
        http += 1;
    }
    // Bare TCP connections that never send a byte.
    let bare = 2;
    for _ in 0..bare {
        drop(TcpStream::connect(addr).unwrap());
    }
    // WebSockets: two close politely, one vanishes, one is failed for a
    // protocol error.
    let mut websockets = 0;
    for i in 0..2 {
        let mut client = connect(addr, ROOM);
        assert_eq!(
            request(&mut client, message(1, "hi", &i.to_string()))["type"],
            "ack"
        );
        client.close(None).unwrap();
        loop {
            match client.read() {
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed) => break,
                Err(e) => panic!("a polite close ended with {e}"),
            }
        }
        websockets += 1;
    }
    drop(connect(addr, ROOM));
    websockets += 1;
    let mut failed = RawWs::open(addr);
    failed.send(&raw_frame(FIN | OP_TEXT, b"{}", false));
    assert_eq!(failed.until_close("unmasked").1, Some(1002));
    drop(failed);
    websockets += 1;

    // Closes are counted as the server sees them: poll until they are.
    let deadline = Instant::now() + TIMEOUT;
    let last = loop {
        let before = http;
        let doc = health_doc(&mut http);
        let t = &doc["totals"];
        let expected = serde_json::json!({
            "connections": 0,
            "connectionsAccepted": websockets,
            "connectionsClosed": websockets,
            "httpRequests": before,
            // Every TCP connection: the WebSockets, the answered requests,
            // the bare ones, and the one this document is the answer to.
            "tcpAccepted": websockets + before + bare + 1,
        });
        let actual = serde_json::json!({
            "connections": doc["connections"],
            "connectionsAccepted": t["connectionsAccepted"],
            "connectionsClosed": t["connectionsClosed"],
            "httpRequests": t["httpRequests"],
            "tcpAccepted": t["tcpAccepted"],
        });
        if actual == expected {
            break doc;
        }
        assert!(
            Instant::now() < deadline,
            "counters do not add up:\nexpected {expected}\nactual   {actual}"
        );
        thread::sleep(Duration::from_millis(20));
    };
    let t = &last["totals"];
    assert!(t["tcpAccepted"].as_u64() >= t["connectionsAccepted"].as_u64());
    assert!(t["tcpAccepted"].as_u64() >= t["httpRequests"].as_u64());
    assert_eq!(t["messagesAccepted"], 2, "{last}");
    server.shutdown().unwrap();
}

/// Connections past `max_connections` get a JSON 503 with Retry-After while
/// the members keep talking, and a freed slot can be taken again.
#[test]
fn connections_past_the_limit_get_a_503_and_members_keep_talking() {
    let server = Server::start(Config {
        max_connections: 3,
        ..config(BrokerKind::Memory)
    })
    .unwrap();
    let addr = server.local_addr();
    let mut members = Canaries {
        clients: (0..3).map(|_| connect(addr, ROOM)).collect(),
        broadcasts: true,
        sent: 0,
    };
    members.check("at the limit");
    let request = get(&format!("/chat/{ROOM}"), UPGRADE);
    for attempt in 0..3 {
        let answer = refused(addr, "one over the limit", request.as_bytes(), 503);
        assert_eq!(answer.header("retry-after"), Some("1"), "attempt {attempt}");
        members.check(&format!("after refusal {attempt}"));
    }
    let doc = health(addr);
    assert_eq!(doc["connections"], 3, "{doc}");
    assert_eq!(doc["totals"]["refusedOverCapacity"], 3, "{doc}");
    assert_eq!(doc["totals"]["connectionsAccepted"], 3, "{doc}");

    // A member leaves politely; its slot is free again.
    let mut leaving = members.clients.pop().unwrap();
    leaving.close(None).unwrap();
    while leaving.read().is_ok() {}
    eventually("the slot is freed", || health(addr)["connections"] == 2);
    members.clients.push(connect(addr, ROOM));
    members.check("with the slot taken again");
    drop(members);
    server.shutdown().unwrap();
}

/// An HTTP/1.1 upgrade without exactly one Host header is refused with 400
/// (RFC 9112 §3.2: a server MUST; RFC 6455 §4.2.1 lists Host as required).
#[test]
fn an_upgrade_without_exactly_one_host_is_refused() {
    let server = start(BrokerKind::Memory);
    let addr = server.local_addr();
    let chat = format!("/chat/{ROOM}");
    let cases = [
        ("no Host", format!("GET {chat} HTTP/1.1\r\n{UPGRADE}\r\n")),
        (
            "two Hosts",
            format!("GET {chat} HTTP/1.1\r\nHost: a\r\nHost: b\r\n{UPGRADE}\r\n"),
        ),
    ];
    for (what, request) in cases {
        refused(addr, what, request.as_bytes(), 400);
    }
    server.shutdown().unwrap();
}

/// A second server on a port already in use fails to start and names
/// `--share-port`; with `share_port` it starts and shares the port.
#[test]
fn a_second_server_on_a_taken_port_fails_unless_sharing() {
    let first = start(BrokerKind::Memory);
    let addr = first.local_addr();
    let taken = Config {
        bind: addr,
        ..config(BrokerKind::Memory)
    };
    let error = match Server::start(taken.clone()) {
        Ok(second) => {
            second.shutdown().unwrap();
            panic!("a second server started on {addr}, which is in use");
        }
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("--share-port"), "{error}");
    assert!(error.contains(&addr.to_string()), "{error}");
    // The first server is unharmed.
    let mut client = connect(addr, ROOM);
    assert_eq!(
        request(&mut client, message(1, "first", "1"))["type"],
        "ack"
    );
    drop(client);

    let second = Server::start(Config {
        share_port: true,
        ..taken
    })
    .expect("a server that asks to share the port starts");
    assert_eq!(second.local_addr(), addr);
    // Connections land on either server; each one is served.
    for i in 0..4 {
        let mut client = connect(addr, ROOM);
        assert_eq!(
            request(&mut client, message(1, "either", &i.to_string()))["type"],
            "ack"
        );
    }
    second.shutdown().unwrap();
    first.shutdown().unwrap();
}

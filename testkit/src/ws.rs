//! A blocking WebSocket chat client, as a load-test user would be: connect
//! to `/chat/{room}`, send JSON text frames, read JSON frames. Every read
//! has a timeout, so a server that stops answering fails the test.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// A client connection to a chat server.
pub type Client = WebSocket<MaybeTlsStream<TcpStream>>;

/// Opens `ws://{addr}/chat/{room}` (the upgrade must answer 101) with
/// `TCP_NODELAY` and reads that give up after `read_timeout`.
pub fn connect(addr: SocketAddr, room: u32, read_timeout: Duration) -> Client {
    connect_to(addr, &format!("/chat/{room}"), read_timeout)
}

/// [`connect`] to any target, e.g. `/chat/3?since=1733090000123-0`.
pub fn connect_to(addr: SocketAddr, target: &str, read_timeout: Duration) -> Client {
    let (mut client, response) = tungstenite::connect(format!("ws://{addr}{target}"))
        .unwrap_or_else(|e| panic!("WebSocket to {addr}{target}: {e}"));
    assert_eq!(response.status(), 101);
    if let MaybeTlsStream::Plain(stream) = client.get_ref() {
        stream.set_nodelay(true).unwrap();
    }
    set_read_timeout(&mut client, read_timeout);
    client
}

/// Changes how long a read waits before [`next_json`] returns `None`.
pub fn set_read_timeout(client: &mut Client, timeout: Duration) {
    if let MaybeTlsStream::Plain(stream) = client.get_ref() {
        stream.set_read_timeout(Some(timeout)).unwrap();
    }
}

/// Sends one text frame.
pub fn send_text(client: &mut Client, text: String) {
    client.send(Message::text(text)).expect("send");
}

/// The next text frame as JSON (pings and pongs skipped); `None` when the
/// read timeout passes first. A close or a broken connection panics.
pub fn next_json(client: &mut Client) -> Option<Value> {
    loop {
        match client.read() {
            Ok(Message::Text(text)) => {
                return Some(serde_json::from_str(&text).expect("frames are JSON"))
            }
            Ok(Message::Close(frame)) => panic!("unexpected close: {frame:?}"),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                return None
            }
            Err(e) => panic!("connection failed: {e}"),
        }
    }
}

/// A valid chat message from `user` (as the load client writes it) with
/// the client's own id, which its ack echoes.
pub fn chat_message(user: u32, text: &str, client_id: &str) -> String {
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

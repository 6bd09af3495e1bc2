//! Real chat servers and WebSocket clients for end-to-end tests: servers
//! run in-process on port 0 with the RabbitMQ broker, in the test's
//! namespace.

use std::net::TcpStream;
use std::time::Duration;

use chatflow_server::{BrokerKind, Config, Server};
use serde_json::Value;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub type Client = WebSocket<MaybeTlsStream<TcpStream>>;

pub fn server(namespace: &str, rooms: u32, id: &str) -> Server {
    let mut config = Config {
        bind: "127.0.0.1:0".parse().unwrap(),
        workers: 2,
        pin_workers: false,
        broker: BrokerKind::Rabbitmq,
        server_id: id.to_string(),
        shutdown_grace: Duration::from_millis(500),
        ..Config::default()
    };
    config.services = config
        .services
        .with_topology(namespace, chatflow_protocol::Rooms::new(rooms).unwrap());
    Server::start(config).expect("server starts")
}

pub fn connect(server: &Server, room: u32) -> Client {
    let (client, _) = tungstenite::connect(format!("ws://{}/chat/{room}", server.local_addr()))
        .expect("connects");
    if let MaybeTlsStream::Plain(stream) = client.get_ref() {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
    }
    client
}

pub fn chat_message(user: u32, text: &str, id: &str) -> String {
    serde_json::json!({
        "userId": user,
        "username": format!("user{user}"),
        "message": text,
        "timestamp": "2026-11-27T02:00:00.123Z",
        "messageType": "TEXT",
        "clientMessageId": id,
    })
    .to_string()
}

pub fn send(client: &mut Client, text: String) {
    client.send(Message::text(text)).expect("send");
}

/// The next JSON frame; `None` on a read timeout.
pub fn next_frame(client: &mut Client) -> Option<Value> {
    loop {
        match client.read() {
            Ok(Message::Text(text)) => {
                return Some(serde_json::from_str(&text).expect("JSON frame"))
            }
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(e) => panic!("connection failed: {e}"),
        }
    }
}

pub fn set_timeout(client: &mut Client, timeout: Duration) {
    if let MaybeTlsStream::Plain(stream) = client.get_ref() {
        stream.set_read_timeout(Some(timeout)).unwrap();
    }
}

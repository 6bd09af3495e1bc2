//! Real chat servers and WebSocket clients for end-to-end tests: servers
//! run in-process on port 0 with the RabbitMQ broker, in the test's
//! namespace.

use std::time::Duration;

use chatflow_server::{BrokerKind, Config, Server};
use chatflow_testkit::ws;
use serde_json::Value;

pub use chatflow_testkit::ws::Client;

/// A started server (id `id`) on the RabbitMQ broker in `namespace`.
pub fn server(namespace: &str, rooms: u32, id: &str) -> Server {
    server_with_api(namespace, rooms, id, None)
}

/// [`server`] reaching Redis on `redis_port` (a test's proxy).
pub fn server_with_redis(namespace: &str, rooms: u32, id: &str, redis_port: u16) -> Server {
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
    config
        .services
        .redis
        .set_direct(chatflow_broker::HostPort::loopback(redis_port));
    config.services.redis.timeout = Duration::from_millis(500);
    Server::start(config).expect("server starts")
}

/// [`server`] also serving the read API (on a free port) over `database`.
pub fn server_with_api(namespace: &str, rooms: u32, id: &str, database: Option<&str>) -> Server {
    Server::start(server_config(namespace, rooms, id, database)).expect("server starts")
}

/// [`server`] reaching Redis on `redis_port` (a proxy a test cuts).
pub fn server_through_redis(namespace: &str, rooms: u32, id: &str, redis_port: u16) -> Server {
    let mut config = server_config(namespace, rooms, id, None);
    config
        .services
        .redis
        .set_direct(chatflow_broker::HostPort::loopback(redis_port));
    Server::start(config).expect("server starts")
}

/// [`server`] that drains for `drain` when shut down (as on SIGTERM):
/// `/health` 503 while it keeps serving, then in-flight confirms and acks,
/// then 1001.
pub fn draining_server(namespace: &str, rooms: u32, id: &str, drain: Duration) -> Server {
    let config = Config {
        drain,
        ..server_config(namespace, rooms, id, None)
    };
    Server::start(config).expect("server starts")
}

fn server_config(namespace: &str, rooms: u32, id: &str, database: Option<&str>) -> Config {
    let mut config = Config {
        api: database.map(|name| chatflow_server::config::ApiConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            threads: 2,
            database: chatflow_database::DatabaseSettings {
                name: name.to_string(),
                ..chatflow_database::DatabaseSettings::default()
            },
            ..chatflow_server::config::ApiConfig::default()
        }),
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
    config
}

/// A WebSocket to `/chat/{room}` of `server`, reads giving up after 30 s.
pub fn connect(server: &Server, room: u32) -> Client {
    ws::connect(server.local_addr(), room, Duration::from_secs(30))
}

/// A valid chat message from `user` with the client's own id.
pub fn chat_message(user: u32, text: &str, id: &str) -> String {
    ws::chat_message(user, text, id)
}

/// Sends one text frame.
pub fn send(client: &mut Client, text: String) {
    ws::send_text(client, text);
}

/// The next JSON frame; `None` on a read timeout.
pub fn next_frame(client: &mut Client) -> Option<Value> {
    ws::next_json(client)
}

/// Changes how long [`next_frame`] waits.
pub fn set_timeout(client: &mut Client, timeout: Duration) {
    ws::set_read_timeout(client, timeout);
}

//! Opening AMQP connections for server and consumer alike (feature `amqp`).
//!
//! amiquip's URL constructors open the socket themselves and leave Nagle's
//! algorithm on. A publisher with confirms writes small frames while earlier
//! ones are unacknowledged — exactly what Nagle holds back — so confirm
//! latency grows. Here the socket is connected (with a timeout) and set to
//! `TCP_NODELAY` before amiquip gets it.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use amiquip::{Auth, Connection, ConnectionOptions, ConnectionTuning};

/// Where and as whom to connect.
#[derive(Clone, Debug)]
pub struct AmqpEndpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub vhost: String,
    pub heartbeat: Duration,
    pub connect_timeout: Duration,
}

/// Connects, with `TCP_NODELAY`, and runs the AMQP handshake.
pub fn connect(endpoint: &AmqpEndpoint) -> Result<Connection, String> {
    let addrs: Vec<SocketAddr> = (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {}:{}: {e}", endpoint.host, endpoint.port))?
        .collect();
    let mut last = format!("{}:{} resolves to no address", endpoint.host, endpoint.port);
    for addr in addrs {
        let stream = match TcpStream::connect_timeout(&addr, endpoint.connect_timeout) {
            Ok(stream) => stream,
            Err(e) => {
                last = format!("connecting to {addr}: {e}");
                continue;
            }
        };
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let stream = mio06::net::TcpStream::from_stream(stream).map_err(|e| e.to_string())?;
        let options = ConnectionOptions::<Auth>::default()
            .auth(Auth::Plain {
                username: endpoint.user.clone(),
                password: endpoint.password.clone(),
            })
            .virtual_host(endpoint.vhost.clone())
            .heartbeat(endpoint.heartbeat.as_secs().min(u16::MAX as u64) as u16)
            .connection_timeout(Some(endpoint.connect_timeout));
        match Connection::insecure_open_stream(stream, options, ConnectionTuning::default()) {
            Ok(connection) => return Ok(connection),
            Err(e) => last = format!("AMQP handshake with {addr}: {e}"),
        }
    }
    Err(last)
}

//! Opening AMQP connections for server and consumer alike, to one broker
//! or to the next reachable node of a cluster.
//!
//! amiquip's URL constructors open the socket themselves and leave Nagle's
//! algorithm on. A publisher with confirms writes small frames while earlier
//! ones are unacknowledged — exactly what Nagle holds back — so confirm
//! latency grows. Here the socket is connected (with a timeout) and set to
//! `TCP_NODELAY` before amiquip gets it.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};

use amiquip::{Auth, Channel, Confirm, Connection, ConnectionOptions, ConnectionTuning};
use crossbeam_channel::Receiver;

use crate::settings::{AmqpEndpoint, HostPort};

/// Why a connection could not be opened. The cause is part of the message
/// (and deliberately not also a `source()`, which would print it twice in
/// an `anyhow` chain).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("resolving {host}:{port}: {cause}")]
    Resolve {
        host: String,
        port: u16,
        cause: std::io::Error,
    },
    #[error("{host}:{port} resolves to no address")]
    NoAddress { host: String, port: u16 },
    #[error("no RabbitMQ node is configured")]
    NoNodes,
    #[error("connecting to {addr}: {cause}")]
    Tcp {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error("AMQP handshake with {addr}: {cause}")]
    Handshake {
        addr: SocketAddr,
        // Boxed: amiquip's error is large, and this one travels up every
        // reconnect loop.
        cause: Box<amiquip::Error>,
    },
}

/// Connects, with `TCP_NODELAY`, and runs the AMQP handshake. Each call
/// starts at the next node of [`AmqpEndpoint::nodes`] (so a process's
/// connections spread over a cluster and a reconnect after a node's loss
/// tries another node first) and goes on through the rest; every address a
/// node resolves to is tried in turn, and the last failure is returned.
pub fn connect(endpoint: &AmqpEndpoint) -> Result<Connection, ConnectError> {
    let nodes = &endpoint.nodes;
    let first = endpoint.next_node.take_turn(nodes.len());
    let mut last = None;
    for i in 0..nodes.len() {
        let node = &nodes[(first + i) % nodes.len()];
        match connect_node(endpoint, node) {
            Ok(connection) => return Ok(connection),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(ConnectError::NoNodes))
}

fn connect_node(endpoint: &AmqpEndpoint, node: &HostPort) -> Result<Connection, ConnectError> {
    let (host, port) = (node.host.as_str(), node.port);
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|cause| ConnectError::Resolve {
            host: host.to_string(),
            port,
            cause,
        })?
        .collect();
    let mut last = ConnectError::NoAddress {
        host: host.to_string(),
        port,
    };
    for addr in addrs {
        let tcp = |cause| ConnectError::Tcp { addr, cause };
        let stream = match TcpStream::connect_timeout(&addr, endpoint.connect_timeout) {
            Ok(stream) => stream,
            Err(e) => {
                last = tcp(e);
                continue;
            }
        };
        stream.set_nodelay(true).map_err(tcp)?;
        let stream = mio06::net::TcpStream::from_stream(stream).map_err(tcp)?;
        let options = ConnectionOptions::<Auth>::default()
            .auth(Auth::Plain {
                username: endpoint.user.clone(),
                password: endpoint.password.expose().to_string(),
            })
            .virtual_host(endpoint.vhost.clone())
            .heartbeat(endpoint.heartbeat.as_secs().min(u64::from(u16::MAX)) as u16)
            .connection_timeout(Some(endpoint.connect_timeout));
        match Connection::insecure_open_stream(stream, options, ConnectionTuning::default()) {
            Ok(connection) => return Ok(connection),
            Err(cause) => {
                last = ConnectError::Handshake {
                    addr,
                    cause: Box::new(cause),
                }
            }
        }
    }
    Err(last)
}

/// Puts `channel` in confirm mode and returns its confirms, listening
/// before enabling so that no confirm can arrive unheard.
pub fn enable_confirms(channel: &Channel) -> amiquip::Result<Receiver<Confirm>> {
    let confirms = channel.listen_for_publisher_confirms()?;
    channel.enable_publisher_confirms()?;
    Ok(confirms)
}

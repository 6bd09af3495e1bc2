//! A TCP proxy in front of a shared service (RabbitMQ, Redis, PostgreSQL)
//! that a test cuts and restores: an outage of *this test's* connections,
//! while the service keeps running for every other test on the machine.
//!
//! While cut, every relayed connection is shut down in both directions and
//! new connections are accepted and closed at once: to a client that is a
//! service going away and refusing to talk until it is back. Restored, the
//! proxy relays new connections again; the cut ones stay closed, so the
//! client under test has to reconnect by itself, which is what the fault
//! tests prove.
//!
//! Held ([`Proxy::hold_replies`]), the proxy keeps every connection open
//! and keeps relaying what the client sends, but stops passing on what the
//! service answers until released: a service that takes requests and goes
//! quiet (RabbitMQ holding confirms back, say), which a cut cannot show.
//!
//! Threads: one acceptor, and two pumps (one per direction) per relayed
//! connection; all are joined when the proxy is dropped.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How long the proxy waits for the service to accept a connection it
/// relays; the service is local, so anything longer means it is down.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One relayed connection: the client's socket and the service's, and the
/// pump copying each way.
struct Link {
    sockets: [TcpStream; 2],
    pumps: [JoinHandle<()>; 2],
}

impl Link {
    fn finished(&self) -> bool {
        self.pumps.iter().all(JoinHandle::is_finished)
    }

    fn shut_down(&self) {
        for socket in &self.sockets {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

#[derive(Default)]
struct State {
    cut: bool,
    links: Vec<Link>,
    /// Connections relayed since the start (cut or not since).
    relayed: u64,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
    /// While set, the service's replies wait in the proxy.
    holding: AtomicBool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A pump that panicked leaves the links usable: shut them down anyway.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A cuttable TCP proxy on `127.0.0.1:0` in front of one service.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on a free local port and relays each connection to `upstream`.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free local port");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let acceptor = {
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("proxy-{}", upstream.port()))
                .spawn(move || accept(listener, upstream, &shared))
                .unwrap()
        };
        Proxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Where clients connect instead of the service.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's port, for a config's `port` field.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Shuts every relayed connection down and refuses new ones.
    pub fn cut(&self) {
        let mut state = self.shared.state();
        state.cut = true;
        for link in &state.links {
            link.shut_down();
        }
    }

    /// Relays new connections again.
    pub fn restore(&self) {
        self.shared.state().cut = false;
    }

    /// Stops passing the service's replies on (connections stay open; what
    /// clients send still reaches the service).
    pub fn hold_replies(&self) {
        self.shared.holding.store(true, Ordering::SeqCst);
    }

    /// Passes the held replies on, and every later one.
    pub fn release_replies(&self) {
        self.shared.holding.store(false, Ordering::SeqCst);
    }

    /// Connections relayed to the service so far: a test checks it to know
    /// the client under test really goes through this proxy.
    pub fn relayed(&self) -> u64 {
        self.shared.state().relayed
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut();
        // Wakes the acceptor out of `accept` so it sees `stop`.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let links = std::mem::take(&mut self.shared.state().links);
        for link in links {
            for pump in link.pumps {
                let _ = pump.join();
            }
        }
    }
}

/// The acceptor thread: relays each new connection unless cut.
fn accept(listener: TcpListener, upstream: SocketAddr, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        if shared.state().cut {
            continue; // dropped: accepted and closed at once
        }
        let Ok(server) = TcpStream::connect_timeout(&upstream, UPSTREAM_CONNECT_TIMEOUT) else {
            continue;
        };
        let mut state = shared.state();
        if state.cut {
            continue; // cut while connecting: this one is cut too
        }
        state.links.retain(|link| !link.finished());
        match relay(client, server, shared) {
            Ok(link) => {
                state.links.push(link);
                state.relayed += 1;
            }
            Err(e) => eprintln!("proxy to {upstream}: {e}"),
        }
    }
}

/// Starts the two pumps of a connection.
fn relay(client: TcpStream, server: TcpStream, shared: &Arc<Shared>) -> io::Result<Link> {
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let sockets = [client.try_clone()?, server.try_clone()?];
    let up = pump("proxy-up", client.try_clone()?, server.try_clone()?, None)?;
    let down = pump("proxy-down", server, client, Some(shared.clone()))?;
    Ok(Link {
        sockets,
        pumps: [up, down],
    })
}

/// Copies `from` to `to` until either side ends, then ends both: a half
/// closed connection is no use to AMQP, Redis or PostgreSQL. With `hold`,
/// what was read waits while the proxy holds replies.
fn pump(
    name: &str,
    mut from: TcpStream,
    mut to: TcpStream,
    hold: Option<Arc<Shared>>,
) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let mut buf = vec![0; 64 * 1024];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if let Some(shared) = &hold {
                    while shared.holding.load(Ordering::SeqCst)
                        && !shared.stop.load(Ordering::SeqCst)
                    {
                        thread::sleep(Duration::from_millis(5));
                    }
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo service on a local port.
    fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                thread::spawn(move || {
                    let mut reader = stream.try_clone().unwrap();
                    let _ = io::copy(&mut reader, &mut stream);
                });
            }
        });
        addr
    }

    fn round_trip(stream: &mut TcpStream) -> io::Result<[u8; 4]> {
        stream.write_all(b"ping")?;
        let mut reply = [0; 4];
        stream.read_exact(&mut reply)?;
        Ok(reply)
    }

    fn connect(proxy: &Proxy) -> TcpStream {
        let stream = TcpStream::connect(proxy.addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
    }

    /// Relays, cuts open and new connections, and relays again once restored.
    #[test]
    fn cut_ends_connections_until_restored() {
        let proxy = Proxy::start(echo());
        let mut open = connect(&proxy);
        assert_eq!(&round_trip(&mut open).unwrap(), b"ping");
        assert_eq!(proxy.relayed(), 1);

        proxy.cut();
        assert!(round_trip(&mut open).is_err(), "the open connection ends");
        assert!(round_trip(&mut connect(&proxy)).is_err(), "new ones too");

        proxy.restore();
        assert_eq!(&round_trip(&mut connect(&proxy)).unwrap(), b"ping");
        assert_eq!(proxy.relayed(), 2);
    }

    /// Held, requests still go through but replies wait (the connection
    /// stays open); released, the held reply arrives intact.
    #[test]
    fn held_replies_wait_until_released() {
        let proxy = Proxy::start(echo());
        let mut open = connect(&proxy);
        assert_eq!(&round_trip(&mut open).unwrap(), b"ping");

        proxy.hold_replies();
        open.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        open.write_all(b"held").unwrap();
        let mut reply = [0; 4];
        let err = open.read_exact(&mut reply).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "no reply while held: {err}"
        );

        proxy.release_replies();
        open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        open.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"held");
        assert_eq!(&round_trip(&mut open).unwrap(), b"ping");
    }
}

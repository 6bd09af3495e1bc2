//! A TCP proxy in front of a shared service that a test can cut and
//! restore: an outage of *this test's* connections to RabbitMQ or Redis,
//! without stopping the service other tests (and other people) are using.
//! While cut, every open connection is shut down and new ones are accepted
//! and closed at once (what a restarting service looks like to a client).

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

#[derive(Default)]
struct State {
    cut: bool,
    sockets: Vec<TcpStream>,
    pumps: Vec<JoinHandle<()>>,
}

pub struct Proxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        let acceptor = thread::Builder::new()
            .name("test-proxy".to_string())
            .spawn(move || {
                for client in listener.incoming() {
                    if st.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    if s.lock().unwrap().cut {
                        drop(client);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(upstream) else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let mut state = s.lock().unwrap();
                    state.sockets.push(client.try_clone().unwrap());
                    state.sockets.push(server.try_clone().unwrap());
                    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                    state
                        .pumps
                        .push(thread::spawn(move || pump(client, server)));
                    state.pumps.push(thread::spawn(move || pump(s2, c2)));
                }
            })
            .unwrap();
        Proxy {
            addr,
            state,
            stop,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Shuts every proxied connection down and refuses new ones.
    pub fn cut(&self) {
        let mut state = self.state.lock().unwrap();
        state.cut = true;
        for socket in state.sockets.drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.state.lock().unwrap().cut = false;
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let pumps: Vec<_> = self.state.lock().unwrap().pumps.drain(..).collect();
        for p in pumps {
            let _ = p.join();
        }
    }
}

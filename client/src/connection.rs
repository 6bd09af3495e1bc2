//! One blocking WebSocket connection to one room: TCP connect with a
//! timeout, TCP_NODELAY, the handshake, then raw writes of pre-encoded
//! frames (one syscall per flush, however many frames) and tungstenite
//! reads, blocking or not per call.
//!
//! Reads block at most one `tick` (SO_RCVTIMEO), so a thread blocked on a
//! silent server still sees Ctrl-C and its deadlines. SO_RCVTIMEO counts
//! in scheduler ticks (4 ms at HZ=250: a 1 ms timeout returns after ~8),
//! far too coarse for an open loop's send times, so a thread that must
//! wake at a message's due time waits on a [`ReadyWait`] instead (epoll,
//! millisecond precision, woken at once by input). A "drain" read
//! passes MSG_DONTWAIT instead, to take what already arrived without
//! blocking: that is how a pipelined connection collects several acks per
//! wake-up, and how a held idle connection is read on a readiness event.
//! A connection that cannot be opened says why in a [`ConnectError`].
//! How to open one (timeouts, read buffer, a source address to bind) is a
//! [`Dial`].

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use crate::config::Endpoint;
use crate::error::{describe, ConnectError};

/// The socket under tungstenite: blocking TCP whose reads can be made
/// non-blocking per call.
pub struct Stream {
    tcp: TcpStream,
    dont_wait: bool,
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.dont_wait {
            return self.tcp.read(buf);
        }
        // One recv(2) with MSG_DONTWAIT, the socket staying blocking. No safe
        // call does this: socket2's `recv_with_flags` wants a
        // `[MaybeUninit<u8>]` (the same cast, unsafe), and toggling
        // O_NONBLOCK would cost two more syscalls per pipelined turn.
        // SAFETY: `buf` is a valid, writable region of `buf.len()` bytes and
        // the descriptor stays open for the duration of the call.
        let n = unsafe {
            libc::recv(
                self.tcp.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// What a read produced.
pub enum Read1 {
    /// A text frame.
    Text(tungstenite::Utf8Bytes),
    /// Nothing arrived (tick elapsed, or nothing buffered when draining).
    Nothing,
    /// The connection is gone; the text says why.
    Lost(String),
}

pub struct Connection {
    ws: WebSocket<Stream>,
    /// Frames written since the last flush.
    out: Vec<u8>,
    /// The longest a blocking read waits, and the SO_RCVTIMEO set now
    /// (changed only when a read asks for another).
    tick: Duration,
    read_timeout: Duration,
}

/// How a connection is opened.
#[derive(Clone, Copy, Debug)]
pub struct Dial {
    /// TCP connect plus the WebSocket handshake.
    pub connect_timeout: Duration,
    /// The longest a blocking read waits (Ctrl-C and deadlines are seen
    /// at least this often).
    pub tick: Duration,
    /// Messages in flight at once: sizes the output buffer.
    pub window: usize,
    /// Bytes a read asks for; tungstenite allocates this per connection.
    pub read_buffer: usize,
    /// Bind to this local address (the OS picks the port) before
    /// connecting; only server addresses of its family are tried.
    pub source: Option<IpAddr>,
}

impl Dial {
    /// A sender's connection: [`READ_BUFFER`], no source address.
    pub fn sender(connect_timeout: Duration, tick: Duration, window: usize) -> Dial {
        Dial {
            connect_timeout,
            tick,
            window,
            read_buffer: READ_BUFFER,
            source: None,
        }
    }
}

/// Frames the server sends are small (an ack ~200 B, a broadcast < 1 KiB
/// plus a 500-character text): 64 KiB bounds a hostile server without
/// ever refusing a real frame.
const MAX_SERVER_MESSAGE: usize = 64 * 1024;
/// Each read syscall asks for up to this much: ~30 acks or broadcasts per
/// wake-up. tungstenite zero-fills this much before every read, so bigger
/// costs a visible memset per message at window 1 (seen in perf).
pub const READ_BUFFER: usize = 8 * 1024;
/// The read buffer of a held idle connection: it only ever reads a
/// broadcast now and then (tungstenite reads a longer frame in several
/// chunks), and 8 KiB each would be 800 MB for 100K connections.
pub const IDLE_READ_BUFFER: usize = 1024;

impl Connection {
    /// Connects to `room` on `endpoint`: TCP (first address that answers),
    /// TCP_NODELAY (frames must not wait for Nagle), handshake.
    /// `since`: resume the room after this position (the last broadcast's
    /// `position` this thread saw before its connection dropped), so the
    /// server replays what was said meanwhile.
    pub fn open(
        endpoint: &Endpoint,
        room: u32,
        since: Option<&str>,
        dial: &Dial,
    ) -> Result<Connection, ConnectError> {
        let Dial {
            connect_timeout,
            tick,
            window,
            ..
        } = *dial;
        let deadline = Instant::now() + connect_timeout;
        let authority = &endpoint.authority;
        let addrs: Vec<SocketAddr> = authority
            .to_socket_addrs()
            .map_err(|source| ConnectError::Resolve {
                authority: authority.clone(),
                source,
            })?
            .collect();
        let mut last = ConnectError::NoAddress {
            authority: authority.clone(),
        };
        let mut tcp = None;
        for addr in addrs {
            if dial
                .source
                .is_some_and(|src| src.is_ipv4() != addr.is_ipv4())
            {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                last = ConnectError::Connect {
                    addr,
                    source: io::ErrorKind::TimedOut.into(),
                };
                break;
            }
            match connect_from(dial.source, addr, left) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let tcp = tcp.ok_or(last)?;
        tcp.set_nodelay(true).map_err(ConnectError::Socket)?;
        // The handshake may take longer than a tick; the loop below
        // retries until the connect deadline.
        tcp.set_read_timeout(Some(tick))
            .map_err(ConnectError::Socket)?;
        tcp.set_write_timeout(Some(connect_timeout))
            .map_err(ConnectError::Socket)?;
        let config = WebSocketConfig::default()
            .read_buffer_size(dial.read_buffer)
            .max_message_size(Some(MAX_SERVER_MESSAGE))
            .max_frame_size(Some(MAX_SERVER_MESSAGE));
        let mut url = endpoint.room_url(room);
        if let Some(position) = since {
            url.push_str("?since=");
            url.push_str(position);
        }
        let mut attempt = tungstenite::client::client_with_config(
            url.as_str(),
            Stream {
                tcp,
                dont_wait: false,
            },
            Some(config),
        );
        let ws = loop {
            match attempt {
                Ok((ws, _response)) => break ws,
                Err(HandshakeError::Interrupted(mid)) => {
                    if Instant::now() >= deadline {
                        return Err(ConnectError::HandshakeTimeout { url });
                    }
                    attempt = mid.handshake();
                }
                Err(HandshakeError::Failure(source)) => {
                    return Err(ConnectError::Handshake { url, source })
                }
            }
        };
        Ok(Connection {
            ws,
            out: Vec::with_capacity(window.clamp(1, 64) * 256),
            tick,
            read_timeout: tick,
        })
    }

    /// Reads one frame, blocking no later than `until` (and no longer than
    /// a tick; to SO_RCVTIMEO's precision, see the module doc); past
    /// `until`, only what already arrived.
    pub fn read_until(&mut self, until: Instant) -> Read1 {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return self.read(false);
        }
        self.read_blocking(left.min(self.tick))
    }

    /// One frame: what already arrived, else the first to arrive before
    /// `until` — waited for on `ready` (to the millisecond) when given,
    /// else by [`Self::read_until`]. `Nothing` once `until` passes.
    pub fn read_by(&mut self, ready: Option<&mut ReadyWait>, until: Instant) -> Read1 {
        match self.read(false) {
            Read1::Nothing => match ready {
                Some(ready) => {
                    ready.wait(until);
                    self.read(false)
                }
                None => self.read_until(until),
            },
            other => other,
        }
    }

    /// A blocking read bounded by `timeout` (SO_RCVTIMEO, set only when it
    /// changes).
    fn read_blocking(&mut self, timeout: Duration) -> Read1 {
        if timeout != self.read_timeout {
            if let Err(e) = self.ws.get_ref().tcp.set_read_timeout(Some(timeout)) {
                return Read1::Lost(format!("cannot set the read timeout: {e}"));
            }
            self.read_timeout = timeout;
        }
        self.read_frame(true)
    }

    /// The local address the connection was made from.
    pub fn local_ip(&self) -> Option<IpAddr> {
        self.ws.get_ref().tcp.local_addr().ok().map(|a| a.ip())
    }

    /// The socket's descriptor, for a readiness poll (it stays owned here).
    pub fn raw_fd(&self) -> RawFd {
        self.ws.get_ref().tcp.as_raw_fd()
    }

    /// The CPU that last processed this socket's incoming packets
    /// (SO_INCOMING_CPU); on loopback, the CPU of the server thread that
    /// writes to it. `None` if unknown.
    pub fn incoming_cpu(&self) -> Option<usize> {
        #[cfg(target_os = "linux")]
        {
            // The kernel reports -1 (here usize::MAX) until a packet arrived.
            socket2::SockRef::from(&self.ws.get_ref().tcp)
                .cpu_affinity()
                .ok()
                .filter(|&cpu| cpu <= i32::MAX as usize)
        }
        #[cfg(not(target_os = "linux"))]
        None
    }

    /// Is the server on this machine (a loopback address)?
    pub fn peer_is_loopback(&self) -> bool {
        self.ws
            .get_ref()
            .tcp
            .peer_addr()
            .is_ok_and(|a| a.ip().is_loopback())
    }

    /// The output buffer frames are encoded into.
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Writes every buffered frame: one syscall unless the socket buffer is
    /// full (then the write timeout bounds the wait).
    pub fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let result = self.ws.get_mut().tcp.write_all(&self.out);
        self.out.clear();
        result
    }

    /// Reads one frame. `wait`: block up to a tick; otherwise take only what
    /// has already arrived.
    pub fn read(&mut self, wait: bool) -> Read1 {
        if wait {
            return self.read_blocking(self.tick);
        }
        self.read_frame(false)
    }

    fn read_frame(&mut self, wait: bool) -> Read1 {
        self.ws.get_mut().dont_wait = !wait;
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => return Read1::Text(t),
                // tungstenite queues the pong itself; binary frames carry
                // nothing in this protocol.
                Ok(
                    Message::Ping(_) | Message::Pong(_) | Message::Binary(_) | Message::Frame(_),
                ) => continue,
                Ok(Message::Close(frame)) => {
                    return Read1::Lost(match frame {
                        Some(f) => format!(
                            "server closed the connection ({} {})",
                            u16::from(f.code),
                            f.reason
                        ),
                        None => "server closed the connection".into(),
                    })
                }
                Err(tungstenite::Error::Io(e)) if nothing_yet(&e) => return Read1::Nothing,
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {
                    continue
                }
                Err(e) => return Read1::Lost(describe(&e)),
            }
        }
    }

    /// Closes politely (close frame, wait briefly for the server's), then drops.
    pub fn close(mut self, patience: Duration) {
        let _ = self.flush();
        if self.ws.close(None).is_err() {
            return;
        }
        let _ = self.ws.flush();
        let deadline = Instant::now() + patience;
        self.ws.get_mut().dont_wait = false;
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e)) if nothing_yet(&e) => continue,
                Err(_) => return,
            }
        }
    }
}

/// Waits for a connection's input or a deadline, whichever comes first,
/// to the millisecond (epoll), where SO_RCVTIMEO would overshoot by up to
/// two scheduler ticks. One per thread, attached to each connection the
/// thread opens. Edge-triggered: it sees only input that arrives after
/// the last drain, so drain (`read(false)` until `Nothing`) before waiting.
pub struct ReadyWait {
    poll: mio::Poll,
    events: mio::Events,
}

impl ReadyWait {
    const TOKEN: mio::Token = mio::Token(0);

    pub fn new() -> io::Result<ReadyWait> {
        Ok(ReadyWait {
            poll: mio::Poll::new()?,
            events: mio::Events::with_capacity(4),
        })
    }

    /// Watches `conn` (the thread's new connection; a closed one's
    /// registration went with its descriptor).
    pub fn attach(&self, conn: &Connection) -> io::Result<()> {
        let fd = conn.raw_fd();
        let mut source = mio::unix::SourceFd(&fd);
        let registry = self.poll.registry();
        match registry.register(&mut source, Self::TOKEN, mio::Interest::READABLE) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                registry.reregister(&mut source, Self::TOKEN, mio::Interest::READABLE)
            }
            other => other,
        }
    }

    /// Returns when input arrives on the attached connection or at `until`
    /// (rounded up to the millisecond), whichever is first; at once if
    /// `until` has passed.
    pub fn wait(&mut self, until: Instant) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        // An interrupted or failed wait returns early: callers loop.
        let _ = self.poll.poll(&mut self.events, Some(left));
    }
}

/// TCP to `addr` within `timeout`, from `source` (port 0: the OS picks
/// one) when given.
fn connect_from(
    source: Option<IpAddr>,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let Some(source) = source else {
        return TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| ConnectError::Connect { addr, source: e });
    };
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(ConnectError::Socket)?;
    socket
        .bind(&SockAddr::from(SocketAddr::new(source, 0)))
        .map_err(|error| ConnectError::Bind {
            addr: source,
            error,
        })?;
    socket
        .connect_timeout(&SockAddr::from(addr), timeout)
        .map_err(|e| ConnectError::Connect { addr, source: e })?;
    Ok(socket.into())
}

/// A read that found nothing: WouldBlock from a drain (MSG_DONTWAIT), or
/// the tick's SO_RCVTIMEO running out (which Linux also reports as
/// WouldBlock; TimedOut elsewhere).
fn nothing_yet(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

//! A worker: one thread pinned to one core, running its own mio event loop
//! over its own `SO_REUSEPORT` listener and its own connections.
//!
//! Per event the worker drains the socket until `WouldBlock` (mio is
//! edge-triggered), handles every frame, and queues replies; queued output is
//! flushed once per loop turn for every connection that got some, so a burst
//! of acks or broadcasts costs one `write` per connection, not one per frame.
//! Cross-thread input (broadcasts, publish results, shutdown) arrives through
//! the worker's [`Inbox`] and its `mio::Waker`. Nothing here blocks.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatflow_protocol::frame::{ack_json, error_json};
use chatflow_protocol::time::now_ms;
use chatflow_protocol::{
    Ack, ClientMessage, Envelope, ErrorCode, ErrorFrame, IdGenerator, ServerTime,
};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, Utf8Bytes, WebSocket};

use crate::broker::{Broker, Outcome, Ticket};
use crate::connection::{Connection, Phase, Sent, Then};
use crate::fanout::{Inbox, WorkerEvent};
use crate::http::{self, Head, Route};
use crate::rooms::RoomIndex;
use crate::socket::{Socket, Violation};
use crate::stats::{Shared, WorkerStats};

pub const LISTENER: Token = Token(usize::MAX - 1);
pub const WAKER: Token = Token(usize::MAX - 2);

/// Frames handled from one connection before the worker turns to others;
/// the rest wait for the next loop turn, so one flooding client cannot
/// starve its neighbours.
const FRAMES_PER_TURN: usize = 256;
/// How often handshake deadlines and shutdown progress are checked.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// An ack waiting for the broker's word.
struct PendingAck {
    key: usize,
    connection_id: u64,
    /// The ack frame, ready to send on success.
    ack: String,
    client_message_id: Option<String>,
}

pub struct Worker {
    index: usize,
    poll: Poll,
    listener: Option<TcpListener>,
    inbox: Inbox,
    conns: Slab<Connection>,
    rooms: RoomIndex,
    ctx: Context,
}

/// Everything a connection handler needs besides the connection itself;
/// split from `Worker` so both can be borrowed at once.
struct Context {
    index: usize,
    shared: Arc<Shared>,
    broker: Arc<dyn Broker>,
    ws_config: WebSocketConfig,
    ids: IdGenerator,
    next_connection_id: u64,
    next_ticket: u64,
    pending: HashMap<u64, PendingAck>,
    /// Connections with queued output, flushed at the end of the turn.
    dirty: Vec<usize>,
    /// Connections that stopped reading at their turn's budget, or whose
    /// paused input may be read again: read next turn without an event.
    resume: Vec<usize>,
    /// Connections whose output passed its bound: closed as slow readers
    /// as soon as the caller holding them lets go.
    slow: Vec<usize>,
    /// Scratch space for request heads.
    head_buf: Vec<u8>,
    shutdown_deadline: Option<Instant>,
}

impl Context {
    fn stats(&self) -> &WorkerStats {
        &self.shared.workers[self.index]
    }
}

impl Worker {
    /// Builds a worker on the calling thread (already pinned): its Poll,
    /// listener registration and per-thread state.
    pub fn new(
        index: usize,
        poll: Poll,
        mut listener: TcpListener,
        inbox: Inbox,
        shared: Arc<Shared>,
        broker: Arc<dyn Broker>,
    ) -> io::Result<Self> {
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let config = &shared.config;
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(config.read_buffer_size)
            // Replies are buffered until the end-of-turn flush; past this
            // much tungstenite writes early. (It must stay below the bound.)
            .write_buffer_size((16 * 1024).min(config.max_pending_output / 2))
            .max_write_buffer_size(config.max_pending_output)
            .max_message_size(Some(config.max_message_size))
            .max_frame_size(Some(config.max_message_size));
        let rooms = RoomIndex::new(config.rooms().count());
        let head_buf = vec![0; config.max_request_head];
        Ok(Worker {
            index,
            poll,
            listener: Some(listener),
            inbox,
            conns: Slab::with_capacity(1024),
            rooms,
            ctx: Context {
                index,
                shared,
                broker,
                ws_config,
                ids: IdGenerator::new(),
                next_connection_id: 0,
                next_ticket: 0,
                pending: HashMap::new(),
                dirty: Vec::new(),
                resume: Vec::new(),
                slow: Vec::new(),
                head_buf,
                shutdown_deadline: None,
            },
        })
    }

    /// Runs until shutdown completes. Only a failing Poll ends it early.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut last_sweep = Instant::now();
        loop {
            let timeout = if self.ctx.resume.is_empty() {
                Some(SWEEP_INTERVAL)
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut woken = false;
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => woken = true,
                    // A hang-up or error is handled by the read that reports it.
                    Token(key) => self.ready(
                        key,
                        event.is_readable() || event.is_read_closed() || event.is_error(),
                        event.is_writable(),
                    ),
                }
            }
            if woken {
                self.drain_inbox();
            }
            for key in std::mem::take(&mut self.ctx.resume) {
                self.ready(key, true, false);
            }
            self.flush_dirty();
            if last_sweep.elapsed() >= SWEEP_INTERVAL {
                last_sweep = Instant::now();
                self.sweep();
            }
            if let Some(deadline) = self.ctx.shutdown_deadline {
                if self.conns.is_empty() || Instant::now() >= deadline {
                    break;
                }
            }
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.remove(key);
        }
        Ok(())
    }

    fn accept(&mut self) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, _peer)) => self.admit(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors or memory: the pending connection
                    // stays queued; the next accept event or turn retries.
                    eprintln!("worker-{}: accept failed: {e}", self.index);
                    return;
                }
            }
        }
    }

    fn admit(&mut self, mut stream: TcpStream) {
        // Small frames must not wait for Nagle: acks are latency.
        let _ = stream.set_nodelay(true);
        if let Some(size) = self.ctx.shared.config.socket_send_buffer {
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(size);
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if self
            .poll
            .registry()
            .register(&mut stream, Token(key), Interest::READABLE)
            .is_err()
        {
            return;
        }
        self.ctx.next_connection_id += 1;
        entry.insert(Connection::new(stream, self.ctx.next_connection_id));
        WorkerStats::bump(&self.ctx.stats().tcp_accepted);
    }

    /// Handles readiness of connection `key` in whatever phase it is.
    fn ready(&mut self, key: usize, readable: bool, writable: bool) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if readable {
            conn.readable();
        }
        match &conn.phase {
            Phase::Routing(_) if readable => self.route(key),
            Phase::Responding { .. } => self.respond(key),
            Phase::Lingering(_) if readable => self.linger(key),
            Phase::Open { .. } => {
                if writable {
                    conn.blocked_on_write = false;
                    mark_dirty(&mut self.ctx.dirty, key, conn);
                }
                if readable {
                    self.read_frames(key);
                }
            }
            _ => {}
        }
    }

    /// Reads the request head without consuming it and decides its fate.
    fn route(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let Phase::Routing(stream) = &mut conn.phase else {
            return;
        };
        let buf = &mut self.ctx.head_buf;
        let n = match stream.peek(buf) {
            Ok(0) => return self.remove(key),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => return self.remove(key),
        };
        let shared = &self.ctx.shared;
        let (len, route) = match http::route(&buf[..n], n == buf.len(), shared.config.rooms()) {
            Head::Partial => return,
            Head::Complete { len, route } => (len, route),
        };
        let route = match route {
            Route::Chat { .. } if shared.shutting_down.load(Ordering::Relaxed) => {
                Route::Refuse(http::HttpError {
                    status: 503,
                    message: "server is shutting down".to_string(),
                    header: None,
                })
            }
            Route::Chat { .. } if !shared.try_open_connection() => {
                WorkerStats::bump(&self.ctx.stats().refused_over_capacity);
                Route::Refuse(http::over_capacity())
            }
            route => route,
        };
        let (response, then) = match route {
            Route::Chat { room, accept } => {
                // Holds a slot from here; released in `remove`.
                conn.counted = true;
                (http::switching_protocols(&accept), Then::Open { room })
            }
            Route::Health => {
                let broker = self.ctx.broker.health();
                let health = shared.health(&broker, self.ctx.broker.kind().as_str());
                let body = serde_json::to_string(&health).unwrap_or_default();
                WorkerStats::bump(&self.ctx.stats().http_requests);
                (
                    http::response(200, "application/json", &body, None),
                    Then::Close,
                )
            }
            Route::Refuse(error) => {
                WorkerStats::bump(&self.ctx.stats().http_requests);
                (http::error_response(&error), Then::Close)
            }
        };
        // Consume the head we answer: an upgrade's frames start after it, and
        // unread input would make a close reset the socket under an answer.
        let mut sink = [0u8; 1024];
        let mut left = len;
        while left > 0 {
            match stream.read(&mut sink[..left.min(1024)]) {
                Ok(0) | Err(_) => break,
                Ok(m) => left -= m,
            }
        }
        let Phase::Routing(stream) = std::mem::replace(&mut conn.phase, Phase::Moving) else {
            unreachable!("matched above")
        };
        conn.phase = Phase::Responding {
            stream,
            response,
            written: 0,
            then,
        };
        self.respond(key);
    }

    /// Writes the rest of an HTTP response, then lingers (an answer) or
    /// opens the WebSocket (a 101).
    fn respond(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let Phase::Responding {
            stream,
            response,
            written,
            then,
        } = &mut conn.phase
        else {
            return;
        };
        while *written < response.len() {
            match stream.write(&response[*written..]) {
                Ok(0) => return self.remove(key),
                Ok(n) => *written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return self.update_interest(key)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.remove(key),
            }
        }
        let then = *then;
        let Phase::Responding { stream, .. } = std::mem::replace(&mut conn.phase, Phase::Moving)
        else {
            unreachable!("matched above")
        };
        match then {
            Then::Close => {
                let _ = stream.shutdown(std::net::Shutdown::Write);
                conn.phase = Phase::Lingering(stream);
                conn.accepted_at = Instant::now();
                self.update_interest(key);
                self.linger(key);
            }
            Then::Open { room } => self.open(key, stream, room),
        }
    }

    /// The 101 is out: the connection is a WebSocket member of `room`.
    fn open(&mut self, key: usize, stream: TcpStream, room: u32) {
        let config = &self.ctx.shared.config;
        let socket = Socket::new(stream, config.max_fragments);
        let ws = WebSocket::from_raw_socket(socket, Role::Server, Some(self.ctx.ws_config));
        let slot = self.rooms.join(room, key);
        self.conns[key].phase = Phase::Open { ws, room, slot };
        let stats = self.ctx.stats();
        WorkerStats::bump(&stats.connections_accepted);
        stats.open_connections.fetch_add(1, Ordering::Relaxed);
        self.update_interest(key);
        // Frames may have arrived while the 101 was written: the edge that
        // announced them is spent, so read now.
        self.read_frames(key);
    }

    /// Reads and drops input after an answer until the peer closes.
    fn linger(&mut self, key: usize) {
        let Some(Phase::Lingering(stream)) = self.conns.get_mut(key).map(|c| &mut c.phase) else {
            return;
        };
        let buf = &mut self.ctx.head_buf;
        loop {
            match stream.read(buf) {
                Ok(0) => return self.remove(key),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return self.remove(key),
            }
        }
    }

    /// Reads and handles frames until the socket is drained (or the
    /// connection has had its turn).
    fn read_frames(&mut self, key: usize) {
        if self.conns[key].discard_input {
            return self.discard_input(key);
        }
        if let Phase::Open { ws, .. } = &mut self.conns[key].phase {
            ws.get_mut().start_turn();
        }
        for _ in 0..FRAMES_PER_TURN {
            let conn = &mut self.conns[key];
            if conn.blocked_on_write {
                // The peer is not reading what we send: leave its input in
                // the kernel (TCP pushes back on it) until our output is
                // out, so no reply ever has to be dropped.
                conn.input_paused = true;
                return;
            }
            let Phase::Open { ws, room, .. } = &mut conn.phase else {
                return;
            };
            let room = *room;
            match ws.read() {
                Ok(Message::Text(text)) => self.ctx.on_text(key, conn, room, &text),
                Ok(Message::Binary(_)) => {
                    let frame = ErrorFrame::new(
                        ErrorCode::UnsupportedFrame,
                        "binary frames are not supported: send JSON text frames",
                    );
                    let sent = conn.send(Message::text(error_json(&frame)));
                    self.ctx.after_send(key, conn, sent);
                }
                // Pongs and close replies are queued by tungstenite itself.
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_)) => {
                    mark_dirty(&mut self.ctx.dirty, key, conn);
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    if ws.get_ref().budget_spent() {
                        self.ctx.resume.push(key);
                    }
                    return;
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(tungstenite::Error::Io(_))
                    if ws.get_ref().violation() == Some(Violation::TooManyFragments) =>
                {
                    WorkerStats::bump(&self.ctx.stats().protocol_errors);
                    let frame = ErrorFrame::new(
                        ErrorCode::TooLarge,
                        format!(
                            "message split into more than {} frames",
                            self.ctx.shared.config.max_fragments
                        ),
                    );
                    let _ = conn.send(Message::text(error_json(&frame)));
                    return self.fatal_close(key, CloseCode::Size, "too many fragments");
                }
                Err(tungstenite::Error::Capacity(_)) => {
                    // The stream is mid-frame: it cannot continue. Say why,
                    // then close with 1009.
                    let frame = ErrorFrame::new(
                        ErrorCode::TooLarge,
                        format!(
                            "frame larger than {} bytes; no message of this protocol needs that much",
                            self.ctx.shared.config.max_message_size
                        ),
                    );
                    let _ = conn.send(Message::text(error_json(&frame)));
                    return self.fatal_close(key, CloseCode::Size, "message too large");
                }
                Err(tungstenite::Error::Utf8(_)) => {
                    WorkerStats::bump(&self.ctx.stats().protocol_errors);
                    return self.fatal_close(
                        key,
                        CloseCode::Invalid,
                        "text frame is not valid UTF-8",
                    );
                }
                // The peer vanished without a close frame: nothing to answer.
                Err(tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                )) => return self.remove(key),
                Err(tungstenite::Error::Protocol(_)) => {
                    WorkerStats::bump(&self.ctx.stats().protocol_errors);
                    return self.fatal_close(key, CloseCode::Protocol, "WebSocket protocol error");
                }
                Err(tungstenite::Error::WriteBufferFull(_)) => return self.slow_reader(key),
                // Closed cleanly, reset, or any other I/O failure.
                Err(_) => return self.remove(key),
            }
            if !self.ctx.slow.is_empty() {
                return self.close_slow_readers();
            }
            if self.conns.get(key).is_none() {
                return;
            }
        }
        self.ctx.resume.push(key);
    }

    fn drain_inbox(&mut self) {
        let Worker {
            inbox,
            conns,
            rooms,
            ctx,
            ..
        } = self;
        let mut shutdown = false;
        inbox.drain(|event| match event {
            WorkerEvent::Broadcast { room, frame } => ctx.deliver(conns, rooms, room, &frame),
            WorkerEvent::Published { ticket, result } => ctx.published(conns, ticket, result),
            WorkerEvent::Shutdown => shutdown = true,
        });
        self.close_slow_readers();
        if shutdown {
            self.begin_shutdown();
        }
    }

    fn begin_shutdown(&mut self) {
        if self.ctx.shutdown_deadline.is_some() {
            return;
        }
        self.ctx.shutdown_deadline = Some(Instant::now() + self.ctx.shared.config.shutdown_grace);
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if self.conns[key].is_open() {
                self.close_with(key, CloseCode::Away, "server shutting down");
            } else {
                self.remove(key);
            }
        }
    }

    /// Sends a close frame; the connection ends when the peer answers or at
    /// the sweep after its grace period.
    fn close_with(&mut self, key: usize, code: CloseCode, reason: &'static str) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.start_close(code, reason);
        conn.accepted_at = Instant::now();
        mark_dirty(&mut self.ctx.dirty, key, conn);
    }

    /// Closes a connection whose input can no longer be parsed (mid-frame
    /// after an error): the close frame goes out, then our side of the TCP
    /// stream shuts, and input is read and dropped until the peer hangs up
    /// or the grace period ends. Dropping the socket at once would reset it
    /// and could destroy the error and close frames before the peer reads
    /// them.
    fn fatal_close(&mut self, key: usize, code: CloseCode, reason: &'static str) {
        self.close_with(key, code, reason);
        if let Some(conn) = self.conns.get_mut(key) {
            conn.discard_input = true;
        }
        self.discard_input(key);
    }

    /// Reads and drops whatever the peer still sends; ends at its EOF.
    fn discard_input(&mut self, key: usize) {
        let Some(stream) = self.conns.get_mut(key).and_then(|c| c.stream_mut()) else {
            return;
        };
        let buf = &mut self.ctx.head_buf;
        loop {
            match stream.read(buf) {
                Ok(0) => return self.remove(key),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return self.remove(key),
            }
        }
    }

    fn close_slow_readers(&mut self) {
        for key in std::mem::take(&mut self.ctx.slow) {
            self.slow_reader(key);
        }
    }

    /// A reader that lets output pile up past the bound: tell it why
    /// (best effort: its buffer is full) and drop it now.
    fn slow_reader(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        WorkerStats::bump(&self.ctx.stats().slow_reader_disconnects);
        conn.start_close(CloseCode::Policy, "slow reader: too much unread output");
        let _ = conn.flush();
        self.remove(key);
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.ctx.dirty);
        for &key in &dirty {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.dirty = false;
            if conn.flush() {
                if conn.discard_input && !conn.blocked_on_write {
                    // Everything we will ever send is out: say so with FIN.
                    if let Some(stream) = conn.stream_mut() {
                        let _ = stream.shutdown(std::net::Shutdown::Write);
                    }
                }
                if conn.input_paused && !conn.blocked_on_write {
                    conn.input_paused = false;
                    self.ctx.resume.push(key);
                }
                self.update_interest(key);
            } else {
                self.remove(key);
            }
        }
        // Reuse the allocation.
        let mut dirty = dirty;
        dirty.clear();
        if self.ctx.dirty.is_empty() {
            self.ctx.dirty = dirty;
        }
    }

    fn update_interest(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let wanted = conn.interest();
        if wanted == conn.registered {
            return;
        }
        let registry = self.poll.registry();
        let ok = match conn.stream_mut() {
            Some(stream) => registry.reregister(stream, Token(key), wanted).is_ok(),
            None => false,
        };
        if ok {
            conn.registered = wanted;
        } else {
            self.remove(key);
        }
    }

    /// Ends stalled requests, closes that were never answered, and
    /// messages whose frames take too long to arrive.
    fn sweep(&mut self) {
        let shared = self.ctx.shared.clone();
        let config = &shared.config;
        let now = Instant::now();
        let mut stalled_messages = Vec::new();
        let expired: Vec<usize> = self
            .conns
            .iter()
            .filter(|(key, c)| {
                let age = now.saturating_duration_since(c.accepted_at);
                if let Phase::Open { ws, .. } = &c.phase {
                    let since = ws.get_ref().incomplete_since();
                    if !c.closing
                        && since.is_some_and(|t| {
                            now.saturating_duration_since(t) > config.message_timeout
                        })
                    {
                        stalled_messages.push(*key);
                    }
                }
                (!c.is_open() && age > config.handshake_timeout)
                    || (c.closing && age > config.shutdown_grace)
            })
            .map(|(k, _)| k)
            .collect();
        for key in expired {
            if matches!(self.conns[key].phase, Phase::Routing(_)) {
                WorkerStats::bump(&self.ctx.stats().handshake_timeouts);
            }
            self.remove(key);
        }
        for key in stalled_messages {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            WorkerStats::bump(&self.ctx.stats().protocol_errors);
            let frame = ErrorFrame::new(
                ErrorCode::Timeout,
                format!(
                    "a message took more than {} s to arrive",
                    config.message_timeout.as_secs_f64()
                ),
            );
            let _ = conn.send(Message::text(error_json(&frame)));
            self.fatal_close(key, CloseCode::Policy, "message took too long to arrive");
        }
    }

    fn remove(&mut self, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        let mut conn = self.conns.remove(key);
        if let Phase::Open { room, slot, .. } = conn.phase {
            let stats = self.ctx.stats();
            stats.open_connections.fetch_sub(1, Ordering::Relaxed);
            WorkerStats::bump(&stats.connections_closed);
            if let Some(moved) = self.rooms.leave(room, slot) {
                if let Some(Phase::Open {
                    slot: moved_slot, ..
                }) = self.conns.get_mut(moved).map(|c| &mut c.phase)
                {
                    *moved_slot = slot;
                }
            }
        }
        if conn.counted {
            self.ctx.shared.close_connection();
        }
        if let Some(stream) = conn.stream_mut() {
            let _ = self.poll.registry().deregister(stream);
        }
    }
}

fn mark_dirty(dirty: &mut Vec<usize>, key: usize, conn: &mut Connection) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(key);
    }
}

impl Context {
    /// Validates one client message, hands it to the broker, and queues
    /// the ack or error.
    fn on_text(&mut self, key: usize, conn: &mut Connection, room: u32, text: &str) {
        let reply = match ClientMessage::parse(text) {
            Ok(message) => {
                let now = now_ms();
                let id = self.ids.next_id(now);
                let server_time = ServerTime(now);
                let envelope = Envelope::accepted(
                    &message,
                    room,
                    id,
                    server_time,
                    &self.shared.config.server_id,
                );
                self.next_ticket += 1;
                let ticket = Ticket {
                    worker: self.index,
                    id: self.next_ticket,
                };
                let ack = || {
                    ack_json(&Ack::new(
                        id,
                        room,
                        server_time,
                        message.client_message_id.as_deref(),
                        Some(&message.timestamp),
                    ))
                };
                match self.broker.publish(ticket, &envelope) {
                    Outcome::Accepted => {
                        WorkerStats::bump(&self.stats().messages_accepted);
                        ack()
                    }
                    Outcome::Pending => {
                        self.pending.insert(
                            ticket.id,
                            PendingAck {
                                key,
                                connection_id: conn.id,
                                ack: ack(),
                                client_message_id: message
                                    .client_message_id
                                    .as_deref()
                                    .map(str::to_owned),
                            },
                        );
                        return;
                    }
                    Outcome::Refused(reason) => {
                        WorkerStats::bump(&self.stats().messages_unavailable);
                        unavailable(reason, message.client_message_id.as_deref())
                    }
                }
            }
            Err(rejected) => {
                WorkerStats::bump(&self.stats().messages_rejected);
                error_json(&ErrorFrame::rejected(&rejected))
            }
        };
        let sent = conn.send(Message::text(reply));
        self.after_send(key, conn, sent);
    }

    /// Marks the connection for flushing, or for closing if the send failed.
    fn after_send(&mut self, key: usize, conn: &mut Connection, sent: Sent) {
        match sent {
            Sent::Queued => mark_dirty(&mut self.dirty, key, conn),
            // A reply that cannot be queued must not vanish: the connection
            // ends instead, as a slow reader.
            Sent::Full => self.slow.push(key),
            // The flush fails the same way and removes it.
            Sent::Broken => mark_dirty(&mut self.dirty, key, conn),
        }
    }

    /// Queues a room frame to every member of `room` on this worker.
    fn deliver(
        &mut self,
        conns: &mut Slab<Connection>,
        rooms: &RoomIndex,
        room: u32,
        frame: &Utf8Bytes,
    ) {
        let mut sent_count = 0;
        for &key in rooms.members(room) {
            let conn = &mut conns[key];
            if conn.closing {
                continue;
            }
            match conn.send(Message::Text(frame.clone())) {
                Sent::Queued => {
                    sent_count += 1;
                    mark_dirty(&mut self.dirty, key, conn);
                }
                Sent::Full => self.slow.push(key),
                Sent::Broken => mark_dirty(&mut self.dirty, key, conn),
            }
        }
        self.stats()
            .broadcast_frames_sent
            .fetch_add(sent_count, Ordering::Relaxed);
    }

    /// The broker's answer for a message it took as pending.
    fn published(
        &mut self,
        conns: &mut Slab<Connection>,
        ticket: Ticket,
        result: Result<(), String>,
    ) {
        let Some(pending) = self.pending.remove(&ticket.id) else {
            return;
        };
        let stats = self.stats();
        WorkerStats::bump(match result {
            Ok(()) => &stats.messages_accepted,
            Err(_) => &stats.messages_unavailable,
        });
        let Some(conn) = conns
            .get_mut(pending.key)
            .filter(|c| c.id == pending.connection_id)
        else {
            // The client left before the broker answered: nothing to tell.
            return;
        };
        let reply = match result {
            Ok(()) => pending.ack,
            Err(reason) => unavailable(&reason, pending.client_message_id.as_deref()),
        };
        let sent = conn.send(Message::text(reply));
        self.after_send(pending.key, conn, sent);
    }
}

fn unavailable(reason: &str, client_message_id: Option<&str>) -> String {
    let mut frame = ErrorFrame::new(
        ErrorCode::Unavailable,
        format!("message not accepted: {reason}; it was not stored, retry later"),
    );
    frame.client_message_id = client_message_id.map(Into::into);
    error_json(&frame)
}

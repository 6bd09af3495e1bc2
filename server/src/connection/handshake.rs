//! The plain-HTTP phases of a connection: `Routing` (the request head is
//! peeked and routed by [`crate::http`]), `Responding` (our answer or our
//! 101 is written), then `Lingering` after an answer, or `Open` after a 101.

use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::time::Instant;

use chatflow_protocol::Position;
use mio::net::TcpStream;
use tungstenite::protocol::Role;
use tungstenite::WebSocket;

use super::{drop_input, Connection, Context, Next, Phase, Stage};
use crate::http::{self, Head, HttpError, Route};
use crate::socket::Socket;
use crate::stats::WorkerStats;

/// What follows a written HTTP response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Then {
    /// An answer to a plain request: the connection closes.
    Close,
    /// `101 Switching Protocols`: the connection is a WebSocket in `room`,
    /// resuming after `since` if given.
    Open { room: u32, since: Option<Position> },
}

impl Connection {
    /// Reads the request head without consuming it and decides its fate.
    pub(super) fn route(&mut self, key: usize, cx: &mut Context) -> Next {
        let Phase::Routing(stream) = &mut self.phase else {
            return Next::WAIT;
        };
        let buf = &mut cx.scratch;
        let n = match stream.peek(buf) {
            Ok(0) => return Next::Remove,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::WAIT,
            Err(_) => return Next::Remove,
        };
        let shared = &cx.shared;
        let (len, route) = match http::route(&buf[..n], n == buf.len(), shared.config.rooms()) {
            Head::Partial => return Next::WAIT,
            Head::Complete { len, route } => (len, route),
        };
        let route = match route {
            Route::Chat { .. } if shared.is_stopping() => Route::Refuse(HttpError {
                status: 503,
                message: "server is shutting down".to_string(),
                header: None,
            }),
            Route::Chat { .. } if !shared.try_open_connection() => {
                WorkerStats::bump(&cx.stats().refused_over_capacity);
                Route::Refuse(http::over_capacity())
            }
            route => route,
        };
        let (response, then) = match route {
            Route::Chat {
                room,
                accept,
                since,
            } => {
                // Holds a slot from here; released in `release`.
                self.counted = true;
                (
                    http::switching_protocols(&accept),
                    Then::Open { room, since },
                )
            }
            Route::Health => {
                let health = shared.health(&*cx.broker);
                let body = serde_json::to_string(&health).unwrap_or_default();
                WorkerStats::bump(&cx.stats().http_requests);
                (
                    http::response(health.http_status(), "application/json", &body, None),
                    Then::Close,
                )
            }
            Route::Live => {
                WorkerStats::bump(&cx.stats().http_requests);
                let body = shared.livez();
                (
                    http::response(200, "application/json", &body, None),
                    Then::Close,
                )
            }
            Route::Refuse(error) => {
                WorkerStats::bump(&cx.stats().http_requests);
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
        let Phase::Routing(stream) = std::mem::replace(&mut self.phase, Phase::Moving) else {
            unreachable!("matched above")
        };
        self.phase = Phase::Responding {
            stream,
            response,
            written: 0,
            then,
        };
        self.respond(key, cx)
    }

    /// Writes the rest of an HTTP response, then lingers (an answer) or
    /// opens the WebSocket (a 101).
    pub(super) fn respond(&mut self, key: usize, cx: &mut Context) -> Next {
        let Phase::Responding {
            stream,
            response,
            written,
            then,
        } = &mut self.phase
        else {
            return Next::WAIT;
        };
        while *written < response.len() {
            match stream.write(&response[*written..]) {
                Ok(0) => return Next::Remove,
                Ok(n) => *written += n,
                // The worker registers WRITABLE (`interest`) and calls again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::WAIT,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Next::Remove,
            }
        }
        let then = *then;
        let Phase::Responding { stream, .. } = std::mem::replace(&mut self.phase, Phase::Moving)
        else {
            unreachable!("matched above")
        };
        match then {
            Then::Close => {
                let _ = stream.shutdown(std::net::Shutdown::Write);
                self.phase = Phase::Lingering(stream);
                self.since = Instant::now();
                self.linger(cx)
            }
            Then::Open { room, since } => self.open(key, stream, room, since, cx),
        }
    }

    /// The 101 is out: the connection is a WebSocket member of `room`
    /// (from now on it hears the room's broadcasts), and, given `since`,
    /// asks for the room's history after it.
    fn open(
        &mut self,
        key: usize,
        stream: TcpStream,
        room: u32,
        since: Option<Position>,
        cx: &mut Context,
    ) -> Next {
        let config = &cx.shared.config;
        let socket = Socket::new(stream, config.max_fragments, config.max_pending_output);
        let ws = WebSocket::from_raw_socket(socket, Role::Server, Some(cx.ws_config));
        let slot = cx.rooms.join(room, key);
        self.phase = Phase::Open {
            ws,
            room,
            slot,
            stage: Stage::Live,
        };
        let stats = cx.stats();
        WorkerStats::bump(&stats.connections_accepted);
        stats.open_connections.fetch_add(1, Ordering::Relaxed);
        let resumed = match since {
            Some(since) => self.start_replay(key, room, since, cx),
            None => Next::WAIT,
        };
        // Frames may have arrived while the 101 was written: the edge that
        // announced them is spent, so read now.
        resumed.and(self.read_frames(key, cx))
    }

    /// Reads and drops input after an answer until the peer closes.
    pub(super) fn linger(&mut self, cx: &mut Context) -> Next {
        match &mut self.phase {
            Phase::Lingering(stream) => drop_input(stream, &mut cx.scratch),
            _ => Next::WAIT,
        }
    }
}

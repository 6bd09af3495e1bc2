//! One client connection: its socket, its phase, and the bookkeeping the
//! worker needs (room slot, output state). The phase enum owns the socket in
//! whatever wrapper the phase needs, so a connection can never be in two
//! phases or lose its socket between them.

use std::io;
use std::time::Instant;

use mio::net::TcpStream;
use mio::Interest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

use crate::socket::Socket;

/// What follows a written HTTP response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// An answer to a plain request: the connection closes.
    Close,
    /// `101 Switching Protocols`: the connection is a WebSocket in `room`.
    Open { room: u32 },
}

// Nearly every connection is `Open`, so its size is what a connection
// costs anyway; boxing the WebSocket would add an allocation and a pointer
// chase per event and save nothing.
#[allow(clippy::large_enum_variant)]
pub enum Phase {
    /// Waiting for the whole HTTP request head (read with `MSG_PEEK`).
    Routing(TcpStream),
    /// Writing an HTTP response (an answer, or the 101 of an upgrade).
    Responding {
        stream: TcpStream,
        response: Vec<u8>,
        written: usize,
        then: Then,
    },
    /// The answer is out and our side is shut: input is read and dropped
    /// until the peer closes, so closing never resets the connection under
    /// an answer the peer has not read yet.
    Lingering(TcpStream),
    /// A WebSocket in `room`, at `slot` of that room's member list.
    Open {
        ws: WebSocket<Socket>,
        room: u32,
        slot: usize,
    },
    /// Only while the worker moves the socket from one phase to the next.
    Moving,
}

pub struct Connection {
    pub phase: Phase,
    /// Unique within the worker (slab keys are reused): pending publishes
    /// find their connection by key *and* this id.
    pub id: u64,
    pub accepted_at: Instant,
    /// Holds one of the server's `max_connections` slots.
    pub counted: bool,
    /// Output is queued that the socket would not take: wait for WRITABLE.
    pub blocked_on_write: bool,
    /// Interest currently registered with the Poll.
    pub registered: Interest,
    /// Queued in the worker's list of connections to flush.
    pub dirty: bool,
    /// We sent a close frame and wait for the peer's (or the deadline).
    pub closing: bool,
    /// The input stream is unusable (an error mid-frame): read and drop it.
    pub discard_input: bool,
    /// Input is not read while output waits for the peer to read it
    /// (back-pressure); reading resumes when the output is flushed.
    pub input_paused: bool,
}

/// How a write went.
pub enum Sent {
    /// In the connection's output buffer (maybe already on the wire).
    Queued,
    /// The output buffer is at its bound: a slow reader.
    Full,
    /// The connection is gone or broken.
    Broken,
}

impl Connection {
    pub fn new(stream: TcpStream, id: u64) -> Self {
        Connection {
            phase: Phase::Routing(stream),
            id,
            accepted_at: Instant::now(),
            counted: false,
            blocked_on_write: false,
            registered: Interest::READABLE,
            dirty: false,
            closing: false,
            discard_input: false,
            input_paused: false,
        }
    }

    /// The interest this connection's state calls for: always readable (to
    /// see requests, frames and hang-ups), writable only while output waits.
    pub fn interest(&self) -> Interest {
        let wants_write = match &self.phase {
            Phase::Responding { .. } => true,
            _ => self.blocked_on_write,
        };
        if wants_write {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        }
    }

    pub fn stream_mut(&mut self) -> Option<&mut TcpStream> {
        match &mut self.phase {
            Phase::Routing(stream)
            | Phase::Responding { stream, .. }
            | Phase::Lingering(stream) => Some(stream),
            Phase::Open { ws, .. } => Some(ws.get_mut().stream_mut()),
            Phase::Moving => None,
        }
    }

    /// A readiness event arrived: reads may find bytes again.
    pub fn readable(&mut self) {
        if let Phase::Open { ws, .. } = &mut self.phase {
            ws.get_mut().readable();
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open { .. })
    }

    /// Queues a message on an open WebSocket.
    pub fn send(&mut self, message: Message) -> Sent {
        let Phase::Open { ws, .. } = &mut self.phase else {
            return Sent::Broken;
        };
        match ws.write(message) {
            Ok(()) => Sent::Queued,
            // tungstenite queued the frame but the socket is full for now.
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                self.blocked_on_write = true;
                Sent::Queued
            }
            Err(tungstenite::Error::WriteBufferFull(_)) => Sent::Full,
            Err(_) => Sent::Broken,
        }
    }

    /// Writes queued output. `false` means the connection is broken.
    pub fn flush(&mut self) -> bool {
        let Phase::Open { ws, .. } = &mut self.phase else {
            return true;
        };
        match ws.flush() {
            Ok(()) => {
                self.blocked_on_write = false;
                true
            }
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                self.blocked_on_write = true;
                true
            }
            Err(_) => false,
        }
    }

    /// Starts the closing handshake with `code`. The caller flushes.
    pub fn start_close(&mut self, code: CloseCode, reason: &'static str) {
        if let Phase::Open { ws, .. } = &mut self.phase {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            // Fails only if already closing or the buffer is full; either
            // way the deadline sweep ends the connection.
            let _ = ws.close(Some(frame));
        }
        self.closing = true;
    }
}

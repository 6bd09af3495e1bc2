//! One client connection: its socket, its phase, and every step that moves
//! it from one phase to the next. The worker calls a step
//! ([`Connection::ready`] on readiness, [`Connection::flush_output`] at the
//! end of a turn, [`Connection::sweep`] on deadlines, …) and does what the
//! returned [`Next`] says; it never looks at a phase. (The model is rustls'
//! `tlsserver-mio`, whose `OpenConnection::ready` decides and whose server
//! only dispatches.)
//!
//! ```text
//! Routing ──head──▶ Responding ──101──▶ Open: Live ──▶ Closing
//!                        │                 └─────────▶ Failed
//!                        └──answer──▶ Lingering
//! ```
//!
//! The `Phase` enum owns the socket in whatever wrapper the phase needs,
//! so a connection can never be in two phases or lose its socket between
//! them. The mio interest is derived from the state in one place
//! (`Connection::interest`) and registered in one place
//! ([`Connection::sync_interest`]).
//!
//! Files: `handshake` (Routing, Responding, Lingering: the plain-HTTP
//! side), `websocket` (Open: frames, messages, replies, broadcasts,
//! closes), `liveness` (pings, and closing a peer that stopped answering),
//! `replay` (resuming after `?since=`: the room's history, then the seam,
//! then live), `presence` (the users its JOINs made present, presence
//! requests and frames), `context` (the per-worker state every step
//! shares).

mod context;
mod handshake;
mod liveness;
mod presence;
mod replay;
mod websocket;

use std::io::{self, Read};
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use tungstenite::WebSocket;

pub use context::Context;
use handshake::Then;
pub use presence::{deliver_presence, presence_answered};
pub use replay::replayed;
use websocket::Failure;
pub use websocket::{deliver, published};

use crate::socket::Socket;
use crate::stats::WorkerStats;

/// What the worker does with a connection after one of its steps.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Keep it. `flush`: output is queued for the end-of-turn flush (which
    /// then brings its interest up to date). `resume`: read it again next
    /// turn without waiting for an event (its read budget ran out, or its
    /// paused input may flow again).
    Keep { flush: bool, resume: bool },
    /// Its unsent output passed the bound: close it with 1008 as a slow
    /// reader ([`Connection::close_slow_reader`]) and remove it.
    SlowReader,
    /// It is finished: remove it ([`Connection::release`]).
    Remove,
}

impl Next {
    /// Nothing to do until its next event.
    pub const WAIT: Next = Next::Keep {
        flush: false,
        resume: false,
    };
    /// Flush it at the end of the turn.
    pub const FLUSH: Next = Next::Keep {
        flush: true,
        resume: false,
    };

    /// The wishes of two steps in a row: an ending wins, flags add up.
    fn and(self, later: Next) -> Next {
        match (self, later) {
            (
                Next::Keep { flush, resume },
                Next::Keep {
                    flush: flush_later,
                    resume: resume_later,
                },
            ) => Next::Keep {
                flush: flush || flush_later,
                resume: resume || resume_later,
            },
            (Next::Keep { .. }, end) => end,
            (end, _) => end,
        }
    }

    fn ends(self) -> bool {
        !matches!(self, Next::Keep { .. })
    }
}

// Nearly every connection is `Open`, so its size is what a connection
// costs anyway; boxing the WebSocket would add an allocation and a pointer
// chase per event and save nothing.
#[allow(clippy::large_enum_variant)]
enum Phase {
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
        stage: Stage,
    },
    /// Only while a step moves the socket from one phase to the next.
    Moving,
}

/// Where an open WebSocket is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Reading messages and answering them; broadcasts reach it.
    Live,
    /// We sent a close frame and wait for the peer's (or the grace period).
    /// Its input is still read: the peer's close, or messages it sent first.
    Closing,
    /// Its input can no longer be parsed (an error mid-frame): the close
    /// frame goes out, then our side of the TCP stream shuts, and input is
    /// read and dropped until the peer hangs up or the grace period ends.
    /// Dropping the socket at once would reset it and could destroy the
    /// error and close frames before the peer reads them.
    Failed,
}

/// One client connection (see the module docs).
pub struct Connection {
    phase: Phase,
    /// Unique within the worker (slab keys are reused): pending publishes
    /// find their connection by key *and* this id.
    id: u64,
    /// When the clock of the current deadline started: the accept (Routing,
    /// Responding: the handshake timeout), the end of the answer
    /// (Lingering: the handshake timeout again), the start of the peer's
    /// silence as of a sweep, or our ping (Live: the ping interval, then
    /// the pong timeout; see `liveness`), the close frame (Closing,
    /// Failed: the shutdown grace).
    since: Instant,
    /// Live: a ping is out and `since` is when it went.
    pinged: bool,
    /// Holds one of the server's `max_connections` slots.
    counted: bool,
    /// Output is queued that the socket would not take: wait for WRITABLE.
    blocked_on_write: bool,
    /// Input is not read while output waits for the peer to read it
    /// (back-pressure); reading resumes when the output is flushed.
    input_paused: bool,
    /// Interest currently registered with the Poll.
    registered: Interest,
    /// Resuming after `?since=` (and, just after, the seam): boxed, since
    /// few connections ever have one.
    replay: Option<Box<replay::Replay>>,
    /// Its part in presence (users it made present, frames it hears):
    /// boxed, since most connections never join or ask.
    membership: Option<Box<presence::Membership>>,
    /// Owned by the worker: queued in its list of connections to flush.
    pub dirty: bool,
}

impl Connection {
    pub fn new(stream: TcpStream, id: u64) -> Self {
        Connection {
            phase: Phase::Routing(stream),
            id,
            since: Instant::now(),
            pinged: false,
            counted: false,
            blocked_on_write: false,
            input_paused: false,
            registered: Interest::READABLE,
            replay: None,
            membership: None,
            dirty: false,
        }
    }

    /// Handles a readiness event (or a resumed read: `readable` with no
    /// event) in whatever phase the connection is.
    pub fn ready(&mut self, key: usize, readable: bool, writable: bool, cx: &mut Context) -> Next {
        if readable {
            if let Phase::Open { ws, .. } = &mut self.phase {
                ws.get_mut().readable();
            }
        }
        match self.phase {
            Phase::Routing(_) if readable => self.route(key, cx),
            Phase::Responding { .. } => self.respond(key, cx),
            Phase::Lingering(_) if readable => self.linger(cx),
            Phase::Open { .. } => {
                let mut next = Next::WAIT;
                if writable {
                    self.blocked_on_write = false;
                    next = Next::FLUSH;
                }
                if readable {
                    next = next.and(self.read_frames(key, cx));
                }
                next
            }
            _ => Next::WAIT,
        }
    }

    /// The interest this connection's state calls for: always readable (to
    /// see requests, frames and hang-ups), writable only while output waits.
    fn interest(&self) -> Interest {
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

    /// Registers the interest the state calls for, if it changed (no
    /// syscall otherwise). `false`: registering failed; remove it.
    pub fn sync_interest(&mut self, registry: &Registry, key: usize) -> bool {
        let wanted = self.interest();
        if wanted == self.registered {
            return true;
        }
        let ok = match self.stream_mut() {
            Some(stream) => registry.reregister(stream, Token(key), wanted).is_ok(),
            None => false,
        };
        if ok {
            self.registered = wanted;
        }
        ok
    }

    /// The deadlines, checked every sweep interval: requests that stall,
    /// closes never answered, messages whose frames take too long, and
    /// peers that stopped answering pings.
    pub fn sweep(&mut self, now: Instant, cx: &mut Context) -> Next {
        let config = &cx.shared.config;
        let (message_timeout, handshake_timeout, grace) = (
            config.message_timeout,
            config.handshake_timeout,
            config.shutdown_grace,
        );
        let age = now.saturating_duration_since(self.since);
        match &self.phase {
            Phase::Open {
                ws,
                stage: Stage::Live,
                ..
            } => {
                let started = ws.get_ref().incomplete_since();
                if started.is_some_and(|t| now.saturating_duration_since(t) > message_timeout) {
                    return self.fail(Failure::Stalled, cx);
                }
                self.keep_alive(now, cx)
            }
            Phase::Open { .. } if age > grace => Next::Remove,
            Phase::Open { .. } => Next::WAIT,
            Phase::Routing(_) if age > handshake_timeout => {
                WorkerStats::bump(&cx.stats().handshake_timeouts);
                Next::Remove
            }
            _ if age > handshake_timeout => Next::Remove,
            _ => Next::WAIT,
        }
    }

    /// The server is stopping: a live WebSocket gets a 1001 close and the
    /// grace period to answer it. Anything else goes on: a WebSocket
    /// already closing keeps its deadline, and plain HTTP (a balancer's
    /// health check, a refused upgrade) is answered as usual until the
    /// worker exits. Asking again is harmless.
    pub fn shut_down(&mut self) -> Next {
        if matches!(
            self.phase,
            Phase::Open {
                stage: Stage::Live,
                ..
            }
        ) {
            self.start_close(
                tungstenite::protocol::frame::coding::CloseCode::Away,
                "server shutting down",
            );
            Next::FLUSH
        } else {
            Next::WAIT
        }
    }

    /// Gives back what the connection holds as the worker removes it: its
    /// users' presence, its place in its room, the open count, its
    /// connection slot and its Poll registration. Returns the member moved into its room place, and
    /// that place, which the mover must record ([`Connection::set_slot`]).
    pub fn release(&mut self, cx: &mut Context, registry: &Registry) -> Option<(usize, usize)> {
        let mut moved = None;
        self.release_presence(cx);
        // What is still queued (a close frame or its reply, an error that
        // says why) goes out if the kernel takes it: the connection may end
        // in the same turn that queued it.
        if let Phase::Open { ws, .. } = &mut self.phase {
            let _ = ws.flush();
            let _ = ws.get_mut().write_queued(&cx.turn);
        }
        if let Phase::Open { room, slot, .. } = self.phase {
            let stats = cx.stats();
            stats
                .open_connections
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            WorkerStats::bump(&stats.connections_closed);
            moved = cx.rooms.leave(room, slot).map(|key| (key, slot));
        }
        if self.counted {
            self.counted = false;
            cx.shared.close_connection();
        }
        if let Some(stream) = self.stream_mut() {
            let _ = registry.deregister(stream);
        }
        moved
    }

    /// A dying worker's connection: its users lose it (the rest of
    /// `release` is not for a thread that is unwinding).
    pub fn forget_presence(&mut self, cx: &mut Context) {
        self.release_presence(cx);
    }

    /// Another member left the room and this one moved into its place.
    pub fn set_slot(&mut self, new: usize) {
        if let Phase::Open { slot, .. } = &mut self.phase {
            *slot = new;
        }
    }

    /// Holds one of the server's `max_connections` slots.
    pub fn counted(&self) -> bool {
        self.counted
    }

    fn stream_mut(&mut self) -> Option<&mut TcpStream> {
        match &mut self.phase {
            Phase::Routing(stream)
            | Phase::Responding { stream, .. }
            | Phase::Lingering(stream) => Some(stream),
            Phase::Open { ws, .. } => Some(ws.get_mut().stream_mut()),
            Phase::Moving => None,
        }
    }
}

/// Reads and drops whatever the peer sends: `WAIT` once it would block,
/// `Remove` once the peer is gone (EOF or error).
fn drop_input(stream: &mut TcpStream, buf: &mut [u8]) -> Next {
    loop {
        match stream.read(buf) {
            Ok(0) => return Next::Remove,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::WAIT,
            Err(_) => return Next::Remove,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ending_wins_and_flags_add_up() {
        let resume = Next::Keep {
            flush: false,
            resume: true,
        };
        assert_eq!(
            Next::FLUSH.and(resume),
            Next::Keep {
                flush: true,
                resume: true
            }
        );
        assert_eq!(Next::WAIT.and(Next::WAIT), Next::WAIT);
        assert_eq!(Next::FLUSH.and(Next::Remove), Next::Remove);
        assert_eq!(Next::SlowReader.and(Next::FLUSH), Next::SlowReader);
        assert!(Next::Remove.ends() && !resume.ends());
    }
}

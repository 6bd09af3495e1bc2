//! The `Open` phase: reading frames within the turn's budget, answering
//! messages (through the broker), queueing replies and broadcasts, flushing,
//! and every way an open connection closes — by us ([`Stage::Closing`]),
//! because its input broke ([`Failure`], [`Stage::Failed`]), or as a slow
//! reader.

use std::io;
use std::sync::atomic::Ordering;
use std::time::Instant;

use chatflow_protocol::frame::{ack_json, error_json};
use chatflow_protocol::time::now_ms;
use chatflow_protocol::{Ack, ClientFrame, Envelope, ErrorCode, ErrorFrame, Position, ServerTime};
use slab::Slab;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, Utf8Bytes};

use super::context::PendingAck;
use super::presence::PresenceEffect;
use super::{Connection, Context, Next, Phase, Stage};
use crate::broker::Outcome;
use crate::config::Config;
use crate::fanout::{FirstSent, PublishError, Ticket};
use crate::output::{FrameSpan, TurnFrames};
use crate::socket::Violation;
use crate::stats::WorkerStats;

/// Frames handled from one connection before the worker turns to others;
/// the rest wait for the next loop turn, so one flooding client cannot
/// starve its neighbours.
const FRAMES_PER_TURN: usize = 256;

/// How a write went.
pub(super) enum Sent {
    /// In the connection's output buffer (maybe already on the wire).
    Queued,
    /// The output buffer is at its bound: a slow reader.
    Full,
    /// The connection is gone or broken.
    Broken,
}

impl Sent {
    pub(super) fn next(self) -> Next {
        match self {
            Sent::Queued => Next::FLUSH,
            // A reply that cannot be queued must not vanish: the connection
            // ends instead, as a slow reader.
            Sent::Full => Next::SlowReader,
            // The flush fails the same way and removes it.
            Sent::Broken => Next::FLUSH,
        }
    }
}

/// Why an open connection's input cannot go on. Each ends it the same way
/// ([`Connection::fail`]): an optional error frame, a close frame, and the
/// [`Stage::Failed`] drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Failure {
    /// One message in more frames than `max_fragments`.
    TooManyFragments,
    /// A frame or message over `max_message_size`.
    TooLarge,
    BadUtf8,
    Protocol,
    /// A message's frames took longer than `message_timeout` to arrive.
    Stalled,
}

impl Failure {
    fn close(self) -> (CloseCode, &'static str) {
        match self {
            Failure::TooManyFragments => (CloseCode::Size, "too many fragments"),
            Failure::TooLarge => (CloseCode::Size, "message too large"),
            Failure::BadUtf8 => (CloseCode::Invalid, "text frame is not valid UTF-8"),
            Failure::Protocol => (CloseCode::Protocol, "WebSocket protocol error"),
            Failure::Stalled => (CloseCode::Policy, "message took too long to arrive"),
        }
    }

    /// Counted in `protocolErrors`. An oversized frame is refused by
    /// tungstenite's size limit, not by a protocol rule, and was never
    /// counted there.
    fn is_protocol_error(self) -> bool {
        self != Failure::TooLarge
    }

    /// The error frame that says why, before the close.
    fn error_frame(self, config: &Config) -> Option<ErrorFrame<'static>> {
        let (code, message) = match self {
            Failure::TooManyFragments => (
                ErrorCode::TooLarge,
                format!(
                    "message split into more than {} frames",
                    config.max_fragments
                ),
            ),
            Failure::TooLarge => (
                ErrorCode::TooLarge,
                format!(
                    "frame larger than {} bytes; no message of this protocol needs that much",
                    config.max_message_size
                ),
            ),
            Failure::Stalled => (
                ErrorCode::Timeout,
                format!(
                    "a message took more than {} s to arrive",
                    config.message_timeout.as_secs_f64()
                ),
            ),
            Failure::BadUtf8 | Failure::Protocol => return None,
        };
        Some(ErrorFrame::new(code, message))
    }
}

impl Connection {
    /// Reads and handles frames until the socket is drained (or the
    /// connection has had its turn).
    pub(super) fn read_frames(&mut self, key: usize, cx: &mut Context) -> Next {
        match &mut self.phase {
            Phase::Open {
                stage: Stage::Failed,
                ..
            } => return self.discard_input(cx),
            Phase::Open { ws, .. } => ws.get_mut().start_turn(),
            _ => return Next::WAIT,
        }
        let mut next = Next::WAIT;
        for _ in 0..FRAMES_PER_TURN {
            if self.blocked_on_write {
                // The peer is not reading what we send: leave its input in
                // the kernel (TCP pushes back on it) until our output is
                // out, so no reply ever has to be dropped.
                self.input_paused = true;
                return next;
            }
            let Phase::Open { ws, room, .. } = &mut self.phase else {
                return next;
            };
            let room = *room;
            let step = match ws.read() {
                Ok(Message::Text(text)) => self.on_text(key, room, &text, cx),
                Ok(Message::Binary(_)) => {
                    let frame = ErrorFrame::new(
                        ErrorCode::UnsupportedFrame,
                        "binary frames are not supported: send JSON text frames",
                    );
                    self.send(Message::text(error_json(&frame))).next()
                }
                // Pongs and close replies are queued by tungstenite itself.
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_)) => {
                    Next::FLUSH
                }
                Err(e) if would_block(&e) => {
                    let resume = ws.get_ref().budget_spent();
                    return next.and(Next::Keep {
                        flush: false,
                        resume,
                    });
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {
                    Next::WAIT
                }
                // The input cannot be read on: the connection ends here.
                Err(tungstenite::Error::Io(_))
                    if ws.get_ref().violation() == Some(Violation::TooManyFragments) =>
                {
                    return next.and(self.fail(Failure::TooManyFragments, cx));
                }
                // The stream is mid-frame: it cannot continue.
                Err(tungstenite::Error::Capacity(_)) => {
                    return next.and(self.fail(Failure::TooLarge, cx));
                }
                Err(tungstenite::Error::Utf8(_)) => {
                    return next.and(self.fail(Failure::BadUtf8, cx))
                }
                // The peer vanished without a close frame: nothing to answer.
                Err(tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                )) => return Next::Remove,
                Err(tungstenite::Error::Protocol(_)) => {
                    return next.and(self.fail(Failure::Protocol, cx));
                }
                Err(tungstenite::Error::WriteBufferFull(_)) => return Next::SlowReader,
                // Closed cleanly, reset, or any other I/O failure.
                Err(_) => return Next::Remove,
            };
            next = next.and(step);
            if next.ends() {
                return next;
            }
        }
        next.and(Next::Keep {
            flush: false,
            resume: true,
        })
    }

    /// Validates one client message, hands it to the broker, and queues
    /// the ack or error (or nothing yet, if the broker answers later); a
    /// request frame goes to what answers it.
    fn on_text(&mut self, key: usize, room: u32, text: &str, cx: &mut Context) -> Next {
        let reply = match ClientFrame::parse(text) {
            Ok(ClientFrame::Request(request)) => return self.on_request(key, room, request, cx),
            Ok(ClientFrame::Message(message)) => {
                let received = Instant::now();
                let now = now_ms();
                let id = cx.ids.next_id(now);
                let server_time = ServerTime(now);
                let ticket = cx.next_ticket();
                let envelope = Envelope::accepted(
                    &message,
                    room,
                    id,
                    server_time,
                    &cx.shared.config.server_id,
                );
                let ack = || {
                    ack_json(&Ack::new(
                        id,
                        room,
                        server_time,
                        message.client_message_id.as_deref(),
                        Some(&message.timestamp),
                    ))
                };
                let client_message_id = message.client_message_id.as_deref();
                match cx.broker.publish(ticket, &envelope, client_message_id) {
                    Outcome::Accepted => {
                        let stats = cx.stats();
                        WorkerStats::bump(&stats.messages_accepted);
                        stats.ack_latency.record(received.elapsed());
                        if let Some(effect) = PresenceEffect::of(&message, cx) {
                            self.apply_presence(effect, cx);
                        }
                        ack()
                    }
                    Outcome::Pending => {
                        cx.pending.insert(
                            ticket.id,
                            PendingAck {
                                key,
                                connection_id: self.id,
                                ack: ack(),
                                client_message_id: client_message_id.map(str::to_owned),
                                retry_of: client_message_id
                                    .map(|_| (room, message.timestamp.to_string())),
                                received,
                                presence: PresenceEffect::of(&message, cx),
                            },
                        );
                        return Next::WAIT;
                    }
                    Outcome::Refused(error) => {
                        WorkerStats::bump(&cx.stats().messages_unavailable);
                        unavailable(error, message.client_message_id.as_deref())
                    }
                }
            }
            Err(rejected) => {
                WorkerStats::bump(&cx.stats().messages_rejected);
                error_json(&ErrorFrame::rejected(&rejected))
            }
        };
        self.send(Message::text(reply)).next()
    }

    /// Ends a connection whose input cannot go on: says why (if there is an
    /// error frame for it), queues the close, and drops input from here on.
    pub(super) fn fail(&mut self, failure: Failure, cx: &mut Context) -> Next {
        if failure.is_protocol_error() {
            WorkerStats::bump(&cx.stats().protocol_errors);
        }
        if let Some(frame) = failure.error_frame(&cx.shared.config) {
            let _ = self.send(Message::text(error_json(&frame)));
        }
        let (code, reason) = failure.close();
        self.start_close(code, reason);
        if let Phase::Open { stage, .. } = &mut self.phase {
            *stage = Stage::Failed;
        }
        Next::FLUSH.and(self.discard_input(cx))
    }

    fn failed(&self) -> bool {
        matches!(
            self.phase,
            Phase::Open {
                stage: Stage::Failed,
                ..
            }
        )
    }

    /// Reads and drops whatever the peer still sends; ends at its EOF.
    fn discard_input(&mut self, cx: &mut Context) -> Next {
        match self.stream_mut() {
            Some(stream) => super::drop_input(stream, &mut cx.scratch),
            None => Next::WAIT,
        }
    }

    /// Queues a message on an open WebSocket (into the connection's
    /// output queue at once: see [`crate::socket`]).
    pub(super) fn send(&mut self, message: Message) -> Sent {
        let Phase::Open { ws, .. } = &mut self.phase else {
            return Sent::Broken;
        };
        // The bound on queued output is checked at the flush, after the
        // kernel took what it would (`flush_output`).
        match ws.write(message) {
            Ok(()) => Sent::Queued,
            Err(tungstenite::Error::WriteBufferFull(_)) => Sent::Full,
            Err(_) => Sent::Broken,
        }
    }

    /// Queues one of the turn's room frames (framed once for every
    /// member), behind whatever this connection has queued.
    pub(super) fn queue_frame(&mut self, span: FrameSpan) -> Sent {
        let Phase::Open { ws, .. } = &mut self.phase else {
            return Sent::Broken;
        };
        // After a close (ours, or the peer's that tungstenite answered)
        // no data frame may follow.
        if !ws.can_write() {
            return Sent::Broken;
        }
        ws.get_mut().queue_frame(span);
        Sent::Queued
    }

    /// Writes queued output. `false` means the connection is broken.
    pub(super) fn flush(&mut self, turn: &TurnFrames) -> bool {
        let Phase::Open { ws, .. } = &mut self.phase else {
            return true;
        };
        // tungstenite's own pending frames (pongs, close replies) join the
        // queue; an error here (the close handshake is over, or broken)
        // still lets what is queued go out first, best effort.
        let moved = ws.flush();
        let written = ws.get_mut().write_queued(turn);
        match (moved, written) {
            (Ok(()), Ok(all_out)) => {
                self.blocked_on_write = !all_out;
                true
            }
            _ => false,
        }
    }

    /// The worker's end-of-turn flush. Once everything is out, a failed
    /// connection shuts its side (FIN: we will send nothing more), a
    /// replay waiting for the output asks for its next page, and paused
    /// input may flow again.
    pub fn flush_output(&mut self, cx: &mut Context) -> Next {
        if !self.flush(&cx.turn) {
            return Next::Remove;
        }
        if self.blocked_on_write {
            let Phase::Open { ws, .. } = &mut self.phase else {
                return Next::WAIT;
            };
            let socket = ws.get_mut();
            // More left unread than a reader may leave: a slow reader
            // (closed before the turn ends, so its frames are still here).
            if socket.over_bound() {
                return Next::SlowReader;
            }
            // The rest waits for the socket, past this turn's frames.
            let kept = socket.keep_past_turn(&cx.turn);
            debug_assert!(kept, "a frame of an earlier turn was still queued");
            return if kept { Next::WAIT } else { Next::Remove };
        }
        if self.failed() {
            if let Some(stream) = self.stream_mut() {
                let _ = stream.shutdown(std::net::Shutdown::Write);
            }
        }
        let next = self.resume_replay(cx);
        if self.input_paused {
            self.input_paused = false;
            return next.and(Next::Keep {
                flush: false,
                resume: true,
            });
        }
        next
    }

    /// Queues a close frame with `code` and starts the grace period; a live
    /// connection becomes `Closing` (a failed one stays `Failed`). The
    /// caller flushes.
    pub(super) fn start_close(&mut self, code: CloseCode, reason: &'static str) {
        if let Phase::Open { ws, stage, .. } = &mut self.phase {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            // Fails only if already closing or the buffer is full; either
            // way the deadline sweep ends the connection.
            let _ = ws.close(Some(frame));
            if *stage == Stage::Live {
                *stage = Stage::Closing;
            }
        }
        self.since = Instant::now();
    }

    /// A reader that lets output pile up past the bound: tell it why (best
    /// effort: its buffer is full). The worker removes it right after.
    pub fn close_slow_reader(&mut self, cx: &Context) {
        WorkerStats::bump(&cx.stats().slow_reader_disconnects);
        if let Some(more) = cx.slow_reader_log.borrow_mut().allow(Instant::now()) {
            tracing::warn!(
                "slow reader disconnected (1008): more than {} bytes of unread output ({more} more since the last line)",
                cx.shared.config.max_pending_output
            );
        }
        self.start_close(CloseCode::Policy, "slow reader: too much unread output");
        let _ = self.flush(&cx.turn);
    }
}

/// Queues a room frame to every live member of `room` on this worker and
/// hands each member's [`Next`] to `then` (which must not remove anyone:
/// the room index is borrowed meanwhile). A member that is resuming holds
/// the frame back, or drops it as replayed, by its `position`. The frame is
/// framed once, into the turn's buffer; each member queues where it lies.
pub fn deliver(
    conns: &mut Slab<Connection>,
    cx: &mut Context,
    room: u32,
    frame: &Utf8Bytes,
    position: Option<Position>,
    mut then: impl FnMut(usize, &mut Connection, Next),
) {
    if cx.rooms.members(room).is_empty() {
        return;
    }
    let span = cx.turn.push_text(frame.as_str());
    let mut delivered = 0;
    let hold = cx.shared.config.history.live_buffer;
    for &key in cx.rooms.members(room) {
        let conn = &mut conns[key];
        if !matches!(
            conn.phase,
            Phase::Open {
                stage: Stage::Live,
                ..
            }
        ) {
            continue;
        }
        let Some(sent) = conn.offer(frame, span, position, hold) else {
            continue;
        };
        if matches!(sent, Sent::Queued) {
            delivered += 1;
        }
        then(key, conn, sent.next());
    }
    cx.stats()
        .broadcast_frames_sent
        .fetch_add(delivered, Ordering::Relaxed);
}

/// The broker's answer for a message it took as pending: counts it and
/// queues the ack or error on its connection, if that connection is still
/// there. Returns the connection's key and what to do with it.
pub fn published(
    conns: &mut Slab<Connection>,
    cx: &mut Context,
    ticket: Ticket,
    result: Result<Option<FirstSent>, PublishError>,
) -> Option<(usize, Next)> {
    let pending = cx.pending.remove(&ticket.id)?;
    let stats = cx.stats();
    WorkerStats::bump(match result {
        Ok(_) => &stats.messages_accepted,
        Err(_) => &stats.messages_unavailable,
    });
    if matches!(result, Ok(Some(_))) {
        WorkerStats::bump(&stats.retries_recognized);
    }
    if result.is_ok() {
        stats.ack_latency.record(pending.received.elapsed());
    }
    // Keys are reused: the id says it is still the same client. If it left
    // before the broker answered, there is no one to tell (and no one its
    // JOIN could make present).
    let conn = conns
        .get_mut(pending.key)
        .filter(|c| c.id == pending.connection_id)?;
    if let (Ok(_), Some(effect)) = (&result, pending.presence) {
        conn.apply_presence(effect, cx);
    }
    let reply = match (result, &pending.retry_of) {
        (Ok(None), _) | (Ok(Some(_)), None) => pending.ack,
        // A retry of a message sent before: the first one's ack.
        (Ok(Some(first)), Some((room, timestamp))) => ack_json(&Ack::new(
            first.message_id,
            *room,
            first.server_time,
            pending.client_message_id.as_deref(),
            Some(timestamp),
        )),
        (Err(error), _) => unavailable(error, pending.client_message_id.as_deref()),
    };
    Some((pending.key, conn.send(Message::text(reply)).next()))
}

/// The one test for "no more for now": tungstenite passing on our
/// non-blocking socket's `WouldBlock`.
fn would_block(error: &tungstenite::Error) -> bool {
    matches!(error, tungstenite::Error::Io(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// The `UNAVAILABLE` error frame: the refusal's fixed text, no formatting.
fn unavailable(error: PublishError, client_message_id: Option<&str>) -> String {
    let mut frame = ErrorFrame::new(ErrorCode::Unavailable, error.message());
    frame.client_message_id = client_message_id.map(Into::into);
    error_json(&frame)
}

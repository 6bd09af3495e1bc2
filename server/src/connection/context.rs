//! What a connection's steps need from their worker besides the connection
//! itself: the shared state and broker, the WebSocket settings, the room
//! index, the id generator, the acks waiting for the broker, the turn's
//! presence events, and a scratch buffer. Kept apart from the worker's loop state (Poll, slab, lists) so a
//! step can borrow it while the worker holds the connection.
//!
//! A stopping worker swaps its broker for one that refuses every new
//! message ([`Context::stop_publishing`]) while the answers to those in
//! flight still arrive, so the set it waits for can only shrink.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatflow_telemetry::RateLimit;

use chatflow_protocol::IdGenerator;
use tungstenite::protocol::WebSocketConfig;

use chatflow_protocol::Envelope;

use crate::broker::{Broker, BrokerHealth, Outcome};
use crate::config::BrokerKind;
use crate::fanout::{PublishError, Ticket};
use crate::output::TurnFrames;
use crate::presence::Outbox;
use crate::rooms::RoomIndex;
use crate::stats::{Shared, WorkerStats};

/// An ack waiting for the broker's word.
pub(super) struct PendingAck {
    pub key: usize,
    pub connection_id: u64,
    /// The ack frame, ready to send on success.
    pub ack: String,
    pub client_message_id: Option<String>,
    /// What a retry's ack needs besides the first message's id and time:
    /// its room and the client's timestamp (only with a
    /// `clientMessageId`, the only way to be a retry).
    pub retry_of: Option<(u32, String)>,
    /// When the message was read: its ack latency runs from here.
    pub received: Instant,
    /// What it does to presence once accepted (a `JOIN` or `LEAVE`).
    pub(super) presence: Option<super::presence::PresenceEffect>,
}

pub struct Context {
    index: usize,
    pub(super) shared: Arc<Shared>,
    pub(super) broker: Arc<dyn Broker>,
    pub(super) ws_config: WebSocketConfig,
    /// Open connections by room: who gets a broadcast.
    pub(super) rooms: RoomIndex,
    pub(super) ids: IdGenerator,
    next_ticket: u64,
    /// Messages the broker answered `Pending`, by ticket id.
    pub(super) pending: HashMap<u64, PendingAck>,
    /// Request heads are peeked into it; dropped input is read into it.
    pub(super) scratch: Vec<u8>,
    /// Slow-reader disconnects are logged at most once a second per
    /// worker (a broadcast storm can cut thousands at once); the rest are
    /// counted into the next line.
    pub(super) slow_reader_log: RefCell<RateLimit>,
    /// This loop turn's presence events (`None`: presence is off).
    pub(super) presence: Option<Outbox>,
    /// This loop turn's room frames, framed once for every member.
    pub(super) turn: TurnFrames,
}

impl Context {
    /// Worker `index`'s context, made on the worker's own (pinned) thread.
    pub fn new(
        index: usize,
        shared: Arc<Shared>,
        broker: Arc<dyn Broker>,
        presence: Option<Outbox>,
    ) -> Self {
        let config = &shared.config;
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(config.read_buffer_size)
            // Every frame goes on at once into the connection's own queue
            // (memory, not the kernel: `crate::socket`), where the turn's
            // room frames queue behind it in order; the bound on that
            // queue is the socket's. tungstenite's own bound must stay
            // above its write size; it can only refuse one giant frame.
            .write_buffer_size(0)
            .max_write_buffer_size(config.max_pending_output)
            .max_message_size(Some(config.max_message_size))
            .max_frame_size(Some(config.max_message_size));
        let rooms = RoomIndex::new(config.rooms().count());
        let scratch = vec![0; config.max_request_head];
        Context {
            index,
            shared,
            broker,
            ws_config,
            rooms,
            ids: IdGenerator::new(),
            next_ticket: 0,
            pending: HashMap::new(),
            scratch,
            slow_reader_log: RefCell::new(RateLimit::new(Duration::from_secs(1))),
            presence,
            turn: TurnFrames::default(),
        }
    }

    /// The loop turn is over (every connection flushed, and what one could
    /// not write kept in its own bytes): the turn's room frames go.
    pub fn end_turn(&mut self) {
        self.turn.clear();
    }

    /// Hands this loop turn's presence events to the presence thread (one
    /// send, at the end of the turn; nothing without any).
    pub fn send_presence(&mut self) {
        if let Some(outbox) = self.presence.as_mut() {
            outbox.send();
        }
    }

    /// Which worker this is (answers from other threads come back to it).
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// This worker's counters.
    pub fn stats(&self) -> &WorkerStats {
        &self.shared.workers[self.index]
    }

    /// From now on every new message is refused with `ShuttingDown` (it
    /// never reached the broker, so a client's retry elsewhere cannot
    /// duplicate it); answers to those already in flight still come.
    pub fn stop_publishing(&mut self) {
        self.broker = Arc::new(Stopped(self.broker.clone()));
    }

    /// Messages waiting for the broker's answer.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The tickets of the messages waiting for the broker's answer.
    pub fn in_flight_tickets(&self) -> Vec<Ticket> {
        (self.pending.keys())
            .map(|&id| Ticket {
                worker: self.index,
                id,
            })
            .collect()
    }

    /// A ticket this worker never used before.
    pub(super) fn next_ticket(&mut self) -> Ticket {
        self.next_ticket += 1;
        Ticket {
            worker: self.index,
            id: self.next_ticket,
        }
    }
}

/// The broker as a stopping worker sees it: it takes nothing new, and
/// says what the real one says about its health.
struct Stopped(Arc<dyn Broker>);

impl Broker for Stopped {
    fn kind(&self) -> BrokerKind {
        self.0.kind()
    }

    fn publish(&self, _ticket: Ticket, _envelope: &Envelope<'_>, _: Option<&str>) -> Outcome {
        Outcome::Refused(PublishError::ShuttingDown)
    }

    fn health(&self) -> BrokerHealth {
        self.0.health()
    }
}

//! Cross-thread input to workers: each worker has one inbox (a crossbeam
//! channel) and one `mio::Waker`. Brokers, subscribers and presence hand
//! room frames, publish results and answers to workers only through here; nothing else may block
//! or touch a worker's state.
//!
//! The types those events carry ([`Ticket`], [`PublishError`],
//! [`HistoryPage`]) live here, with the event, so that the brokers (which
//! send them) and the workers (which receive them) both import this module
//! and never each other.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chatflow_protocol::Position;
use crossbeam_channel::{Receiver, Sender};
use tungstenite::Utf8Bytes;

/// Something for a worker to do, sent from another thread.
#[derive(Debug)]
pub enum WorkerEvent {
    /// Deliver this frame to every member of `room` this worker holds. The
    /// text is shared: every recipient's copy is a reference count.
    /// `position`: where it is in the room's history (read from the
    /// frame's tail once, by the subscriber), by which a connection that
    /// is resuming holds it back or drops it as already replayed.
    Broadcast {
        room: u32,
        frame: Utf8Bytes,
        position: Option<Position>,
    },
    /// A broker's answer to a publish it called `Pending`: `Ok` acks the
    /// client, `Err` sends it an `UNAVAILABLE` error saying why. `Ok(Some)`
    /// says the message was a retry of one already sent (same `userId` and
    /// `clientMessageId`): the ack carries the first one's id and time.
    Published {
        ticket: Ticket,
        result: Result<Option<FirstSent>, PublishError>,
    },
    /// Stop accepting, close every connection with 1001 and exit (the
    /// worker's part of the stop described in [`crate::server`]).
    Shutdown,
    /// The history's answer to a resuming connection's request
    /// ([`crate::broker::history`]). Boxed: rare, and larger than the rest.
    History(Box<HistoryPage>),
    /// A `presence_join` or `presence_leave` frame for the members of
    /// `room` this worker holds (those that joined or asked: see
    /// [`crate::presence`]). Shared like a broadcast.
    PresenceFrame { room: u32, frame: Utf8Bytes },
    /// The answer to connection `key`'s (with `connection_id`) presence
    /// request.
    PresenceAnswer {
        key: usize,
        connection_id: u64,
        frame: Utf8Bytes,
    },
}

/// Part of a room's history, for the resuming connection `key` (with
/// `connection_id`, since slab keys are reused) of the worker it goes to.
#[derive(Debug)]
pub struct HistoryPage {
    pub key: usize,
    pub connection_id: u64,
    /// The page, or why the history could not be read.
    pub result: Result<Page, String>,
}

/// Entries of a room's history after the position asked for, oldest
/// first, with what the first answer of a resume adds.
#[derive(Debug, Default)]
pub struct Page {
    /// At most the count asked for: as many means more may follow.
    pub entries: Vec<(Position, Utf8Bytes)>,
    /// (First answer only.) Entries after the position were trimmed from
    /// the history: the replay cannot be complete.
    pub trimmed: bool,
    /// (First answer only, when trimmed and the server has a database.)
    /// Messages stored before the held history starts, by server
    /// timestamp; they come before `entries` and have no position.
    pub from_database: Vec<Utf8Bytes>,
    /// The database had more of those than the replay may carry.
    pub database_truncated: bool,
    /// What a person should know about the fill (no database, or it
    /// failed).
    pub note: Option<String>,
}

/// Names one offered message: the worker that offered it and a number that
/// worker never reuses. A broker answering `Pending` returns it in
/// [`WorkerEvent::Published`] to `worker`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ticket {
    pub worker: usize,
    pub id: u64,
}

/// The id and server time a message got the first time it was sent: what
/// the ack of any retry of it (same `userId` and `clientMessageId`) says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirstSent {
    pub message_id: chatflow_protocol::MessageId,
    pub server_time: chatflow_protocol::ServerTime,
}

/// Why a message was not accepted. Every variant is a fixed text, so a
/// refusal costs no allocation beyond the error frame the client gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishError {
    /// The broker connection is down (reconnecting). Never sent.
    Unreachable,
    /// This server's queue towards the broker is full. Never sent.
    QueueFull,
    /// The server is stopping. Never sent.
    ShuttingDown,
    /// The broker answered with a negative confirm (e.g. its queue is at
    /// its maximum length).
    Nacked,
    /// The connection dropped between publish and confirm.
    LinkLost,
    /// No confirm came before the deadline (on shutdown).
    Timeout,
    /// The store that makes retries idempotent (Redis) did not answer, so
    /// this server cannot tell a retry from a new message. Never sent.
    SendLogUnreachable,
}

/// The text of an `UNAVAILABLE` error for a message that never left this
/// server: nothing was stored.
macro_rules! never_sent {
    ($why:literal) => {
        concat!(
            "message not accepted: ",
            $why,
            "; it never reached the broker: retry later"
        )
    };
}

/// The text for a message the broker may have taken: a retry is safe
/// against loss, and against a duplicate when it carries the same
/// `clientMessageId` (idempotent sends, with the RabbitMQ broker).
macro_rules! maybe_stored {
    ($why:literal) => {
        concat!(
            "message not accepted: ",
            $why,
            "; it may have been stored: retry with the same clientMessageId and it will not be stored twice"
        )
    };
}

impl PublishError {
    /// The client's `UNAVAILABLE` message: what happened and what a retry
    /// does.
    pub const fn message(self) -> &'static str {
        match self {
            PublishError::Unreachable => never_sent!("the message broker is unreachable"),
            PublishError::QueueFull => never_sent!("the server's publish queue is full"),
            PublishError::ShuttingDown => never_sent!("the server is shutting down"),
            PublishError::Nacked => {
                maybe_stored!("the broker refused it (queue full or unavailable)")
            }
            PublishError::LinkLost => {
                maybe_stored!("the broker connection dropped before it confirmed")
            }
            PublishError::Timeout => maybe_stored!("the broker did not confirm it in time"),
            PublishError::SendLogUnreachable => {
                never_sent!("the store of sent message ids (Redis) is unreachable")
            }
        }
    }

    /// Whether the broker may hold the message despite the refusal.
    pub const fn may_be_stored(self) -> bool {
        matches!(
            self,
            PublishError::Nacked | PublishError::LinkLost | PublishError::Timeout
        )
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for PublishError {}

/// The sending half of one worker's inbox.
#[derive(Clone)]
pub struct WorkerHandle {
    sender: Sender<WorkerEvent>,
    waker: Arc<mio::Waker>,
    /// Set while a wake-up is outstanding, so a burst of events costs one
    /// `eventfd` write instead of one per event. The worker clears it before
    /// draining its inbox.
    wake_pending: Arc<AtomicBool>,
}

/// The receiving half, owned by the worker.
pub struct Inbox {
    receiver: Receiver<WorkerEvent>,
    wake_pending: Arc<AtomicBool>,
}

/// A worker's inbox pair. `waker` must be registered with that worker's Poll.
pub fn inbox(waker: mio::Waker) -> (WorkerHandle, Inbox) {
    let (sender, receiver) = crossbeam_channel::unbounded();
    let wake_pending = Arc::new(AtomicBool::new(false));
    (
        WorkerHandle {
            sender,
            waker: Arc::new(waker),
            wake_pending: wake_pending.clone(),
        },
        Inbox {
            receiver,
            wake_pending,
        },
    )
}

impl WorkerHandle {
    /// Queues an event and wakes the worker if it is not already due to
    /// wake. Returns false if the worker has exited.
    pub fn send(&self, event: WorkerEvent) -> bool {
        if self.sender.send(event).is_err() {
            return false;
        }
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            // A failed wake means the worker's Poll is gone: it has exited.
            return self.waker.wake().is_ok();
        }
        true
    }
}

impl Inbox {
    /// Takes every queued event. Clearing the flag first means an event sent
    /// while we drain either is seen by this drain or wakes us again.
    pub fn drain(&self, mut handle: impl FnMut(WorkerEvent)) {
        self.wake_pending.store(false, Ordering::Release);
        while let Ok(event) = self.receiver.try_recv() {
            handle(event);
        }
    }
}

/// Every worker's handle: how a broadcast reaches a whole server.
#[derive(Clone, Default)]
pub struct Fanout {
    workers: Arc<Vec<WorkerHandle>>,
}

impl Fanout {
    pub fn new(workers: Vec<WorkerHandle>) -> Self {
        Fanout {
            workers: Arc::new(workers),
        }
    }

    /// Hands one serialised frame to every worker for the members of `room`.
    pub fn broadcast(&self, room: u32, frame: Utf8Bytes, position: Option<Position>) {
        for worker in self.workers.iter() {
            worker.send(WorkerEvent::Broadcast {
                room,
                frame: frame.clone(),
                position,
            });
        }
    }

    /// Hands one presence frame to every worker for the members of `room`.
    pub fn presence(&self, room: u32, frame: Utf8Bytes) {
        for worker in self.workers.iter() {
            worker.send(WorkerEvent::PresenceFrame {
                room,
                frame: frame.clone(),
            });
        }
    }

    /// Sends one event to one worker (a broker answering a publish).
    /// Returns false if there is no such worker or it has exited.
    pub fn send_to(&self, worker: usize, event: WorkerEvent) -> bool {
        self.workers.get(worker).is_some_and(|w| w.send(event))
    }

    /// Wakes every worker with [`WorkerEvent::Shutdown`].
    pub fn shutdown(&self) {
        for worker in self.workers.iter() {
            worker.send(WorkerEvent::Shutdown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_whether_the_message_may_be_stored() {
        for error in [
            PublishError::Unreachable,
            PublishError::QueueFull,
            PublishError::ShuttingDown,
            PublishError::Nacked,
            PublishError::LinkLost,
            PublishError::Timeout,
            PublishError::SendLogUnreachable,
        ] {
            let text = error.message();
            assert!(text.starts_with("message not accepted: "), "{text}");
            assert!(!text.contains("was not stored"), "{text}");
            assert_eq!(
                text.contains("may have been stored"),
                error.may_be_stored(),
                "{text}"
            );
            assert_eq!(
                text.contains("never reached"),
                !error.may_be_stored(),
                "{text}"
            );
            assert_eq!(error.to_string(), text);
        }
    }
}

//! Cross-thread input to workers: each worker has one inbox (a crossbeam
//! channel) and one `mio::Waker`. Brokers and subscribers hand room frames
//! and publish results to workers only through here; nothing else may block
//! or touch a worker's state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use tungstenite::Utf8Bytes;

/// Something for a worker to do, sent from another thread.
#[derive(Debug)]
pub enum WorkerEvent {
    /// Deliver this frame to every member of `room` this worker holds. The
    /// text is shared: every recipient's copy is a reference count.
    Broadcast { room: u32, frame: Utf8Bytes },
    /// A broker's answer to a publish it called `Pending`: `Ok` acks the
    /// client, `Err` sends it an `UNAVAILABLE` error with the reason.
    Published {
        ticket: crate::broker::Ticket,
        result: Result<(), String>,
    },
    /// Stop accepting, close every connection with 1001 and exit.
    Shutdown,
}

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
    pub fn broadcast(&self, room: u32, frame: Utf8Bytes) {
        for worker in self.workers.iter() {
            worker.send(WorkerEvent::Broadcast {
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

    /// Asks every worker to shut down.
    pub fn shutdown(&self) {
        for worker in self.workers.iter() {
            worker.send(WorkerEvent::Shutdown);
        }
    }
}

//! The consumers: one thread per queue (`consumer-r{room}s{shard}`), each
//! on its own channel, the channels spread over a few connections — as
//! `chatflow-consumer` reads the queues, minus everything it does with a
//! message. A delivery starts a batch that takes whatever else is already
//! there, up to the ack batch, and is settled with one `ack(multiple)`:
//! the consumer's batching, so the broker sees the product's acks.
//!
//! [`Progress`] counts acked deliveries over all queues, with the times of
//! the first and the last, which the drain and consume rates come from.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amiquip::{Channel, ConsumerMessage, ConsumerOptions};
use chatflow_broker::Shutdown;
use crossbeam_channel::{select, TryRecvError};

use super::config::ConsumerShape;

/// After a cancel, how long a consumer waits for the broker to confirm it
/// (deliveries already on their way arrive first).
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// Why a consumer stopped before it was told to.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("{queue}: qos: {cause}")]
    Qos {
        queue: String,
        cause: Box<amiquip::Error>,
    },
    #[error("{queue}: consuming: {cause}")]
    Consume {
        queue: String,
        cause: Box<amiquip::Error>,
    },
    #[error("{queue}: ack: {cause}")]
    Ack {
        queue: String,
        cause: Box<amiquip::Error>,
    },
    #[error("{queue}: the delivery stream ended ({reason})")]
    Ended { queue: String, reason: String },
}

/// Deliveries acked over every queue, and when.
pub struct Progress {
    origin: Instant,
    consumed: AtomicU64,
    /// Nanoseconds after `origin` of the first and the last ack
    /// (`u64::MAX` / 0 until there is one).
    first_ns: AtomicU64,
    last_ns: AtomicU64,
}

impl Progress {
    pub fn new() -> Self {
        Progress {
            origin: Instant::now(),
            consumed: AtomicU64::new(0),
            first_ns: AtomicU64::new(u64::MAX),
            last_ns: AtomicU64::new(0),
        }
    }

    fn acked(&self, n: u64) {
        let ns = self.origin.elapsed().as_nanos() as u64;
        self.first_ns.fetch_min(ns, Ordering::Relaxed);
        self.last_ns.fetch_max(ns, Ordering::Relaxed);
        // Last, so a reader that sees the count also sees its time.
        self.consumed.fetch_add(n, Ordering::Release);
    }

    pub fn consumed(&self) -> u64 {
        self.consumed.load(Ordering::Acquire)
    }

    /// When the first batch was acked.
    pub fn first(&self) -> Option<Instant> {
        let ns = self.first_ns.load(Ordering::Relaxed);
        (ns != u64::MAX).then(|| self.origin + Duration::from_nanos(ns))
    }

    /// When the last batch so far was acked.
    pub fn last(&self) -> Option<Instant> {
        (self.consumed() > 0)
            .then(|| self.origin + Duration::from_nanos(self.last_ns.load(Ordering::Relaxed)))
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

/// One queue's consumer, before it runs.
pub struct QueueConsumer {
    pub queue: String,
    pub channel: Channel,
    pub shape: ConsumerShape,
    /// Consuming starts when it opens.
    pub gate: Shutdown,
    pub stop: Shutdown,
    pub progress: Arc<Progress>,
}

impl QueueConsumer {
    /// Waits for the gate, consumes and acks until stopped, cancels in
    /// order (see `/work/shared/CRATES.md`: drop a consumer only after its
    /// cancel is confirmed) and closes its channel.
    pub fn run(self) -> Result<(), ConsumeError> {
        select! {
            recv(self.gate) -> _ => {}
            recv(self.stop) -> _ => return Ok(()),
        }
        let queue = &self.queue;
        self.channel
            .qos(0, self.shape.prefetch, false)
            .map_err(|e| ConsumeError::Qos {
                queue: queue.clone(),
                cause: Box::new(e),
            })?;
        let consumer = self
            .channel
            .basic_consume(queue.clone(), ConsumerOptions::default())
            .map_err(|e| ConsumeError::Consume {
                queue: queue.clone(),
                cause: Box::new(e),
            })?;
        let deliveries = consumer.receiver();
        let ended = |reason: String| ConsumeError::Ended {
            queue: queue.clone(),
            reason,
        };
        loop {
            select! {
                recv(deliveries) -> message => {
                    let mut last = match message {
                        Ok(ConsumerMessage::Delivery(d)) => d,
                        Ok(other) => return Err(ended(format!("{other:?}"))),
                        Err(_) => return Err(ended("connection gone".into())),
                    };
                    let mut batch = 1;
                    while batch < self.shape.ack_batch {
                        match deliveries.try_recv() {
                            Ok(ConsumerMessage::Delivery(d)) => {
                                last = d;
                                batch += 1;
                            }
                            Ok(other) => return Err(ended(format!("{other:?}"))),
                            Err(TryRecvError::Disconnected) => {
                                return Err(ended("connection gone".into()))
                            }
                            Err(TryRecvError::Empty) => break,
                        }
                    }
                    consumer.ack_multiple(last).map_err(|e| ConsumeError::Ack {
                        queue: queue.clone(),
                        cause: Box::new(e),
                    })?;
                    self.progress.acked(batch as u64);
                }
                recv(self.stop) -> _ => break,
            }
        }
        // Unacked deliveries that arrive meanwhile go back to the queue when
        // the channel closes (the run is over; nothing counts them).
        if consumer.cancel().is_ok() {
            let deadline = Instant::now() + CANCEL_GRACE;
            while let Ok(ConsumerMessage::Delivery(_)) =
                deliveries.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
            }
        }
        drop(consumer);
        let _ = self.channel.close();
        Ok(())
    }
}

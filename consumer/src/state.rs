//! The state every thread of a running consumer shares ([`Shared`]): the
//! configuration, the queues this instance consumes and as what, the
//! counters, the rate window, which link each queue consumer uses, the source of channel-lease epochs, and the threads'
//! shutdown signal and death record.
//!
//! Invariant: everything here is either immutable after start or safe to
//! touch from any thread (atomics, short locks); nothing here blocks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::assignment::QueueSlot;
use crate::config::Config;
use crate::counters::{Counters, QueueStats};
use crate::rates::{RateWindow, Snapshot};
use crate::threads::Threads;

/// Everything the threads and readers share.
pub struct Shared {
    pub config: Config,
    pub started: Instant,
    /// The queues this instance consumes (room-major order), each with its
    /// duty; queue consumer `i` consumes `queues[i]`.
    pub queues: Vec<QueueSlot>,
    pub counters: Counters,
    /// Which link (AMQP connection) each queue consumer uses.
    pub link_of: Vec<usize>,
    pub rates: Mutex<RateWindow>,
    /// The shutdown signal and the threads that died.
    pub threads: Arc<Threads>,
    /// Source of channel-lease epochs (the link module's `Lease`).
    epochs: AtomicU64,
}

impl Shared {
    pub fn new(config: Config, link_of: Vec<usize>, threads: Arc<Threads>) -> Self {
        let writers = if config.enable_persistence {
            config.database.writers
        } else {
            0
        };
        let queues = config.queues();
        let room_of = queues.iter().map(|q| q.room).collect();
        Shared {
            counters: Counters::new(
                room_of,
                config.rooms().count(),
                config.amqp_connections,
                writers,
            ),
            queues,
            config,
            started: Instant::now(),
            link_of,
            rates: Mutex::new(RateWindow::default()),
            threads,
            epochs: AtomicU64::new(0),
        }
    }

    /// The queue consumer `index` consumes.
    pub fn queue_of(&self, index: usize) -> &QueueSlot {
        &self.queues[index]
    }

    /// Queue consumer `index`'s counters.
    pub fn queue(&self, index: usize) -> &QueueStats {
        &self.counters.queues[index]
    }

    /// A number no other channel lease has had.
    pub fn next_epoch(&self) -> u64 {
        self.epochs.fetch_add(1, Ordering::Relaxed)
    }

    /// True once shutdown has been signalled.
    pub fn is_shutting_down(&self) -> bool {
        self.threads.is_shutting_down()
    }

    /// The sampler's tick: records the current totals for the rates.
    pub fn sample(&self) {
        let snapshot = Snapshot::of(&self.counters);
        self.rates.lock().push(snapshot);
    }
}

/// A [`Shared`] for unit tests: `rooms` rooms on two links (one with a
/// single room), persistence off, and the trigger of its shutdown signal.
#[cfg(test)]
pub(crate) fn for_tests(rooms: u32) -> (chatflow_broker::ShutdownTrigger, Shared) {
    for_tests_as(rooms, crate::assignment::Assignment::default())
}

/// [`for_tests`] as one instance of several.
#[cfg(test)]
pub(crate) fn for_tests_as(
    rooms: u32,
    assignment: crate::assignment::Assignment,
) -> (chatflow_broker::ShutdownTrigger, Shared) {
    let links = rooms.clamp(1, 2) as usize;
    let config = Config {
        services: chatflow_broker::BrokerSettings::default()
            .with_topology("chatflow", chatflow_protocol::Rooms::new(rooms).unwrap()),
        amqp_connections: links,
        enable_persistence: false,
        assignment,
        ..Config::default()
    };
    let consumers = config.consumer_count();
    let link_of = (0..consumers).map(|i| i * links / consumers).collect();
    let (trigger, shutdown) = chatflow_broker::shutdown_signal();
    (
        trigger,
        Shared::new(config, link_of, Threads::new(shutdown)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_consumers_map_to_rooms_and_shards() {
        let (_trigger, shared) = for_tests(20);
        let at = |i| {
            let q = shared.queue_of(i);
            (q.room, q.shard)
        };
        assert_eq!(
            (at(0), at(4), at(5), at(99)),
            ((1, 0), (1, 4), (2, 0), (20, 4))
        );
        assert_eq!(shared.queue_of(7).name, "chatflow.room.2.2");
    }

    #[test]
    fn epochs_are_never_reused_and_shutdown_is_seen() {
        let (mut trigger, shared) = for_tests(1);
        assert_ne!(shared.next_epoch(), shared.next_epoch());
        assert!(!shared.is_shutting_down());
        trigger.signal();
        assert!(shared.is_shutting_down());
    }
}

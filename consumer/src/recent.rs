//! The message ids a queue consumer broadcast lately ([`RecentIds`]): a
//! message published twice under one id — a client's retry republished by
//! the sent log, or a redelivery — is broadcast once while its id is
//! remembered. One sender's messages in a room always reach the same queue
//! consumer (shard = user id mod 5), so a set per consumer sees every copy.
//!
//! Bounded twice: ids older than the window leave, and at most `capacity`
//! are kept (the oldest leave first), so a flood cannot grow it.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use chatflow_protocol::MessageId;

pub struct RecentIds {
    window: Duration,
    capacity: usize,
    set: HashSet<MessageId>,
    order: VecDeque<(Instant, MessageId)>,
}

impl RecentIds {
    pub fn new(window: Duration, capacity: usize) -> Self {
        RecentIds {
            window,
            capacity: capacity.max(1),
            set: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Records `id` and says whether it was new (false: broadcast already).
    pub fn first_time(&mut self, id: MessageId, now: Instant) -> bool {
        while let Some(&(at, old)) = self.order.front() {
            if now.saturating_duration_since(at) <= self.window && self.order.len() < self.capacity
            {
                break;
            }
            self.order.pop_front();
            self.set.remove(&old);
        }
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back((now, id));
        true
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: i64) -> MessageId {
        chatflow_protocol::IdGenerator::with_instance(1).next_id(1_796_000_000_000 + n)
    }

    #[test]
    fn a_repeat_within_the_window_is_caught_and_old_ids_leave() {
        let start = Instant::now();
        let mut recent = RecentIds::new(Duration::from_secs(10), 1000);
        let (a, b) = (id(1), id(2));
        assert!(recent.first_time(a, start));
        assert!(!recent.first_time(a, start + Duration::from_secs(5)));
        assert!(recent.first_time(b, start + Duration::from_secs(6)));
        // Past the window a is forgotten (at-least-once again).
        assert!(recent.first_time(a, start + Duration::from_secs(11)));
        assert_eq!(recent.len(), 2);
    }

    #[test]
    fn capacity_bounds_memory() {
        let start = Instant::now();
        let mut recent = RecentIds::new(Duration::from_secs(3600), 3);
        for n in 0..10 {
            assert!(recent.first_time(id(n), start));
        }
        assert_eq!(recent.len(), 3);
        assert!(recent.first_time(id(0), start), "the oldest left first");
    }
}

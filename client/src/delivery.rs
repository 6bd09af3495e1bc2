//! Delivery tracking for one connection: which acked messages still await
//! their broadcast, matched by message id, with a deadline each.
//!
//! A broadcast can overtake its own ack (the server may broadcast before the
//! broker confirms). Its id is then still unknown, so a broadcast that is
//! not awaited but whose userId matches a message still in flight is kept
//! briefly in `early`; the ack looks there first. Broadcasts of other
//! senders' messages (most of what a room connection receives) cost one id
//! scan and one hash probe, and are parsed no further.
//!
//! In an open loop each awaited message also carries how late it was sent
//! (its lag), and a second histogram counts delivery from the intended
//! send time (the actual send plus the lag).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use crate::latency::Latencies;
use crate::wire;

/// Hashes a message id (already uniformly spread in its low bits: the
/// generator instance and the sequence) with one multiply.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u128(&mut self, v: u128) {
        let folded = (v as u64) ^ ((v >> 64) as u64).rotate_left(29);
        self.0 = folded.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type IdMap<V> = HashMap<u128, V, BuildHasherDefault<IdHasher>>;

pub struct Deliveries {
    timeout: Duration,
    /// Awaited: id → (send instant of its first attempt, how late that
    /// was after its intended time).
    pending: IdMap<(Instant, Duration)>,
    /// Expiry order: (id, deadline). Entries whose id already arrived are
    /// skipped when popped (cheaper than removing them on arrival).
    order: VecDeque<(u128, Instant)>,
    /// Broadcasts that may be ours, seen before their ack: (id, arrival).
    early: Vec<(u128, Instant)>,
    early_cap: usize,
    pub latencies: Latencies,
    /// Open loop: delivery latency from the intended send time.
    pub corrected: Option<Latencies>,
    pub observed: u64,
    pub missing: u64,
}

impl Deliveries {
    /// `corrected`: also count delivery from the intended send time.
    pub fn new(timeout: Duration, window: usize, corrected: bool) -> Self {
        Deliveries {
            timeout,
            pending: IdMap::default(),
            order: VecDeque::new(),
            early: Vec::new(),
            // Room for every message in flight several times over.
            early_cap: 4 * window + 16,
            latencies: Latencies::new(),
            corrected: corrected.then(Latencies::long),
            observed: 0,
            missing: 0,
        }
    }

    /// Message `id`, sent at `sent` (`lag` after its intended time), was
    /// acked at `now`.
    pub fn acked(&mut self, id: u128, sent: Instant, lag: Duration, now: Instant) {
        if let Some(i) = self.early.iter().position(|(e, _)| *e == id) {
            let (_, arrived) = self.early.swap_remove(i);
            self.delivered(arrived.saturating_duration_since(sent), lag);
            return;
        }
        self.pending.insert(id, (sent, lag));
        self.order.push_back((id, now + self.timeout));
    }

    fn delivered(&mut self, latency: Duration, lag: Duration) {
        self.latencies.record(latency);
        if let Some(c) = self.corrected.as_mut() {
            c.record(latency + lag);
        }
        self.observed += 1;
    }

    /// A broadcast arrived. `in_flight_user` tells whether a message of that
    /// user is still awaiting its ack on this connection; `now` is taken
    /// only if the broadcast matters.
    pub fn broadcast(
        &mut self,
        text: &str,
        in_flight_user: impl FnOnce(u32) -> bool,
        now: impl FnOnce() -> Instant,
    ) {
        let Some(id) = wire::broadcast_id(text) else {
            return;
        };
        if let Some((sent, lag)) = self.pending.remove(&id) {
            self.delivered(now().saturating_duration_since(sent), lag);
            return;
        }
        if wire::broadcast_user(text).is_some_and(in_flight_user) {
            if self.early.len() >= self.early_cap {
                // Oldest out: a userId collision with another sender.
                self.early.remove(0);
            }
            self.early.push((id, now()));
        }
    }

    /// Counts as missing every awaited broadcast past its deadline.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(id, deadline)) = self.order.front() {
            if deadline > now {
                break;
            }
            self.order.pop_front();
            if self.pending.remove(&id).is_some() {
                self.missing += 1;
            }
        }
        if self.pending.is_empty() {
            self.order.clear();
        }
    }

    /// The connection is gone: nothing awaited can arrive on it any more.
    pub fn abandon(&mut self) {
        self.missing += self.pending.len() as u64;
        self.pending.clear();
        self.order.clear();
        self.early.clear();
    }

    pub fn awaiting(&self) -> usize {
        self.pending.len()
    }

    /// When the last awaited broadcast is due.
    pub fn last_deadline(&self) -> Option<Instant> {
        self.order.back().map(|(_, d)| *d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatflow_protocol::frame::broadcast_json;
    use chatflow_protocol::{Broadcast, IdGenerator, MessageId, MessageType, ServerTime};

    fn broadcast(id: MessageId, user: u32) -> String {
        broadcast_json(&Broadcast {
            message_id: id,
            room_id: 1,
            user_id: user,
            username: format!("user{user}").into(),
            message: "hi".into(),
            message_type: MessageType::Text,
            timestamp: "2026-11-27T02:00:00Z".into(),
            server_timestamp: ServerTime(1),
        })
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_broadcast_after_its_ack_is_matched_by_id() {
        let mut ids = IdGenerator::new();
        let (a, b) = (ids.next_id(1), ids.next_id(1));
        let mut d = Deliveries::new(Duration::from_secs(5), 1, false);
        let t = Instant::now();
        d.acked(a.0, t, Duration::ZERO, t + MS);
        // Someone else's message: ignored, nothing recorded.
        d.broadcast(&broadcast(b, 9), |_| false, || t + 2 * MS);
        assert_eq!((d.observed, d.awaiting()), (0, 1));
        d.broadcast(&broadcast(a, 1), |_| false, || t + 3 * MS);
        assert_eq!((d.observed, d.awaiting()), (1, 0));
        let s = d.latencies.stats().unwrap();
        assert!((s.max - 3.0).abs() < 0.01, "{s:?}");
    }

    #[test]
    fn a_broadcast_before_its_ack_is_kept_and_matched() {
        let id = IdGenerator::new().next_id(1);
        let mut d = Deliveries::new(Duration::from_secs(5), 1, false);
        let t = Instant::now();
        // userId 7 is in flight: the early broadcast is kept with its time.
        d.broadcast(&broadcast(id, 7), |u| u == 7, || t + 2 * MS);
        assert_eq!(d.observed, 0);
        d.acked(id.0, t, Duration::ZERO, t + 5 * MS);
        assert_eq!((d.observed, d.awaiting()), (1, 0));
        // Latency is send → broadcast arrival, not → ack.
        assert!((d.latencies.stats().unwrap().max - 2.0).abs() < 0.01);
    }

    #[test]
    fn an_open_loop_also_counts_delivery_from_the_intended_time() {
        // Sent 40 ms late, delivered 3 ms after the send: 3 ms from the
        // actual send, 43 ms from the intended one.
        let id = IdGenerator::new().next_id(1);
        let mut d = Deliveries::new(Duration::from_secs(5), 1, true);
        let t = Instant::now();
        d.acked(id.0, t, 40 * MS, t + MS);
        d.broadcast(&broadcast(id, 1), |_| false, || t + 3 * MS);
        assert!((d.latencies.stats().unwrap().max - 3.0).abs() < 0.01);
        let c = d.corrected.as_ref().unwrap().stats().unwrap();
        assert!((c.max - 43.0).abs() < 0.05, "{c:?}");
    }

    #[test]
    fn unseen_broadcasts_expire_as_missing_and_abandon_counts_the_rest() {
        let mut ids = IdGenerator::new();
        let mut d = Deliveries::new(10 * MS, 1, false);
        let t = Instant::now();
        d.acked(ids.next_id(1).0, t, Duration::ZERO, t);
        d.acked(ids.next_id(1).0, t, Duration::ZERO, t + 20 * MS);
        d.expire(t + 15 * MS);
        assert_eq!((d.missing, d.awaiting()), (1, 1));
        d.abandon();
        assert_eq!((d.missing, d.awaiting()), (2, 0));
    }
}

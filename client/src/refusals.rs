//! Whether a server is refusing messages right now, shared by every sender
//! thread ([`Refusals`], one per server): an `UNAVAILABLE` answer (its
//! broker or sent log is down) is the server saying "back off". From the
//! first refusal until the next ack from that server it is *refusing*:
//! senders on it take no fresh messages and keep one message in flight
//! (the oldest waiting, as a probe, after its back-off), and threads move
//! to a server that is not refusing when there is one. Each such period is
//! an [`Outage`] in the report.
//!
//! Cheap when nothing is wrong: an ack reads one relaxed atomic; the lock
//! is taken only while a server is refusing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// One period a server refused messages: first refusal → first ack again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outage {
    /// Unix milliseconds.
    pub start_ms: i64,
    /// `None` while it lasts (or if the run ended during it).
    pub end_ms: Option<i64>,
    /// `UNAVAILABLE` answers received meanwhile (attempts it cost).
    pub refusals: u64,
}

impl Outage {
    pub fn seconds(&self, now_ms: i64) -> f64 {
        (self.end_ms.unwrap_or(now_ms) - self.start_ms) as f64 / 1000.0
    }
}

/// One server's refusing state and its outages.
#[derive(Debug, Default)]
pub struct Refusals {
    refusing: AtomicBool,
    /// Every refusal since the start (also outside outages' bookkeeping).
    total: AtomicU64,
    outages: Mutex<Vec<Outage>>,
}

impl Refusals {
    /// The server refused a message (`now_ms`: the wall clock).
    pub fn refused(&self, now_ms: i64) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut outages = self.lock();
        match outages.last_mut() {
            Some(open) if open.end_ms.is_none() => open.refusals += 1,
            _ => outages.push(Outage {
                start_ms: now_ms,
                end_ms: None,
                refusals: 1,
            }),
        }
        self.refusing.store(true, Ordering::Release);
    }

    /// The server acked a message: an outage, if one was open, ends.
    #[inline]
    pub fn accepted(&self, now_ms: i64) {
        if !self.refusing.load(Ordering::Relaxed) {
            return;
        }
        let mut outages = self.lock();
        if let Some(open) = outages.last_mut().filter(|o| o.end_ms.is_none()) {
            open.end_ms = Some(now_ms);
        }
        self.refusing.store(false, Ordering::Release);
    }

    #[inline]
    pub fn is_refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    pub fn outages(&self) -> Vec<Outage> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Outage>> {
        self.outages.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_runs_from_the_first_refusal_to_the_next_ack() {
        let r = Refusals::default();
        r.accepted(1_000);
        assert!(!r.is_refusing() && r.outages().is_empty());
        r.refused(2_000);
        r.refused(2_500);
        assert!(r.is_refusing());
        r.accepted(12_000);
        r.accepted(13_000);
        assert!(!r.is_refusing());
        r.refused(20_000);
        let outages = r.outages();
        assert_eq!(
            outages[0],
            Outage {
                start_ms: 2_000,
                end_ms: Some(12_000),
                refusals: 2
            }
        );
        assert_eq!(outages[0].seconds(0), 10.0);
        assert_eq!(outages[1].end_ms, None);
        assert_eq!(outages[1].seconds(21_000), 1.0);
        assert_eq!(r.total(), 3);
    }
}

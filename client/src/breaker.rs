//! The circuit breaker of one server, shared by every sender thread: after
//! `threshold` consecutive connection failures it opens and refuses
//! connections for `cooldown`, then lets exactly one probe through
//! (half-open); the probe's success closes it, its failure opens it again.
//! An open breaker makes threads wait, it does not burn their messages'
//! retries: a restarting server is waited for, not hammered.
//!
//! Only connection attempts go through it (they are what hammers a dead
//! server); it is touched once per connect, so a mutex costs nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out; others wait. If it never reports (its thread was
    /// stopped), another is allowed after `stale`.
    HalfOpen {
        stale: Instant,
    },
}

/// What a thread may do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Permit {
    /// Connect.
    Go,
    /// Connect as the half-open probe; report the result with `probe = true`.
    Probe,
    /// Do not connect; ask again after this long.
    Wait(Duration),
}

#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
    threshold: u32,
    cooldown: Duration,
    probe_patience: Duration,
    openings: AtomicU64,
}

impl Breaker {
    /// `probe_patience`: how long a probe may take (the connect timeout).
    pub fn new(threshold: u32, cooldown: Duration, probe_patience: Duration) -> Self {
        Breaker {
            state: Mutex::new(State::Closed { failures: 0 }),
            threshold: threshold.max(1),
            cooldown,
            probe_patience,
            openings: AtomicU64::new(0),
        }
    }

    pub fn acquire(&self, now: Instant) -> Permit {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Permit::Go,
            State::Open { until } if now < until => Permit::Wait(until - now),
            State::HalfOpen { stale } if now < stale => Permit::Wait(
                (stale - now)
                    .min(self.cooldown / 4)
                    .max(Duration::from_millis(1)),
            ),
            State::Open { .. } | State::HalfOpen { .. } => {
                *state = State::HalfOpen {
                    stale: now + self.probe_patience + self.cooldown,
                };
                Permit::Probe
            }
        }
    }

    /// A connection succeeded: close (a probe's success, or an attempt that
    /// began before the breaker opened — either way the server is up).
    pub fn success(&self) {
        *self.lock() = State::Closed { failures: 0 };
    }

    /// A connection failed. Returns true if this opened the breaker.
    pub fn failure(&self, now: Instant, probe: bool) -> bool {
        let mut state = self.lock();
        let open = match *state {
            State::Closed { failures } => failures + 1 >= self.threshold,
            // Only the probe's verdict reopens; stragglers that started
            // before the opening change nothing.
            State::HalfOpen { .. } => probe,
            State::Open { .. } => false,
        };
        if open {
            *state = State::Open {
                until: now + self.cooldown,
            };
            self.openings.fetch_add(1, Ordering::Relaxed);
        } else if let State::Closed { failures } = &mut *state {
            *failures += 1;
        }
        open
    }

    /// Times the breaker opened.
    pub fn openings(&self) -> u64 {
        self.openings.load(Ordering::Relaxed)
    }

    pub fn is_closed(&self) -> bool {
        matches!(*self.lock(), State::Closed { .. })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state invalid.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn opens_after_threshold_then_probes_once_then_closes() {
        let b = Breaker::new(3, 100 * MS, 50 * MS);
        let t = Instant::now();
        assert_eq!(b.acquire(t), Permit::Go);
        assert!(!b.failure(t, false));
        assert!(!b.failure(t, false));
        // The third consecutive failure opens it.
        assert!(b.failure(t, false));
        assert_eq!(b.openings(), 1);
        assert_eq!(b.acquire(t + 10 * MS), Permit::Wait(90 * MS));
        // After the cooldown exactly one thread gets the probe.
        assert_eq!(b.acquire(t + 100 * MS), Permit::Probe);
        assert!(matches!(b.acquire(t + 101 * MS), Permit::Wait(_)));
        b.success();
        assert!(b.is_closed());
        assert_eq!(b.acquire(t + 102 * MS), Permit::Go);
    }

    #[test]
    fn a_failed_probe_reopens_and_counts() {
        let b = Breaker::new(1, 100 * MS, 50 * MS);
        let t = Instant::now();
        assert!(b.failure(t, false));
        assert_eq!(b.acquire(t + 100 * MS), Permit::Probe);
        // A straggler's failure does not reopen; the probe's does.
        assert!(!b.failure(t + 100 * MS, false));
        assert!(b.failure(t + 120 * MS, true));
        assert_eq!(b.openings(), 2);
        assert_eq!(b.acquire(t + 130 * MS), Permit::Wait(90 * MS));
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let b = Breaker::new(2, 100 * MS, 50 * MS);
        let t = Instant::now();
        assert!(!b.failure(t, false));
        b.success();
        assert!(!b.failure(t, false));
        assert_eq!(b.acquire(t), Permit::Go);
    }

    #[test]
    fn a_lost_probe_is_replaced() {
        // A probe whose thread never reports does not wedge the breaker.
        let b = Breaker::new(1, 100 * MS, 50 * MS);
        let t = Instant::now();
        b.failure(t, false);
        assert_eq!(b.acquire(t + 100 * MS), Permit::Probe);
        assert_eq!(b.acquire(t + 260 * MS), Permit::Probe);
    }
}

//! The one jittered back-off and the one shutdown signal every ChatFlow
//! thread that retries or waits uses (server publishers and subscriber,
//! consumer threads, links and writers, the load client's senders).
//!
//! Jitter matters: a Redis or broker restart is seen by a hundred consumer
//! threads at once, and without it they would all reconnect in the same
//! millisecond, every time.
//!
//! Shutdown is a channel on which nothing is ever sent: dropping its
//! [`ShutdownTrigger`] wakes every `select!` on it and every [`wait`] at
//! once, so no thread is stuck behind a sleep when the process stops.

use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

/// Delays that double from `min` to `max`, each drawn from [d/2, d).
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    state: u64,
}

impl Backoff {
    /// `seed` decorrelates threads (e.g. the consumer's index).
    pub fn new(min: Duration, max: Duration, seed: u64) -> Self {
        Backoff {
            min,
            max,
            next: min,
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03,
        }
    }

    /// The next delay to wait.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        self.jittered(base)
    }

    /// The delay after `attempts` failures of one thing, without keeping a
    /// `Backoff` per thing (a client with thousands of messages retrying
    /// keeps only their attempt counts): what the `attempts`-th
    /// [`next_delay`](Self::next_delay) after a reset would give.
    pub fn delay_after(&mut self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(31);
        let base = self
            .min
            .checked_mul(1 << doublings)
            .map_or(self.max, |d| d.min(self.max));
        self.jittered(base)
    }

    /// A delay drawn from [base/2, base).
    fn jittered(&mut self, base: Duration) -> Duration {
        let half = base / 2;
        let nanos = half.as_nanos().max(1) as u64;
        half + Duration::from_nanos(self.random() % nanos)
    }

    /// Back to the shortest delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// splitmix64: enough to spread retries, no dependency.
    fn random(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The listening side of the shutdown signal: clone it into every thread;
/// `select!` on it (`recv(shutdown) -> _`) or call [`wait`] and
/// [`is_shutdown`].
pub type Shutdown = Receiver<()>;

/// The signalling side: [`ShutdownTrigger::signal`] (or dropping it) tells
/// every [`Shutdown`] at once.
#[derive(Debug)]
pub struct ShutdownTrigger(Option<Sender<()>>);

impl ShutdownTrigger {
    pub fn signal(&mut self) {
        self.0.take();
    }
}

/// A new shutdown signal: the trigger and its first listener.
pub fn shutdown_signal() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = crossbeam_channel::bounded(0);
    (ShutdownTrigger(Some(tx)), rx)
}

/// True once shutdown has been signalled.
pub fn is_shutdown(shutdown: &Shutdown) -> bool {
    matches!(
        shutdown.try_recv(),
        Err(crossbeam_channel::TryRecvError::Disconnected)
    )
}

/// Waits `delay`, or less if shutdown is signalled; true on shutdown.
pub fn wait(shutdown: &Shutdown, delay: Duration) -> bool {
    matches!(
        shutdown.recv_timeout(delay),
        Err(RecvTimeoutError::Disconnected) | Ok(())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter() {
        let min = Duration::from_millis(100);
        let max = Duration::from_millis(800);
        let mut b = Backoff::new(min, max, 7);
        let bases = [100, 200, 400, 800, 800];
        for base in bases {
            let d = b.next_delay();
            let base = Duration::from_millis(base);
            assert!(d >= base / 2 && d < base, "{d:?} vs {base:?}");
        }
        b.reset();
        assert!(b.next_delay() < min);
    }

    #[test]
    fn delay_after_matches_the_sequence_of_next_delays() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(800));
        let mut b = Backoff::new(min, max, 3);
        for (attempts, base) in [(0, 100), (1, 100), (2, 200), (3, 400), (4, 800), (40, 800)] {
            let d = b.delay_after(attempts);
            let base = Duration::from_millis(base);
            assert!(d >= base / 2 && d < base, "{attempts}: {d:?} vs {base:?}");
        }
    }

    #[test]
    fn wait_returns_early_on_shutdown() {
        let (mut trigger, rx) = shutdown_signal();
        assert!(!wait(&rx, Duration::from_millis(1)));
        assert!(!is_shutdown(&rx));
        trigger.signal();
        let started = Instant::now();
        assert!(wait(&rx, Duration::from_secs(10)));
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(is_shutdown(&rx));
    }
}

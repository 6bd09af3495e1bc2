//! Waiting for something another thread or process does: poll, with a
//! deadline, so a condition that never holds fails the test instead of
//! hanging it.

use std::thread;
use std::time::{Duration, Instant};

/// How often a condition is polled: often enough that a wait ends within a
/// few milliseconds of the condition holding, rarely enough that polling
/// `/health` in a loop is not itself load.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `condition` every [`POLL`] until it holds; panics naming `what`
/// once `timeout` has passed.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn returns_once_the_condition_holds() {
        let calls = Cell::new(0);
        wait_until("the third call", Duration::from_secs(5), || {
            calls.set(calls.get() + 1);
            calls.get() == 3
        });
        assert_eq!(calls.get(), 3);
    }

    #[test]
    #[should_panic(expected = "waiting for: never")]
    fn panics_after_the_timeout() {
        wait_until("never", Duration::from_millis(50), || false);
    }
}

//! The state of one link to an outside service (a RabbitMQ publisher's
//! connection, the Redis subscription), written by the thread that owns the
//! link and read by `/health`, which also asks since when a link has been
//! down (a short blip of the subscription is within its grace period).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Up, or down with a reason and since when.
#[derive(Default)]
pub struct LinkState {
    connected: AtomicBool,
    down: Mutex<Down>,
}

#[derive(Default)]
struct Down {
    reason: String,
    /// When the link went down (kept across failed reconnects).
    since: Option<Instant>,
}

impl LinkState {
    pub fn set_up(&self) {
        self.connected.store(true, Ordering::Release);
        let mut down = self.down.lock();
        down.reason.clear();
        down.since = None;
    }

    /// Marks the link down. A link already down keeps the time it went
    /// down: a failed reconnect does not restart the outage's clock.
    pub fn set_down(&self, reason: String) {
        let mut down = self.down.lock();
        self.connected.store(false, Ordering::Release);
        down.reason = reason;
        down.since.get_or_insert_with(Instant::now);
    }

    /// One atomic load: `publish` asks this for every message.
    pub fn is_up(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub fn reason(&self) -> String {
        self.down.lock().reason.clone()
    }

    /// How long the link has been down, or `None` while it is up. (A link
    /// never up yet counts as down for no time.)
    pub fn down_for(&self) -> Option<Duration> {
        if self.is_up() {
            return None;
        }
        let since = self.down.lock().since;
        Some(since.map_or(Duration::ZERO, |t| t.elapsed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_keeps_its_start_across_failed_reconnects() {
        let link = LinkState::default();
        link.set_up();
        assert_eq!(link.down_for(), None);
        link.set_down("connection lost".to_string());
        std::thread::sleep(Duration::from_millis(20));
        link.set_down("reconnecting: refused".to_string());
        assert!(link.down_for().unwrap() >= Duration::from_millis(20));
        assert_eq!(link.reason(), "reconnecting: refused");
        link.set_up();
        assert_eq!((link.down_for(), link.reason()), (None, String::new()));
    }
}

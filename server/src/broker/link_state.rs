//! The state of one link to an outside service (a RabbitMQ publisher's
//! connection, the Redis subscription), written by the thread that owns the
//! link and read by `/health`.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

/// Up, or down with a reason.
#[derive(Default)]
pub struct LinkState {
    connected: AtomicBool,
    reason: Mutex<String>,
}

impl LinkState {
    pub fn set_up(&self) {
        self.connected.store(true, Ordering::Release);
        self.reason.lock().clear();
    }

    pub fn set_down(&self, reason: String) {
        self.connected.store(false, Ordering::Release);
        *self.reason.lock() = reason;
    }

    /// One atomic load: `publish` asks this for every message.
    pub fn is_up(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub fn reason(&self) -> String {
        self.reason.lock().clone()
    }
}

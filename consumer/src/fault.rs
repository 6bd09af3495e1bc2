//! Fault injection for tests (hidden from the docs; not for production):
//! makes the writer or the queue consumer that handles a message with a
//! chosen text panic, so a test can prove a dead thread shows in
//! `/health` (`tests/persistence.rs`, `tests/delivery.rs`).
//!
//! Process-wide, keyed by the message text: a test arms it with a text
//! only its own messages carry, so tests running alongside are not hit.
//! Disarmed (always, outside such tests) it costs one relaxed atomic load
//! per batch.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

/// Where a fault strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    /// A PostgreSQL writer, on collecting a batch holding the row.
    Writer,
    /// A queue consumer, on decoding the delivery.
    QueueConsumer,
}

static ARMED: AtomicBool = AtomicBool::new(false);
static TRIGGERS: Mutex<Vec<(Site, String)>> = Mutex::new(Vec::new());

/// From now on, the thread at `site` that handles a message whose text is
/// exactly `text` panics.
pub fn panic_on(site: Site, text: &str) {
    TRIGGERS.lock().push((site, text.to_string()));
    ARMED.store(true, Ordering::Release);
}

/// True if any fault is armed (the cheap check before [`strike`]).
pub(crate) fn armed() -> bool {
    ARMED.load(Ordering::Relaxed)
}

/// Panics if a fault is armed at `site` for `text`.
pub(crate) fn strike(site: Site, text: &str) {
    let hit = TRIGGERS.lock().iter().any(|(s, t)| *s == site && t == text);
    if hit {
        panic!("fault injected at {site:?} for message {text:?}");
    }
}

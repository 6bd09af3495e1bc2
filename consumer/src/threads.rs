//! The consumer's long-lived threads: spawned named, told to stop by the
//! one shutdown signal, and watched — a thread that panics, or stops
//! before shutdown, is recorded here, and `/health` reports it (status
//! `degraded`, naming the thread), instead of its queues stalling with
//! nothing to show why.
//!
//! A panic is caught at the top of the thread ([`std::panic::catch_unwind`]
//! around its body); the default panic hook has already logged it with its
//! backtrace. Unwinding drops what the thread owned — a queue consumer's
//! channel (the broker requeues its unacked deliveries), a writer's input
//! (its consumers notice and stop) — so nothing is held for ever.

use std::any::Any;
use std::fmt::Display;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use chatflow_broker::retry::{is_shutdown, Shutdown};
use parking_lot::Mutex;
use serde::Serialize;

/// A thread that ended before shutdown, or panicked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadThread {
    pub name: String,
    /// `panicked: …` or `stopped: …`.
    pub reason: String,
    /// It panicked (rather than returning early).
    #[serde(skip)]
    pub panicked: bool,
}

/// The shutdown signal every thread listens to, and the record of the
/// threads that died.
pub struct Threads {
    shutdown: Shutdown,
    /// How many entries `dead` has: read without the lock on every
    /// `/health`.
    dead_count: AtomicUsize,
    dead: Mutex<Vec<DeadThread>>,
}

impl Threads {
    /// `shutdown` is the listening side of the process's one shutdown
    /// signal.
    pub fn new(shutdown: Shutdown) -> Arc<Threads> {
        Arc::new(Threads {
            shutdown,
            dead_count: AtomicUsize::new(0),
            dead: Mutex::new(Vec::new()),
        })
    }

    /// The shutdown signal, to clone into a thread.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// True once shutdown has been signalled.
    pub fn is_shutting_down(&self) -> bool {
        is_shutdown(&self.shutdown)
    }

    /// The threads that died so far, in the order they died.
    pub fn dead(&self) -> Vec<DeadThread> {
        if self.dead_count.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        self.dead.lock().clone()
    }

    fn record(&self, name: String, reason: String, panicked: bool) {
        tracing::error!("{name}: thread {reason}");
        self.dead.lock().push(DeadThread {
            name,
            reason,
            panicked,
        });
        self.dead_count.fetch_add(1, Ordering::Release);
    }

    /// Spawns a named thread running `body`. A panic is recorded always; an
    /// `Err` (the thread stopped early, saying why) only when it comes
    /// before shutdown — during shutdown stopping is the point.
    pub fn spawn<R, F>(
        self: &Arc<Self>,
        name: impl Into<String>,
        body: F,
    ) -> io::Result<JoinHandle<()>>
    where
        R: Ending,
        F: FnOnce() -> R + Send + 'static,
    {
        let threads = self.clone();
        let name = name.into();
        let thread_name = name.clone();
        thread::Builder::new().name(thread_name).spawn(move || {
            // Unwind safety: what a panicking body shares is atomics,
            // parking_lot locks (never poisoned) and channels.
            match panic::catch_unwind(AssertUnwindSafe(body)).map(Ending::early_stop) {
                Ok(None) => {}
                Ok(Some(why)) => {
                    if !threads.is_shutting_down() {
                        threads.record(name, format!("stopped: {why}"), false);
                    }
                }
                Err(payload) => {
                    let why = panic_message(payload.as_ref());
                    threads.record(name, format!("panicked: {why}"), true);
                }
            }
        })
    }
}

/// What a thread body returns: `()` for a thread that only ends on
/// shutdown, or a `Result` whose `Err` says why it stopped early.
pub trait Ending {
    /// Why the thread stopped early, if it says.
    fn early_stop(self) -> Option<String>;
}

impl Ending for () {
    fn early_stop(self) -> Option<String> {
        None
    }
}

impl<E: Display> Ending for Result<(), E> {
    fn early_stop(self) -> Option<String> {
        self.err().map(|e| e.to_string())
    }
}

/// The message a panic was raised with (`panic!("…")` gives a `&str` or a
/// `String`).
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(not a string)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatflow_broker::shutdown_signal;

    #[test]
    fn panics_and_early_stops_are_recorded_and_stops_in_shutdown_are_not() {
        let (mut trigger, shutdown) = shutdown_signal();
        let threads = Threads::new(shutdown);
        let ok = threads.spawn("ok", || {});
        fn boom() {
            panic!("injected {}", 7)
        }
        let boom = threads.spawn("boom", boom);
        let early = threads.spawn("early", || Err::<(), _>("no input"));
        for t in [ok, boom, early] {
            t.unwrap().join().expect("the panic is caught");
        }
        let dead = threads.dead();
        assert_eq!(dead.len(), 2, "{dead:?}");
        let boom = dead.iter().find(|d| d.name == "boom").unwrap();
        assert_eq!(boom.reason, "panicked: injected 7");
        assert!(boom.panicked);
        let early = dead.iter().find(|d| d.name == "early").unwrap();
        assert_eq!(early.reason, "stopped: no input");
        assert!(!early.panicked);

        trigger.signal();
        threads
            .spawn("late", || Err::<(), _>("shutting down"))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(threads.dead().len(), 2, "a stop during shutdown is normal");
    }
}

//! The sampler thread (`consumer-stats`): once a second it snapshots the
//! counters for the rates, and PINGs Redis so that `/health` shows a Redis
//! outage even while no message flows (the queue consumers only learn of
//! one when they publish).

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use chatflow_broker::retry::wait;

use crate::broadcast::Probe;
use crate::state::Shared;

/// How often the sampler snapshots counters and pings Redis: the rates'
/// resolution.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Starts the sampler with its Redis probe (see [`Probe::with_limit`]: a
/// PING must not delay a sample much); it runs until shutdown.
pub fn start(shared: &Arc<Shared>, mut probe: Probe) -> io::Result<JoinHandle<()>> {
    let shared = shared.clone();
    let shutdown = shared.threads.shutdown().clone();
    let threads = shared.threads.clone();
    threads.spawn("consumer-stats", move || {
        shared.sample();
        while !wait(&shutdown, SAMPLE_EVERY) {
            shared.sample();
            let state = &shared.counters.redis_probe;
            match probe.ping() {
                Ok(()) => state.up.store(true, Ordering::Relaxed),
                Err(e) => {
                    state.up.store(false, Ordering::Relaxed);
                    *state.last_error.lock() = Some(e.to_string());
                }
            }
        }
    })
}

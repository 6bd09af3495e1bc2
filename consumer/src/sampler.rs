//! The sampler thread (`consumer-stats`): once a second it snapshots the
//! counters for the rates, copies the writers' cumulative histograms and
//! the queue consumers' lag for the 10 s latency window, and publishes
//! this consumer's CONSUMER SNAPSHOT ([`ConsumerSnapshot`]) to the fleet
//! registry in Redis (`chatflow_broker::fleet`: `SET … EX 10`, `ZADD`,
//! prune — one pipeline) on its own probe connection.
//!
//! That pipeline is also the Redis probe: its outcome is what `/health`
//! shows as `pingOk`, so an idle consumer still reports a Redis outage
//! (the queue consumers only learn of one when they publish). It never
//! delays a sample much: the probe gives up within a second
//! ([`Probe::with_limit`]). On shutdown the snapshot is withdrawn (one
//! attempt), so a consumer that stopped cleanly leaves the fleet at once;
//! one that crashed leaves when its key expires.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chatflow_broker::fleet::Registry;
use chatflow_broker::retry::wait;
use chatflow_protocol::ServerTime;

use crate::broadcast::Probe;
use crate::health::Health;
use crate::snapshot::{ConsumerSnapshot, SnapshotWindows};
use crate::state::Shared;

/// How often the sampler snapshots counters and publishes: the rates'
/// resolution, and a tenth of the fleet snapshot's lifetime.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Starts the sampler with its Redis probe (see [`Probe::with_limit`]: a
/// publish must not delay a sample much); it runs until shutdown.
pub fn start(shared: &Arc<Shared>, probe: Probe) -> io::Result<JoinHandle<()>> {
    let mut sampler = Sampler {
        registry: Registry::consumers(&shared.config.services.topology),
        shared: shared.clone(),
        probe,
        windows: SnapshotWindows::new(),
    };
    let shutdown = shared.threads.shutdown().clone();
    let threads = shared.threads.clone();
    threads.spawn("consumer-stats", move || {
        sampler.tick();
        while !wait(&shutdown, SAMPLE_EVERY) {
            sampler.tick();
        }
        sampler.withdraw();
    })
}

/// The sampler thread's state.
struct Sampler {
    shared: Arc<Shared>,
    probe: Probe,
    registry: Registry,
    windows: SnapshotWindows,
}

impl Sampler {
    fn tick(&mut self) {
        let shared = &self.shared;
        shared.sample();
        let counters = &shared.counters;
        let lag_ms = counters.histograms().lag_ms;
        (self.windows).push(Instant::now(), counters.writer_histograms(), lag_ms);
        let at = ServerTime::now();
        let health = Health::of(shared);
        let id = &shared.config.consumer_id;
        let snapshot = ConsumerSnapshot::of(id, &health, &self.windows, at);
        let state = &shared.counters.redis_probe;
        let published = serde_json::to_string(&snapshot)
            .map_err(|e| format!("encoding the snapshot: {e}"))
            .and_then(|document| {
                (self.probe)
                    .publish(&self.registry, id, &document, at.0)
                    .map_err(|e| e.to_string())
            });
        match published {
            Ok(()) => state.up.store(true, Ordering::Relaxed),
            Err(e) => {
                state.up.store(false, Ordering::Relaxed);
                *state.last_error.lock() = Some(e);
            }
        }
    }

    fn withdraw(&mut self) {
        let id = &self.shared.config.consumer_id;
        if let Err(e) = self.probe.withdraw(&self.registry, id) {
            tracing::warn!(
                "consumer-stats: could not withdraw the fleet snapshot ({e}); it expires by itself"
            );
        }
    }
}

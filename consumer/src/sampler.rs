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
//!
//! In a fleet of `--instances N > 1` the same tick also writes this
//! instance's owner advert and reads the others' ([`crate::owners`]), and
//! tells each standby queue consumer when its owner's newest advertised
//! registration was made (`owner_registered_ms`); without an answer it
//! tells them nothing (0), so a Redis outage never makes a standby hand
//! back.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chatflow_broker::fleet::Registry;
use chatflow_broker::retry::wait;
use chatflow_protocol::ServerTime;

use crate::assignment::{Duty, Standby};
use crate::broadcast::Probe;
use crate::health::Health;
use crate::owners::{self, Advert};
use crate::snapshot::{ConsumerSnapshot, SnapshotWindows};
use crate::state::Shared;

/// How often the sampler snapshots counters and publishes: the rates'
/// resolution, and a tenth of the fleet snapshot's lifetime.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Starts the sampler with its Redis probe (see [`Probe::with_limit`]: a
/// publish must not delay a sample much); it runs until shutdown.
pub fn start(shared: &Arc<Shared>, probe: Probe) -> io::Result<JoinHandle<()>> {
    let config = &shared.config;
    let assignment = config.assignment;
    let topology = &config.services.topology;
    let adverts = assignment.is_shared().then(|| Adverts {
        mine: owners::key(topology, assignment.instances, assignment.instance),
        // Only a standby needs to read the others'.
        others: match assignment.standby {
            Standby::After(_) => (1..=assignment.instances)
                .filter(|&k| k != assignment.instance)
                .map(|k| owners::key(topology, assignment.instances, k))
                .collect(),
            Standby::Off => Vec::new(),
        },
    });
    let mut sampler = Sampler {
        registry: Registry::consumers(topology),
        shared: shared.clone(),
        probe,
        windows: SnapshotWindows::new(),
        adverts,
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
    /// In a fleet of several instances.
    adverts: Option<Adverts>,
}

/// The owner adverts this instance writes and reads.
struct Adverts {
    mine: String,
    others: Vec<String>,
}

impl Sampler {
    fn tick(&mut self) {
        let shared = &self.shared;
        shared.sample();
        let counters = &shared.counters;
        let histograms = counters.histograms();
        let health = Health::with_histograms(shared, &histograms);
        let writers = counters.writer_histograms();
        (self.windows).push(Instant::now(), writers, histograms.lag_ms);
        let at = ServerTime::now();
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
        self.advertise();
    }

    /// Writes this instance's owner advert, reads the others', and tells
    /// the standby queue consumers what it saw.
    fn advertise(&mut self) {
        let Some(adverts) = self.adverts.as_mut() else {
            return;
        };
        let shared = &self.shared;
        let id = &shared.config.consumer_id;
        let mut advert = Advert {
            consumer_id: id.clone(),
            ..Advert::default()
        };
        for (slot, stats) in shared.queues.iter().zip(&shared.counters.queues) {
            if slot.duty == Duty::Owner {
                if let Some(registration) = stats.holding.lock().registration() {
                    (advert.queues).insert(slot.name.clone(), registration.at_ms);
                }
            }
        }
        let (mine, others) = (&adverts.mine, &adverts.others);
        let read = (self.probe).call(|con| owners::exchange(con, (mine, &advert), others));
        let seen = match read {
            Ok(found) => owners::newest(&found),
            Err(e) => {
                tracing::debug!("consumer-stats: owner adverts: {e}");
                Default::default()
            }
        };
        for (slot, stats) in shared.queues.iter().zip(&shared.counters.queues) {
            if slot.duty == Duty::Standby {
                let at = seen.get(&slot.name).copied().unwrap_or(0);
                stats.owner_registered_ms.store(at, Ordering::Relaxed);
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
        if let Some(adverts) = &self.adverts {
            let key = &adverts.mine;
            if let Err(e) = self.probe.call(|con| owners::withdraw(con, key)) {
                tracing::warn!(
                    "consumer-stats: could not withdraw the owner advert ({e}); it expires by itself"
                );
            }
        }
    }
}

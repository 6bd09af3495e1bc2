//! The `fleet-stats` thread: once a second it takes this server's health,
//! turns it into a [`ServerSnapshot`] (rates from the [`TotalsWindow`],
//! ack-latency quantiles from the [`LatencyWindow`]),
//! keeps it in [`Latest`] (what the API shows with `--broker memory` or
//! `none`, `source: "local"`), and with `--broker rabbitmq` publishes it
//! to the fleet registry in Redis (`chatflow_broker::fleet`: one pipeline,
//! `SET … EX 10`, `ZADD`, prune).
//!
//! Workers never wait on this thread: it only reads their counters (relaxed
//! atomics, as `/health` does), so a Redis outage cannot block or slow a
//! worker. While Redis is away the snapshot still updates in memory; every
//! snapshot that does not reach Redis is counted (`failures`) and the last
//! error kept ([`PublishStats`]), and the connection is retried with the
//! workspace's one jittered [`Backoff`] — between attempts, ticks skip
//! Redis rather than piling up connects. Each Redis call is bounded by
//! the configured Redis timeout (`--redis-timeout-secs`).
//!
//! Stopping: the thread ends on the [`Shutdown`] it is given and, on the
//! way out, withdraws its snapshot from Redis (one attempt), so a server
//! that stopped cleanly leaves the fleet at once; one that crashed leaves
//! when its key expires (10 s).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chatflow_broker::fleet::{Registry, SNAPSHOT_TTL};
use chatflow_broker::retry::wait;
use chatflow_broker::{Backoff, RedisConnector, Shutdown};
use chatflow_protocol::ServerTime;
use parking_lot::Mutex;
use serde::Serialize;

use super::snapshot::{Latest, ServerSnapshot, TotalsWindow};
use crate::config::{BrokerKind, Config};
use crate::latency::LatencyWindow;
use crate::stats::Health;

/// How often a snapshot is taken and published: the API's "at most ~1 s
/// old", and a tenth of the key's lifetime.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Back-off between Redis connection attempts: from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Where the publisher takes this server's health from: the lead's wiring
/// passes `move || shared.health(&*broker)`, a test a running server's
/// [`Server::health`](crate::Server::health).
pub type HealthSource = Box<dyn Fn() -> Health + Send>;

/// How publishing goes, for `/health` or the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishStats {
    /// Snapshots go to Redis (`--broker rabbitmq`); otherwise they stay
    /// local and the counts below stay 0.
    pub redis: bool,
    /// The last publish reached Redis.
    pub connected: bool,
    /// Snapshots written to Redis.
    pub published: u64,
    /// Snapshots that did not reach Redis: failed, or skipped while the
    /// connection backs off.
    pub failures: u64,
    /// Why the last failure failed (kept after recovery).
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Counts {
    connected: AtomicBool,
    published: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Counts {
    fn failed(&self, error: String) {
        self.connected.store(false, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock() = Some(error);
    }
}

/// The running `fleet-stats` thread and what it shares.
pub struct StatsPublisher {
    latest: Latest,
    counts: Arc<Counts>,
    redis: bool,
    thread: Option<JoinHandle<()>>,
}

impl StatsPublisher {
    /// Starts the thread: a first snapshot at once, then one every
    /// [`PUBLISH_EVERY`], published to Redis when `config.broker` is
    /// RabbitMQ, until `shutdown`. Only spawning can fail; Redis being
    /// away is a counted failure, retried, never an error here.
    pub fn start(
        config: &Config,
        health: HealthSource,
        shutdown: Shutdown,
    ) -> io::Result<StatsPublisher> {
        let latest = Latest::default();
        let counts = Arc::new(Counts::default());
        let mut sink = match config.broker {
            BrokerKind::Rabbitmq => Some(RedisSink::new(config).map_err(io::Error::other)?),
            BrokerKind::Memory | BrokerKind::None => None,
        };
        let redis = sink.is_some();
        let thread = {
            let (latest, counts) = (latest.clone(), counts.clone());
            std::thread::Builder::new()
                .name("fleet-stats".to_string())
                .spawn(move || {
                    let mut window = TotalsWindow::default();
                    let mut acks = LatencyWindow::default();
                    loop {
                        let started = Instant::now();
                        let health = health();
                        window.push(started, health.totals.clone());
                        acks.push(started, health.ack_latency.clone());
                        let snapshot = ServerSnapshot::of(
                            &health,
                            window.rates(),
                            acks.recent().quantiles_ms(),
                            ServerTime::now(),
                        );
                        if let Some(sink) = &mut sink {
                            sink.publish(&snapshot, &counts);
                        }
                        latest.set(snapshot);
                        if wait(&shutdown, PUBLISH_EVERY.saturating_sub(started.elapsed())) {
                            break;
                        }
                    }
                    if let Some(sink) = &mut sink {
                        sink.withdraw();
                    }
                })?
        };
        Ok(StatsPublisher {
            latest,
            counts,
            redis,
            thread: Some(thread),
        })
    }

    /// A handle on the latest snapshot (for [`FleetReader`](super::FleetReader)
    /// with `--broker memory` or `none`).
    pub fn latest(&self) -> Latest {
        self.latest.clone()
    }

    pub fn stats(&self) -> PublishStats {
        let c = &self.counts;
        PublishStats {
            redis: self.redis,
            connected: c.connected.load(Ordering::Relaxed),
            published: c.published.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            last_error: c.last_error.lock().clone(),
        }
    }

    /// Waits for the thread to end: call after signalling its shutdown
    /// (it may take up to the Redis timeout, for a call in flight and the
    /// withdrawal).
    pub fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The Redis side: one connection, reconnected with back-off.
struct RedisSink {
    redis: RedisConnector,
    address: String,
    registry: Registry,
    id: String,
    con: Option<redis::Connection>,
    backoff: Backoff,
    /// While disconnected: no attempt before this.
    retry_at: Option<Instant>,
}

impl RedisSink {
    fn new(config: &Config) -> redis::RedisResult<Self> {
        let redis = &config.services.redis;
        // Decorrelated across servers: a Redis restart must not bring the
        // whole fleet's publishers back in the same millisecond.
        let seed = u64::from(std::process::id()) << 8 | 0xf1;
        Ok(RedisSink {
            redis: RedisConnector::new(redis),
            address: redis.display(),
            registry: Registry::servers(&config.services.topology),
            id: config.server_id.clone(),
            con: None,
            backoff: Backoff::new(BACKOFF_FIRST, BACKOFF_MAX, seed),
            retry_at: None,
        })
    }

    fn publish(&mut self, snapshot: &ServerSnapshot, counts: &Counts) {
        if self.con.is_none() {
            if self.retry_at.is_some_and(|at| Instant::now() < at) {
                // Not published either; the error that started the outage
                // stays the last one.
                counts.failures.fetch_add(1, Ordering::Relaxed);
                return;
            }
            match self.redis.connect() {
                Ok(con) => self.con = Some(con),
                Err(e) => return self.lost(counts, format!("connecting: {e}")),
            }
        }
        let con = self.con.as_mut().expect("connected above");
        let document = match serde_json::to_string(snapshot) {
            Ok(document) => document,
            Err(e) => return counts.failed(format!("encoding the snapshot: {e}")),
        };
        let now_ms = snapshot.published_at.0;
        match (self.registry).publish(con, &self.id, &document, SNAPSHOT_TTL, now_ms) {
            Ok(()) => {
                if !counts.connected.swap(true, Ordering::Relaxed) && self.retry_at.is_some() {
                    tracing::info!("fleet-stats: publishing to Redis at {} again", self.address);
                }
                counts.published.fetch_add(1, Ordering::Relaxed);
                self.backoff.reset();
                self.retry_at = None;
            }
            Err(e) => self.lost(counts, format!("publishing: {e}")),
        }
    }

    /// The connection failed: drop it and back off before the next try.
    fn lost(&mut self, counts: &Counts, error: String) {
        if self.retry_at.is_none() {
            tracing::warn!("fleet-stats: redis at {}: {error}", self.address);
        }
        self.con = None;
        self.retry_at = Some(Instant::now() + self.backoff.next_delay());
        counts.failed(format!("redis at {}: {error}", self.address));
    }

    /// Removes this server from the registry: one attempt, on a clean stop.
    fn withdraw(&mut self) {
        let con = match self.con.take() {
            Some(con) => Ok(con),
            None => self.redis.connect(),
        };
        if let Err(e) = con.and_then(|mut con| self.registry.withdraw(&mut con, &self.id)) {
            tracing::warn!(
                "fleet-stats: could not withdraw from Redis at {} ({e}); the snapshot expires in {}s",
                self.address,
                SNAPSHOT_TTL.as_secs()
            );
        }
    }
}

//! Starting and stopping the consumer: connections, channels and threads,
//! and an orderly shutdown.
//!
//! Start-up order: Redis is reachable; the AMQP connections open; the
//! topology is declared (idempotent, shared with the server); one channel
//! per queue is opened here, on the thread that owns the connections, and
//! moved into its consumer thread; the metrics port is bound. Anything that
//! fails up to there fails `start` with an error naming the setting to
//! check. Only then are threads spawned:
//!
//! - `consumer-r{room}s{shard}` × ROOMS×5: [`worker`](crate::worker);
//! - `amqp-link-N` × AMQP_CONNECTIONS: [`link`](crate::link), owning the
//!   connections (consumers are assigned in blocks of whole rooms);
//! - `writer-N` × WRITERS (persistence on): [`writer`](crate::writer);
//! - `partitions`: day-partition upkeep, hourly;
//! - `consumer-stats`: per-second rate snapshots and a Redis PING;
//! - `consumer-http`: `/health` and `/metrics` (plus a short-lived
//!   `consumer-http-c` per connection and `consumer-http-b` refusing
//!   connections past the cap).
//!
//! With persistence on, the database is checked first (reachable, schema
//! present or applied, partitions created) and the writers connect before
//! any consumer starts.
//!
//! Shutdown: consumers cancel, drain, broadcast what they hold, wait
//! (bounded) for its rows to commit, ack and close their channels; then the
//! links close the connections; then the writers flush and stop, and the
//! upkeep, sampler and HTTP threads stop. Every thread is joined.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use chatflow_protocol::SHARDS_PER_ROOM;
use crossbeam_channel::{bounded, unbounded, Sender};

use crate::broadcast::{self, Broadcaster, Probe};
use crate::config::Config;
use crate::http::HttpServer;
use crate::link::{self, Lease, Link};
use crate::partitions::{self, Pool};
use crate::stats::{Health, Shared};
use crate::worker::{Committed, Worker};
use crate::writer::{WriterConfig, Writers};
use chatflow_broker::retry::{wait, Shutdown};

/// Checks the database before anything starts: reachable, schema present
/// (applied first with `--apply-schema`), partitions of the coming days
/// created.
fn prepare_database(config: &Config) -> anyhow::Result<Pool> {
    let db = &config.database;
    let pool = partitions::pool(&db.connection_string(config.connect_timeout()))?;
    if db.apply_schema {
        partitions::apply_schema(&pool)
            .with_context(|| format!("applying database/schema.sql to {}", db.display()))?;
    }
    partitions::ensure_partitions(&pool).with_context(|| {
        format!(
            "PostgreSQL at {} is unreachable or has no ChatFlow schema (--db-host/--db-port/--db-user/--db-password/--db-name, DB_*; create it with database/setup_database.sh or --apply-schema)",
            db.display()
        )
    })?;
    Ok(pool)
}

/// How often the sampler snapshots counters and pings Redis.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// A running consumer. Dropping it shuts it down (ignoring errors); call
/// [`Consumer::shutdown`] to see them.
pub struct Consumer {
    shared: Arc<Shared>,
    metrics_addr: SocketAddr,
    /// Dropped to signal shutdown: every `select!` on it wakes at once.
    shutdown_tx: Option<Sender<()>>,
    workers: Vec<JoinHandle<()>>,
    links: Vec<JoinHandle<()>>,
    sampler: Option<JoinHandle<()>>,
    http: Option<HttpServer>,
    /// One per consumer thread, by index: where PostgreSQL writers report
    /// committed rows.
    commit_senders: Vec<Sender<Committed>>,
    /// Persistence: the writer threads, the pool and its upkeep thread.
    writers: Option<Writers>,
    upkeep: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    pool: Option<Pool>,
}

/// Which link (connection) each consumer uses: contiguous blocks of whole
/// rooms when there are at least as many rooms as links, so a lost
/// connection stalls a few whole rooms rather than a share of every room
/// (easy to read in `/health`'s per-room rates); otherwise blocks of
/// consumers, so every connection is used.
fn assign_links(consumers: usize, links: usize) -> Vec<usize> {
    let per_room = SHARDS_PER_ROOM as usize;
    let rooms = consumers / per_room;
    if rooms >= links {
        (0..consumers)
            .map(|i| (i / per_room) * links / rooms)
            .collect()
    } else {
        (0..consumers).map(|i| i * links / consumers).collect()
    }
}

impl Consumer {
    pub fn start(config: Config) -> anyhow::Result<Consumer> {
        config.validate()?;
        let topology = config.topology();
        broadcast::check(&config, config.connect_timeout()).with_context(|| {
            format!(
                "cannot reach Redis at {} (--redis-host/--redis-port, REDIS_HOST/REDIS_PORT)",
                config.redis_display()
            )
        })?;

        let consumers = config.consumer_count();
        let link_of = assign_links(consumers, config.amqp_connections);
        let shared = Arc::new(Shared::new(config.clone(), link_of.clone()));

        let mut connections = Vec::with_capacity(config.amqp_connections);
        for index in 0..config.amqp_connections {
            let connection = link::connect(&config).map_err(anyhow::Error::msg).with_context(|| {
                format!(
                    "cannot open AMQP connection {index} to RabbitMQ at {} as {:?} (--rabbitmq-host/--rabbitmq-port/--rabbitmq-user/--rabbitmq-password, RABBITMQ_*)",
                    config.amqp_display(),
                    config.services.amqp.user
                )
            })?;
            connections.push(connection);
        }
        link::declare(&mut connections[0], &topology).context(
            "declaring the topology (exchange, quorum queues, dead-letter path); queues declared earlier with other arguments are refused: DELIVERY_LIMIT and QUEUE_MAX_LENGTH must match the server's",
        )?;
        let mut leases = Vec::with_capacity(consumers);
        for &index in &link_of {
            let lease = link::lease(&mut connections[index], &shared)
                .context("opening a consumer channel")?;
            leases.push(lease);
        }
        let pool = if config.enable_persistence {
            Some(prepare_database(&config)?)
        } else {
            None
        };
        let listener = TcpListener::bind(config.metrics_bind).with_context(|| {
            format!(
                "cannot listen on {} (--metrics-bind, METRICS_BIND)",
                config.metrics_bind
            )
        })?;
        let metrics_addr = listener.local_addr()?;

        let (shutdown_tx, shutdown) = bounded::<()>(0);
        let mut consumer = Consumer {
            shared: shared.clone(),
            metrics_addr,
            shutdown_tx: Some(shutdown_tx),
            workers: Vec::with_capacity(consumers),
            links: Vec::with_capacity(config.amqp_connections),
            sampler: None,
            http: None,
            commit_senders: Vec::with_capacity(consumers),
            writers: None,
            upkeep: None,
            pool,
        };
        // From here on a failure shuts down what was started.
        if let Err(e) = consumer.spawn(connections, leases, &shutdown, listener) {
            let _ = consumer.stop();
            return Err(e);
        }
        Ok(consumer)
    }

    fn spawn(
        &mut self,
        connections: Vec<amiquip::Connection>,
        leases: Vec<Lease>,
        shutdown: &Shutdown,
        listener: TcpListener,
    ) -> anyhow::Result<()> {
        let shared = self.shared.clone();
        let config = &shared.config;
        let topology = config.topology();

        // Link plumbing first: each consumer needs its link's request sender.
        let mut requests = Vec::new();
        let mut slots: Vec<Vec<Sender<Lease>>> = vec![Vec::new(); connections.len()];
        let mut request_rxs = Vec::new();
        for _ in 0..connections.len() {
            let (tx, rx) = unbounded();
            requests.push(tx);
            request_rxs.push(rx);
        }

        // Commit notices: writers → consumer threads.
        let mut commit_rxs = Vec::with_capacity(leases.len());
        for _ in 0..leases.len() {
            let (commit_tx, commit_rx) = unbounded();
            self.commit_senders.push(commit_tx);
            commit_rxs.push(commit_rx);
        }
        let persistent = match &self.pool {
            Some(pool) => {
                let db = &config.database;
                let writer_config = WriterConfig {
                    connection: db.connection_string(config.connect_timeout()),
                    writers: db.writers,
                    batch_rows: db.batch_rows,
                    flush_interval: db.flush_interval,
                    // Every row a consumer can hold: sends never block.
                    queue_capacity: leases.len() * config.prefetch as usize,
                    retry_min: config.retry_min,
                    retry_max: config.retry_max,
                };
                let writers = Writers::start(
                    &writer_config,
                    shared.writers.clone(),
                    self.commit_senders.clone(),
                )
                .with_context(|| format!("starting the PostgreSQL writers ({})", db.display()))?;
                self.writers = Some(writers);
                let stop = Arc::new(AtomicBool::new(false));
                let thread = partitions::start_upkeep(pool.clone(), stop.clone())
                    .context("spawning the partition upkeep thread")?;
                self.upkeep = Some((stop, thread));
                true
            }
            None => false,
        };

        for ((index, first), commit_rx) in leases.into_iter().enumerate().zip(commit_rxs) {
            let (room, shard) = Shared::queue_of(index);
            let link_index = shared.link_of[index];
            let (lease_tx, lease_rx) = bounded(1);
            let slot = slots[link_index].len();
            slots[link_index].push(lease_tx);
            let name = format!("consumer-r{room}s{shard}");
            let worker = Worker {
                index,
                name: name.clone(),
                room,
                queue: topology.queue(room, shard),
                topology: topology.clone(),
                redis_channel: topology.redis_channel(room),
                shared: shared.clone(),
                broadcaster: Broadcaster::new(name.clone(), config, index as u64)
                    .context("configuring the Redis client")?,
                link: requests[link_index].clone(),
                slot,
                leases: lease_rx,
                commits: commit_rx,
                rows: persistent
                    .then(|| self.writers.as_ref().map(|w| w.sender_for(index)))
                    .flatten(),
                shutdown: shutdown.clone(),
            };
            let thread = thread::Builder::new()
                .name(name)
                .spawn(move || worker.run(first))
                .context("spawning a consumer thread")?;
            self.workers.push(thread);
        }
        // Only the consumers hold request senders now, so a link sees its
        // requests disconnect exactly when its last consumer has exited.
        drop(requests);

        for (index, ((connection, slots), requests)) in connections
            .into_iter()
            .zip(slots)
            .zip(request_rxs)
            .enumerate()
        {
            let link = Link {
                index,
                connection: Some(connection),
                slots,
                requests,
                shutdown: shutdown.clone(),
                shared: shared.clone(),
            };
            let thread = thread::Builder::new()
                .name(format!("amqp-link-{index}"))
                .spawn(move || link.run())
                .context("spawning a link thread")?;
            self.links.push(thread);
        }

        // A dark Redis must not hold the sampler for long.
        let mut quick = config.clone();
        let second = Duration::from_secs(1);
        quick.services.amqp.connect_timeout = quick.connect_timeout().min(second);
        quick.services.redis.timeout = quick.services.redis.timeout.min(second);
        let mut probe = Probe::new(&quick).context("configuring the Redis probe")?;
        let sampler_shared = shared.clone();
        let sampler_shutdown = shutdown.clone();
        self.sampler = Some(
            thread::Builder::new()
                .name("consumer-stats".to_string())
                .spawn(move || {
                    let shared = sampler_shared;
                    shared.sample();
                    while !wait(&sampler_shutdown, SAMPLE_EVERY) {
                        shared.sample();
                        let probe_state = &shared.redis_probe;
                        match probe.ping() {
                            Ok(()) => probe_state.up.store(true, Ordering::Relaxed),
                            Err(e) => {
                                probe_state.up.store(false, Ordering::Relaxed);
                                *probe_state.last_error.lock() = Some(e.to_string());
                            }
                        }
                    }
                })
                .context("spawning the sampler thread")?,
        );

        self.http =
            Some(HttpServer::start(listener, shared.clone()).context("spawning the HTTP thread")?);
        Ok(())
    }

    /// Where `/health` and `/metrics` are served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// The `/health` document.
    pub fn health(&self) -> Health {
        self.shared.health()
    }

    /// `/metrics` (Prometheus text).
    pub fn metrics(&self) -> String {
        self.shared.prometheus()
    }

    /// A read-only view of the counters that outlives the consumer (e.g.
    /// final totals after [`shutdown`](Self::shutdown)).
    pub fn monitor(&self) -> Monitor {
        Monitor(self.shared.clone())
    }

    /// Consumer threads, one per queue.
    pub fn consumers(&self) -> usize {
        self.shared.threads.len()
    }

    /// Where PostgreSQL writers report committed rows, by consumer index
    /// (room `i / 5 + 1`, shard `i % 5`).
    pub fn commit_senders(&self) -> &[Sender<Committed>] {
        &self.commit_senders
    }

    /// Stops consuming, finishes in-hand work (broadcast, ack), closes
    /// channels then connections, and joins every thread.
    pub fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        drop(self.shutdown_tx.take());
        let mut panicked = Vec::new();
        // Consumers first (they close their channels), then the links (they
        // close the connections once their consumers are gone).
        for thread in self.workers.drain(..).chain(self.links.drain(..)) {
            let name = thread.thread().name().unwrap_or("?").to_string();
            if thread.join().is_err() {
                panicked.push(name);
            }
        }
        if let Some(sampler) = self.sampler.take() {
            if sampler.join().is_err() {
                panicked.push("consumer-stats".to_string());
            }
        }
        // Writers after the consumers (which waited for their last commits);
        // then partition upkeep.
        if let Some(writers) = self.writers.take() {
            writers.shutdown();
        }
        if let Some((stop, thread)) = self.upkeep.take() {
            stop.store(true, Ordering::Release);
            if thread.join().is_err() {
                panicked.push("partitions".to_string());
            }
        }
        if let Some(mut http) = self.http.take() {
            if http.stop().is_err() {
                panicked.push("consumer-http".to_string());
            }
        }
        self.commit_senders.clear();
        if panicked.is_empty() {
            Ok(())
        } else {
            Err(anyhow!("threads panicked: {}", panicked.join(", ")))
        }
    }
}

/// See [`Consumer::monitor`].
#[derive(Clone)]
pub struct Monitor(Arc<Shared>);

impl Monitor {
    pub fn health(&self) -> Health {
        self.0.health()
    }

    pub fn metrics(&self) -> String {
        self.0.prometheus()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if self.shutdown_tx.is_some() {
            let _ = self.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_get_contiguous_blocks_of_whole_rooms() {
        let of = assign_links(100, 4);
        assert_eq!(of[0], 0);
        assert_eq!(of[24], 0);
        assert_eq!(of[25], 1);
        assert_eq!(of[99], 3);
        // 20 rooms over 4 links: every room's 5 shards share one link.
        for room in of.chunks(SHARDS_PER_ROOM as usize) {
            assert!(room.iter().all(|&l| l == room[0]));
        }
        // 3 rooms over 2 links: rooms stay whole.
        assert_eq!(assign_links(15, 2), [vec![0; 10], vec![1; 5]].concat());
        // 1 room over 4 links: every link used.
        assert_eq!(assign_links(5, 4), vec![0, 0, 1, 2, 3]);
    }
}

//! Starting and stopping the consumer ([`Consumer`]): connections,
//! channels and threads, and an orderly shutdown.
//!
//! Start-up order: Redis is reachable; the AMQP connections open; the
//! topology is declared (idempotent, shared with the server); one channel
//! per queue is opened here, on the thread that owns the connections, and
//! moved into its queue consumer's thread; the metrics port is bound.
//! Anything that fails up to there fails `start` with an error naming the
//! setting to check. Only then are threads spawned, every one through
//! [`Threads`] (named, watched for panics and early stops):
//!
//! - `consumer-r{room}s{shard}`, one per queue this instance consumes
//!   (ROOMS×5, or only its own share with `--no-standby`; see
//!   [`assignment`](crate::assignment)):
//!   [`queue_consumer`](crate::queue_consumer);
//! - `amqp-link-N` × AMQP_CONNECTIONS: [`link`], owning the
//!   connections (consumers are assigned in blocks of whole rooms);
//! - `writer-N` × WRITERS (persistence on): [`writer`](crate::writer);
//! - `partitions`: day-partition upkeep, hourly;
//! - `consumer-stats`: [`sampler`], per-second rate
//!   snapshots and a Redis PING;
//! - `consumer-http`: [`http`](crate::http), `/health` and `/metrics` (plus
//!   a short-lived `consumer-http-c` per connection and `consumer-http-b`
//!   refusing connections past the cap).
//!
//! With persistence on, the database is checked first (reachable, schema
//! present or applied, partitions created) and the writers connect before
//! any consumer starts.
//!
//! Shutdown is one signal ([`chatflow_broker::Shutdown`]), signalled in
//! one place ([`Consumer::shutdown`], or drop) and heard by every thread at
//! once: queue consumers stop taking deliveries, wait (bounded) for the
//! rows they handed over to commit, ack them and close their channels
//! without cancelling (the rest goes back to the queue's head, for the
//! next consumer: see [`queue_consumer`](crate::queue_consumer)); links
//! close the connections once their consumers are gone; writers write what
//! the consumers handed over and end when their inputs close (giving up at
//! once if the database is down); upkeep, sampler and HTTP threads stop.
//! Every thread is joined, in that order.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use chatflow_broker::{shutdown_signal, ShutdownTrigger};
use crossbeam_channel::{bounded, unbounded, Sender};

use crate::broadcast::{self, Broadcaster, Probe};
use crate::config::Config;
use crate::handoff::Committed;
use crate::health::Health;
use crate::http::HttpServer;
use crate::link::{self, Lease, Link};
use crate::metrics;
use crate::partitions::{self, Pool};
use crate::queue_consumer::QueueConsumer;
use crate::recent::RecentIds;

/// Ids a queue consumer remembers at most (see [`RecentIds`]): a queue
/// takes about 1/100 of the traffic, so 10,000 is minutes of it even at
/// tens of thousands of messages a second, for ≤ ~1 MB per consumer.
const RECENT_IDS_PER_CONSUMER: usize = 10_000;
use crate::sampler;
use crate::state::Shared;
use crate::threads::Threads;
use crate::writer::{WriterConfig, Writers};

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

/// A running consumer. Dropping it shuts it down (ignoring errors); call
/// [`Consumer::shutdown`] to see them.
pub struct Consumer {
    shared: Arc<Shared>,
    metrics_addr: SocketAddr,
    /// The one shutdown signal: signalled in [`Consumer::stop`], it wakes
    /// every thread's `select!` and `wait` at once.
    trigger: Option<ShutdownTrigger>,
    queue_consumers: Vec<JoinHandle<()>>,
    links: Vec<JoinHandle<()>>,
    sampler: Option<JoinHandle<()>>,
    http: Option<HttpServer>,
    /// Persistence: the writer threads, the pool and its upkeep thread.
    writers: Option<Writers>,
    upkeep: Option<JoinHandle<()>>,
    pool: Option<Pool>,
}

/// Which link (connection) each consumer uses, given each one's room:
/// contiguous blocks of whole rooms when there are at least as many rooms
/// as links, so a lost connection stalls a few whole rooms rather than a
/// share of every room (easy to read in `/health`'s per-room rates);
/// otherwise blocks of consumers, so every connection is used.
fn assign_links(room_of: &[u32], links: usize) -> Vec<usize> {
    let consumers = room_of.len();
    // Rank of each consumer's room among the rooms consumed (they come in
    // room order).
    let mut rank = Vec::with_capacity(consumers);
    let mut rooms = 0;
    for (i, room) in room_of.iter().enumerate() {
        if i > 0 && room_of[i - 1] != *room {
            rooms += 1;
        }
        rank.push(rooms);
    }
    let rooms = if consumers == 0 { 0 } else { rooms + 1 };
    if rooms >= links {
        rank.iter().map(|&r| r * links / rooms).collect()
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
        let room_of: Vec<u32> = config.queues().iter().map(|q| q.room).collect();
        let link_of = assign_links(&room_of, config.amqp_connections);
        let (trigger, shutdown) = shutdown_signal();
        let shared = Arc::new(Shared::new(
            config.clone(),
            link_of.clone(),
            Threads::new(shutdown),
        ));

        let mut connections = Vec::with_capacity(config.amqp_connections);
        for index in 0..config.amqp_connections {
            let connection = link::connect(&config).with_context(|| {
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

        let mut consumer = Consumer {
            shared,
            metrics_addr,
            trigger: Some(trigger),
            queue_consumers: Vec::with_capacity(consumers),
            links: Vec::with_capacity(config.amqp_connections),
            sampler: None,
            http: None,
            writers: None,
            upkeep: None,
            pool,
        };
        // From here on a failure shuts down what was started.
        if let Err(e) = consumer.spawn(connections, leases, listener) {
            let _ = consumer.stop();
            return Err(e);
        }
        Ok(consumer)
    }

    fn spawn(
        &mut self,
        connections: Vec<amiquip::Connection>,
        leases: Vec<Lease>,
        listener: TcpListener,
    ) -> anyhow::Result<()> {
        let shared = self.shared.clone();
        let config = &shared.config;
        let topology = config.topology();
        let threads = &shared.threads;
        let shutdown = threads.shutdown();

        // Link plumbing first: each consumer needs its link's request sender.
        let mut requests = Vec::new();
        let mut slots: Vec<Vec<Sender<Lease>>> = vec![Vec::new(); connections.len()];
        let mut request_rxs = Vec::new();
        for _ in 0..connections.len() {
            let (tx, rx) = unbounded();
            requests.push(tx);
            request_rxs.push(rx);
        }

        // Commit notices: writers → queue consumers. Only the writers hold
        // the senders, so a consumer sees its notices end with them.
        let (commit_txs, commit_rxs): (Vec<Sender<Committed>>, Vec<_>) =
            leases.iter().map(|_| unbounded()).unzip();
        if let Some(pool) = &self.pool {
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
                rollups: db.rollups,
            };
            let writers = Writers::start(
                &writer_config,
                shared.counters.writers.clone(),
                commit_txs,
                threads,
            )
            .with_context(|| format!("starting the PostgreSQL writers ({})", db.display()))?;
            self.writers = Some(writers);
            self.upkeep = Some(
                partitions::start_upkeep(pool.clone(), threads)
                    .context("spawning the partition upkeep thread")?,
            );
        }

        for ((index, first), commit_rx) in leases.into_iter().enumerate().zip(commit_rxs) {
            let slot_of = shared.queue_of(index).clone();
            let (room, shard) = (slot_of.room, slot_of.shard);
            let link_index = shared.link_of[index];
            let (lease_tx, lease_rx) = bounded(1);
            let slot = slots[link_index].len();
            slots[link_index].push(lease_tx);
            let name = format!("consumer-r{room}s{shard}");
            let queue_consumer = QueueConsumer {
                index,
                name: name.clone(),
                room,
                queue: slot_of.name.clone(),
                duty: slot_of.duty,
                topology: topology.clone(),
                shared: shared.clone(),
                broadcaster: Broadcaster::new(name.clone(), config, index as u64)
                    .context("configuring the Redis client")?,
                link: requests[link_index].clone(),
                slot,
                leases: lease_rx,
                commits: commit_rx,
                rows: self.writers.as_ref().map(|w| w.sender_for(index)),
                shutdown: shutdown.clone(),
                recent: RecentIds::new(config.services.dedup_window, RECENT_IDS_PER_CONSUMER),
            };
            let thread = threads
                .spawn(name, move || queue_consumer.run(first))
                .context("spawning a queue consumer thread")?;
            self.queue_consumers.push(thread);
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
            let thread = threads
                .spawn(format!("amqp-link-{index}"), move || link.run())
                .context("spawning a link thread")?;
            self.links.push(thread);
        }

        // A second at most per connect or PING: a sample is never later.
        let probe = Probe::with_limit(config, Duration::from_secs(1))
            .context("configuring the Redis probe")?;
        self.sampler = Some(sampler::start(&shared, probe).context("spawning the sampler thread")?);
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
        Health::of(&self.shared)
    }

    /// `/metrics` (OpenMetrics text).
    pub fn metrics(&self) -> String {
        metrics::encode(&self.shared)
    }

    /// A read-only view of the counters that outlives the consumer (e.g.
    /// final totals after [`shutdown`](Self::shutdown)).
    pub fn monitor(&self) -> Monitor {
        Monitor(self.shared.clone())
    }

    /// Queue consumers, one per queue.
    pub fn consumers(&self) -> usize {
        self.shared.counters.queues.len()
    }

    /// Stops consuming, finishes in-hand work (broadcast, ack), closes
    /// channels then connections, and joins every thread. An error names
    /// the threads that panicked while the consumer ran.
    pub fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        // The one place shutdown is signalled.
        if let Some(mut trigger) = self.trigger.take() {
            trigger.signal();
        }
        // Queue consumers first (they close their channels, waiting for
        // their last commits), then the links (they close the connections
        // once their consumers are gone), the sampler; then the writers,
        // whose inputs the consumers' exit has closed; partition upkeep and
        // the HTTP endpoint last.
        for thread in self
            .queue_consumers
            .drain(..)
            .chain(self.links.drain(..))
            .chain(self.sampler.take())
        {
            // Thread bodies catch their panics (see `threads`).
            let _ = thread.join();
        }
        if let Some(writers) = self.writers.take() {
            writers.shutdown();
        }
        if let Some(upkeep) = self.upkeep.take() {
            let _ = upkeep.join();
        }
        if let Some(http) = self.http.take() {
            http.join();
        }
        let panicked: Vec<String> = self
            .shared
            .threads
            .dead()
            .into_iter()
            .filter(|d| d.panicked)
            .map(|d| d.name)
            .collect();
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
        Health::of(&self.0)
    }

    pub fn metrics(&self) -> String {
        metrics::encode(&self.0)
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if self.trigger.is_some() {
            let _ = self.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatflow_protocol::SHARDS_PER_ROOM;

    /// The rooms of every queue of `rooms` rooms.
    fn all(rooms: u32) -> Vec<u32> {
        (1..=rooms).flat_map(|r| [r; 5]).collect()
    }

    #[test]
    fn links_get_contiguous_blocks_of_whole_rooms() {
        let of = assign_links(&all(20), 4);
        assert_eq!(of[0], 0);
        assert_eq!(of[24], 0);
        assert_eq!(of[25], 1);
        assert_eq!(of[99], 3);
        // 20 rooms over 4 links: every room's 5 shards share one link.
        for room in of.chunks(SHARDS_PER_ROOM as usize) {
            assert!(room.iter().all(|&l| l == room[0]));
        }
        // 3 rooms over 2 links: rooms stay whole.
        assert_eq!(assign_links(&all(3), 2), [vec![0; 10], vec![1; 5]].concat());
        // 1 room over 4 links: every link used.
        assert_eq!(assign_links(&all(1), 4), vec![0, 0, 1, 2, 3]);
        // An instance's own share (no standby): rooms stay whole too.
        assert_eq!(
            assign_links(&[1, 1, 1, 2, 2, 3, 3, 3], 3),
            vec![0, 0, 0, 1, 1, 2, 2, 2]
        );
    }
}

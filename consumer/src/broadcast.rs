//! A queue consumer's Redis side: its own connection, one pipelined
//! `PUBLISH` per batch, and retry-until-published while Redis is away.
//!
//! Why a connection per consumer thread: a pipeline is one write and one
//! read, so a thread never waits behind another thread's batch, and a
//! broken connection only costs the batch that was on it. A hundred idle
//! connections cost Redis next to nothing.
//!
//! While Redis is down the batch is kept and retried with back-off; the
//! thread does not ack meanwhile, so the broker stops sending once the
//! prefetch is in hand — memory stays bounded and nothing is lost. On
//! shutdown the retrying stops and the batch is given up unacked: the broker
//! redelivers it to the next consumer.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::{Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisResult};

use crate::config::Config;
use crate::counters::{add, QueueStats};
use chatflow_broker::fleet::{Registry, SNAPSHOT_TTL};
use chatflow_broker::retry::{is_shutdown, wait, Backoff, Shutdown};

/// Log the first failure of an outage and then every this many, so a long
/// outage does not flood the log with a hundred threads' retries.
const LOG_EVERY: u64 = 50;

/// What became of a batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Published {
    /// Every publish in the pipeline was accepted by Redis.
    Yes,
    /// Shutdown came while Redis was failing: the batch was not published.
    GaveUp,
}

/// How to reach Redis (shared by consumers and the sampler's probe).
pub fn client(config: &Config) -> RedisResult<Client> {
    let info: ConnectionInfo = ConnectionAddr::Tcp(
        config.services.redis.host.clone(),
        config.services.redis.port,
    )
    .into_connection_info()?;
    Client::open(info)
}

/// A connection with every timeout set, so no call can hang a thread.
pub fn connect(client: &Client, config: &Config) -> RedisResult<redis::Connection> {
    let con = client.get_connection_with_timeout(config.connect_timeout())?;
    con.set_read_timeout(Some(config.services.redis.timeout))?;
    con.set_write_timeout(Some(config.services.redis.timeout))?;
    Ok(con)
}

/// One consumer thread's broadcaster.
pub struct Broadcaster {
    name: String,
    client: Client,
    config: Config,
    con: Option<redis::Connection>,
    /// A connection failed and has not been replaced yet.
    broken: bool,
    backoff: Backoff,
}

impl Broadcaster {
    pub fn new(name: String, config: &Config, seed: u64) -> RedisResult<Self> {
        Ok(Broadcaster {
            name,
            client: client(config)?,
            config: config.clone(),
            con: None,
            broken: false,
            backoff: Backoff::new(config.retry_min, config.retry_max, seed),
        })
    }

    /// Publishes the pipeline, retrying with back-off until it succeeds or
    /// shutdown is signalled. Once shutdown has been signalled a single
    /// attempt is made (finishing in-hand work must not hang on a dead
    /// Redis).
    pub fn publish(
        &mut self,
        pipe: &Pipeline,
        stats: &QueueStats,
        shutdown: &Shutdown,
    ) -> Published {
        let mut failures: u64 = 0;
        loop {
            let started = Instant::now();
            match self.try_publish(pipe, stats) {
                Ok(()) => {
                    let us = started.elapsed().as_micros() as u64;
                    stats
                        .histograms
                        .lock()
                        .publish_us
                        .saturating_record(us.max(1));
                    stats.redis_up.store(true, Ordering::Relaxed);
                    if failures > 0 {
                        eprintln!(
                            "{}: redis publish succeeded again after {failures} failed attempts",
                            self.name
                        );
                    }
                    self.backoff.reset();
                    return Published::Yes;
                }
                Err(e) => {
                    failures += 1;
                    add(&stats.redis_errors, 1);
                    stats.redis_up.store(false, Ordering::Relaxed);
                    // Whatever failed, the connection's state is unknown
                    // (half a pipeline may be in flight): start afresh.
                    self.con = None;
                    self.broken = true;
                    if failures == 1 || failures % LOG_EVERY == 0 {
                        eprintln!(
                            "{}: redis at {} failed ({e}); keeping the batch unacked and retrying (attempt {failures})",
                            self.name,
                            self.config.redis_display()
                        );
                    }
                    if is_shutdown(shutdown) {
                        return Published::GaveUp;
                    }
                    let delay = self.backoff.next_delay();
                    if wait(shutdown, delay) {
                        // One last attempt: a batch about to be settled on
                        // shutdown deserves it if Redis just came back.
                        return match self.try_publish(pipe, stats) {
                            Ok(()) => Published::Yes,
                            Err(_) => Published::GaveUp,
                        };
                    }
                }
            }
        }
    }

    fn try_publish(&mut self, pipe: &Pipeline, stats: &QueueStats) -> RedisResult<()> {
        if self.con.is_none() {
            self.con = Some(connect(&self.client, &self.config)?);
            if self.broken {
                self.broken = false;
                add(&stats.redis_reconnects, 1);
            }
        }
        let con = self.con.as_mut().expect("connected above");
        pipe.query::<()>(con)
    }
}

/// The sampler's connection to Redis, with the consumer's timeouts: its
/// once-a-second snapshot publish (or a PING) is how an idle consumer
/// still notices a Redis outage.
pub struct Probe {
    client: Client,
    config: Config,
    con: Option<redis::Connection>,
}

impl Probe {
    pub fn new(config: &Config) -> RedisResult<Self> {
        Ok(Probe {
            client: client(config)?,
            config: config.clone(),
            con: None,
        })
    }

    /// A probe whose connect, read and write each give up within `limit`
    /// (or the configured timeouts, if shorter): a dark Redis must not
    /// hold the sampler for long.
    pub fn with_limit(config: &Config, limit: Duration) -> RedisResult<Self> {
        let mut quick = config.clone();
        quick.services.amqp.connect_timeout = quick.connect_timeout().min(limit);
        quick.services.redis.timeout = quick.services.redis.timeout.min(limit);
        Probe::new(&quick)
    }

    pub fn ping(&mut self) -> RedisResult<()> {
        self.run(|con| redis::cmd("PING").query::<String>(con).map(|_| ()))
    }

    /// Publishes this consumer's snapshot to the fleet registry (one
    /// pipeline; see `chatflow_broker::fleet`).
    pub fn publish(
        &mut self,
        registry: &Registry,
        id: &str,
        document: &str,
        now_ms: i64,
    ) -> RedisResult<()> {
        self.run(|con| registry.publish(con, id, document, SNAPSHOT_TTL, now_ms))
    }

    /// Removes this consumer's snapshot (a clean stop).
    pub fn withdraw(&mut self, registry: &Registry, id: &str) -> RedisResult<()> {
        self.run(|con| registry.withdraw(con, id))
    }

    /// Runs `call` on the connection, connecting first if needed; a failed
    /// call drops the connection (its state is unknown), so the next one
    /// reconnects.
    fn run<T>(
        &mut self,
        call: impl FnOnce(&mut redis::Connection) -> RedisResult<T>,
    ) -> RedisResult<T> {
        if self.con.is_none() {
            self.con = Some(connect(&self.client, &self.config)?);
        }
        let con = self.con.as_mut().expect("connected above");
        let result = call(con);
        if result.is_err() {
            self.con = None;
        }
        result
    }
}

/// A one-shot reachability check (start-up): connect and PING.
pub fn check(config: &Config, timeout: Duration) -> RedisResult<()> {
    let mut config = config.clone();
    config.services.amqp.connect_timeout = timeout;
    Probe::new(&config)?.ping()
}

//! A queue consumer's Redis side: its own connection, one pipeline per
//! batch whose reply is read before the batch is acked, and
//! retry-until-published while Redis is away.
//!
//! Each frame is appended to its room's history stream and published in
//! one step: the pipeline holds one `EVALSHA` of `scripts/append.lua` for
//! the whole batch, which for each frame runs `XADD {ns}:history:{room}
//! MAXLEN ~ N * frame …` and then `PUBLISH`es the frame with the new entry
//! id spliced in as its last field, `"position"` (the id is made by the
//! `XADD`, and the published frame must carry it: a script is how both
//! happen in one round trip, with nothing run between them). Redis 7
//! spends ~4 µs of its one thread per script call on top of the commands
//! (~0.9 µs for the `XADD`, 0.15 for the `PUBLISH`): one call per batch
//! costs ~3 µs a frame, one per frame ~5 µs (`INFO commandstats`; README
//! has the drain rates). The script is loaded (`SCRIPT LOAD`)
//! on every new connection, so a Redis that restarted — and forgot its
//! scripts — gets it again before the first `EVALSHA`; a `NOSCRIPT` on a
//! live connection (`SCRIPT FLUSH`) fails the pipeline like any error and
//! the retry reconnects and reloads. With the hidden `--no-history` the
//! pipeline is plain `PUBLISH`es, as before the history existed.
//!
//! Why a connection per consumer thread: a thread never waits behind
//! another thread's batch, and a broken connection only costs the batches
//! that were on it. A hundred idle connections cost Redis next to nothing.
//!
//! Replies are read late. A batch's pipeline is written
//! ([`Broadcaster::send`]) and its reply is read only when the thread is
//! about to ack something ([`Broadcaster::confirm`], called by the queue
//! consumer before every ack), so an ack still only follows a broadcast
//! Redis took. With persistence on, acks wait for the writers' commits
//! anyway (hundreds of milliseconds), and by then every reply is in the
//! socket: reading them costs no wait. Waiting for each reply at once
//! put the thread to sleep and woke it again for every batch, which at
//! moderate load is every delivery (64 × 1 on two cores: 2.8–3.1 context
//! switches per message in the consumer and 16.8–18.1% of all the CPU,
//! against 2.1–2.3 and 15.1–15.9% now; `results/broker-ratio.md`, "Fourth
//! box", has the runs). The unread batches are bounded by the prefetch
//! (each holds at least one unacked delivery) and kept whole until
//! confirmed.
//!
//! A bad reply (or none, or a failed write) drops the connection, and
//! every batch not yet confirmed is published again on a new one, in
//! order, each read back before the next; this is retried with back-off
//! while Redis is away. The thread does not ack meanwhile, so the broker
//! stops sending once the prefetch is in hand — memory stays bounded and
//! nothing is lost. What Redis had already taken from those batches is
//! broadcast twice (at least once, as after any lost reply). One order
//! case is new: when Redis refuses one batch's command but takes the next
//! (a script flushed by hand, an out-of-memory refusal), the refused one is
//! broadcast after it. On shutdown the retrying stops and the batches are
//! given up unacked: the broker redelivers them to the next consumer.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chatflow_protocol::Topology;

use redis::{Pipeline, RedisResult};

use crate::config::{Config, History};
use crate::counters::{add, QueueStats};
use chatflow_broker::fleet::{Registry, SNAPSHOT_TTL};
use chatflow_broker::retry::{is_shutdown, wait, Backoff, Shutdown};
use chatflow_broker::RedisConnector;

/// Log the first failure of an outage and then every this many, so a long
/// outage does not flood the log with a hundred threads' retries.
const LOG_EVERY: u64 = 50;

/// The history append (see the module docs).
pub const APPEND_SCRIPT: &str = include_str!("scripts/append.lua");

/// One batch's frames, in the order they are to be broadcast: a queue
/// consumer fills it, [`Broadcaster::send`] sends it as one pipeline.
#[derive(Debug, Default)]
pub struct Batch {
    frames: Vec<(u32, String)>,
}

impl Batch {
    pub fn with_capacity(capacity: usize) -> Self {
        Batch {
            frames: Vec::with_capacity(capacity),
        }
    }

    /// Adds `frame` (a `message` frame, a JSON object) for `room`.
    pub fn push(&mut self, room: u32, frame: String) {
        self.frames.push((room, frame));
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

/// Every room's channel and history stream, named once (index = room).
struct Names {
    topology: Topology,
    channels: Vec<String>,
    streams: Vec<String>,
}

impl Names {
    fn new(config: &Config) -> Self {
        let topology = config.topology();
        let rooms = 0..=topology.rooms.count();
        Names {
            channels: rooms.clone().map(|r| topology.redis_channel(r)).collect(),
            streams: rooms.map(|r| topology.history_stream(r)).collect(),
            topology,
        }
    }

    // Decoding checked every room against the topology; a name is still
    // made, rather than a panic, if one ever was not.
    fn channel(&self, room: u32) -> Cow<'_, str> {
        match self.channels.get(room as usize) {
            Some(name) => Cow::Borrowed(name),
            None => Cow::Owned(self.topology.redis_channel(room)),
        }
    }

    fn stream(&self, room: u32) -> Cow<'_, str> {
        match self.streams.get(room as usize) {
            Some(name) => Cow::Borrowed(name),
            None => Cow::Owned(self.topology.history_stream(room)),
        }
    }
}

/// What became of a batch (`send`) or of every batch sent (`confirm`).
#[derive(Debug, PartialEq, Eq)]
pub enum Published {
    /// `send`: written, its reply still to be read. `confirm`: Redis
    /// accepted every publish of every batch sent.
    Yes,
    /// Shutdown came while Redis was failing: what was not confirmed may
    /// not have been published.
    GaveUp,
}

/// How to reach Redis (shared by consumers and the sampler's probe): the
/// one Redis, or the master the Sentinels name at each (re)connect.
pub fn client(config: &Config) -> RedisConnector {
    RedisConnector::new(&config.services.redis)
}

/// A connection with every timeout set, so no call can hang a thread.
pub fn connect(client: &RedisConnector, config: &Config) -> RedisResult<redis::Connection> {
    client.connect_with(
        config.connect_timeout(),
        Some(config.services.redis.timeout),
    )
}

/// One consumer thread's broadcaster.
pub struct Broadcaster {
    name: String,
    client: RedisConnector,
    config: Config,
    names: Names,
    con: Option<redis::Connection>,
    /// The append script's SHA-1, as returned by `SCRIPT LOAD` on the
    /// current connection (`None`: not loaded, or history off).
    script: Option<String>,
    /// A connection failed and has not been replaced yet.
    broken: bool,
    backoff: Backoff,
    /// Batches written on `con` whose replies are not read yet, oldest
    /// first; kept whole so they can be sent again if a reply is an error
    /// or never comes.
    unread: VecDeque<Sent>,
}

/// A batch written and waiting for its replies to be read.
struct Sent {
    batch: Batch,
    /// Replies its pipeline gets: one for the script call, one per frame
    /// for plain `PUBLISH`es.
    replies: usize,
    /// The time spent writing it, added to the time spent reading its
    /// replies for the publish histogram.
    writing: Duration,
}

impl Broadcaster {
    pub fn new(name: String, config: &Config, seed: u64) -> RedisResult<Self> {
        Ok(Broadcaster {
            name,
            client: client(config),
            config: config.clone(),
            names: Names::new(config),
            con: None,
            script: None,
            broken: false,
            backoff: Backoff::new(config.retry_min, config.retry_max, seed),
            unread: VecDeque::new(),
        })
    }

    /// Batches sent whose replies have not been read ([`Self::confirm`]).
    pub fn unconfirmed(&self) -> usize {
        self.unread.len()
    }

    /// Writes the batch as one pipeline (appending each frame to its
    /// room's history first, unless that is off) and returns without
    /// reading the reply: [`Self::confirm`] reads it before anything the
    /// batch stands for is acked. If the write fails, every batch not yet
    /// confirmed is published again as [`Self::confirm`] does after a bad
    /// reply.
    pub fn send(&mut self, batch: Batch, stats: &QueueStats, shutdown: &Shutdown) -> Published {
        let started = Instant::now();
        match self.try_send(&batch, stats) {
            Ok(replies) => {
                self.unread.push_back(Sent {
                    batch,
                    replies,
                    writing: started.elapsed(),
                });
                Published::Yes
            }
            Err(e) => {
                self.unread.push_back(Sent {
                    batch,
                    replies: 0,
                    writing: Duration::ZERO,
                });
                self.republish(e, stats, shutdown)
            }
        }
    }

    /// Reads the replies of every batch sent and not yet confirmed. If one
    /// is an error or does not come, the connection is dropped and every
    /// batch from that one on is published again, in order, retrying with
    /// back-off until Redis takes them all or shutdown is signalled (then a
    /// single attempt is made: finishing in-hand work must not hang on a
    /// dead Redis).
    pub fn confirm(&mut self, stats: &QueueStats, shutdown: &Shutdown) -> Published {
        while let Some(&Sent {
            replies, writing, ..
        }) = self.unread.front()
        {
            let started = Instant::now();
            match self.read_replies(replies) {
                Ok(()) => {
                    let spent = writing + started.elapsed();
                    self.unread.pop_front();
                    observe_publish(stats, spent);
                    stats.redis_up.store(true, Ordering::Relaxed);
                }
                Err(e) => return self.republish(e, stats, shutdown),
            }
        }
        Published::Yes
    }

    fn read_replies(&mut self, replies: usize) -> RedisResult<()> {
        let con = self
            .con
            .as_mut()
            .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Io, "not connected")))?;
        for _ in 0..replies {
            con.recv_response()?.extract_error()?;
        }
        Ok(())
    }

    /// After `first_error`: a fresh connection, and every unconfirmed
    /// batch published on it, in order, each read back before the next
    /// (retried with back-off until all are taken or shutdown comes). What
    /// Redis had already taken of them is published twice; none is lost.
    fn republish(
        &mut self,
        first_error: redis::RedisError,
        stats: &QueueStats,
        shutdown: &Shutdown,
    ) -> Published {
        let mut failures: u64 = 0;
        let mut error = first_error;
        loop {
            failures += 1;
            add(&stats.redis_errors, 1);
            stats.redis_up.store(false, Ordering::Relaxed);
            // Whatever failed, the connection's state is unknown (replies
            // may be in flight): start afresh.
            self.con = None;
            self.script = None;
            self.broken = true;
            if failures == 1 || failures % LOG_EVERY == 0 {
                tracing::warn!(
                    "{}: redis at {} failed ({error}); keeping {} batch(es) unacked and retrying (attempt {failures})",
                    self.name,
                    self.config.redis_display(),
                    self.unread.len()
                );
            }
            let last_try = is_shutdown(shutdown) || wait(shutdown, self.backoff.next_delay());
            match self.publish_unread(stats) {
                Ok(()) => {
                    tracing::info!(
                        "{}: redis publish succeeded again after {failures} failed attempt(s)",
                        self.name
                    );
                    self.backoff.reset();
                    return Published::Yes;
                }
                Err(_) if last_try => return Published::GaveUp,
                Err(e) => error = e,
            }
        }
    }

    /// Publishes the unconfirmed batches one pipeline at a time, each
    /// confirmed before the next is written, dropping each once taken.
    fn publish_unread(&mut self, stats: &QueueStats) -> RedisResult<()> {
        while let Some(sent) = self.unread.pop_front() {
            let started = Instant::now();
            let taken = self
                .try_send(&sent.batch, stats)
                .and_then(|replies| self.read_replies(replies));
            if let Err(e) = taken {
                self.unread.push_front(sent);
                return Err(e);
            }
            observe_publish(stats, started.elapsed());
            stats.redis_up.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Connects if needed and writes the batch's pipeline; returns how many
    /// replies it will get.
    fn try_send(&mut self, batch: &Batch, stats: &QueueStats) -> RedisResult<usize> {
        if self.con.is_none() {
            let mut con = connect(&self.client, &self.config)?;
            if self.config.history.enabled {
                self.script = Some(load_script(&mut con)?);
            }
            self.con = Some(con);
            if self.broken {
                self.broken = false;
                add(&stats.redis_reconnects, 1);
            }
        }
        let (pipe, replies) = self.pipeline(batch);
        let con = self.con.as_mut().expect("connected above");
        con.send_packed_command(&pipe.get_packed_pipeline())?;
        Ok(replies)
    }

    /// The batch as one pipeline on the current connection: one
    /// `EVALSHA` of the append script for the whole batch, or (history
    /// off) one `PUBLISH` per frame; and the number of replies it gets.
    fn pipeline(&self, batch: &Batch) -> (Pipeline, usize) {
        let mut pipe = redis::pipe();
        let history = &self.config.history;
        match &self.script {
            Some(sha) if history.enabled => {
                let call = pipe.cmd("EVALSHA").arg(sha).arg(batch.frames.len());
                for (room, _) in &batch.frames {
                    call.arg(&*self.names.stream(*room));
                }
                call.arg(history.max_len).arg(max_age_ms(history));
                for (room, frame) in &batch.frames {
                    call.arg(&*self.names.channel(*room)).arg(frame.as_bytes());
                }
                (pipe, 1)
            }
            _ => {
                for (room, frame) in &batch.frames {
                    pipe.publish(&*self.names.channel(*room), frame.as_bytes());
                }
                (pipe, batch.frames.len())
            }
        }
    }
}

/// One batch's time on Redis, in `/metrics` and `/health`.
fn observe_publish(stats: &QueueStats, spent: Duration) {
    stats.buckets.publish.observe_duration(spent);
    let us = spent.as_micros() as u64;
    stats
        .histograms
        .lock()
        .publish_us
        .saturating_record(us.max(1));
}

/// The append script's age bound in milliseconds (0: none).
fn max_age_ms(history: &History) -> u64 {
    history.max_age.map_or(0, |age| age.as_millis() as u64)
}

/// Loads the append script on `con`; its SHA-1 names it for `EVALSHA`.
pub fn load_script(con: &mut redis::Connection) -> RedisResult<String> {
    redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(APPEND_SCRIPT)
        .query(con)
}

/// The sampler's connection to Redis, with the consumer's timeouts: its
/// once-a-second snapshot publish (or a PING) is how an idle consumer
/// still notices a Redis outage.
pub struct Probe {
    client: RedisConnector,
    config: Config,
    con: Option<redis::Connection>,
}

impl Probe {
    pub fn new(config: &Config) -> RedisResult<Self> {
        Ok(Probe {
            client: client(config),
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

    /// Any other call on the probe's connection (the owner adverts,
    /// `crate::owners`), with the same reconnection.
    pub fn call<T>(
        &mut self,
        call: impl FnOnce(&mut redis::Connection) -> RedisResult<T>,
    ) -> RedisResult<T> {
        self.run(call)
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

//! `brokerceiling`: RabbitMQ alone in ChatFlow's topology, so a full-path
//! figure can be read against what the broker itself delivers on the same
//! machine with the same messages in flight (issue 14).
//!
//! A run declares the product's topology in a namespace of its own
//! ([`topology`]), publishes real envelopes ([`messages`]) — persistent,
//! with publisher confirms, a fixed number unconfirmed over `--publishers`
//! connections ([`publisher`]) — and, unless told not to, consumes every
//! queue as the consumer does, one consumer per queue acking in batches
//! ([`consumer`]). `--drain N` instead publishes a backlog of N with no
//! consumer, then starts the consumers and times the drain. Either way the
//! topology is deleted at the end, on an error and on Ctrl-C.
//!
//! Layout: [`config`] (flags → [`Config`]), [`messages`], [`publisher`],
//! [`consumer`], [`topology`], [`report`]; this file runs the phases.

pub mod config;
pub mod consumer;
pub mod messages;
pub mod publisher;
pub mod report;
pub mod topology;

use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use amiquip::Connection;
use chatflow_broker::{shutdown_signal, Shutdown, ShutdownTrigger};
use crossbeam_channel::{never, select, unbounded, Receiver};
use hdrhistogram::Histogram;

pub use config::{Args, Command, Config, Mode, Until};
use consumer::{ConsumeError, Progress, QueueConsumer};
use messages::Pool;
use publisher::{Link, PublishError, Published, Publisher};
use report::{rate, ConsumeReport, DrainReport, Latency, Machine, PublishReport, Report};
use topology::{Declared, TopologyError};

/// How long consumers may make no progress while messages they should
/// consume are outstanding before the run calls them stuck.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the main thread looks at the consumers' progress (it only
/// decides when to stop; the times reported are the acks' own).
const POLL: Duration = Duration::from_millis(10);

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("building the messages: {0}")]
    Pool(String),
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("publisher: {0}")]
    Publish(#[from] PublishError),
    #[error("consumer: {0}")]
    Consume(#[from] ConsumeError),
    #[error("consumer connection: {0}")]
    ConsumerConnection(String),
    #[error("counting the backlog: {0}")]
    Count(Box<amiquip::Error>),
    #[error("consumers stalled: {consumed} of {expected} consumed, none for {} s", STALL_TIMEOUT.as_secs())]
    Stalled { consumed: u64, expected: u64 },
    #[error("a {0} thread panicked")]
    Panicked(&'static str),
}

/// A finished (or interrupted) run.
pub struct Outcome {
    pub report: Report,
}

/// Runs `config` to the end, or until `interrupt` fires (then what was
/// measured so far is reported, flagged `interrupted`). The topology is
/// deleted before this returns, whatever happened.
pub fn run(config: &Config, interrupt: &Shutdown) -> Result<Outcome, RunError> {
    let topology = &config.settings.topology;
    let pool = Arc::new(Pool::new(topology).map_err(RunError::Pool)?);
    let declared = Declared::new(&config.settings.amqp, topology)?;
    eprintln!(
        "brokerceiling: declared {} ({} quorum queues) on {}",
        topology.namespace,
        topology.shards().count(),
        config.settings.amqp.display()
    );
    let measured = match config.mode {
        Mode::Publish { until, consume } => publish_phase(config, &pool, until, consume, interrupt),
        Mode::Drain { backlog } => drain_phase(config, &pool, backlog, interrupt),
    };
    // Deleted on every path; a failed run's own error comes first.
    let deleted = declared.delete();
    let mut report = measured?;
    deleted?;
    report.message_bytes = pool.mean_bytes();
    report.machine = Machine::now();
    Ok(Outcome { report })
}

/// Publish (while consuming, unless `consume` is false) until `until`.
fn publish_phase(
    config: &Config,
    pool: &Arc<Pool>,
    until: Until,
    consume: bool,
    interrupt: &Shutdown,
) -> Result<Report, RunError> {
    let consumers = if consume {
        let mut consumers = Consumers::open(config)?;
        consumers.go();
        Some(consumers)
    } else {
        None
    };
    let mut publishers = Publishers::open(config, pool, until)?;
    eprintln!(
        "brokerceiling: publishing {} at {} in flight{}",
        describe(until),
        config.in_flight,
        if consume {
            ", consuming"
        } else {
            ", not consuming"
        }
    );
    publishers.go();
    let (published, mut interrupted) = publishers.finish(interrupt)?;
    let publish = publish_report(&published);
    let mut report = empty_report(config, "publish", publish.clone());
    if let Some(consumers) = consumers {
        let consumed_then = consumers.progress.consumed();
        // Everything confirmed is in a queue: wait until it is consumed.
        if !interrupted {
            interrupted = consumers.wait_for(publish.confirmed, interrupt)?;
        }
        let progress = consumers.progress.clone();
        consumers.stop()?;
        let started = first_publish(&published);
        let seconds = match (started, progress.last()) {
            (Some(s), Some(l)) => l.saturating_duration_since(s).as_secs_f64(),
            _ => 0.0,
        };
        report.consume = Some(ConsumeReport {
            consumed: progress.consumed(),
            seconds,
            per_second: rate(progress.consumed(), seconds),
            behind_at_publish_end: publish.confirmed.saturating_sub(consumed_then),
        });
    }
    report.interrupted = interrupted;
    Ok(report)
}

/// Publish a backlog with no consumer, then drain it.
fn drain_phase(
    config: &Config,
    pool: &Arc<Pool>,
    backlog: u64,
    interrupt: &Shutdown,
) -> Result<Report, RunError> {
    let mut publishers = Publishers::open(config, pool, Until::Messages(backlog))?;
    eprintln!(
        "brokerceiling: publishing a backlog of {backlog} at {} in flight",
        config.in_flight
    );
    publishers.go();
    let (published, interrupted) = publishers.finish(interrupt)?;
    let publish = publish_report(&published);
    let mut report = empty_report(config, "drain", publish.clone());
    if interrupted {
        report.interrupted = true;
        return Ok(report);
    }
    let mut consumers = Consumers::open(config)?;
    let ready_at_start = consumers.ready(&config.settings.topology)?;
    eprintln!("brokerceiling: {ready_at_start} ready; draining");
    let started = consumers.go();
    let interrupted = consumers.wait_for(publish.confirmed, interrupt)?;
    let progress = consumers.progress.clone();
    consumers.stop()?;
    let since = |from: Instant, to: Option<Instant>| {
        to.map_or(0.0, |t| t.saturating_duration_since(from).as_secs_f64())
    };
    let seconds = since(started, progress.last());
    let from_first = progress
        .first()
        .map_or(0.0, |first| since(first, progress.last()));
    report.drain = Some(DrainReport {
        backlog: publish.confirmed,
        ready_at_start,
        consumed: progress.consumed(),
        seconds,
        started_at_unix_s: unix_seconds(started),
        ended_at_unix_s: progress.last().map_or(0.0, unix_seconds),
        per_second: rate(progress.consumed(), seconds),
        first_ack_ms: since(started, progress.first()) * 1e3,
        per_second_from_first_ack: rate(progress.consumed(), from_first),
    });
    report.interrupted = interrupted;
    Ok(report)
}

fn describe(until: Until) -> String {
    match until {
        Until::Messages(n) => format!("{n} messages"),
        Until::Elapsed(d) => format!("for {} s", d.as_secs_f64()),
    }
}

/// An instant of this run as wall-clock Unix seconds (for lining the run
/// up with samples taken outside the process).
fn unix_seconds(at: Instant) -> f64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    now - Instant::now().saturating_duration_since(at).as_secs_f64()
}

fn first_publish(published: &[Published]) -> Option<Instant> {
    published.iter().filter_map(|p| p.started).min()
}

/// The publishers' figures together.
fn publish_report(published: &[Published]) -> PublishReport {
    let mut latency =
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds");
    for p in published {
        // Same bounds: adding cannot fail.
        let _ = latency.add(&p.latency);
    }
    let confirmed = published.iter().map(|p| p.confirmed).sum();
    let last = published.iter().filter_map(|p| p.last_confirm).max();
    let (seconds, started_at_unix_s, ended_at_unix_s) = match (first_publish(published), last) {
        (Some(first), Some(last)) => (
            last.saturating_duration_since(first).as_secs_f64(),
            unix_seconds(first),
            unix_seconds(last),
        ),
        _ => (0.0, 0.0, 0.0),
    };
    PublishReport {
        published: published.iter().map(|p| p.published).sum(),
        confirmed,
        nacked: published.iter().map(|p| p.nacked).sum(),
        seconds,
        started_at_unix_s,
        ended_at_unix_s,
        per_second: rate(confirmed, seconds),
        confirm_latency_ms: Latency::from_micros(&latency),
    }
}

fn empty_report(config: &Config, mode: &'static str, publish: PublishReport) -> Report {
    let topology = &config.settings.topology;
    Report {
        mode,
        rabbitmq: config.settings.amqp.display(),
        namespace: topology.namespace.clone(),
        rooms: topology.rooms.count(),
        queues: topology.shards().count(),
        in_flight: config.in_flight,
        publishers: config.publishers,
        consumer_connections: config.consumers.connections,
        prefetch: config.consumers.prefetch,
        ack_batch: config.consumers.ack_batch,
        message_bytes: 0.0,
        publish,
        consume: None,
        drain: None,
        interrupted: false,
        machine: Machine::default(),
    }
}

/// The publisher threads and their connections. Dropping it stops and
/// joins the threads and closes the connections.
/// The threads of one side of the run (publishers or consumers), the
/// connections they use and the signal that stops them: stopped, joined
/// and closed together, also when dropped on an error path.
struct Crew {
    connections: Vec<Connection>,
    threads: Vec<JoinHandle<()>>,
    stop: ShutdownTrigger,
}

impl Crew {
    fn new(stop: ShutdownTrigger) -> Crew {
        Crew {
            connections: Vec::new(),
            threads: Vec::new(),
            stop,
        }
    }

    fn close(&mut self) {
        self.stop.signal();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        for connection in self.connections.drain(..) {
            let _ = connection.close();
        }
    }
}

impl Drop for Crew {
    fn drop(&mut self) {
        self.close();
    }
}

struct Publishers {
    crew: Crew,
    results: Receiver<Result<Published, PublishError>>,
    gate: ShutdownTrigger,
}

impl Publishers {
    /// Connects every publisher and starts its thread, waiting at the gate.
    fn open(config: &Config, pool: &Arc<Pool>, until: Until) -> Result<Publishers, RunError> {
        let (gate, gate_rx) = shutdown_signal();
        let (stop, stop_rx) = shutdown_signal();
        let (done, results) = unbounded();
        let mut publishers = Publishers {
            crew: Crew::new(stop),
            results,
            gate,
        };
        for index in 0..config.publishers {
            let Link {
                connection,
                channel,
                confirms,
            } = Link::open(&config.settings.amqp)?;
            publishers.crew.connections.push(connection);
            let publisher = Publisher {
                channel,
                confirms,
                exchange: config.settings.topology.exchange(),
                pool: pool.clone(),
                offset: index * pool.len() / config.publishers,
                window: config.window(index),
                until: config.quota(until, index),
                gate: gate_rx.clone(),
                stop: stop_rx.clone(),
            };
            let done = done.clone();
            let thread = thread::Builder::new()
                .name(format!("publisher-{index}"))
                .spawn(move || {
                    let _ = done.send(publisher.run());
                })
                .expect("spawning a publisher thread");
            publishers.crew.threads.push(thread);
        }
        Ok(publishers)
    }

    fn go(&mut self) {
        self.gate.signal();
    }

    /// Every publisher's figures, once all are done; an interrupt stops
    /// them (they settle what is outstanding). True if interrupted.
    fn finish(mut self, interrupt: &Shutdown) -> Result<(Vec<Published>, bool), RunError> {
        let mut interrupt = interrupt.clone();
        let mut interrupted = false;
        let mut published = Vec::with_capacity(self.crew.threads.len());
        let mut failure = None;
        for _ in 0..self.crew.threads.len() {
            loop {
                select! {
                    recv(self.results) -> result => {
                        match result {
                            Ok(Ok(p)) => published.push(p),
                            Ok(Err(e)) => {
                                // One failed: stop the rest, report the first.
                                self.crew.stop.signal();
                                failure.get_or_insert(e);
                            }
                            Err(_) => return Err(RunError::Panicked("publisher")),
                        }
                        break;
                    }
                    recv(interrupt) -> _ => {
                        interrupted = true;
                        self.crew.stop.signal();
                        interrupt = never();
                    }
                }
            }
        }
        self.crew.close();
        match failure {
            Some(e) => Err(e.into()),
            None => Ok((published, interrupted)),
        }
    }
}

/// The consumer threads (one per queue) and their connections. Dropping
/// it stops and joins the threads and closes the connections.
struct Consumers {
    crew: Crew,
    /// Each thread's result when it ends (before `stop`, a failure).
    ended: Receiver<Result<(), ConsumeError>>,
    progress: Arc<Progress>,
    gate: ShutdownTrigger,
}

impl Consumers {
    /// Opens the connections and a channel per queue, and starts every
    /// queue's thread, waiting at the gate.
    fn open(config: &Config) -> Result<Consumers, RunError> {
        let topology = &config.settings.topology;
        let shape = config.consumers;
        let (gate, gate_rx) = shutdown_signal();
        let (stop, stop_rx) = shutdown_signal();
        let (done, ended) = unbounded();
        let mut consumers = Consumers {
            crew: Crew::new(stop),
            ended,
            progress: Arc::new(Progress::new()),
            gate,
        };
        let queues = topology.shards().count();
        for _ in 0..shape.connections.min(queues) {
            let connection = chatflow_broker::amqp::connect(&config.settings.amqp)
                .map_err(|e| RunError::ConsumerConnection(e.to_string()))?;
            consumers.crew.connections.push(connection);
        }
        for (i, (room, shard)) in topology.shards().enumerate() {
            let count = consumers.crew.connections.len();
            let channel = consumers.crew.connections[i % count]
                .open_channel(None)
                .map_err(|e| RunError::ConsumerConnection(format!("opening a channel: {e}")))?;
            let consumer = QueueConsumer {
                queue: topology.queue(room, shard),
                channel,
                shape,
                gate: gate_rx.clone(),
                stop: stop_rx.clone(),
                progress: consumers.progress.clone(),
            };
            let done = done.clone();
            let thread = thread::Builder::new()
                .name(format!("consumer-r{room}s{shard}"))
                .spawn(move || {
                    let _ = done.send(consumer.run());
                })
                .expect("spawning a consumer thread");
            consumers.crew.threads.push(thread);
        }
        Ok(consumers)
    }

    /// Messages ready in the queues, before the gate opens.
    fn ready(&mut self, topology: &chatflow_protocol::Topology) -> Result<u64, RunError> {
        topology::ready_messages(&mut self.crew.connections[0], topology)
            .map_err(|e| RunError::Count(Box::new(e)))
    }

    /// Opens the gate: every consumer starts. Returns when.
    fn go(&mut self) -> Instant {
        let now = Instant::now();
        self.gate.signal();
        now
    }

    /// Waits until `target` deliveries were acked. True if interrupted
    /// first; an error if a consumer failed or all stalled.
    fn wait_for(&self, target: u64, interrupt: &Shutdown) -> Result<bool, RunError> {
        let mut last = self.progress.consumed();
        let mut moved = Instant::now();
        loop {
            let consumed = self.progress.consumed();
            if consumed >= target {
                return Ok(false);
            }
            if consumed != last {
                (last, moved) = (consumed, Instant::now());
            } else if moved.elapsed() > STALL_TIMEOUT {
                return Err(RunError::Stalled {
                    consumed,
                    expected: target,
                });
            }
            select! {
                recv(self.ended) -> ended => return Err(match ended {
                    Ok(Err(e)) => e.into(),
                    Ok(Ok(())) => RunError::ConsumerConnection("a consumer ended before it was stopped".into()),
                    Err(_) => RunError::Panicked("consumer"),
                }),
                recv(interrupt) -> _ => return Ok(true),
                default(POLL) => {}
            }
        }
    }

    /// Stops every consumer (each cancels and closes its channel) and
    /// closes the connections; the first failure, if any.
    fn stop(mut self) -> Result<(), RunError> {
        self.crew.close();
        match self.ended.try_iter().find_map(Result::err) {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

//! The durable broker: accepted messages are published to RabbitMQ as
//! persistent messages on confirm channels, and the client's ack waits for
//! the broker's confirm. Room broadcasts come back from the consumers over
//! Redis ([`super::redis_subscriber`]).
//!
//! Workers never block on the broker: `publish` hands the encoded envelope
//! over a bounded channel to a publisher's claim stage
//! ([`super::claimer`]: the sent log's round trip) and answers `Pending`;
//! the claim stage hands it on to the publisher thread, which publishes it
//! and answers the worker later with `WorkerEvent::Published`. A sender
//! always goes through the same pair (by user id), both keep FIFO order,
//! and one channel publishes in order, so one sender's messages stay in
//! order.
//!
//! Failure handling: amiquip does not reconnect, so each publisher does,
//! with the shared jittered [`Backoff`]. While it is disconnected, new
//! messages are refused at once (`UNAVAILABLE`); messages published but not
//! yet confirmed when the connection drops are failed to their clients, who
//! may retry (the broker may still have stored them: a client retry can then
//! duplicate a message under a new id, never lose one). `/health` says
//! `degraded` with the reason. A nack makes the publisher open a fresh
//! channel on the same connection once what is in flight has its answer
//! (see [`Publisher::reopen_channel`]): a channel opened while a killed
//! node still led a quorum queue can go on nacking every publish to that
//! queue until the node is back. A message whose confirm has not come
//! `confirm_timeout` after it was published (a broker in trouble can hold
//! confirms back on a live connection) is answered with a timeout
//! (`UNAVAILABLE`, "it may have been stored") rather than never; its late
//! confirm then answers nobody.
//!
//! Stopping: [`Broker::shutdown`] signals this broker's [`ShutdownTrigger`];
//! every publisher and the subscriber wake from whatever they wait on (see
//! [`crate::server`] for the whole order).

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use amiquip::{AmqpProperties, Channel, Confirm, Connection, Publish};
use chatflow_broker::amqp::ConnectError;
use chatflow_broker::{shutdown_signal, AmqpEndpoint, Backoff, Declare, Shutdown, ShutdownTrigger};
use chatflow_protocol::{routing_key, Envelope, Topology, SHARDS_PER_ROOM};
use crossbeam_channel::{bounded, select, Receiver, Sender, TrySendError};
use parking_lot::Mutex;

use super::claimer::{self, Claimed, Claimer};
use super::history::History;
use super::link_state::LinkState;
use super::publish_metrics::{PublishMetrics, PublishingSnapshot};
use super::redis_subscriber::RedisSubscriber;
use super::sent_log::{Claim, SentLog};
use super::{Broker, BrokerHealth, LinkDown, LinkRole, Outcome};
use crate::config::{BrokerKind, Config};
use crate::fanout::{Fanout, FirstSent, PublishError, Ticket, WorkerEvent};

/// Backoff between reconnection attempts: from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Publishes taken from the queue in one go before confirms are read.
const PUBLISH_BURST: usize = 256;
/// On shutdown, how long in-flight messages may wait for their confirm.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// After a nack the channel is reopened, but not more often than this: a
/// queue that rejects publishes for a reason of its own (`x-overflow
/// reject-publish`) must not make every nack cost a channel and fail what
/// else is in flight.
const REOPEN_MIN_INTERVAL: Duration = Duration::from_millis(250);

/// Why a publisher's link to RabbitMQ could not be opened, or broke.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    // amiquip's error is large and these travel up the reconnect loop:
    // boxed, like `ConnectError::Handshake`.
    #[error("opening a channel: {0}")]
    Channel(Box<amiquip::Error>),
    #[error("declaring the topology: {0}")]
    Declare(Box<amiquip::Error>),
    #[error("enabling publisher confirms: {0}")]
    Confirms(Box<amiquip::Error>),
    #[error("publishing: {0}")]
    Publish(Box<amiquip::Error>),
    #[error("the confirm stream ended")]
    ConfirmStreamEnded,
}

/// One message on its way to a publisher's claim stage.
pub struct PublishRequest {
    pub ticket: Ticket,
    /// Index of its routing key in [`Routes`].
    route: usize,
    pub body: Vec<u8>,
    /// Its name in the sent log, when the client gave one.
    pub claim: Option<Claim>,
    /// When a worker accepted it: its ack latency starts here.
    accepted: Instant,
}

/// A published message waiting for its confirm.
struct InFlight {
    /// `None` once its client was told it timed out (`confirm_timeout`): a
    /// late confirm then answers nobody.
    ticket: Option<Ticket>,
    /// The first send's id and time when it was a retry.
    first: Option<FirstSent>,
    accepted: Instant,
    published: Instant,
}

/// The routing key of every (room, shard) queue, built once at start: a
/// request carries an index, not a key formatted on the worker's thread.
/// (amiquip takes the key as an owned `String`, so the publisher still
/// clones one per message: a copy, not a `format!`.)
struct Routes {
    keys: Vec<String>,
}

impl Routes {
    fn new(topology: &Topology) -> Self {
        Routes {
            keys: topology
                .shards()
                .map(|(room, shard)| routing_key(room, shard))
                .collect(),
        }
    }

    /// The index of (room, shard); `Topology::shards` lists rooms from 1,
    /// each with its shards from 0.
    fn index(room: u32, shard: u32) -> usize {
        (room as usize - 1) * SHARDS_PER_ROOM as usize + shard as usize
    }

    fn key(&self, index: usize) -> &str {
        &self.keys[index]
    }
}

/// Every message's properties: persistent JSON. Built once per publisher
/// and cloned per message (amiquip takes them by value).
fn message_properties() -> AmqpProperties {
    AmqpProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".to_string())
}

/// What the broker keeps of one publisher: where workers queue its
/// messages, its link's state, its measurements, and (for the `queued`
/// gauge) the claim stage's hand-over queue.
struct PublisherHandle {
    requests: Sender<PublishRequest>,
    claimed: Receiver<Claimed>,
    state: Arc<LinkState>,
    metrics: Arc<PublishMetrics>,
}

pub struct RabbitBroker {
    publishers: Vec<PublisherHandle>,
    subscriber: RedisSubscriber,
    history: History,
    /// Signalled (or dropped, if start fails half-way) to stop every
    /// thread below.
    stop: Mutex<ShutdownTrigger>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl RabbitBroker {
    /// Connects every publisher (waiting for the first connection so a
    /// misconfigured server fails at start rather than refusing every
    /// message) and starts the Redis subscriber.
    pub fn start(config: &Config, fanout: Fanout) -> anyhow::Result<Self> {
        let services = &config.services;
        let topology = services.topology.clone();
        let (stop, shutdown) = shutdown_signal();
        let routes = Arc::new(Routes::new(&topology));
        let mut publishers = Vec::new();
        let mut threads = Vec::new();
        for index in 0..config.publishing.publishers {
            let (requests, incoming) = bounded(config.publishing.publish_queue);
            let (claimed_tx, claimed) = bounded(claimer::HANDOVER_QUEUE);
            let state = Arc::new(LinkState::default());
            let metrics = Arc::new(PublishMetrics::default());
            let sent_log = SentLog::new(&services.redis, topology.clone(), services.dedup_window)
                .map_err(|e| anyhow::anyhow!("the sent log's Redis settings: {e}"))?;
            let claimer = Claimer::new(
                index,
                sent_log,
                incoming,
                claimed_tx,
                state.clone(),
                fanout.clone(),
                metrics.clone(),
                shutdown.clone(),
            );
            let mut publisher = Publisher {
                index,
                endpoint: services.amqp.clone(),
                topology: topology.clone(),
                routes: routes.clone(),
                properties: message_properties(),
                requests: claimed.clone(),
                fanout: fanout.clone(),
                state: state.clone(),
                metrics: metrics.clone(),
                shutdown: shutdown.clone(),
                confirm_timeout: config.confirm_timeout,
            };
            // The first connection is made here so start-up reports a bad
            // address or credentials as an error.
            let link = publisher
                .connect()
                .map_err(|e| anyhow::anyhow!("RabbitMQ at {}: {e}", services.amqp.display()))?;
            state.set_up();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("publisher-{index}"))
                    .spawn(move || publisher.run(link))?,
            );
            threads.push(
                std::thread::Builder::new()
                    .name(format!("claimer-{index}"))
                    .spawn(move || claimer.run())?,
            );
            publishers.push(PublisherHandle {
                requests,
                claimed,
                state,
                metrics,
            });
        }
        let history = History::start(config, fanout.clone(), shutdown.clone())?;
        let subscriber = RedisSubscriber::start(&services.redis, topology, fanout, shutdown)?;
        Ok(RabbitBroker {
            publishers,
            subscriber,
            history,
            stop: Mutex::new(stop),
            threads: Mutex::new(threads),
        })
    }
}

impl Broker for RabbitBroker {
    fn kind(&self) -> BrokerKind {
        BrokerKind::Rabbitmq
    }

    fn publish(
        &self,
        ticket: Ticket,
        envelope: &Envelope<'_>,
        client_message_id: Option<&str>,
    ) -> Outcome {
        let PublisherHandle {
            requests, state, ..
        } = &self.publishers[envelope.user_id as usize % self.publishers.len()];
        if !state.is_up() {
            return Outcome::Refused(PublishError::Unreachable);
        }
        let request = PublishRequest {
            ticket,
            route: Routes::index(envelope.room_id, envelope.shard()),
            body: envelope.encode(),
            claim: client_message_id.map(|name| Claim {
                user_id: envelope.user_id,
                client_message_id: name.to_string(),
                first: FirstSent {
                    message_id: envelope.message_id,
                    server_time: envelope.server_timestamp,
                },
            }),
            accepted: Instant::now(),
        };
        match requests.try_send(request) {
            Ok(()) => Outcome::Pending,
            Err(TrySendError::Full(_)) => Outcome::Refused(PublishError::QueueFull),
            Err(TrySendError::Disconnected(_)) => Outcome::Refused(PublishError::ShuttingDown),
        }
    }

    fn health(&self) -> BrokerHealth {
        let mut down = Vec::new();
        for (i, PublisherHandle { state, .. }) in self.publishers.iter().enumerate() {
            if let Some(down_for) = state.down_for() {
                down.push(LinkDown {
                    name: format!("rabbitmq publisher-{i}"),
                    role: LinkRole::Publishing,
                    down_for,
                    reason: state.reason(),
                });
            }
        }
        let subscription = &self.subscriber.state;
        if let Some(down_for) = subscription.down_for() {
            down.push(LinkDown {
                name: "redis subscription".to_string(),
                role: LinkRole::Broadcasts,
                down_for,
                reason: subscription.reason(),
            });
        }
        BrokerHealth {
            connected: down.is_empty(),
            detail: if down.is_empty() {
                format!(
                    "rabbitmq: {} publisher(s) connected; redis: subscribed ({} reconnects, {}); {}",
                    self.publishers.len(),
                    self.subscriber.reconnects(),
                    self.subscriber.describe_fills(),
                    describe_history(&self.history),
                )
            } else {
                let problems: Vec<String> = down
                    .iter()
                    .map(|d| format!("{}: {}", d.name, d.reason))
                    .collect();
                problems.join("; ")
            },
            down,
        }
    }

    fn shutdown(&self) {
        self.stop.lock().signal();
        for thread in self.threads.lock().drain(..) {
            let _ = thread.join();
        }
        self.subscriber.join();
        self.history.join();
    }

    fn history(&self) -> Option<&History> {
        Some(&self.history)
    }

    fn publishing(&self) -> Option<PublishingSnapshot> {
        let mut all = PublishingSnapshot::empty();
        for p in &self.publishers {
            all.add(
                &p.metrics,
                p.requests.len() + p.claimed.len(),
                p.state.is_up(),
            );
        }
        Some(all)
    }
}

/// The history thread's counters, for `/health`'s broker detail.
fn describe_history(history: &History) -> String {
    let stats = &history.stats;
    let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    format!(
        "history: {} reads ({} resumes trimmed, {} messages filled from the database, {} failed)",
        load(&stats.reads),
        load(&stats.trimmed),
        load(&stats.from_database),
        load(&stats.failed)
    )
}

/// A live connection and its confirm channel.
struct Link {
    connection: Connection,
    channel: Channel,
    confirms: Receiver<Confirm>,
    exchange: String,
    /// Published, unconfirmed: the slot of delivery tag `base_tag + i`;
    /// `None` once confirmed out of order.
    in_flight: VecDeque<Option<InFlight>>,
    /// The `Some` slots of `in_flight`.
    unconfirmed: usize,
    base_tag: u64,
    /// Every slot below this tag is confirmed or already timed out: where
    /// the next look for an overdue confirm starts (slots are in publish
    /// order, so the first one still waiting is the oldest).
    sweep_tag: u64,
    /// When the current channel was opened (a nack reopens it).
    channel_opened: Instant,
    /// A nack asked for a fresh channel: no new publishes until every
    /// message in flight on this one has its answer, then it is reopened.
    reopen_wanted: bool,
}

struct Publisher {
    index: usize,
    endpoint: AmqpEndpoint,
    topology: Topology,
    routes: Arc<Routes>,
    properties: AmqpProperties,
    /// From the claim stage: claimed, in order. Disconnected once that
    /// stage has gone (shutdown, or every worker's sender dropped).
    requests: Receiver<Claimed>,
    fanout: Fanout,
    state: Arc<LinkState>,
    metrics: Arc<PublishMetrics>,
    shutdown: Shutdown,
    /// A message unconfirmed this long is answered `UNAVAILABLE` (it may be
    /// stored: a retry under its `clientMessageId` is safe) instead of
    /// leaving its client to guess.
    confirm_timeout: Duration,
}

impl Publisher {
    fn connect(&mut self) -> Result<Link, LinkError> {
        let mut connection = chatflow_broker::amqp::connect(&self.endpoint)?;
        let (channel, confirms) = confirm_channel(&mut connection)?;
        self.topology
            .declare(&channel)
            .map_err(|e| LinkError::Declare(Box::new(e)))?;
        Ok(Link {
            connection,
            channel,
            confirms,
            exchange: self.topology.exchange(),
            in_flight: VecDeque::new(),
            unconfirmed: 0,
            base_tag: 1,
            sweep_tag: 1,
            channel_opened: Instant::now(),
            reopen_wanted: false,
        })
    }

    /// Publishes until shutdown, reconnecting whenever the link drops.
    fn run(mut self, first: Link) {
        // Decorrelated across servers and publishers: a broker restart must
        // not bring every reconnect back in the same millisecond.
        let seed = (u64::from(std::process::id()) << 8) | self.index as u64;
        let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX, seed);
        let mut link = Some(first);
        loop {
            let mut live = match link.take() {
                Some(live) => live,
                None => {
                    if self.wait_refusing(backoff.next_delay()) {
                        return self.refuse_queued(PublishError::ShuttingDown);
                    }
                    match self.connect() {
                        Ok(live) => {
                            tracing::info!("publisher-{}: connected to RabbitMQ", self.index);
                            self.state.set_up();
                            backoff.reset();
                            live
                        }
                        Err(e) => {
                            tracing::warn!(
                                "publisher-{}: reconnecting to RabbitMQ failed: {e}; next attempt in at most {} s",
                                self.index,
                                BACKOFF_MAX.as_secs_f64()
                            );
                            self.state.set_down(format!("reconnecting: {e}"));
                            continue;
                        }
                    }
                }
            };
            match self.serve(&mut live) {
                Ok(()) => {
                    self.drain(&mut live);
                    let _ = live.channel.close();
                    let _ = live.connection.close();
                    return;
                }
                Err(e) => {
                    tracing::warn!("publisher-{}: RabbitMQ connection lost: {e}", self.index);
                    // Down first, so a client told its message failed
                    // finds `/health` saying why.
                    self.state.set_down(format!("connection lost: {e}"));
                    self.lost(live);
                }
            }
        }
    }

    /// Publishes and reads confirms on one live link until shutdown (`Ok`)
    /// or until the link breaks.
    fn serve(&mut self, link: &mut Link) -> Result<(), LinkError> {
        // Stands in for the queue while a reopen waits: nothing new is
        // published on a channel about to go.
        let paused = crossbeam_channel::never();
        loop {
            let requests = if link.reopen_wanted {
                &paused
            } else {
                &self.requests
            };
            select! {
                recv(requests) -> request => {
                    // Every sender gone: the broker itself was dropped.
                    let Ok(request) = request else { return Ok(()) };
                    // Take what else is waiting before looking at confirms:
                    // one wake-up, many publishes.
                    let mut burst = Vec::with_capacity(16);
                    burst.push(request);
                    burst.extend(self.requests.try_iter().take(PUBLISH_BURST));
                    self.publish_burst(link, burst)?;
                }
                recv(link.confirms) -> confirm => match confirm {
                    Ok(confirm) => {
                        let nacked = self.confirmed(link, confirm);
                        if nacked && link.channel_opened.elapsed() >= REOPEN_MIN_INTERVAL {
                            link.reopen_wanted = true;
                        }
                    }
                    Err(_) => return Err(LinkError::ConfirmStreamEnded),
                },
                recv(self.shutdown) -> _ => return Ok(()),
                default(self.until_overdue(link)) => {}
            }
            self.time_out_overdue(link, Instant::now());
            // Waiting costs about one confirm round trip (at most
            // `confirm_timeout`, after which the rest are answered) and
            // fails nothing, where reopening at once would fail everything
            // else in flight — every 250 ms while a full queue rejects.
            if link.reopen_wanted && !awaiting_answer(link) {
                self.reopen_channel(link)?;
            }
        }
    }

    /// How long until the oldest message still waiting is overdue (a day
    /// when none is: `select!` needs a finite wait).
    fn until_overdue(&self, link: &mut Link) -> Duration {
        self.skip_settled(link);
        let waiting = link
            .in_flight
            .get((link.sweep_tag - link.base_tag) as usize);
        match waiting.and_then(Option::as_ref) {
            Some(sent) => {
                (sent.published + self.confirm_timeout).saturating_duration_since(Instant::now())
            }
            None => Duration::from_secs(86_400),
        }
    }

    /// Moves `sweep_tag` past the slots that need no answer any more.
    fn skip_settled(&self, link: &mut Link) {
        link.sweep_tag = link.sweep_tag.max(link.base_tag);
        while let Some(slot) = link
            .in_flight
            .get((link.sweep_tag - link.base_tag) as usize)
        {
            match slot {
                Some(sent) if sent.ticket.is_some() => break,
                _ => link.sweep_tag += 1,
            }
        }
    }

    /// Answers every message published more than `confirm_timeout` ago and
    /// still unconfirmed with a timeout. The slot stays: its tag is still
    /// the broker's, and a late confirm must find it (and answer nobody).
    fn time_out_overdue(&self, link: &mut Link, now: Instant) {
        let mut overdue = 0;
        loop {
            self.skip_settled(link);
            let index = (link.sweep_tag - link.base_tag) as usize;
            let Some(Some(sent)) = link.in_flight.get_mut(index) else {
                break;
            };
            if now < sent.published + self.confirm_timeout {
                break;
            }
            if let Some(ticket) = sent.ticket.take() {
                overdue += 1;
                self.answer(ticket, Err(PublishError::Timeout));
            }
        }
        if overdue > 0 {
            (self.metrics.confirms_overdue)
                .fetch_add(overdue, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                "publisher-{}: {overdue} message(s) unconfirmed after {:?}: answered UNAVAILABLE (may be stored)",
                self.index,
                self.confirm_timeout
            );
        }
    }

    /// Publishes a burst of claimed messages; when one fails, the rest
    /// (taken off the queue, never sent) are answered at once.
    fn publish_burst(&self, link: &mut Link, burst: Vec<Claimed>) -> Result<(), LinkError> {
        let mut burst = burst.into_iter();
        while let Some(claimed) = burst.next() {
            if let Err(e) = self.publish(link, claimed.request, claimed.first) {
                // The failed one is in flight and fails with the link; the
                // rest of the burst never reached the broker and must be
                // answered now — left unanswered, their clients heard
                // nothing until their own timeout (found by bench/cluster.sh
                // killing a RabbitMQ node mid-burst: 13 s stalls).
                for rest in burst {
                    self.answer(rest.request.ticket, Err(PublishError::Unreachable));
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn publish(
        &self,
        link: &mut Link,
        request: PublishRequest,
        first: Option<FirstSent>,
    ) -> Result<(), LinkError> {
        let publish = Publish {
            body: &request.body,
            routing_key: self.routes.key(request.route).to_owned(),
            mandatory: false,
            immediate: false,
            properties: self.properties.clone(),
        };
        let published = link.channel.basic_publish(link.exchange.as_str(), publish);
        // On failure too: `lost` then fails it with the rest of the link's
        // messages, after `/health` already says why.
        link.in_flight.push_back(Some(InFlight {
            ticket: Some(request.ticket),
            first,
            accepted: request.accepted,
            published: Instant::now(),
        }));
        link.unconfirmed += 1;
        self.metrics.set_in_flight(link.unconfirmed);
        published.map_err(|e| LinkError::Publish(Box::new(e)))
    }

    /// After a nack: a fresh channel on the same connection. A channel
    /// keeps its own idea of each quorum queue's leader, and one opened
    /// right after the leader's node was killed (a reconnect takes ~100 ms,
    /// the election longer) went on nacking every publish to that queue
    /// until the node was back, 13 s in bench/cluster.sh, while RabbitMQ
    /// itself had a new leader within about a second and a new channel
    /// publishes to it. `serve` calls it once nothing in flight awaits an
    /// answer; anything that still did would fail with the old channel
    /// (`LinkLost`: may be stored, a retry under its clientMessageId is
    /// safe), and late confirms of timed-out messages answer nobody.
    fn reopen_channel(&self, link: &mut Link) -> Result<(), LinkError> {
        let (channel, confirms) = confirm_channel(&mut link.connection)?;
        let old = std::mem::replace(&mut link.channel, channel);
        link.confirms = confirms;
        link.channel_opened = Instant::now();
        link.reopen_wanted = false;
        (self.metrics.channel_reopens).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut failed = 0;
        for ticket in link
            .in_flight
            .drain(..)
            .flatten()
            .filter_map(|sent| sent.ticket)
        {
            failed += 1;
            self.answer(ticket, Err(PublishError::LinkLost));
        }
        link.unconfirmed = 0;
        link.base_tag = 1;
        link.sweep_tag = 1;
        self.metrics.set_in_flight(0);
        tracing::info!(
            "publisher-{}: a publish was nacked: reopened the channel ({failed} in flight failed with the old one)",
            self.index
        );
        // A broken connection shows at the next read of the new channel's
        // confirms; closing the old channel can only fail then.
        let _ = old.close();
        Ok(())
    }

    /// Resolves the tickets a confirm covers; true if it was a nack.
    fn confirmed(&self, link: &mut Link, confirm: Confirm) -> bool {
        let (payload, acked) = match confirm {
            Confirm::Ack(payload) => (payload, true),
            Confirm::Nack(payload) => (payload, false),
        };
        let tag = payload.delivery_tag;
        if tag < link.base_tag {
            return !acked;
        }
        let last = (tag - link.base_tag) as usize;
        let first = if payload.multiple { 0 } else { last };
        let now = Instant::now();
        for slot in first..=last.min(link.in_flight.len().saturating_sub(1)) {
            if let Some(sent) = link.in_flight[slot].take() {
                link.unconfirmed -= 1;
                if acked {
                    (self.metrics.confirm_latency).observe_duration(now - sent.published);
                }
                // Timed out already: its client has its answer.
                let Some(ticket) = sent.ticket else { continue };
                let result = if acked {
                    (self.metrics.ack_latency).observe_duration(now - sent.accepted);
                    Ok(sent.first)
                } else {
                    Err(PublishError::Nacked)
                };
                self.answer(ticket, result);
            }
        }
        self.metrics.set_in_flight(link.unconfirmed);
        while link.in_flight.front().is_some_and(Option::is_none) {
            link.in_flight.pop_front();
            link.base_tag += 1;
        }
        !acked
    }

    /// On shutdown: refuses what is queued and waits (bounded) for the
    /// confirms of what is in flight; what is still unconfirmed then times
    /// out.
    fn drain(&self, link: &mut Link) {
        self.refuse_queued(PublishError::ShuttingDown);
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while awaiting_answer(link) {
            let left = deadline.saturating_duration_since(Instant::now());
            match link.confirms.recv_timeout(left) {
                Ok(confirm) => {
                    self.confirmed(link, confirm);
                }
                Err(_) => break,
            }
        }
        for ticket in link
            .in_flight
            .drain(..)
            .flatten()
            .filter_map(|sent| sent.ticket)
        {
            self.answer(ticket, Err(PublishError::Timeout));
        }
        link.unconfirmed = 0;
        self.metrics.set_in_flight(0);
    }

    /// The link broke: every unconfirmed message fails to its client.
    /// Closing a broken connection can only fail; dropping it is enough.
    fn lost(&self, link: Link) {
        for ticket in link
            .in_flight
            .into_iter()
            .flatten()
            .filter_map(|sent| sent.ticket)
        {
            self.answer(ticket, Err(PublishError::LinkLost));
        }
        self.metrics.set_in_flight(0);
    }

    /// Waits `pause` (less if shutdown comes first), refusing whatever
    /// arrives meanwhile. True on shutdown.
    fn wait_refusing(&self, pause: Duration) -> bool {
        let deadline = Instant::now() + pause;
        loop {
            select! {
                recv(self.requests) -> claimed => match claimed {
                    Ok(claimed) => self.answer(claimed.request.ticket, Err(PublishError::Unreachable)),
                    Err(_) => return true,
                },
                recv(self.shutdown) -> _ => return true,
                default(deadline.saturating_duration_since(Instant::now())) => return false,
            }
        }
    }

    /// Refuses everything the claim stage hands over until it has gone:
    /// it stops on the same shutdown, and waiting for it (not just taking
    /// what is queued now) means a message it hands over at the last
    /// moment is still answered.
    fn refuse_queued(&self, reason: PublishError) {
        for claimed in self.requests.iter() {
            self.answer(claimed.request.ticket, Err(reason));
        }
    }

    fn answer(&self, ticket: Ticket, result: Result<Option<FirstSent>, PublishError>) {
        self.fanout
            .send_to(ticket.worker, WorkerEvent::Published { ticket, result });
    }
}

/// A new channel on `connection`, in confirm mode.
fn confirm_channel(connection: &mut Connection) -> Result<(Channel, Receiver<Confirm>), LinkError> {
    let channel = connection
        .open_channel(None)
        .map_err(|e| LinkError::Channel(Box::new(e)))?;
    let confirms = chatflow_broker::amqp::enable_confirms(&channel)
        .map_err(|e| LinkError::Confirms(Box::new(e)))?;
    Ok((channel, confirms))
}

/// True while a message in flight on the link still awaits its answer
/// (timed-out ones have had theirs).
fn awaiting_answer(link: &Link) -> bool {
    link.in_flight
        .iter()
        .flatten()
        .any(|sent| sent.ticket.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatflow_protocol::{shard_of, Rooms};

    #[test]
    fn route_indexes_find_their_room_and_shard() {
        let topology = Topology::new("t", Rooms::new(7).unwrap());
        let routes = Routes::new(&topology);
        assert_eq!(routes.keys.len(), 35);
        for room in 1..=7 {
            for user in [1, 2, 3, 4, 5, 99_999] {
                let shard = shard_of(user);
                assert_eq!(
                    routes.key(Routes::index(room, shard)),
                    routing_key(room, shard)
                );
            }
        }
    }
}

//! The durable broker: accepted messages are published to RabbitMQ as
//! persistent messages on confirm channels, and the client's ack waits for
//! the broker's confirm. Room broadcasts come back from the consumers over
//! Redis ([`super::redis_subscriber`]).
//!
//! Workers never block on the broker: `publish` hands the encoded envelope
//! to a publisher thread over a bounded channel and answers `Pending`; the
//! publisher thread answers the worker later with `WorkerEvent::Published`.
//! A sender always goes through the same publisher (by user id), and one
//! channel publishes in order, so one sender's messages stay in order.
//!
//! Failure handling: amiquip does not reconnect, so each publisher does. While
//! it is disconnected, new messages are refused at once (`UNAVAILABLE`);
//! messages published but not yet confirmed when the connection drops are
//! failed to their clients, who may retry (the broker may still have stored
//! them: a client retry can then duplicate a message under a new id, never
//! lose one). `/health` says `degraded` with the reason.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use amiquip::{AmqpProperties, Channel, Confirm, Connection, Publish};
use chatflow_broker::{AmqpEndpoint, Declare};
use chatflow_protocol::{routing_key, Envelope, Topology};
use crossbeam_channel::{bounded, select, Receiver, Sender, TrySendError};
use parking_lot::Mutex;

use super::redis_subscriber::RedisSubscriber;
use super::{Broker, BrokerHealth, Outcome, Ticket};
use crate::config::{BrokerKind, Config};
use crate::fanout::{Fanout, WorkerEvent};

/// Backoff between reconnection attempts: from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often an idle publisher looks at the shutdown flag.
const TICK: Duration = Duration::from_millis(100);
/// Publishes taken from the queue in one go before confirms are read.
const PUBLISH_BURST: usize = 256;
/// On shutdown, how long in-flight messages may wait for their confirm.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// One message on its way to a publisher thread.
struct PublishRequest {
    ticket: Ticket,
    routing_key: String,
    body: Vec<u8>,
}

/// A connection's state, shared by its thread and `/health`.
#[derive(Default)]
pub struct LinkState {
    connected: AtomicBool,
    reason: Mutex<String>,
}

impl LinkState {
    pub fn set_up(&self) {
        self.connected.store(true, Ordering::Release);
        self.reason.lock().clear();
    }

    pub fn set_down(&self, reason: String) {
        self.connected.store(false, Ordering::Release);
        *self.reason.lock() = reason;
    }

    pub fn is_up(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub fn reason(&self) -> String {
        self.reason.lock().clone()
    }
}

pub struct RabbitBroker {
    publishers: Vec<(Sender<PublishRequest>, Arc<LinkState>)>,
    subscriber: RedisSubscriber,
    stopping: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl RabbitBroker {
    /// Connects every publisher (waiting for the first connection so a
    /// misconfigured server fails at start rather than refusing every
    /// message) and starts the Redis subscriber.
    pub fn start(config: &Config, fanout: Fanout) -> anyhow::Result<Self> {
        let services = &config.services;
        let topology = services.topology.clone();
        let stopping = Arc::new(AtomicBool::new(false));
        let mut publishers = Vec::new();
        let mut threads = Vec::new();
        for index in 0..config.publishing.publishers {
            let (requests, incoming) = bounded(config.publishing.publish_queue);
            let state = Arc::new(LinkState::default());
            let mut publisher = Publisher {
                index,
                endpoint: services.amqp.clone(),
                topology: topology.clone(),
                requests: incoming,
                fanout: fanout.clone(),
                state: state.clone(),
                stopping: stopping.clone(),
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
                    .spawn(move || publisher.run(Some(link)))?,
            );
            publishers.push((requests, state));
        }
        let subscriber =
            RedisSubscriber::start(&services.redis, topology, fanout, stopping.clone())?;
        Ok(RabbitBroker {
            publishers,
            subscriber,
            stopping,
            threads: Mutex::new(threads),
        })
    }
}

impl Broker for RabbitBroker {
    fn kind(&self) -> BrokerKind {
        BrokerKind::Rabbitmq
    }

    fn publish(&self, ticket: Ticket, envelope: &Envelope<'_>) -> Outcome {
        let (requests, state) = &self.publishers[envelope.user_id as usize % self.publishers.len()];
        if !state.is_up() {
            return Outcome::Refused("the message broker is unreachable");
        }
        let request = PublishRequest {
            ticket,
            routing_key: routing_key(envelope.room_id, envelope.shard()),
            body: envelope.encode(),
        };
        match requests.try_send(request) {
            Ok(()) => Outcome::Pending,
            Err(TrySendError::Full(_)) => Outcome::Refused("the server's publish queue is full"),
            Err(TrySendError::Disconnected(_)) => Outcome::Refused("the server is shutting down"),
        }
    }

    fn health(&self) -> BrokerHealth {
        let mut problems = Vec::new();
        for (i, (_, state)) in self.publishers.iter().enumerate() {
            if !state.is_up() {
                problems.push(format!("rabbitmq publisher-{i}: {}", state.reason()));
            }
        }
        if !self.subscriber.state.is_up() {
            problems.push(format!("redis: {}", self.subscriber.state.reason()));
        }
        BrokerHealth {
            connected: problems.is_empty(),
            detail: if problems.is_empty() {
                format!(
                    "rabbitmq: {} publisher(s) connected; redis: subscribed ({} reconnects)",
                    self.publishers.len(),
                    self.subscriber.reconnects()
                )
            } else {
                problems.join("; ")
            },
        }
    }

    fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        for thread in self.threads.lock().drain(..) {
            let _ = thread.join();
        }
        self.subscriber.join();
    }
}

/// A live connection and its confirm channel.
struct Link {
    connection: Connection,
    channel: Channel,
    confirms: Receiver<Confirm>,
    exchange: String,
    /// Published, unconfirmed: the slot of delivery tag `base_tag + i`;
    /// `None` once confirmed out of order.
    in_flight: VecDeque<Option<Ticket>>,
    base_tag: u64,
}

struct Publisher {
    index: usize,
    endpoint: AmqpEndpoint,
    topology: Topology,
    requests: Receiver<PublishRequest>,
    fanout: Fanout,
    state: Arc<LinkState>,
    stopping: Arc<AtomicBool>,
}

impl Publisher {
    fn connect(&mut self) -> Result<Link, String> {
        let mut connection =
            chatflow_broker::amqp::connect(&self.endpoint).map_err(|e| e.to_string())?;
        let text = |e: amiquip::Error| e.to_string();
        let channel = connection.open_channel(None).map_err(text)?;
        self.topology.declare(&channel).map_err(text)?;
        let confirms = channel.listen_for_publisher_confirms().map_err(text)?;
        channel.enable_publisher_confirms().map_err(text)?;
        Ok(Link {
            connection,
            channel,
            confirms,
            exchange: self.topology.exchange(),
            in_flight: VecDeque::new(),
            base_tag: 1,
        })
    }

    /// Publishes until shutdown, reconnecting whenever the link drops.
    fn run(mut self, mut link: Option<Link>) {
        let mut backoff = BACKOFF_FIRST;
        loop {
            let Some(live) = link.take() else {
                if self.stopping.load(Ordering::Acquire) {
                    return self.refuse_queued("the server is shutting down");
                }
                self.wait_refusing(backoff);
                match self.connect() {
                    Ok(live) => {
                        eprintln!("publisher-{}: connected to RabbitMQ", self.index);
                        self.state.set_up();
                        backoff = BACKOFF_FIRST;
                        link = Some(live);
                    }
                    Err(e) => {
                        self.state.set_down(format!("reconnecting: {e}"));
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
                continue;
            };
            match self.serve(live) {
                Ok(()) => return,
                Err(reason) => {
                    eprintln!(
                        "publisher-{}: RabbitMQ connection lost: {reason}",
                        self.index
                    );
                    self.state.set_down(format!("connection lost: {reason}"));
                }
            }
        }
    }

    /// Publishes and reads confirms on one live link. `Ok` on shutdown (after
    /// in-flight messages were confirmed), `Err` when the link broke.
    fn serve(&mut self, mut link: Link) -> Result<(), String> {
        let outcome = loop {
            if self.stopping.load(Ordering::Acquire) {
                break self.drain(&mut link);
            }
            select! {
                recv(self.requests) -> request => {
                    let Ok(request) = request else { break self.drain(&mut link) };
                    if let Err(e) = self.publish(&mut link, request) {
                        break Err(e);
                    }
                    // Take what else is waiting before looking at confirms:
                    // one wake-up, many publishes.
                    for request in self.requests.try_iter().take(PUBLISH_BURST) {
                        if let Err(e) = self.publish(&mut link, request) {
                            return self.lost(link, e);
                        }
                    }
                }
                recv(link.confirms) -> confirm => match confirm {
                    Ok(confirm) => self.confirmed(&mut link, confirm),
                    Err(_) => break Err("the confirm stream ended".to_string()),
                },
                default(TICK) => {}
            }
        };
        match outcome {
            Ok(()) => {
                let _ = link.channel.close();
                let _ = link.connection.close();
                Ok(())
            }
            Err(e) => self.lost(link, e),
        }
    }

    fn publish(&self, link: &mut Link, request: PublishRequest) -> Result<(), String> {
        let properties = AmqpProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".to_string());
        let publish = Publish::with_properties(&request.body, request.routing_key, properties);
        match link.channel.basic_publish(link.exchange.clone(), publish) {
            Ok(()) => {
                link.in_flight.push_back(Some(request.ticket));
                Ok(())
            }
            Err(e) => {
                self.answer(request.ticket, Err(format!("publish failed: {e}")));
                Err(e.to_string())
            }
        }
    }

    /// Resolves the tickets a confirm covers.
    fn confirmed(&self, link: &mut Link, confirm: Confirm) {
        let (payload, result) = match confirm {
            Confirm::Ack(payload) => (payload, Ok(())),
            Confirm::Nack(payload) => (
                payload,
                Err("the broker refused the message (queue full or unavailable)"),
            ),
        };
        let tag = payload.delivery_tag;
        if tag < link.base_tag {
            return;
        }
        let last = (tag - link.base_tag) as usize;
        let first = if payload.multiple { 0 } else { last };
        for slot in first..=last.min(link.in_flight.len().saturating_sub(1)) {
            if let Some(ticket) = link.in_flight[slot].take() {
                self.answer(ticket, result.map_err(str::to_string));
            }
        }
        while link.in_flight.front().is_some_and(Option::is_none) {
            link.in_flight.pop_front();
            link.base_tag += 1;
        }
    }

    /// On shutdown: waits (bounded) for the confirms of what is in flight.
    fn drain(&self, link: &mut Link) -> Result<(), String> {
        self.refuse_queued("the server is shutting down");
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while link.in_flight.iter().any(Option::is_some) {
            let left = deadline.saturating_duration_since(Instant::now());
            match link.confirms.recv_timeout(left) {
                Ok(confirm) => self.confirmed(link, confirm),
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// The link broke: every unconfirmed message fails to its client.
    fn lost(&self, link: Link, reason: String) -> Result<(), String> {
        for ticket in link.in_flight.into_iter().flatten() {
            self.answer(
                ticket,
                Err(format!(
                    "the broker connection dropped before it confirmed ({reason})"
                )),
            );
        }
        // Closing a broken connection can only fail; dropping is enough.
        drop(link.channel);
        drop(link.connection);
        Err(reason)
    }

    /// Sleeps `pause`, refusing whatever arrives meanwhile.
    fn wait_refusing(&self, pause: Duration) {
        let deadline = Instant::now() + pause;
        while let Ok(request) = self
            .requests
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.answer(
                request.ticket,
                Err("the message broker is unreachable".to_string()),
            );
        }
    }

    fn refuse_queued(&self, reason: &str) {
        for request in self.requests.try_iter() {
            self.answer(request.ticket, Err(reason.to_string()));
        }
    }

    fn answer(&self, ticket: Ticket, result: Result<(), String>) {
        self.fanout
            .send_to(ticket.worker, WorkerEvent::Published { ticket, result });
    }
}

//! One publisher thread (`publisher-N`): it owns a confirm channel and
//! keeps exactly its window of publishes unconfirmed — a closed loop, as
//! the load client's connections keep their window of messages unacked —
//! publishing the next message as soon as a confirm frees a slot.
//!
//! Messages are persistent (delivery mode 2) JSON, as the server publishes
//! them, to the topology's direct exchange. Confirms are read in tag order
//! through amiquip's `ConfirmSmoother` (RabbitMQ may confirm several tags
//! at once, or out of order), so the oldest outstanding publish is always
//! the one a confirm settles, and its publish → confirm time is recorded.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amiquip::{AmqpProperties, Channel, Confirm, ConfirmSmoother, Connection, Publish};
use chatflow_broker::amqp::ConnectError;
use chatflow_broker::{AmqpEndpoint, Shutdown};
use crossbeam_channel::{never, select, Receiver};
use hdrhistogram::Histogram;

use super::config::Until;
use super::messages::Pool;

/// How long a publisher with messages outstanding waits for any confirm
/// before it calls the broker stuck (RabbitMQ under memory or disk alarm
/// blocks publishers indefinitely).
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a publisher stopped early.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("opening a confirm channel: {0}")]
    Channel(Box<amiquip::Error>),
    #[error("publishing: {0}")]
    Publish(Box<amiquip::Error>),
    #[error("the confirm stream ended (connection lost)")]
    ConfirmsEnded,
    #[error("no confirm for {} s with {unconfirmed} publishes outstanding", CONFIRM_TIMEOUT.as_secs())]
    Silent { unconfirmed: usize },
}

/// A publisher's connection, with its confirm channel ready.
pub struct Link {
    pub connection: Connection,
    pub channel: Channel,
    pub confirms: Receiver<Confirm>,
}

impl Link {
    /// Connects (the endpoint's next node) and enables confirms, listening
    /// first so no confirm can be missed.
    pub fn open(endpoint: &AmqpEndpoint) -> Result<Link, PublishError> {
        let mut connection = chatflow_broker::amqp::connect(endpoint)?;
        let channel = connection
            .open_channel(None)
            .map_err(|e| PublishError::Channel(Box::new(e)))?;
        let confirms = chatflow_broker::amqp::enable_confirms(&channel)
            .map_err(|e| PublishError::Channel(Box::new(e)))?;
        Ok(Link {
            connection,
            channel,
            confirms,
        })
    }
}

/// What one publisher did.
pub struct Published {
    pub published: u64,
    pub confirmed: u64,
    pub nacked: u64,
    /// Publish → confirm, in microseconds, of every confirmed message.
    pub latency: Histogram<u64>,
    /// Its first publish and its last confirm (`None` if it published
    /// nothing).
    pub started: Option<Instant>,
    pub last_confirm: Option<Instant>,
}

/// One publisher, before it runs.
pub struct Publisher {
    pub channel: Channel,
    pub confirms: Receiver<Confirm>,
    pub exchange: String,
    pub pool: Arc<Pool>,
    /// Where in the pool it starts (publishers start apart, so they do not
    /// publish the same sequence of queues in step).
    pub offset: usize,
    /// Unconfirmed publishes it keeps outstanding.
    pub window: usize,
    /// Its share of the phase.
    pub until: Until,
    /// Opens when every publisher (and consumer) is ready.
    pub gate: Shutdown,
    /// Stop publishing, settle what is outstanding, return.
    pub stop: Shutdown,
}

impl Publisher {
    /// Waits for the gate, then publishes until its share is done or it is
    /// stopped, and waits for every outstanding confirm.
    pub fn run(self) -> Result<Published, PublishError> {
        let mut done = Published {
            published: 0,
            confirmed: 0,
            nacked: 0,
            // 1 µs to 1 h at 3 significant figures: never saturates.
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("static histogram bounds"),
            started: None,
            last_confirm: None,
        };
        select! {
            recv(self.gate) -> _ => {}
            recv(self.stop) -> _ => return Ok(done),
        }
        let properties = AmqpProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".to_string());
        let started = Instant::now();
        done.started = Some(started);
        let deadline = match self.until {
            Until::Elapsed(d) => Some(started + d),
            Until::Messages(_) => None,
        };
        let may_publish = |published: u64, now: Instant| match self.until {
            Until::Messages(n) => published < n,
            Until::Elapsed(_) => deadline.is_some_and(|d| now < d),
        };
        let mut outstanding: VecDeque<Instant> = VecDeque::with_capacity(self.window);
        let mut smoother = ConfirmSmoother::new();
        let mut stop = self.stop.clone();
        let mut stopping = false;
        let mut next = self.offset;
        let mut progress = Instant::now();
        loop {
            let mut now = Instant::now();
            while !stopping && outstanding.len() < self.window && may_publish(done.published, now) {
                let message = self.pool.get(next);
                next += 1;
                let publish = Publish {
                    body: &message.body,
                    routing_key: self.pool.key(message).to_owned(),
                    mandatory: false,
                    immediate: false,
                    properties: properties.clone(),
                };
                self.channel
                    .basic_publish(self.exchange.as_str(), publish)
                    .map_err(|e| PublishError::Publish(Box::new(e)))?;
                now = Instant::now();
                outstanding.push_back(now);
                done.published += 1;
                progress = now;
            }
            if outstanding.is_empty() && (stopping || !may_publish(done.published, now)) {
                break;
            }
            // Wake for the next confirm; at the deadline, to stop publishing;
            // or when the broker has said nothing for too long.
            let silent_at = progress + CONFIRM_TIMEOUT;
            let wake = match deadline {
                Some(d) if !stopping && now < d => d.min(silent_at),
                _ => silent_at,
            };
            select! {
                recv(self.confirms) -> confirm => {
                    let confirm = confirm.map_err(|_| PublishError::ConfirmsEnded)?;
                    let now = Instant::now();
                    for settled in smoother.process(confirm) {
                        // Tags are 1, 2, … in publish order, and the
                        // smoother yields them in that order.
                        let Some(sent) = outstanding.pop_front() else { break };
                        match settled {
                            Confirm::Ack(_) => {
                                done.confirmed += 1;
                                let us = now.saturating_duration_since(sent).as_micros() as u64;
                                done.latency.saturating_record(us.max(1));
                            }
                            Confirm::Nack(_) => done.nacked += 1,
                        }
                        done.last_confirm = Some(now);
                    }
                    progress = now;
                }
                recv(stop) -> _ => {
                    stopping = true;
                    // A signalled stop stays ready: listen no more.
                    stop = never();
                }
                default(wake.saturating_duration_since(now)) => {
                    if !outstanding.is_empty() && Instant::now() >= silent_at {
                        return Err(PublishError::Silent { unconfirmed: outstanding.len() });
                    }
                }
            }
        }
        let _ = self.channel.close();
        Ok(done)
    }
}

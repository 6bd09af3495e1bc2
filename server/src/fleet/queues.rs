//! Queue depths for the API (`live.queues`): the `queue-depths` thread
//! passive-declares every `{ns}.room.{r}.{s}` queue every [`POLL_EVERY`]
//! on its own AMQP connection and channel, and keeps the latest sample;
//! [`QueueDepths::latest`] reads it at any time without waiting on
//! RabbitMQ (its `ageSeconds` says how old it is).
//!
//! A passive declare is the cheapest question RabbitMQ answers per queue
//! (one round trip: ready messages and consumers); the management HTTP
//! API would need another port, credentials and a JSON parse of every
//! queue on the broker.
//!
//! Failures: a queue that does not exist (someone deleted it; the server
//! re-declares on reconnect) is answered with a 404 that closes the
//! channel: it is listed in `missingQueues`, the channel is reopened and
//! the poll goes on. Anything else drops the connection; it is reopened
//! with the workspace's one jittered [`Backoff`], and meanwhile the API
//! shows the last good sample (with its age) and the error. amiquip has no
//! RPC timeout: a broker that hangs without closing the socket holds a
//! poll until the heartbeat notices (two intervals), which only makes the
//! sample older — the API never waits for it.
//!
//! Start it only with `--broker rabbitmq` (and the API on); otherwise the
//! API shows [`QueuesPart::unavailable`].

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use amiquip::{Channel, Connection};
use chatflow_broker::amqp::ConnectError;
use chatflow_broker::retry::wait;
use chatflow_broker::{AmqpEndpoint, Backoff, Shutdown};
use chatflow_protocol::SHARDS_PER_ROOM;
use parking_lot::Mutex;
use serde::Serialize;

use super::{not_available, round3};
use crate::config::{BrokerKind, Config};

/// How often the depths are sampled (the API's "sampled every 2 s"): a
/// hundred round trips every two seconds is nothing to RabbitMQ.
pub const POLL_EVERY: Duration = Duration::from_secs(2);

/// Back-off between reconnection attempts: from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The `queues` part of the API's `live` section.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueuesPart {
    /// `rabbitmq`, or `local` without it.
    pub source: &'static str,
    /// Why the latest poll failed (or why there is no sample); the last
    /// good sample, if any, is still shown with its age.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(flatten)]
    pub sample: Option<QueueSample>,
}

impl QueuesPart {
    /// What the API shows with a broker that has no queues.
    pub fn unavailable(broker: BrokerKind) -> Self {
        QueuesPart {
            source: "local",
            error: Some(not_available(broker)),
            sample: None,
        }
    }
}

/// One poll of every queue.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueSample {
    /// Seconds since the poll finished.
    pub age_seconds: f64,
    /// Ready messages in every room queue (unacked ones are not counted:
    /// RabbitMQ's passive declare reports ready messages).
    pub total_messages: u64,
    pub rooms: Vec<RoomDepth>,
    /// Queues that did not exist at the poll (absent when none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_queues: Vec<String>,
}

/// One room's queues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomDepth {
    pub room_id: u32,
    /// Ready messages over the room's shards.
    pub messages: u64,
    /// Consumers over the room's shards (one per shard when the consumer
    /// fleet is whole).
    pub consumers: u64,
    /// Ready messages per shard, shard 0 first.
    pub shards: Vec<u64>,
}

/// Why a poll failed.
#[derive(Debug, thiserror::Error)]
pub enum DepthError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    // amiquip's error is large: boxed, like the publishers' `LinkError`.
    #[error("opening a channel: {0}")]
    Channel(Box<amiquip::Error>),
    #[error("declaring {queue} passively: {cause}")]
    Declare {
        queue: String,
        cause: Box<amiquip::Error>,
    },
}

/// The latest poll as the thread left it.
#[derive(Default)]
struct State {
    sample: Option<(Instant, QueueSample)>,
    error: Option<String>,
    /// How long the latest successful poll took.
    poll_time: Duration,
}

/// The running `queue-depths` thread and its latest sample.
pub struct QueueDepths {
    state: Arc<Mutex<State>>,
    thread: Option<JoinHandle<()>>,
}

impl QueueDepths {
    /// Starts polling (the first poll at once) until `shutdown`. Only
    /// spawning can fail: RabbitMQ being away is the sample's error.
    pub fn start(config: &Config, shutdown: Shutdown) -> io::Result<QueueDepths> {
        let state = Arc::new(Mutex::new(State {
            error: Some("the first sample is being taken".to_string()),
            ..State::default()
        }));
        let topology = &config.services.topology;
        let mut poller = Poller {
            endpoint: config.services.amqp.clone(),
            queues: (topology.shards())
                .map(|(room, shard)| (room, topology.queue(room, shard)))
                .collect(),
            rooms: topology.rooms.count() as usize,
            link: None,
        };
        let thread = {
            let state = state.clone();
            std::thread::Builder::new()
                .name("queue-depths".to_string())
                .spawn(move || {
                    let address = poller.endpoint.display();
                    let seed = u64::from(std::process::id()) << 8 | 0xd3;
                    let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX, seed);
                    loop {
                        let started = Instant::now();
                        let pause = match poller.poll() {
                            Ok(sample) => {
                                let mut state = state.lock();
                                state.sample = Some((Instant::now(), sample));
                                state.error = None;
                                state.poll_time = started.elapsed();
                                backoff.reset();
                                POLL_EVERY.saturating_sub(started.elapsed())
                            }
                            Err(e) => {
                                poller.link = None;
                                state.lock().error = Some(format!("rabbitmq at {address}: {e}"));
                                backoff.next_delay()
                            }
                        };
                        if wait(&shutdown, pause) {
                            break;
                        }
                    }
                    if let Some(link) = poller.link.take() {
                        link.close();
                    }
                })?
        };
        Ok(QueueDepths {
            state,
            thread: Some(thread),
        })
    }

    /// The latest sample (or why there is none), without waiting.
    pub fn latest(&self) -> QueuesPart {
        let state = self.state.lock();
        QueuesPart {
            source: "rabbitmq",
            error: state.error.clone(),
            sample: state.sample.as_ref().map(|(at, sample)| QueueSample {
                age_seconds: round3(at.elapsed().as_secs_f64()),
                ..sample.clone()
            }),
        }
    }

    /// How long the latest successful poll took (zero before one).
    pub fn last_poll_time(&self) -> Duration {
        self.state.lock().poll_time
    }

    /// Waits for the thread to end: call after signalling its shutdown.
    pub fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The polling thread's side: the queue names and the AMQP link.
struct Poller {
    endpoint: AmqpEndpoint,
    /// (room, queue name) of every (room, shard), in `Topology::shards`
    /// order: rooms from 1, each with its shards from 0.
    queues: Vec<(u32, String)>,
    rooms: usize,
    link: Option<Link>,
}

struct Link {
    connection: Connection,
    /// `None` after a 404 closed it.
    channel: Option<Channel>,
}

impl Link {
    fn close(self) {
        if let Some(channel) = self.channel {
            let _ = channel.close();
        }
        let _ = self.connection.close();
    }
}

impl Poller {
    fn poll(&mut self) -> Result<QueueSample, DepthError> {
        let link = match &mut self.link {
            Some(link) => link,
            None => self.link.insert(Link {
                connection: chatflow_broker::amqp::connect(&self.endpoint)?,
                channel: None,
            }),
        };
        let per_room = SHARDS_PER_ROOM as usize;
        let mut rooms: Vec<RoomDepth> = (1..=self.rooms as u32)
            .map(|room_id| RoomDepth {
                room_id,
                messages: 0,
                consumers: 0,
                shards: vec![0; per_room],
            })
            .collect();
        let mut missing = Vec::new();
        for (i, (room, queue)) in self.queues.iter().enumerate() {
            let channel = match &mut link.channel {
                Some(channel) => channel,
                None => link.channel.insert(
                    (link.connection.open_channel(None))
                        .map_err(|e| DepthError::Channel(Box::new(e)))?,
                ),
            };
            match channel.queue_declare_passive(queue.as_str()) {
                Ok(declared) => {
                    let messages = u64::from(declared.declared_message_count().unwrap_or(0));
                    let consumers = u64::from(declared.declared_consumer_count().unwrap_or(0));
                    let depth = &mut rooms[*room as usize - 1];
                    depth.messages += messages;
                    depth.consumers += consumers;
                    depth.shards[i % per_room] = messages;
                }
                Err(amiquip::Error::ServerClosedChannel { code: 404, .. }) => {
                    // The broker closed the channel: the next queue gets a
                    // fresh one.
                    link.channel = None;
                    missing.push(queue.clone());
                }
                Err(cause) => {
                    return Err(DepthError::Declare {
                        queue: queue.clone(),
                        cause: Box::new(cause),
                    })
                }
            }
        }
        Ok(QueueSample {
            age_seconds: 0.0,
            total_messages: rooms.iter().map(|r| r.messages).sum(),
            rooms,
            missing_queues: missing,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parts_have_the_api_shape() {
        assert_eq!(
            serde_json::to_value(QueuesPart::unavailable(BrokerKind::None)).unwrap(),
            json!({"source": "local", "error": "not available with --broker none"})
        );
        let part = QueuesPart {
            source: "rabbitmq",
            error: None,
            sample: Some(QueueSample {
                age_seconds: 0.8,
                total_messages: 12,
                rooms: vec![RoomDepth {
                    room_id: 1,
                    messages: 12,
                    consumers: 5,
                    shards: vec![12, 0, 0, 0, 0],
                }],
                missing_queues: vec![],
            }),
        };
        assert_eq!(
            serde_json::to_value(part).unwrap(),
            json!({"source": "rabbitmq", "ageSeconds": 0.8, "totalMessages": 12,
                   "rooms": [{"roomId": 1, "messages": 12, "consumers": 5, "shards": [12, 0, 0, 0, 0]}]})
        );
    }
}

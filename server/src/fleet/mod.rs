//! Live fleet statistics for the read API's `live` section (server/API.md):
//! self-contained pieces, each with one constructor, that `Server::start`
//! and the API handler wire together.
//!
//! - [`snapshot`]: the SERVER SNAPSHOT document ([`ServerSnapshot`]), the
//!   window of totals its rates come from, and [`Latest`], the snapshot in
//!   memory;
//! - [`publisher`]: the `fleet-stats` thread ([`StatsPublisher::start`]):
//!   a snapshot a second, kept in [`Latest`] and, with `--broker rabbitmq`,
//!   published to Redis;
//! - [`reader`]: [`FleetReader`], every server's and consumer's snapshot
//!   read back from Redis for one API request, in bounded time (or this
//!   server alone, `source: "local"`, without Redis);
//! - [`queues`]: the `queue-depths` thread ([`QueueDepths::start`]), ready
//!   messages and consumers of every room queue, sampled every 2 s.
//!
//! The Redis keys and the publish/read rules (expiry 10 s, index pruned
//! after 60 s, fresh within 10 s) are `chatflow_broker::fleet`'s, shared
//! with the consumer, which publishes its own CONSUMER SNAPSHOT the same
//! way. Nothing here runs on a worker's thread or is waited on by one.
//!
//! Wiring, for a server with `config`, its `Arc<Shared>` and broker, and
//! `shutdown` a listener of its stop signal (step 1 of `Server::shutdown`,
//! so a stopping server leaves the fleet view at once):
//!
//! ```text
//! let health = { let (s, b) = (shared.clone(), broker.clone()); move || s.health(&*b) };
//! let publisher = StatsPublisher::start(&config, Box::new(health), shutdown.clone())?;
//! let reader = FleetReader::new(&config, publisher.latest())?;
//! // Only with the API on:
//! let queues = (config.broker == BrokerKind::Rabbitmq)
//!     .then(|| QueueDepths::start(&config, shutdown.clone()))
//!     .transpose()?;
//! // Per request (none blocks longer than the Redis timeout; `latest` never):
//! //   reader.read_servers(), reader.read_consumers(),
//! //   queues.as_ref().map_or(QueuesPart::unavailable(config.broker), QueueDepths::latest)
//! // For /health if wanted: publisher.stats().
//! // After the signal: publisher.join(); queues.join() (each at most a
//! // Redis timeout, or an AMQP round trip, late).
//! ```

pub mod publisher;
pub mod queues;
pub mod reader;
pub mod snapshot;

pub use publisher::{HealthSource, PublishStats, StatsPublisher};
pub use queues::{QueueDepths, QueuesPart};
pub use reader::{ConsumersPart, FleetReader, ServersPart};
pub use snapshot::{Latest, ServerSnapshot};

use crate::config::BrokerKind;

/// What a part says when this broker has no such thing (`--broker memory`
/// or `none`: no Redis, no RabbitMQ).
pub fn not_available(broker: BrokerKind) -> String {
    format!("not available with --broker {}", broker.as_str())
}

/// Seconds and rates to the millisecond (or thousandth): more digits are
/// noise in a document read by people.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

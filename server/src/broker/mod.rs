//! The broker boundary: the one interface between workers and "where accepted
//! messages go and where broadcasts come from".
//!
//! A worker hands every validated message to [`Broker::publish`] and sends
//! the client's `ack` when the broker says the message is accepted. Room
//! broadcasts reach workers through the [`Fanout`](crate::fanout::Fanout)
//! the broker was built with. Implementations: [`memory`] (in-process
//! broadcast), [`none`] (ack only) and [`rabbitmq`] (publisher confirms,
//! broadcasts back over Redis). A durable broker answers
//! [`Outcome::Pending`] and later sends the worker
//! [`WorkerEvent::Published`](crate::fanout::WorkerEvent::Published) with the
//! same ticket; the worker then acks (or errors) the client.

pub mod memory;
pub mod none;
pub mod rabbitmq;
pub mod redis_subscriber;

use std::sync::Arc;

use chatflow_protocol::Envelope;

use crate::config::{BrokerKind, Config};
use crate::fanout::Fanout;

/// What the broker says about one offered message.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted as durably as this broker can: ack the client now.
    Accepted,
    /// The answer will come to the worker's inbox with this ticket.
    Pending,
    /// Not accepted; the client gets an `UNAVAILABLE` error saying why.
    Refused(&'static str),
}

/// Names one offered message: the worker that offered it and a number that
/// worker never reuses. A broker answering `Pending` returns it in
/// `WorkerEvent::Published` to `worker`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ticket {
    pub worker: usize,
    pub id: u64,
}

/// The broker's state for `/health`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerHealth {
    pub connected: bool,
    pub detail: String,
}

pub trait Broker: Send + Sync {
    fn kind(&self) -> BrokerKind;

    /// Offers one accepted message. Called on a worker's thread: must not
    /// block.
    fn publish(&self, ticket: Ticket, envelope: &Envelope<'_>) -> Outcome;

    fn health(&self) -> BrokerHealth {
        BrokerHealth {
            connected: true,
            detail: "in-process".to_string(),
        }
    }

    /// Called once, after every worker has stopped.
    fn shutdown(&self) {}
}

/// Makes the broker once the workers' inboxes exist. Tests pass their own.
pub type BrokerFactory<'a> =
    Box<dyn FnOnce(&Config, Fanout) -> anyhow::Result<Arc<dyn Broker>> + 'a>;

/// Builds the broker the configuration names.
pub fn build(config: &Config, fanout: Fanout) -> anyhow::Result<Arc<dyn Broker>> {
    Ok(match config.broker {
        BrokerKind::Rabbitmq => Arc::new(rabbitmq::RabbitBroker::start(config, fanout)?),
        BrokerKind::Memory => Arc::new(memory::MemoryBroker::new(fanout)),
        BrokerKind::None => Arc::new(none::NoBroker),
    })
}

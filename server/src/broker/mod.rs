//! The broker boundary: the one interface between workers and "where accepted
//! messages go and where broadcasts come from".
//!
//! A worker hands every validated message to [`Broker::publish`] and sends
//! the client's `ack` when the broker says the message is accepted. Room
//! broadcasts reach workers through the [`Fanout`] the broker was built
//! with. Implementations: [`memory`] (in-process broadcast), [`none`] (ack
//! only) and [`rabbitmq`] (publisher confirms, broadcasts back over Redis,
//! [`redis_subscriber`]; both links report through [`link_state`]; each
//! room's history in Redis read through [`stream`], for resuming clients
//! by the [`history`] thread). A
//! durable broker answers [`Outcome::Pending`] and later sends the worker
//! [`WorkerEvent::Published`](crate::fanout::WorkerEvent::Published) with the
//! same [`Ticket`]; the worker then acks (or errors) the client.
//!
//! This module only declares the interface; which implementation runs is
//! chosen in [`crate::server`], so no implementation and this module import
//! each other.

pub mod claimer;
pub mod history;
pub mod link_state;
pub mod memory;
pub mod none;
pub mod publish_metrics;
pub mod rabbitmq;
pub mod redis_subscriber;
pub mod sent_log;
pub mod stream;

use std::sync::Arc;
use std::time::Duration;

use chatflow_protocol::Envelope;

use crate::config::{BrokerKind, Config};
use crate::fanout::{Fanout, PublishError, Ticket};
use history::History;

/// What the broker says about one offered message.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted as durably as this broker can: ack the client now.
    Accepted,
    /// The answer will come to the worker's inbox with this ticket.
    Pending,
    /// Not accepted; the client gets an `UNAVAILABLE` error saying why.
    Refused(PublishError),
}

/// The broker's state for `/health`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerHealth {
    pub connected: bool,
    pub detail: String,
    /// Every link that is down: what `/health`'s readiness is judged on
    /// (see [`crate::stats`]). Empty while `connected`.
    pub down: Vec<LinkDown>,
}

/// One link to an outside service that is down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkDown {
    /// Names the link, e.g. `rabbitmq publisher-0`.
    pub name: String,
    pub role: LinkRole,
    /// How long it has been down.
    pub down_for: Duration,
    pub reason: String,
}

/// What this server cannot do while a link is down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkRole {
    /// Accept messages: they are refused (`UNAVAILABLE`) at once.
    Publishing,
    /// Hear room broadcasts: its clients miss them meanwhile. A short
    /// outage is within `subscription_grace`: a reconnect is quick.
    Broadcasts,
}

pub trait Broker: Send + Sync {
    fn kind(&self) -> BrokerKind;

    /// Offers one accepted message. Called on a worker's thread: must not
    /// block. `client_message_id` is the client's name for it: a broker
    /// that makes sends idempotent answers a retry of the same
    /// `(userId, clientMessageId)` with the first message's id (see
    /// [`FirstSent`](crate::fanout::FirstSent)).
    fn publish(
        &self,
        ticket: Ticket,
        envelope: &Envelope<'_>,
        client_message_id: Option<&str>,
    ) -> Outcome;

    fn health(&self) -> BrokerHealth {
        BrokerHealth {
            connected: true,
            detail: "in-process".to_string(),
            down: Vec::new(),
        }
    }

    /// What its publishers measured (ack and confirm latency, in-flight
    /// messages), for `/metrics`; `None`: it has no publishers (in-process
    /// brokers answer at once).
    fn publishing(&self) -> Option<publish_metrics::PublishingSnapshot> {
        None
    }

    /// Where resuming connections read their room's history; `None`: this
    /// broker keeps none (their `recovery` frame says `UNAVAILABLE`).
    fn history(&self) -> Option<&History> {
        None
    }

    /// Called once, after every worker has stopped (the broker's part of
    /// the stop described in [`crate::server`]).
    fn shutdown(&self) {}
}

/// Makes the broker once the workers' inboxes exist. Tests pass their own.
pub type BrokerFactory<'a> =
    Box<dyn FnOnce(&Config, Fanout) -> anyhow::Result<Arc<dyn Broker>> + 'a>;

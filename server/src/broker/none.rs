//! The null broker: accepts every message and delivers nothing. It measures
//! the socket, framing and validation path alone.

use chatflow_protocol::Envelope;

use super::{Broker, Outcome};
use crate::config::BrokerKind;
use crate::fanout::Ticket;

pub struct NoBroker;

impl Broker for NoBroker {
    fn kind(&self) -> BrokerKind {
        BrokerKind::None
    }

    fn publish(
        &self,
        _ticket: Ticket,
        _envelope: &Envelope<'_>,
        _client_message_id: Option<&str>,
    ) -> Outcome {
        Outcome::Accepted
    }
}

//! The in-process broker: an accepted message is broadcast at once to every
//! member of its room on every worker of this server, the sender included.
//! No durability and no other servers: for demos, tests and measuring the
//! server's own broadcast path.

use chatflow_protocol::Envelope;
use tungstenite::Utf8Bytes;

use super::{Broker, Outcome};
use crate::config::BrokerKind;
use crate::fanout::{Fanout, Ticket};

pub struct MemoryBroker {
    fanout: Fanout,
}

impl MemoryBroker {
    pub fn new(fanout: Fanout) -> Self {
        MemoryBroker { fanout }
    }
}

impl Broker for MemoryBroker {
    fn kind(&self) -> BrokerKind {
        BrokerKind::Memory
    }

    fn publish(
        &self,
        _ticket: Ticket,
        envelope: &Envelope<'_>,
        _client_message_id: Option<&str>,
    ) -> Outcome {
        // Serialised once here; every recipient shares these bytes.
        let frame = Utf8Bytes::from(envelope.broadcast_json());
        // No history here: nothing to resume from, so no position.
        self.fanout.broadcast(envelope.room_id, frame, None);
        Outcome::Accepted
    }
}

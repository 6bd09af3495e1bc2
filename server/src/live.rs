//! Where the read API's live stats come from ([`api::Live`]): the fleet
//! snapshots every server and consumer publishes to Redis (this server's
//! own alone without Redis) and the RabbitMQ queue depths the
//! `queue-depths` thread samples — each read timed for the document's
//! `timingsMs`.
//!
//! [`api::Live`]: crate::api::Live

use std::sync::Arc;

use crate::api::reply::Timings;
use crate::api::Live;
use crate::config::BrokerKind;
use crate::fleet::{FleetReader, QueueDepths, QueuesPart};

/// The live stats of the fleet as this server sees it.
pub struct FleetLive {
    pub reader: FleetReader,
    /// `None` without RabbitMQ (`--broker memory` or `none`).
    pub queues: Option<Arc<QueueDepths>>,
    pub broker: BrokerKind,
}

fn to_value<T: serde::Serialize>(part: T) -> serde_json::Value {
    serde_json::to_value(part).unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}))
}

impl Live for FleetLive {
    fn servers(&self, timings: &mut Timings) -> serde_json::Value {
        to_value(timings.time("liveServers", || self.reader.read_servers()))
    }

    fn consumers(&self, timings: &mut Timings) -> serde_json::Value {
        to_value(timings.time("liveConsumers", || self.reader.read_consumers()))
    }

    fn queues(&self, timings: &mut Timings) -> serde_json::Value {
        to_value(timings.time("queueDepths", || match &self.queues {
            Some(queues) => queues.latest(),
            None => QueuesPart::unavailable(self.broker),
        }))
    }
}

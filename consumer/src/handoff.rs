//! What queue consumers and PostgreSQL writers hand each other: rows to
//! store one way ([`Pending`], each a [`Row`] with the delivery it came
//! from), and what became of them the other ([`Committed`]). Neutral
//! ground: both sides import this module, neither imports the other.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chatflow_protocol::Envelope;

/// One message as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub message_id: uuid::Uuid,
    pub room_id: i32,
    pub user_id: i32,
    pub username: String,
    pub message: String,
    pub message_type: &'static str,
    pub client_timestamp: SystemTime,
    pub server_timestamp: SystemTime,
    pub server_id: String,
}

impl Row {
    pub fn from_envelope(envelope: &Envelope<'_>) -> Row {
        Row {
            message_id: envelope.message_id.as_uuid(),
            room_id: envelope.room_id as i32,
            user_id: envelope.user_id as i32,
            username: envelope.username.to_string(),
            message: envelope.message.to_string(),
            message_type: envelope.message_type.as_str(),
            client_timestamp: unix_ms(envelope.client_timestamp_ms),
            server_timestamp: unix_ms(envelope.server_timestamp.0),
            server_id: envelope.server_id.to_string(),
        }
    }
}

fn unix_ms(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// A row on its way to a writer, with the delivery it came from. A queue
/// consumer sends its batch's rows as one `Vec<Pending>`.
pub struct Pending {
    pub row: Row,
    /// Index of the queue consumer to tell when it is committed.
    pub consumer: usize,
    /// The consumer's channel lease the delivery came on (tags are per
    /// channel).
    pub epoch: u64,
    pub delivery_tag: u64,
    /// The broker redelivered it: it may already be stored.
    pub redelivered: bool,
}

/// A writer's report on rows it has dealt with, about deliveries received
/// on the channel of lease `epoch`.
#[derive(Clone, Debug, Default)]
pub struct Committed {
    pub epoch: u64,
    /// Committed: these deliveries may be acked.
    pub tags: Vec<u64>,
    /// Refused by the database on their own (a bad row, not an outage):
    /// these deliveries are poison, rejected to the dead-letter queue in
    /// tag order like undecodable ones.
    pub rejected: Vec<u64>,
}

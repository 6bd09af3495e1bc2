//! One message as stored in `messages`: what the writers COPY and the
//! generator loads.

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
    /// `TEXT`, `JOIN` or `LEAVE` (the schema's CHECK).
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

impl AsRef<Row> for Row {
    fn as_ref(&self) -> &Row {
        self
    }
}

/// Milliseconds since the Unix epoch (either side of it) as a `SystemTime`.
pub fn unix_ms(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// Microseconds since the Unix epoch (negative before it).
pub fn unix_micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

/// The inverse of [`unix_micros`].
pub fn from_unix_micros(us: i64) -> SystemTime {
    if us >= 0 {
        UNIX_EPOCH + Duration::from_micros(us as u64)
    } else {
        UNIX_EPOCH - Duration::from_micros(us.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_round_trip_on_both_sides_of_the_epoch() {
        for us in [0, 1, -1, 1_795_744_800_123_456, -86_400_000_000] {
            assert_eq!(unix_micros(from_unix_micros(us)), us);
        }
        assert_eq!(unix_micros(unix_ms(-1500)), -1_500_000);
    }
}

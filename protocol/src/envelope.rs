//! The queue envelope: what a server publishes to the broker for each
//! accepted message and what consumers decode, store and broadcast.
//!
//! JSON, so a message sitting in a queue can be read with the broker's own
//! tools. It carries everything the row and the broadcast need; the server
//! timestamp is assigned once, so a redelivery has the same id and the same
//! partition key.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::frame::{broadcast_json, Broadcast};
use crate::id::MessageId;
use crate::message::{ClientMessage, MessageType};
use crate::routing::shard_of;
use crate::time::ServerTime;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope<'a> {
    pub message_id: MessageId,
    pub room_id: u32,
    pub user_id: u32,
    #[serde(borrow)]
    pub username: Cow<'a, str>,
    #[serde(borrow)]
    pub message: Cow<'a, str>,
    pub message_type: MessageType,
    /// The client's timestamp as sent, and the same instant in milliseconds.
    #[serde(borrow)]
    pub client_timestamp: Cow<'a, str>,
    pub client_timestamp_ms: i64,
    pub server_timestamp: ServerTime,
    /// Which server accepted it (its configured id).
    #[serde(borrow)]
    pub server_id: Cow<'a, str>,
}

impl<'a> Envelope<'a> {
    /// The envelope of an accepted client message.
    pub fn accepted(
        message: &'a ClientMessage<'a>,
        room_id: u32,
        message_id: MessageId,
        server_timestamp: ServerTime,
        server_id: &'a str,
    ) -> Self {
        Envelope {
            message_id,
            room_id,
            user_id: message.user_id,
            username: Cow::Borrowed(&message.username),
            message: Cow::Borrowed(&message.message),
            message_type: message.message_type,
            client_timestamp: Cow::Borrowed(&message.timestamp),
            client_timestamp_ms: message.timestamp_ms,
            server_timestamp,
            server_id: Cow::Borrowed(server_id),
        }
    }

    pub fn decode(bytes: &'a [u8]) -> serde_json::Result<Envelope<'a>> {
        serde_json::from_slice(bytes)
    }

    pub fn encode(&self) -> Vec<u8> {
        // Only strings, numbers and ids: serialisation cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The shard (queue within the room) this message goes to.
    pub fn shard(&self) -> u32 {
        shard_of(self.user_id)
    }

    /// The `message` frame room members receive.
    pub fn broadcast(&self) -> Broadcast<'_> {
        Broadcast {
            message_id: self.message_id,
            room_id: self.room_id,
            user_id: self.user_id,
            username: Cow::Borrowed(&self.username),
            message: Cow::Borrowed(&self.message),
            message_type: self.message_type,
            timestamp: Cow::Borrowed(&self.client_timestamp),
            server_timestamp: self.server_timestamp,
        }
    }

    /// The `message` frame as JSON text, ready to send.
    pub fn broadcast_json(&self) -> String {
        broadcast_json(&self.broadcast())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::ServerFrame;

    #[test]
    fn envelope_round_trips_and_yields_the_broadcast() {
        let text = r#"{"userId":"12","username":"user12","message":"a \"quoted\" é","timestamp":"2026-11-27T02:00:00.123Z","messageType":"LEAVE"}"#;
        let msg = ClientMessage::parse(text).unwrap();
        let id = crate::id::IdGenerator::with_instance(9).next_id(1_795_744_800_500);
        let env = Envelope::accepted(&msg, 4, id, ServerTime(1_795_744_800_500), "srv-a");
        let bytes = env.encode();
        let decoded = Envelope::decode(&bytes).unwrap();
        assert_eq!(decoded, env);
        assert_eq!(decoded.shard(), 2);
        let frame_text = decoded.broadcast_json();
        match ServerFrame::parse(&frame_text).unwrap() {
            ServerFrame::Message(b) => {
                assert_eq!(b.message_id, id);
                assert_eq!(b.room_id, 4);
                assert_eq!(b.user_id, 12);
                assert_eq!(b.message, "a \"quoted\" é");
                assert_eq!(b.message_type, MessageType::Leave);
                assert_eq!(b.timestamp, "2026-11-27T02:00:00.123Z");
            }
            other => panic!("expected a message frame, got {other:?}"),
        }
    }

    #[test]
    fn garbage_does_not_decode() {
        assert!(Envelope::decode(b"not json").is_err());
        assert!(Envelope::decode(br#"{"messageId":"x"}"#).is_err());
    }
}

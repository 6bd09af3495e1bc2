//! Frames the server sends to clients. Every frame is a JSON object with a
//! `type`: `ack`, `error`, `message` (a room broadcast) or `recovery` (the
//! seam of a resume, sent only to a client that asked with `?since=`);
//! the presence frames (`presence`, `presence_join`, `presence_leave`),
//! sent only to members and to clients that asked, are in
//! [`crate::presence`].
//!
//! The same types serialise (server, consumer) and deserialise (client,
//! tests); strings are `Cow` so decoding borrows where it can.
//!
//! A `message` that came through its room's history ends with a
//! `"position"` field ([`crate::position`]): the consumer splices it into
//! the frame text, and [`Position::of_frame`](crate::Position::of_frame)
//! reads it back from the tail. [`Broadcast`] keeps the fields every
//! producer fills and ignores it when decoding, and [`ServerFrame`] lists
//! the frames every client gets; a `recovery` frame, which only a resuming
//! client gets, is decoded with [`Recovery::parse`]. (Either could join
//! them; today both stay as they are so that code built against them —
//! struct literals, exhaustive matches — keeps compiling.)

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::id::MessageId;
use crate::message::{MessageType, Problem, Rejection};
use crate::position::Position;
use crate::time::ServerTime;

/// Machine-readable error codes of `error` frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The frame is not a JSON object.
    BadJson,
    /// A field broke its rule; `field` and `reason` say which and how.
    ValidationFailed,
    /// The frame is larger than any valid message.
    TooLarge,
    /// Binary frames carry nothing in this protocol.
    UnsupportedFrame,
    /// A message's frames took too long to arrive; the connection closes.
    Timeout,
    /// The message was not accepted because the broker is down or refused
    /// it; the client may retry.
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "BAD_JSON",
            ErrorCode::ValidationFailed => "VALIDATION_FAILED",
            ErrorCode::TooLarge => "TOO_LARGE",
            ErrorCode::UnsupportedFrame => "UNSUPPORTED_FRAME",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }
}

/// Any server frame, tagged by `type`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame<'a> {
    Ack(#[serde(borrow)] Ack<'a>),
    Error(#[serde(borrow)] ErrorFrame<'a>),
    Message(#[serde(borrow)] Broadcast<'a>),
}

impl Rejection {
    /// The error code a rejection is answered with. (Here, not beside
    /// `Rejection`, so the message module needs nothing of the frames.)
    pub fn code(&self) -> ErrorCode {
        match self {
            Rejection::BadJson { .. } => ErrorCode::BadJson,
            Rejection::Invalid { .. } => ErrorCode::ValidationFailed,
        }
    }
}

impl<'a> ServerFrame<'a> {
    pub fn parse(text: &'a str) -> serde_json::Result<ServerFrame<'a>> {
        serde_json::from_str(text)
    }
}

/// The message was accepted durably (for RabbitMQ: the broker confirmed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ack<'a> {
    pub message_id: MessageId,
    pub room_id: u32,
    pub server_timestamp: ServerTime,
    /// Always `"OK"`.
    #[serde(borrow)]
    pub status: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<Cow<'a, str>>,
    /// The client's timestamp, echoed.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Cow<'a, str>>,
}

/// A frame or message was refused; the connection stays open unless the
/// close that follows says otherwise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorFrame<'a> {
    /// Always `"ERROR"`.
    #[serde(borrow)]
    pub status: Cow<'a, str>,
    pub code: ErrorCode,
    /// What went wrong, for a person.
    #[serde(borrow)]
    pub message: Cow<'a, str>,
    /// The offending field, as named on the wire.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub field: Option<Cow<'a, str>>,
    /// How the field is wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Problem>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<Cow<'a, str>>,
}

/// A room message as delivered to every member of the room.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Broadcast<'a> {
    pub message_id: MessageId,
    pub room_id: u32,
    pub user_id: u32,
    #[serde(borrow)]
    pub username: Cow<'a, str>,
    #[serde(borrow)]
    pub message: Cow<'a, str>,
    pub message_type: MessageType,
    /// The sender's timestamp, as the sender wrote it.
    #[serde(borrow)]
    pub timestamp: Cow<'a, str>,
    pub server_timestamp: ServerTime,
}

/// Why a resume did not deliver every message after its `since`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RecoveryReason {
    /// `since` is older than the room's retained history: messages after
    /// it were trimmed (those the database had were filled in first,
    /// counted in `fromDatabase`).
    Trimmed,
    /// More messages followed `since` than one resume replays; the
    /// frame's `position` is the last one replayed (resume from it for the
    /// rest).
    Limit,
    /// The history could not be read (Redis unreachable, or this server
    /// keeps none); live messages follow.
    Unavailable,
}

impl RecoveryReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryReason::Trimmed => "TRIMMED",
            RecoveryReason::Limit => "LIMIT",
            RecoveryReason::Unavailable => "UNAVAILABLE",
        }
    }
}

/// The seam of a resume (`/chat/{roomId}?since=…`): sent once, after the
/// replayed messages and before the first live one. Rare, so it owns its
/// text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recovery {
    pub room_id: u32,
    /// The position the client asked to resume after.
    pub since: Position,
    /// Every message after `since` was replayed, each once, in room order.
    pub recovered: bool,
    /// Why not, when `recovered` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RecoveryReason>,
    /// Messages replayed from the room's history (with positions).
    pub replayed: u64,
    /// Messages filled in from the database before them (only with
    /// `TRIMMED`; by server timestamp, without positions).
    pub from_database: u64,
    /// The last position delivered (`since` if none was): where the next
    /// resume starts if no live message follows.
    pub position: Position,
    /// What happened, for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Recovery {
    /// Decodes a `recovery` frame; `None` for any other text.
    pub fn parse(text: &str) -> Option<Recovery> {
        #[derive(Deserialize)]
        struct Tagged {
            #[serde(rename = "type")]
            kind: String,
            #[serde(flatten)]
            body: Recovery,
        }
        let tagged: Tagged = serde_json::from_str(text).ok()?;
        (tagged.kind == "recovery").then_some(tagged.body)
    }
}

impl<'a> Ack<'a> {
    pub fn new(
        message_id: MessageId,
        room_id: u32,
        server_timestamp: ServerTime,
        client_message_id: Option<&'a str>,
        timestamp: Option<&'a str>,
    ) -> Self {
        Ack {
            message_id,
            room_id,
            server_timestamp,
            status: Cow::Borrowed("OK"),
            client_message_id: client_message_id.map(Cow::Borrowed),
            timestamp: timestamp.map(Cow::Borrowed),
        }
    }
}

impl<'a> ErrorFrame<'a> {
    pub fn new(code: ErrorCode, message: impl Into<Cow<'a, str>>) -> Self {
        ErrorFrame {
            status: Cow::Borrowed("ERROR"),
            code,
            message: message.into(),
            field: None,
            reason: None,
            client_message_id: None,
        }
    }

    /// The error frame for a rejected client message.
    pub fn rejected(rejected: &'a crate::message::Rejected<'a>) -> Self {
        let reason = &rejected.reason;
        ErrorFrame {
            field: reason.field().map(|f| Cow::Borrowed(f.as_str())),
            reason: reason.problem(),
            client_message_id: rejected.client_message_id.as_deref().map(Cow::Borrowed),
            ..ErrorFrame::new(reason.code(), reason.describe())
        }
    }
}

/// Serialises a frame to its JSON text. Frames hold only strings, numbers
/// and ids, so this cannot fail.
pub fn to_json<T: Serialize>(frame: &T) -> String {
    serde_json::to_string(frame).unwrap_or_else(|e| {
        // Unreachable for our types; still never panic a worker over it.
        format!(r#"{{"type":"error","status":"ERROR","code":"BAD_JSON","message":"internal encoding error: {e}"}}"#)
    })
}

/// Serialises a frame tagged with its `type`, without building a
/// [`ServerFrame`] (which would need owned or borrowed copies).
pub fn ack_json(ack: &Ack<'_>) -> String {
    tagged_json("ack", ack)
}

pub fn error_json(error: &ErrorFrame<'_>) -> String {
    tagged_json("error", error)
}

pub fn broadcast_json(message: &Broadcast<'_>) -> String {
    tagged_json("message", message)
}

pub fn recovery_json(recovery: &Recovery) -> String {
    tagged_json("recovery", recovery)
}

pub(crate) fn tagged_json<T: Serialize>(tag: &'static str, body: &T) -> String {
    #[derive(Serialize)]
    struct Tagged<'t, T> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(flatten)]
        body: &'t T,
    }
    to_json(&Tagged { kind: tag, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::ClientMessage;

    fn id() -> MessageId {
        crate::id::IdGenerator::with_instance(1).next_id(1_795_744_800_123)
    }

    #[test]
    fn ack_has_the_documented_fields() {
        let ack = Ack::new(
            id(),
            7,
            ServerTime(1_795_744_800_123),
            Some("c1"),
            Some("2026-11-27T02:00:00Z"),
        );
        let v: serde_json::Value = serde_json::from_str(&ack_json(&ack)).unwrap();
        assert_eq!(v["type"], "ack");
        assert_eq!(v["status"], "OK");
        assert_eq!(v["roomId"], 7);
        assert_eq!(v["messageId"], id().to_string());
        assert_eq!(v["serverTimestamp"], "2026-11-27T02:00:00.123Z");
        assert_eq!(v["clientMessageId"], "c1");
        assert_eq!(v["timestamp"], "2026-11-27T02:00:00Z");
        // And it decodes as a ServerFrame.
        let text = ack_json(&ack);
        assert_eq!(ServerFrame::parse(&text).unwrap(), ServerFrame::Ack(ack));
    }

    #[test]
    fn optional_ack_fields_are_omitted() {
        let ack = Ack::new(id(), 1, ServerTime(0), None, None);
        let v: serde_json::Value = serde_json::from_str(&ack_json(&ack)).unwrap();
        assert!(v.get("clientMessageId").is_none());
        assert!(v.get("timestamp").is_none());
    }

    #[test]
    fn error_frame_for_a_rejection_names_code_field_and_reason() {
        let rejected = ClientMessage::parse(
            r#"{"userId":1,"username":"a","message":"hi","timestamp":"2026-11-27T02:00:00Z","messageType":"TEXT","clientMessageId":"q"}"#,
        )
        .unwrap_err();
        let text = error_json(&ErrorFrame::rejected(&rejected));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["status"], "ERROR");
        assert_eq!(v["code"], "VALIDATION_FAILED");
        assert_eq!(v["field"], "username");
        assert_eq!(v["reason"], "TOO_SHORT");
        assert_eq!(v["clientMessageId"], "q");
        assert!(v["message"].as_str().unwrap().contains("username"));
        assert!(
            matches!(ServerFrame::parse(&text).unwrap(), ServerFrame::Error(e) if e.code == ErrorCode::ValidationFailed)
        );
    }

    #[test]
    fn broadcast_round_trips() {
        let b = Broadcast {
            message_id: id(),
            room_id: 3,
            user_id: 42,
            username: "user42".into(),
            message: "héllo \"there\"".into(),
            message_type: MessageType::Join,
            timestamp: "2026-11-27T02:00:00Z".into(),
            server_timestamp: ServerTime(1_795_744_800_123),
        };
        let text = broadcast_json(&b);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["messageType"], "JOIN");
        assert_eq!(v["userId"], 42);
        assert_eq!(
            ServerFrame::parse(&text).unwrap(),
            ServerFrame::Message(b.clone())
        );

        // The spliced position is the frame's last field, exactly where
        // serde puts a field after the others; decoding ignores it.
        #[derive(Serialize)]
        struct Positioned<'t> {
            #[serde(rename = "type")]
            kind: &'static str,
            #[serde(flatten)]
            body: &'t Broadcast<'t>,
            position: Position,
        }
        let at = Position::new(1_795_744_800_125, 3);
        let spliced = crate::position::with_position(&text, at);
        let serialised = to_json(&Positioned {
            kind: "message",
            body: &b,
            position: at,
        });
        assert_eq!(spliced, serialised);
        assert_eq!(Position::of_frame(&spliced), Some(at));
        assert_eq!(
            ServerFrame::parse(&spliced).unwrap(),
            ServerFrame::Message(b)
        );
    }

    #[test]
    fn recovery_frames_say_what_was_replayed() {
        let frame = Recovery {
            room_id: 3,
            since: Position::new(10, 0),
            recovered: false,
            reason: Some(RecoveryReason::Trimmed),
            replayed: 1000,
            from_database: 12,
            position: Position::new(20, 1),
            detail: Some("older than the retained history".into()),
        };
        let text = recovery_json(&frame);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "recovery");
        assert_eq!(v["roomId"], 3);
        assert_eq!(v["since"], "10-0");
        assert_eq!(v["recovered"], false);
        assert_eq!(v["reason"], "TRIMMED");
        assert_eq!(v["replayed"], 1000);
        assert_eq!(v["fromDatabase"], 12);
        assert_eq!(v["position"], "20-1");
        assert_eq!(Recovery::parse(&text), Some(frame));
        assert!(
            ServerFrame::parse(&text).is_err(),
            "not a frame every client handles"
        );
        assert_eq!(Recovery::parse(r#"{"type":"ack"}"#), None);
        for reason in [
            RecoveryReason::Trimmed,
            RecoveryReason::Limit,
            RecoveryReason::Unavailable,
        ] {
            assert_eq!(
                serde_json::to_string(&reason).unwrap(),
                format!("\"{}\"", reason.as_str())
            );
        }
    }

    #[test]
    fn error_codes_serialise_as_their_wire_names() {
        for code in [
            ErrorCode::BadJson,
            ErrorCode::ValidationFailed,
            ErrorCode::TooLarge,
            ErrorCode::UnsupportedFrame,
            ErrorCode::Unavailable,
        ] {
            assert_eq!(
                serde_json::to_string(&code).unwrap(),
                format!("\"{}\"", code.as_str())
            );
        }
    }
}

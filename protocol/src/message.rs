//! The client message and its validation.
//!
//! `{"userId":"12345","username":"user12345","message":"hi",
//!   "timestamp":"2026-11-27T02:00:00.123Z","messageType":"TEXT",
//!   "clientMessageId":"c-1"}`
//!
//! Every field is first read as "any JSON value" so a wrong type is reported
//! against the field that has it, then checked by its rule. Strings without
//! escapes are borrowed from the frame, so a valid message costs no
//! allocation to parse. Unknown fields are ignored (clients may be newer than
//! servers); duplicate known fields are a JSON error.
//!
//! A frame with a `type` is a request, not a chat message
//! ([`ClientFrame::parse`]): `{"type":"presence"}` asks for the room's
//! member list (optionally `"after":USER_ID`, for the page after that
//! user). Chat messages have no `type`; the one parse tells the two apart,
//! so a chat message costs nothing more for it.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::time::parse_rfc3339_ms;

pub const USER_ID_MIN: u32 = 1;
pub const USER_ID_MAX: u32 = 100_000;
pub const USERNAME_MIN_LEN: usize = 3;
pub const USERNAME_MAX_LEN: usize = 20;
/// Message length is counted in Unicode scalar values, not bytes.
pub const MESSAGE_MIN_CHARS: usize = 1;
pub const MESSAGE_MAX_CHARS: usize = 500;
/// Longest timestamp text accepted (RFC 3339 with nanoseconds and an offset
/// is 35 bytes).
pub const TIMESTAMP_MAX_LEN: usize = 40;
pub const CLIENT_MESSAGE_ID_MAX_LEN: usize = 64;

/// The largest client message a server reads, in bytes. Every field at its
/// longest with every character JSON-escaped — keys too, non-BMP characters
/// as `\uXXXX\uXXXX` (12 bytes) — is 7,567 bytes ([`max_escaped_len`]);
/// 8 KiB leaves room for whitespace. Unknown fields are ignored, so a valid
/// message padded past this with them is possible and refused as too
/// large: nothing this protocol carries needs the room. Servers size their
/// frame limits from it.
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 8 * 1024;

/// The length of the largest message of known fields written with every
/// character escaped: what [`MAX_CLIENT_MESSAGE_BYTES`] must hold.
pub const fn max_escaped_len() -> usize {
    // A key or string value: quotes plus each character escaped; BMP
    // characters take `\uXXXX` (6 bytes), others a surrogate pair (12).
    const fn string(bmp_chars: usize, any_chars: usize) -> usize {
        2 + bmp_chars * 6 + any_chars * 12
    }
    let keys = string(6, 0) // userId
        + string(8, 0) // username
        + string(7, 0) // message
        + string(9, 0) // timestamp
        + string(11, 0) // messageType
        + string(15, 0); // clientMessageId
    let values = string(6, 0) // "100000" (a string is longer than a number)
        + string(USERNAME_MAX_LEN, 0)
        + string(0, MESSAGE_MAX_CHARS)
        + string(TIMESTAMP_MAX_LEN, 0)
        + string(5, 0) // LEAVE
        + string(0, CLIENT_MESSAGE_ID_MAX_LEN);
    // Braces, six colons, five commas.
    keys + values + 2 + 6 + 5
}

const _: () = assert!(max_escaped_len() <= MAX_CLIENT_MESSAGE_BYTES);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MessageType {
    Text,
    Join,
    Leave,
}

impl MessageType {
    pub const ALL: [MessageType; 3] = [MessageType::Text, MessageType::Join, MessageType::Leave];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Text => "TEXT",
            MessageType::Join => "JOIN",
            MessageType::Leave => "LEAVE",
        }
    }

    /// Exact, case-sensitive match of the wire names.
    pub fn parse(s: &str) -> Option<MessageType> {
        match s {
            "TEXT" => Some(MessageType::Text),
            "JOIN" => Some(MessageType::Join),
            "LEAVE" => Some(MessageType::Leave),
            _ => None,
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated client message. Strings borrow from the frame when they can.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientMessage<'a> {
    pub user_id: u32,
    pub username: Cow<'a, str>,
    pub message: Cow<'a, str>,
    /// The client's timestamp as sent (echoed back unchanged).
    pub timestamp: Cow<'a, str>,
    /// The same instant in Unix milliseconds.
    pub timestamp_ms: i64,
    pub message_type: MessageType,
    pub client_message_id: Option<Cow<'a, str>>,
}

/// A field of the client message, named as on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    UserId,
    Username,
    Message,
    Timestamp,
    MessageType,
    ClientMessageId,
    /// A request frame's kind (`presence`).
    Type,
    /// A presence request's page start: the last `userId` already seen.
    After,
}

impl Field {
    pub fn as_str(self) -> &'static str {
        match self {
            Field::UserId => "userId",
            Field::Username => "username",
            Field::Message => "message",
            Field::Timestamp => "timestamp",
            Field::MessageType => "messageType",
            Field::ClientMessageId => "clientMessageId",
            Field::Type => "type",
            Field::After => "after",
        }
    }
}

/// What is wrong with a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Problem {
    Missing,
    WrongType,
    OutOfRange,
    TooShort,
    TooLong,
    InvalidCharacters,
    InvalidFormat,
    UnknownValue,
}

/// Why a frame was rejected.
#[derive(Clone, Debug, PartialEq)]
pub enum Rejection {
    /// Not a JSON object (the parser's own words in `detail`).
    BadJson { detail: String },
    /// A field broke its rule.
    Invalid { field: Field, problem: Problem },
}

impl Rejection {
    pub fn field(&self) -> Option<Field> {
        match self {
            Rejection::BadJson { .. } => None,
            Rejection::Invalid { field, .. } => Some(*field),
        }
    }

    pub fn problem(&self) -> Option<Problem> {
        match self {
            Rejection::BadJson { .. } => None,
            Rejection::Invalid { problem, .. } => Some(*problem),
        }
    }

    /// A sentence a person can act on.
    pub fn describe(&self) -> String {
        let (field, problem) = match self {
            Rejection::BadJson { detail } => {
                return format!("frame is not a JSON object: {detail}")
            }
            Rejection::Invalid { field, problem } => (*field, *problem),
        };
        let rule = match field {
            Field::UserId => {
                format!("an integer {USER_ID_MIN}..={USER_ID_MAX}, as a number or a decimal string")
            }
            Field::Username => {
                format!("{USERNAME_MIN_LEN}..={USERNAME_MAX_LEN} ASCII letters or digits")
            }
            Field::Message => {
                format!("a string of {MESSAGE_MIN_CHARS}..={MESSAGE_MAX_CHARS} characters, none of them NUL (U+0000)")
            }
            Field::Timestamp => {
                "an RFC 3339 timestamp such as 2026-11-27T02:00:00.123Z".to_string()
            }
            Field::MessageType => "one of TEXT, JOIN, LEAVE (upper case)".to_string(),
            Field::ClientMessageId => {
                format!("a string of 1..={CLIENT_MESSAGE_ID_MAX_LEN} characters, none of them NUL (U+0000)")
            }
            Field::Type => {
                "\"presence\" (a frame with a type is a request; chat messages have none)"
                    .to_string()
            }
            Field::After => {
                format!("an integer 0..={USER_ID_MAX}: the last userId of the page before")
            }
        };
        let what = match problem {
            Problem::Missing => "is missing",
            Problem::WrongType => "has the wrong JSON type",
            Problem::OutOfRange => "is out of range",
            Problem::TooShort => "is too short",
            Problem::TooLong => "is too long",
            Problem::InvalidCharacters => "has invalid characters",
            Problem::InvalidFormat => "is malformed",
            Problem::UnknownValue => "has an unknown value",
        };
        format!("{} {what}: it must be {rule}", field.as_str())
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// A rejected frame: the reason, and the client's `clientMessageId` when it
/// could be read, so the error can be matched to its request.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejected<'a> {
    pub reason: Rejection,
    pub client_message_id: Option<Cow<'a, str>>,
}

impl<'a> ClientMessage<'a> {
    /// Parses and validates one text frame as a chat message. (A `type`
    /// field is ignored here, as any unknown field; the server reads
    /// frames with [`ClientFrame::parse`], which takes it for a request.)
    pub fn parse(text: &'a str) -> Result<ClientMessage<'a>, Rejected<'a>> {
        Self::from_raw(RawMessage::read(text)?)
    }

    fn from_raw(raw: RawMessage<'a>) -> Result<ClientMessage<'a>, Rejected<'a>> {
        // Read the correlation id first so every later error can carry it; a
        // bad one is itself reported without one.
        let client_message_id = match raw.client_message_id {
            None => None,
            Some(value) => Some(check_client_message_id(value).map_err(|reason| Rejected {
                reason,
                client_message_id: None,
            })?),
        };
        match validate(
            raw.user_id,
            raw.username,
            raw.message,
            raw.timestamp,
            raw.message_type,
        ) {
            Ok((user_id, username, message, (timestamp, timestamp_ms), message_type)) => {
                Ok(ClientMessage {
                    user_id,
                    username,
                    message,
                    timestamp,
                    timestamp_ms,
                    message_type,
                    client_message_id,
                })
            }
            Err(reason) => Err(Rejected {
                reason,
                client_message_id,
            }),
        }
    }
}

/// What a client sends: a chat message, or a request (a frame with a
/// `type`).
#[derive(Clone, Debug, PartialEq)]
pub enum ClientFrame<'a> {
    Message(ClientMessage<'a>),
    Request(Request),
}

/// A request frame. Rare next to messages, so it is read in a second,
/// plain pass once the first one found its `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// `{"type":"presence"}`: the room's members, in `userId` order,
    /// starting after `after` (from the first when absent).
    Presence { after: Option<u32> },
}

/// The only request type so far.
pub const PRESENCE_REQUEST: &str = "presence";

impl<'a> ClientFrame<'a> {
    /// Parses one text frame: a request if it has a `type`, otherwise a
    /// chat message checked by every rule of [`ClientMessage::parse`].
    pub fn parse(text: &'a str) -> Result<ClientFrame<'a>, Rejected<'a>> {
        let mut raw = RawMessage::read(text)?;
        match raw.kind.take() {
            None => ClientMessage::from_raw(raw).map(ClientFrame::Message),
            Some(kind) => Request::parse(text, kind)
                .map(ClientFrame::Request)
                .map_err(|reason| Rejected {
                    reason,
                    client_message_id: None,
                }),
        }
    }
}

impl Request {
    fn parse(text: &str, kind: AnyJson<'_>) -> Result<Request, Rejection> {
        match kind {
            AnyJson::Str(s) if s == PRESENCE_REQUEST => {}
            AnyJson::Str(_) => return Err(invalid(Field::Type, Problem::UnknownValue)),
            _ => return Err(invalid(Field::Type, Problem::WrongType)),
        }
        #[derive(Deserialize)]
        struct RawRequest<'a> {
            #[serde(default, borrow)]
            after: Option<AnyJson<'a>>,
        }
        // The first pass read this text as a JSON object already; only a
        // duplicated `after` can fail here.
        let raw: RawRequest<'_> = serde_json::from_str(text).map_err(|e| Rejection::BadJson {
            detail: e.to_string(),
        })?;
        let after = match raw.after {
            None => None,
            Some(AnyJson::Unsigned(n)) if n <= u64::from(USER_ID_MAX) => Some(n as u32),
            Some(AnyJson::Unsigned(_) | AnyJson::Negative) => {
                return Err(invalid(Field::After, Problem::OutOfRange))
            }
            Some(_) => return Err(invalid(Field::After, Problem::WrongType)),
        };
        Ok(Request::Presence { after })
    }
}

type Validated<'a> = (
    u32,
    Cow<'a, str>,
    Cow<'a, str>,
    (Cow<'a, str>, i64),
    MessageType,
);

fn validate<'a>(
    user_id: Option<AnyJson<'a>>,
    username: Option<AnyJson<'a>>,
    message: Option<AnyJson<'a>>,
    timestamp: Option<AnyJson<'a>>,
    message_type: Option<AnyJson<'a>>,
) -> Result<Validated<'a>, Rejection> {
    Ok((
        check_user_id(user_id)?,
        check_username(username)?,
        check_message(message)?,
        check_timestamp(timestamp)?,
        check_message_type(message_type)?,
    ))
}

fn invalid(field: Field, problem: Problem) -> Rejection {
    Rejection::Invalid { field, problem }
}

fn present<'a>(field: Field, value: Option<AnyJson<'a>>) -> Result<AnyJson<'a>, Rejection> {
    value.ok_or(invalid(field, Problem::Missing))
}

fn string<'a>(field: Field, value: Option<AnyJson<'a>>) -> Result<Cow<'a, str>, Rejection> {
    match present(field, value)? {
        AnyJson::Str(s) => Ok(s),
        _ => Err(invalid(field, Problem::WrongType)),
    }
}

fn check_user_id(value: Option<AnyJson<'_>>) -> Result<u32, Rejection> {
    let f = Field::UserId;
    let id: u64 = match present(f, value)? {
        AnyJson::Unsigned(n) => n,
        AnyJson::Negative => return Err(invalid(f, Problem::OutOfRange)),
        AnyJson::Str(s) => {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid(f, Problem::InvalidFormat));
            }
            // All digits: only overflow can fail, and that is out of range.
            s.parse().unwrap_or(u64::MAX)
        }
        _ => return Err(invalid(f, Problem::WrongType)),
    };
    if (u64::from(USER_ID_MIN)..=u64::from(USER_ID_MAX)).contains(&id) {
        Ok(id as u32)
    } else {
        Err(invalid(f, Problem::OutOfRange))
    }
}

fn check_username<'a>(value: Option<AnyJson<'a>>) -> Result<Cow<'a, str>, Rejection> {
    let f = Field::Username;
    let s = string(f, value)?;
    if !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(invalid(f, Problem::InvalidCharacters));
    }
    // ASCII only from here, so bytes are characters.
    match s.len() {
        n if n < USERNAME_MIN_LEN => Err(invalid(f, Problem::TooShort)),
        n if n > USERNAME_MAX_LEN => Err(invalid(f, Problem::TooLong)),
        _ => Ok(s),
    }
}

fn check_message<'a>(value: Option<AnyJson<'a>>) -> Result<Cow<'a, str>, Rejection> {
    let f = Field::Message;
    let s = string(f, value)?;
    // A char is at most 4 bytes: past this byte length no count is needed.
    if s.len() > MESSAGE_MAX_CHARS * 4 {
        return Err(invalid(f, Problem::TooLong));
    }
    // PostgreSQL `text` cannot hold U+0000: a message with one could be
    // acked but never stored (the writer's COPY would refuse its batch).
    if s.contains('\0') {
        return Err(invalid(f, Problem::InvalidCharacters));
    }
    match s.chars().count() {
        n if n < MESSAGE_MIN_CHARS => Err(invalid(f, Problem::TooShort)),
        n if n > MESSAGE_MAX_CHARS => Err(invalid(f, Problem::TooLong)),
        _ => Ok(s),
    }
}

fn check_timestamp<'a>(value: Option<AnyJson<'a>>) -> Result<(Cow<'a, str>, i64), Rejection> {
    let f = Field::Timestamp;
    let s = string(f, value)?;
    if s.len() > TIMESTAMP_MAX_LEN {
        return Err(invalid(f, Problem::InvalidFormat));
    }
    match parse_rfc3339_ms(&s) {
        Some(ms) => Ok((s, ms)),
        None => Err(invalid(f, Problem::InvalidFormat)),
    }
}

fn check_message_type(value: Option<AnyJson<'_>>) -> Result<MessageType, Rejection> {
    let f = Field::MessageType;
    let s = string(f, value)?;
    MessageType::parse(&s).ok_or(invalid(f, Problem::UnknownValue))
}

fn check_client_message_id(value: AnyJson<'_>) -> Result<Cow<'_, str>, Rejection> {
    let f = Field::ClientMessageId;
    let s = match value {
        AnyJson::Str(s) => s,
        _ => return Err(invalid(f, Problem::WrongType)),
    };
    // Echoed and kept beside the message: the same storage rule applies.
    if s.contains('\0') {
        return Err(invalid(f, Problem::InvalidCharacters));
    }
    match s.chars().count() {
        0 => Err(invalid(f, Problem::TooShort)),
        n if n > CLIENT_MESSAGE_ID_MAX_LEN => Err(invalid(f, Problem::TooLong)),
        _ => Ok(s),
    }
}

/// The message as read, before any rule: every field any JSON value.
#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(rename = "userId", default, borrow)]
    user_id: Option<AnyJson<'a>>,
    #[serde(default, borrow)]
    username: Option<AnyJson<'a>>,
    #[serde(default, borrow)]
    message: Option<AnyJson<'a>>,
    #[serde(default, borrow)]
    timestamp: Option<AnyJson<'a>>,
    #[serde(rename = "messageType", default, borrow)]
    message_type: Option<AnyJson<'a>>,
    #[serde(rename = "clientMessageId", default, borrow)]
    client_message_id: Option<AnyJson<'a>>,
    /// Present only on request frames ([`ClientFrame`]).
    #[serde(rename = "type", default, borrow)]
    kind: Option<AnyJson<'a>>,
}

impl<'a> RawMessage<'a> {
    /// The fields of one JSON object, or why the text is not one.
    fn read(text: &'a str) -> Result<RawMessage<'a>, Rejected<'a>> {
        let bad_json = |detail: String| Rejected {
            reason: Rejection::BadJson { detail },
            client_message_id: None,
        };
        // serde would also read a JSON array positionally into the struct.
        if !text.trim_start().starts_with('{') {
            return Err(bad_json("expected a JSON object".to_string()));
        }
        serde_json::from_str(text).map_err(|e| bad_json(e.to_string()))
    }
}

/// Any JSON value, keeping only what the rules need. (`null` never gets
/// here: `Option` turns it into `None`, i.e. missing.)
enum AnyJson<'a> {
    Str(Cow<'a, str>),
    Unsigned(u64),
    /// A negative integer (its value never matters: always out of range).
    Negative,
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for AnyJson<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(AnyJsonVisitor(std::marker::PhantomData))
    }
}

struct AnyJsonVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for AnyJsonVisitor<'a> {
    type Value = AnyJson<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(AnyJson::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(AnyJson::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(AnyJson::Str(Cow::Owned(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(AnyJson::Unsigned(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(if v >= 0 {
            AnyJson::Unsigned(v as u64)
        } else {
            AnyJson::Negative
        })
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(AnyJson::Other)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(AnyJson::Other)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(AnyJson::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(AnyJson::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(AnyJson::Other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: &str = "2026-11-27T02:00:00.123Z";

    fn frame(user_id: &str, username: &str, message: &str, timestamp: &str, kind: &str) -> String {
        format!(
            r#"{{"userId":{user_id},"username":{username},"message":{message},"timestamp":{timestamp},"messageType":{kind}}}"#
        )
    }

    fn valid_with_user_id(user_id: &str) -> String {
        frame(
            user_id,
            r#""user1""#,
            r#""hi""#,
            &format!("{TS:?}"),
            r#""TEXT""#,
        )
    }

    fn rejection(text: &str) -> Rejection {
        ClientMessage::parse(text).unwrap_err().reason
    }

    fn invalid_field(text: &str) -> (Field, Problem) {
        match rejection(text) {
            Rejection::Invalid { field, problem } => (field, problem),
            other => panic!("expected a field rejection, got {other:?}"),
        }
    }

    fn with_username(name: &str) -> String {
        frame(
            "1",
            &serde_json::to_string(name).unwrap(),
            r#""hi""#,
            &format!("{TS:?}"),
            r#""TEXT""#,
        )
    }

    fn with_message(text: &str) -> String {
        frame(
            "1",
            r#""user1""#,
            &serde_json::to_string(text).unwrap(),
            &format!("{TS:?}"),
            r#""TEXT""#,
        )
    }

    fn with_timestamp(ts: &str) -> String {
        frame(
            "1",
            r#""user1""#,
            r#""hi""#,
            &serde_json::to_string(ts).unwrap(),
            r#""TEXT""#,
        )
    }

    fn with_type(kind: &str) -> String {
        frame("1", r#""user1""#, r#""hi""#, &format!("{TS:?}"), kind)
    }

    #[test]
    fn a_valid_message_parses_and_borrows() {
        let text = r#"{"userId":"12345","username":"user12345","message":"hi","timestamp":"2026-11-27T02:00:00.123Z","messageType":"TEXT","clientMessageId":"c-1"}"#;
        let m = ClientMessage::parse(text).unwrap();
        assert_eq!(m.user_id, 12345);
        assert_eq!(m.username, "user12345");
        assert!(matches!(m.username, Cow::Borrowed(_)));
        assert_eq!(m.message, "hi");
        assert_eq!(m.timestamp, TS);
        assert_eq!(m.timestamp_ms, 1_795_744_800_123);
        assert_eq!(m.message_type, MessageType::Text);
        assert_eq!(m.client_message_id.as_deref(), Some("c-1"));
    }

    #[test]
    fn user_id_boundaries_as_string_and_number() {
        for ok in ["1", "100000", "\"1\"", "\"100000\"", "\"00042\""] {
            assert!(
                ClientMessage::parse(&valid_with_user_id(ok)).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "0",
            "100001",
            "\"0\"",
            "\"100001\"",
            "-1",
            "\"99999999999999999999999\"",
        ] {
            assert_eq!(
                invalid_field(&valid_with_user_id(bad)),
                (Field::UserId, Problem::OutOfRange),
                "{bad}"
            );
        }
        // Past u64 the JSON parser yields a float: still a userId rejection.
        assert_eq!(
            invalid_field(&valid_with_user_id("18446744073709551616")).0,
            Field::UserId
        );
        for (bad, problem) in [
            ("\"\"", Problem::InvalidFormat),
            ("\"12a\"", Problem::InvalidFormat),
            ("\"-5\"", Problem::InvalidFormat),
            ("\" 5\"", Problem::InvalidFormat),
            ("1.5", Problem::WrongType),
            ("true", Problem::WrongType),
            ("[1]", Problem::WrongType),
            ("{\"a\":1}", Problem::WrongType),
            ("null", Problem::Missing),
        ] {
            assert_eq!(
                invalid_field(&valid_with_user_id(bad)),
                (Field::UserId, problem),
                "{bad}"
            );
        }
    }

    #[test]
    fn username_boundaries() {
        assert_eq!(
            invalid_field(&with_username("ab")),
            (Field::Username, Problem::TooShort)
        );
        assert!(ClientMessage::parse(&with_username("abc")).is_ok());
        assert!(ClientMessage::parse(&with_username(&"a".repeat(20))).is_ok());
        assert_eq!(
            invalid_field(&with_username(&"a".repeat(21))),
            (Field::Username, Problem::TooLong)
        );
        for bad in ["héllo", "user_1", "user 1", "us-er", "ユーザー"] {
            assert_eq!(
                invalid_field(&with_username(bad)),
                (Field::Username, Problem::InvalidCharacters),
                "{bad}"
            );
        }
        assert_eq!(
            invalid_field(&with_username("")),
            (Field::Username, Problem::TooShort)
        );
    }

    #[test]
    fn message_length_counts_characters_not_bytes() {
        assert_eq!(
            invalid_field(&with_message("")),
            (Field::Message, Problem::TooShort)
        );
        assert!(ClientMessage::parse(&with_message("x")).is_ok());
        assert!(ClientMessage::parse(&with_message("é")).is_ok());
        assert!(ClientMessage::parse(&with_message(&"x".repeat(500))).is_ok());
        // 500 four-byte characters are 2,000 bytes and still valid.
        assert!(ClientMessage::parse(&with_message(&"😀".repeat(500))).is_ok());
        assert!(ClientMessage::parse(&with_message(&"é".repeat(500))).is_ok());
        assert_eq!(
            invalid_field(&with_message(&"x".repeat(501))),
            (Field::Message, Problem::TooLong)
        );
        assert_eq!(
            invalid_field(&with_message(&"😀".repeat(501))),
            (Field::Message, Problem::TooLong)
        );
        // Escaped input decodes before counting: 500 `\n` escapes are 500 chars.
        let escaped = format!(r#""{}""#, "\\n".repeat(500));
        let text = frame("1", r#""user1""#, &escaped, &format!("{TS:?}"), r#""TEXT""#);
        assert!(ClientMessage::parse(&text).is_ok());
        assert_eq!(
            invalid_field(&frame(
                "1",
                r#""user1""#,
                "42",
                &format!("{TS:?}"),
                r#""TEXT""#
            )),
            (Field::Message, Problem::WrongType)
        );
    }

    #[test]
    fn nul_is_refused_because_storage_cannot_keep_it() {
        // Both the escaped form and the decoded character are NUL.
        let escaped = frame(
            "1",
            r#""user1""#,
            r#""bad \u0000 byte""#,
            &format!("{TS:?}"),
            r#""TEXT""#,
        );
        assert_eq!(
            invalid_field(&escaped),
            (Field::Message, Problem::InvalidCharacters)
        );
        assert_eq!(
            invalid_field(&with_message("\0")),
            (Field::Message, Problem::InvalidCharacters)
        );
        // Other control characters are storable and stay allowed.
        assert!(ClientMessage::parse(&with_message("tab\tbell\u{7}")).is_ok());
        let text = format!(
            r#"{{"userId":1,"username":"abc","message":"hi","timestamp":"{TS}","messageType":"TEXT","clientMessageId":"a\u0000"}}"#
        );
        assert_eq!(
            invalid_field(&text),
            (Field::ClientMessageId, Problem::InvalidCharacters)
        );
        assert!(rejection(&escaped).describe().contains("NUL"));
    }

    #[test]
    fn timestamps_with_zone_offset_and_fraction() {
        for ok in [
            "2026-11-27T02:00:00Z",
            "2026-11-27T02:00:00.123Z",
            "2026-11-27T02:00:00.123456789Z",
            "2026-11-27T03:00:00+01:00",
            "2026-11-26T21:00:00.5-05:00",
        ] {
            assert!(ClientMessage::parse(&with_timestamp(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "garbage",
            "2026-11-27",
            "2026-11-27T02:00:00",
            "2026-13-27T02:00:00Z",
            "2026-11-27T25:00:00Z",
            "1764208800123",
            &"9".repeat(41),
        ] {
            assert_eq!(
                invalid_field(&with_timestamp(bad)),
                (Field::Timestamp, Problem::InvalidFormat),
                "{bad}"
            );
        }
        assert_eq!(
            invalid_field(&frame(
                "1",
                r#""user1""#,
                r#""hi""#,
                "1764208800123",
                r#""TEXT""#
            )),
            (Field::Timestamp, Problem::WrongType)
        );
    }

    #[test]
    fn message_types_are_exact_and_upper_case() {
        for (ok, kind) in [
            ("\"TEXT\"", MessageType::Text),
            ("\"JOIN\"", MessageType::Join),
            ("\"LEAVE\"", MessageType::Leave),
        ] {
            assert_eq!(
                ClientMessage::parse(&with_type(ok)).unwrap().message_type,
                kind
            );
        }
        for bad in ["\"text\"", "\"Join\"", "\"\"", "\"PING\"", "\" TEXT\""] {
            assert_eq!(
                invalid_field(&with_type(bad)),
                (Field::MessageType, Problem::UnknownValue),
                "{bad}"
            );
        }
        assert_eq!(
            invalid_field(&with_type("1")),
            (Field::MessageType, Problem::WrongType)
        );
    }

    #[test]
    fn missing_fields_are_named() {
        let text =
            format!(r#"{{"userId":1,"message":"hi","timestamp":"{TS}","messageType":"TEXT"}}"#);
        assert_eq!(invalid_field(&text), (Field::Username, Problem::Missing));
        assert_eq!(invalid_field("{}"), (Field::UserId, Problem::Missing));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let text = format!(
            r#"{{"userId":1,"username":"abc","message":"hi","timestamp":"{TS}","messageType":"JOIN","extra":{{"nested":[1,2]}},"v":2}}"#
        );
        assert!(ClientMessage::parse(&text).is_ok());
    }

    #[test]
    fn not_json_or_not_an_object_is_bad_json() {
        for bad in [
            "",
            "not json",
            "[1,2]",
            "42",
            "\"str\"",
            "{\"userId\":1",
            "{\"userId\":1,\"userId\":2}",
        ] {
            let r = rejection(bad);
            assert_eq!(r.code(), crate::ErrorCode::BadJson, "{bad}: {r:?}");
            assert!(r.field().is_none());
        }
    }

    #[test]
    fn client_message_id_is_kept_on_errors_and_checked() {
        let text = format!(
            r#"{{"userId":0,"username":"abc","message":"hi","timestamp":"{TS}","messageType":"TEXT","clientMessageId":"m7"}}"#
        );
        let rejected = ClientMessage::parse(&text).unwrap_err();
        assert_eq!(rejected.client_message_id.as_deref(), Some("m7"));
        assert_eq!(rejected.reason.field(), Some(Field::UserId));

        let long = "x".repeat(65);
        let text = format!(
            r#"{{"userId":1,"username":"abc","message":"hi","timestamp":"{TS}","messageType":"TEXT","clientMessageId":"{long}"}}"#
        );
        assert_eq!(
            invalid_field(&text),
            (Field::ClientMessageId, Problem::TooLong)
        );
        let text = format!(
            r#"{{"userId":1,"username":"abc","message":"hi","timestamp":"{TS}","messageType":"TEXT","clientMessageId":7}}"#
        );
        assert_eq!(
            invalid_field(&text),
            (Field::ClientMessageId, Problem::WrongType)
        );
    }

    #[test]
    fn descriptions_name_the_field_and_rule() {
        let d = invalid(Field::Username, Problem::TooShort).describe();
        assert!(d.contains("username") && d.contains("3..=20"), "{d}");
        let d = invalid(Field::Message, Problem::TooLong).describe();
        assert!(d.contains("message") && d.contains("500"), "{d}");
    }

    fn client_frame(text: &str) -> Result<ClientFrame<'_>, Rejection> {
        ClientFrame::parse(text).map_err(|r| r.reason)
    }

    #[test]
    fn a_frame_with_a_type_is_a_request_and_one_without_a_message() {
        assert_eq!(
            client_frame(r#"{"type":"presence"}"#),
            Ok(ClientFrame::Request(Request::Presence { after: None }))
        );
        // Other fields of a request are ignored, even a whole message's.
        let with_message = format!(
            r#"{{"type":"presence","after":41,"userId":1,"username":"abc","message":"hi","timestamp":"{TS}","messageType":"TEXT"}}"#
        );
        assert_eq!(
            client_frame(&with_message),
            Ok(ClientFrame::Request(Request::Presence { after: Some(41) }))
        );
        assert_eq!(
            client_frame(r#" {"after":0, "type" : "presence"} "#),
            Ok(ClientFrame::Request(Request::Presence { after: Some(0) }))
        );
        let message = valid_with_user_id("7");
        match client_frame(&message) {
            Ok(ClientFrame::Message(m)) => assert_eq!(m.user_id, 7),
            other => panic!("{other:?}"),
        }
        // `null` is absent, as for every field: a chat message then.
        let null_type = message.replacen('{', r#"{"type":null,"#, 1);
        assert!(matches!(
            client_frame(&null_type),
            Ok(ClientFrame::Message(_))
        ));
        // ClientMessage::parse itself ignores a type, as any unknown field.
        let typed = message.replacen('{', r#"{"type":"presence","#, 1);
        assert_eq!(ClientMessage::parse(&typed).unwrap().user_id, 7);
    }

    #[test]
    fn a_bad_request_names_its_field() {
        for (text, field, problem) in [
            (r#"{"type":"presense"}"#, Field::Type, Problem::UnknownValue),
            (r#"{"type":"PRESENCE"}"#, Field::Type, Problem::UnknownValue),
            (r#"{"type":""}"#, Field::Type, Problem::UnknownValue),
            (r#"{"type":7}"#, Field::Type, Problem::WrongType),
            (r#"{"type":["presence"]}"#, Field::Type, Problem::WrongType),
            (
                r#"{"type":"presence","after":"7"}"#,
                Field::After,
                Problem::WrongType,
            ),
            (
                r#"{"type":"presence","after":1.5}"#,
                Field::After,
                Problem::WrongType,
            ),
            (
                r#"{"type":"presence","after":-1}"#,
                Field::After,
                Problem::OutOfRange,
            ),
            (
                r#"{"type":"presence","after":100001}"#,
                Field::After,
                Problem::OutOfRange,
            ),
        ] {
            assert_eq!(client_frame(text), Err(invalid(field, problem)), "{text}");
            let described = invalid(field, problem).describe();
            assert!(described.starts_with(field.as_str()), "{described}");
        }
        for text in [
            r#"{"type":"presence","type":"presence"}"#,
            r#"{"type":"presence","after":1,"after":2}"#,
            r#"["presence"]"#,
            r#"{"type":"presence""#,
            // Beyond what a JSON number holds: serde_json's own refusal.
            r#"{"type":"presence","after":1e999}"#,
        ] {
            assert!(
                matches!(client_frame(text), Err(Rejection::BadJson { .. })),
                "{text}"
            );
        }
    }
}

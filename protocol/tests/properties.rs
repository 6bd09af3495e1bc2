//! Property tests for `ClientMessage::parse` and the `error`/`ack` frames
//! built from its answers, plus the JSON seed corpus in `tests/corpus/json/`.
//!
//! Every input goes through [`check_answer`], which holds for any text:
//! parse never panics; an `Err` becomes an `error` frame that is valid JSON
//! naming its code (and for `VALIDATION_FAILED` its field); an `Ok` obeys
//! every documented rule, agrees with a plain `serde_json` reading of the
//! same text, and echoes through an `ack` frame unchanged. On top of that,
//! [`problems`] models the rules from the documentation (not from the
//! parser) and says which answer a generated message must get.

use std::borrow::Cow;
use std::fs;
use std::path::Path;

use chatflow_protocol::frame::{ack_json, error_json};
use chatflow_protocol::message::{
    CLIENT_MESSAGE_ID_MAX_LEN, MAX_CLIENT_MESSAGE_BYTES, MESSAGE_MAX_CHARS, MESSAGE_MIN_CHARS,
    USERNAME_MAX_LEN, USERNAME_MIN_LEN, USER_ID_MAX, USER_ID_MIN,
};
use chatflow_protocol::time::parse_rfc3339_ms;
use chatflow_protocol::{
    Ack, ClientFrame, ClientMessage, ErrorFrame, Field, IdGenerator, MessageType, Problem,
    Rejected, Rejection, ServerFrame, ServerTime,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::Value;

/// Moderate so the whole file runs in a few seconds in a debug build.
const CASES: u32 = 256;

/// The fields in the order [`Message`] holds them.
const FIELDS: [Field; 6] = [
    Field::UserId,
    Field::Username,
    Field::Message,
    Field::Timestamp,
    Field::MessageType,
    Field::ClientMessageId,
];

/// The server time put on acks: 2026-11-27T02:00:00.123Z.
const SERVER_MS: i64 = 1_795_744_800_123;

// ---------------------------------------------------------------------------
// What holds for every input.

/// Parses `text` and checks everything that must hold whatever it is.
fn check_answer(text: &str) -> Result<ClientMessage<'_>, Rejected<'_>> {
    let answer = ClientMessage::parse(text);
    agrees_with_the_frame_parse(text, &answer);
    match &answer {
        Ok(message) => {
            follows_the_rules(message);
            agrees_with_serde_json(text, message);
            check_ack_frame(message);
        }
        Err(rejected) => check_error_frame(rejected),
    }
    answer
}

/// The server reads frames with `ClientFrame::parse`: what it takes for a
/// chat message is exactly what `ClientMessage::parse` accepts, and a text
/// that one refuses is never a chat message to the server (a request, or
/// refused too).
fn agrees_with_the_frame_parse(text: &str, answer: &Result<ClientMessage<'_>, Rejected<'_>>) {
    match ClientFrame::parse(text) {
        Ok(ClientFrame::Message(m)) => {
            assert_eq!(answer.as_ref().ok(), Some(&m), "{text:?}");
        }
        Ok(ClientFrame::Request(_)) => {}
        Err(rejected) => {
            if answer.is_ok() {
                // Only a request can fail where a message would not.
                assert!(
                    matches!(
                        rejected.reason.field(),
                        Some(Field::Type | Field::After) | None
                    ),
                    "{text:?}: {rejected:?}"
                );
            }
        }
    }
}

/// An accepted message obeys every documented rule.
fn follows_the_rules(m: &ClientMessage<'_>) {
    assert!((USER_ID_MIN..=USER_ID_MAX).contains(&m.user_id), "{m:?}");
    assert!(
        (USERNAME_MIN_LEN..=USERNAME_MAX_LEN).contains(&m.username.len())
            && m.username.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{m:?}"
    );
    let chars = m.message.chars().count();
    assert!(
        (MESSAGE_MIN_CHARS..=MESSAGE_MAX_CHARS).contains(&chars) && !m.message.contains('\0'),
        "{m:?}"
    );
    assert_eq!(
        parse_rfc3339_ms(&m.timestamp),
        Some(m.timestamp_ms),
        "{m:?}"
    );
    if let Some(id) = &m.client_message_id {
        let chars = id.chars().count();
        assert!(
            (1..=CLIENT_MESSAGE_ID_MAX_LEN).contains(&chars) && !id.contains('\0'),
            "{m:?}"
        );
    }
}

/// The six fields as `serde_json` reads them; unknown fields are skipped
/// (they may hold what `Value` cannot, such as a lone surrogate escape,
/// which RFC 8259's grammar allows).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PlainFields {
    user_id: Option<Value>,
    username: Option<Value>,
    message: Option<Value>,
    timestamp: Option<Value>,
    message_type: Option<Value>,
    client_message_id: Option<Value>,
}

/// An accepted frame is JSON, and `serde_json` reads the same values in it.
fn agrees_with_serde_json(text: &str, m: &ClientMessage<'_>) {
    let v: PlainFields = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("accepted a text that is not JSON ({e}): {text:?}"));
    let str_of = |v: &Option<Value>| v.as_ref().and_then(Value::as_str).map(str::to_owned);
    let user_id = match &v.user_id {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse::<u64>().ok(),
        _ => None,
    };
    assert_eq!(user_id, Some(u64::from(m.user_id)), "{text:?}");
    assert_eq!(
        str_of(&v.username).as_deref(),
        Some(&*m.username),
        "{text:?}"
    );
    assert_eq!(str_of(&v.message).as_deref(), Some(&*m.message), "{text:?}");
    assert_eq!(
        str_of(&v.timestamp).as_deref(),
        Some(&*m.timestamp),
        "{text:?}"
    );
    assert_eq!(
        str_of(&v.message_type).as_deref(),
        Some(m.message_type.as_str())
    );
    assert_eq!(
        str_of(&v.client_message_id).as_deref(),
        m.client_message_id.as_deref()
    );
}

/// The error frame of a rejection is valid JSON with `type`, `code`, and for
/// a field rule the `field` and `reason`; it decodes as a `ServerFrame`.
fn check_error_frame(rejected: &Rejected<'_>) {
    let text = error_json(&ErrorFrame::rejected(rejected));
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("error frame is not JSON ({e}): {text:?}"));
    assert_eq!(v["type"], "error", "{text}");
    assert_eq!(v["status"], "ERROR", "{text}");
    assert_eq!(v["code"], rejected.reason.code().as_str(), "{text}");
    let message = v["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{text}");
    match &rejected.reason {
        Rejection::Invalid { field, problem } => {
            assert_eq!(v["code"], "VALIDATION_FAILED", "{text}");
            assert_eq!(v["field"], field.as_str(), "{text}");
            assert_eq!(
                v["reason"],
                serde_json::to_value(problem).unwrap(),
                "{text}"
            );
            assert!(message.contains(field.as_str()), "{text}");
        }
        Rejection::BadJson { .. } => {
            assert_eq!(v["code"], "BAD_JSON", "{text}");
            assert!(
                v.get("field").is_none() && v.get("reason").is_none(),
                "{text}"
            );
        }
    }
    assert_eq!(
        v["clientMessageId"].as_str(),
        rejected.client_message_id.as_deref(),
        "{text}"
    );
    match ServerFrame::parse(&text) {
        Ok(ServerFrame::Error(e)) => {
            assert_eq!(e.code, rejected.reason.code());
            assert_eq!(
                e.field.as_deref(),
                rejected.reason.field().map(Field::as_str)
            );
            assert_eq!(e.reason, rejected.reason.problem());
        }
        other => panic!("error frame decodes as {other:?}: {text}"),
    }
}

/// The ack of an accepted message echoes its id and timestamp byte for byte.
fn check_ack_frame(m: &ClientMessage<'_>) {
    let id = IdGenerator::with_instance(1).next_id(SERVER_MS);
    let ack = Ack::new(
        id,
        7,
        ServerTime(SERVER_MS),
        m.client_message_id.as_deref(),
        Some(&m.timestamp),
    );
    let text = ack_json(&ack);
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("ack frame is not JSON ({e}): {text:?}"));
    assert_eq!(v["type"], "ack");
    assert_eq!(v["status"], "OK");
    assert_eq!(v["roomId"], 7);
    assert_eq!(v["messageId"], id.to_string());
    assert_eq!(v["serverTimestamp"], "2026-11-27T02:00:00.123Z");
    assert_eq!(v["timestamp"].as_str(), Some(&*m.timestamp));
    assert_eq!(
        v["clientMessageId"].as_str(),
        m.client_message_id.as_deref()
    );
    assert_eq!(ServerFrame::parse(&text).unwrap(), ServerFrame::Ack(ack));
}

// ---------------------------------------------------------------------------
// The rules, modelled from the documentation.

/// The problems `value` has as `field` under the documented rules; empty
/// when it is fine. `None` is an absent field (`null` counts as absent).
fn problems(field: Field, value: Option<&Value>) -> Vec<Problem> {
    use Problem::*;
    let Some(value) = value.filter(|v| !v.is_null()) else {
        // The correlation id is optional; every other field is required.
        return if field == Field::ClientMessageId {
            vec![]
        } else {
            vec![Missing]
        };
    };
    let mut out = vec![];
    match (field, value) {
        (Field::UserId, Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
            (Some(n), _) if (1..=100_000).contains(&n) => {}
            (Some(_), _) | (None, Some(_)) => out.push(OutOfRange),
            // A number with a fraction or exponent is not an integer.
            (None, None) => out.push(WrongType),
        },
        (Field::UserId, Value::String(s)) => {
            if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit()) {
                out.push(InvalidFormat);
            } else {
                let digits = s.trim_start_matches('0');
                match digits.parse::<u32>() {
                    Ok(n) if digits.len() <= 6 && (1..=100_000).contains(&n) => {}
                    _ => out.push(OutOfRange),
                }
            }
        }
        (Field::Username, Value::String(s)) => {
            if !s.chars().all(|c| c.is_ascii_alphanumeric()) {
                out.push(InvalidCharacters);
            }
            match s.chars().count() {
                n if n < 3 => out.push(TooShort),
                n if n > 20 => out.push(TooLong),
                _ => {}
            }
        }
        (Field::Message | Field::ClientMessageId, Value::String(s)) => {
            let max = if field == Field::Message { 500 } else { 64 };
            if s.contains('\0') {
                out.push(InvalidCharacters);
            }
            match s.chars().count() {
                0 => out.push(TooShort),
                n if n > max => out.push(TooLong),
                _ => {}
            }
        }
        // The format itself is chrono's RFC 3339 reading; generated valid
        // timestamps check it against an independent calendar below.
        (Field::Timestamp, Value::String(s)) => {
            if s.len() > 40 || parse_rfc3339_ms(s).is_none() {
                out.push(InvalidFormat);
            }
        }
        (Field::MessageType, Value::String(s)) => {
            if !["TEXT", "JOIN", "LEAVE"].contains(&s.as_str()) {
                out.push(UnknownValue);
            }
        }
        _ => out.push(WrongType),
    }
    out
}

/// A client message as generated: a value (or nothing) per field of
/// [`FIELDS`], plus unknown fields.
#[derive(Clone, Debug)]
struct Message {
    fields: [Option<Value>; 6],
    extra: Vec<(String, Value)>,
}

/// How a [`Message`] is written: its field order, spacing and which string
/// characters are `\u` escapes.
#[derive(Clone, Debug)]
struct Encoding {
    order: Vec<u32>,
    space: &'static str,
    escapes: Vec<bool>,
}

/// A JSON string literal of `s`, escaping characters as `escapes` (cycled)
/// says, and those JSON requires. Returns the literal and whether it holds
/// any escape.
fn json_string(s: &str, escapes: &[bool]) -> (String, bool) {
    let mut out = String::from('"');
    let mut escaped = false;
    for (i, c) in s.chars().enumerate() {
        let escape = escapes.get(i % escapes.len().max(1)) == Some(&true);
        if c == '"' || c == '\\' || (c as u32) < 0x20 || escape {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
            escaped = true;
        } else {
            out.push(c);
        }
    }
    out.push('"');
    (out, escaped)
}

/// Writes `message` as a JSON object; also returns, per field, whether its
/// string was written with escapes.
fn write_message(message: &Message, encoding: &Encoding) -> (String, [bool; 6]) {
    let mut escaped = [false; 6];
    let mut entries: Vec<(String, String)> = vec![];
    for (i, (field, value)) in FIELDS.iter().zip(&message.fields).enumerate() {
        let Some(value) = value else { continue };
        let text = match value {
            Value::String(s) => {
                let (text, any) = json_string(s, &encoding.escapes);
                escaped[i] = any;
                text
            }
            other => other.to_string(),
        };
        entries.push((json_string(field.as_str(), &[]).0, text));
    }
    for (key, value) in &message.extra {
        entries.push((json_string(key, &encoding.escapes).0, value.to_string()));
    }
    let mut keyed: Vec<(u32, usize, (String, String))> = entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| (encoding.order[i % encoding.order.len()], i, e))
        .collect();
    keyed.sort_by_key(|(order, i, _)| (*order, *i));
    let sp = encoding.space;
    let body: Vec<String> = keyed
        .into_iter()
        .map(|(_, _, (k, v))| format!("{sp}{k}{sp}:{sp}{v}{sp}"))
        .collect();
    (format!("{sp}{{{}}}{sp}", body.join(",")), escaped)
}

/// What the model says `message` must get: the broken fields with their
/// problems (empty: accepted), and the `clientMessageId` a rejection carries.
fn expected(message: &Message) -> (Vec<(Field, Vec<Problem>)>, Option<String>) {
    let broken: Vec<(Field, Vec<Problem>)> = FIELDS
        .iter()
        .zip(&message.fields)
        .map(|(&f, v)| (f, problems(f, v.as_ref())))
        .filter(|(_, p)| !p.is_empty())
        .collect();
    let id = &message.fields[5];
    let carried = match id {
        Some(Value::String(s)) if problems(Field::ClientMessageId, id.as_ref()).is_empty() => {
            Some(s.clone())
        }
        _ => None,
    };
    (broken, carried)
}

/// Checks `text` (written from `message`) against the model.
fn check_against_model(message: &Message, text: &str) {
    let (broken, carried) = expected(message);
    match check_answer(text) {
        Ok(parsed) => {
            assert!(broken.is_empty(), "accepted {text:?} though {broken:?}");
            let str_of = |i: usize| message.fields[i].as_ref().and_then(Value::as_str);
            assert_eq!(Some(&*parsed.username), str_of(1));
            assert_eq!(Some(&*parsed.message), str_of(2));
            assert_eq!(Some(&*parsed.timestamp), str_of(3));
            assert_eq!(Some(parsed.message_type.as_str()), str_of(4));
            assert_eq!(parsed.client_message_id.as_deref(), str_of(5));
        }
        Err(rejected) => match rejected.reason {
            Rejection::Invalid { field, problem } => {
                assert!(
                    broken
                        .iter()
                        .any(|(f, ps)| *f == field && ps.contains(&problem)),
                    "{text:?}: rejected as {field:?}/{problem:?}, model says {broken:?}"
                );
                let expect_id = if field == Field::ClientMessageId {
                    None
                } else {
                    carried
                };
                assert_eq!(rejected.client_message_id.as_deref(), expect_id.as_deref());
            }
            Rejection::BadJson { detail } => {
                panic!("{text:?}: BAD_JSON ({detail}) for a JSON object")
            }
        },
    }
}

// ---------------------------------------------------------------------------
// Generators.

/// Any character, with NUL and a few troublemakers made common.
fn any_char() -> impl Strategy<Value = char> {
    prop_oneof![
        8 => any::<char>(),
        1 => Just('\0'),
        1 => select(vec!['\u{202e}', '\u{feff}', '\u{2028}', '😀', '"', '\\', '\u{7f}', 'é']),
    ]
}

fn string_of(len: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = String> {
    vec(any_char(), len).prop_map(|cs| cs.into_iter().collect())
}

/// Any JSON value of bounded depth.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop::num::f64::NORMAL.prop_map(Value::from),
        string_of(0..=8).prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((string_of(0..=6), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A valid RFC 3339 timestamp and its Unix milliseconds, computed with a
/// plain day count rather than chrono.
fn valid_timestamp() -> impl Strategy<Value = (String, i64)> {
    (
        (0i64..=9999, 1u32..=12, 1u32..=31),
        (0u32..=23, 0u32..=59, 0u32..=59),
        proptest::option::of("[0-9]{1,9}"),
        proptest::option::of((any::<bool>(), 0u32..=23, 0u32..=59)),
    )
        .prop_map(|((y, mo, d), (h, mi, s), fraction, offset)| {
            let d = d.min(days_in_month(y, mo));
            let mut text = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}");
            let mut ms = 0;
            if let Some(f) = &fraction {
                text.push('.');
                text.push_str(f);
                ms = format!("{f:0<3}")[..3].parse::<i64>().unwrap();
            }
            let offset_secs = match offset {
                None => {
                    text.push('Z');
                    0
                }
                Some((west, oh, om)) => {
                    text.push_str(&format!("{}{oh:02}:{om:02}", if west { '-' } else { '+' }));
                    let secs = i64::from(oh * 3600 + om * 60);
                    if west {
                        -secs
                    } else {
                        secs
                    }
                }
            };
            let secs = days_since_epoch(y, mo, d) * 86_400 + i64::from(h * 3600 + mi * 60 + s)
                - offset_secs;
            (text, secs * 1000 + ms)
        })
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn days_since_epoch(y: i64, m: u32, d: u32) -> i64 {
    let year_days = |y: i64| if is_leap(y) { 366 } else { 365 };
    let mut days: i64 = if y >= 1970 {
        (1970..y).map(year_days).sum()
    } else {
        -(y..1970).map(year_days).sum::<i64>()
    };
    days += (1..m).map(|m| i64::from(days_in_month(y, m))).sum::<i64>();
    days + i64::from(d) - 1
}

/// A valid message, by the rules, and its timestamp in milliseconds.
fn valid_message() -> impl Strategy<Value = (Message, i64)> {
    (
        prop_oneof![
            (1u32..=100_000).prop_map(Value::from),
            (1u32..=100_000, 0usize..=4)
                .prop_map(|(n, zeros)| Value::from(format!("{}{n}", "0".repeat(zeros)))),
        ],
        "[A-Za-z0-9]{3,20}",
        prop_oneof![
            string_of(1..=20),
            string_of(495..=500),
            vec(Just('😀'), 500).prop_map(|c| c.into_iter().collect()),
        ]
        .prop_map(|s: String| s.replace('\0', "_")),
        valid_timestamp(),
        select(vec!["TEXT", "JOIN", "LEAVE"]),
        proptest::option::of(string_of(1..=64).prop_map(|s| s.replace('\0', "0"))),
        vec((string_of(0..=8), any_json()), 0..3),
    )
        .prop_map(
            |(user_id, username, message, (ts, ms), kind, id, mut extra)| {
                extra.retain(|(k, _)| FIELDS.iter().all(|f| f.as_str() != k));
                let fields = [
                    Some(user_id),
                    Some(Value::from(username)),
                    Some(Value::from(message)),
                    Some(Value::from(ts)),
                    Some(Value::from(kind)),
                    id.map(Value::from),
                ];
                (Message { fields, extra }, ms)
            },
        )
}

/// Values near the rules' edges for `field` (`None`: absent), many broken.
fn near_value(field: Field) -> BoxedStrategy<Option<Value>> {
    let value = match field {
        Field::UserId => prop_oneof![
            prop_oneof![0u64..=3, 99_998u64..=100_003, any::<u64>()].prop_map(Value::from),
            (i64::MIN..0).prop_map(Value::from),
            "[0-9]{0,8}|0*(0|10000[1-9]|[1-9][0-9]{6,30})|[0-9]{0,3}[ +.eEx-][0-9]{0,3}"
                .prop_map(Value::from),
            select(vec![1.0, 1e3, -0.0, 150.5]).prop_map(Value::from),
            any_json(),
        ]
        .boxed(),
        Field::Username => prop_oneof![
            "[A-Za-z0-9]{0,24}".prop_map(Value::from),
            "[A-Za-z0-9]{0,10}[^A-Za-z0-9][A-Za-z0-9]{0,10}".prop_map(Value::from),
            any_json(),
        ]
        .boxed(),
        Field::Message => prop_oneof![
            string_of(0..=3).prop_map(Value::from),
            string_of(498..=503).prop_map(Value::from),
            "x{2001,2010}".prop_map(Value::from),
            any_json(),
        ]
        .boxed(),
        Field::Timestamp => prop_oneof![
            valid_timestamp().prop_map(|(t, _)| Value::from(t)),
            select(vec![
                "2026-13-01T00:00:00Z",
                "2026-02-30T00:00:00Z",
                "2026-11-27T24:00:00Z",
                "2026-11-27T02:00:00",
                "2026-11-27",
                "1795744800123",
                "",
                "2026-11-27T02:00:00.1234567890123456789012Z",
            ])
            .prop_map(Value::from),
            "[0-9TZ:.+-]{0,30}".prop_map(Value::from),
            any_json(),
        ]
        .boxed(),
        Field::MessageType => prop_oneof![
            select(vec![
                "TEXT", "JOIN", "LEAVE", "text", "Join", " TEXT", "", "PING"
            ])
            .prop_map(Value::from),
            string_of(0..=6).prop_map(Value::from),
            any_json(),
        ]
        .boxed(),
        Field::ClientMessageId => prop_oneof![
            string_of(0..=3).prop_map(Value::from),
            string_of(62..=66).prop_map(Value::from),
            any_json(),
        ]
        .boxed(),
        Field::Type | Field::After => unreachable!("a request's field, not a chat message's"),
    };
    prop_oneof![
        8 => value.prop_map(Some),
        1 => Just(None),
        1 => Just(Some(Value::Null)),
    ]
    .boxed()
}

fn encoding() -> impl Strategy<Value = Encoding> {
    (
        vec(any::<u32>(), 1..10),
        select(vec!["", " ", "\n", "\t ", " \r\n "]),
        prop_oneof![Just(vec![false]), vec(prop::bool::weighted(0.2), 1..7)],
    )
        .prop_map(|(order, space, escapes)| Encoding {
            order,
            space,
            escapes,
        })
}

/// Text shaped like JSON, for the parser's error paths.
fn json_soup() -> impl Strategy<Value = String> {
    let token = select(vec![
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        " ",
        "\"",
        "\\",
        "\"userId\"",
        "\"username\"",
        "\"message\"",
        "\"timestamp\"",
        "\"messageType\"",
        "\"clientMessageId\"",
        "1",
        "-0",
        "1e999",
        "100000",
        "\"TEXT\"",
        "\"user1\"",
        "\"hi\"",
        "\"2026-11-27T02:00:00Z\"",
        "null",
        "true",
        "\\u0000",
        "\\ud800",
        "\u{feff}",
        "\0",
        "\n",
    ]);
    vec(token, 0..40).prop_map(|t| t.concat())
}

// ---------------------------------------------------------------------------
// Properties.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    // Any string at all: parse never panics, and its answer passes every invariant.
    #[test]
    fn any_text_gets_a_well_formed_answer(text in prop_oneof![
        any::<String>(),
        json_soup(),
        vec(any::<u8>(), 0..64).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]) {
        let _ = check_answer(&text);
    }

    // Small edits of a valid message (a character removed or inserted) get a well-formed answer.
    #[test]
    fn edited_valid_messages_get_a_well_formed_answer(
        (message, _) in valid_message(),
        encoding in encoding(),
        at in any::<prop::sample::Index>(),
        insert in proptest::option::of(
            select(vec!["{", "}", "\"", ",", ":", "\\", "\0", "]", "x"]),
        ),
    ) {
        let (text, _) = write_message(&message, &encoding);
        let mut chars: Vec<char> = text.chars().collect();
        let at = at.index(chars.len());
        match insert {
            Some(s) => chars.splice(at..at, s.chars()).for_each(drop),
            None => drop(chars.remove(at)),
        }
        let _ = check_answer(&chars.into_iter().collect::<String>());
    }

    // Objects with the real field names and arbitrary values get the answer the rules predict.
    #[test]
    fn arbitrary_objects_get_the_answer_the_rules_predict(
        fields in (
            near_value(Field::UserId),
            near_value(Field::Username),
            near_value(Field::Message),
            near_value(Field::Timestamp),
            near_value(Field::MessageType),
            near_value(Field::ClientMessageId),
        ),
        extra in vec(
            (
                string_of(0..=16)
                    .prop_filter("unknown key", |k| FIELDS.iter().all(|f| f.as_str() != k)),
                any_json(),
            ),
            0..4,
        ),
        encoding in encoding(),
    ) {
        let (a, b, c, d, e, f) = fields;
        let message = Message { fields: [a, b, c, d, e, f], extra };
        let (text, _) = write_message(&message, &encoding);
        check_against_model(&message, &text);
    }

    // Messages generated from the rules parse to the values written, borrowed when unescaped.
    #[test]
    fn valid_messages_parse_to_the_values_written(
        (message, ms) in valid_message(),
        encoding in encoding(),
    ) {
        let (text, escaped) = write_message(&message, &encoding);
        let parsed = match check_answer(&text) {
            Ok(parsed) => parsed,
            Err(rejected) => panic!("valid message refused ({:?}): {text:?}", rejected.reason),
        };
        let user_id = match &message.fields[0] {
            Some(Value::Number(n)) => n.as_u64().unwrap(),
            Some(Value::String(s)) => s.parse().unwrap(),
            other => unreachable!("{other:?}"),
        };
        prop_assert_eq!(u64::from(parsed.user_id), user_id);
        prop_assert_eq!(parsed.timestamp_ms, ms, "{}", text);
        let kind = message.fields[4].as_ref().and_then(Value::as_str);
        prop_assert_eq!(MessageType::parse(kind.unwrap()), Some(parsed.message_type));
        check_against_model(&message, &text);
        // "Strings without escapes are borrowed from the frame."
        let strings = [
            (1, Some(&parsed.username)),
            (2, Some(&parsed.message)),
            (3, Some(&parsed.timestamp)),
            (5, parsed.client_message_id.as_ref()),
        ];
        for (i, value) in strings {
            if let Some(value) = value {
                prop_assert_eq!(matches!(value, Cow::Borrowed(_)), !escaped[i], "field {}", i);
            }
        }
    }

    // A valid message with one field broken is rejected naming that field and a rule it breaks.
    #[test]
    fn one_broken_field_is_the_one_named(
        (mut message, _) in valid_message(),
        encoding in encoding(),
        (index, value) in (0..FIELDS.len()).prop_flat_map(|i| {
            near_value(FIELDS[i])
                .prop_filter("broken", move |v| !problems(FIELDS[i], v.as_ref()).is_empty())
                .prop_map(move |v| (i, v))
        }),
    ) {
        message.fields[index] = value;
        let (text, _) = write_message(&message, &encoding);
        let rejected = ClientMessage::parse(&text).expect_err(&text);
        prop_assert_eq!(rejected.reason.field(), Some(FIELDS[index]), "{}", text);
        check_against_model(&message, &text);
    }
}

// ---------------------------------------------------------------------------
// The seed corpus.

/// The answer a corpus file must get, where one is known.
#[derive(Clone, Copy, Debug)]
enum Expect {
    Accept,
    BadJson,
    Invalid(Field, Problem),
    /// Rejected naming this field, whatever the problem.
    InvalidField(Field),
    /// Rejected by a field rule, whichever field.
    AnyField,
}

/// Every file in `tests/corpus/json/` and what it must get.
const JSON_CORPUS: &[(&str, Expect)] = {
    use Expect::*;
    use Field::*;
    use Problem::*;
    &[
        ("all_null.json", AnyField),
        ("bom_in_message.json", Accept),
        ("bom_prefix.json", BadJson),
        (
            "client_message_id_65.json",
            Invalid(ClientMessageId, TooLong),
        ),
        (
            "client_message_id_empty.json",
            Invalid(ClientMessageId, TooShort),
        ),
        ("client_message_id_null.json", Accept),
        (
            "client_message_id_object.json",
            Invalid(ClientMessageId, WrongType),
        ),
        ("combining_500.json", Accept),
        ("deep_100_unknown_field.json", Accept),
        ("duplicate_unknown_key.json", Accept),
        ("duplicate_user_id.json", BadJson),
        ("duplicate_user_id_escaped_key.json", BadJson),
        ("emoji_500.json", Accept),
        ("emoji_500_escaped.json", Accept),
        ("emoji_501.json", Invalid(Message, TooLong)),
        ("emoji_501_escaped.json", Invalid(Message, TooLong)),
        ("empty.json", BadJson),
        ("empty_object.json", AnyField),
        ("escaped_key_names.json", Accept),
        ("huge_number_unknown_field.json", Accept),
        ("leading_whitespace.json", Accept),
        ("lone_leading_surrogate_message.json", BadJson),
        // RFC 8259's grammar allows it, and unknown fields are dropped.
        ("lone_surrogate_unknown_field.json", Accept),
        ("lone_trailing_surrogate_message.json", BadJson),
        // Every field at its longest and every character a `\u` escape.
        ("max_escaped_valid_message.json", Accept),
        ("message_64kib.json", Invalid(Message, TooLong)),
        (
            "message_type_lowercase.json",
            Invalid(MessageType, UnknownValue),
        ),
        ("nested_arrays_10000.json", BadJson),
        // Skipped without recursion (serde_json's `ignore_value` keeps its
        // own stack) and dropped: harmless.
        ("nested_arrays_10000_in_unknown_field.json", Accept),
        (
            "nested_arrays_10000_in_user_id.json",
            Invalid(UserId, WrongType),
        ),
        // Only unknown keys, skipped as above: every field is missing.
        ("nested_objects_10000.json", AnyField),
        ("not_object_array.json", BadJson),
        ("not_object_null.json", BadJson),
        ("not_object_string.json", BadJson),
        (
            "nul_escaped_client_message_id.json",
            Invalid(ClientMessageId, InvalidCharacters),
        ),
        (
            "nul_escaped_message.json",
            Invalid(Message, InvalidCharacters),
        ),
        (
            "nul_escaped_username.json",
            Invalid(Username, InvalidCharacters),
        ),
        ("nul_raw_message.json", BadJson),
        ("raw_tab_in_message.json", BadJson),
        ("reversed_surrogate_pair_message.json", BadJson),
        ("rtl_override_message.json", Accept),
        (
            "rtl_override_username.json",
            Invalid(Username, InvalidCharacters),
        ),
        ("timestamp_41_bytes.json", Invalid(Timestamp, InvalidFormat)),
        ("trailing_garbage.json", BadJson),
        ("trailing_whitespace.json", Accept),
        ("two_objects.json", BadJson),
        ("u2028_in_message.json", Accept),
        ("unknown_field_1e999.json", Accept),
        ("user_id_1e999.json", BadJson),
        ("user_id_arabic_digits.json", Invalid(UserId, InvalidFormat)),
        ("user_id_exponent.json", Invalid(UserId, WrongType)),
        ("user_id_float_one.json", Invalid(UserId, WrongType)),
        ("user_id_leading_zeros.json", Accept),
        // serde_json reads `-0` and integers past u64 as floats, so these are
        // WRONG_TYPE rather than OUT_OF_RANGE; either names the field.
        ("user_id_negative_zero.json", InvalidField(UserId)),
        ("user_id_string_30_digits.json", Invalid(UserId, OutOfRange)),
        ("user_id_string_plus.json", Invalid(UserId, InvalidFormat)),
        ("user_id_u64_overflow.json", InvalidField(UserId)), // see -0 above
        (
            "username_cyrillic_homoglyph.json",
            Invalid(Username, InvalidCharacters),
        ),
        (
            "username_fullwidth.json",
            Invalid(Username, InvalidCharacters),
        ),
        ("zwj_family_72.json", Invalid(Message, TooLong)),
    ]
};

// Every corpus file passes the invariants and gets its known answer (table and directory agree).
#[test]
fn json_corpus_gets_its_known_answers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/json");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    let listed: Vec<&str> = JSON_CORPUS.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, listed, "tests/corpus/json and JSON_CORPUS disagree");
    let mut wrong = vec![];
    for (name, expect) in JSON_CORPUS {
        let bytes = fs::read(dir.join(name)).unwrap();
        // Text frames are UTF-8 by the time they reach the parser.
        let text = String::from_utf8(bytes).unwrap_or_else(|_| panic!("{name}: not UTF-8"));
        let answer = check_answer(&text);
        let reason = answer.as_ref().err().map(|r| &r.reason);
        let ok = match (expect, reason) {
            (Expect::Accept, None) => true,
            (Expect::BadJson, Some(Rejection::BadJson { .. })) => true,
            (Expect::Invalid(f, p), Some(Rejection::Invalid { field, problem })) => {
                f == field && p == problem
            }
            (Expect::InvalidField(f), Some(Rejection::Invalid { field, .. })) => f == field,
            (Expect::AnyField, Some(Rejection::Invalid { .. })) => true,
            _ => false,
        };
        if !ok {
            wrong.push(format!("{name}: expected {expect:?}, got {reason:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

// The most escaped valid message fits the bound servers size their frame limit from.
#[test]
fn the_most_escaped_valid_message_fits_max_client_message_bytes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus/json/max_escaped_valid_message.json");
    let text = fs::read_to_string(path).unwrap();
    assert!(check_answer(&text).is_ok());
    assert_eq!(text.len(), chatflow_protocol::message::max_escaped_len());
    assert!(
        text.len() <= MAX_CLIENT_MESSAGE_BYTES,
        "{} bytes > {MAX_CLIENT_MESSAGE_BYTES}",
        text.len()
    );
}

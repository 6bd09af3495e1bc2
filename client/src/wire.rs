//! The hot path's wire work: writing a client message straight into a
//! connection's output buffer as a masked WebSocket text frame (no
//! allocation, no intermediate `Message`), and classifying server frames by
//! scanning for the few fields the client needs instead of parsing them.
//!
//! Scanning is sound for the server's flat JSON objects: inside a JSON
//! string every `"` is escaped, so the pattern `"key":` can only match a
//! real key. Anything the scanner does not recognise falls back to the
//! protocol crate's full parser.

use chatflow_protocol::{MessageId, MessageType, ServerFrame, ServerTime};

use crate::generator::Msg;

/// Writes client messages as frames. One per connection thread: it owns the
/// scratch JSON buffer, the timestamp cache and the masking-key generator.
pub struct Encoder {
    json: Vec<u8>,
    /// The last formatted timestamp: it changes once a millisecond, far less
    /// often than messages are sent.
    ts_ms: i64,
    ts: [u8; 24],
    /// xorshift64* state for masking keys (RFC 6455 wants them unpredictable
    /// to proxies; nothing here needs more).
    mask_state: u64,
    /// What every `clientMessageId` starts with, before its sequence
    /// number: unique to this run and thread (see `sender::Shared::run_id`).
    name_prefix: String,
}

impl Encoder {
    /// `name_prefix` must be free of characters JSON escapes (ours is hex,
    /// digits and `-`).
    pub fn new(seed: u64, name_prefix: String) -> Self {
        debug_assert!(name_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        Encoder {
            json: Vec::with_capacity(512),
            ts_ms: i64::MIN,
            ts: [0; 24],
            mask_state: seed | 1,
            name_prefix,
        }
    }

    /// Appends one masked text frame carrying `msg` to `out`. `seq`, after
    /// the encoder's prefix, becomes the `clientMessageId` the server
    /// echoes; `now_ms` the timestamp.
    pub fn encode(&mut self, out: &mut Vec<u8>, msg: &Msg, seq: u64, now_ms: i64) {
        self.encode_text(out, msg.user_id, msg.text(), msg.kind, seq, now_ms);
    }

    /// [`Self::encode`] with any `text` (which must need no JSON escaping:
    /// the pool's texts, or a `--connections-only` probe's).
    pub fn encode_text(
        &mut self,
        out: &mut Vec<u8>,
        user_id: u32,
        text: &str,
        kind: MessageType,
        seq: u64,
        now_ms: i64,
    ) {
        debug_assert!(!text.contains(['"', '\\']) && !text.chars().any(char::is_control));
        if now_ms != self.ts_ms {
            self.ts_ms = now_ms;
            self.ts = ServerTime(now_ms).to_rfc3339_bytes();
        }
        let j = &mut self.json;
        j.clear();
        j.extend_from_slice(b"{\"userId\":");
        push_u64(j, u64::from(user_id));
        j.extend_from_slice(b",\"username\":\"user");
        push_u64(j, u64::from(user_id));
        j.extend_from_slice(b"\",\"message\":\"");
        // Pool texts need no escaping (checked by a generator test).
        j.extend_from_slice(text.as_bytes());
        j.extend_from_slice(b"\",\"timestamp\":\"");
        j.extend_from_slice(&self.ts);
        j.extend_from_slice(b"\",\"messageType\":\"");
        j.extend_from_slice(kind.as_str().as_bytes());
        j.extend_from_slice(b"\",\"clientMessageId\":\"");
        j.extend_from_slice(self.name_prefix.as_bytes());
        push_u64(j, seq);
        j.extend_from_slice(b"\"}");
        let mask = self.next_mask();
        write_masked_text_frame(out, &self.json, mask);
    }

    /// Appends one masked text frame carrying `payload` as it is (a
    /// request such as `{"type":"presence"}`).
    pub fn encode_raw(&mut self, out: &mut Vec<u8>, payload: &[u8]) {
        let mask = self.next_mask();
        write_masked_text_frame(out, payload, mask);
    }

    fn next_mask(&mut self) -> [u8; 4] {
        let mut x = self.mask_state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.mask_state = x;
        ((x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32).to_le_bytes()
    }
}

/// Appends a final, masked text frame (RFC 6455 §5.2) with `payload`.
pub fn write_masked_text_frame(out: &mut Vec<u8>, payload: &[u8], mask: [u8; 4]) {
    const FIN_TEXT: u8 = 0x81;
    const MASKED: u8 = 0x80;
    let len = payload.len();
    out.push(FIN_TEXT);
    if len < 126 {
        out.push(MASKED | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(MASKED | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(MASKED | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    // Whole words first: the mask repeats every 4 bytes.
    let body = &mut out[start..];
    let word = u32::from_ne_bytes(mask);
    let mut chunks = body.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// Decimal digits without `fmt`.
pub fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// A server frame, as far as the client cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// Accepted: the echoed sequence number and the server's message id.
    Ack { seq: Option<u64>, id: MessageId },
    /// Refused; `code` is the wire code (e.g. `UNAVAILABLE`).
    Error { seq: Option<u64>, code: &'a str },
    /// A room broadcast; fields are scanned only when needed
    /// ([`broadcast_id`], [`broadcast_user`], [`broadcast_position`]).
    Broadcast(&'a str),
    /// The seam of a resume (`?since=`): how many messages were replayed,
    /// and whether that was everything missed.
    Recovery { replayed: u64, recovered: bool },
    /// A presence frame (`presence`, `presence_join`, `presence_leave`),
    /// parsed only by whoever wants it
    /// ([`chatflow_protocol::presence::PresenceFrame::parse`]).
    Presence(&'a str),
    /// Anything else (counted, otherwise ignored).
    Other,
}

/// A broadcast's room `position` (its last field, when the room keeps a
/// history): where a resume after it starts.
pub fn broadcast_position(text: &str) -> Option<&str> {
    string_field(text, "position")
}

/// Classifies a text frame. Cheap for the server's own output; exact (full
/// parse) for anything unusual.
pub fn classify(text: &str) -> Incoming<'_> {
    match string_field(text, "type") {
        Some("message") => Incoming::Broadcast(text),
        Some("presence" | "presence_join" | "presence_leave") => Incoming::Presence(text),
        // Rare (once a resume): parsed in full.
        Some("recovery") => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v) => Incoming::Recovery {
                replayed: v["replayed"].as_u64().unwrap_or(0),
                recovered: v["recovered"].as_bool().unwrap_or(false),
            },
            Err(_) => Incoming::Other,
        },
        Some("ack") => {
            let id = string_field(text, "messageId").and_then(parse_uuid);
            match id {
                Some(id) => Incoming::Ack {
                    seq: string_field(text, "clientMessageId").and_then(parse_seq),
                    id: MessageId(id),
                },
                None => slow_classify(text),
            }
        }
        Some("error") => match string_field(text, "code") {
            Some(code) => Incoming::Error {
                seq: string_field(text, "clientMessageId").and_then(parse_seq),
                code,
            },
            None => slow_classify(text),
        },
        _ => slow_classify(text),
    }
}

/// The full parse, for frames the scanner could not read.
fn slow_classify(text: &str) -> Incoming<'_> {
    match ServerFrame::parse(text) {
        Ok(ServerFrame::Ack(a)) => Incoming::Ack {
            seq: a.client_message_id.as_deref().and_then(parse_seq),
            id: a.message_id,
        },
        Ok(ServerFrame::Error(e)) => Incoming::Error {
            seq: e.client_message_id.as_deref().and_then(parse_seq),
            code: e.code.as_str(),
        },
        Ok(ServerFrame::Message(_)) => Incoming::Broadcast(text),
        Err(_) => Incoming::Other,
    }
}

/// The message id of a broadcast.
pub fn broadcast_id(text: &str) -> Option<u128> {
    string_field(text, "messageId")
        .and_then(parse_uuid)
        .or_else(|| match ServerFrame::parse(text) {
            Ok(ServerFrame::Message(b)) => Some(b.message_id.0),
            _ => None,
        })
}

/// The sender's userId of a broadcast.
pub fn broadcast_user(text: &str) -> Option<u32> {
    let at = find_key(text, "userId")?;
    let digits = text[at..].trim_start();
    let digits = digits.strip_prefix('"').unwrap_or(digits);
    let end = digits
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// A broadcast's message text, when it holds no escapes (the client's own
/// texts never do).
pub fn broadcast_text(text: &str) -> Option<&str> {
    string_field(text, "message")
}

/// The number after `prefix` in a broadcast's text (`--connections-only`
/// probes are `{prefix}{index}`), if it is one of those.
pub fn probe_index(text: &str, prefix: &str) -> Option<u64> {
    broadcast_text(text)?.strip_prefix(prefix)?.parse().ok()
}

/// The human text of an error frame (rare path: a full parse).
pub fn error_text(text: &str) -> String {
    match ServerFrame::parse(text) {
        Ok(ServerFrame::Error(e)) => match e.field {
            Some(f) => format!("{}: {} ({f})", e.code.as_str(), e.message),
            None => format!("{}: {}", e.code.as_str(), e.message),
        },
        _ => text.chars().take(200).collect(),
    }
}

/// Byte offset just past `"key":`, if the key is present.
fn find_key(text: &str, key: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(i) = text[from..].find(key) {
        let start = from + i;
        let end = start + key.len();
        if start > 0
            && bytes[start - 1] == b'"'
            && bytes.get(end) == Some(&b'"')
            && bytes.get(end + 1) == Some(&b':')
        {
            return Some(end + 2);
        }
        from = end;
    }
    None
}

/// The value of a string field that holds no escapes (ids, codes, types).
fn string_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let at = find_key(text, key)?;
    let rest = text[at..].trim_start().strip_prefix('"')?;
    let end = rest.find('"')?;
    let value = &rest[..end];
    (!value.contains('\\')).then_some(value)
}

/// The sequence number at the end of a `clientMessageId`
/// (`{run:x}-{slot}-{seq}`, or a bare number).
fn parse_seq(s: &str) -> Option<u64> {
    s.rsplit('-').next()?.parse().ok()
}

/// Parses a hyphenated UUID (36 chars) into its 128-bit value.
pub fn parse_uuid(s: &str) -> Option<u128> {
    let b = s.as_bytes();
    if b.len() != 36 || b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
        return None;
    }
    let mut v: u128 = 0;
    for (i, &c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            continue;
        }
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        v = (v << 4) | u128::from(d);
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatflow_protocol::frame::{ack_json, broadcast_json, error_json};
    use chatflow_protocol::{
        Ack, Broadcast, ClientMessage, ErrorCode, ErrorFrame, IdGenerator, MessageType,
    };
    use std::io::Cursor;
    use tungstenite::protocol::Role;
    use tungstenite::{Message, WebSocket};

    fn msg(kind: MessageType) -> Msg {
        Msg {
            user_id: 12345,
            room: 7,
            text: 3,
            kind,
            due_ns: 0,
        }
    }

    /// Decodes frames the way the server does (tungstenite, server role,
    /// which rejects unmasked client frames).
    fn decode_all(bytes: Vec<u8>) -> Vec<String> {
        let mut ws = WebSocket::from_raw_socket(Cursor::new(bytes), Role::Server, None);
        let mut out = Vec::new();
        while let Ok(Message::Text(t)) = ws.read() {
            out.push(t.as_str().to_string());
        }
        out
    }

    #[test]
    fn encoded_frames_decode_and_validate_on_the_server_side() {
        // Our hand-made masked frames are what tungstenite's server reads,
        // and the JSON passes the protocol's validation with every field.
        let mut enc = Encoder::new(99, "1f-3-".to_string());
        let mut out = Vec::new();
        enc.encode(&mut out, &msg(MessageType::Join), 41, 1_795_744_800_123);
        enc.encode(&mut out, &msg(MessageType::Text), 42, 1_795_744_800_124);
        let texts = decode_all(out);
        assert_eq!(texts.len(), 2);
        let m = ClientMessage::parse(&texts[0]).unwrap();
        assert_eq!(m.user_id, 12345);
        assert_eq!(m.username, "user12345");
        assert_eq!(m.message, crate::generator::TEXTS[3]);
        assert_eq!(m.timestamp, "2026-11-27T02:00:00.123Z");
        assert_eq!(m.message_type, MessageType::Join);
        assert_eq!(m.client_message_id.as_deref(), Some("1f-3-41"));
        let m = ClientMessage::parse(&texts[1]).unwrap();
        assert_eq!(m.timestamp, "2026-11-27T02:00:00.124Z");
        assert_eq!(m.client_message_id.as_deref(), Some("1f-3-42"));
        // The sequence number comes back out of the name the server echoes.
        assert_eq!(parse_seq("1f-3-42"), Some(42));
        assert_eq!(parse_seq("42"), Some(42));
        assert_eq!(parse_seq("1f-3-"), None);
    }

    #[test]
    fn frame_lengths_cover_all_three_header_forms() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let mut out = Vec::new();
            write_masked_text_frame(&mut out, &payload, [1, 2, 3, 4]);
            let mut ws = WebSocket::from_raw_socket(
                Cursor::new(out),
                Role::Server,
                Some(tungstenite::protocol::WebSocketConfig::default()),
            );
            match ws.read().unwrap() {
                Message::Text(t) => assert_eq!(t.as_bytes(), &payload[..], "len {len}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn digits_and_uuids() {
        let mut v = Vec::new();
        for n in [0u64, 7, 10, 12345, u64::MAX] {
            v.clear();
            push_u64(&mut v, n);
            assert_eq!(v, n.to_string().as_bytes());
        }
        let id = IdGenerator::new().next_id(1_795_744_800_123);
        assert_eq!(parse_uuid(&id.to_string()), Some(id.0));
        assert_eq!(parse_uuid(&id.to_string().to_uppercase()), Some(id.0));
        assert_eq!(parse_uuid("not-a-uuid"), None);
    }

    #[test]
    fn server_frames_are_classified_by_scanning() {
        // Acks, errors and broadcasts as the protocol crate writes them.
        let id = IdGenerator::new().next_id(1_795_744_800_123);
        let ack = ack_json(&Ack::new(id, 7, ServerTime(1), Some("17"), Some("t")));
        assert_eq!(classify(&ack), Incoming::Ack { seq: Some(17), id });
        let ack = ack_json(&Ack::new(id, 7, ServerTime(1), None, None));
        assert_eq!(classify(&ack), Incoming::Ack { seq: None, id });

        let mut e = ErrorFrame::new(ErrorCode::Unavailable, "broker down");
        e.client_message_id = Some("5".into());
        let err = error_json(&e);
        assert_eq!(
            classify(&err),
            Incoming::Error {
                seq: Some(5),
                code: "UNAVAILABLE"
            }
        );
        assert!(error_text(&err).contains("broker down"));

        // A hostile text that mimics keys stays inside its string.
        let b = Broadcast {
            message_id: id,
            room_id: 7,
            user_id: 4242,
            username: "user4242".into(),
            message: r#""type":"ack","messageId":"x","userId":1"#.into(),
            message_type: MessageType::Text,
            timestamp: "2026-11-27T02:00:00Z".into(),
            server_timestamp: ServerTime(1),
        };
        let text = broadcast_json(&b);
        assert_eq!(classify(&text), Incoming::Broadcast(&text));
        assert_eq!(broadcast_id(&text), Some(id.0));
        assert_eq!(broadcast_user(&text), Some(4242));
        assert_eq!(classify("not json"), Incoming::Other);
        for kind in ["presence", "presence_join", "presence_leave"] {
            let text = format!(r#"{{"type":"{kind}","roomId":1,"count":0}}"#);
            assert_eq!(classify(&text), Incoming::Presence(&text));
        }
    }

    #[test]
    fn a_probe_text_goes_out_and_its_index_comes_back_from_the_broadcast() {
        let mut enc = Encoder::new(5, "ab-p0-".to_string());
        let mut out = Vec::new();
        enc.encode_text(
            &mut out,
            77,
            "cf-probe 1f2e 41",
            MessageType::Text,
            41,
            1_795_744_800_123,
        );
        let texts = decode_all(out);
        let m = ClientMessage::parse(&texts[0]).unwrap();
        assert_eq!(m.message, "cf-probe 1f2e 41");
        let b = broadcast_json(&Broadcast {
            message_id: IdGenerator::new().next_id(1),
            room_id: 1,
            user_id: 77,
            username: "user77".into(),
            message: m.message.clone(),
            message_type: MessageType::Text,
            timestamp: m.timestamp.clone(),
            server_timestamp: ServerTime(1),
        });
        assert_eq!(probe_index(&b, "cf-probe 1f2e "), Some(41));
        assert_eq!(probe_index(&b, "cf-probe 9999 "), None, "another run's");
        let other = b.replace("cf-probe 1f2e 41", "hello");
        assert_eq!(probe_index(&other, "cf-probe 1f2e "), None);
    }

    #[test]
    fn fields_in_another_order_are_still_found() {
        // Not tied to serde's field order: a reordered ack with spaces.
        let id = IdGenerator::new().next_id(5);
        let text = format!(
            r#"{{"status":"OK", "clientMessageId": "9", "messageId": "{id}", "roomId":1,"serverTimestamp":"2026-11-27T02:00:00.000Z","type": "ack"}}"#
        );
        assert_eq!(classify(&text), Incoming::Ack { seq: Some(9), id });
    }
}

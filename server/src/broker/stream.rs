//! Reading a room's history stream (`{ns}:history:{room}`, appended by the
//! consumers with every broadcast; see `chatflow_protocol::position`): the
//! commands, and their replies parsed into [`Entry`]s and an [`Extent`].
//! Both the history thread (resuming clients) and the Redis subscriber
//! (filling what it missed while its subscription was down) read through
//! here, so they agree on what a stream holds.
//!
//! An entry's `frame` field is the `message` frame as the consumer
//! published it minus its position; [`Entry::frame`] is the frame with the
//! entry id spliced back in, byte for byte what subscribers received.

use chatflow_protocol::position::with_position;
use chatflow_protocol::Position;
use redis::{Pipeline, Value};
use tungstenite::Utf8Bytes;

/// The stream entry field holding the frame (the consumer's script writes
/// it).
const FRAME_FIELD: &[u8] = b"frame";

/// One message of a room's history.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub position: Position,
    /// The `message` frame with its `"position"`, ready to send.
    pub frame: Utf8Bytes,
}

/// How much of a room's history Redis still holds (`XINFO STREAM`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extent {
    /// The stream exists (a room nobody has written to, or a Redis that
    /// lost its data, has none).
    pub exists: bool,
    /// Entries held now.
    pub length: u64,
    /// Entries ever appended, trimmed ones included.
    pub entries_added: u64,
    /// The oldest entry held, if any.
    pub first: Option<Position>,
    /// The newest entry ever appended (`0-0` if none).
    pub last: Position,
}

impl Extent {
    /// Whether every entry after `since` is still held, so a replay from
    /// it misses nothing. Trimming removes the oldest entries, so that is
    /// so when `since` is at or after the oldest entry held (or after
    /// everything ever appended), or when `since` is `0-0` and nothing
    /// was ever trimmed. A `since` older than the oldest entry held is
    /// taken as trimmed even if it named the very entry before it (which
    /// cannot be told from here): the answer may be cautious, never
    /// wrong. A missing stream holds nothing after a real position (its
    /// history was lost, or it belongs to no stream of ours).
    pub fn holds_all_after(&self, since: Position) -> bool {
        if !self.exists {
            return since == Position::ZERO;
        }
        if since >= self.last {
            return true;
        }
        match self.first {
            Some(first) if since >= first => true,
            _ => since == Position::ZERO && self.entries_added == self.length,
        }
    }

    /// Where the held history starts, as a time: messages stored before
    /// this millisecond (by server timestamp) are what a trimmed replay
    /// may fill from the database.
    pub fn held_since_ms(&self) -> u64 {
        match self.first {
            Some(first) => first.ms,
            None => self.last.ms.saturating_add(1),
        }
    }
}

/// A stream reply that is not what these commands return.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply to {0}")]
    Unexpected(&'static str),
}

/// Adds `XRANGE key (after + COUNT count`: up to `count` entries after
/// `after` (exclusive), oldest first.
pub fn read_after(pipe: &mut Pipeline, key: &str, after: Position, count: usize) {
    pipe.cmd("XRANGE")
        .arg(key)
        .arg(format!("({after}"))
        .arg("+")
        .arg("COUNT")
        .arg(count);
}

/// Adds `XINFO STREAM key`.
pub fn extent(pipe: &mut Pipeline, key: &str) {
    pipe.cmd("XINFO").arg("STREAM").arg(key);
}

/// The entries of an `XRANGE` reply (an error reply is the error).
pub fn parse_entries(reply: &Value) -> Result<Vec<Entry>, ReadError> {
    let entries = match reply {
        Value::Array(entries) => entries,
        Value::Nil => return Ok(Vec::new()),
        Value::ServerError(e) => return Err(redis::RedisError::from(e.clone()).into()),
        _ => return Err(ReadError::Unexpected("XRANGE")),
    };
    entries.iter().map(parse_entry).collect()
}

fn parse_entry(entry: &Value) -> Result<Entry, ReadError> {
    let bad = ReadError::Unexpected("XRANGE");
    let Value::Array(parts) = entry else {
        return Err(bad);
    };
    let (Some(id), Some(Value::Array(fields))) = (parts.first(), parts.get(1)) else {
        return Err(bad);
    };
    let position = parse_position(id).ok_or(ReadError::Unexpected("XRANGE"))?;
    let frame = fields
        .chunks(2)
        .find(|pair| matches!(&pair[0], Value::BulkString(name) if name == FRAME_FIELD))
        .and_then(|pair| match pair.get(1) {
            Some(Value::BulkString(frame)) => std::str::from_utf8(frame).ok(),
            _ => None,
        })
        .ok_or(bad)?;
    Ok(Entry {
        position,
        frame: Utf8Bytes::from(with_position(frame, position)),
    })
}

/// The [`Extent`] in an `XINFO STREAM` reply; a stream that does not
/// exist (Redis answers with an error) has an empty one.
pub fn parse_extent(reply: &Value) -> Result<Extent, ReadError> {
    let pairs: Vec<(&Value, &Value)> = match reply {
        Value::Array(flat) => flat
            .chunks(2)
            .filter_map(|p| Some((&p[0], p.get(1)?)))
            .collect(),
        Value::Map(map) => map.iter().map(|(k, v)| (k, v)).collect(),
        Value::ServerError(e) if e.details().is_some_and(|d| d.contains("no such key")) => {
            return Ok(Extent::default())
        }
        Value::ServerError(e) => return Err(redis::RedisError::from(e.clone()).into()),
        _ => return Err(ReadError::Unexpected("XINFO STREAM")),
    };
    let mut extent = Extent {
        exists: true,
        ..Extent::default()
    };
    for (key, value) in pairs {
        let Value::BulkString(key) = key else {
            continue;
        };
        match key.as_slice() {
            b"length" => extent.length = integer(value).unwrap_or(0),
            b"entries-added" => extent.entries_added = integer(value).unwrap_or(0),
            b"last-generated-id" => extent.last = parse_position(value).unwrap_or_default(),
            b"first-entry" => {
                extent.first = match value {
                    Value::Array(entry) => entry.first().and_then(parse_position),
                    _ => None,
                }
            }
            _ => {}
        }
    }
    Ok(extent)
}

fn integer(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

fn parse_position(value: &Value) -> Option<Position> {
    match value {
        Value::BulkString(text) => Position::parse(std::str::from_utf8(text).ok()?).ok(),
        Value::SimpleString(text) => Position::parse(text).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn extent(first: Option<(u64, u64)>, last: (u64, u64), length: u64, added: u64) -> Extent {
        Extent {
            exists: true,
            length,
            entries_added: added,
            first: first.map(|(ms, seq)| Position::new(ms, seq)),
            last: Position::new(last.0, last.1),
        }
    }

    #[test]
    fn a_stream_holds_everything_after_positions_it_still_holds() {
        let p = Position::new;
        // Entries 100-0 ..= 200-0 held, 300 added in all.
        let trimmed = extent(Some((100, 0)), (200, 0), 100, 300);
        assert!(trimmed.holds_all_after(p(100, 0)));
        assert!(trimmed.holds_all_after(p(150, 3)));
        assert!(trimmed.holds_all_after(p(200, 0)));
        assert!(trimmed.holds_all_after(p(999, 0)));
        assert!(!trimmed.holds_all_after(p(99, 5)));
        assert!(!trimmed.holds_all_after(Position::ZERO));
        // Never trimmed: 0-0 means all of it.
        let whole = extent(Some((100, 0)), (200, 0), 300, 300);
        assert!(whole.holds_all_after(Position::ZERO));
        // ...but a real position before it belongs to a history since
        // lost (a Redis restarted without its data).
        assert!(!whole.holds_all_after(p(50, 0)));
        // Everything trimmed by age.
        let empty = extent(None, (200, 0), 0, 300);
        assert!(empty.holds_all_after(p(200, 0)));
        assert!(!empty.holds_all_after(p(199, 0)));
        assert_eq!(empty.held_since_ms(), 201);
        assert_eq!(trimmed.held_since_ms(), 100);
        // No stream at all.
        assert!(Extent::default().holds_all_after(Position::ZERO));
        assert!(!Extent::default().holds_all_after(p(1, 0)));
    }

    #[test]
    fn replies_parse_into_entries_and_extents() {
        let entry = |id: &str, frame: &str| {
            Value::Array(vec![
                bulk(id),
                Value::Array(vec![bulk("frame"), bulk(frame)]),
            ])
        };
        let reply = Value::Array(vec![entry("5-0", r#"{"a":1}"#), entry("5-1", r#"{"a":2}"#)]);
        let entries = parse_entries(&reply).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].position, Position::new(5, 1));
        assert_eq!(entries[1].frame.as_str(), r#"{"a":2,"position":"5-1"}"#);
        assert!(parse_entries(&Value::Array(vec![bulk("5-0")])).is_err());

        let info = Value::Array(vec![
            bulk("length"),
            Value::Int(2),
            bulk("last-generated-id"),
            bulk("5-1"),
            bulk("entries-added"),
            Value::Int(7),
            bulk("first-entry"),
            entry("5-0", "{}"),
        ]);
        assert_eq!(
            parse_extent(&info).unwrap(),
            extent(Some((5, 0)), (5, 1), 2, 7)
        );
    }
}

//! Positions in a room's history: the id of the message's entry in the
//! room's Redis stream (`{ms}-{seq}`, e.g. `1733090000123-0`), which every
//! broadcast carries as `position` and a client hands back as
//! `/chat/{roomId}?since={position}` to resume after it.
//!
//! Redis makes the id when the consumer appends the message (`XADD … *`):
//! milliseconds of Redis' clock, then a sequence within that millisecond.
//! Ids only grow within one stream, so positions order a room's messages
//! (room order = stream order). Positions of different rooms are not
//! comparable.
//!
//! How a position travels in a frame is fixed here too: it is the frame's
//! last field, `,"position":"…"}`, so the consumer's script can splice it
//! in without parsing JSON and the server's subscriber can read it back
//! from the frame's tail without parsing either ([`Position::of_frame`],
//! [`with_position`]). A field serialised after a [`crate::Broadcast`]'s
//! own lands in the same place: the same bytes either way.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A stream entry id: ordered by milliseconds, then sequence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Milliseconds since the Unix epoch, by the clock of the Redis that
    /// appended the message (not the server timestamp: the message waited
    /// in its queue between the two).
    pub ms: u64,
    pub seq: u64,
}

/// Why a `since` value is not a position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    #[error("a position is two numbers joined by '-', like 1733090000123-0")]
    Format,
    #[error("a position's numbers must each fit in 64 bits")]
    Overflow,
}

/// What precedes the position's digits at the end of a frame.
pub const POSITION_FIELD: &str = ",\"position\":\"";

/// The longest text of a position: two 20-digit numbers and a dash.
pub const MAX_POSITION_LEN: usize = 41;

impl Position {
    /// Before every entry: `since=0-0` asks for the whole retained history.
    pub const ZERO: Position = Position { ms: 0, seq: 0 };

    pub const fn new(ms: u64, seq: u64) -> Self {
        Position { ms, seq }
    }

    /// Parses `{ms}-{seq}`: ASCII digits only (no sign, no spaces), each
    /// part non-empty and within `u64`.
    pub fn parse(text: &str) -> Result<Position, PositionError> {
        let (ms, seq) = text.split_once('-').ok_or(PositionError::Format)?;
        Ok(Position {
            ms: number(ms)?,
            seq: number(seq)?,
        })
    }

    /// The position at the end of a frame built by [`with_position`] (or
    /// by the consumer's script), found without parsing the JSON. `None`
    /// for a frame that carries none.
    pub fn of_frame(frame: &str) -> Option<Position> {
        let body = frame.strip_suffix("\"}")?;
        // Only the tail can hold it: a position is at most 41 characters.
        let tail_start = body
            .len()
            .saturating_sub(MAX_POSITION_LEN + POSITION_FIELD.len());
        let tail = body.get(tail_start..).unwrap_or(body);
        let at = tail.rfind(POSITION_FIELD)?;
        Position::parse(&tail[at + POSITION_FIELD.len()..]).ok()
    }

    /// The entry after this one in Redis' order (for an inclusive range
    /// that must skip this entry).
    pub fn next(self) -> Position {
        match self.seq.checked_add(1) {
            Some(seq) => Position { ms: self.ms, seq },
            None => Position {
                ms: self.ms.saturating_add(1),
                seq: 0,
            },
        }
    }
}

fn number(digits: &str) -> Result<u64, PositionError> {
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PositionError::Format);
    }
    digits.parse().map_err(|_| PositionError::Overflow)
}

/// `frame` (a JSON object: `{…}`) with `"position"` appended as its last
/// field: what the consumer's script publishes, made the same way.
pub fn with_position(frame: &str, position: Position) -> String {
    let head = frame.strip_suffix('}').unwrap_or(frame);
    let mut out = String::with_capacity(head.len() + POSITION_FIELD.len() + MAX_POSITION_LEN + 2);
    out.push_str(head);
    out.push_str(POSITION_FIELD);
    use fmt::Write as _;
    let _ = write!(out, "{position}\"}}");
    out
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for Position {
    type Err = PositionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Position::parse(s)
    }
}

impl Serialize for Position {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Position {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Position::parse(&s).map_err(|e| de::Error::custom(format!("not a position: {s:?} ({e})")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_print_and_order_like_redis_ids() {
        let p = Position::parse("1733090000123-7").unwrap();
        assert_eq!(p, Position::new(1_733_090_000_123, 7));
        assert_eq!(p.to_string(), "1733090000123-7");
        assert!(Position::new(1, 9) < Position::new(2, 0));
        assert!(Position::new(2, 0) < Position::new(2, 1));
        assert_eq!(Position::new(5, 1).next(), Position::new(5, 2));
        assert_eq!(Position::new(5, u64::MAX).next(), Position::new(6, 0));
        let max = format!("{}-{}", u64::MAX, u64::MAX);
        assert_eq!(max.len(), MAX_POSITION_LEN);
        assert_eq!(Position::parse(&max).unwrap().to_string(), max);
    }

    #[test]
    fn malformed_positions_are_refused() {
        for bad in [
            "", "5", "-", "5-", "-5", "a-1", "1-b", "1-2-3", " 1-2", "1-2 ", "+1-2", "1--2",
            "0x1-0",
        ] {
            assert_eq!(Position::parse(bad), Err(PositionError::Format), "{bad:?}");
        }
        assert_eq!(
            Position::parse("18446744073709551616-0"),
            Err(PositionError::Overflow)
        );
        assert_eq!(
            Position::parse("123456789012345678901-0"),
            Err(PositionError::Format)
        );
    }

    #[test]
    fn a_frame_tail_gives_back_the_spliced_position() {
        let frame = r#"{"type":"message","message":"a \"position\":\"9-9\" in text","roomId":1}"#;
        assert_eq!(Position::of_frame(frame), None);
        let p = Position::new(1_795_744_800_123, 4);
        let spliced = with_position(frame, p);
        assert!(
            spliced.ends_with(r#","position":"1795744800123-4"}"#),
            "{spliced}"
        );
        assert_eq!(Position::of_frame(&spliced), Some(p));
        let v: serde_json::Value = serde_json::from_str(&spliced).unwrap();
        assert_eq!(v["position"], "1795744800123-4");
        assert_eq!(Position::of_frame(r#"{"position":"1-x"}"#), None);
        assert_eq!(Position::of_frame("garbage"), None);
    }

    #[test]
    fn serde_uses_the_text_form() {
        let p = Position::new(3, 4);
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"3-4\"");
        assert_eq!(serde_json::from_str::<Position>("\"3-4\"").unwrap(), p);
        assert!(serde_json::from_str::<Position>("\"3\"").is_err());
    }
}

//! Page cursors: the opaque `nextCursor` / `cursor` strings. One encodes
//! where a page ended (the last row's `(serverTimestamp, messageId)`,
//! keyset paging) and the query it belongs to (room or user, which one,
//! which order), so a cursor handed to another query is refused instead
//! of silently paging something else.
//!
//! Layout (31 bytes, then unpadded base64url): version (1), subject kind
//! (1: 1 room, 2 user), order (1: 0 asc, 1 desc), subject id (4, big
//! endian), server timestamp in Unix microseconds (8), message id (16).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chatflow_database::read::pages::{Order, Position, Subject};

const VERSION: u8 = 1;
const LEN: usize = 31;

/// The cursor of the page after `position` of `subject` in `order`.
pub fn encode(subject: Subject, order: Order, position: Position) -> String {
    let (kind, id) = match subject {
        Subject::Room(id) => (1u8, id),
        Subject::User(id) => (2u8, id),
    };
    let mut bytes = Vec::with_capacity(LEN);
    bytes.push(VERSION);
    bytes.push(kind);
    bytes.push(match order {
        Order::Asc => 0,
        Order::Desc => 1,
    });
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes.extend_from_slice(&position.server_timestamp.to_be_bytes());
    bytes.extend_from_slice(position.message_id.as_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Why a cursor was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("cursor is malformed: pass back a nextCursor exactly as it was given")]
    Malformed,
    #[error("cursor belongs to another query (another room, user or order)")]
    OtherQuery,
}

/// The position a cursor encodes, if it was made for `subject` in `order`.
pub fn decode(text: &str, subject: Subject, order: Order) -> Result<Position, CursorError> {
    // A cursor is 42 characters; anything much longer is not one (and is
    // not worth decoding).
    if text.len() > 64 {
        return Err(CursorError::Malformed);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| CursorError::Malformed)?;
    if bytes.len() != LEN || bytes[0] != VERSION {
        return Err(CursorError::Malformed);
    }
    let id = i32::from_be_bytes(bytes[3..7].try_into().expect("4 bytes"));
    let made_for = match bytes[1] {
        1 => Subject::Room(id),
        2 => Subject::User(id),
        _ => return Err(CursorError::Malformed),
    };
    let made_in = match bytes[2] {
        0 => Order::Asc,
        1 => Order::Desc,
        _ => return Err(CursorError::Malformed),
    };
    if made_for != subject || made_in != order {
        return Err(CursorError::OtherQuery);
    }
    Ok(Position {
        server_timestamp: i64::from_be_bytes(bytes[7..15].try_into().expect("8 bytes")),
        message_id: uuid::Uuid::from_slice(&bytes[15..31]).map_err(|_| CursorError::Malformed)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_queries_and_garbage() {
        let position = Position {
            server_timestamp: 1_796_083_200_123_456,
            message_id: uuid::Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0001),
        };
        let cursor = encode(Subject::Room(7), Order::Asc, position);
        assert_eq!(cursor.len(), 42);
        assert_eq!(decode(&cursor, Subject::Room(7), Order::Asc), Ok(position));
        assert_eq!(
            decode(&cursor, Subject::Room(8), Order::Asc),
            Err(CursorError::OtherQuery)
        );
        assert_eq!(
            decode(&cursor, Subject::User(7), Order::Asc),
            Err(CursorError::OtherQuery)
        );
        assert_eq!(
            decode(&cursor, Subject::Room(7), Order::Desc),
            Err(CursorError::OtherQuery)
        );
        for bad in [
            "",
            "abc",
            "!!!!",
            &"A".repeat(42),
            &"A".repeat(10_000),
            &cursor[..41],
        ] {
            assert_eq!(
                decode(bad, Subject::Room(7), Order::Asc),
                Err(CursorError::Malformed),
                "{bad}"
            );
        }
    }
}

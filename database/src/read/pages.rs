//! A room's or a user's messages in a window, keyset-paged on
//! `(server_timestamp, message_id)` in either direction: a page is one
//! index range scan (`messages_room_page` / `messages_user_page`, merged
//! across the day partitions) that stops after `limit + 1` rows, so the
//! thousandth page costs what the first does. The extra row only says
//! whether another page follows.

use std::time::SystemTime;

use postgres::GenericClient;
use serde::Serialize;

use super::serialize_time;
use crate::row::{from_unix_micros, unix_micros};

/// Whose messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    Room(i32),
    User(i32),
}

impl Subject {
    fn column(self) -> &'static str {
        match self {
            Subject::Room(_) => "room_id",
            Subject::User(_) => "user_id",
        }
    }

    fn id(self) -> i32 {
        match self {
            Subject::Room(id) | Subject::User(id) => id,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Oldest first.
    Asc,
    /// Newest first.
    Desc,
}

impl Order {
    pub fn as_str(self) -> &'static str {
        match self {
            Order::Asc => "asc",
            Order::Desc => "desc",
        }
    }
}

/// Where a page ended: the last row's sort key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// `server_timestamp`, microseconds since the Unix epoch.
    pub server_timestamp: i64,
    pub message_id: uuid::Uuid,
}

/// What to read.
#[derive(Clone, Debug)]
pub struct PageRequest {
    pub subject: Subject,
    /// `None`: no bound on that side.
    pub start: Option<SystemTime>,
    pub end: Option<SystemTime>,
    pub order: Order,
    pub limit: u32,
    /// Continue after this row (exclusive), in `order`.
    pub after: Option<Position>,
}

/// One stored message, as the API shows it (the broadcast frame's fields
/// plus the server that accepted it).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredMessage {
    pub message_id: uuid::Uuid,
    pub room_id: i32,
    pub user_id: i32,
    pub username: String,
    pub message: String,
    pub message_type: String,
    /// The sender's clock.
    #[serde(rename = "timestamp", serialize_with = "serialize_time")]
    pub client_timestamp: SystemTime,
    #[serde(serialize_with = "serialize_time")]
    pub server_timestamp: SystemTime,
    pub server_id: String,
}

impl StoredMessage {
    pub fn position(&self) -> Position {
        Position {
            server_timestamp: unix_micros(self.server_timestamp),
            message_id: self.message_id,
        }
    }
}

/// A page and, if more rows follow it, where the next one starts.
#[derive(Clone, Debug)]
pub struct Page {
    pub messages: Vec<StoredMessage>,
    pub next: Option<Position>,
}

/// Unbounded sides of a window, as bounds PostgreSQL compares cheaply:
/// years 1 and 10000 (no stored message is outside them).
const EARLIEST_US: i64 = -62_135_596_800 * 1_000_000;
const LATEST_US: i64 = 253_402_300_800 * 1_000_000;

/// Reads one page.
pub fn page(
    client: &mut impl GenericClient,
    request: &PageRequest,
) -> Result<Page, postgres::Error> {
    let (cmp, dir) = match request.order {
        Order::Asc => (">", "ASC"),
        Order::Desc => ("<", "DESC"),
    };
    let keyset = if request.after.is_some() {
        format!("AND (server_timestamp, message_id) {cmp} ($4, $5) ")
    } else {
        String::new()
    };
    let limit_param = if request.after.is_some() { "$6" } else { "$4" };
    // Only fixed alternatives are formatted in: a column, an operator and a
    // direction. Every value is a parameter.
    let sql = format!(
        "SELECT message_id, room_id, user_id, username, message, message_type, client_timestamp, server_timestamp, server_id \
         FROM messages WHERE {column} = $1 AND server_timestamp >= $2 AND server_timestamp < $3 {keyset}\
         ORDER BY server_timestamp {dir}, message_id {dir} LIMIT {limit_param}",
        column = request.subject.column(),
    );
    let id = request.subject.id();
    let start = request.start.unwrap_or(from_unix_micros(EARLIEST_US));
    let end = request.end.unwrap_or(from_unix_micros(LATEST_US));
    let fetch = i64::from(request.limit) + 1;
    let rows = match request.after {
        Some(after) => {
            let at = from_unix_micros(after.server_timestamp);
            client.query(&sql, &[&id, &start, &end, &at, &after.message_id, &fetch])?
        }
        None => client.query(&sql, &[&id, &start, &end, &fetch])?,
    };
    let mut messages: Vec<StoredMessage> = rows
        .iter()
        .map(|r| StoredMessage {
            message_id: r.get(0),
            room_id: r.get(1),
            user_id: r.get(2),
            username: r.get(3),
            message: r.get(4),
            message_type: r.get(5),
            client_timestamp: r.get(6),
            server_timestamp: r.get(7),
            server_id: r.get(8),
        })
        .collect();
    let more = messages.len() > request.limit as usize;
    messages.truncate(request.limit as usize);
    let next = if more {
        messages.last().map(StoredMessage::position)
    } else {
        None
    };
    Ok(Page { messages, next })
}

//! The read queries the API serves, each over any `GenericClient` (a pooled
//! connection, or a read-only REPEATABLE READ transaction when a document
//! needs several queries to agree). Every value reaches SQL as a bind
//! parameter; the only text ever formatted into a statement is chosen from
//! fixed alternatives (a column name, a sort direction).
//!
//! - [`pages`]: a room's or a user's messages, keyset-paged;
//! - [`user_rooms`]: the rooms a user posted in (rollup `user_rooms`);
//! - [`active_users`]: distinct users in a window (bitmap rollups + raw edges);
//! - [`analytics`]: totals, type mix, top rooms and series (count
//!   rollups + raw edges), top users and participation (raw, index only);
//! - [`replica`]: how far a streaming replica is behind.
//!
//! Result types serialise as the API's JSON (camelCase, RFC 3339 times
//! with milliseconds).

pub mod active_users;
pub mod analytics;
pub mod pages;
pub mod replica;
pub mod user_rooms;

use std::time::SystemTime;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serializer;

/// `2026-12-01T21:10:24.123Z`: the wire protocol's form of an instant.
pub fn rfc3339(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// serde's `serialize_with` for a `SystemTime` field.
pub fn serialize_time<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

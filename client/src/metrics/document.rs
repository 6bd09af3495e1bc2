//! The `/api/metrics` document of `server/API.md` as serde types, read
//! tolerantly: unknown fields are ignored, every field may be missing, and
//! each part is a [`Part`], so a part that says `"error"` (Redis down,
//! `--broker memory`) or has an unexpected shape is shown as such while
//! the rest of the document still is.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// One part of the document, as it came.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Part<T> {
    /// Absent or `null`.
    #[default]
    Missing,
    /// `{"error": "...", ...}`: the API could not have it, and says why
    /// (with the part's `source`, e.g. `redis`, when it names one).
    Failed {
        error: String,
        source: Option<String>,
    },
    /// Not the contract's shape; the text says where (a newer or older
    /// server, or a bug).
    Malformed(String),
    Ok(T),
}

impl<T> Part<T> {
    /// The data, if the part has it.
    pub fn ok(&self) -> Option<&T> {
        match self {
            Part::Ok(v) => Some(v),
            _ => None,
        }
    }

    /// Why the part has no data (`None` when it has).
    pub fn why_not(&self) -> Option<String> {
        match self {
            Part::Ok(_) => None,
            Part::Missing => Some("not in the document".into()),
            Part::Failed {
                error,
                source: Some(source),
            } => Some(format!("error ({source}): {error}")),
            Part::Failed {
                error,
                source: None,
            } => Some(format!("error: {error}")),
            Part::Malformed(detail) => Some(format!("unexpected shape: {detail}")),
        }
    }
}

impl<T: DeserializeOwned> Part<T> {
    fn from_value(value: Value) -> Self {
        match value {
            Value::Null => Part::Missing,
            Value::Object(ref map) if map.get("error").is_some_and(|e| !e.is_null()) => {
                Part::Failed {
                    error: as_text(&map["error"]),
                    source: map.get("source").filter(|s| !s.is_null()).map(as_text),
                }
            }
            other => match serde_json::from_value(other) {
                Ok(v) => Part::Ok(v),
                Err(e) => Part::Malformed(e.to_string()),
            },
        }
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Part<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(Part::from_value)
    }
}

/// A JSON value as text: a string without its quotes, anything else as JSON.
fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The whole `/api/metrics` document.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Document {
    pub generated_at: Option<String>,
    pub window: Part<Window>,
    pub core_queries: Part<CoreQueries>,
    pub analytics: Part<Analytics>,
    pub live: Part<Live>,
    pub timings_ms: Part<BTreeMap<String, f64>>,
    pub total_ms: Option<f64>,
}

impl Document {
    /// Reads a parsed body; `Err` only when it is not a JSON object (every
    /// part inside is tolerated).
    pub fn from_value(value: Value) -> Result<Document, String> {
        if !value.is_object() {
            return Err(format!("expected a JSON object, got {}", kind(&value)));
        }
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    /// `analytics.totalMessages`: the messages stored in the window.
    pub fn stored_messages(&self) -> Option<u64> {
        self.analytics.ok().and_then(|a| a.total_messages)
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A half-open window `[start, end)`; `end: null` means no bound.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Window {
    pub start: Option<String>,
    pub end: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CoreQueries {
    pub room_messages: Part<MessageList>,
    pub user_messages: Part<MessageList>,
    pub active_users: Part<u64>,
    pub user_rooms: Part<UserRooms>,
}

/// A room's messages or a user's history (newest first in this document).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MessageList {
    pub room_id: Option<u64>,
    pub user_id: Option<u64>,
    /// `"requested"`, or how the API picked the room or user.
    pub chosen_by: Option<String>,
    pub count: Option<u64>,
    pub messages: Vec<Message>,
}

/// A stored message: the broadcast frame's fields plus the accepting server.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Message {
    pub message_id: Option<String>,
    pub room_id: Option<u64>,
    pub user_id: Option<u64>,
    pub username: Option<String>,
    pub message: Option<String>,
    pub message_type: Option<String>,
    /// The sender's clock.
    pub timestamp: Option<String>,
    /// The accepting server's clock (what windows and order use).
    pub server_timestamp: Option<String>,
    pub server_id: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct UserRooms {
    pub user_id: Option<u64>,
    pub rooms: Vec<UserRoom>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct UserRoom {
    pub room_id: Option<u64>,
    pub messages: Option<u64>,
    pub last_activity: Option<String>,
}

/// The `/api/analytics` document (without its timings).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Analytics {
    pub window: Part<Window>,
    pub total_messages: Option<u64>,
    pub message_types: BTreeMap<String, u64>,
    pub active_users: Option<u64>,
    pub messages_per_second: Option<f64>,
    pub series: Part<SeriesSet>,
    /// `null` when the server leaves the per-user part out (a window past
    /// its `--api-max-user-window-hours`; `per_user_omitted` says so).
    pub top_users: Option<Vec<TopUser>>,
    pub top_rooms: Vec<TopRoom>,
    pub participation: Part<Participation>,
    pub per_user_omitted: Option<String>,
}

/// Per-second, per-minute and per-hour counts; a series absent for the
/// window's length is `null`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SeriesSet {
    pub per_second: Option<Series>,
    pub per_minute: Option<Series>,
    pub per_hour: Option<Series>,
}

/// Counts in buckets of `step_seconds` from `start` (aligned to UTC
/// boundaries of the step; the first and last may be clipped to the window).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Series {
    pub start: Option<String>,
    pub step_seconds: Option<u64>,
    pub counts: Vec<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TopUser {
    pub user_id: Option<u64>,
    pub messages: Option<u64>,
    /// Rooms the user posted in within the window.
    pub rooms: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TopRoom {
    pub room_id: Option<u64>,
    pub messages: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Participation {
    /// Power-of-two buckets `[min, max]`, only non-empty ones.
    pub messages_per_user: Vec<MessagesBucket>,
    /// Exact room counts, only non-empty ones.
    pub rooms_per_user: Vec<RoomsBucket>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MessagesBucket {
    pub min: Option<u64>,
    pub max: Option<u64>,
    pub users: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RoomsBucket {
    pub rooms: Option<u64>,
    pub users: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Live {
    pub servers: Part<Servers>,
    pub consumers: Part<Consumers>,
    pub queues: Part<Queues>,
    pub database: Part<Database>,
}

/// Snapshots are published by other processes, possibly of another
/// version during a rolling deploy, so each is a [`Part`] of its own: one
/// odd snapshot does not hide the fleet.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Servers {
    /// `redis` (the fleet) or `local` (this server alone).
    pub source: Option<String>,
    pub servers: Vec<Part<ServerSnapshot>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ServerSnapshot {
    pub server_id: Option<String>,
    pub status: Option<String>,
    pub published_at: Option<String>,
    pub age_seconds: Option<f64>,
    pub uptime_seconds: Option<f64>,
    pub workers: Option<u64>,
    pub connections: Option<u64>,
    pub accepted_per_second: Option<f64>,
    pub broadcast_frames_per_second: Option<f64>,
    pub unavailable_per_second: Option<f64>,
    pub rejected_per_second: Option<f64>,
    pub totals: Part<ServerTotals>,
}

/// The few `/health` totals the tables show (the rest are ignored).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ServerTotals {
    pub messages_accepted: Option<u64>,
    pub broadcast_frames_sent: Option<u64>,
    pub slow_reader_disconnects: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Consumers {
    pub source: Option<String>,
    pub consumers: Vec<Part<ConsumerSnapshot>>,
}

/// Rates over the last 5 s, latency quantiles over the last 10 s.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ConsumerSnapshot {
    pub consumer_id: Option<String>,
    pub status: Option<String>,
    pub reason: Option<String>,
    pub published_at: Option<String>,
    pub age_seconds: Option<f64>,
    pub uptime_seconds: Option<f64>,
    pub queues: Option<u64>,
    pub consumed_per_second: Option<f64>,
    pub broadcasts_per_second: Option<f64>,
    pub rows_per_second: Option<f64>,
    pub database: Part<ConsumerDatabase>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ConsumerDatabase {
    pub writers: Option<u64>,
    pub writers_connected: Option<u64>,
    pub rows: Option<u64>,
    pub batches: Option<u64>,
    pub retries: Option<u64>,
    pub duplicate_batches: Option<u64>,
    pub rows_dead_lettered: Option<u64>,
    pub copy_commit_ms: Option<Quantiles>,
    pub batch_rows: Option<Quantiles>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Quantiles {
    pub count: Option<u64>,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

/// Queue depths, sampled every 2 s (`age_seconds` old).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Queues {
    pub source: Option<String>,
    pub age_seconds: Option<f64>,
    pub total_messages: Option<u64>,
    pub rooms: Vec<QueueRoom>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct QueueRoom {
    pub room_id: Option<u64>,
    pub messages: Option<u64>,
    pub consumers: Option<u64>,
    pub shards: Vec<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Database {
    pub pool: Part<Pool>,
    /// `user@host:port/db` (never a password).
    pub address: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Pool {
    pub max_size: Option<u64>,
    pub connections: Option<u64>,
    pub idle: Option<u64>,
    pub in_use: Option<u64>,
    pub checkouts: Option<u64>,
    pub timeouts: Option<u64>,
    pub wait_ms_p99: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(v: Value) -> Document {
        Document::from_value(v).unwrap()
    }

    #[test]
    fn an_empty_object_is_a_document_with_every_part_missing() {
        let d = doc(json!({}));
        assert_eq!(d.window, Part::Missing);
        assert!(d.analytics.ok().is_none() && d.stored_messages().is_none());
        assert!(Document::from_value(json!([1, 2])).is_err());
        assert!(Document::from_value(json!("x")).is_err());
    }

    #[test]
    fn unknown_fields_are_ignored_and_known_ones_read() {
        let d = doc(json!({
            "futureField": {"x": 1},
            "window": {"start": "2026-12-01T20:00:00.000Z", "end": null, "zone": "UTC"},
            "analytics": {"totalMessages": 183000, "messageTypes": {"TEXT": 2}, "newThing": []},
        }));
        let w = d.window.ok().unwrap();
        assert_eq!(w.start.as_deref(), Some("2026-12-01T20:00:00.000Z"));
        assert_eq!(w.end, None);
        assert_eq!(d.stored_messages(), Some(183_000));
    }

    #[test]
    fn error_parts_keep_their_error_and_source() {
        let d = doc(json!({
            "live": {
                "servers": {"source": "redis", "error": "redis at 127.0.0.1:6379: connection refused", "servers": []},
                "queues": {"error": "not available with --broker memory"},
                "consumers": {"error": {"code": 7}},
            },
            "analytics": {"error": "statement timeout"},
        }));
        let live = d.live.ok().unwrap();
        assert!(matches!(
            &live.servers,
            Part::Failed { error, source: Some(source) }
                if error == "redis at 127.0.0.1:6379: connection refused" && source == "redis"
        ));
        assert_eq!(
            live.queues.why_not().unwrap(),
            "error: not available with --broker memory"
        );
        // A non-string error is shown as its JSON.
        assert_eq!(live.consumers.why_not().unwrap(), r#"error: {"code":7}"#);
        assert_eq!(d.analytics.why_not().unwrap(), "error: statement timeout");
        assert!(matches!(live.database, Part::Missing));
    }

    #[test]
    fn a_malformed_part_does_not_spoil_the_rest() {
        let d = doc(json!({
            "coreQueries": {"activeUsers": "many", "userRooms": {"userId": 3, "rooms": []}},
            "analytics": {"totalMessages": 5},
            "live": {"servers": {"source": "redis", "servers": [
                {"serverId": "a", "connections": 3},
                {"serverId": "b", "connections": "lots"}
            ]}},
        }));
        let core = d.core_queries.ok().unwrap();
        assert!(matches!(core.active_users, Part::Malformed(_)));
        assert_eq!(core.user_rooms.ok().unwrap().user_id, Some(3));
        assert_eq!(d.stored_messages(), Some(5));
        let servers = &d.live.ok().unwrap().servers.ok().unwrap().servers;
        assert_eq!(servers[0].ok().unwrap().connections, Some(3));
        assert!(matches!(servers[1], Part::Malformed(_)));
    }

    #[test]
    fn a_null_error_is_no_error() {
        // A consumer's `"reason": null` style: an explicit null error field
        // does not make the part failed.
        let p: Part<Window> = Part::from_value(json!({"error": null, "start": "s"}));
        assert_eq!(p.ok().unwrap().start.as_deref(), Some("s"));
    }
}

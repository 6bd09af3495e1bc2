//! `GET /api/rooms/{roomId}/presence` (a room's member list, paged by
//! `userId`) and `GET /api/presence` (members per room): presence as the
//! WebSocket clients see it ([`crate::presence`]), answered without the
//! database — the list from the presence thread (bounded wait), the
//! counts from the atomics it keeps.

use serde::Serialize;

use super::params::Params;
use super::reply::{ApiError, Timings};
use super::ApiContext;
use crate::presence::{CountsSnapshot, PresenceHandle};
use chatflow_protocol::message::USER_ID_MAX;
use chatflow_protocol::presence::Member;

/// Members per page: 1,000 unless asked, at most 10,000 (~1 MB).
const DEFAULT_LIMIT: i64 = 1_000;
const MAX_LIMIT: i64 = 10_000;

/// Parameters of the room endpoint.
pub const ROOM_PARAMS: &[&str] = &["limit", "after"];

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RoomPresenceDoc {
    room_id: u32,
    /// Members across the fleet (all pages).
    count: u64,
    /// `local` or `shared`.
    mode: &'static str,
    /// Servers whose members are counted (this one included).
    servers: u64,
    members: Vec<Member<'static>>,
    /// The next page: `?after=` this.
    next_after: Option<u32>,
}

fn handle(context: &ApiContext) -> Result<&PresenceHandle, ApiError> {
    context
        .presence
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("presence is off on this server (--presence off)"))
}

/// `GET /api/rooms/{roomId}/presence?limit=&after=`.
pub fn room(
    context: &ApiContext,
    room: i32,
    params: &Params,
    timings: &mut Timings,
) -> Result<Vec<u8>, ApiError> {
    let presence = handle(context)?;
    let limit = params
        .number("limit", 1..=MAX_LIMIT)?
        .unwrap_or(DEFAULT_LIMIT) as usize;
    let after = params
        .number("after", 0..=i64::from(USER_ID_MAX))?
        .map(|a| a as u32);
    let page = timings
        .time("presence", || presence.page(room as u32, after, limit))
        .map_err(ApiError::unavailable)?;
    let counts = presence.counts();
    json(&RoomPresenceDoc {
        room_id: page.room_id,
        count: page.count,
        mode: counts.mode,
        servers: counts.servers,
        members: page.members,
        next_after: page.next_after,
    })
}

/// `GET /api/presence`: members per room.
pub fn counts(context: &ApiContext) -> Result<Vec<u8>, ApiError> {
    json(&handle(context)?.counts())
}

/// The dashboard's (`/api/live`'s) part: the counts, or why there are none.
pub fn live(context: &ApiContext) -> serde_json::Value {
    match context.presence.as_ref().map(PresenceHandle::counts) {
        Some(counts) => to_value(counts),
        None => serde_json::json!({"error": "presence is off on this server (--presence off)"}),
    }
}

fn to_value(counts: CountsSnapshot) -> serde_json::Value {
    serde_json::to_value(counts).unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}))
}

fn json<T: Serialize>(document: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(document)
        .map_err(|e| ApiError::internal(format!("cannot serialise the answer: {e}")))
}

//! The rooms a user posted in, all time, with message count and last
//! activity: one index range of the `user_rooms` rollup (≤ ROOMS rows),
//! whatever the user's history.

use std::time::SystemTime;

use postgres::GenericClient;
use serde::Serialize;

use super::serialize_time;

/// One room of a user's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserRoom {
    pub room_id: i32,
    pub messages: i64,
    #[serde(serialize_with = "serialize_time")]
    pub last_activity: SystemTime,
}

/// Busiest room first (then by room id).
pub fn user_rooms(
    client: &mut impl GenericClient,
    user_id: i32,
) -> Result<Vec<UserRoom>, postgres::Error> {
    let rows = client.query(
        "SELECT room_id, messages, last_activity FROM user_rooms WHERE user_id = $1 ORDER BY messages DESC, room_id",
        &[&user_id],
    )?;
    Ok(rows
        .iter()
        .map(|r| UserRoom {
            room_id: r.get(0),
            messages: r.get(1),
            last_activity: r.get(2),
        })
        .collect())
}

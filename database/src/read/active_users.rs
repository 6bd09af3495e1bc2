//! Distinct users who posted in a window: the OR of the window's whole
//! hour and minute bitmaps (`rollup_active_users`), plus the users of the
//! raw partial minutes at its edges, counted in memory. Exact, and the
//! work is bounded by the window's length in buckets (an hour window: one
//! bitmap; a week: ≤ 168 + 118), not by its traffic.

use bit_vec::BitVec;
use postgres::GenericClient;

use crate::rollup::{empty_users, HOUR, MINUTE};
use crate::window::{params, Window};

const QUERY: &str = "\
SELECT
    (SELECT bit_or(users) FROM rollup_active_users
      WHERE (resolution_s = 3600 AND bucket >= $1 AND bucket < $2)
         OR (resolution_s = 60 AND ((bucket >= $3 AND bucket < $4) OR (bucket >= $5 AND bucket < $6)))),
    ARRAY(SELECT DISTINCT user_id FROM (
        SELECT user_id FROM messages WHERE server_timestamp >= $7 AND server_timestamp < $8
        UNION ALL
        SELECT user_id FROM messages WHERE server_timestamp >= $9 AND server_timestamp < $10) edges)";

/// The users who posted in `window`, as a bitmap (bit `u` is user `u`).
pub fn active_user_set(
    client: &mut impl GenericClient,
    window: Window,
) -> Result<BitVec, postgres::Error> {
    let bounds = window.split(&[MINUTE, HOUR]).hour_minute_raw_bounds();
    let row = client.query_one(QUERY, &params(&bounds))?;
    let mut users: BitVec = row.get::<_, Option<BitVec>>(0).unwrap_or_else(empty_users);
    if users.len() != empty_users().len() {
        // Unreachable with the schema's CHECK; never index past the end.
        users = empty_users();
    }
    for user in row.get::<_, Vec<i32>>(1) {
        if let Ok(index) = usize::try_from(user) {
            if index < users.len() {
                users.set(index, true);
            }
        }
    }
    Ok(users)
}

/// How many distinct users posted in `window`.
pub fn active_users(
    client: &mut impl GenericClient,
    window: Window,
) -> Result<u64, postgres::Error> {
    let users = active_user_set(client, window)?;
    Ok(users.blocks().map(|b| u64::from(b.count_ones())).sum())
}

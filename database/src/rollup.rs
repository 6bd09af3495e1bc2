//! The rollups a batch of new rows adds (schema.sql documents the tables):
//! computed in memory from the rows ([`RollupDelta::of`]) and upserted in
//! one statement ([`RollupDelta::apply`]) inside the transaction that
//! stores the rows, so rollups are exactly as fresh as `messages` and never
//! count a row that was not inserted.
//!
//! Every key set is sorted before it is sent: concurrent writers then lock
//! rollup rows in one global order (table by table, key by key) and cannot
//! deadlock. Keys are unique within a delta (ON CONFLICT DO UPDATE refuses
//! to touch a row twice in one statement).

use std::collections::BTreeMap;
use std::time::SystemTime;

use bit_vec::BitVec;
use chatflow_protocol::message::USER_ID_MAX;
use postgres::GenericClient;

use crate::row::{from_unix_micros, unix_micros, Row};

/// Seconds in a minute bucket and an hour bucket: the two resolutions of
/// `rollup_room_counts` and `rollup_active_users`.
pub const MINUTE: i64 = 60;
pub const HOUR: i64 = 3600;
/// Bits in a user bitmap: bit `u` is user `u` (ids start at 1, bit 0 is
/// unused), as `rollup_active_users.users` stores them.
pub const USER_BITS: usize = USER_ID_MAX as usize + 1;

const MICROS: i64 = 1_000_000;

/// The start (Unix seconds) of the `width`-second bucket holding `t`.
pub fn bucket_of(t: SystemTime, width: i64) -> i64 {
    unix_micros(t).div_euclid(width * MICROS) * width
}

/// A bitmap of no users.
pub fn empty_users() -> BitVec {
    BitVec::from_elem(USER_BITS, false)
}

/// Per (resolution, bucket, room): messages by type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TypeCounts {
    pub text: i64,
    pub join: i64,
    pub leave: i64,
}

impl TypeCounts {
    pub fn add(&mut self, message_type: &str) {
        match message_type {
            "JOIN" => self.join += 1,
            "LEAVE" => self.leave += 1,
            _ => self.text += 1,
        }
    }

    pub fn total(&self) -> i64 {
        self.text + self.join + self.leave
    }
}

/// What one batch of newly inserted rows adds to every rollup.
#[derive(Debug, Default)]
pub struct RollupDelta {
    /// (resolution, bucket start in Unix seconds, room) → counts.
    pub room_counts: BTreeMap<(i32, i64, i32), TypeCounts>,
    /// Second (Unix) → messages.
    pub seconds: BTreeMap<i64, i64>,
    /// (resolution, bucket) → the users who posted in it.
    pub users: BTreeMap<(i32, i64), BitVec>,
    /// (user, room) → (messages, last activity).
    pub user_rooms: BTreeMap<(i32, i32), (i64, SystemTime)>,
}

/// The one statement that applies a delta: four upserts, each fed by
/// `unnest` of sorted arrays.
const APPLY: &str = "\
WITH room_counts AS (
    INSERT INTO rollup_room_counts AS r (resolution_s, bucket, room_id, text_messages, join_messages, leave_messages)
    SELECT * FROM unnest($1::int4[], $2::timestamptz[], $3::int4[], $4::int8[], $5::int8[], $6::int8[])
    ON CONFLICT (resolution_s, bucket, room_id) DO UPDATE SET
        text_messages = r.text_messages + excluded.text_messages,
        join_messages = r.join_messages + excluded.join_messages,
        leave_messages = r.leave_messages + excluded.leave_messages
), seconds AS (
    INSERT INTO rollup_second_counts AS r (second, messages)
    SELECT * FROM unnest($7::timestamptz[], $8::int8[])
    ON CONFLICT (second) DO UPDATE SET messages = r.messages + excluded.messages
), users AS (
    INSERT INTO rollup_active_users AS r (resolution_s, bucket, users)
    SELECT * FROM unnest($9::int4[], $10::timestamptz[], $11::varbit[])
    ON CONFLICT (resolution_s, bucket) DO UPDATE SET users = r.users | excluded.users
)
INSERT INTO user_rooms AS r (user_id, room_id, messages, last_activity)
SELECT * FROM unnest($12::int4[], $13::int4[], $14::int8[], $15::timestamptz[])
ON CONFLICT (user_id, room_id) DO UPDATE SET
    messages = r.messages + excluded.messages,
    last_activity = greatest(r.last_activity, excluded.last_activity)";

impl RollupDelta {
    /// The delta of `rows` (every one newly inserted).
    pub fn of<'a>(rows: impl IntoIterator<Item = &'a Row>) -> RollupDelta {
        let mut delta = RollupDelta::default();
        for row in rows {
            delta.add(row);
        }
        delta
    }

    pub fn add(&mut self, row: &Row) {
        let t = row.server_timestamp;
        for width in [MINUTE, HOUR] {
            let bucket = bucket_of(t, width);
            self.room_counts
                .entry((width as i32, bucket, row.room_id))
                .or_default()
                .add(row.message_type);
            let users = self
                .users
                .entry((width as i32, bucket))
                .or_insert_with(empty_users);
            // The schema's CHECK keeps user ids in 1..=100000; a row
            // outside it is refused by the COPY before this is applied.
            if let Ok(user) = usize::try_from(row.user_id) {
                if user < USER_BITS {
                    users.set(user, true);
                }
            }
        }
        *self.seconds.entry(bucket_of(t, 1)).or_default() += 1;
        let entry = self
            .user_rooms
            .entry((row.user_id, row.room_id))
            .or_insert((0, t));
        entry.0 += 1;
        entry.1 = entry.1.max(t);
    }

    pub fn is_empty(&self) -> bool {
        self.seconds.is_empty()
    }

    /// Upserts the delta (one round trip). Call inside the transaction
    /// that inserted the rows.
    pub fn apply(&self, client: &mut impl GenericClient) -> Result<(), postgres::Error> {
        if self.is_empty() {
            return Ok(());
        }
        let seconds_to_time = |s: i64| from_unix_micros(s * MICROS);
        let n = self.room_counts.len();
        let (mut res, mut bucket, mut room) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut text, mut join, mut leave) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (&(r, b, room_id), counts) in &self.room_counts {
            res.push(r);
            bucket.push(seconds_to_time(b));
            room.push(room_id);
            text.push(counts.text);
            join.push(counts.join);
            leave.push(counts.leave);
        }
        let second: Vec<SystemTime> = self.seconds.keys().map(|&s| seconds_to_time(s)).collect();
        let second_messages: Vec<i64> = self.seconds.values().copied().collect();
        let users_res: Vec<i32> = self.users.keys().map(|k| k.0).collect();
        let users_bucket: Vec<SystemTime> =
            self.users.keys().map(|k| seconds_to_time(k.1)).collect();
        let users_bits: Vec<&BitVec> = self.users.values().collect();
        let ur_user: Vec<i32> = self.user_rooms.keys().map(|k| k.0).collect();
        let ur_room: Vec<i32> = self.user_rooms.keys().map(|k| k.1).collect();
        let ur_messages: Vec<i64> = self.user_rooms.values().map(|v| v.0).collect();
        let ur_last: Vec<SystemTime> = self.user_rooms.values().map(|v| v.1).collect();
        client.execute(
            APPLY,
            &[
                &res,
                &bucket,
                &room,
                &text,
                &join,
                &leave,
                &second,
                &second_messages,
                &users_res,
                &users_bucket,
                &users_bits,
                &ur_user,
                &ur_room,
                &ur_messages,
                &ur_last,
            ],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::unix_ms;

    fn row(user: i32, room: i32, ms: i64, kind: &'static str) -> Row {
        Row {
            message_id: uuid::Uuid::from_u128(ms as u128 + user as u128),
            room_id: room,
            user_id: user,
            username: format!("user{user}"),
            message: "hi".into(),
            message_type: kind,
            client_timestamp: unix_ms(ms),
            server_timestamp: unix_ms(ms),
            server_id: "t".into(),
        }
    }

    #[test]
    fn buckets_floor_to_utc_multiples_on_both_sides_of_the_epoch() {
        assert_eq!(bucket_of(unix_ms(3_599_999), HOUR), 0);
        assert_eq!(bucket_of(unix_ms(3_600_000), HOUR), 3600);
        assert_eq!(bucket_of(unix_ms(-1), MINUTE), -60);
        assert_eq!(bucket_of(unix_ms(61_500), 1), 61);
    }

    #[test]
    fn a_delta_counts_every_row_once_per_resolution() {
        let rows = [
            row(1, 2, 59_999, "TEXT"),
            row(1, 2, 60_000, "JOIN"),
            row(7, 3, 60_001, "LEAVE"),
            row(1, 3, 3_600_000, "TEXT"),
        ];
        let d = RollupDelta::of(&rows);
        assert_eq!(d.room_counts[&(60, 0, 2)].text, 1);
        assert_eq!(d.room_counts[&(60, 60, 2)].join, 1);
        assert_eq!(d.room_counts[&(60, 60, 3)].leave, 1);
        assert_eq!(d.room_counts[&(3600, 0, 2)].total(), 2);
        assert_eq!(d.room_counts[&(3600, 3600, 3)].text, 1);
        let total: i64 = d.seconds.values().sum();
        assert_eq!(total, 4);
        let minute_one = &d.users[&(60, 60)];
        assert!(minute_one[1] && minute_one[7] && !minute_one[2]);
        assert_eq!(d.users[&(3600, 0)].iter().filter(|b| *b).count(), 2);
        assert_eq!(d.user_rooms[&(1, 2)], (2, unix_ms(60_000)));
        assert_eq!(d.user_rooms[&(1, 3)], (1, unix_ms(3_600_000)));
    }
}

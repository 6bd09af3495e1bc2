//! Rooms and shards: which queue a message goes to.
//!
//! Each room has [`SHARDS_PER_ROOM`] queues; a message goes to shard
//! `userId mod 5`, so all of one sender's messages in one room go through one
//! queue (one consumer thread) and stay in order.

use std::fmt;

/// Queues (and consumer threads) per room.
pub const SHARDS_PER_ROOM: u32 = 5;

/// The number of rooms; rooms are numbered `1..=count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rooms {
    count: u32,
}

impl Rooms {
    /// The seed system's room count.
    pub const DEFAULT: Rooms = Rooms { count: 20 };
    /// Upper bound on the configurable count: each room costs five queues and
    /// five consumer threads.
    pub const MAX: u32 = 10_000;

    pub fn new(count: u32) -> Result<Rooms, String> {
        if (1..=Self::MAX).contains(&count) {
            Ok(Rooms { count })
        } else {
            Err(format!(
                "room count must be in 1..={}, got {count}",
                Self::MAX
            ))
        }
    }

    pub fn count(self) -> u32 {
        self.count
    }

    pub fn contains(self, room: u32) -> bool {
        (1..=self.count).contains(&room)
    }

    /// Every room id, in order.
    pub fn iter(self) -> impl Iterator<Item = u32> {
        1..=self.count
    }
}

impl Default for Rooms {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for Rooms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "1..={}", self.count)
    }
}

/// The shard (0..5) of a sender.
pub fn shard_of(user_id: u32) -> u32 {
    user_id % SHARDS_PER_ROOM
}

/// The AMQP routing key of a (room, shard) queue: `room.{room}.{shard}`.
pub fn routing_key(room: u32, shard: u32) -> String {
    format!("room.{room}.{shard}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_is_user_id_mod_5() {
        assert_eq!(shard_of(1), 1);
        assert_eq!(shard_of(5), 0);
        assert_eq!(shard_of(100_000), 0);
        assert_eq!(shard_of(99_999), 4);
    }

    #[test]
    fn routing_keys_name_room_and_shard() {
        assert_eq!(routing_key(7, 3), "room.7.3");
    }

    #[test]
    fn room_range_is_validated() {
        assert!(Rooms::new(0).is_err());
        assert!(Rooms::new(Rooms::MAX + 1).is_err());
        let rooms = Rooms::new(20).unwrap();
        assert!(!rooms.contains(0));
        assert!(rooms.contains(1));
        assert!(rooms.contains(20));
        assert!(!rooms.contains(21));
        assert_eq!(rooms.iter().count(), 20);
    }
}

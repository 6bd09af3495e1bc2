//! The names of everything messages travel through (exchange, queues,
//! dead-letter queue, Redis channels, each room's history stream), the
//! queue arguments, the Redis keys of the fleet's live statistics (each server's and consumer's
//! snapshot, and the two sorted sets indexing them), and those of
//! presence (each server's members per room, its versions, and the index
//! of servers; `chatflow-server`'s `presence` module reads and writes
//! them). Declaring the queues
//! on RabbitMQ is `chatflow-broker`'s job (`Declare`), and so is reading
//! and writing the snapshots (`chatflow_broker::fleet`).
//!
//! Every name starts with a namespace (default `chatflow`), so tests and
//! parallel deployments on one broker never collide.

use crate::routing::{Rooms, SHARDS_PER_ROOM};

/// Redeliveries after which a quorum queue dead-letters a message (a
/// consumer crashing on it again and again must not wedge its queue).
pub const DEFAULT_DELIVERY_LIMIT: u32 = 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    pub namespace: String,
    pub rooms: Rooms,
    /// Per-queue bound; past it the broker refuses (nacks) new publishes,
    /// which clients see as `UNAVAILABLE` — back-pressure instead of an
    /// unbounded backlog. `None`: unbounded.
    pub queue_max_length: Option<u32>,
    pub delivery_limit: u32,
    /// `x-single-active-consumer`: RabbitMQ delivers a queue's messages to
    /// one consumer at a time and hands the queue to a waiting one when it
    /// goes, so several consumer processes keep per-sender order (each
    /// queue is one sender shard, read by one consumer in order).
    pub single_active_consumer: bool,
    /// `x-quorum-initial-group-size`: how many cluster nodes hold a replica
    /// of each new queue (`None`: RabbitMQ's default, every node). With 3,
    /// a publisher confirm means "on 2 of 3 nodes' disks".
    pub quorum_initial_group_size: Option<u32>,
}

impl Topology {
    pub fn new(namespace: impl Into<String>, rooms: Rooms) -> Self {
        Topology {
            namespace: namespace.into(),
            rooms,
            queue_max_length: None,
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
            single_active_consumer: true,
            quorum_initial_group_size: None,
        }
    }

    /// The durable direct exchange servers publish to.
    pub fn exchange(&self) -> String {
        format!("{}.messages", self.namespace)
    }

    /// The quorum queue of (room, shard).
    pub fn queue(&self, room: u32, shard: u32) -> String {
        format!("{}.room.{room}.{shard}", self.namespace)
    }

    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dead-letter", self.namespace)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead-letter", self.namespace)
    }

    /// The Redis pub/sub channel of a room.
    pub fn redis_channel(&self, room: u32) -> String {
        format!("{}:room:{room}", self.namespace)
    }

    /// The pattern servers PSUBSCRIBE to.
    pub fn redis_pattern(&self) -> String {
        format!("{}:room:*", self.namespace)
    }

    /// The room of a Redis channel name, if it is one of ours.
    pub fn room_of_channel(&self, channel: &[u8]) -> Option<u32> {
        let rest = channel
            .strip_prefix(self.namespace.as_bytes())?
            .strip_prefix(b":room:")?;
        let room: u32 = std::str::from_utf8(rest).ok()?.parse().ok()?;
        self.rooms.contains(room).then_some(room)
    }

    /// The Redis stream holding a room's recent messages (its history),
    /// appended by the consumers with every broadcast; an entry's id is
    /// the message's `position` ([`crate::position`]).
    pub fn history_stream(&self, room: u32) -> String {
        format!("{}:history:{room}", self.namespace)
    }

    /// The Redis key holding server `id`'s latest snapshot (JSON, with an
    /// expiry, so a server that died drops out by itself).
    pub fn server_stats_key(&self, id: &str) -> String {
        format!("{}:stats:server:{id}", self.namespace)
    }

    /// The Redis key holding consumer `id`'s latest snapshot.
    pub fn consumer_stats_key(&self, id: &str) -> String {
        format!("{}:stats:consumer:{id}", self.namespace)
    }

    /// The sorted set of server ids scored by their last publish (Unix
    /// milliseconds): how a reader finds the keys without `SCAN`.
    pub fn server_stats_index(&self) -> String {
        format!("{}:stats:servers", self.namespace)
    }

    /// The sorted set of consumer ids scored by their last publish.
    pub fn consumer_stats_index(&self) -> String {
        format!("{}:stats:consumers", self.namespace)
    }

    /// The sent log's entry for `(user_id, client_message_id)`: the id and
    /// server time the first message of that name got (idempotent sends).
    pub fn sent_key(&self, user_id: u32, client_message_id: &str) -> String {
        format!("{}:sent:{user_id}:{client_message_id}", self.namespace)
    }

    /// Server `server`'s members of `room`: a hash of `userId` →
    /// `"{connections} {sinceMs} {username}"`, expiring unless the server
    /// heartbeats (so a server that died drops out by itself).
    pub fn presence_room_key(&self, server: &str, room: u32) -> String {
        format!("{}:presence:room:{room}:{server}", self.namespace)
    }

    /// Server `server`'s presence versions: a hash of room → a number it
    /// changes with every write to that room's members, so other servers
    /// read only the rooms that changed. It expires with the members.
    pub fn presence_versions_key(&self, server: &str) -> String {
        format!("{}:presence:versions:{server}", self.namespace)
    }

    /// The sorted set of servers sharing presence, scored by their last
    /// heartbeat (Unix milliseconds): how a server finds the others.
    pub fn presence_index(&self) -> String {
        format!("{}:presence:servers", self.namespace)
    }

    /// Every (room, shard) pair, in order.
    pub fn shards(&self) -> impl Iterator<Item = (u32, u32)> {
        self.rooms
            .iter()
            .flat_map(|room| (0..SHARDS_PER_ROOM).map(move |shard| (room, shard)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_namespace() {
        let t = Topology::new("ns1", Rooms::new(3).unwrap());
        assert_eq!(t.exchange(), "ns1.messages");
        assert_eq!(t.queue(2, 4), "ns1.room.2.4");
        assert_eq!(t.redis_channel(3), "ns1:room:3");
        assert_eq!(t.redis_pattern(), "ns1:room:*");
        assert_eq!(t.history_stream(2), "ns1:history:2");
        assert_eq!(t.room_of_channel(t.history_stream(2).as_bytes()), None);
        assert_eq!(t.shards().count(), 15);
    }

    #[test]
    fn stats_keys_carry_the_namespace_and_the_id() {
        let t = Topology::new("ns1", Rooms::new(3).unwrap());
        assert_eq!(
            t.server_stats_key("ip-10-0-0-5-42"),
            "ns1:stats:server:ip-10-0-0-5-42"
        );
        assert_eq!(t.consumer_stats_key("c-7"), "ns1:stats:consumer:c-7");
        assert_eq!(t.server_stats_index(), "ns1:stats:servers");
        assert_eq!(t.consumer_stats_index(), "ns1:stats:consumers");
        // Keys never collide with room channels, which servers PSUBSCRIBE.
        assert_eq!(t.room_of_channel(t.server_stats_index().as_bytes()), None);
        assert_eq!(t.sent_key(42, "c-1"), "ns1:sent:42:c-1");
    }

    #[test]
    fn presence_keys_carry_the_namespace_the_server_and_the_room() {
        let t = Topology::new("ns1", Rooms::new(3).unwrap());
        assert_eq!(t.presence_room_key("s-1", 2), "ns1:presence:room:2:s-1");
        assert_eq!(t.presence_versions_key("s-1"), "ns1:presence:versions:s-1");
        assert_eq!(t.presence_index(), "ns1:presence:servers");
        // Another server's, another room's and another namespace's differ.
        assert_ne!(t.presence_room_key("s-1", 2), t.presence_room_key("s-2", 2));
        assert_ne!(t.presence_room_key("s-1", 2), t.presence_room_key("s-1", 3));
        let other = Topology::new("ns2", Rooms::new(3).unwrap());
        assert_ne!(t.presence_index(), other.presence_index());
        // None of them is a room channel, which servers PSUBSCRIBE.
        for key in [t.presence_room_key("s", 1), t.presence_index()] {
            assert_eq!(t.room_of_channel(key.as_bytes()), None, "{key}");
        }
    }

    #[test]
    fn channel_names_map_back_to_rooms() {
        let t = Topology::new("ns1", Rooms::new(3).unwrap());
        assert_eq!(t.room_of_channel(b"ns1:room:3"), Some(3));
        assert_eq!(t.room_of_channel(b"ns1:room:4"), None);
        assert_eq!(t.room_of_channel(b"ns2:room:1"), None);
        assert_eq!(t.room_of_channel(b"ns1:room:x"), None);
    }
}

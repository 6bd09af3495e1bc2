//! The messages `brokerceiling` publishes: real queue envelopes, built as
//! the server builds them from what the load client sends — the client's
//! own seeded draws (users uniform in 1..=100000, its 50 texts, 90% TEXT /
//! 5% JOIN / 5% LEAVE, rooms uniform), parsed as a client frame and wrapped
//! with a message id, server time and a server id like the server's
//! default — so the broker carries the product's bytes, routed to every
//! (room, shard = userId mod 5) queue as the product routes them.
//!
//! They are built once, before the clock starts ([`Pool`]), and published
//! round-robin: the broker's work per message is the product's, the
//! publisher's is as little as possible (the point is the broker's own
//! limit). Ids repeat once the pool wraps; RabbitMQ never looks at them.

use chatflow_client::generator::Draw;
use chatflow_protocol::{routing_key, ClientMessage, Envelope, IdGenerator, ServerTime, Topology};

/// Envelopes in the pool: every queue gets dozens of different bodies even
/// with hundreds of rooms, for ~2.5 MB.
pub const POOL_SIZE: usize = 8192;
/// The client's default seed, so the pool is the client's first draws.
const SEED: u64 = 42;

/// One message: its routing key (an index into [`Pool::keys`]) and body.
pub struct Message {
    pub key: usize,
    pub body: Vec<u8>,
}

/// Pre-built envelopes and the routing key of every queue.
pub struct Pool {
    keys: Vec<String>,
    messages: Vec<Message>,
}

impl Pool {
    /// [`POOL_SIZE`] envelopes for `topology`'s rooms.
    pub fn new(topology: &Topology) -> Result<Pool, String> {
        Pool::with_size(topology, POOL_SIZE)
    }

    pub fn with_size(topology: &Topology, size: usize) -> Result<Pool, String> {
        let keys: Vec<String> = topology
            .shards()
            .map(|(room, shard)| routing_key(room, shard))
            .collect();
        let mut draw = Draw::new(SEED, 1, topology.rooms.count());
        let mut ids = IdGenerator::new();
        let server_id = server_id();
        let mut messages = Vec::with_capacity(size);
        for _ in 0..size {
            let m = draw.any_room();
            let now = ServerTime::now();
            // What the client writes (its `wire` encoder, without the
            // clientMessageId, which the envelope does not carry).
            let text = format!(
                r#"{{"userId":{user},"username":"user{user}","message":"{text}","timestamp":"{ts}","messageType":"{kind}"}}"#,
                user = m.user_id,
                text = m.text(),
                ts = std::str::from_utf8(&now.to_rfc3339_bytes()).unwrap_or_default(),
                kind = m.kind.as_str(),
            );
            let parsed = ClientMessage::parse(&text)
                .map_err(|e| format!("a drawn message is not valid ({e:?}): {text}"))?;
            let room = u32::from(m.room);
            let envelope =
                Envelope::accepted(&parsed, room, ids.next_id(now.0), now, server_id.as_str());
            let key = Self::index(room, envelope.shard());
            messages.push(Message {
                key,
                body: envelope.encode(),
            });
        }
        Ok(Pool { keys, messages })
    }

    /// The index of (room, shard) in [`Topology::shards`]' order (rooms
    /// from 1, each with its shards from 0).
    fn index(room: u32, shard: u32) -> usize {
        ((room - 1) * chatflow_protocol::SHARDS_PER_ROOM + shard) as usize
    }

    /// The `n`-th message, wrapping round the pool.
    pub fn get(&self, n: usize) -> &Message {
        &self.messages[n % self.messages.len()]
    }

    /// Its routing key.
    pub fn key(&self, message: &Message) -> &str {
        &self.keys[message.key]
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Mean body size in bytes (what the report states the run carried).
    pub fn mean_bytes(&self) -> f64 {
        let total: usize = self.messages.iter().map(|m| m.body.len()).sum();
        total as f64 / self.messages.len().max(1) as f64
    }
}

/// A server id of the server's default form (`{hostname}-{pid}`), so the
/// envelope is as long as a real one.
fn server_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "server".to_string());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatflow_protocol::Rooms;

    #[test]
    fn envelopes_decode_and_cover_every_queue_with_the_right_key() {
        let topology = Topology::new("t", Rooms::new(3).unwrap());
        let pool = Pool::with_size(&topology, 600).unwrap();
        assert_eq!(pool.len(), 600);
        let mut seen = std::collections::HashSet::new();
        for n in 0..pool.len() {
            let m = pool.get(n);
            let envelope = Envelope::decode(&m.body).expect("a real envelope");
            let expected = routing_key(envelope.room_id, envelope.shard());
            assert_eq!(pool.key(m), expected);
            seen.insert(expected);
        }
        assert_eq!(seen.len(), 15, "all 3 rooms × 5 shards get messages");
        // Envelopes of the product's size: ~300 bytes of JSON.
        assert!(
            (250.0..400.0).contains(&pool.mean_bytes()),
            "{}",
            pool.mean_bytes()
        );
        assert!(std::ptr::eq(pool.get(600), pool.get(0)), "the pool wraps");
    }
}

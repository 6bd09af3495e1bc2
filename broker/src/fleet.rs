//! The fleet registry in Redis: every server and every consumer writes a
//! JSON snapshot of itself once a second, and any server's read API reads
//! them all back. Written once here so that writers and the reader agree
//! on every rule below.
//!
//! Layout (names from `chatflow_protocol::Topology`):
//! - `{ns}:stats:server:{id}` / `{ns}:stats:consumer:{id}`: the latest
//!   snapshot, `SET … EX` [`SNAPSHOT_TTL`], so a process that died drops
//!   out by itself;
//! - `{ns}:stats:servers` / `{ns}:stats:consumers`: sorted sets of ids
//!   scored by their last publish in Unix milliseconds, so a reader finds
//!   the keys with one `ZRANGEBYSCORE` instead of a `SCAN` over the whole
//!   keyspace.
//!
//! A publish is one pipeline (one round trip): `SET`, `ZADD`, a
//! `ZREMRANGEBYSCORE` pruning ids silent for [`INDEX_KEEP`], so the index
//! of a fleet whose processes come and go stays the size of the fleet, and
//! an `EXPIRE` of the index itself, so a namespace nobody publishes in any
//! more (a test's, a retired deployment's) leaves nothing behind. A
//! reader takes the ids published within [`FRESH_FOR`] and `MGET`s their
//! keys, skipping those already expired. A clean stop [`withdraw`]s (its key
//! and index entry go at once); a crash is covered by the expiry.
//!
//! [`withdraw`]: Registry::withdraw

use std::time::Duration;

use chatflow_protocol::Topology;
use redis::{Connection, RedisResult};

/// How long a snapshot lives after its last publish: ten missed publishes
/// (one a second) before a silent process drops out.
pub const SNAPSHOT_TTL: Duration = Duration::from_secs(10);

/// How long an id stays in its index after its last publish. Longer than
/// [`SNAPSHOT_TTL`] (a reader skips the expired keys anyway); pruning is
/// only there to keep the index the size of the fleet.
pub const INDEX_KEEP: Duration = Duration::from_secs(60);

/// A reader takes the ids published this recently: the same as the TTL,
/// so an id it takes has, at worst, a key that has just expired.
pub const FRESH_FOR: Duration = Duration::from_secs(10);

/// Whose snapshots a [`Registry`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Server,
    Consumer,
}

/// One role's keys and index in one namespace.
#[derive(Clone, Debug)]
pub struct Registry {
    topology: Topology,
    role: Role,
    index: String,
}

impl Registry {
    pub fn new(topology: &Topology, role: Role) -> Self {
        let index = match role {
            Role::Server => topology.server_stats_index(),
            Role::Consumer => topology.consumer_stats_index(),
        };
        Registry {
            topology: topology.clone(),
            role,
            index,
        }
    }

    /// The servers' registry.
    pub fn servers(topology: &Topology) -> Self {
        Registry::new(topology, Role::Server)
    }

    /// The consumers' registry.
    pub fn consumers(topology: &Topology) -> Self {
        Registry::new(topology, Role::Consumer)
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The sorted set indexing this role's snapshots.
    pub fn index(&self) -> &str {
        &self.index
    }

    /// The key of `id`'s snapshot.
    pub fn key(&self, id: &str) -> String {
        match self.role {
            Role::Server => self.topology.server_stats_key(id),
            Role::Consumer => self.topology.consumer_stats_key(id),
        }
    }

    /// Writes `id`'s snapshot and indexes it at `now_ms`, pruning ids
    /// silent for [`INDEX_KEEP`] (and the index itself once the whole
    /// role is): one pipeline. `ttl` is [`SNAPSHOT_TTL`]
    /// but for tests (whole seconds, at least one).
    pub fn publish(
        &self,
        con: &mut Connection,
        id: &str,
        document: &str,
        ttl: Duration,
        now_ms: i64,
    ) -> RedisResult<()> {
        let cutoff = now_ms - INDEX_KEEP.as_millis() as i64;
        redis::pipe()
            .set_ex(self.key(id), document, ttl.as_secs().max(1))
            .ignore()
            .zadd(&self.index, id, now_ms)
            .ignore()
            .zrembyscore(&self.index, "-inf", format!("({cutoff}"))
            .ignore()
            .expire(&self.index, INDEX_KEEP.as_secs() as i64)
            .ignore()
            .query::<()>(con)
    }

    /// Removes `id`'s snapshot and index entry (a clean stop).
    pub fn withdraw(&self, con: &mut Connection, id: &str) -> RedisResult<()> {
        redis::pipe()
            .del(self.key(id))
            .ignore()
            .zrem(&self.index, id)
            .ignore()
            .query::<()>(con)
    }

    /// The ids published within [`FRESH_FOR`] of `now_ms`, in index order.
    pub fn fresh_ids(&self, con: &mut Connection, now_ms: i64) -> RedisResult<Vec<String>> {
        let since = now_ms - FRESH_FOR.as_millis() as i64;
        redis::cmd("ZRANGEBYSCORE")
            .arg(&self.index)
            .arg(format!("({since}"))
            .arg("+inf")
            .query(con)
    }

    /// The snapshots of `ids` still present, as (id, document); an expired
    /// key is skipped.
    pub fn documents(
        &self,
        con: &mut Connection,
        ids: Vec<String>,
    ) -> RedisResult<Vec<(String, String)>> {
        if ids.is_empty() {
            // MGET with no key is a Redis error, not an empty answer.
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.key(id)).collect();
        let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(con)?;
        Ok(ids
            .into_iter()
            .zip(values)
            .filter_map(|(id, value)| Some((id, value?)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatflow_protocol::Rooms;

    #[test]
    fn registries_use_their_roles_names() {
        let t = Topology::new("ns", Rooms::new(1).unwrap());
        let servers = Registry::servers(&t);
        assert_eq!(servers.index(), "ns:stats:servers");
        assert_eq!(servers.key("a"), "ns:stats:server:a");
        let consumers = Registry::consumers(&t);
        assert_eq!(consumers.index(), "ns:stats:consumers");
        assert_eq!(consumers.key("b"), "ns:stats:consumer:b");
        assert!(INDEX_KEEP > SNAPSHOT_TTL && FRESH_FOR <= SNAPSHOT_TTL);
    }
}

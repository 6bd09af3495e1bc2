//! The `presence-redis` thread (`--presence shared`): this server's
//! members written to Redis, its heartbeat, and the other servers'
//! members read back. The presence thread hands it every change to this
//! server's members ([`RedisSync::send`]) and gets the others' through its
//! own input channel ([`RemoteUpdate`]); nothing else waits on it.
//!
//! Keys (names from `chatflow_protocol::Topology`, so they carry the
//! namespace), for this server `id`:
//! - `{ns}:presence:room:{room}:{id}`: a hash of `userId` → [`Entry`];
//! - `{ns}:presence:versions:{id}`: a hash of room → a number that changes
//!   with every write to that room (never repeating, even across
//!   restarts: it counts up from the start's clock in nanoseconds), so a
//!   reader re-reads only the rooms that changed;
//! - `{ns}:presence:servers`: a sorted set of server ids scored by their
//!   last heartbeat, pruned of ids silent for [`INDEX_KEEP`], and expiring
//!   itself when a whole namespace falls silent.
//!
//! Every write is one `MULTI`/`EXEC` pipeline that also (re)sets the
//! expiry (`PEXPIRE`, `--presence-expiry-heartbeats` ×
//! `--presence-heartbeat-secs`) of each key it touches, so no key of ours
//! ever lives without one; the heartbeat refreshes them all. A server
//! that stops heartbeating (killed, partitioned) drops out of every other
//! server's lists when its versions key expires. After connecting — at
//! start, and after any failure, when what Redis holds is unknown — and
//! whenever the heartbeat finds the versions key gone (a Redis restart or
//! flush), this server rewrites all of its presence.
//!
//! Reading: every poll, `ZRANGE` the index and `HGETALL` every other
//! server's versions (one pipeline), then `HGETALL` the rooms whose
//! version changed (one more). A server whose versions are gone (expired)
//! or that left the index is [`RemoteUpdate::Gone`]. A failed read keeps
//! the last view: a Redis outage must not empty every member list; the
//! other servers' records expire on their own once it is back.
//!
//! Failures back off with the workspace's jittered [`Backoff`] and are
//! counted ([`super::counts::RedisLink`]); the first of an outage and the
//! recovery are logged.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chatflow_broker::{Backoff, RedisEndpoint};
use chatflow_protocol::time::now_ms;
use chatflow_protocol::Topology;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use redis::Connection;

use super::counts::Counts;
use super::state::MirrorChange;
use super::{Entry, Input, RemoteUpdate, RoomMembers};
use crate::config::Config;

/// How long a server stays in the index after its last heartbeat: far
/// past any expiry (a reader finds a dead server's versions gone long
/// before), only there to keep the index the size of the fleet.
pub const INDEX_KEEP: Duration = Duration::from_secs(60);

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Opens a Redis connection whose connect, reads and writes each give up
/// after the endpoint's timeout. Every connection presence uses comes
/// from here (the one Redis, or the master the Sentinels name now:
/// `chatflow_broker::RedisConnector`).
pub fn connect_redis(endpoint: &RedisEndpoint) -> redis::RedisResult<Connection> {
    chatflow_broker::RedisConnector::new(endpoint).connect()
}

/// What the sync thread needs of the configuration.
#[derive(Clone, Debug)]
pub struct SyncSettings {
    pub redis: RedisEndpoint,
    pub topology: Topology,
    pub server_id: String,
    pub heartbeat: Duration,
    pub expiry: Duration,
    pub poll: Duration,
}

impl SyncSettings {
    pub fn new(config: &Config) -> SyncSettings {
        SyncSettings {
            redis: config.services.redis.clone(),
            topology: config.services.topology.clone(),
            server_id: config.server_id.clone(),
            heartbeat: config.presence.heartbeat,
            expiry: config.presence.expiry,
            poll: config.presence.poll(),
        }
    }
}

/// The presence thread's side of the sync thread. Dropping it stops the
/// thread.
pub struct RedisSync {
    changes: Sender<Vec<MirrorChange>>,
}

impl RedisSync {
    /// Starts the thread. It connects by itself (and retries): a Redis
    /// that is down delays sharing, never the server's start.
    pub fn start(
        settings: SyncSettings,
        presence: Sender<Input>,
        counts: Arc<Counts>,
    ) -> io::Result<(RedisSync, JoinHandle<()>)> {
        let (changes, receiver) = crossbeam_channel::unbounded();
        let syncer = Syncer::new(settings, presence, counts);
        let thread = std::thread::Builder::new()
            .name("presence-redis".to_string())
            .spawn(move || syncer.run(&receiver))?;
        Ok((RedisSync { changes }, thread))
    }

    /// This server's changes (nothing is sent for none).
    pub fn send(&self, changes: Vec<MirrorChange>) {
        if !changes.is_empty() {
            let _ = self.changes.send(changes);
        }
    }
}

struct Syncer {
    settings: SyncSettings,
    presence: Sender<Input>,
    counts: Arc<Counts>,
    con: Option<Connection>,
    backoff: Backoff,
    /// While disconnected: no attempt before this.
    retry_at: Option<Instant>,
    /// This server's members as Redis should hold them (index = room).
    mirror: Vec<HashMap<u32, Entry>>,
    /// Users whose entry changed since the last write, by room.
    dirty: BTreeMap<u32, BTreeSet<u32>>,
    next_version: u64,
    /// The other servers' room versions as last read.
    known: HashMap<String, HashMap<u32, String>>,
    /// An outage is being logged (its first failure was).
    outage: bool,
}

impl Syncer {
    fn new(settings: SyncSettings, presence: Sender<Input>, counts: Arc<Counts>) -> Syncer {
        let rooms = settings.topology.rooms.count();
        // Decorrelated across servers: a Redis restart must not bring the
        // whole fleet back in the same millisecond.
        let seed = u64::from(std::process::id()) << 8 | 0x9e;
        let start_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Syncer {
            settings,
            presence,
            counts,
            con: None,
            backoff: Backoff::new(BACKOFF_FIRST, BACKOFF_MAX, seed),
            retry_at: None,
            mirror: (0..=rooms).map(|_| HashMap::new()).collect(),
            dirty: BTreeMap::new(),
            next_version: start_ns,
            known: HashMap::new(),
            outage: false,
        }
    }

    fn run(mut self, changes: &Receiver<Vec<MirrorChange>>) {
        let mut next_heartbeat = Instant::now();
        let mut next_poll = Instant::now();
        loop {
            let now = Instant::now();
            let mut due = next_heartbeat.min(next_poll);
            if self.con.is_none() {
                due = due.min(self.retry_at.unwrap_or(now));
            }
            match changes.recv_timeout(due.saturating_duration_since(now)) {
                Ok(batch) => {
                    self.apply(batch);
                    for batch in changes.try_iter() {
                        self.apply(batch);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                // The presence thread stopped: so does this one. What it
                // wrote expires (see the module docs).
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.connect_if_due();
            if self.con.is_some() && !self.dirty.is_empty() {
                let written = self.write_changes();
                self.done("writing", written);
            }
            let now = Instant::now();
            if now >= next_heartbeat {
                next_heartbeat = now + self.settings.heartbeat;
                if self.con.is_some() {
                    let beat = self.heartbeat();
                    self.done("heartbeat", beat);
                }
            }
            if now >= next_poll {
                next_poll = now + self.settings.poll;
                if self.con.is_some() {
                    let read = self.poll();
                    self.done("reading the other servers", read);
                }
            }
        }
    }

    fn apply(&mut self, batch: Vec<MirrorChange>) {
        for (room, user, entry) in batch {
            let Some(members) = self.mirror.get_mut(room as usize) else {
                continue;
            };
            match entry {
                Some(entry) => members.insert(user, entry),
                None => members.remove(&user),
            };
            self.dirty.entry(room).or_default().insert(user);
        }
    }

    fn connect_if_due(&mut self) {
        if self.con.is_some() || self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        match connect_redis(&self.settings.redis) {
            Ok(con) => {
                self.con = Some(con);
                let rewritten = self.rewrite();
                self.done("writing all of this server's presence", rewritten);
            }
            Err(e) => self.lost(format!("connecting: {e}")),
        }
    }

    /// After a Redis step: on success the link is up (and an outage is
    /// over), on failure it is dropped and retried after a back-off.
    fn done(&mut self, what: &str, result: redis::RedisResult<()>) {
        match result {
            Ok(()) => {
                let link = self.counts.redis();
                link.connected
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                if std::mem::take(&mut self.outage) {
                    tracing::info!(
                        "presence: sharing through Redis at {} again",
                        self.settings.redis.display()
                    );
                }
                self.backoff.reset();
                self.retry_at = None;
            }
            Err(e) => self.lost(format!("{what}: {e}")),
        }
    }

    fn lost(&mut self, error: String) {
        if !self.outage {
            self.outage = true;
            tracing::warn!(
                "presence: Redis at {}: {error}; retrying (members elsewhere stay as last read)",
                self.settings.redis.display()
            );
        }
        self.con = None;
        self.retry_at = Some(Instant::now() + self.backoff.next_delay());
        (self.counts.redis()).failed(format!(
            "redis at {}: {error}",
            self.settings.redis.display()
        ));
    }

    fn version(&mut self) -> u64 {
        self.next_version += 1;
        self.next_version
    }

    fn ttl_ms(&self) -> i64 {
        self.settings.expiry.as_millis() as i64
    }

    fn room_key(&self, room: u32) -> String {
        let t = &self.settings.topology;
        t.presence_room_key(&self.settings.server_id, room)
    }

    fn versions_key(&self) -> String {
        let t = &self.settings.topology;
        t.presence_versions_key(&self.settings.server_id)
    }

    /// Adds this server to the index (pruning the silent), with the
    /// index's own expiry.
    fn index(&self, pipe: &mut redis::Pipeline) {
        let index = self.settings.topology.presence_index();
        let now = now_ms();
        let cutoff = now - INDEX_KEEP.as_millis() as i64;
        pipe.zadd(&index, &self.settings.server_id, now).ignore();
        pipe.zrembyscore(&index, "-inf", format!("({cutoff}"))
            .ignore();
        pipe.pexpire(&index, INDEX_KEEP.as_millis() as i64).ignore();
    }

    /// Replaces everything Redis holds of this server's presence with the
    /// mirror: one transaction.
    fn rewrite(&mut self) -> redis::RedisResult<()> {
        let ttl = self.ttl_ms();
        let versions = self.versions_key();
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.del(&versions).ignore();
        let mut stamps = Vec::with_capacity(self.mirror.len());
        for room in self.settings.topology.rooms.iter() {
            let key = self.room_key(room);
            pipe.del(&key).ignore();
            let members = &self.mirror[room as usize];
            if !members.is_empty() {
                let items: Vec<(u32, String)> =
                    members.iter().map(|(&u, e)| (u, e.encode())).collect();
                pipe.hset_multiple(&key, &items).ignore();
                pipe.pexpire(&key, ttl).ignore();
            }
            let version = self.version();
            stamps.push((room, version));
        }
        pipe.hset_multiple(&versions, &stamps).ignore();
        pipe.pexpire(&versions, ttl).ignore();
        self.index(&mut pipe);
        let con = self.con.as_mut().expect("connected");
        pipe.query::<()>(con)?;
        self.dirty.clear();
        Ok(())
    }

    /// Writes the entries that changed, and their rooms' new versions:
    /// one transaction.
    fn write_changes(&mut self) -> redis::RedisResult<()> {
        let ttl = self.ttl_ms();
        let versions = self.versions_key();
        let dirty = std::mem::take(&mut self.dirty);
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut stamps = Vec::with_capacity(dirty.len());
        for (&room, users) in &dirty {
            let key = self.room_key(room);
            let members = &self.mirror[room as usize];
            let (mut set, mut gone) = (Vec::new(), Vec::new());
            for user in users {
                match members.get(user) {
                    Some(entry) => set.push((*user, entry.encode())),
                    None => gone.push(*user),
                }
            }
            if !set.is_empty() {
                pipe.hset_multiple(&key, &set).ignore();
            }
            if !gone.is_empty() {
                pipe.hdel(&key, &gone).ignore();
            }
            pipe.pexpire(&key, ttl).ignore();
            let version = self.version();
            stamps.push((room, version));
        }
        pipe.hset_multiple(&versions, &stamps).ignore();
        pipe.pexpire(&versions, ttl).ignore();
        let con = self.con.as_mut().expect("connected");
        match pipe.query::<()>(con) {
            Ok(()) => Ok(()),
            Err(e) => {
                // Unknown what arrived: the rewrite after reconnecting
                // writes everything anyway; keep the rooms marked.
                self.dirty = dirty;
                Err(e)
            }
        }
    }

    /// Refreshes every key's expiry and the index entry. A versions key
    /// found gone means Redis lost this server's presence (restarted,
    /// flushed, or an outage longer than the expiry): it is rewritten.
    fn heartbeat(&mut self) -> redis::RedisResult<()> {
        let ttl = self.ttl_ms();
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.pexpire(self.versions_key(), ttl);
        for room in self.settings.topology.rooms.iter() {
            if !self.mirror[room as usize].is_empty() {
                pipe.pexpire(self.room_key(room), ttl).ignore();
            }
        }
        self.index(&mut pipe);
        let con = self.con.as_mut().expect("connected");
        let (alive,): (bool,) = pipe.query(con)?;
        if !alive {
            tracing::warn!(
                "presence: this server's presence was gone from Redis (restarted or flushed?): writing it again"
            );
            return self.rewrite();
        }
        Ok(())
    }

    /// Reads the other servers' changed rooms and tells the presence
    /// thread (see the module docs).
    fn poll(&mut self) -> redis::RedisResult<()> {
        let topology = &self.settings.topology;
        let me = &self.settings.server_id;
        let con = self.con.as_mut().expect("connected");
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(topology.presence_index())
            .arg(0)
            .arg(-1)
            .query(con)?;
        let others: Vec<String> = ids.into_iter().filter(|id| id != me).collect();
        let versions: Vec<HashMap<String, String>> = if others.is_empty() {
            Vec::new()
        } else {
            let mut pipe = redis::pipe();
            for id in &others {
                pipe.hgetall(topology.presence_versions_key(id));
            }
            pipe.query(con)?
        };
        let rooms = topology.rooms;
        let mut gone: Vec<String> = (self.known.keys())
            .filter(|id| !others.contains(id))
            .cloned()
            .collect();
        let mut reads: Vec<(String, u32, String)> = Vec::new();
        for (id, stamps) in others.iter().zip(versions) {
            if stamps.is_empty() {
                if self.known.contains_key(id) {
                    gone.push(id.clone());
                }
                continue;
            }
            let seen = self.known.get(id);
            for (room, version) in stamps {
                let Ok(room) = room.parse::<u32>() else {
                    continue;
                };
                if !rooms.contains(room) {
                    continue;
                }
                if seen.and_then(|s| s.get(&room)) != Some(&version) {
                    reads.push((id.clone(), room, version));
                }
            }
        }
        let members: Vec<HashMap<String, String>> = if reads.is_empty() {
            Vec::new()
        } else {
            let mut pipe = redis::pipe();
            for (id, room, _) in &reads {
                pipe.hgetall(topology.presence_room_key(id, *room));
            }
            pipe.query(con)?
        };
        let mut updates: BTreeMap<String, Vec<(u32, RoomMembers)>> = BTreeMap::new();
        for ((id, room, version), fields) in reads.into_iter().zip(members) {
            let entries = (fields.into_iter())
                .filter_map(|(user, value)| Some((user.parse().ok()?, Entry::decode(&value)?)))
                .collect();
            updates.entry(id.clone()).or_default().push((room, entries));
            self.known.entry(id).or_default().insert(room, version);
        }
        for (server, rooms) in updates {
            let _ = (self.presence).send(Input::Remote(RemoteUpdate::Rooms { server, rooms }));
        }
        for server in gone {
            self.known.remove(&server);
            let _ = (self.presence).send(Input::Remote(RemoteUpdate::Gone { server }));
        }
        Ok(())
    }
}

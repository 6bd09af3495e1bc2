//! Presence: who is in each room, across every server of the namespace,
//! kept from `JOIN`/`LEAVE` messages and live connections.
//!
//! # The membership model
//!
//! - **A `JOIN` makes its user present through that connection**, once the
//!   message is accepted (acked: with RabbitMQ, confirmed), so a `JOIN`
//!   answered `UNAVAILABLE` changes nothing. Merely connecting does not:
//!   the URL names a room, not a person — a connection is anonymous until
//!   a message says who it is — and the protocol's clients send `JOIN`
//!   right after connecting, which is the moment a user means "I am here".
//!   A `TEXT` message does not either (no per-message cost on the hot
//!   path, and a user who never said `JOIN` is a reader, not a member).
//! - **A `LEAVE` on a connection ends its user's presence through it**, at
//!   once (no grace: they said they left). Closing or losing the
//!   connection does too, after `--presence-grace-secs` (5 s), so a
//!   reconnect within it does not flap them out and back in; a `JOIN`
//!   within the grace (on any connection of this server) keeps them.
//! - **Several connections of one user add up**: a user is present while
//!   at least one of their connections to the room holds them (on any
//!   server). Their member entry counts the connections, and they leave
//!   only when the last one goes. A connection may hold several users (a
//!   bot, a load generator), at most `--presence-max-users-per-connection`.
//!
//! # Across servers
//!
//! Each server keeps its own connections' presence here (the `presence`
//! thread: [`service`], over [`state::State`]) and, with `--presence
//! shared` (the default with RabbitMQ), shares it through Redis
//! ([`sync`], the `presence-redis` thread): a hash per room of its
//! members, a hash of versions (one per room, changed with every write)
//! and a sorted set of servers, all named by `chatflow_protocol`'s
//! topology. Its keys expire `--presence-expiry-heartbeats` (3) ×
//! `--presence-heartbeat-secs` (2 s) after its last heartbeat, so a server
//! that dies without cleaning up leaves every member list within that
//! (plus a poll and a frame interval: ~6.75 s by default). Each server
//! reads the others' versions every poll (250 ms) and re-reads only the
//! rooms whose version changed. A clean stop does not withdraw early:
//! its users stay listed until the keys expire, which lets them reconnect
//! to another server in the meantime without flapping.
//!
//! # The hot path
//!
//! Nothing here touches a `TEXT` message. A worker collects its `JOIN`s,
//! `LEAVE`s, disconnects and presence requests during a loop turn and
//! hands them over as one channel send at the end of it ([`Outbox`]); the
//! presence thread never blocks on Redis (the sync thread does that), and
//! no worker ever waits for either. Frames come back through the workers'
//! inboxes: `presence_join`/`presence_leave` for a room's members (at most
//! one of each per room per `--presence-frame-interval-secs`, batched, so
//! a connection storm cannot flood a room), and each request's answer.
//!
//! Files: `state` (the model: local members, grace, other servers',
//! merged lists, frames), `service` (the presence thread), `sync` (the
//! Redis side), `counts` (what `/metrics`, `/api/presence` and the
//! dashboard read without asking the thread).

pub mod counts;
pub mod service;
pub mod state;
pub mod sync;

use std::collections::HashMap;
use std::time::Duration;

use chatflow_protocol::presence::Member;
use crossbeam_channel::Sender;

pub use counts::{Counts, CountsSnapshot};
pub use service::Presence;

/// One server's record of one member of one room: what Redis holds
/// (`"{connections} {sinceMs} {username}"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Open connections holding the user (0 during the grace).
    pub connections: u32,
    /// When the user became present on that server (Unix ms).
    pub since_ms: i64,
    pub username: String,
}

impl Entry {
    /// The value stored in Redis.
    pub fn encode(&self) -> String {
        format!("{} {} {}", self.connections, self.since_ms, self.username)
    }

    /// Reads a value written by [`Entry::encode`]; `None` for anything
    /// else (a value no server of ours wrote is skipped, never trusted).
    pub fn decode(text: &str) -> Option<Entry> {
        let mut parts = text.splitn(3, ' ');
        let connections = parts.next()?.parse().ok()?;
        let since_ms = parts.next()?.parse().ok()?;
        let username = parts.next()?;
        let valid = (3..=20).contains(&username.len())
            && username.bytes().all(|b| b.is_ascii_alphanumeric());
        valid.then(|| Entry {
            connections,
            since_ms,
            username: username.to_string(),
        })
    }
}

/// What one worker tells presence about its connections, in the order it
/// happened ([`Outbox`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An accepted `JOIN`: `user` is present through one more connection.
    Join {
        room: u32,
        user: u32,
        username: String,
    },
    /// An accepted `LEAVE` on a connection that held `user`.
    Leave { room: u32, user: u32 },
    /// A connection that held `user` closed (the grace starts if it was
    /// the last).
    Disconnect { room: u32, user: u32 },
    /// A `{"type":"presence"}` request from connection `key` (with
    /// `connection_id`) of the worker: its answer goes back to that
    /// worker's inbox.
    Ask {
        room: u32,
        after: Option<u32>,
        key: usize,
        connection_id: u64,
    },
}

/// One room's members on one server, by user.
pub type RoomMembers = HashMap<u32, Entry>;

/// What another server's presence holds now (from the sync thread).
#[derive(Debug)]
pub enum RemoteUpdate {
    /// The rooms of `server` that changed, each with all its members.
    Rooms {
        server: String,
        rooms: Vec<(u32, RoomMembers)>,
    },
    /// `server`'s presence expired (it died, or lost Redis for longer than
    /// the expiry) or it left the fleet: none of its members count.
    Gone { server: String },
}

/// A page of a room's member list, for the read API.
#[derive(Clone, Debug)]
pub struct MemberPage {
    pub room_id: u32,
    /// Members of the room across the fleet.
    pub count: u64,
    pub members: Vec<Member<'static>>,
    /// More follow: the next page starts after this user.
    pub next_after: Option<u32>,
}

/// Everything the presence thread is told.
pub enum Input {
    /// One worker's events of one loop turn.
    Worker {
        worker: usize,
        events: Vec<Event>,
    },
    Remote(RemoteUpdate),
    /// The read API asks for a page of `room` (its thread waits).
    Page {
        room: u32,
        after: Option<u32>,
        limit: usize,
        reply: Sender<MemberPage>,
    },
    Stop,
}

/// How long the read API waits for the presence thread's answer before
/// it says 503: the thread answers between two inputs, never after Redis.
pub const PAGE_TIMEOUT: Duration = Duration::from_secs(2);

/// A worker's side: the events of the current loop turn, sent as one
/// batch at its end ([`Outbox::send`]), and the per-connection bound.
pub struct Outbox {
    worker: usize,
    input: Sender<Input>,
    events: Vec<Event>,
    pub max_users_per_connection: usize,
}

impl Outbox {
    pub fn new(worker: usize, input: Sender<Input>, max_users_per_connection: usize) -> Self {
        Outbox {
            worker,
            input,
            events: Vec::new(),
            max_users_per_connection,
        }
    }

    pub fn push(&mut self, event: Event) {
        self.events.push(event);
    }

    /// Hands this turn's events over (one channel send; nothing if there
    /// were none). Never blocks: the channel is unbounded, and its
    /// traffic is bounded by JOIN/LEAVE, connects and requests.
    pub fn send(&mut self) {
        if self.events.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.events);
        // A stopped presence thread has nothing left to tell.
        let _ = self.input.send(Input::Worker {
            worker: self.worker,
            events,
        });
    }
}

/// The presence thread's handle for the read API and `/metrics`: counts
/// without asking the thread, pages by asking it.
#[derive(Clone)]
pub struct PresenceHandle {
    input: Sender<Input>,
    counts: std::sync::Arc<Counts>,
}

impl PresenceHandle {
    /// Counts per room, servers seen and the Redis link: a copy of
    /// atomics the presence thread keeps up to date.
    pub fn counts(&self) -> CountsSnapshot {
        self.counts.snapshot()
    }

    /// Up to `limit` members of `room` after `after`, or why not.
    pub fn page(&self, room: u32, after: Option<u32>, limit: usize) -> Result<MemberPage, String> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let asked = Input::Page {
            room,
            after,
            limit,
            reply,
        };
        if self.input.send(asked).is_err() {
            return Err("presence has stopped".to_string());
        }
        answer.recv_timeout(PAGE_TIMEOUT).map_err(|_| {
            format!(
                "presence did not answer within {} s",
                PAGE_TIMEOUT.as_secs_f64()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_anything_else_is_skipped() {
        let entry = Entry {
            connections: 2,
            since_ms: 1_795_744_800_123,
            username: "user42".to_string(),
        };
        assert_eq!(entry.encode(), "2 1795744800123 user42");
        assert_eq!(Entry::decode(&entry.encode()), Some(entry));
        for bad in [
            "",
            "2",
            "2 1795744800123",
            "x 1 user42",
            "2 y user42",
            "-1 1 user42",
            "2 1 us",
            "2 1 user 42",
            "2 1 user42\n",
            "2 1 abcdefghijklmnopqrstu",
        ] {
            assert_eq!(Entry::decode(bad), None, "{bad:?}");
        }
    }
}

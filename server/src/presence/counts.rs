//! What `/metrics`, `GET /api/presence` and the dashboard read of
//! presence without asking its thread: members per room (across the
//! fleet, and held by this server), the servers seen, and the Redis link.
//! The presence thread stores them after every batch of inputs (relaxed
//! atomics: a reader sees each number as of some recent batch), the sync
//! thread the link's state.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::Serialize;

use crate::config::PresenceMode;

/// The live counts (see the module docs).
pub struct Counts {
    mode: PresenceMode,
    /// Index = room (0 unused): members across the fleet, and held here.
    rooms: Vec<(AtomicU64, AtomicU64)>,
    /// Other servers whose presence this one holds.
    servers: AtomicU64,
    redis: RedisLink,
}

/// The sync thread's link to Redis (`shared` mode only).
#[derive(Default)]
pub struct RedisLink {
    pub connected: AtomicBool,
    /// Writes, heartbeats and reads that failed (or were skipped while
    /// reconnecting).
    pub failures: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl RedisLink {
    pub fn failed(&self, error: String) {
        self.connected.store(false, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock() = Some(error);
    }
}

impl Counts {
    /// `mode`: resolved (never `Auto`).
    pub fn new(mode: PresenceMode, rooms: u32) -> Counts {
        Counts {
            mode,
            rooms: (0..=rooms)
                .map(|_| (AtomicU64::new(0), AtomicU64::new(0)))
                .collect(),
            servers: AtomicU64::new(0),
            redis: RedisLink::default(),
        }
    }

    pub fn set_room(&self, room: u32, fleet: u64, local: u64) {
        if let Some((f, l)) = self.rooms.get(room as usize) {
            f.store(fleet, Ordering::Relaxed);
            l.store(local, Ordering::Relaxed);
        }
    }

    pub fn set_servers(&self, others: u64) {
        self.servers.store(others, Ordering::Relaxed);
    }

    pub fn redis(&self) -> &RedisLink {
        &self.redis
    }

    pub fn snapshot(&self) -> CountsSnapshot {
        let rooms: Vec<RoomCount> = (self.rooms.iter().enumerate().skip(1))
            .map(|(room, (fleet, local))| RoomCount {
                room_id: room as u32,
                count: fleet.load(Ordering::Relaxed),
                local: local.load(Ordering::Relaxed),
            })
            .collect();
        let redis = (self.mode == PresenceMode::Shared).then(|| RedisState {
            connected: self.redis.connected.load(Ordering::Relaxed),
            failures: self.redis.failures.load(Ordering::Relaxed),
            last_error: self.redis.last_error.lock().clone(),
        });
        CountsSnapshot {
            mode: self.mode.as_str(),
            total: rooms.iter().map(|r| r.count).sum(),
            local: rooms.iter().map(|r| r.local).sum(),
            servers: self.servers.load(Ordering::Relaxed) + 1,
            rooms,
            redis,
        }
    }
}

/// The counts as documents show them (server/API.md, `GET /api/presence`).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CountsSnapshot {
    /// `local` or `shared`.
    pub mode: &'static str,
    /// Members over every room (a user in two rooms counts twice).
    pub total: u64,
    /// Of those, held by this server's connections.
    pub local: u64,
    /// Servers whose members are counted (this one included).
    pub servers: u64,
    pub rooms: Vec<RoomCount>,
    /// `shared` only: the link presence is shared over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisState>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomCount {
    pub room_id: u32,
    /// Members across the fleet.
    pub count: u64,
    /// Held by this server.
    pub local: u64,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedisState {
    pub connected: bool,
    pub failures: u64,
    pub last_error: Option<String>,
}

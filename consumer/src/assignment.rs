//! Which queues this consumer process consumes, and as what
//! ([`Assignment`], [`Duty`]): with `--instances N --instance K`, instance
//! K *owns* a fixed, balanced share of the (room, shard) queues and —
//! unless `--no-standby` — registers on every other queue as a *standby*
//! after `--standby-delay-secs`.
//!
//! The share: the queues in room-major order (room 1 shard 0, room 1
//! shard 1, …) dealt out like cards, queue `i` to instance `i mod N + 1`.
//! Every instance gets ⌊Q/N⌋ or ⌈Q/N⌉ of the Q queues, and every room's
//! five shards are spread over min(N, 5) instances, so one hot room's load
//! is shared too (whole rooms per instance would put all of a hot room on
//! one process). Ordering does not care: a queue is one shard of senders,
//! and whoever consumes it consumes all of it, in order.
//!
//! Every queue is declared `x-single-active-consumer`: of all the
//! processes registered on it RabbitMQ delivers to one, the first
//! registered, and hands the queue to the next one waiting when that one's
//! channel goes (a crash, a kill, a network cut) — its unacked messages
//! first, in order. Owners register at start, standbys a few seconds
//! later, so when the fleet starts together the owners are active and the
//! standbys wait. One process with the default `--instances 1` owns every
//! queue; two such processes make a plain hot standby pair.

use std::time::Duration;

use chatflow_protocol::{Topology, SHARDS_PER_ROOM};
use serde::Serialize;

/// What this process is to a queue it consumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Duty {
    /// Its instance owns the queue: it registers at start.
    Owner,
    /// Another instance owns it: registered after the standby delay, to
    /// take the queue over when the owner's consumer goes, and handed back
    /// (see `queue_consumer`) once the owner registers again.
    Standby,
}

impl Duty {
    pub fn as_str(self) -> &'static str {
        match self {
            Duty::Owner => "owner",
            Duty::Standby => "standby",
        }
    }
}

/// Whether this process also stands by for the queues it does not own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standby {
    /// `--no-standby`: only the owned queues.
    Off,
    /// Register on every other queue this long after start, so owners
    /// started at the same time register first (and are active).
    After(Duration),
}

/// Instance `instance` of `instances` (1-based; the default is 1 of 1,
/// which owns every queue).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub instances: u32,
    pub instance: u32,
    pub standby: Standby,
}

impl Default for Assignment {
    fn default() -> Self {
        Assignment {
            instances: 1,
            instance: 1,
            standby: Standby::After(DEFAULT_STANDBY_DELAY),
        }
    }
}

/// Long enough for owners started together with their standbys to have
/// opened their connections and registered (start-up takes well under a
/// second on one host; a few seconds leaves room for a slow broker),
/// short enough that a standby started alone covers orphaned queues soon.
pub const DEFAULT_STANDBY_DELAY: Duration = Duration::from_secs(5);

/// One queue this process consumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSlot {
    pub room: u32,
    pub shard: u32,
    /// Its name on RabbitMQ (`{ns}.room.{room}.{shard}`).
    pub name: String,
    pub duty: Duty,
    /// The instance (1..=N) that owns it.
    pub owner: u32,
}

impl Assignment {
    /// The instance owning the queue at room-major position `index`.
    pub fn owner_of(&self, index: usize) -> u32 {
        (index % self.instances as usize) as u32 + 1
    }

    /// More than one instance: owners advertise their registrations and
    /// standbys hand queues back (see `owners`).
    pub fn is_shared(&self) -> bool {
        self.instances > 1
    }

    /// The queues of `topology` this instance consumes, in room-major
    /// order: its own, and with a standby every other one.
    pub fn queues(&self, topology: &Topology) -> Vec<QueueSlot> {
        topology
            .shards()
            .enumerate()
            .filter_map(|(index, (room, shard))| {
                let owner = self.owner_of(index);
                let duty = if owner == self.instance {
                    Duty::Owner
                } else if matches!(self.standby, Standby::After(_)) {
                    Duty::Standby
                } else {
                    return None;
                };
                Some(QueueSlot {
                    room,
                    shard,
                    name: topology.queue(room, shard),
                    duty,
                    owner,
                })
            })
            .collect()
    }

    /// How many queues this instance consumes out of `rooms` rooms'.
    pub fn queue_count(&self, rooms: u32) -> usize {
        let all = rooms as usize * SHARDS_PER_ROOM as usize;
        match self.standby {
            Standby::After(_) => all,
            Standby::Off => (0..all)
                .filter(|&i| self.owner_of(i) == self.instance)
                .count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatflow_protocol::Rooms;

    fn of(instances: u32, instance: u32, standby: Standby) -> Assignment {
        Assignment {
            instances,
            instance,
            standby,
        }
    }

    #[test]
    fn owned_shares_are_disjoint_balanced_and_cover_every_queue() {
        let topology = Topology::new("t", Rooms::new(20).unwrap());
        for n in 1..=7 {
            let mut owners = vec![0u32; 100];
            let mut sizes = Vec::new();
            for k in 1..=n {
                let queues = of(n, k, Standby::Off).queues(&topology);
                assert_eq!(queues.len(), of(n, k, Standby::Off).queue_count(20));
                sizes.push(queues.len());
                for q in queues {
                    assert_eq!((q.duty, q.owner), (Duty::Owner, k));
                    let index = (q.room as usize - 1) * 5 + q.shard as usize;
                    owners[index] += 1;
                }
            }
            assert!(owners.iter().all(|&o| o == 1), "N={n}: {owners:?}");
            let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(max - min <= 1, "N={n}: {sizes:?}");
        }
    }

    #[test]
    fn rooms_are_spread_over_instances_and_standbys_cover_the_rest() {
        let topology = Topology::new("t", Rooms::new(2).unwrap());
        let first = of(2, 1, Standby::After(DEFAULT_STANDBY_DELAY)).queues(&topology);
        assert_eq!(first.len(), 10);
        let owned: Vec<(u32, u32)> = (first.iter())
            .filter(|q| q.duty == Duty::Owner)
            .map(|q| (q.room, q.shard))
            .collect();
        // Room 1's shards 0, 2, 4 and room 2's 1, 3: both rooms shared.
        assert_eq!(owned, [(1, 0), (1, 2), (1, 4), (2, 1), (2, 3)]);
        assert!(first
            .iter()
            .filter(|q| q.duty == Duty::Standby)
            .all(|q| q.owner == 2));
        assert_eq!(first[3].name, "t.room.1.3");
        // The default owns everything and stands by for nothing.
        let single = Assignment::default().queues(&topology);
        assert!(single.iter().all(|q| q.duty == Duty::Owner));
        assert!(!Assignment::default().is_shared());
    }
}

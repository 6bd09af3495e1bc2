//! Owner adverts: how a standby learns that the owner of a queue it holds
//! has registered on it again, so it can hand the queue back.
//!
//! Single-active-consumer never hands a queue back by itself: an owner
//! that comes back after its standby took over registers *behind* it and
//! waits. So once a second (the sampler's tick) every instance of a
//! `--instances N` fleet writes, in one pipeline on the sampler's Redis
//! connection, `SET {ns}:owners:{N}:{K} <advert> EX 5` — the owned queues
//! it is registered on, each with the time (Unix ms) of that registration
//! — and reads the other instances' adverts (`MGET`).
//!
//! RabbitMQ keeps a queue's waiting consumers in registration order and
//! activates the first one up, so a standby that is active knows every
//! consumer registered *before* it is gone, and every one registered
//! *after* it is waiting behind it. A standby therefore hands a queue back
//! only to an owner registration newer than its own ([`owner_is_newer`]):
//! never to a killed owner whose advert outlives it (by up to
//! [`ADVERT_TTL`]). Handing back makes a new registration, newer than the
//! owner's, so there is no loop: that owner registration is ahead of it
//! now. Registration times are the processes' clocks, so the fleet's
//! clocks must agree to well within [`CLOCK_MARGIN`] (NTP does); the
//! margin errs towards handing back (a needless hand-back costs a
//! redelivery of what was in flight, once; a missed one leaves the owner
//! idle behind its standby).
//!
//! Everything here is advisory: a missing or stale advert (Redis down, a
//! fleet with different N: other keys) only means the standby keeps the
//! queue, which is safe — it goes on consuming in order.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chatflow_protocol::Topology;
use serde::{Deserialize, Serialize};

/// An advert outlives its instance's last write by this much: five missed
/// ticks, so a slow Redis round trip never makes it flicker.
pub const ADVERT_TTL: Duration = Duration::from_secs(5);

/// How much older than a standby's registration an owner's may look and
/// still count as newer: room for the fleet's clocks to disagree. Far
/// below the default standby delay (5 s), by which a standby registers
/// after owners started with it.
pub const CLOCK_MARGIN: Duration = Duration::from_millis(500);

/// The key of instance `instance` of `instances`. N is in the name, so
/// instances of fleets with different N never read each other.
pub fn key(topology: &Topology, instances: u32, instance: u32) -> String {
    format!("{}:owners:{instances}:{instance}", topology.namespace)
}

/// What one instance advertises.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Advert {
    pub consumer_id: String,
    /// Queue name → when (Unix ms) its owner's live registration was made.
    pub queues: BTreeMap<String, i64>,
}

/// Writes this instance's advert and reads the others' (one pipeline);
/// an undecodable advert is skipped.
pub fn exchange(
    con: &mut redis::Connection,
    mine: (&str, &Advert),
    others: &[String],
) -> redis::RedisResult<Vec<Advert>> {
    let document = serde_json::to_string(mine.1).expect("an advert encodes");
    let mut pipe = redis::pipe();
    pipe.set_ex(mine.0, document, ADVERT_TTL.as_secs()).ignore();
    if others.is_empty() {
        pipe.query::<()>(con)?;
        return Ok(Vec::new());
    }
    pipe.cmd("MGET").arg(others);
    let (found,): (Vec<Option<String>>,) = pipe.query(con)?;
    Ok(found
        .into_iter()
        .flatten()
        .filter_map(|document| serde_json::from_str(&document).ok())
        .collect())
}

/// Deletes this instance's advert (a clean stop; it would expire anyway,
/// and its registrations being gone, nobody hands anything back to it).
pub fn withdraw(con: &mut redis::Connection, key: &str) -> redis::RedisResult<()> {
    redis::cmd("DEL").arg(key).query(con)
}

/// For each queue advertised, its newest owner registration (Unix ms):
/// the newest of several, should two processes claim one instance.
pub fn newest(adverts: &[Advert]) -> HashMap<String, i64> {
    let mut newest = HashMap::new();
    for advert in adverts {
        for (queue, &at) in &advert.queues {
            let entry = newest.entry(queue.clone()).or_insert(at);
            *entry = (*entry).max(at);
        }
    }
    newest
}

/// Whether an owner registration made at `owner_ms` is behind a standby
/// registration made at `standby_ms` (both Unix ms; see [`CLOCK_MARGIN`]).
pub fn owner_is_newer(owner_ms: i64, standby_ms: i64) -> bool {
    owner_ms + CLOCK_MARGIN.as_millis() as i64 > standby_ms
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatflow_protocol::Rooms;

    fn advert(pairs: &[(&str, i64)]) -> Advert {
        Advert {
            consumer_id: "c".to_string(),
            queues: pairs.iter().map(|(q, t)| (q.to_string(), *t)).collect(),
        }
    }

    #[test]
    fn keys_name_the_fleet_size_and_adverts_round_trip() {
        let topology = Topology::new("ns", Rooms::new(1).unwrap());
        assert_eq!(key(&topology, 3, 2), "ns:owners:3:2");
        let a = advert(&[("ns.room.1.0", 1_700_000_000_123)]);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(
            json,
            r#"{"consumerId":"c","queues":{"ns.room.1.0":1700000000123}}"#
        );
        assert_eq!(serde_json::from_str::<Advert>(&json).unwrap(), a);
    }

    #[test]
    fn only_a_newer_owner_registration_gets_a_queue_back() {
        let both = [advert(&[("q", 10), ("r", 7)]), advert(&[("q", 12)])];
        let seen = newest(&both);
        assert_eq!((seen["q"], seen["r"]), (12, 7));
        assert!(newest(&[]).is_empty());
        // The owner registered after the standby: behind it, hand back.
        assert!(owner_is_newer(5_000, 4_000));
        // Within the clocks' margin: hand back (a needless one is cheap).
        assert!(owner_is_newer(4_000, 4_400));
        // Well before: it would have been ahead, so it is gone (a killed
        // owner's advert); and after a hand-back, the standby's new
        // registration is newer than the owner's: no second one.
        assert!(!owner_is_newer(1_000, 5_000));
    }
}

//! Owner adverts: how a standby learns that the owner of a queue it holds
//! has registered on it again, so it can hand the queue back.
//!
//! Single-active-consumer never hands a queue back by itself: an owner
//! that comes back after its standby took over registers *behind* it and
//! waits. So once a second (the sampler's tick) every instance of a
//! `--instances N` fleet writes, in one pipeline on the sampler's Redis
//! connection, `SET {ns}:owners:{N}:{K} <advert> EX 5` — the owned queues
//! it is registered on, each with a token naming that registration
//! (`{consumer id}/{channel epoch}`) — and reads the other instances'
//! adverts (`MGET`). A standby hands a queue back only for a registration
//! it first saw *after* its own registration on that queue began
//! ([`Sightings`]): an owner registration older than the standby's would
//! be ahead of it in RabbitMQ's queue of waiting consumers, so a standby
//! that is active despite it knows that registration is gone (a killed
//! owner's advert outlives it by up to [`ADVERT_TTL`]). And since handing
//! back makes a new registration, each owner registration is handed back
//! to at most once per standby, never in a loop.
//!
//! Everything here is advisory: a missing or stale advert (Redis down, a
//! fleet with different N: other keys) only means the standby keeps the
//! queue, which is safe — it goes on consuming in order.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chatflow_protocol::Topology;
use serde::{Deserialize, Serialize};

/// An advert outlives its instance's last write by this much: five missed
/// ticks, so a slow Redis round trip never makes it flicker.
pub const ADVERT_TTL: Duration = Duration::from_secs(5);

/// A token no longer advertised is forgotten after this long (a token that
/// comes back after a blip keeps its first sighting, so the blip does not
/// make it look new).
pub const FORGET_AFTER: Duration = Duration::from_secs(60);

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
    /// Queue name → the token of its owner's live registration.
    pub queues: BTreeMap<String, String>,
}

/// The token of a registration: unique in the fleet (consumer ids are).
pub fn token(consumer_id: &str, epoch: u64) -> String {
    format!("{consumer_id}/{epoch}")
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

/// Deletes this instance's advert (a clean stop: its standbys need not
/// wait for it to expire — though they hand nothing back to it anyway,
/// its registrations being gone).
pub fn withdraw(con: &mut redis::Connection, key: &str) -> redis::RedisResult<()> {
    redis::cmd("DEL").arg(key).query(con)
}

/// When each advertised owner registration was first seen here.
#[derive(Default)]
pub struct Sightings {
    /// Queue name → token → (first seen, last seen).
    queues: HashMap<String, HashMap<String, (Instant, Instant)>>,
}

impl Sightings {
    /// Takes in one tick's adverts at `now`, and answers, for each queue
    /// advertised, when its newest advertised registration was first seen.
    pub fn observe(&mut self, now: Instant, adverts: &[Advert]) -> HashMap<String, Instant> {
        // Forget first, so a token silent for long is new when it returns.
        for tokens in self.queues.values_mut() {
            tokens.retain(|_, (_, last)| now.duration_since(*last) < FORGET_AFTER);
        }
        self.queues.retain(|_, tokens| !tokens.is_empty());
        for advert in adverts {
            for (queue, token) in &advert.queues {
                let tokens = self.queues.entry(queue.clone()).or_default();
                tokens.entry(token.clone()).or_insert((now, now)).1 = now;
            }
        }
        let mut newest = HashMap::new();
        for (queue, tokens) in &self.queues {
            let current = tokens
                .values()
                .filter(|(_, last)| *last == now)
                .map(|(first, _)| *first)
                .max();
            if let Some(first) = current {
                newest.insert(queue.clone(), first);
            }
        }
        newest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatflow_protocol::Rooms;

    fn advert(pairs: &[(&str, &str)]) -> Advert {
        Advert {
            consumer_id: "c".to_string(),
            queues: pairs
                .iter()
                .map(|(q, t)| (q.to_string(), t.to_string()))
                .collect(),
        }
    }

    #[test]
    fn keys_name_the_fleet_size_and_adverts_round_trip() {
        let topology = Topology::new("ns", Rooms::new(1).unwrap());
        assert_eq!(key(&topology, 3, 2), "ns:owners:3:2");
        assert_eq!(token("host-1", 7), "host-1/7");
        let a = advert(&[("ns.room.1.0", "host-1/7")]);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(
            json,
            r#"{"consumerId":"c","queues":{"ns.room.1.0":"host-1/7"}}"#
        );
        assert_eq!(serde_json::from_str::<Advert>(&json).unwrap(), a);
    }

    #[test]
    fn a_registration_keeps_its_first_sighting_until_it_is_gone_for_long() {
        let mut s = Sightings::default();
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let seen = s.observe(at(0), &[advert(&[("q", "a/1")])]);
        assert_eq!(seen["q"], at(0));
        // Still the same registration: still first seen at 0.
        assert_eq!(s.observe(at(1), &[advert(&[("q", "a/1")])])["q"], at(0));
        // Not advertised this tick (a Redis blip): nothing to hand back to.
        assert!(s.observe(at(2), &[]).is_empty());
        // Back: the blip did not make it new.
        assert_eq!(s.observe(at(3), &[advert(&[("q", "a/1")])])["q"], at(0));
        // A new registration (the owner restarted) is new.
        assert_eq!(s.observe(at(4), &[advert(&[("q", "a/2")])])["q"], at(4));
        // Two processes claiming one instance, alternating: the newest
        // first sighting among those advertised now, stable.
        let both = [advert(&[("q", "a/2")]), advert(&[("q", "b/1")])];
        assert_eq!(s.observe(at(5), &both)["q"], at(5));
        assert_eq!(s.observe(at(6), &both[..1])["q"], at(4));
        assert_eq!(s.observe(at(7), &both[1..])["q"], at(5));
        // Forgotten once silent for FORGET_AFTER: seen anew after that.
        let late = 8 + FORGET_AFTER.as_secs();
        assert_eq!(s.observe(at(late), &both[..1])["q"], at(late));
    }
}

//! Message ids: UUIDv7 values made without coordination between servers.
//!
//! Layout (RFC 9562): 48 bits of Unix milliseconds, the version (7), a 12-bit
//! per-generator sequence in `rand_a`, the variant, and 62 bits identifying
//! the generator instance in `rand_b`. Ids from one generator strictly
//! increase; ids from different generators differ in their 62-bit instance
//! (drawn at random, so two of a fleet's generators collide with probability
//! about n²/2⁶³). They sort by time, index well (16 bytes, `uuid` in
//! PostgreSQL, appended in near order) and cost no syscall or lock to make.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A message id (UUIDv7). Displays as the usual hyphenated lowercase form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub u128);

impl MessageId {
    /// The Unix milliseconds embedded in the id.
    pub fn unix_ms(self) -> u64 {
        (self.0 >> 80) as u64
    }

    pub fn as_uuid(self) -> uuid::Uuid {
        uuid::Uuid::from_u128(self.0)
    }

    /// Writes the 36-byte hyphenated form into `buf` without allocating.
    pub fn encode(self, buf: &mut [u8; 36]) -> &str {
        self.as_uuid().hyphenated().encode_lower(buf)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 36];
        f.write_str(self.encode(&mut buf))
    }
}

impl FromStr for MessageId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(|u| MessageId(u.as_u128()))
    }
}

impl Serialize for MessageId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 36];
        s.serialize_str(self.encode(&mut buf))
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// Makes ids for one thread. Each worker owns one; it is not shared.
#[derive(Debug)]
pub struct IdGenerator {
    /// 62 random bits that tell this generator's ids from every other's.
    instance: u64,
    last_ms: u64,
    sequence: u16,
}

const SEQUENCE_MAX: u16 = 0x0FFF;

impl IdGenerator {
    /// A generator with a fresh random instance.
    pub fn new() -> Self {
        Self::with_instance(random_u64())
    }

    /// A generator with a chosen instance (tests; deterministic ids).
    pub fn with_instance(instance: u64) -> Self {
        IdGenerator {
            instance: instance & ((1 << 62) - 1),
            last_ms: 0,
            sequence: 0,
        }
    }

    /// The next id at wall-clock time `now_ms`. Strictly greater than every
    /// id this generator made before, even if the clock steps back or more
    /// than 4,096 ids are made in one millisecond (then the embedded time
    /// runs slightly ahead until the clock catches up).
    pub fn next_id(&mut self, now_ms: i64) -> MessageId {
        let now = now_ms.max(0) as u64 & ((1 << 48) - 1);
        if now > self.last_ms {
            self.last_ms = now;
            self.sequence = 0;
        } else if self.sequence < SEQUENCE_MAX {
            self.sequence += 1;
        } else {
            self.last_ms += 1;
            self.sequence = 0;
        }
        let value = (u128::from(self.last_ms) << 80)
            | (0x7 << 76)
            | (u128::from(self.sequence) << 64)
            | (0b10 << 62)
            | u128::from(self.instance);
        MessageId(value)
    }
}

impl Default for IdGenerator {
    fn default() -> Self {
        Self::new()
    }
}

/// 64 bits from the standard library's randomly keyed SipHash (keys come from
/// the OS once per thread), mixed with a process-wide counter, the time and
/// the pid so generators made in the same instant still differ.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_version_7_with_the_rfc_variant() {
        let id = IdGenerator::new().next_id(1_795_744_800_123);
        let u = id.as_uuid();
        assert_eq!(u.get_version_num(), 7);
        assert_eq!(u.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(id.unix_ms(), 1_795_744_800_123);
    }

    #[test]
    fn ids_strictly_increase_within_a_millisecond_and_past_the_sequence() {
        let mut g = IdGenerator::with_instance(42);
        let mut last = g.next_id(1000);
        for _ in 0..10_000 {
            let next = g.next_id(1000);
            assert!(next > last);
            last = next;
        }
        // The clock stepping back does not break the order either.
        assert!(g.next_id(10) > last);
    }

    #[test]
    fn generators_do_not_collide() {
        let mut seen = HashSet::new();
        for _ in 0..64 {
            let mut g = IdGenerator::new();
            for _ in 0..100 {
                assert!(seen.insert(g.next_id(5)));
            }
        }
    }

    #[test]
    fn text_round_trip() {
        let id = IdGenerator::new().next_id(1_795_744_800_123);
        let text = id.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(text.parse::<MessageId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<MessageId>(&json).unwrap(), id);
    }
}

//! The rows, in time order: a [`Generator`] holds the model (population,
//! timeline, servers) built from a [`Dataset`]; [`Generator::rows`] walks
//! the timeline second by second and makes each second's messages.
//!
//! A message: its millisecond is uniform within its second (a second's
//! messages are sorted, so rows come in time order); its user by activity;
//! its room the burst's (if one is under way, with the burst's share),
//! else the user's ([`Population::room_of`]); its type TEXT 90%, JOIN 5%,
//! LEAVE 5% (the load client's mix); its server one of [`SERVERS`] fake
//! servers with [`WORKERS_PER_SERVER`] id generators each, ids made by
//! `chatflow_protocol::IdGenerator` exactly as a server's worker makes
//! them (UUIDv7 of the server timestamp's millisecond, instance bits from
//! the seed); the client timestamp 1 + Exp(4 ms) before the server's
//! (at most 250 ms: a sender's clock a little behind, plus the trip).

use chatflow_protocol::IdGenerator;

use super::population::Population;
use super::rng::{mix, Rng};
use super::text;
use super::timeline::{bursts, Burst, Seconds, Timeline};
use super::Dataset;
use crate::row::{unix_ms, Row};

/// Fake servers (`ip-10-0-1-N-PID`, the shape of a server's default id).
pub const SERVERS: usize = 4;
pub const WORKERS_PER_SERVER: usize = 2;
const TEXT_SHARE: f64 = 0.90;
const JOIN_SHARE: f64 = 0.05;
const CLIENT_DELAY_MEAN_MS: f64 = 4.0;
const CLIENT_DELAY_MAX_MS: i64 = 250;

/// The random streams of one dataset, one per aspect.
mod stream {
    pub const POPULATION: u64 = 1;
    pub const BURSTS: u64 = 2;
    pub const INTENSITY: u64 = 3;
    pub const MESSAGES: u64 = 4;
    pub const TEXT: u64 = 5;
    pub const SERVERS: u64 = 6;
}

/// The model of one dataset.
#[derive(Debug)]
pub struct Generator {
    dataset: Dataset,
    population: Population,
    timeline: Timeline,
    servers: Vec<String>,
}

impl Generator {
    /// Builds the model (for 100,000 users, a few milliseconds).
    pub fn new(dataset: &Dataset) -> Generator {
        let seed = dataset.seed;
        let population = Population::new(
            dataset.users,
            dataset.rooms,
            dataset.user_skew,
            &mut Rng::stream(seed, stream::POPULATION),
        );
        let bursts = bursts(
            dataset.seconds,
            |rng| population.any_room(rng),
            &mut Rng::stream(seed, stream::BURSTS),
        );
        let timeline = Timeline::new(
            dataset.start_unix_s(),
            dataset.seconds,
            dataset.messages,
            bursts,
            Rng::stream(seed, stream::INTENSITY),
        );
        let mut rng = Rng::stream(seed, stream::SERVERS);
        let servers = (0..SERVERS)
            .map(|i| format!("ip-10-0-1-{}-{}", 11 + i, 1000 + rng.below(60_000)))
            .collect();
        Generator {
            dataset: dataset.clone(),
            population,
            timeline,
            servers,
        }
    }

    pub fn population(&self) -> &Population {
        &self.population
    }

    pub fn bursts(&self) -> &[Burst] {
        self.timeline.bursts()
    }

    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// Every row, in time order.
    pub fn rows(&self) -> Rows<'_> {
        let seed = self.dataset.seed;
        Rows {
            generator: self,
            seconds: self.timeline.seconds(),
            rng: Rng::stream(seed, stream::MESSAGES),
            text_rng: Rng::stream(seed, stream::TEXT),
            ids: (0..SERVERS * WORKERS_PER_SERVER)
                .map(|i| IdGenerator::with_instance(mix(seed ^ mix(0x1D5 + i as u64))))
                .collect(),
            offsets: Vec::new(),
            next: 0,
            second_ms: 0,
            burst: None,
        }
    }
}

/// The iterator of [`Generator::rows`].
pub struct Rows<'a> {
    generator: &'a Generator,
    seconds: Seconds<'a>,
    rng: Rng,
    text_rng: Rng,
    ids: Vec<IdGenerator>,
    /// The current second's milliseconds, sorted.
    offsets: Vec<u16>,
    next: usize,
    second_ms: i64,
    burst: Option<&'a Burst>,
}

impl Rows<'_> {
    /// Moves to the next second with messages; false at the end.
    fn next_second(&mut self) -> bool {
        let Some((second, count, burst)) = self.seconds.next() else {
            return false;
        };
        self.offsets.clear();
        self.offsets
            .extend((0..count).map(|_| self.rng.below(1000) as u16));
        self.offsets.sort_unstable();
        self.next = 0;
        self.second_ms = (self.generator.dataset.start_unix_s() + second as i64) * 1000;
        self.burst = burst;
        true
    }
}

impl Iterator for Rows<'_> {
    type Item = Row;

    fn next(&mut self) -> Option<Row> {
        while self.next == self.offsets.len() {
            if !self.next_second() {
                return None;
            }
        }
        let ms = self.second_ms + i64::from(self.offsets[self.next]);
        self.next += 1;
        let rng = &mut self.rng;
        let population = &self.generator.population;
        let user = population.user(rng);
        let room = match self.burst {
            Some(b) if rng.unit() < b.share() => b.room,
            _ => population.room_of(user, rng),
        };
        let kind = rng.unit();
        let (message_type, message) = if kind < TEXT_SHARE {
            ("TEXT", text::text(&mut self.text_rng))
        } else if kind < TEXT_SHARE + JOIN_SHARE {
            ("JOIN", text::join_text(&mut self.text_rng).to_string())
        } else {
            ("LEAVE", text::leave_text(&mut self.text_rng).to_string())
        };
        let generator = rng.below(self.ids.len() as u64) as usize;
        let id = self.ids[generator].next_id(ms);
        let delay = 1 + (rng.exponential(CLIENT_DELAY_MEAN_MS) as i64).min(CLIENT_DELAY_MAX_MS - 1);
        Some(Row {
            message_id: id.as_uuid(),
            room_id: room,
            user_id: user,
            username: format!("user{user}"),
            message,
            message_type,
            client_timestamp: unix_ms(ms - delay),
            server_timestamp: unix_ms(ms),
            server_id: self.generator.servers[generator / WORKERS_PER_SERVER].clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::row::unix_micros;

    fn dataset(messages: u64, seed: u64) -> Dataset {
        Dataset {
            messages,
            seed,
            ..Dataset::default()
        }
    }

    #[test]
    fn rows_are_time_ordered_unique_and_inside_the_window() {
        let d = dataset(50_000, 1);
        let g = Generator::new(&d);
        let (start, end) = (d.start_unix_s() * 1_000_000, d.end_unix_s() * 1_000_000);
        let mut last = i64::MIN;
        let mut ids = HashSet::new();
        let mut n = 0;
        for row in g.rows() {
            let t = unix_micros(row.server_timestamp);
            assert!(t >= last && t >= start && t < end);
            last = t;
            let lag = t - unix_micros(row.client_timestamp);
            assert!((1_000..=250_000).contains(&lag), "{lag}");
            assert!(ids.insert(row.message_id));
            // The id carries the server timestamp's millisecond, as a server's.
            let ms = (row.message_id.as_u128() >> 80) as i64;
            assert_eq!(ms * 1000, t);
            assert_eq!(row.message_id.get_version_num(), 7);
            assert_eq!(row.username, format!("user{}", row.user_id));
            assert!(g.servers().contains(&row.server_id));
            n += 1;
        }
        assert_eq!(n, 50_000);
    }

    #[test]
    fn the_same_seed_makes_the_same_rows_and_another_seed_others() {
        let a: Vec<Row> = Generator::new(&dataset(2_000, 1)).rows().collect();
        let b: Vec<Row> = Generator::new(&dataset(2_000, 1)).rows().collect();
        let c: Vec<Row> = Generator::new(&dataset(2_000, 2)).rows().collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn the_mix_is_as_documented() {
        let d = dataset(200_000, 3);
        let g = Generator::new(&d);
        let mut types: HashMap<&str, u64> = HashMap::new();
        let mut users: HashMap<i32, u64> = HashMap::new();
        for row in g.rows() {
            *types.entry(row.message_type).or_default() += 1;
            *users.entry(row.user_id).or_default() += 1;
        }
        let share = |k: &str| types[k] as f64 / 200_000.0;
        assert!((share("TEXT") - 0.90).abs() < 0.005);
        assert!((share("JOIN") - 0.05).abs() < 0.003);
        assert!((share("LEAVE") - 0.05).abs() < 0.003);
        let top = g.population().user_of_rank(0);
        let top_share = users[&top] as f64 / 200_000.0;
        assert!(
            (top_share - g.population().top_user_share()).abs() < 0.004,
            "{top_share}"
        );
    }
}

//! Who posts and where: users with a Zipf-like activity, rooms with a
//! milder one, and each user's favourite rooms. Built once from the seed
//! (deterministic), then sampled per message.
//!
//! - **Users**: the activity of the user of rank `k` (1-based) is
//!   `k^-s` ([`Dataset::user_skew`](super::Dataset), 0.9 by default),
//!   ranks assigned to user ids in a shuffled order, so the busiest user
//!   is not user 1 and busy users are spread over the id range. With
//!   100,000 users and s = 0.9 the busiest posts ~4.5% of all messages,
//!   the top 1% ~47%, and the median user ~2.7 per million messages.
//! - **Rooms**: popularity `k^-0.6` over a shuffled room order (20 rooms:
//!   the busiest ~6× the quietest).
//! - **Favourites**: every user has 1 (50%), 2 (30%) or 3 (20%) favourite
//!   rooms, drawn by room popularity; [`FAVOURITE_SHARE`] (85%) of their
//!   messages outside bursts go to them (weighted 60/25/15 by rank), the
//!   rest to any room by popularity (so ~87% in favourites, ~82% once
//!   bursts take theirs; see `timeline`).

use super::rng::Rng;

/// Room popularity exponent: busy rooms, but no room is dead.
pub const ROOM_SKEW: f64 = 0.6;
/// The share of a user's messages that go to their favourite rooms.
pub const FAVOURITE_SHARE: f64 = 0.85;
/// How many favourite rooms a user has: 1, 2 or 3 with these weights.
const FAVOURITE_COUNTS: [f64; 3] = [0.5, 0.3, 0.2];
/// The weight of a user's first, second and third favourite room.
const FAVOURITE_WEIGHTS: [f64; 3] = [0.60, 0.25, 0.15];

/// Draws an index with probability proportional to its weight: binary
/// search over the cumulative weights (17 steps for 100,000 users).
#[derive(Clone, Debug)]
pub struct Weighted {
    cumulative: Vec<f64>,
}

impl Weighted {
    pub fn new(weights: impl IntoIterator<Item = f64>) -> Weighted {
        let mut total = 0.0;
        let cumulative = weights
            .into_iter()
            .map(|w| {
                total += w;
                total
            })
            .collect();
        Weighted { cumulative }
    }

    /// `k^-s` for `k` in `1..=n`.
    pub fn zipf(n: usize, s: f64) -> Weighted {
        Weighted::new((1..=n).map(|k| (k as f64).powf(-s)))
    }

    pub fn total(&self) -> f64 {
        self.cumulative.last().copied().unwrap_or(0.0)
    }

    /// The probability of index `i`.
    pub fn share(&self, i: usize) -> f64 {
        let below = if i == 0 { 0.0 } else { self.cumulative[i - 1] };
        (self.cumulative[i] - below) / self.total()
    }

    pub fn sample(&self, rng: &mut Rng) -> usize {
        let target = rng.unit() * self.total();
        self.cumulative
            .partition_point(|&c| c <= target)
            .min(self.cumulative.len() - 1)
    }
}

/// A random permutation of `0..n` (Fisher–Yates).
fn shuffled(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    order
}

/// One user's favourite rooms (the first `len` of `rooms`).
#[derive(Clone, Copy, Debug)]
struct Favourites {
    rooms: [i32; 3],
    len: u8,
}

/// Everyone who posts, and where they post.
#[derive(Debug)]
pub struct Population {
    /// Activity by rank.
    users: Weighted,
    /// User id of each rank.
    user_of_rank: Vec<i32>,
    /// Popularity by rank.
    rooms: Weighted,
    /// Room id of each rank.
    room_of_rank: Vec<i32>,
    /// Indexed by user id (0 unused).
    favourites: Vec<Favourites>,
    favourite_counts: Weighted,
    favourite_weights: [Weighted; 3],
}

impl Population {
    /// Users `1..=users` and rooms `1..=rooms`.
    pub fn new(users: u32, rooms: u32, user_skew: f64, rng: &mut Rng) -> Population {
        let user_of_rank = shuffled(users as usize, rng)
            .into_iter()
            .map(|i| i as i32 + 1)
            .collect();
        let room_of_rank = shuffled(rooms as usize, rng)
            .into_iter()
            .map(|i| i as i32 + 1)
            .collect();
        let mut population = Population {
            users: Weighted::zipf(users as usize, user_skew),
            user_of_rank,
            rooms: Weighted::zipf(rooms as usize, ROOM_SKEW),
            room_of_rank,
            favourites: Vec::with_capacity(users as usize + 1),
            favourite_counts: Weighted::new(FAVOURITE_COUNTS),
            favourite_weights: [1, 2, 3].map(|n| Weighted::new(FAVOURITE_WEIGHTS[..n].to_vec())),
        };
        population.favourites.push(Favourites {
            rooms: [0; 3],
            len: 0,
        });
        for _ in 1..=users {
            let favourites = population.draw_favourites(rng);
            population.favourites.push(favourites);
        }
        population
    }

    fn draw_favourites(&self, rng: &mut Rng) -> Favourites {
        let wanted = (self.favourite_counts.sample(rng) + 1).min(self.room_of_rank.len());
        let mut f = Favourites {
            rooms: [0; 3],
            len: 0,
        };
        while usize::from(f.len) < wanted {
            let room = self.any_room(rng);
            if !f.rooms[..usize::from(f.len)].contains(&room) {
                f.rooms[usize::from(f.len)] = room;
                f.len += 1;
            }
        }
        f
    }

    /// A user, by activity.
    pub fn user(&self, rng: &mut Rng) -> i32 {
        self.user_of_rank[self.users.sample(rng)]
    }

    /// A room, by popularity.
    pub fn any_room(&self, rng: &mut Rng) -> i32 {
        self.room_of_rank[self.rooms.sample(rng)]
    }

    /// Where `user` posts next: mostly a favourite, sometimes anywhere.
    pub fn room_of(&self, user: i32, rng: &mut Rng) -> i32 {
        let f = &self.favourites[user as usize];
        if rng.unit() < FAVOURITE_SHARE {
            let weights = &self.favourite_weights[usize::from(f.len) - 1];
            f.rooms[weights.sample(rng)]
        } else {
            self.any_room(rng)
        }
    }

    /// The busiest user's expected share of all messages (bursts aside).
    pub fn top_user_share(&self) -> f64 {
        self.users.share(0)
    }

    /// The user of activity rank `rank` (0 = busiest).
    pub fn user_of_rank(&self, rank: usize) -> i32 {
        self.user_of_rank[rank]
    }

    /// The favourite rooms of `user`.
    pub fn favourites(&self, user: i32) -> &[i32] {
        let f = &self.favourites[user as usize];
        &f.rooms[..usize::from(f.len)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_shares_match_the_documented_ones() {
        let users = Weighted::zipf(100_000, 0.9);
        let top = users.share(0);
        assert!((top - 0.0451).abs() < 0.0005, "{top}");
        let top_percent: f64 = (0..1000).map(|i| users.share(i)).sum();
        assert!((top_percent - 0.474).abs() < 0.005, "{top_percent}");
        let rooms = Weighted::zipf(20, ROOM_SKEW);
        let ratio = rooms.share(0) / rooms.share(19);
        assert!((5.5..6.5).contains(&ratio), "{ratio}");
    }

    #[test]
    fn samples_follow_the_weights() {
        let w = Weighted::new([1.0, 0.0, 3.0]);
        let mut rng = Rng::stream(1, 1);
        let mut counts = [0u32; 3];
        for _ in 0..40_000 {
            counts[w.sample(&mut rng)] += 1;
        }
        assert_eq!(counts[1], 0, "a zero weight is never drawn");
        let ratio = f64::from(counts[2]) / f64::from(counts[0]);
        assert!((2.8..3.2).contains(&ratio), "{counts:?}");
    }

    #[test]
    fn users_and_rooms_are_permutations_and_favourites_distinct() {
        let mut rng = Rng::stream(3, 0);
        let p = Population::new(1000, 20, 0.9, &mut rng);
        let mut ids: Vec<i32> = (0..1000).map(|r| p.user_of_rank(r)).collect();
        ids.sort_unstable();
        assert_eq!(ids, (1..=1000).collect::<Vec<_>>());
        for user in 1..=1000 {
            let f = p.favourites(user);
            assert!((1..=3).contains(&f.len()));
            assert!(f.iter().all(|r| (1..=20).contains(r)));
            let mut sorted = f.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), f.len());
        }
        // A user with one room posts there about 85% + 15%/popularity.
        let single = (1..=1000).find(|&u| p.favourites(u).len() == 1).unwrap();
        let room = p.favourites(single)[0];
        let hits = (0..10_000)
            .filter(|_| p.room_of(single, &mut rng) == room)
            .count();
        assert!(hits > 8_500 && hits < 9_800, "{hits}");
    }
}

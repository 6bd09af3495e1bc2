//! The generator's pseudo-random numbers: xoshiro256** seeded through
//! SplitMix64, written out here so a seed gives the same rows with every
//! version of every dependency (`rand`'s `SmallRng` promises neither its
//! algorithm nor its output across releases).
//!
//! Each aspect of the data draws from its own stream ([`Rng::stream`]), so
//! changing how one is drawn (say, text lengths) leaves the others (users,
//! times) as they were.

/// SplitMix64's finaliser: a strong 64-bit mix, used to seed and to derive
/// values from (seed, index) pairs.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256** (Blackman and Vigna): fast, 256 bits of state, good
/// statistical quality for simulation.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// The generator of stream `stream` of `seed`.
    pub fn stream(seed: u64, stream: u64) -> Rng {
        let mut x = mix(seed) ^ mix(stream.wrapping_add(0x5EED));
        let mut s = [0u64; 4];
        for word in &mut s {
            x = mix(x);
            *word = x;
        }
        // The all-zero state is the one xoshiro cannot leave.
        if s == [0; 4] {
            s[0] = 1;
        }
        Rng { s }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)`, 53 bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub fn between(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in `0..n` (`n > 0`). Multiply-shift: the bias is below
    /// n / 2^64, nothing next to the data's own noise.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Exponentially distributed with this mean.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }

    /// Standard normal (Box–Muller; one of the pair is dropped, which
    /// costs a little speed and keeps no hidden state).
    pub fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unit();
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4)
            .scan(Rng::stream(1, 0), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..4)
            .scan(Rng::stream(1, 0), |r, _| Some(r.next_u64()))
            .collect();
        let c: Vec<u64> = (0..4)
            .scan(Rng::stream(1, 1), |r, _| Some(r.next_u64()))
            .collect();
        let d: Vec<u64> = (0..4)
            .scan(Rng::stream(2, 0), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn draws_stay_in_their_ranges_with_the_right_means() {
        let mut r = Rng::stream(7, 3);
        let n = 200_000;
        let (mut unit, mut exp, mut norm, mut norm2) = (0.0, 0.0, 0.0, 0.0);
        for _ in 0..n {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            unit += u;
            assert!(r.below(20) < 20);
            exp += r.exponential(4.0);
            let z = r.normal();
            norm += z;
            norm2 += z * z;
        }
        let n = f64::from(n);
        assert!((unit / n - 0.5).abs() < 0.01);
        assert!((exp / n - 4.0).abs() < 0.1);
        assert!((norm / n).abs() < 0.01);
        assert!((norm2 / n - 1.0).abs() < 0.02);
    }
}

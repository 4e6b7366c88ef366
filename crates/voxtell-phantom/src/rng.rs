//! A small deterministic pseudo-random number generator.
//!
//! [`Rng`] is xoshiro256** (Blackman & Vigna) seeded through SplitMix64. [`Rng::stream`] derives
//! an independent generator from a seed and a list of keys (e.g. `[epoch, iteration, sample]`),
//! so every sample of every batch has its own stream: what a sample contains depends only on its
//! keys, never on which thread made it or in which order. Everything here is plain integer and
//! IEEE arithmetic, so the streams are identical on every platform and every run.

/// SplitMix64's increment (the golden ratio in 64-bit fixed point).
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function: a bijective 64-bit mixer.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A deterministic generator (xoshiro256**). Not cryptographic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
    /// The second value of the last Box–Muller pair, not yet handed out.
    spare_normal: Option<u64>,
}

impl Rng {
    /// A generator seeded from one 64-bit value (the state is filled by SplitMix64).
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(GOLDEN);
            mix64(x)
        };
        let mut s = [next(), next(), next(), next()];
        if s == [0; 4] {
            // The all-zero state is the one xoshiro cannot leave; SplitMix64 never yields four
            // zeros in a row, but keep the guarantee explicit.
            s[0] = GOLDEN;
        }
        Rng { s, spare_normal: None }
    }

    /// An independent stream for `seed` and `keys` (e.g. `[epoch, iteration, sample_index]`).
    /// Different key lists (including lists of different lengths) give unrelated streams.
    pub fn stream(seed: u64, keys: &[u64]) -> Self {
        let mut h = mix64(seed ^ 0x5851_f42d_4c95_7f2d);
        for (i, &k) in keys.iter().enumerate() {
            h = mix64(h ^ mix64(k.wrapping_add(GOLDEN.wrapping_mul(i as u64 + 1))));
        }
        h = mix64(h ^ (keys.len() as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
        Rng::new(h)
    }

    /// A child stream keyed by `key`, derived from (and advancing) this generator.
    pub fn fork(&mut self, key: u64) -> Rng {
        let seed = self.next_u64();
        Rng::stream(seed, &[key])
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// The next 32 random bits (the high half of [`Rng::next_u64`]).
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[0, 1)` with 24 random bits.
    pub fn uniform_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// Uniform in `[lo, hi)` (`lo` when the range is empty).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        let u = self.uniform();
        if hi > lo { lo + (hi - lo) * u } else { lo }
    }

    /// Uniform in `[lo, hi)` as f32 (`lo` when the range is empty).
    pub fn range_f32(&mut self, lo: f32, hi: f32) -> f32 {
        let u = self.uniform_f32();
        if hi > lo { lo + (hi - lo) * u } else { lo }
    }

    /// Uniform integer in `[0, n)`, without modulo bias (Lemire's method); 0 when `n == 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Uniform index in `[0, n)`; 0 when `n == 0`.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// Uniform integer in the inclusive range `[lo, hi]` (`lo` when `hi < lo`).
    pub fn int_inclusive(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        let span = hi.abs_diff(lo);
        if span == u64::MAX {
            return self.next_u64() as i64;
        }
        lo.wrapping_add(self.below(span + 1) as i64)
    }

    /// `true` with probability `p` (always `false` for `p <= 0`, always `true` for `p >= 1`).
    pub fn bernoulli(&mut self, p: f64) -> bool {
        // Always draw, so that the stream position does not depend on p.
        let u = self.uniform();
        u < p
    }

    /// A standard normal deviate (Box–Muller; the second value of each pair is kept for the next
    /// call).
    pub fn normal(&mut self) -> f64 {
        if let Some(bits) = self.spare_normal.take() {
            return f64::from_bits(bits);
        }
        // u1 in (0, 1] so that ln(u1) is finite.
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        self.spare_normal = Some((r * theta.sin()).to_bits());
        r * theta.cos()
    }

    /// A normal deviate with mean `mean` and standard deviation `std`.
    pub fn normal_with(&mut self, mean: f64, std: f64) -> f64 {
        mean + std * self.normal()
    }

    /// A uniformly chosen element, `None` for an empty slice.
    pub fn choose<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() { None } else { items.get(self.index(items.len())) }
    }

    /// Shuffle in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.index(i + 1);
            items.swap(i, j);
        }
    }

    /// `k` distinct indices out of `0..n`, uniformly, in random order (all `n` when `k >= n`).
    pub fn sample_indices(&mut self, n: usize, k: usize) -> Vec<usize> {
        let k = k.min(n);
        let mut idx: Vec<usize> = (0..n).collect();
        // Partial Fisher–Yates: the first k positions.
        for i in 0..k {
            let j = i + self.index(n - i);
            idx.swap(i, j);
        }
        idx.truncate(k);
        idx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..8)
            .map({
                let mut r = Rng::stream(7, &[1, 2, 3]);
                move |_| r.next_u64()
            })
            .collect();
        let mut r = Rng::stream(7, &[1, 2, 3]);
        let b: Vec<u64> = (0..8).map(|_| r.next_u64()).collect();
        assert_eq!(a, b);
        let firsts: Vec<u64> = [
            Rng::stream(7, &[1, 2, 4]),
            Rng::stream(8, &[1, 2, 3]),
            Rng::stream(7, &[1, 2]),
            Rng::stream(7, &[1, 2, 3, 0]),
            Rng::stream(7, &[2, 1, 3]),
            Rng::stream(7, &[]),
        ]
        .into_iter()
        .map(|mut r| r.next_u64())
        .collect();
        for f in &firsts {
            assert_ne!(*f, a[0]);
        }
        let mut sorted = firsts.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), firsts.len());
    }

    #[test]
    fn known_xoshiro_sequence() {
        // Reference: xoshiro256** with state [1, 2, 3, 4] (from the authors' C code).
        let mut r = Rng { s: [1, 2, 3, 4], spare_normal: None };
        let expect = [11520u64, 0, 1509978240, 1215971899390074240];
        for e in expect {
            assert_eq!(r.next_u64(), e);
        }
    }

    #[test]
    fn uniform_moments_and_ranges() {
        let mut r = Rng::new(1);
        let n = 200_000;
        let mut sum = 0.0;
        for _ in 0..n {
            let u = r.uniform();
            assert!((0.0..1.0).contains(&u));
            sum += u;
        }
        assert!((sum / n as f64 - 0.5).abs() < 0.005);
        for _ in 0..1000 {
            let x = r.range(-2.0, 3.0);
            assert!((-2.0..3.0).contains(&x));
            let f = r.range_f32(0.5, 1.0);
            assert!((0.5..1.0).contains(&f));
            let i = r.int_inclusive(-3, 3);
            assert!((-3..=3).contains(&i));
            assert!(r.below(7) < 7);
        }
        assert_eq!(r.below(0), 0);
        assert_eq!(r.int_inclusive(5, 5), 5);
    }

    #[test]
    fn bernoulli_and_normal_statistics() {
        let mut r = Rng::new(2);
        let n = 100_000;
        let hits = (0..n).filter(|_| r.bernoulli(0.3)).count();
        assert!((hits as f64 / n as f64 - 0.3).abs() < 0.01);
        assert!(!r.bernoulli(0.0));
        assert!(r.bernoulli(1.0));
        let xs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.02 && (var - 1.0).abs() < 0.02, "{mean} {var}");
    }

    #[test]
    fn choose_shuffle_and_sample_indices() {
        let mut r = Rng::new(3);
        assert!(r.choose::<u8>(&[]).is_none());
        let items = [1, 2, 3];
        let mut counts = [0usize; 3];
        for _ in 0..3000 {
            counts[*r.choose(&items).unwrap() as usize - 1] += 1;
        }
        assert!(counts.iter().all(|&c| c > 900), "{counts:?}");
        let mut v: Vec<u32> = (0..50).collect();
        r.shuffle(&mut v);
        assert_ne!(v, (0..50).collect::<Vec<_>>());
        v.sort_unstable();
        assert_eq!(v, (0..50).collect::<Vec<_>>());
        let s = r.sample_indices(10, 4);
        assert_eq!(s.len(), 4);
        let mut d = s.clone();
        d.sort_unstable();
        d.dedup();
        assert_eq!(d.len(), 4);
        assert!(s.iter().all(|&i| i < 10));
        assert_eq!(r.sample_indices(3, 9).len(), 3);
    }
}

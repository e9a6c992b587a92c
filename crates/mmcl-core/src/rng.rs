//! Small deterministic random streams for initialisation and seeding.

/// The SplitMix64 generator: tiny, fast, and good enough to seed and to initialise weights.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
    spare_normal: Option<f64>,
}

impl SplitMix64 {
    /// A stream from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed,
            spare_normal: None,
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box-Muller, both values used).
    pub fn next_normal(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        let u1 = loop {
            let u = self.next_f64();
            if u > 0.0 {
                break u;
            }
        };
        let u2 = self.next_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        self.spare_normal = Some(r * theta.sin());
        r * theta.cos()
    }
}

/// The `rand` interface, so that `rand_distr` distributions draw from the stream (the high 32
/// bits make a `u32`; bytes are taken little-endian, 8 per draw).
impl rand::RngCore for SplitMix64 {
    fn next_u32(&mut self) -> u32 {
        (SplitMix64::next_u64(self) >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        SplitMix64::next_u64(self)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let bytes = SplitMix64::next_u64(self).to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// FNV-1a hash of a string, to derive per-name seeds.
pub fn hash_str(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The complete state of a [`SplitMix64`] stream, to save with a training checkpoint and restore
/// for a bit-exact resume.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RngState {
    /// The counter.
    pub state: u64,
    /// The second normal of the last Box-Muller pair, not yet returned.
    pub spare_normal: Option<f64>,
}

impl SplitMix64 {
    /// The stream's state.
    pub fn state(&self) -> RngState {
        RngState {
            state: self.state,
            spare_normal: self.spare_normal,
        }
    }

    /// A stream continuing exactly from `state`.
    pub fn from_state(state: RngState) -> Self {
        Self {
            state: state.state,
            spare_normal: state.spare_normal,
        }
    }
}

/// A random stream shared by the layers of a model for their training-time randomness (dropout,
/// drop-path masks), independent of candle's global RNG.
///
/// Clones share one stream. Draws happen in forward order, so a seeded model trained on the same
/// batches makes the same choices; [`SharedRng::state`] and [`SharedRng::set_state`] save and
/// restore it for bit-exact resumption.
#[derive(Debug, Clone)]
pub struct SharedRng {
    inner: std::sync::Arc<std::sync::Mutex<SplitMix64>>,
}

impl SharedRng {
    /// A stream from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            inner: std::sync::Arc::new(std::sync::Mutex::new(SplitMix64::new(seed))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SplitMix64> {
        // A poisoned lock only means a panic elsewhere while drawing; the state is a plain value.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current state of the stream.
    pub fn state(&self) -> RngState {
        self.lock().state()
    }

    /// Continues the stream from `state` (for every clone).
    pub fn set_state(&self, state: RngState) {
        *self.lock() = SplitMix64::from_state(state);
    }

    /// `n` independent draws, each 1 with probability `keep` and 0 otherwise, scaled by
    /// `1 / keep` (the inverted-dropout mask).
    pub fn keep_mask(&self, n: usize, keep: f64) -> Vec<f32> {
        let scale = if keep > 0.0 { (1.0 / keep) as f32 } else { 0.0 };
        let mut rng = self.lock();
        (0..n)
            .map(|_| if rng.next_f64() < keep { scale } else { 0.0 })
            .collect()
    }

    /// `n` uniform draws in [0, 1) (e.g. the noise whose argsort gives a random masking).
    pub fn uniform(&self, n: usize) -> Vec<f32> {
        let mut rng = self.lock();
        (0..n).map(|_| rng.next_f64() as f32).collect()
    }

    /// Runs `f` with exclusive access to the underlying stream.
    pub fn with<R>(&self, f: impl FnOnce(&mut SplitMix64) -> R) -> R {
        f(&mut self.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_state_resumes_bit_exactly() {
        let rng = SharedRng::new(5);
        let _ = rng.uniform(3);
        let _ = rng.with(|r| r.next_normal()); // leaves a spare normal behind
        let saved = rng.state();
        let a = (rng.with(|r| r.next_normal()), rng.keep_mask(10, 0.7));
        let json = serde_json::to_string(&saved).expect("serialise");
        let restored = SharedRng::new(0);
        restored.set_state(serde_json::from_str(&json).expect("deserialise"));
        let b = (
            restored.with(|r| r.next_normal()),
            restored.keep_mask(10, 0.7),
        );
        assert_eq!(a, b);
        let shared = restored.clone();
        let _ = shared.uniform(1);
        assert_ne!(restored.state(), rng.state());
    }

    #[test]
    fn keep_mask_has_the_right_rate_and_scale() {
        let m = SharedRng::new(9).keep_mask(20_000, 0.8);
        let kept = m.iter().filter(|&&v| v > 0.0).count() as f64 / m.len() as f64;
        assert!((kept - 0.8).abs() < 0.02, "{kept}");
        assert!(m.iter().all(|&v| v == 0.0 || (v - 1.25).abs() < 1e-6));
    }
}

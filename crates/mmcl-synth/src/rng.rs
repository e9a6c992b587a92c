//! Per-subject random streams.
//!
//! Every subject draws from independent named streams (`"state"`, `"ecg"`, `"cmr"`) derived from
//! the cohort seed and its eid. A subject is therefore the same whatever the thread count, the
//! cohort size or the image size: changing the CMR settings leaves the hidden state and the ECG
//! untouched.

use mmcl_core::rng::{SplitMix64, hash_str};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// The generator used everywhere in this crate.
pub type SubjectRng = ChaCha8Rng;

/// The stream `name` of subject `eid` in the cohort of `seed`.
pub fn subject_stream(seed: u64, eid: u64, name: &str) -> SubjectRng {
    let mut mix = SplitMix64::new(seed ^ hash_str(name).rotate_left(17));
    let base = mix.next_u64();
    let mut mix = SplitMix64::new(base ^ eid.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut key = [0u8; 32];
    for chunk in key.chunks_exact_mut(8) {
        chunk.copy_from_slice(&mix.next_u64().to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

/// A fast generator for bulk noise (image voxels), seeded by one draw from a subject stream.
///
/// ChaCha is the subject streams' generator for its quality and portability; millions of noise
/// draws per cine only need speed and reproducibility, which SplitMix64 gives at a fraction of
/// the cost.
pub fn noise_stream(rng: &mut SubjectRng) -> SplitMix64 {
    SplitMix64::new(rng.random())
}

/// A standard normal draw.
pub fn normal(rng: &mut SubjectRng) -> f64 {
    StandardNormal.sample(rng)
}

/// A uniform draw in `[lo, hi)`.
pub fn uniform(rng: &mut SubjectRng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

/// `true` with probability `p`.
pub fn bernoulli(rng: &mut SubjectRng, p: f64) -> bool {
    rng.random::<f64>() < p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: u64 = subject_stream(1, 1_000_001, "ecg").random();
        let b: u64 = subject_stream(1, 1_000_001, "ecg").random();
        let c: u64 = subject_stream(1, 1_000_001, "cmr").random();
        let d: u64 = subject_stream(1, 1_000_002, "ecg").random();
        let e: u64 = subject_stream(2, 1_000_001, "ecg").random();
        assert_eq!(a, b);
        assert!(a != c && a != d && a != e && c != d);
    }
}

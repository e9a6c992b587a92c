//! What the cohort tests share (`mod common;` in each): small cohorts.

use mmcl_synth::SynthConfig;

/// The default cohort of `subjects` drawn with `seed`, its cine `image_size` pixels square
/// with `slices` slices of `frames` frames (small cines keep the tests fast; the hidden state
/// and the ECG do not depend on the cine's size).
pub fn small_cohort(
    subjects: usize,
    seed: u64,
    image_size: usize,
    slices: usize,
    frames: usize,
) -> SynthConfig {
    let mut cfg = SynthConfig {
        subjects,
        seed,
        ..SynthConfig::default()
    };
    cfg.cmr.image_size = image_size;
    cfg.cmr.slices = slices;
    cfg.cmr.frames = frames;
    cfg
}

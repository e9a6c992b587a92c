//! The reference ECG augmentations (MMCL-ECG-CMR `utils/ecg_augmentations.py`, the same as the
//! mae repository's `util/augmentations.py`), seeded through [`Rng`].
//!
//! All functions work on lead-major `[leads, T]` samples in place.
//!
//! - [`ft_surrogate`]: one random phase per frequency, shared by all leads (`channel_indep =
//!   False`), drawn uniformly from `[0, 2π·magnitude)`, antisymmetric so the output stays real.
//! - [`jitter`]: `x + amplitude·x·N(0, σ)` element-wise (the noise is proportional to the signal).
//! - [`rescale`]: `x · N(1, σ)`, one factor per recording.
//! - [`time_shift`]: zero-pad by `fs·seconds` split randomly left/right, then keep the first or
//!   the last `T` samples (equal odds).
//! - [`mask`]: zero `round(factor·T / patch)` patches of `patch` samples at random positions.
//! - [`random_crop_start`]: the crop start of the reference's `CropResizing` (uniform in
//!   `[0, T − len)`).

use rustfft::num_complex::Complex;
use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// Time-shift augmentation settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeShiftConfig {
    /// Sampling rate in Hz.
    pub sample_rate: f64,
    /// Total zero padding in seconds.
    pub padding_s: f64,
}

/// Masking augmentation settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskingConfig {
    /// Fraction of the samples to zero.
    pub factor: f64,
    /// Patch length in samples.
    pub patch: usize,
    /// One mask for all leads (`block`) instead of one per lead.
    pub same_for_all_leads: bool,
    /// Probability of masking at all.
    pub prob: f64,
}

/// The augmentation pipeline of an ECG view: with probability `apply_prob`, FT surrogate
/// (itself with probability `ft_surrogate_prob`), jitter, rescaling, then the optional time
/// shift and masking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EcgAugmentConfig {
    /// Probability of augmenting at all (the reference's `augmentation_rate`).
    pub apply_prob: f64,
    /// Phase-noise magnitude of the FT surrogate (`ft_surr_phase_noise`).
    pub ft_surrogate_phase_noise: f64,
    /// Probability of the FT surrogate within an augmented view.
    pub ft_surrogate_prob: f64,
    /// σ of the jitter (`jitter_sigma`).
    pub jitter_sigma: f64,
    /// Amplitude of the jitter relative to the signal (0.6 in the reference).
    pub jitter_amplitude: f64,
    /// σ of the rescaling factor (`rescaling_sigma`).
    pub rescaling_sigma: f64,
    /// Optional time shift.
    pub time_shift: Option<TimeShiftConfig>,
    /// Optional masking.
    pub masking: Option<MaskingConfig>,
}

impl Default for EcgAugmentConfig {
    fn default() -> Self {
        Self::mmcl()
    }
}

impl EcgAugmentConfig {
    /// The multimodal contrastive stage: `augmentation_rate` 0.95, FT surrogate 0.1 (always),
    /// jitter 0.25, rescaling 0.5 (`configs/augmentations/default.yaml`).
    pub fn mmcl() -> Self {
        Self {
            apply_prob: 0.95,
            ft_surrogate_phase_noise: 0.1,
            ft_surrogate_prob: 1.0,
            jitter_sigma: 0.25,
            jitter_amplitude: 0.6,
            rescaling_sigma: 0.5,
            time_shift: None,
            masking: None,
        }
    }

    /// Masked data modelling (mae `main_pretrain.py` defaults): always augmented, FT surrogate
    /// 0.075 with probability 0.5, jitter 0.2, rescaling 0.5.
    pub fn mae() -> Self {
        Self {
            apply_prob: 1.0,
            ft_surrogate_phase_noise: 0.075,
            ft_surrogate_prob: 0.5,
            jitter_sigma: 0.2,
            jitter_amplitude: 0.6,
            rescaling_sigma: 0.5,
            time_shift: None,
            masking: None,
        }
    }

    /// Applies the pipeline to `[leads, t]` samples in place.
    pub fn apply(&self, x: &mut [f32], leads: usize, t: usize, rng: &mut Rng) {
        if !rng.chance(self.apply_prob) {
            return;
        }
        if rng.chance(self.ft_surrogate_prob) {
            ft_surrogate(x, leads, t, self.ft_surrogate_phase_noise, rng);
        }
        jitter(x, self.jitter_sigma, self.jitter_amplitude, rng);
        rescale(x, self.rescaling_sigma, rng);
        if let Some(shift) = self.time_shift {
            time_shift(x, leads, t, shift, rng);
        }
        if let Some(m) = self.masking
            && rng.chance(m.prob)
        {
            mask(x, leads, t, m, rng);
        }
    }
}

/// Start index of a random crop of `len` out of `t` samples: uniform in `[0, t − len)`, 0 when
/// `len >= t − 1` (NumPy's `randint(0, t − len)`, exclusive high, as the reference).
pub fn random_crop_start(t: usize, len: usize, rng: &mut Rng) -> usize {
    if t <= len {
        return 0;
    }
    rng.below((t - len) as u64) as usize
}

/// Fourier-transform surrogate: multiplies each lead's spectrum by `exp(i·magnitude·2π·φ_k)`,
/// with `φ_k ~ U[0, 1)` shared by all leads and antisymmetric in `k` (DC and, for even `t`, the
/// Nyquist bin untouched), so the result is real.
pub fn ft_surrogate(x: &mut [f32], leads: usize, t: usize, magnitude: f64, rng: &mut Rng) {
    if t < 2 {
        return;
    }
    let half = if t.is_multiple_of(2) {
        t / 2 - 1
    } else {
        (t - 1) / 2
    };
    let two_pi = 2.0 * std::f64::consts::PI;
    let mut multiplier = vec![Complex::new(1.0, 0.0); t];
    for k in 1..=half {
        let phase = magnitude * two_pi * rng.uniform();
        let h = Complex::from_polar(1.0, phase);
        multiplier[k] = h;
        multiplier[t - k] = h.conj();
    }
    let (forward, inverse) = super::fft_plans(t);
    let scale = 1.0 / t as f64;
    // The multiplier is Hermitian, so the filter is real: two real leads travel as the real and
    // imaginary parts of one complex signal and come back separated.
    let mut buf = vec![Complex::new(0.0, 0.0); t];
    let mut lead = 0;
    while lead < leads {
        let pair = lead + 1 < leads;
        let (a, rest) = x[lead * t..].split_at_mut(t);
        for (k, c) in buf.iter_mut().enumerate() {
            let im = if pair { rest[k] as f64 } else { 0.0 };
            *c = Complex::new(a[k] as f64, im);
        }
        forward.process(&mut buf);
        for (c, h) in buf.iter_mut().zip(&multiplier) {
            *c *= h;
        }
        inverse.process(&mut buf);
        for (k, c) in buf.iter().enumerate() {
            a[k] = (c.re * scale) as f32;
            if pair {
                rest[k] = (c.im * scale) as f32;
            }
        }
        lead += 2;
    }
}

/// Multiplicative Gaussian jitter: `x + amplitude·x·N(0, σ)` element-wise.
pub fn jitter(x: &mut [f32], sigma: f64, amplitude: f64, rng: &mut Rng) {
    for v in x.iter_mut() {
        let noise = sigma * rng.normal();
        *v += (amplitude * *v as f64 * noise) as f32;
    }
}

/// Rescaling by one factor `N(1, σ)`.
pub fn rescale(x: &mut [f32], sigma: f64, rng: &mut Rng) {
    let factor = (1.0 + sigma * rng.normal()) as f32;
    x.iter_mut().for_each(|v| *v *= factor);
}

/// Random time shift with zero padding (the reference's `Shift`).
pub fn time_shift(x: &mut [f32], leads: usize, t: usize, cfg: TimeShiftConfig, rng: &mut Rng) {
    let padding = (cfg.sample_rate * cfg.padding_s) as usize;
    let left = (rng.uniform() * padding as f64) as usize;
    let right = padding - left;
    // Padded signal p[j] = x[j − left]; keep p[start .. start + t].
    let start = if rng.chance(0.5) { 0 } else { right };
    let offset = start as isize - left as isize; // output t' reads x[t' + offset]
    for lead in 0..leads {
        let row = &mut x[lead * t..(lead + 1) * t];
        let src = row.to_vec();
        for (k, v) in row.iter_mut().enumerate() {
            let j = k as isize + offset;
            *v = if j >= 0 && (j as usize) < t {
                src[j as usize]
            } else {
                0.0
            };
        }
    }
}

/// Zeroes random patches (the reference's `Masking`): `round(factor·t / patch)` patches whose
/// gaps are random fractions of the unmasked length.
pub fn mask(x: &mut [f32], leads: usize, t: usize, cfg: MaskingConfig, rng: &mut Rng) {
    if cfg.patch == 0 || t == 0 {
        return;
    }
    let patches = (cfg.factor * t as f64 / cfg.patch as f64).round_ties_even() as usize;
    let ones = t as f64 - (cfg.patch * patches) as f64;
    let starts_for = |rng: &mut Rng| -> Vec<usize> {
        let weights: Vec<f64> = (0..=patches).map(|_| rng.uniform()).collect();
        let total: f64 = weights.iter().sum();
        let mut cum = 0i64;
        weights[..patches]
            .iter()
            .enumerate()
            .map(|(k, w)| {
                let mut size = (w * ones / total).round_ties_even() as i64;
                if k > 0 {
                    size += cfg.patch as i64;
                }
                cum += size;
                cum.max(0) as usize
            })
            .collect()
    };
    let shared = cfg.same_for_all_leads.then(|| starts_for(rng));
    for lead in 0..leads {
        let starts = match &shared {
            Some(s) => s.clone(),
            None => starts_for(rng),
        };
        let row = &mut x[lead * t..(lead + 1) * t];
        for s in starts {
            let end = (s + cfg.patch).min(t);
            if s < end {
                row[s..end].fill(0.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(leads: usize, t: usize) -> Vec<f32> {
        (0..leads * t)
            .map(|i| ((i % t) as f32 * 0.05 + (i / t) as f32).sin())
            .collect()
    }

    #[test]
    fn ft_surrogate_keeps_the_power_spectrum_and_the_mean() {
        for t in [64, 63] {
            let x0 = signal(3, t);
            let mut x = x0.clone();
            ft_surrogate(&mut x, 3, t, 0.1, &mut Rng::new(1));
            for lead in 0..3 {
                let a = &x0[lead * t..(lead + 1) * t];
                let b = &x[lead * t..(lead + 1) * t];
                let energy = |s: &[f32]| s.iter().map(|v| (*v as f64).powi(2)).sum::<f64>();
                let mean = |s: &[f32]| s.iter().map(|v| *v as f64).sum::<f64>();
                assert!((energy(a) - energy(b)).abs() < 1e-4 * energy(a));
                assert!((mean(a) - mean(b)).abs() < 1e-4);
                assert!(a.iter().zip(b).any(|(p, q)| (p - q).abs() > 1e-3));
            }
        }
        // Magnitude 0 is the identity.
        let x0 = signal(2, 50);
        let mut x = x0.clone();
        ft_surrogate(&mut x, 2, 50, 0.0, &mut Rng::new(1));
        assert!(x.iter().zip(&x0).all(|(a, b)| (a - b).abs() < 1e-5));
    }

    #[test]
    fn augmentations_are_seeded() {
        let cfg = EcgAugmentConfig {
            apply_prob: 1.0,
            time_shift: Some(TimeShiftConfig {
                sample_rate: 10.0,
                padding_s: 2.0,
            }),
            masking: Some(MaskingConfig {
                factor: 0.3,
                patch: 5,
                same_for_all_leads: false,
                prob: 1.0,
            }),
            ..EcgAugmentConfig::mmcl()
        };
        let run = |seed| {
            let mut x = signal(12, 100);
            cfg.apply(&mut x, 12, 100, &mut Rng::new(seed));
            x
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    #[test]
    fn mask_zeroes_about_the_requested_fraction() {
        let mut x = vec![1.0f32; 12 * 1000];
        let cfg = MaskingConfig {
            factor: 0.5,
            patch: 50,
            same_for_all_leads: true,
            prob: 1.0,
        };
        mask(&mut x, 12, 1000, cfg, &mut Rng::new(2));
        let zeros = x[..1000].iter().filter(|v| **v == 0.0).count();
        assert!((450..=500).contains(&zeros), "{zeros}");
        assert_eq!(&x[..1000], &x[1000..2000]);
    }

    #[test]
    fn shift_moves_the_signal() {
        let t = 20;
        let mut x: Vec<f32> = (1..=t).map(|v| v as f32).collect();
        time_shift(
            &mut x,
            1,
            t,
            TimeShiftConfig {
                sample_rate: 10.0,
                padding_s: 1.0,
            },
            &mut Rng::new(9),
        );
        let nonzero: Vec<f32> = x.iter().copied().filter(|v| *v != 0.0).collect();
        // What survives is a contiguous run of the original samples.
        assert!(nonzero.windows(2).all(|w| w[1] == w[0] + 1.0));
    }

    #[test]
    fn crop_start_matches_exclusive_high() {
        let mut r = Rng::new(0);
        assert!((0..2000).all(|_| random_crop_start(5000, 2500, &mut r) < 2500));
        assert_eq!(random_crop_start(2500, 2500, &mut r), 0);
    }
}

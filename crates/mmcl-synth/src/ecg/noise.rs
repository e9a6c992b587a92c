//! What is not the heart's own signal: the fibrillatory baseline of atrial fibrillation and the
//! noise at the electrodes (baseline wander, mains interference, muscle noise).

use std::f64::consts::TAU;

use super::beat::normalised;
use crate::rng::{SubjectRng, normal, uniform};

/// Atrial fibrillation: a few drifting 4–9 Hz oscillations of the atrial dipole, strongest
/// towards V1 and the inferior leads.
pub(super) fn add_fibrillatory_waves(dipole: &mut [Vec<f64>; 3], fs: f64, rng: &mut SubjectRng) {
    let size = uniform(rng, 0.04, 0.11);
    for _ in 0..3 {
        let f0 = uniform(rng, 4.5, 8.5);
        let drift = uniform(rng, 0.3, 1.0);
        let drift_hz = uniform(rng, 0.05, 0.3);
        let mut phase = uniform(rng, 0.0, TAU);
        let drift_phase = uniform(rng, 0.0, TAU);
        let dir = normalised([
            -0.3 + 0.3 * normal(rng),
            0.5 + 0.3 * normal(rng),
            -0.8 + 0.3 * normal(rng),
        ]);
        let amp = size * uniform(rng, 0.4, 1.0);
        for i in 0..dipole[0].len() {
            let t = i as f64 / fs;
            let f = f0 + drift * (TAU * drift_hz * t + drift_phase).sin();
            phase += TAU * f / fs;
            let v = amp * phase.sin();
            for (axis, d) in dipole.iter_mut().zip(dir) {
                axis[i] += v * d;
            }
        }
    }
}

/// Adds noise at the electrodes RA, LA, LL and C1–C6, expressed in the independent leads
/// I = LA − RA, II = LL − RA, Vi = Ci − (RA + LA + LL)/3.
pub(super) fn add_electrode_noise(
    independent: &mut [Vec<f64>],
    fs: f64,
    mains_hz: f64,
    rng: &mut SubjectRng,
) {
    let n = independent[0].len();
    let resp_hz = uniform(rng, 0.15, 0.4);
    let mains_level = (0.7 * normal(rng)).exp();
    let mains_phase = uniform(rng, 0.0, TAU);
    let muscle_level = (0.4 * normal(rng)).exp();
    let wander_level = (0.4 * normal(rng)).exp();
    // Electrodes: 0 RA, 1 LA, 2 LL, 3..9 C1..C6.
    let electrodes: Vec<Vec<f64>> = (0..9)
        .map(|e| {
            let limb = e < 3;
            let resp_amp = 50.0 * wander_level * normal(rng).abs();
            let resp_phase = uniform(rng, 0.0, TAU);
            let drifts: Vec<(f64, f64, f64)> = (0..2)
                .map(|_| {
                    (
                        uniform(rng, 0.03, 0.15),
                        80.0 * wander_level * (0.6 * normal(rng)).exp(),
                        uniform(rng, 0.0, TAU),
                    )
                })
                .collect();
            let mains_amp = 6.0 * mains_level * (0.8 * normal(rng)).exp();
            let mains_shift = 0.3 * normal(rng);
            let emg_sd =
                5.0 * muscle_level * (0.5 * normal(rng)).exp() * if limb { 1.5 } else { 1.0 };
            let mut sines = [
                Oscillator::new(resp_hz, fs, resp_phase, resp_amp),
                Oscillator::new(drifts[0].0, fs, drifts[0].2, drifts[0].1),
                Oscillator::new(drifts[1].0, fs, drifts[1].2, drifts[1].1),
                Oscillator::new(mains_hz, fs, mains_phase + mains_shift, mains_amp),
            ];
            // Muscle noise: white noise through a one-pole high-pass at about 15 Hz.
            let alpha = 1.0 / (1.0 + TAU * 15.0 / fs);
            let (mut prev_x, mut prev_y) = (0.0, 0.0);
            (0..n)
                .map(|_| {
                    let x = emg_sd * normal(rng);
                    let y = alpha * (prev_y + x - prev_x);
                    prev_x = x;
                    prev_y = y;
                    sines.iter_mut().map(Oscillator::next).sum::<f64>() + 2.0 * y
                })
                .collect()
        })
        .collect();
    for i in 0..n {
        let (ra, la, ll) = (electrodes[0][i], electrodes[1][i], electrodes[2][i]);
        let wct = (ra + la + ll) / 3.0;
        independent[0][i] += la - ra;
        independent[1][i] += ll - ra;
        for c in 0..6 {
            independent[2 + c][i] += electrodes[3 + c][i] - wct;
        }
    }
}

/// A sinusoid advanced sample by sample by rotating its phasor (no `sin` per sample).
struct Oscillator {
    re: f64,
    im: f64,
    step_re: f64,
    step_im: f64,
    amplitude: f64,
}

impl Oscillator {
    fn new(freq_hz: f64, fs: f64, phase: f64, amplitude: f64) -> Self {
        let (im, re) = phase.sin_cos();
        let (step_im, step_re) = (TAU * freq_hz / fs).sin_cos();
        Self {
            re,
            im,
            step_re,
            step_im,
            amplitude,
        }
    }

    /// `amplitude · sin(phase + 2π f n / fs)` for the next sample `n`.
    fn next(&mut self) -> f64 {
        let value = self.amplitude * self.im;
        let re = self.re * self.step_re - self.im * self.step_im;
        self.im = self.re * self.step_im + self.im * self.step_re;
        self.re = re;
        value
    }
}

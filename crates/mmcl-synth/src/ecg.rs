//! The resting 12-lead ECG: a moving cardiac dipole projected onto the lead vectors.
//!
//! Each beat is a sum of dipole lobes (atrial depolarisation in two lobes, septal, main and
//! terminal QRS forces, ST-T repolarisation), each a smooth bump in time with a fixed direction
//! in the Frank frame (x to the subject's left, y to the feet, z to the back). Their timings,
//! directions and sizes come from the hidden state: QRS width, frontal axis, horizontal
//! rotation, voltage, QT, T-wave size, and the disease patterns (infarct Q waves in the leads
//! facing the scar, ischaemic T inversion, LVH strain, atrial fibrillation with an irregular
//! rhythm and a fibrillatory baseline instead of P waves).
//!
//! The dipole is projected onto I, II and V1–V6 with the Dower transform (perturbed per subject
//! to mimic electrode placement); III, aVR, aVL and aVF follow from I and II exactly as an
//! electrocardiograph derives them. Noise is added at the electrodes (baseline wander with
//! respiration, 50 Hz mains interference, muscle noise), so it obeys the same lead relations.
//! Samples are quantised to 5 µV, as UK Biobank's CardioSoft files store them.

use std::f64::consts::TAU;

use serde::{Deserialize, Serialize};

use crate::config::EcgConfig;
use crate::rng::{SubjectRng, bernoulli, normal, uniform};
use crate::state::{HiddenState, Territory};

/// The 12 leads in the canonical order used everywhere in the workspace.
pub const LEAD_NAMES: [&str; 12] = [
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
];

/// Microvolts per stored integer (CardioSoft `Resolution units="uVperLsb"`).
pub const UV_PER_LSB: f64 = 5.0;

/// Where the QRS onset lies in the median beat, ms from its start.
pub const MEDIAN_QRS_ONSET_MS: u32 = 350;

/// Dower's transform from the Frank vectorcardiogram (x, y, z) to I, II, V1–V6.
const DOWER: [[f64; 3]; 8] = [
    [0.632, -0.235, 0.059],
    [0.235, 1.066, -0.132],
    [-0.515, 0.157, -0.917],
    [0.044, 0.164, -1.387],
    [0.882, 0.098, -1.277],
    [1.213, 0.127, -0.601],
    [1.125, 0.127, -0.086],
    [0.831, 0.076, 0.230],
];

/// The interval and axis measurements an electrocardiograph reports
/// (`RestingECGMeasurements`). Durations and positions in ms, axes in degrees. P-wave values
/// are absent in atrial fibrillation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EcgMeasurements {
    /// Ventricular rate, beats per minute.
    pub ventricular_rate: u32,
    /// PQ (PR) interval.
    pub pq_interval: Option<u32>,
    /// P-wave duration.
    pub p_duration: Option<u32>,
    /// QRS duration.
    pub qrs_duration: u32,
    /// QT interval.
    pub qt_interval: u32,
    /// QT corrected for heart rate (Bazett).
    pub qtc_interval: u32,
    /// Mean RR interval.
    pub rr_interval: u32,
    /// Mean PP interval.
    pub pp_interval: Option<u32>,
    /// Frontal P axis.
    pub p_axis: Option<i32>,
    /// Frontal QRS axis.
    pub r_axis: i32,
    /// Frontal T axis.
    pub t_axis: i32,
    /// Number of QRS complexes in the strip.
    pub qrs_num: u32,
    /// P onset in the median beat.
    pub p_onset: Option<u32>,
    /// P offset in the median beat.
    pub p_offset: Option<u32>,
    /// QRS onset in the median beat.
    pub q_onset: u32,
    /// QRS offset in the median beat.
    pub q_offset: u32,
    /// T offset in the median beat.
    pub t_offset: u32,
}

/// One subject's resting ECG.
#[derive(Debug, Clone, PartialEq)]
pub struct Ecg {
    /// Sampling rate, Hz.
    pub sample_rate_hz: u32,
    /// Rhythm strip per lead (order of [`LEAD_NAMES`]), in units of [`UV_PER_LSB`].
    pub strip: Vec<Vec<i32>>,
    /// Median beat per lead, in units of [`UV_PER_LSB`]; the QRS starts at
    /// [`MEDIAN_QRS_ONSET_MS`].
    pub median: Vec<Vec<i32>>,
    /// QRS onsets of the beats inside the strip, in samples.
    pub qrs_onsets: Vec<usize>,
    /// Heart rate of this recording (from the RR intervals inside the strip), bpm.
    pub heart_rate_bpm: f64,
    /// The device's measurements.
    pub measurements: EcgMeasurements,
    /// The device's interpretation statements.
    pub interpretation: Vec<String>,
}

/// A bump in time with a fixed spatial direction.
#[derive(Debug, Clone, Copy)]
struct Lobe {
    /// Peak time relative to the QRS onset, s.
    at: f64,
    /// Width before the peak, s.
    rise: f64,
    /// Width after the peak, s.
    fall: f64,
    /// Dipole at the peak (direction × magnitude), mV.
    vector: [f64; 3],
}

fn normalised(v: [f64; 3]) -> [f64; 3] {
    let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    [v[0] / n, v[1] / n, v[2] / n]
}

fn scaled(v: [f64; 3], s: f64) -> [f64; 3] {
    [v[0] * s, v[1] * s, v[2] * s]
}

/// Rotation about the vertical axis; positive angles move forces anteriorly (towards −z).
fn rotate_horizontal(v: [f64; 3], angle: f64) -> [f64; 3] {
    let (s, c) = angle.sin_cos();
    [v[0] * c + v[2] * s, v[1], -v[0] * s + v[2] * c]
}

/// Direction pointing from the heart's centre towards a territory.
fn towards(territory: Territory) -> [f64; 3] {
    match territory {
        Territory::Anterior => [0.0, 0.0, -1.0],
        Territory::Inferior => [0.0, 1.0, 0.0],
        Territory::Lateral => [1.0, 0.0, 0.0],
    }
}

/// The per-beat morphology of a subject, in the Frank frame.
struct BeatModel {
    atrial: Vec<Lobe>,
    ventricular: Vec<Lobe>,
    /// Repolarisation lobes; their timing scales with the QT of each beat.
    repolarisation: Vec<Lobe>,
    /// QT at an RR of one second (the QTc), s.
    qtc: f64,
}

impl BeatModel {
    fn new(s: &HiddenState, rng: &mut SubjectRng) -> Self {
        let d = s.qrs_ms / 1000.0;
        let a = s.qrs_amplitude_mv;
        let theta = s.frontal_axis_deg.to_radians();
        let eta = s.horizontal_rotation_deg.to_radians();
        let r_dir = rotate_horizontal(normalised([theta.cos(), theta.sin(), 0.45]), eta);
        let q_dir = rotate_horizontal(normalised([-0.55, 0.15, -0.8]), eta);
        let s_dir = rotate_horizontal(normalised([-0.35, -0.45, 0.8]), eta);
        let mut ventricular = vec![
            Lobe {
                at: 0.12 * d,
                rise: 0.055 * d,
                fall: 0.055 * d,
                vector: scaled(q_dir, 0.15 * a),
            },
            Lobe {
                at: 0.42 * d,
                rise: 0.12 * d,
                fall: 0.11 * d,
                vector: scaled(r_dir, a),
            },
            Lobe {
                at: 0.76 * d,
                rise: 0.085 * d,
                fall: 0.085 * d,
                vector: scaled(s_dir, (0.32 + 0.05 * normal(rng)).max(0.1) * a),
            },
        ];
        if s.q_waves
            && let Some(t) = s.conditions.territory
        {
            // Loss of the forces towards the scar: an early vector pointing away from it.
            let away = scaled(towards(t), -1.0);
            ventricular.push(Lobe {
                at: 0.16 * d,
                rise: 0.08 * d,
                fall: 0.09 * d,
                vector: scaled(away, 0.45 * a * s.hypokinesis),
            });
        }

        // Fragmented QRS: a small notch that scar and a failing ventricle leave in some leads.
        let ef_deficit = (60.0 - s.lvef).max(0.0);
        if bernoulli(
            rng,
            (ef_deficit / 40.0 + if s.conditions.prior_mi { 0.3 } else { 0.0 }).min(0.8),
        ) {
            let dir = normalised([normal(rng), normal(rng), normal(rng)]);
            ventricular.push(Lobe {
                at: uniform(rng, 0.3, 0.8) * d,
                rise: 0.03 * d,
                fall: 0.03 * d,
                vector: scaled(dir, (0.04 + 0.004 * ef_deficit).min(0.15) * a),
            });
        }

        let mut atrial = Vec::new();
        if !s.conditions.af {
            let pr = s.pr_ms / 1000.0;
            let p = s.p_ms / 1000.0;
            let ra = normalised([0.25, 0.9, -0.35]);
            let la = normalised([0.8, 0.5, 0.45]);
            let size = (0.2 * normal(rng)).exp();
            atrial.push(Lobe {
                at: -pr + 0.35 * p,
                rise: 0.17 * p,
                fall: 0.17 * p,
                vector: scaled(ra, 0.11 * size),
            });
            atrial.push(Lobe {
                at: -pr + 0.62 * p,
                rise: 0.17 * p,
                fall: 0.17 * p,
                vector: scaled(la, 0.09 * size),
            });
        }

        // T wave: concordant with the QRS in health, turned away from an ischaemic territory,
        // opposite to the QRS in LVH strain. Its timing is placed per beat from the QT.
        let theta_t = theta + (12.0 * normal(rng)).to_radians();
        let mut t_dir =
            rotate_horizontal(normalised([theta_t.cos(), theta_t.sin(), -0.35]), 0.5 * eta);
        if s.ischaemic_t_inversion {
            let t = s.conditions.territory.unwrap_or(Territory::Lateral);
            let toward = towards(t);
            t_dir = normalised([
                t_dir[0] - 1.2 * toward[0],
                t_dir[1] - 1.2 * toward[1],
                t_dir[2] - 1.2 * toward[2],
            ]);
        }
        let mut t_size = a * s.t_ratio;
        let mut repolarisation = Vec::new();
        if s.strain {
            t_dir = scaled(r_dir, -1.0);
            t_size = a * 0.22;
            // Downsloping ST depression towards the lateral leads.
            repolarisation.push(Lobe {
                at: -0.30, // relative to the T peak, see `beat_lobes`
                rise: 0.05,
                fall: 0.08,
                vector: scaled(r_dir, -0.07 * a),
            });
        }
        repolarisation.push(Lobe {
            at: 0.0,
            rise: 0.0, // filled per beat
            fall: 0.0,
            vector: scaled(t_dir, t_size),
        });
        Self {
            atrial,
            ventricular,
            repolarisation,
            qtc: s.qtc_ms / 1000.0,
        }
    }

    /// QT for a preceding RR interval (Bazett), s.
    fn qt(&self, rr: f64) -> f64 {
        self.qtc * rr.sqrt()
    }

    /// The lobes of one beat with QRS onset at time 0, given its preceding RR interval.
    fn beat_lobes(&self, rr: f64, gain: f64) -> Vec<Lobe> {
        let mut lobes: Vec<Lobe> = self
            .atrial
            .iter()
            .chain(&self.ventricular)
            .map(|l| Lobe {
                vector: scaled(l.vector, gain),
                ..*l
            })
            .collect();
        let qt = self.qt(rr);
        let fall = 0.045 * rr.sqrt().clamp(0.6, 1.4);
        let peak = qt - 2.4 * fall;
        for l in &self.repolarisation {
            if l.rise == 0.0 {
                lobes.push(Lobe {
                    at: peak,
                    rise: 1.8 * fall,
                    fall,
                    vector: scaled(l.vector, gain),
                });
            } else {
                lobes.push(Lobe {
                    at: peak + l.at,
                    vector: scaled(l.vector, gain),
                    ..*l
                });
            }
        }
        lobes
    }
}

/// Adds the lobes of a beat with QRS onset at `onset` (s) to the dipole signal.
fn add_lobes(dipole: &mut [Vec<f64>; 3], lobes: &[Lobe], onset: f64, fs: f64) {
    let n = dipole[0].len() as isize;
    for l in lobes {
        let centre = (onset + l.at) * fs;
        let lo = ((onset + l.at - 4.0 * l.rise) * fs).floor() as isize;
        let hi = ((onset + l.at + 4.0 * l.fall) * fs).ceil() as isize;
        for i in lo.max(0)..hi.min(n) {
            let dt = (i as f64 - centre) / fs;
            let w = if dt < 0.0 { l.rise } else { l.fall };
            let g = (-0.5 * (dt / w).powi(2)).exp();
            for (axis, v) in dipole.iter_mut().zip(l.vector) {
                axis[i as usize] += v * g;
            }
        }
    }
}

/// QRS onset times (s, some before 0 and after the end so the strip has no gaps) and the RR
/// interval preceding each.
fn beat_times(s: &HiddenState, duration: f64, rng: &mut SubjectRng) -> (Vec<f64>, Vec<f64>) {
    let rr0 = 60.0 / s.heart_rate_bpm;
    let resp_hz = uniform(rng, 0.2, 0.33);
    let resp_phase = uniform(rng, 0.0, TAU);
    let sigma = s.rr_variability;
    let mut t = -2.0 - uniform(rng, 0.0, rr0);
    let mut onsets = Vec::new();
    let mut rrs = Vec::new();
    let mut rr_prev = rr0;
    while t < duration + 1.0 {
        onsets.push(t);
        rrs.push(rr_prev);
        let rr = if s.conditions.af {
            rr0 * (sigma * normal(rng) - 0.5 * sigma * sigma).exp()
        } else {
            // Respiratory sinus arrhythmia plus a little irregularity.
            rr0 * (1.0
                + 1.1 * sigma * (TAU * resp_hz * t + resp_phase).sin()
                + 0.45 * sigma * normal(rng))
        }
        .max(0.28);
        t += rr;
        rr_prev = rr;
    }
    (onsets, rrs)
}

/// Generates the ECG of a subject from its `"ecg"` stream.
pub fn generate_ecg(s: &HiddenState, cfg: &EcgConfig, rng: &mut SubjectRng) -> Ecg {
    let fs = cfg.sample_rate_hz as f64;
    let n = cfg.strip_samples();
    let duration = n as f64 / fs;
    let model = BeatModel::new(s, rng);
    let (onsets, rrs) = beat_times(s, duration, rng);

    // The moving dipole, with respiration modulating the amplitude slightly.
    let resp_hz = uniform(rng, 0.2, 0.33);
    let resp_phase = uniform(rng, 0.0, TAU);
    let mut dipole: [Vec<f64>; 3] = std::array::from_fn(|_| vec![0.0; n]);
    for (&t0, &rr) in onsets.iter().zip(&rrs) {
        let gain = 1.0 + 0.04 * (TAU * resp_hz * t0 + resp_phase).sin();
        add_lobes(&mut dipole, &model.beat_lobes(rr, gain), t0, fs);
    }
    if s.conditions.af {
        add_fibrillatory_waves(&mut dipole, fs, rng);
    }

    // Lead vectors: Dower's transform perturbed by electrode placement.
    let mut lead_field = DOWER;
    for (i, row) in lead_field.iter_mut().enumerate() {
        let spread = if i < 2 { 0.04 } else { 0.08 };
        let gain = if i < 2 {
            1.0
        } else {
            (0.1 * normal(rng)).exp()
        };
        for v in row.iter_mut() {
            *v = gain * (*v + spread * normal(rng));
        }
    }
    // Independent leads I, II, V1..V6 in µV.
    let mut independent: Vec<Vec<f64>> = lead_field
        .iter()
        .map(|row| {
            (0..n)
                .map(|i| {
                    1000.0 * (row[0] * dipole[0][i] + row[1] * dipole[1][i] + row[2] * dipole[2][i])
                })
                .collect()
        })
        .collect();
    add_electrode_noise(&mut independent, fs, cfg.mains_hz, rng);

    let strip = derive_leads(&independent)
        .into_iter()
        .map(|lead| lead.iter().map(|&uv| quantise(uv)).collect())
        .collect::<Vec<Vec<i32>>>();

    let qrs_onsets: Vec<usize> = onsets
        .iter()
        .filter(|&&t| t >= 0.0 && t < duration)
        .map(|&t| (t * fs).round() as usize)
        .collect();
    let heart_rate_bpm = if qrs_onsets.len() >= 2 {
        let span = (qrs_onsets[qrs_onsets.len() - 1] - qrs_onsets[0]) as f64 / fs;
        60.0 * (qrs_onsets.len() - 1) as f64 / span
    } else {
        s.heart_rate_bpm
    };

    let median = median_beats(&strip, &qrs_onsets, cfg, || {
        // Fallback for strips too short to hold a whole median window: the clean template.
        let mut d: [Vec<f64>; 3] = std::array::from_fn(|_| vec![0.0; cfg.median_samples()]);
        let onset = MEDIAN_QRS_ONSET_MS as f64 / 1000.0;
        add_lobes(
            &mut d,
            &model.beat_lobes(60.0 / s.heart_rate_bpm, 1.0),
            onset,
            fs,
        );
        let ind: Vec<Vec<f64>> = lead_field
            .iter()
            .map(|row| {
                (0..d[0].len())
                    .map(|i| 1000.0 * (row[0] * d[0][i] + row[1] * d[1][i] + row[2] * d[2][i]))
                    .collect()
            })
            .collect();
        derive_leads(&ind)
            .into_iter()
            .map(|l| l.iter().map(|&uv| quantise(uv)).collect())
            .collect()
    });
    let measurements = measure(s, &model, &median, &qrs_onsets, heart_rate_bpm, fs, rng);
    let interpretation = interpret(s, &measurements, &median, fs);
    Ecg {
        sample_rate_hz: cfg.sample_rate_hz,
        strip,
        median,
        qrs_onsets,
        heart_rate_bpm,
        measurements,
        interpretation,
    }
}

/// Atrial fibrillation: a few drifting 4–9 Hz oscillations of the atrial dipole, strongest
/// towards V1 and the inferior leads.
fn add_fibrillatory_waves(dipole: &mut [Vec<f64>; 3], fs: f64, rng: &mut SubjectRng) {
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
fn add_electrode_noise(independent: &mut [Vec<f64>], fs: f64, mains_hz: f64, rng: &mut SubjectRng) {
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

/// Microvolts to stored integers, rounding half away from zero (`f64::round` without the
/// library call, which dominates in this loop).
fn quantise(uv: f64) -> i32 {
    let lsb = uv / UV_PER_LSB;
    (lsb + 0.5f64.copysign(lsb)) as i32
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

/// The 12 leads from I, II, V1..V6 (Einthoven and Goldberger relations).
fn derive_leads(independent: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let (i, ii) = (&independent[0], &independent[1]);
    let n = i.len();
    let mut leads = Vec::with_capacity(12);
    leads.push(i.clone());
    leads.push(ii.clone());
    leads.push((0..n).map(|k| ii[k] - i[k]).collect());
    leads.push((0..n).map(|k| -(i[k] + ii[k]) / 2.0).collect());
    leads.push((0..n).map(|k| i[k] - ii[k] / 2.0).collect());
    leads.push((0..n).map(|k| ii[k] - i[k] / 2.0).collect());
    leads.extend(independent[2..].iter().cloned());
    leads
}

/// Per-sample median of the beats aligned on their QRS onsets.
fn median_beats(
    strip: &[Vec<i32>],
    qrs_onsets: &[usize],
    cfg: &EcgConfig,
    fallback: impl FnOnce() -> Vec<Vec<i32>>,
) -> Vec<Vec<i32>> {
    let len = cfg.median_samples();
    let pre = (MEDIAN_QRS_ONSET_MS as u64 * cfg.sample_rate_hz as u64 / 1000) as usize;
    let n = strip[0].len();
    let starts: Vec<usize> = qrs_onsets
        .iter()
        .filter(|&&o| o >= pre && o - pre + len <= n)
        .map(|&o| o - pre)
        .collect();
    if starts.is_empty() {
        return fallback();
    }
    let mut column = Vec::with_capacity(starts.len());
    strip
        .iter()
        .map(|lead| {
            (0..len)
                .map(|k| {
                    column.clear();
                    column.extend(starts.iter().map(|&s| lead[s + k]));
                    column.sort_unstable();
                    let m = column.len();
                    if m % 2 == 1 {
                        column[m / 2]
                    } else {
                        // Round half away from zero, like the rest of the quantisation.
                        let sum = column[m / 2 - 1] + column[m / 2];
                        (sum as f64 / 2.0).round() as i32
                    }
                })
                .collect()
        })
        .collect()
}

/// Frontal axis (degrees) from the net areas of leads I and aVF over a window of the median.
fn frontal_axis(median: &[Vec<i32>], from: usize, to: usize) -> i32 {
    if median.len() < 6 || from >= to || to > median[0].len() || to > median[5].len() {
        return 0;
    }
    let area = |lead: usize| -> f64 {
        let l = &median[lead];
        let baseline = l[from.min(l.len() - 1)] as f64;
        l[from.min(l.len())..to.min(l.len())]
            .iter()
            .map(|&v| v as f64 - baseline)
            .sum()
    };
    let (i, avf) = (area(0), area(5));
    // aVF is √3/2 of the frontal projection onto +90°, lead I the projection onto 0°.
    (2.0 * avf / 3f64.sqrt()).atan2(i).to_degrees().round() as i32
}

fn measure(
    s: &HiddenState,
    model: &BeatModel,
    median: &[Vec<i32>],
    qrs_onsets: &[usize],
    heart_rate_bpm: f64,
    fs: f64,
    rng: &mut SubjectRng,
) -> EcgMeasurements {
    let ms = |samples: f64| samples * 1000.0 / fs;
    let to_samples = |ms: f64| (ms * fs / 1000.0).round() as usize;
    let rr = 60.0 / heart_rate_bpm;
    // A device measures with a few ms of error.
    let qrs = (s.qrs_ms + 3.0 * normal(rng)).round().max(40.0);
    let qt = (model.qt(rr) * 1000.0 + 5.0 * normal(rng)).round();
    let q_onset = MEDIAN_QRS_ONSET_MS as f64;
    let q_offset = q_onset + qrs;
    let t_offset = (q_onset + qt).min(ms(median[0].len() as f64) - 2.0);
    let (pq, p_dur, p_on, p_off, p_axis) = if s.conditions.af {
        (None, None, None, None, None)
    } else {
        let pq = (s.pr_ms + 4.0 * normal(rng)).round();
        let pd = (s.p_ms + 4.0 * normal(rng)).round();
        let on = q_onset - pq;
        let off = on + pd;
        let axis = frontal_axis(median, to_samples(on), to_samples(off));
        (Some(pq), Some(pd), Some(on), Some(off), Some(axis))
    };
    let r_axis = frontal_axis(median, to_samples(q_onset), to_samples(q_offset));
    let t_axis = frontal_axis(median, to_samples(q_offset), to_samples(t_offset));
    let as_u32 = |v: f64| v.max(0.0).round() as u32;
    EcgMeasurements {
        ventricular_rate: as_u32(heart_rate_bpm),
        pq_interval: pq.map(as_u32),
        p_duration: p_dur.map(as_u32),
        qrs_duration: as_u32(qrs),
        qt_interval: as_u32(qt),
        qtc_interval: as_u32(qt / rr.sqrt()),
        rr_interval: as_u32(rr * 1000.0),
        pp_interval: (!s.conditions.af).then(|| as_u32(rr * 1000.0)),
        p_axis,
        r_axis,
        t_axis,
        qrs_num: qrs_onsets.len() as u32,
        p_onset: p_on.map(as_u32),
        p_offset: p_off.map(as_u32),
        q_onset: as_u32(q_onset),
        q_offset: as_u32(q_offset),
        t_offset: as_u32(t_offset),
    }
}

/// Sokolow–Lyon voltage (S in V1 + the larger R in V5 or V6) of the median beat, µV.
///
/// `NaN` when the median beats do not hold 12 non-empty leads.
pub fn sokolow_lyon_uv(median: &[Vec<i32>], q_onset: usize, q_offset: usize) -> f64 {
    if median.len() < 12 || median.iter().any(Vec::is_empty) {
        return f64::NAN;
    }
    let window = |lead: usize| {
        let l = &median[lead];
        let base = l[q_onset.min(l.len() - 1)];
        l[q_onset.min(l.len())..q_offset.min(l.len())]
            .iter()
            .map(move |&v| (v - base) as f64 * UV_PER_LSB)
    };
    let s_v1 = -window(6).fold(0.0, f64::min);
    let r_v5 = window(10).fold(0.0, f64::max);
    let r_v6 = window(11).fold(0.0, f64::max);
    s_v1 + r_v5.max(r_v6)
}

fn interpret(s: &HiddenState, m: &EcgMeasurements, median: &[Vec<i32>], fs: f64) -> Vec<String> {
    let mut out = Vec::new();
    if s.conditions.af {
        out.push("Atrial fibrillation".to_string());
    } else if m.ventricular_rate < 60 {
        out.push("Sinus bradycardia".to_string());
    } else if m.ventricular_rate > 100 {
        out.push("Sinus tachycardia".to_string());
    } else {
        out.push("Sinus rhythm".to_string());
    }
    if m.r_axis < -30 {
        out.push("Left axis deviation".to_string());
    } else if m.r_axis > 90 {
        out.push("Right axis deviation".to_string());
    }
    if m.qrs_duration >= 120 {
        out.push("Wide QRS complex".to_string());
    }
    let to_samples = |ms: u32| (ms as f64 * fs / 1000.0).round() as usize;
    if sokolow_lyon_uv(median, to_samples(m.q_onset), to_samples(m.q_offset)) > 3500.0 {
        out.push("Voltage criteria for left ventricular hypertrophy".to_string());
    }
    if out.len() == 1 && out[0] == "Sinus rhythm" {
        out.push("Normal ECG".to_string());
    } else {
        out.push("Abnormal ECG".to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Prevalences;
    use crate::rng::subject_stream;
    use crate::state::PopulationModel;

    fn subject(eid: u64) -> (HiddenState, Ecg) {
        let model = PopulationModel::new(&Prevalences::default());
        let s = model.draw(eid, &mut subject_stream(9, eid, "state"));
        let ecg = generate_ecg(
            &s,
            &EcgConfig::default(),
            &mut subject_stream(9, eid, "ecg"),
        );
        (s, ecg)
    }

    #[test]
    fn limb_leads_obey_einthoven_and_goldberger() {
        let (_, ecg) = subject(1);
        assert_eq!(ecg.strip.len(), 12);
        assert!(ecg.strip.iter().all(|l| l.len() == 5000));
        for k in 0..5000 {
            let (i, ii, iii) = (ecg.strip[0][k], ecg.strip[1][k], ecg.strip[2][k]);
            // Each lead is rounded separately: the relations hold to one or two LSB.
            assert!((ii - i - iii).abs() <= 1);
            assert!((ecg.strip[3][k] + (i + ii) / 2).abs() <= 2);
        }
        assert_eq!(ecg.median.len(), 12);
        assert!(ecg.median.iter().all(|l| l.len() == 600));
    }

    #[test]
    fn extreme_acquisition_settings_still_give_a_whole_ecg() {
        let model = PopulationModel::new(&Prevalences::default());
        for (rate, seconds, median) in [(100, 4.0, 600), (2000, 4.0, 2000), (250, 60.0, 1200)] {
            let cfg = EcgConfig {
                sample_rate_hz: rate,
                duration_s: seconds,
                median_ms: median,
                ..EcgConfig::default()
            };
            for eid in 0..8 {
                let s = model.draw(eid, &mut subject_stream(1, eid, "state"));
                let ecg = generate_ecg(&s, &cfg, &mut subject_stream(1, eid, "ecg"));
                assert!(ecg.strip.iter().all(|l| l.len() == cfg.strip_samples()));
                assert!(ecg.median.iter().all(|l| l.len() == cfg.median_samples()));
                assert!(ecg.heart_rate_bpm > 30.0 && ecg.heart_rate_bpm < 200.0);
            }
        }
    }

    #[test]
    fn qrs_is_the_largest_deflection_and_measurements_are_plausible() {
        for eid in 0..20 {
            let (s, ecg) = subject(eid);
            let m = &ecg.measurements;
            assert!((m.ventricular_rate as f64 - ecg.heart_rate_bpm).abs() <= 0.5);
            assert!((40..=180).contains(&m.ventricular_rate));
            assert_eq!(m.pq_interval.is_none(), s.conditions.af);
            let on = (MEDIAN_QRS_ONSET_MS / 2) as usize;
            let off = on + (s.qrs_ms / 2.0) as usize;
            // Summed over the leads, the QRS swings more than the ST-T segment.
            let range = |a: usize, b: usize| -> i32 {
                ecg.median
                    .iter()
                    .map(|l| l[a..b].iter().max().unwrap() - l[a..b].iter().min().unwrap())
                    .sum()
            };
            assert!(range(on, off) > range(off + 10, 600.min(off + 150)));
        }
    }
}

//! The beat model: dipole lobes in the Frank frame shaped by the hidden state, their
//! summation into the moving dipole, and the beat times of the rhythm.

use std::f64::consts::TAU;

use crate::rng::{SubjectRng, bernoulli, normal, uniform};
use crate::state::{HiddenState, Territory};

/// A bump in time with a fixed spatial direction.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lobe {
    /// Peak time relative to the QRS onset, s.
    at: f64,
    /// Width before the peak, s.
    rise: f64,
    /// Width after the peak, s.
    fall: f64,
    /// Dipole at the peak (direction × magnitude), mV.
    vector: [f64; 3],
}

/// `v` scaled to unit length.
pub(super) fn normalised(v: [f64; 3]) -> [f64; 3] {
    let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    [v[0] / n, v[1] / n, v[2] / n]
}

/// `v` times `s`.
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
pub(super) struct BeatModel {
    atrial: Vec<Lobe>,
    ventricular: Vec<Lobe>,
    /// Repolarisation lobes; their timing scales with the QT of each beat.
    repolarisation: Vec<Lobe>,
    /// QT at an RR of one second (the QTc), s.
    qtc: f64,
}

impl BeatModel {
    /// The morphology of subject `s`, with the per-subject variation drawn from `rng`.
    pub(super) fn new(s: &HiddenState, rng: &mut SubjectRng) -> Self {
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
    pub(super) fn qt(&self, rr: f64) -> f64 {
        self.qtc * rr.sqrt()
    }

    /// The lobes of one beat with QRS onset at time 0, given its preceding RR interval.
    pub(super) fn beat_lobes(&self, rr: f64, gain: f64) -> Vec<Lobe> {
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
pub(super) fn add_lobes(dipole: &mut [Vec<f64>; 3], lobes: &[Lobe], onset: f64, fs: f64) {
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
pub(super) fn beat_times(
    s: &HiddenState,
    duration: f64,
    rng: &mut SubjectRng,
) -> (Vec<f64>, Vec<f64>) {
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

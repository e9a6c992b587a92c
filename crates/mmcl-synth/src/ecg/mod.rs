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

mod beat;
mod measure;
mod noise;

use std::f64::consts::TAU;

use crate::config::EcgConfig;
use crate::rng::{SubjectRng, normal, uniform};
use crate::state::HiddenState;

use beat::{BeatModel, add_lobes, beat_times};
use measure::{interpret, measure, median_beats};
use noise::{add_electrode_noise, add_fibrillatory_waves};

pub use measure::{EcgMeasurements, sokolow_lyon_uv};

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

/// Microvolts to stored integers, rounding half away from zero (`f64::round` without the
/// library call, which dominates in this loop).
fn quantise(uv: f64) -> i32 {
    let lsb = uv / UV_PER_LSB;
    (lsb + 0.5f64.copysign(lsb)) as i32
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

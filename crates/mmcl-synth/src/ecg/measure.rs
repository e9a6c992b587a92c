//! What the electrocardiograph reports: median beats, interval and axis measurements and the
//! interpretation statements.

use serde::{Deserialize, Serialize};

use super::beat::BeatModel;
use super::{MEDIAN_QRS_ONSET_MS, UV_PER_LSB};
use crate::config::EcgConfig;
use crate::rng::{SubjectRng, normal};
use crate::state::HiddenState;

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

/// Per-sample median of the beats aligned on their QRS onsets.
pub(super) fn median_beats(
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

/// The measurements a device reports for the median beats of subject `s` (with a few ms of
/// measurement error drawn from `rng`).
pub(super) fn measure(
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

/// The device's interpretation statements (rhythm, axis, QRS width, voltage, normal or not).
pub(super) fn interpret(
    s: &HiddenState,
    m: &EcgMeasurements,
    median: &[Vec<i32>],
    fs: f64,
) -> Vec<String> {
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

//! How learnable is the cohort? Simple ECG features, linear models and their cross-validated
//! scores, and the agreement of segmentation-measured phenotypes with the hidden state.
//!
//! These are the sanity figures of the cohort design: from a handful of classical ECG features
//! a linear model should detect AF well, estimate LV mass moderately and EF poorly, while the
//! CMR segmentation recovers every phenotype almost exactly. Everything here reads only what
//! the files hold (strip, median beats, device measurements), never the hidden state.

// The small dense linear algebra below reads best with explicit indices.
#![allow(clippy::needless_range_loop)]

use rayon::prelude::*;

use crate::ecg::{Ecg, UV_PER_LSB};
use crate::{Cohort, Result};

/// Names of the features returned by [`ecg_features`], in order.
pub const ECG_FEATURE_NAMES: [&str; 30] = [
    "heart_rate",
    "rr_cv",
    "rmssd_rel",
    "qrs_duration",
    "qt_interval",
    "qtc_interval",
    "axis_cos",
    "axis_sin",
    "p_wave_rms",
    "r_i",
    "r_avl",
    "r_v1",
    "r_v5",
    "r_v6",
    "s_v1",
    "s_v3",
    "s_ii",
    "sokolow_lyon",
    "cornell",
    "qrs_area_total",
    "q_inferior",
    "q_anterior",
    "q_lateral",
    "t_ii",
    "t_v2",
    "t_v5",
    "t_v6",
    "st_v5",
    "st_v6",
    "t_axis_cos",
];

/// QRS complexes found in a strip: the sample of greatest slope energy of each beat.
///
/// Each lead is smoothed over one 50 Hz mains period (removing the interference), its slope is
/// taken over 4 samples and squared; the sum over leads is integrated over 80 ms. Beats are the
/// maxima of the runs above a quarter of its 99th percentile, at least 250 ms apart.
pub fn detect_qrs(strip: &[Vec<i32>], sample_rate_hz: u32) -> Vec<usize> {
    let n = strip.first().map_or(0, Vec::len);
    let fs = sample_rate_hz as f64;
    let mains = ((fs / 50.0).round() as usize).max(1);
    if n < mains + 8 {
        return Vec::new();
    }
    let mut energy = vec![0.0f64; n];
    let mut smoothed = vec![0.0f64; n];
    for lead in strip {
        let mut acc = 0.0;
        for i in 0..n {
            acc += lead[i] as f64;
            if i >= mains {
                acc -= lead[i - mains] as f64;
            }
            smoothed[i] = acc / mains as f64;
        }
        for i in mains + 2..n - 2 {
            let slope = smoothed[i + 2] - smoothed[i - 2];
            energy[i] += slope * slope;
        }
    }
    let w = ((0.08 * fs) as usize).max(1);
    let mut smooth = vec![0.0f64; n];
    let mut acc = 0.0;
    for i in 0..n {
        acc += energy[i];
        if i >= w {
            acc -= energy[i - w];
        }
        // Centre the window on the sample (the smoothing above delays by half a mains period).
        let at = i.saturating_sub(w / 2 + mains / 2);
        smooth[at] = acc / w as f64;
    }
    let mut sorted = smooth.clone();
    sorted.sort_by(f64::total_cmp);
    let threshold = 0.25 * sorted[(0.99 * (n - 1) as f64) as usize];
    let refractory = (0.25 * fs) as usize;
    let mut peaks: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < n {
        if smooth[i] > threshold {
            // The maximum of this supra-threshold run.
            let mut best = i;
            while i < n && smooth[i] > threshold {
                if smooth[i] > smooth[best] {
                    best = i;
                }
                i += 1;
            }
            match peaks.last_mut() {
                Some(last) if best - *last < refractory => {
                    if smooth[best] > smooth[*last] {
                        *last = best;
                    }
                }
                _ => peaks.push(best),
            }
        } else {
            i += 1;
        }
    }
    peaks
}

/// Classical features of an ECG (see [`ECG_FEATURE_NAMES`]): rhythm from the strip's QRS
/// detections, intervals and axis from the device measurements, voltages, Q depths and
/// ST-T levels (mV) from the median beats.
///
/// An ECG without 12 non-empty median leads gives `NaN` for every feature.
pub fn ecg_features(ecg: &Ecg) -> Vec<f64> {
    if ecg.median.len() < 12 || ecg.median.iter().any(Vec::is_empty) || ecg.strip.is_empty() {
        return vec![f64::NAN; ECG_FEATURE_NAMES.len()];
    }
    let fs = ecg.sample_rate_hz as f64;
    let peaks = detect_qrs(&ecg.strip, ecg.sample_rate_hz);
    let rr: Vec<f64> = peaks
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / fs)
        .collect();
    let mean_rr = if rr.is_empty() {
        1.0
    } else {
        rr.iter().sum::<f64>() / rr.len() as f64
    };
    let sd_rr = if rr.len() < 2 {
        0.0
    } else {
        (rr.iter().map(|r| (r - mean_rr).powi(2)).sum::<f64>() / (rr.len() - 1) as f64).sqrt()
    };
    let rmssd = if rr.len() < 2 {
        0.0
    } else {
        (rr.windows(2).map(|w| (w[1] - w[0]).powi(2)).sum::<f64>() / (rr.len() - 1) as f64).sqrt()
    };
    let m = &ecg.measurements;
    let s = |ms: u32| ((ms as f64) * fs / 1000.0).round() as usize;
    let q_on = s(m.q_onset);
    let q_off = s(m.q_offset).max(q_on + 1);
    let t_off = s(m.t_offset).max(q_off + 2);
    let len = ecg.median[0].len();
    let mv = |lead: usize, i: usize| -> f64 {
        let l = &ecg.median[lead];
        (l[i.min(len - 1)] - l[q_on.min(len - 1)]) as f64 * UV_PER_LSB / 1000.0
    };
    let range = |lead: usize, a: usize, b: usize| -> (f64, f64) {
        (a..b.min(len)).fold((0.0f64, 0.0f64), |(lo, hi), i| {
            let v = mv(lead, i);
            (lo.min(v), hi.max(v))
        })
    };
    let r = |lead: usize| range(lead, q_on, q_off).1;
    let sd = |lead: usize| -range(lead, q_on, q_off).0;
    let early = q_on + ((q_off - q_on) * 2 / 5).max(1);
    let q = |lead: usize| -range(lead, q_on, early).0;
    // T amplitude: the signed extreme between the end of the QRS + 60 ms and the T offset.
    let t = |lead: usize| {
        let (lo, hi) = range(lead, q_off + s(60), t_off);
        if hi >= -lo { hi } else { lo }
    };
    let st = |lead: usize| mv(lead, q_off + s(60));
    let p_rms = {
        let a = q_on.saturating_sub(s(260));
        let b = q_on.saturating_sub(s(40));
        let lead = 1;
        let vals: Vec<f64> = (a..b).map(|i| mv(lead, i) - mv(lead, a)).collect();
        (vals.iter().map(|v| v * v).sum::<f64>() / vals.len().max(1) as f64).sqrt()
    };
    let qrs_area: f64 = (0..12)
        .map(|lead| (q_on..q_off).map(|i| mv(lead, i).abs()).sum::<f64>() / fs)
        .sum();
    let axis = (m.r_axis as f64).to_radians();
    let t_axis = (m.t_axis as f64).to_radians();
    vec![
        60.0 / mean_rr,
        sd_rr / mean_rr,
        rmssd / mean_rr,
        m.qrs_duration as f64,
        m.qt_interval as f64,
        m.qtc_interval as f64,
        axis.cos(),
        axis.sin(),
        p_rms,
        r(0),
        r(4),
        r(6),
        r(10),
        r(11),
        sd(6),
        sd(8),
        sd(1),
        sd(6) + r(10).max(r(11)),
        r(4) + sd(8),
        qrs_area,
        q(1).max(q(2)).max(q(5)),
        q(6).max(q(7)).max(q(8)).max(q(9)),
        q(0).max(q(4)).max(q(10)).max(q(11)),
        t(1),
        t(7),
        t(10),
        t(11),
        st(10),
        st(11),
        t_axis.cos(),
    ]
}

/// Coefficient of determination of `pred` for `truth` (1 − SS_res / SS_tot).
pub fn r_squared(pred: &[f64], truth: &[f64]) -> f64 {
    let n = truth.len() as f64;
    let mean = truth.iter().sum::<f64>() / n;
    let ss_tot: f64 = truth.iter().map(|t| (t - mean).powi(2)).sum();
    let ss_res: f64 = pred.iter().zip(truth).map(|(p, t)| (t - p).powi(2)).sum();
    1.0 - ss_res / ss_tot
}

/// Area under the ROC curve of `scores` for `labels` (ties count half).
pub fn auroc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut pairs: Vec<(f64, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let positives = labels.iter().filter(|&&l| l).count() as f64;
    let negatives = labels.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return f64::NAN;
    }
    // Mann–Whitney U with average ranks for ties.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        while j + 1 < pairs.len() && pairs[j + 1].0 == pairs[i].0 {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += pairs[i..=j].iter().filter(|p| p.1).count() as f64 * avg_rank;
        i = j + 1;
    }
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

/// Feature standardisation fitted on a training set.
struct Standardiser {
    mean: Vec<f64>,
    scale: Vec<f64>,
}

impl Standardiser {
    fn fit(x: &[&Vec<f64>]) -> Self {
        let d = x[0].len();
        let n = x.len() as f64;
        let mean: Vec<f64> = (0..d)
            .map(|j| x.iter().map(|r| r[j]).sum::<f64>() / n)
            .collect();
        let scale = (0..d)
            .map(|j| {
                let v = x.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / n;
                if v > 1e-12 { v.sqrt() } else { 1.0 }
            })
            .collect();
        Self { mean, scale }
    }

    fn apply(&self, row: &[f64]) -> Vec<f64> {
        row.iter()
            .zip(self.mean.iter().zip(&self.scale))
            .map(|(v, (m, s))| (v - m) / s)
            .collect()
    }
}

/// Solves the symmetric positive-definite system `a x = b` (Cholesky).
fn solve_spd(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let d = b.len();
    for j in 0..d {
        let mut diag = a[j][j];
        for k in 0..j {
            diag -= a[j][k] * a[j][k];
        }
        let l = diag.max(1e-12).sqrt();
        a[j][j] = l;
        for i in j + 1..d {
            let mut v = a[i][j];
            for k in 0..j {
                v -= a[i][k] * a[j][k];
            }
            a[i][j] = v / l;
        }
    }
    for i in 0..d {
        for k in 0..i {
            b[i] -= a[i][k] * b[k];
        }
        b[i] /= a[i][i];
    }
    for i in (0..d).rev() {
        for k in i + 1..d {
            b[i] -= a[k][i] * b[k];
        }
        b[i] /= a[i][i];
    }
    b
}

/// A linear model on standardised features with an intercept.
struct Linear {
    standardiser: Standardiser,
    weights: Vec<f64>,
    bias: f64,
}

impl Linear {
    fn predict(&self, row: &[f64]) -> f64 {
        let z = self.standardiser.apply(row);
        self.bias + z.iter().zip(&self.weights).map(|(a, b)| a * b).sum::<f64>()
    }

    /// Ridge regression (penalty `lambda` on standardised weights).
    fn ridge(x: &[&Vec<f64>], y: &[f64], lambda: f64) -> Self {
        let standardiser = Standardiser::fit(x);
        let z: Vec<Vec<f64>> = x.iter().map(|r| standardiser.apply(r)).collect();
        let d = z[0].len();
        let y_mean = y.iter().sum::<f64>() / y.len() as f64;
        let mut a = vec![vec![0.0; d]; d];
        let mut b = vec![0.0; d];
        for (row, &t) in z.iter().zip(y) {
            for i in 0..d {
                b[i] += row[i] * (t - y_mean);
                for j in 0..=i {
                    a[i][j] += row[i] * row[j];
                }
            }
        }
        for i in 0..d {
            for j in 0..i {
                a[j][i] = a[i][j];
            }
            a[i][i] += lambda;
        }
        Self {
            standardiser,
            weights: solve_spd(a, b),
            bias: y_mean,
        }
    }

    /// L2-penalised logistic regression by Newton's method.
    fn logistic(x: &[&Vec<f64>], y: &[bool], lambda: f64) -> Self {
        let standardiser = Standardiser::fit(x);
        let z: Vec<Vec<f64>> = x.iter().map(|r| standardiser.apply(r)).collect();
        let d = z[0].len() + 1; // last = intercept
        let mut w = vec![0.0; d];
        for _ in 0..30 {
            let mut grad = vec![0.0; d];
            let mut hess = vec![vec![0.0; d]; d];
            for (row, &label) in z.iter().zip(y) {
                let eta = w[d - 1] + row.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>();
                let p = 1.0 / (1.0 + (-eta).exp());
                let r = p - if label { 1.0 } else { 0.0 };
                let s = (p * (1.0 - p)).max(1e-9);
                for i in 0..d {
                    let xi = if i + 1 == d { 1.0 } else { row[i] };
                    grad[i] += r * xi;
                    for j in 0..=i {
                        let xj = if j + 1 == d { 1.0 } else { row[j] };
                        hess[i][j] += s * xi * xj;
                    }
                }
            }
            for i in 0..d {
                for j in 0..i {
                    hess[j][i] = hess[i][j];
                }
                if i + 1 < d {
                    grad[i] += lambda * w[i];
                    hess[i][i] += lambda;
                } else {
                    hess[i][i] += 1e-9;
                }
            }
            let step = solve_spd(hess, grad);
            let mut size = 0.0f64;
            for i in 0..d {
                w[i] -= step[i];
                size = size.max(step[i].abs());
            }
            if size < 1e-8 {
                break;
            }
        }
        let bias = w[d - 1];
        w.truncate(d - 1);
        Self {
            standardiser,
            weights: w,
            bias,
        }
    }
}

/// Out-of-fold predictions of a model trained on the other `folds − 1` folds (subject `i` is
/// in fold `i % folds`).
fn out_of_fold<F>(x: &[Vec<f64>], folds: usize, fit: F) -> Vec<f64>
where
    F: Fn(&[&Vec<f64>], &[usize]) -> Linear,
{
    let mut pred = vec![0.0; x.len()];
    for fold in 0..folds {
        let train: Vec<usize> = (0..x.len()).filter(|i| i % folds != fold).collect();
        let rows: Vec<&Vec<f64>> = train.iter().map(|&i| &x[i]).collect();
        let model = fit(&rows, &train);
        for i in (0..x.len()).filter(|i| i % folds == fold) {
            pred[i] = model.predict(&x[i]);
        }
    }
    pred
}

/// Cross-validated R² of a ridge regression of `y` on `x`.
pub fn cross_validated_r2(x: &[Vec<f64>], y: &[f64], folds: usize) -> f64 {
    let pred = out_of_fold(x, folds, |rows, idx| {
        let t: Vec<f64> = idx.iter().map(|&i| y[i]).collect();
        Linear::ridge(rows, &t, 1.0)
    });
    r_squared(&pred, y)
}

/// Cross-validated AUROC of a logistic regression of `labels` on `x`.
pub fn cross_validated_auroc(x: &[Vec<f64>], labels: &[bool], folds: usize) -> f64 {
    let pred = out_of_fold(x, folds, |rows, idx| {
        let t: Vec<bool> = idx.iter().map(|&i| labels[i]).collect();
        Linear::logistic(rows, &t, 1.0)
    });
    auroc(&pred, labels)
}

/// The learnability figures of a cohort.
#[derive(Debug, Clone, PartialEq)]
pub struct Learnability {
    /// Subjects used.
    pub subjects: usize,
    /// Cross-validated R² from ECG features, per phenotype (UK Biobank field order).
    pub ecg_phenotype_r2: Vec<(&'static str, f64)>,
    /// Cross-validated AUROC from ECG features, per condition.
    pub ecg_condition_auroc: Vec<(&'static str, f64)>,
    /// R² of the segmentation-measured phenotypes against the hidden state (no fitting).
    pub cmr_phenotype_r2: Vec<(&'static str, f64)>,
}

/// Generates `subjects` subjects of `cohort` in memory (in parallel) and computes the
/// learnability figures with `folds`-fold cross-validation.
///
/// # Errors
/// When a subject cannot be generated.
pub fn learnability(cohort: &Cohort, subjects: usize, folds: usize) -> Result<Learnability> {
    struct Row {
        features: Vec<f64>,
        measured: [f64; 10],
        hidden: [f64; 10],
        conditions: [bool; 5],
    }
    let rows = (0..subjects)
        .into_par_iter()
        .map(|i| {
            let s = cohort.subject(i)?;
            let st = &s.state;
            let c = &st.conditions;
            // Cardiac output at the rate during the CMR scan, where it is measured.
            let hr = st.cmr_heart_rate_bpm;
            Ok(Row {
                features: ecg_features(&s.ecg),
                measured: s.phenotypes.values(),
                hidden: [
                    st.lvedv,
                    st.lvesv,
                    st.lvedv - st.lvesv,
                    st.lvef,
                    (st.lvedv - st.lvesv) * hr / 1000.0,
                    st.lvm,
                    st.rvedv,
                    st.rvesv,
                    st.rvedv - st.rvesv,
                    st.rvef,
                ],
                conditions: [c.af, c.cad, c.lvh, c.diabetes, c.prior_mi],
            })
        })
        .collect::<Result<Vec<Row>>>()?;
    let x: Vec<Vec<f64>> = rows.iter().map(|r| r.features.clone()).collect();
    let names = mmcl_data::phenotypes::PHENOTYPE_FIELDS.map(|f| f.name);
    let ecg_phenotype_r2 = (0..10)
        .map(|j| {
            let y: Vec<f64> = rows.iter().map(|r| r.measured[j]).collect();
            (names[j], cross_validated_r2(&x, &y, folds))
        })
        .collect();
    let condition_names = ["af", "cad", "lvh", "diabetes", "prior_mi"];
    let ecg_condition_auroc = (0..5)
        .map(|j| {
            let y: Vec<bool> = rows.iter().map(|r| r.conditions[j]).collect();
            (condition_names[j], cross_validated_auroc(&x, &y, folds))
        })
        .collect();
    let cmr_phenotype_r2 = (0..10)
        .map(|j| {
            let measured: Vec<f64> = rows.iter().map(|r| r.measured[j]).collect();
            let hidden: Vec<f64> = rows.iter().map(|r| r.hidden[j]).collect();
            (names[j], r_squared(&measured, &hidden))
        })
        .collect();
    Ok(Learnability {
        subjects,
        ecg_phenotype_r2,
        ecg_condition_auroc,
        cmr_phenotype_r2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_and_r2_on_known_cases() {
        assert_eq!(
            auroc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]),
            0.75
        );
        assert_eq!(auroc(&[1.0, 1.0], &[false, true]), 0.5);
        assert!((r_squared(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]) - 1.0).abs() < 1e-12);
        assert!(r_squared(&[2.0, 2.0, 2.0], &[1.0, 2.0, 3.0]).abs() < 1e-12);
    }

    #[test]
    fn linear_models_recover_a_linear_signal() {
        let x: Vec<Vec<f64>> = (0..400)
            .map(|i| {
                let a = ((i * 37) % 101) as f64 / 101.0;
                let b = ((i * 53) % 97) as f64 / 97.0;
                vec![a, b, a * b]
            })
            .collect();
        let y: Vec<f64> = x.iter().map(|r| 3.0 * r[0] - 2.0 * r[1] + 1.0).collect();
        assert!(cross_validated_r2(&x, &y, 5) > 0.99);
        let labels: Vec<bool> = x.iter().map(|r| r[0] > r[1]).collect();
        assert!(cross_validated_auroc(&x, &labels, 5) > 0.97);
    }
}

//! The reference ECG preprocessing (MMCL-ECG-CMR `utils/preprocessing.py`):
//! NaN → 0, clipping to ±4·std (std over all leads), per-lead asymmetric-least-squares
//! baseline removal (λ = 1e7, p = 0.3, 5 iterations) and group-wise normalisation over the
//! lead groups `[0:3]`, `[3:6]`, `[6:12]`; plus resampling to the model's rate and cropping.
//! A lead that equals its baseline (flat, all missing) keeps that baseline instead of the
//! reference's NaN from a singular solve (see [`baseline_als`]).
//!
//! All arithmetic is in f64 (as the reference's NumPy/SciPy code); results are returned as f32.
//! The baseline is the solution of the pentadiagonal system `(W + λ·D·Dᵀ) z = W·y`, factored
//! as `L·diag(d)·Lᵀ` in linear time and memory: no dense or general sparse matrix is built.

use rayon::prelude::*;
use rustfft::num_complex::Complex;
use serde::{Deserialize, Serialize};

use super::{Ecg, MAX_SAMPLES_PER_LEAD, NUM_LEADS, check_sample_rate};
use crate::{Error, Result};

/// Parameters of the asymmetric-least-squares baseline (Eilers & Boelens, 2005).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlsConfig {
    /// Smoothness penalty λ on second differences.
    pub lambda: f64,
    /// Asymmetry: weight of samples above the baseline (1 − p below).
    pub p: f64,
    /// Reweighting iterations.
    pub iterations: usize,
}

impl Default for AlsConfig {
    /// The reference's values: λ = 1e7, p = 0.3, 5 iterations.
    fn default() -> Self {
        Self {
            lambda: 1e7,
            p: 0.3,
            iterations: 5,
        }
    }
}

/// How the baseline-free signal is standardised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalisation {
    /// Mean and variance over each group of leads; the groups end at these lead indices
    /// (the reference: `[3, 6, 12]`).
    GroupWise(Vec<usize>),
    /// Mean and variance per lead.
    ChannelWise,
    /// One mean and variance over the whole recording.
    SampleWise,
    /// No normalisation.
    None,
}

/// The preprocessing pipeline; [`Default`] is the reference's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreprocessConfig {
    /// The model's sampling rate in Hz; recordings at another rate are resampled first.
    pub sample_rate: f64,
    /// Clip to ± this many standard deviations (over all leads); `None` disables clipping.
    pub clip_std: Option<f64>,
    /// Baseline-wander removal; `None` disables it.
    pub baseline: Option<AlsConfig>,
    /// Normalisation of the result.
    pub normalisation: Normalisation,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            sample_rate: 500.0,
            clip_std: Some(4.0),
            baseline: Some(AlsConfig::default()),
            normalisation: Normalisation::GroupWise(vec![3, 6, 12]),
        }
    }
}

/// Variance floor of the reference's normalisation: `(x − mean) / sqrt(var + 1e-12)`.
const VARIANCE_EPS: f64 = 1e-12;

/// Resamples (when the rate differs) and processes a recording; the result has the
/// configuration's rate.
///
/// # Errors
/// An invalid configuration (normalisation groups that do not partition the 12 leads, a
/// rate outside the plausible ECG range of [`check_sample_rate`]), or a resampled length
/// above [`MAX_SAMPLES_PER_LEAD`].
pub fn preprocess(ecg: &Ecg, cfg: &PreprocessConfig) -> Result<Ecg> {
    check_sample_rate(cfg.sample_rate).map_err(|e| match e {
        Error::InvalidInput(reason) => Error::InvalidInput(format!("target {reason}")),
        other => other,
    })?;
    let resampled;
    let ecg = if (ecg.sample_rate() - cfg.sample_rate).abs() > 1e-9 {
        // Missing samples would spread over the whole spectrum: zero them first (as the
        // processing below does anyway).
        let finite: Vec<f32> = ecg
            .data()
            .iter()
            .map(|v| if v.is_finite() { *v } else { 0.0 })
            .collect();
        let finite = Ecg::new(finite, ecg.samples(), ecg.sample_rate())?;
        resampled = resample(&finite, cfg.sample_rate)?;
        &resampled
    } else {
        ecg
    };
    let samples = ecg.samples();
    let mut x: Vec<f64> = ecg.data().iter().map(|&v| v as f64).collect();
    process_in_place(&mut x, NUM_LEADS, samples, cfg)?;
    Ecg::new(
        x.into_iter().map(|v| v as f32).collect(),
        samples,
        cfg.sample_rate,
    )
}

/// The reference processing of lead-major samples `[leads, samples]`, in place, in f64:
/// non-finite → 0, clipping, baseline removal per lead (in parallel), normalisation.
///
/// # Errors
/// When the length is not `leads × samples` or the normalisation groups do not partition the
/// leads.
pub fn process_in_place(
    x: &mut [f64],
    leads: usize,
    samples: usize,
    cfg: &PreprocessConfig,
) -> Result<()> {
    if x.len() != leads * samples || samples == 0 {
        return Err(Error::InvalidInput(format!(
            "{} values do not form {leads} leads of {samples} samples",
            x.len()
        )));
    }
    // The reference's nan_to_num maps ±inf to ±f64::MAX, which then poisons the standard
    // deviation; treating every non-finite sample as missing (0) is the useful reading.
    for v in x.iter_mut() {
        if !v.is_finite() {
            *v = 0.0;
        }
    }
    if let Some(k) = cfg.clip_std {
        let (_, var) = mean_var(x);
        let bound = k * var.sqrt();
        for v in x.iter_mut() {
            *v = v.clamp(-bound, bound);
        }
    }
    if let Some(als) = cfg.baseline {
        remove_baselines(x, leads, samples, &als);
    }
    normalise(x, leads, samples, &cfg.normalisation)
}

/// Mean and population variance (NumPy's `var`, ddof = 0), two-pass.
fn mean_var(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (mean, var)
}

/// Normalises lead-major samples in place: `(x − mean) / sqrt(var + 1e-12)` per group.
///
/// # Errors
/// Group boundaries that are not increasing or do not end at `leads`.
pub fn normalise(x: &mut [f64], leads: usize, samples: usize, mode: &Normalisation) -> Result<()> {
    let groups: Vec<(usize, usize)> = match mode {
        Normalisation::None => return Ok(()),
        Normalisation::SampleWise => vec![(0, leads)],
        Normalisation::ChannelWise => (0..leads).map(|l| (l, l + 1)).collect(),
        Normalisation::GroupWise(ends) => {
            let mut start = 0;
            let mut groups = Vec::with_capacity(ends.len());
            for &end in ends {
                if end <= start || end > leads {
                    return Err(Error::InvalidInput(format!(
                        "normalisation groups {ends:?} must increase and end at {leads}"
                    )));
                }
                groups.push((start, end));
                start = end;
            }
            if start != leads {
                return Err(Error::InvalidInput(format!(
                    "normalisation groups {ends:?} must end at lead {leads}"
                )));
            }
            groups
        }
    };
    for (start, end) in groups {
        let group = &mut x[start * samples..end * samples];
        let (mean, var) = mean_var(group);
        let inv = 1.0 / (var + VARIANCE_EPS).sqrt();
        for v in group.iter_mut() {
            *v = (*v - mean) * inv;
        }
    }
    Ok(())
}

/// The asymmetric-least-squares baseline of one lead.
///
/// Each iteration solves `(W + λ·D·Dᵀ) z = W·y` with `W = diag(w)` and `D` the `n × (n−2)`
/// second-difference matrix, then sets `w = p` where `y > z`, `1 − p` where `y < z` and 0 where
/// they are equal (exactly as the reference). Once fewer than two samples are weighted (a flat
/// signal: every sample equals the baseline) the next system would be singular, and the
/// reference returns NaN; the baseline reached so far is kept instead. The matrix is otherwise
/// symmetric positive definite and pentadiagonal; it is factored as `L·diag(d)·Lᵀ` with a unit
/// lower-triangular `L` of bandwidth 2, in O(n).
pub fn baseline_als(y: &[f64], cfg: &AlsConfig) -> Vec<f64> {
    let [z] = baseline_als_lanes::<1>([y], cfg);
    z
}

/// Removes the ALS baseline from every lead of lead-major `[leads, samples]` samples, several
/// leads at a time.
///
/// The factorisation is a sequential recurrence along the samples whose speed is bounded by
/// its latency (a division per sample); solving `K` leads in lock-step makes the `K`
/// independent recurrences fill the pipeline and the vector lanes instead.
pub fn remove_baselines(x: &mut [f64], leads: usize, samples: usize, cfg: &AlsConfig) {
    if leads == 0 || samples == 0 || x.len() != leads * samples {
        return;
    }
    // Lanes per task: few wide tasks on few cores, more narrow ones on many.
    let threads = rayon::current_num_threads().max(1);
    let lanes = match leads.div_ceil(threads) {
        0..=1 => 1,
        2 => 2,
        3..=4 => 4,
        _ => 6,
    };
    x.par_chunks_mut(lanes * samples).for_each(|group| {
        let n_leads = group.len() / samples;
        match lanes {
            6 if n_leads == 6 => subtract_lanes::<6>(group, samples, cfg),
            4 if n_leads == 4 => subtract_lanes::<4>(group, samples, cfg),
            2 if n_leads == 2 => subtract_lanes::<2>(group, samples, cfg),
            _ => {
                for lead in group.chunks_mut(samples) {
                    subtract_lanes::<1>(lead, samples, cfg);
                }
            }
        }
    });
}

fn subtract_lanes<const K: usize>(group: &mut [f64], samples: usize, cfg: &AlsConfig) {
    let z = {
        let ys: [&[f64]; K] = std::array::from_fn(|k| &group[k * samples..(k + 1) * samples]);
        baseline_als_lanes::<K>(ys, cfg)
    };
    for (k, zk) in z.iter().enumerate() {
        for (v, b) in group[k * samples..(k + 1) * samples].iter_mut().zip(zk) {
            *v -= b;
        }
    }
}

/// [`baseline_als`] of `K` signals of equal length at once (interleaved `[n][K]` buffers).
fn baseline_als_lanes<const K: usize>(ys: [&[f64]; K], cfg: &AlsConfig) -> [Vec<f64>; K] {
    let n = ys[0].len();
    if n < 3 || ys.iter().any(|y| y.len() != n) {
        // No second differences: the system is W z = W y.
        return std::array::from_fn(|k| ys[k].to_vec());
    }
    // Bands of λ·D·Dᵀ (shared by all lanes): each column j of D is (1, −2, 1) at rows
    // j, j+1, j+2.
    let lam = cfg.lambda;
    let mut band0 = vec![0.0; n];
    let mut band1 = vec![0.0; n - 1];
    for j in 0..n - 2 {
        band0[j] += lam;
        band0[j + 1] += 4.0 * lam;
        band0[j + 2] += lam;
        band1[j] -= 2.0 * lam;
        band1[j + 1] -= 2.0 * lam;
    }
    let band2 = lam;
    let y: Vec<[f64; K]> = (0..n).map(|i| std::array::from_fn(|k| ys[k][i])).collect();
    let mut w = vec![[1.0; K]; n];
    let mut z = vec![[0.0; K]; n];
    let mut inv_d = vec![[0.0; K]; n];
    let mut l1 = vec![[0.0; K]; n];
    let mut l2 = vec![[0.0; K]; n];
    let mut frozen: [Option<Vec<f64>>; K] = std::array::from_fn(|_| None);
    for _ in 0..cfg.iterations {
        // Factor A = L·diag(d)·Lᵀ with A = diag(w) + λ·D·Dᵀ, keeping 1/d.
        let mut d_prev = [0.0; K]; // d[i-1]
        let mut d_prev2 = [0.0; K]; // d[i-2]
        for i in 0..n {
            let mut d = [0.0; K];
            for k in 0..K {
                let mut di = w[i][k] + band0[i];
                if i >= 1 {
                    di -= l1[i - 1][k] * l1[i - 1][k] * d_prev[k];
                }
                if i >= 2 {
                    di -= l2[i - 2][k] * l2[i - 2][k] * d_prev2[k];
                }
                d[k] = di;
                let inv = 1.0 / di;
                inv_d[i][k] = inv;
                if i + 1 < n {
                    let mut v = band1[i];
                    if i >= 1 {
                        v -= l2[i - 1][k] * d_prev[k] * l1[i - 1][k];
                    }
                    l1[i][k] = v * inv;
                }
                if i + 2 < n {
                    l2[i][k] = band2 * inv;
                }
            }
            d_prev2 = d_prev;
            d_prev = d;
        }
        // Solve L·u = w·y, then diag(d)·v = u, then Lᵀ·z = v.
        for i in 0..n {
            for k in 0..K {
                let mut u = w[i][k] * y[i][k];
                if i >= 1 {
                    u -= l1[i - 1][k] * z[i - 1][k];
                }
                if i >= 2 {
                    u -= l2[i - 2][k] * z[i - 2][k];
                }
                z[i][k] = u;
            }
        }
        for i in (0..n).rev() {
            for k in 0..K {
                let mut v = z[i][k] * inv_d[i][k];
                if i + 1 < n {
                    v -= l1[i][k] * z[i + 1][k];
                }
                if i + 2 < n {
                    v -= l2[i][k] * z[i + 2][k];
                }
                z[i][k] = v;
            }
        }
        let mut weighted = [0usize; K];
        for i in 0..n {
            for k in 0..K {
                w[i][k] = if y[i][k] > z[i][k] {
                    cfg.p
                } else if y[i][k] < z[i][k] {
                    1.0 - cfg.p
                } else {
                    0.0
                };
                weighted[k] += usize::from(w[i][k] != 0.0);
            }
        }
        // With fewer than two weighted samples `W + λ·D·Dᵀ` is singular (a straight line through
        // them costs nothing) and the next solve would be NaN, as the reference's `spsolve` is:
        // a flat lead (a disconnected electrode: the signal equals its baseline everywhere, so
        // every weight is 0) would poison its whole normalisation group. Such a lane keeps the
        // baseline it has; its solves go on with harmless weights and are discarded.
        for k in 0..K {
            if frozen[k].is_none() && weighted[k] < 2 {
                frozen[k] = Some(z.iter().map(|zi| zi[k]).collect());
            }
            if frozen[k].is_some() {
                w.iter_mut().for_each(|wi| wi[k] = 1.0);
            }
        }
    }
    std::array::from_fn(|k| match frozen[k].take() {
        Some(kept) => kept,
        None => z.iter().map(|zi| zi[k]).collect(),
    })
}

/// Resamples every lead to `rate` Hz by Fourier interpolation (SciPy's `signal.resample`:
/// the spectrum is truncated or zero-padded, the unpaired Nyquist bin split or merged). The
/// new length is `round(samples · rate / old_rate)`.
///
/// The target rate goes through the same [`check_sample_rate`] as every recording, and the new
/// length is checked against [`MAX_SAMPLES_PER_LEAD`] before anything is allocated.
///
/// # Errors
/// A rate outside the plausible ECG range, or a result with no samples or more than
/// [`MAX_SAMPLES_PER_LEAD`].
pub fn resample(ecg: &Ecg, rate: f64) -> Result<Ecg> {
    check_sample_rate(rate)?;
    let n = ecg.samples();
    let from = ecg.sample_rate();
    // In f64 first: the product cannot overflow there (both rates are checked finite and
    // positive), and the comparison bounds the cast below.
    let exact = (n as f64 * rate / from).round();
    if exact > MAX_SAMPLES_PER_LEAD as f64 {
        return Err(Error::InvalidInput(format!(
            "resampling {n} samples from {from} Hz to {rate} Hz would give {exact} samples per \
             lead, more than the limit of {MAX_SAMPLES_PER_LEAD}"
        )));
    }
    let m = exact as usize;
    if m == 0 {
        return Err(Error::InvalidInput(format!(
            "resampling {n} samples from {from} Hz to {rate} Hz leaves none"
        )));
    }
    let values = NUM_LEADS
        .checked_mul(m)
        .ok_or_else(|| Error::InvalidInput(format!("{m} samples per lead overflow")))?;
    if m == n {
        return Ecg::new(ecg.data().to_vec(), n, rate);
    }
    let (forward, _) = super::fft_plans(n);
    let (_, inverse) = super::fft_plans(m);
    let mut out = vec![0.0f32; values];
    let keep = n.min(m);
    let half = keep / 2 + 1; // bins 0..half are the non-negative frequencies kept
    for (lead, dst) in out.chunks_mut(m).enumerate() {
        let mut x: Vec<Complex<f64>> = ecg
            .lead(lead)
            .iter()
            .map(|&v| Complex::new(v as f64, 0.0))
            .collect();
        forward.process(&mut x);
        let mut y = vec![Complex::new(0.0, 0.0); m];
        y[..half].copy_from_slice(&x[..half]);
        if half < keep {
            let neg = keep - half; // negative-frequency bins kept
            y[m - neg..].copy_from_slice(&x[n - neg..]);
        }
        if keep.is_multiple_of(2) {
            let k = keep / 2;
            if m < n {
                // Down-sampling: the pair ±k becomes one unpaired bin.
                y[m - k] += x[n - k];
            } else {
                // Up-sampling: the unpaired bin is split into the pair ±k.
                y[k] /= 2.0;
                y[m - k] = y[k];
            }
        }
        inverse.process(&mut y);
        // rustfft does not normalise; SciPy's ifft divides by m, and resample scales by m/n.
        let scale = 1.0 / n as f64;
        for (d, v) in dst.iter_mut().zip(&y) {
            *d = (v.re * scale) as f32;
        }
    }
    Ecg::new(out, m, rate)
}

/// The window `[start, start + len)` of every lead.
///
/// # Errors
/// When the window does not fit in the recording.
pub fn crop(ecg: &Ecg, start: usize, len: usize) -> Result<Ecg> {
    if len == 0 || start.checked_add(len).is_none_or(|end| end > ecg.samples()) {
        return Err(Error::InvalidInput(format!(
            "crop of {len} samples from {start} does not fit in {} samples",
            ecg.samples()
        )));
    }
    let mut data = Vec::with_capacity(NUM_LEADS * len);
    for lead in 0..NUM_LEADS {
        data.extend_from_slice(&ecg.lead(lead)[start..start + len]);
    }
    Ecg::new(data, len, ecg.sample_rate())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dense reference: builds W + λ·D·Dᵀ explicitly and solves it by Gaussian elimination.
    #[allow(clippy::needless_range_loop)]
    fn dense_als(y: &[f64], cfg: &AlsConfig) -> Vec<f64> {
        let n = y.len();
        let mut dd = vec![vec![0.0; n]; n];
        for j in 0..n - 2 {
            let col = [(j, 1.0), (j + 1, -2.0), (j + 2, 1.0)];
            for &(r, a) in &col {
                for &(c, b) in &col {
                    dd[r][c] += cfg.lambda * a * b;
                }
            }
        }
        let mut w = vec![1.0; n];
        let mut z = vec![0.0; n];
        for _ in 0..cfg.iterations {
            let mut a = dd.clone();
            let mut rhs: Vec<f64> = (0..n).map(|i| w[i] * y[i]).collect();
            for i in 0..n {
                a[i][i] += w[i];
            }
            for k in 0..n {
                for r in k + 1..n {
                    let f = a[r][k] / a[k][k];
                    for c in k..n {
                        a[r][c] -= f * a[k][c];
                    }
                    rhs[r] -= f * rhs[k];
                }
            }
            for k in (0..n).rev() {
                let s: f64 = (k + 1..n).map(|c| a[k][c] * z[c]).sum();
                z[k] = (rhs[k] - s) / a[k][k];
            }
            for i in 0..n {
                w[i] = if y[i] > z[i] {
                    cfg.p
                } else if y[i] < z[i] {
                    1.0 - cfg.p
                } else {
                    0.0
                };
            }
        }
        z
    }

    /// A flat lead (a disconnected electrode), a constant one and a straight line equal their
    /// baseline exactly, every ALS weight becomes 0 and the next solve is singular (the
    /// reference's `spsolve` returns NaN there): the baseline is the signal, the corrected lead
    /// zero, and the other leads of the record, solved in the same lanes, are untouched.
    #[test]
    fn leads_that_equal_their_baseline_do_not_turn_to_nan() {
        let n = 600;
        let wave: Vec<f64> = (0..n).map(|i| (i as f64 * 0.05).sin() * 100.0).collect();
        let degenerate = [
            vec![0.0; n],
            vec![5.0; n],
            (0..n).map(|i| 2.0 * i as f64 - 300.0).collect::<Vec<_>>(),
        ];
        let cfg = AlsConfig::default();
        let alone = baseline_als(&wave, &cfg);
        let is_signal = |z: &[f64], y: &[f64]| {
            z.iter()
                .zip(y)
                .all(|(z, y)| (z - y).abs() <= 1e-6 * y.abs().max(1.0))
        };
        for flat in &degenerate {
            assert!(is_signal(&baseline_als(flat, &cfg), flat));
            // Lanes of one task: the flat lead beside three normal ones.
            let [a, b, c, d] = baseline_als_lanes::<4>([&wave, flat, &wave, &wave], &cfg);
            assert!(is_signal(&b, flat));
            for z in [a, c, d] {
                assert_eq!(z, alone, "the other lanes keep their baselines");
            }
        }
        // Whole records: a flat lead, then all leads flat, then all samples missing.
        let mut ecg: Vec<f32> = (0..NUM_LEADS * n)
            .map(|i| ((i % n) as f32 * 0.05 + (i / n) as f32).sin() * 100.0)
            .collect();
        ecg[3 * n..4 * n].fill(0.0);
        let records = [ecg, vec![0.0; NUM_LEADS * n], vec![f32::NAN; NUM_LEADS * n]];
        for (r, data) in records.into_iter().enumerate() {
            let ecg = Ecg::new(data, n, 500.0).expect("ecg");
            let out = preprocess(&ecg, &PreprocessConfig::default()).expect("preprocess");
            assert!(out.data().iter().all(|v| v.is_finite()), "record {r}");
        }
    }

    #[test]
    fn banded_als_equals_dense_solve() {
        let y: Vec<f64> = (0..40)
            .map(|i| (i as f64 * 0.3).sin() + 0.05 * i as f64 + if i % 7 == 0 { 1.0 } else { 0.0 })
            .collect();
        let cfg = AlsConfig {
            lambda: 50.0,
            p: 0.3,
            iterations: 4,
        };
        let fast = baseline_als(&y, &cfg);
        let slow = dense_als(&y, &cfg);
        for (a, b) in fast.iter().zip(&slow) {
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
    }

    #[test]
    fn lanes_equal_single_leads() {
        let samples = 300;
        let x0: Vec<f64> = (0..12 * samples)
            .map(|i| {
                ((i % samples) as f64 * 0.07 + (i / samples) as f64).sin() * 2.0 + 0.01 * i as f64
            })
            .collect();
        let cfg = AlsConfig::default();
        let mut x = x0.clone();
        remove_baselines(&mut x, 12, samples, &cfg);
        for lead in 0..12 {
            let y = &x0[lead * samples..(lead + 1) * samples];
            let z = baseline_als(y, &cfg);
            for t in 0..samples {
                let expected = y[t] - z[t];
                assert!((x[lead * samples + t] - expected).abs() < 1e-12);
            }
        }
        for (lanes, leads) in [(2, 2), (4, 4), (6, 6)] {
            let mut part = x0[..leads * samples].to_vec();
            match lanes {
                2 => subtract_lanes::<2>(&mut part, samples, &cfg),
                4 => subtract_lanes::<4>(&mut part, samples, &cfg),
                _ => subtract_lanes::<6>(&mut part, samples, &cfg),
            }
            assert!(part.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-12));
        }
    }

    #[test]
    fn group_normalisation_gives_zero_mean_unit_variance() {
        let mut x: Vec<f64> = (0..12 * 10).map(|i| (i as f64).sin() * 3.0 + 1.0).collect();
        normalise(&mut x, 12, 10, &Normalisation::GroupWise(vec![3, 6, 12])).unwrap();
        let (m, v) = mean_var(&x[60..]);
        assert!(m.abs() < 1e-12 && (v - 1.0).abs() < 1e-9);
        assert!(normalise(&mut x, 12, 10, &Normalisation::GroupWise(vec![3, 6])).is_err());
    }

    #[test]
    fn resampling_keeps_a_sine() {
        // 5 Hz sine at 500 Hz for 1 s, to 100 Hz and back up to 1000 Hz.
        let n = 500;
        let data: Vec<f32> = (0..12)
            .flat_map(|_| {
                (0..n).map(|t| (2.0 * std::f64::consts::PI * 5.0 * t as f64 / 500.0).sin() as f32)
            })
            .collect();
        let ecg = Ecg::new(data, n, 500.0).unwrap();
        for rate in [100.0, 1000.0, 250.0] {
            let r = resample(&ecg, rate).unwrap();
            assert_eq!(r.samples(), (rate as usize * n) / 500);
            for (t, v) in r.lead(3).iter().enumerate() {
                let e = (2.0 * std::f64::consts::PI * 5.0 * t as f64 / rate).sin();
                assert!((*v as f64 - e).abs() < 1e-4, "{rate} Hz t={t}: {v} vs {e}");
            }
        }
    }
}

//! Hand-made features of the ECG input, probed like an encoder's embeddings: the
//! learnability ceiling of the reproduction.
//!
//! An ECG encoder is only as good as what a linear probe can read from its embedding; a small
//! set of features an electrophysiologist would look at, computed from the very input the
//! encoders see (the normalised, cropped strip), shows how much of each target that input
//! holds for a linear read-out. When the encoders stay far below these features, the encoders
//! (not the cohort) are what limits the result. (`mmcl_synth::analysis` measures the cohort's
//! learnability from the raw files, with the device's median beats and measurements; these
//! features see only what the encoders see.)
//!
//! Per lead: mean, standard deviation, maximum, minimum, skewness, mean and maximum absolute
//! slope, and the fraction of samples more than two standard deviations from the mean (the
//! share of the strip taken by QRS complexes: width × rate). Per strip: the dominant RR
//! interval and rate from the autocorrelation of the summed absolute slope, and that
//! autocorrelation's height at one and two beats (rhythm regularity).

use candle_core::{DType, Device, Tensor};

use crate::Result;

/// Features per lead.
const PER_LEAD: usize = 8;
/// Features per strip.
const PER_STRIP: usize = 4;
/// Shortest and longest RR interval searched, seconds (150 and 30 beats per minute).
const RR_RANGE_S: (f64, f64) = (0.4, 2.0);

/// The features of a batch of ECGs `[B, 1, L, T]` (or `[B, L, T]`) sampled at `rate` Hz:
/// `[B, L × 8 + 4]` on the host, f32.
///
/// # Errors
/// A tensor of another rank, or a failed transfer.
pub fn hand_features(ecg: &Tensor, rate: f64) -> Result<Tensor> {
    let ecg = ecg.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let (b, leads, t) = match ecg.dims() {
        &[b, 1, l, t] => (b, l, t),
        &[b, l, t] => (b, l, t),
        other => {
            return Err(crate::Error::Insufficient {
                stage: "probes",
                reason: format!("hand-made ECG features need [B, 1, L, T], got {other:?}"),
            });
        }
    };
    if leads == 0 || t == 0 {
        return Err(crate::Error::Insufficient {
            stage: "probes",
            reason: format!(
                "hand-made ECG features need leads and samples, got {:?}",
                ecg.dims()
            ),
        });
    }
    let values = ecg.flatten_all()?.to_vec1::<f32>()?;
    let width = leads * PER_LEAD + PER_STRIP;
    let mut out = Vec::with_capacity(b * width);
    for strip in values.chunks_exact(leads * t) {
        let mut slope_sum = vec![0f64; t.saturating_sub(1)];
        for lead in strip.chunks_exact(t) {
            out.extend(lead_features(lead, &mut slope_sum).map(|v| v as f32));
        }
        out.extend(rhythm_features(&slope_sum, rate).map(|v| v as f32));
    }
    Ok(Tensor::from_vec(out, (b, width), &Device::Cpu)?)
}

/// The per-lead features of one lead's samples; adds the lead's absolute slopes to
/// `slope_sum` (the strip's summed slope, for the rhythm).
fn lead_features(x: &[f32], slope_sum: &mut [f64]) -> [f64; PER_LEAD] {
    if x.is_empty() {
        return [0.0; PER_LEAD];
    }
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = x
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    let sd = var.sqrt();
    let skew = if sd > 0.0 {
        x.iter()
            .map(|&v| ((f64::from(v) - mean) / sd).powi(3))
            .sum::<f64>()
            / n
    } else {
        0.0
    };
    let (max, min) = x.iter().fold((f64::MIN, f64::MAX), |(hi, lo), &v| {
        (hi.max(f64::from(v)), lo.min(f64::from(v)))
    });
    let (mut total_slope, mut max_slope) = (0.0, 0.0f64);
    for (w, sum) in x.windows(2).zip(slope_sum.iter_mut()) {
        let slope = f64::from(w[1] - w[0]).abs();
        *sum += slope;
        total_slope += slope;
        max_slope = max_slope.max(slope);
    }
    let mean_slope = total_slope / (x.len() - 1).max(1) as f64;
    let outside = x
        .iter()
        .filter(|&&v| (f64::from(v) - mean).abs() > 2.0 * sd)
        .count() as f64
        / n;
    [mean, sd, max, min, skew, mean_slope, max_slope, outside]
}

/// RR interval (s), rate (1/min) and the normalised autocorrelation at one and two RR
/// intervals of the summed absolute slope `e` at `rate` Hz; zeros when the strip is too short
/// for two beats.
fn rhythm_features(e: &[f64], rate: f64) -> [f64; PER_STRIP] {
    let n = e.len();
    let lo = (RR_RANGE_S.0 * rate).round() as usize;
    let hi = ((RR_RANGE_S.1 * rate).round() as usize).min(n / 2);
    if lo == 0 || lo >= hi {
        return [0.0; PER_STRIP];
    }
    let mean = e.iter().sum::<f64>() / n as f64;
    let c: Vec<f64> = e.iter().map(|v| v - mean).collect();
    let energy = c.iter().map(|v| v * v).sum::<f64>();
    if energy <= 0.0 {
        return [0.0; PER_STRIP];
    }
    // Normalised by the overlap so that long lags are not penalised for being short.
    let ac = |lag: usize| -> f64 {
        let s: f64 = c[..n - lag].iter().zip(&c[lag..]).map(|(a, b)| a * b).sum();
        s / energy * n as f64 / (n - lag) as f64
    };
    let values: Vec<f64> = (lo..=hi).map(ac).collect();
    let max = values.iter().copied().fold(f64::MIN, f64::max);
    // The first peak near the highest, not the highest: a multiple of the RR interval
    // correlates as well as the interval itself (an octave error otherwise).
    let first = (0..values.len())
        .find(|&i| {
            values[i] >= 0.9 * max
                && (i == 0 || values[i] >= values[i - 1])
                && (i + 1 == values.len() || values[i] >= values[i + 1])
        })
        .unwrap_or(0);
    let (lag, peak) = (lo + first, values[first]);
    let rr = lag as f64 / rate;
    let second = if 2 * lag < n { ac(2 * lag) } else { 0.0 };
    [rr, 60.0 / rr, peak, second]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rhythm_of_a_spike_train_is_found() {
        // 100 Hz, 6 s, a spike every 0.8 s (75 per minute) on 12 leads, amplitude by lead.
        let (rate, t, leads) = (100.0, 600, 12);
        let mut x = vec![0f32; leads * t];
        for l in 0..leads {
            for i in (10..t).step_by(80) {
                x[l * t + i] = 1.0 + l as f32;
            }
        }
        let ecg = Tensor::from_vec(x, (1, 1, leads, t), &Device::Cpu).unwrap();
        let f = hand_features(&ecg, rate).unwrap();
        assert_eq!(f.dims(), &[1, leads * PER_LEAD + PER_STRIP]);
        let f = f.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let strip = &f[leads * PER_LEAD..];
        assert!((strip[0] - 0.8).abs() < 1e-6, "RR {}", strip[0]);
        assert!((strip[1] - 75.0).abs() < 1e-3);
        assert!(strip[2] > 0.5 && strip[3] > 0.5, "{strip:?}");
        // Lead maxima follow the amplitudes.
        assert_eq!(f[2], 1.0);
        assert_eq!(f[PER_LEAD + 2], 2.0);
        assert!(
            hand_features(
                &Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap(),
                rate
            )
            .is_err()
        );
    }
}

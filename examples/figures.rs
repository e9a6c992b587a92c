//! Draws one example of every figure of `mmcl_eval::plot` from synthetic data.
//!
//! ```text
//! cargo run --example figures -- docs/figures
//! ```

use std::path::PathBuf;

use anyhow::Result;
use mmcl_eval::Matrix;
use mmcl_eval::metrics::{self, Bootstrap, Task};
use mmcl_eval::plot::{
    CmrFigure, EcgFigure, EcgLayout, RocFigure, RocSeries, ScatterFigure, ScatterPanel,
    TrainingCurvesFigure,
};
use mmcl_eval::runlog::RunLog;
use mmcl_nn::rng::SplitMix64;

/// A synthetic 12-lead ECG (mV): Gaussian P, Q, R, S and T waves per beat, lead-specific
/// amplitudes, slight baseline wander and noise.
fn synthetic_ecg(seconds: f64, rate: f64, rng: &mut SplitMix64) -> Matrix<f32> {
    let t_len = (seconds * rate) as usize;
    // (amplitude, offset s, width s) of P, Q, R, S, T.
    let waves = [
        (0.12, -0.19, 0.022),
        (-0.08, -0.04, 0.009),
        (1.0, 0.0, 0.011),
        (-0.22, 0.035, 0.011),
        (0.28, 0.27, 0.045),
    ];
    // Per-lead gains of the R wave and of the other waves.
    let gains: [(f64, f64); 12] = [
        (0.8, 0.8),
        (1.2, 1.0),
        (0.5, 0.4),
        (-0.9, -0.8),
        (0.4, 0.4),
        (0.8, 0.7),
        (-0.5, 0.3),
        (0.4, 0.8),
        (0.9, 1.0),
        (1.5, 1.1),
        (1.4, 1.0),
        (1.1, 0.8),
    ];
    let rr = 60.0 / 68.0;
    let mut data = Vec::with_capacity(12 * t_len);
    for (lead, &(g_r, g_other)) in gains.iter().enumerate() {
        let phase = rng.next_f64() * 6.0;
        for i in 0..t_len {
            let t = i as f64 / rate;
            let beat = ((t - 0.35) / rr).round();
            let dt = t - 0.35 - beat * rr;
            let mut v = 0.0;
            for (k, &(a, mu, sd)) in waves.iter().enumerate() {
                let g = if k == 2 || k == 1 || k == 3 {
                    g_r
                } else {
                    g_other
                };
                v += g * a * (-(dt - mu).powi(2) / (2.0 * sd * sd)).exp();
            }
            v += 0.04 * (0.6 * t + phase + lead as f64).sin() + 0.005 * rng.next_normal();
            data.push(v as f32);
        }
    }
    Matrix::new(12, t_len, data).expect("shape")
}

/// Patch importance that peaks on the QRS complexes of the precordial leads.
fn synthetic_importance(patches: usize, seconds: f64) -> Matrix<f32> {
    let rr = 60.0 / 68.0;
    let mut data = Vec::new();
    for lead in 0..12 {
        for p in 0..patches {
            let centre = (p as f64 + 0.5) * seconds / patches as f64;
            let beat = ((centre - 0.35) / rr).round();
            let dt = (centre - 0.35 - beat * rr).abs();
            let qrs = (-(dt * dt) / (2.0 * 0.06f64.powi(2))).exp();
            let lead_weight = if lead >= 6 { 0.9 } else { 0.35 };
            data.push((lead_weight * (2.0 * qrs - 0.4)).clamp(-1.0, 1.0) as f32);
        }
    }
    Matrix::new(12, patches, data).expect("shape")
}

/// A short-axis-like slice: bright blood pools inside a darker myocardial ring.
fn synthetic_cmr(size: usize) -> (Matrix<f32>, Matrix<f32>) {
    let mut img = Vec::with_capacity(size * size);
    let c = size as f64 / 2.0;
    for y in 0..size {
        for x in 0..size {
            let (dx, dy) = (x as f64 - c * 0.95, y as f64 - c);
            let r = (dx * dx + dy * dy).sqrt() / size as f64;
            let rv = ((x as f64 - c * 0.55).powi(2) / 1.4 + (y as f64 - c * 0.95).powi(2)).sqrt()
                / size as f64;
            let mut v = 0.25 + 0.1 * ((x * 7 + y * 3) % 11) as f64 / 11.0;
            if r < 0.13 {
                v = 0.95;
            } else if r < 0.19 {
                v = 0.35;
            } else if rv < 0.12 && x as f64 <= c * 0.75 {
                v = 0.85;
            } else if r > 0.42 {
                v = 0.05;
            }
            img.push(v as f32);
        }
    }
    // A coarse 7×7 feature-map importance, highest on the septum.
    let mut heat = Vec::new();
    for y in 0..7 {
        for x in 0..7 {
            let (dx, dy) = (x as f64 - 2.6, y as f64 - 3.0);
            heat.push((-(dx * dx + dy * dy) / 3.0).exp() as f32);
        }
    }
    (
        Matrix::new(size, size, img).expect("shape"),
        Matrix::new(7, 7, heat).expect("shape"),
    )
}

fn main() -> Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "docs/figures".into()),
    );
    let mut rng = SplitMix64::new(7);

    let ecg = synthetic_ecg(10.0, 250.0, &mut rng);
    EcgFigure::new(&ecg, 250.0)
        .with_title("Synthetic 12-lead ECG")
        .save(&dir.join("ecg_grid.png"))?;
    let importance = synthetic_importance(100, 10.0);
    EcgFigure::new(&ecg, 250.0)
        .with_layout(EcgLayout::Rows12)
        .with_importance(&importance)
        .with_title("ECG patch importance (similarity to the CMR embedding)")
        .save(&dir.join("ecg_importance.png"))?;

    let (slice, heat) = synthetic_cmr(160);
    // The cache's default images: a 120 mm LV-centred square, here at the slice's size.
    let mut cmr = CmrFigure::new(&slice)
        .with_heatmap(&heat)
        .with_title("CMR region importance on the mid-systolic frame");
    cmr.pixel_mm = Some(120.0 / slice.cols() as f64);
    cmr.save(&dir.join("cmr_heatmap.png"))?;

    // Two models on one synthetic task.
    let n = 600;
    let labels: Vec<f64> = (0..n)
        .map(|_| (rng.next_f64() < 0.25) as u8 as f64)
        .collect();
    let mut series = Vec::new();
    for (name, signal) in [("MMCL ECG encoder", 1.6), ("MAE ECG encoder", 1.0)] {
        let scores: Vec<f64> = labels
            .iter()
            .map(|&y| 1.0 / (1.0 + (-(signal * y - 0.6 * signal + rng.next_normal())).exp()))
            .collect();
        let curve = metrics::roc_curve(&labels, &scores)?;
        let eval = metrics::evaluate(
            Task::Classification,
            &Matrix::column_vector(labels.clone()),
            &Matrix::column_vector(scores),
            &[],
            0.5,
            &Bootstrap::default(),
        )?;
        let auroc = eval.targets[0].metrics["auroc"];
        series.push(RocSeries {
            name: name.into(),
            curve,
            auroc: auroc.value,
            ci: auroc.ci_low.zip(auroc.ci_high),
        });
    }
    RocFigure {
        series,
        title: "Coronary artery disease (synthetic)".into(),
    }
    .save(&dir.join("roc.png"))?;

    let mut panels = Vec::new();
    for (name, mean, sd, noise) in [
        ("LVEDV (mL)", 150.0, 30.0, 18.0),
        ("LVESV (mL)", 60.0, 18.0, 11.0),
        ("LVEF (%)", 60.0, 6.0, 4.5),
        ("LVM (g)", 90.0, 22.0, 12.0),
    ] {
        let truth: Vec<f64> = (0..300).map(|_| mean + sd * rng.next_normal()).collect();
        let pred: Vec<f64> = truth
            .iter()
            .map(|t| mean + 0.75 * (t - mean) + noise * rng.next_normal())
            .collect();
        let r2 = metrics::r2(&truth, &pred).ok();
        panels.push(ScatterPanel {
            name: name.into(),
            truth,
            prediction: pred,
            r2,
            r2_ci: None,
        });
    }
    ScatterFigure {
        panels,
        title: "Predicted vs true phenotypes (synthetic)".into(),
    }
    .save(&dir.join("scatter.png"))?;

    let mut lines = String::new();
    // Epochs numbered from 1, as the trainers' logs are.
    for epoch in 1..=40 {
        let e = (epoch - 1) as f64;
        for step in 0..4 {
            let loss = 4.0 * (-e / 12.0).exp() + 0.9 + 0.05 * rng.next_normal();
            let lr =
                3e-3 * (e / 5.0).min(1.0) * (0.5 * (1.0 + (std::f64::consts::PI * e / 40.0).cos()));
            lines += &format!(
                "{{\"epoch\": {epoch}, \"step\": {}, \"split\": \"train\", \"loss\": {loss:.4}, \"lr\": {lr:.6}}}\n",
                (epoch - 1) * 4 + step
            );
        }
        let val = 4.2 * (-e / 10.0).exp() + 1.1 + 0.004 * (e - 25.0).max(0.0).powi(2);
        let auroc = 0.86 - 0.3 * (-e / 8.0).exp() + 0.01 * rng.next_normal();
        lines += &format!(
            "{{\"epoch\": {epoch}, \"split\": \"val\", \"loss\": {val:.4}, \"auroc\": {auroc:.4}}}\n"
        );
    }
    let log = RunLog::parse(&lines, std::path::Path::new("synthetic.jsonl"))?;
    let mut curves = TrainingCurvesFigure::new(&log);
    curves.title = "Training curves (synthetic run log)".into();
    curves.save(&dir.join("training_curves.png"))?;
    println!("figures written to {}", dir.display());
    Ok(())
}

//! How learnable is the synthetic cohort? Cross-validated linear models on classical ECG
//! features, and the agreement of segmentation-measured phenotypes with the hidden state.
//!
//! ```text
//! cargo run --release --example learnability -- [subjects] [seed] [image_size] [slices] [frames]
//! ```
//! Defaults: 2000 subjects, seed 0, and a small cine (64 px, 10 slices, 8 frames; the ECG and
//! the hidden state do not depend on the cine's size).

use anyhow::{Context, Result};
use mmcl_synth::analysis::learnability;
use mmcl_synth::{Cohort, SynthConfig};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| -> String {
        args.get(i).cloned().unwrap_or_else(|| default.to_string())
    };
    let subjects: usize = arg(0, "2000").parse().context("subjects")?;
    let mut cfg = SynthConfig {
        subjects,
        seed: arg(1, "0").parse().context("seed")?,
        ..SynthConfig::default()
    };
    cfg.cmr.image_size = arg(2, "64").parse().context("image size")?;
    cfg.cmr.slices = arg(3, "10").parse().context("slices")?;
    cfg.cmr.frames = arg(4, "8").parse().context("frames")?;
    let cohort = Cohort::new(cfg)?;
    let start = std::time::Instant::now();
    let l = learnability(&cohort, subjects, 5)?;
    println!(
        "{} subjects, 5-fold cross-validation ({:.1} s)\n",
        l.subjects,
        start.elapsed().as_secs_f64()
    );
    println!("{:<10} {:>12} {:>12}", "phenotype", "ECG R2", "CMR R2");
    for ((name, ecg), (_, cmr)) in l.ecg_phenotype_r2.iter().zip(&l.cmr_phenotype_r2) {
        println!("{name:<10} {ecg:>12.3} {cmr:>12.4}");
    }
    let mean_ecg =
        l.ecg_phenotype_r2.iter().map(|(_, v)| v).sum::<f64>() / l.ecg_phenotype_r2.len() as f64;
    println!("{:<10} {:>12.3}\n", "mean", mean_ecg);
    println!("{:<10} {:>12}", "condition", "ECG AUROC");
    for (name, auc) in &l.ecg_condition_auroc {
        println!("{name:<10} {auc:>12.3}");
    }
    Ok(())
}

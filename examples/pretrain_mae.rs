//! Masked-autoencoder pre-training of the ECG encoder (the first stage of the paper).
//!
//! Without arguments: a small synthetic cohort is generated, its dataset cache built, and the
//! paper's model (`mae_vit_tiny_patchX` on 1×12×2500) trained for a few epochs on it (about a
//! minute or two on 2 CPU cores). With `--config`, that configuration (`mmcl pretrain-mae
//! --print-config` lists every key) drives the run on its own cache.
//!
//! ```sh
//! cargo run --release --example pretrain_mae
//! cargo run --release --example pretrain_mae -- --config mae.toml --device cuda --output runs/mae
//! ```

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use mmcl_suite::nn::device::parse_device;
use mmcl_suite::train::checkpoint;
use mmcl_suite::train::{BarProgress, MaeTrainConfig, MaeTrainer, Progress};

/// MAE pre-training of the ECG encoder of Turgut et al.
#[derive(Debug, Parser)]
struct Args {
    /// A configuration (.json/.toml); without one, a quick run on a synthetic cohort.
    #[arg(long)]
    config: Option<PathBuf>,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The run directory (replaced if it holds an earlier example run).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Subjects of the synthetic cohort (without `--config`).
    #[arg(long, default_value_t = 96)]
    subjects: usize,
    /// Epochs of the quick run (without `--config`).
    #[arg(long, default_value_t = 8)]
    epochs: usize,
}

fn main() -> Result<()> {
    mmcl_suite::nn::memory::keep_freed_memory();
    let args = Args::parse();
    let device = parse_device(&args.device)?;
    let output = args
        .output
        .unwrap_or_else(|| common::default_output("pretrain_mae"));
    let cfg = match &args.config {
        Some(path) => MaeTrainConfig::from_file(path)?,
        None => {
            let data_dir = common::default_output("synthetic-cohort");
            let mut cfg = MaeTrainConfig {
                max_epochs: args.epochs,
                warmup_epochs: 2,
                batch_size: 16,
                blr: 1e-4,
                ..MaeTrainConfig::default()
            };
            cfg.data.cache = common::synthetic_cache(&data_dir, args.subjects, 48)?;
            // An earlier example run would be refused: start afresh.
            if checkpoint::find_checkpoint(&output).is_ok() {
                std::fs::remove_dir_all(&output)?;
            }
            cfg
        }
    };
    eprintln!("configuration:\n{}", cfg.to_toml());
    let mut progress = BarProgress::new();
    let (mut trainer, notes) = MaeTrainer::new(cfg, &output, &device)?;
    for note in notes {
        progress.message(&note);
    }
    trainer.fit(&mut progress)?;
    println!("run directory      {}", trainer.run_dir().display());
    println!(
        "metrics            {}",
        trainer.run_dir().join("metrics.csv").display()
    );
    println!(
        "checkpoint         {}",
        checkpoint::last_dir(trainer.run_dir()).display()
    );
    println!("ECG encoder export {}", trainer.encoder_path().display());
    println!(
        "next: cargo run --release --example pretrain_mmcl -- --ecg-checkpoint {}",
        trainer.encoder_path().display()
    );
    Ok(())
}

//! Multimodal contrastive pre-training of the ECG and CMR encoders (the second stage of the
//! paper), optionally starting the ECG encoder from an MAE run (`pretrain_mae`).
//!
//! Without arguments: a small synthetic cohort is generated, its dataset cache built, and a
//! reduced model (ResNet18 at 48², the paper's `vit_tiny_patchX` on 1×12×2500) trained for a
//! few epochs (a minute or two on 2 CPU cores). With `--config`, that configuration (`mmcl
//! pretrain-mmcl --print-config` lists every key) drives the run on its own cache.
//!
//! ```sh
//! cargo run --release --example pretrain_mmcl
//! cargo run --release --example pretrain_mmcl -- \
//!     --ecg-checkpoint target/example-runs/pretrain_mae/checkpoints/last/ecg_encoder.safetensors
//! cargo run --release --example pretrain_mmcl -- --config mmcl.toml --device cuda --output runs/mmcl
//! ```

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use mmcl_suite::cmr::ResNetArch;
use mmcl_suite::nn::device::parse_device;
use mmcl_suite::train::checkpoint;
use mmcl_suite::train::{BarProgress, MmclConfig, MmclTrainer, Progress};

/// Multimodal contrastive pre-training of Turgut et al.
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
    /// Start the ECG encoder from this checkpoint (e.g. the `pretrain_mae` export).
    #[arg(long)]
    ecg_checkpoint: Option<PathBuf>,
    /// Subjects of the synthetic cohort (without `--config`).
    #[arg(long, default_value_t = 96)]
    subjects: usize,
    /// Epochs of the quick run (without `--config`).
    #[arg(long, default_value_t = 4)]
    epochs: usize,
}

fn main() -> Result<()> {
    mmcl_suite::nn::memory::keep_freed_memory();
    let args = Args::parse();
    let device = parse_device(&args.device)?;
    let output = args
        .output
        .unwrap_or_else(|| common::default_output("pretrain_mmcl"));
    let mut cfg = match &args.config {
        Some(path) => MmclConfig::from_file(path)?,
        None => {
            let data_dir = common::default_output("synthetic-cohort");
            let mut cfg = MmclConfig {
                max_epochs: args.epochs,
                warmup_epochs: 1,
                batch_size: 16,
                lr: 3e-4,
                embedding_dim: 256,
                projection_dim: 64,
                ..MmclConfig::default()
            };
            cfg.imaging.model = ResNetArch::ResNet18;
            cfg.imaging.img_size = 48;
            cfg.imaging.augment.size = 48;
            cfg.data.cache = common::synthetic_cache(&data_dir, args.subjects, 48)?;
            if checkpoint::find_checkpoint(&output).is_ok() {
                std::fs::remove_dir_all(&output)?;
            }
            cfg
        }
    };
    if let Some(path) = args.ecg_checkpoint {
        cfg.ecg.pretrain_checkpoint = Some(path);
    }
    eprintln!("configuration:\n{}", cfg.to_toml());
    let mut progress = BarProgress::new();
    let (mut trainer, notes) = MmclTrainer::new(cfg, &output, &device)?;
    for note in notes {
        progress.message(&note);
    }
    trainer.fit(&mut progress)?;
    let last = checkpoint::last_dir(trainer.run_dir());
    println!("run directory        {}", trainer.run_dir().display());
    println!(
        "metrics              {}",
        trainer.run_dir().join("metrics.csv").display()
    );
    println!("checkpoint           {}", last.display());
    println!(
        "ECG encoder export   {}",
        checkpoint::ecg_encoder_path(trainer.run_dir()).display()
    );
    println!(
        "image encoder export {}",
        last.join(checkpoint::IMAGE_ENCODER_FILE).display()
    );
    Ok(())
}

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
use mmcl_suite::pipeline::config::reduce_multimodal_model;
use mmcl_suite::train::checkpoint;
use mmcl_suite::train::{MmclConfig, MmclTrainer};

/// Multimodal contrastive pre-training of Turgut et al.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    common: common::TrainArgs,
    /// Start the ECG encoder from this checkpoint (e.g. the `pretrain_mae` export).
    #[arg(long)]
    ecg_checkpoint: Option<PathBuf>,
    /// Epochs of the quick run (without `--config`).
    #[arg(long, default_value_t = 4)]
    epochs: usize,
}

fn main() -> Result<()> {
    let args: Args = common::start();
    let (device, output) = args.common.device_and_output("pretrain_mmcl")?;
    let mut cfg = match &args.common.config {
        Some(path) => MmclConfig::from_file(path)?,
        None => {
            let mut cfg = MmclConfig {
                max_epochs: args.epochs,
                warmup_epochs: 1,
                batch_size: 16,
                lr: 3e-4,
                ..MmclConfig::default()
            };
            reduce_multimodal_model(&mut cfg, 48);
            cfg.data.cache = args.common.quick_cache(&output)?;
            cfg
        }
    };
    if let Some(path) = args.ecg_checkpoint {
        cfg.ecg.pretrain_checkpoint = Some(path);
    }
    let trainer = common::train(
        &cfg.to_toml(),
        || Ok(MmclTrainer::new(cfg, &output, &device)?),
        |trainer, progress| Ok(trainer.fit(progress)?),
    )?;
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

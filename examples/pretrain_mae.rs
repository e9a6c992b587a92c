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

use anyhow::Result;
use clap::Parser;
use mmcl_suite::train::checkpoint;
use mmcl_suite::train::{MaeTrainConfig, MaeTrainer};

/// MAE pre-training of the ECG encoder of Turgut et al.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    common: common::TrainArgs,
    /// Epochs of the quick run (without `--config`).
    #[arg(long, default_value_t = 8)]
    epochs: usize,
}

fn main() -> Result<()> {
    let args: Args = common::start();
    let (device, output) = args.common.device_and_output("pretrain_mae")?;
    let cfg = match &args.common.config {
        Some(path) => MaeTrainConfig::from_file(path)?,
        None => {
            let mut cfg = MaeTrainConfig {
                max_epochs: args.epochs,
                warmup_epochs: 2,
                batch_size: 16,
                blr: 1e-4,
                ..MaeTrainConfig::default()
            };
            cfg.data.cache = args.common.quick_cache(&output)?;
            cfg
        }
    };
    let trainer = common::train(
        &cfg.to_toml(),
        || Ok(MaeTrainer::new(cfg, &output, &device)?),
        |trainer, progress| Ok(trainer.fit(progress)?),
    )?;
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

//! Fine-tuning the ECG encoder with an attention-pooling head (the paper's second downstream
//! protocol) on a synthetic cohort: layer-wise learning-rate decay, label smoothing, early
//! stopping on the validation metric, test metrics with 95 % bootstrap intervals.
//!
//! ```sh
//! cargo run --release --example finetune                                 # AF, from scratch
//! cargo run --release --example finetune -- --task regression --target lvm \
//!     --checkpoint target/reproduce/runs/mae_mmcl
//! ```

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use mmcl_suite::eval::finetune::{FinetuneConfig, finetune};
use mmcl_suite::eval::metrics::Task;
use mmcl_suite::eval::report::text_table;
use mmcl_suite::pipeline::reproduce::probe_vit_config;
use mmcl_suite::train::checkpoint::find_ecg_encoder;

/// Fine-tune the ECG encoder on one disease or phenotype of the synthetic cohort.
#[derive(Debug, Parser)]
struct Args {
    /// Pre-trained ECG encoder: a run directory (its latest complete checkpoint), a checkpoint
    /// directory, or a file (MAE or MMCL export, released `signal_encoder*.pth`); without one,
    /// training starts from a random initialisation.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// classification (a disease) or regression (a phenotype).
    #[arg(long, default_value = "classification")]
    task: Task,
    /// The disease (CAD, AF, diabetes, LVH) or phenotype (lvedv, lvm, lvef, …).
    #[arg(long, default_value = "AF")]
    target: String,
    /// Training epochs at most.
    #[arg(long, default_value_t = 8)]
    epochs: usize,
    #[command(flatten)]
    cohort: common::CohortArgs,
}

fn main() -> Result<()> {
    let args: Args = common::start();
    let (device, cfg, cache) = args.cohort.prepare()?;

    // The paper's fine-tuning model: attention pooling, drop-path 0.2.
    let mut encoder = probe_vit_config(&cfg)?;
    encoder.attention_pool = true;
    encoder.drop_path_rate = 0.2;
    let ft = FinetuneConfig {
        cache,
        checkpoint: args.checkpoint.map(|p| find_ecg_encoder(&p)).transpose()?,
        encoder,
        task: args.task,
        targets: vec![args.target],
        epochs: args.epochs,
        warmup_epochs: 1,
        // The reference's blr 1e-5 is tuned for hundreds of epochs; a short run needs more.
        blr: 1e-4,
        patience: 4,
        ..FinetuneConfig::default()
    };
    // Prints a line per validation (and a bar on a terminal).
    let mut progress = mmcl_suite::train::BarProgress::new();
    let outcome = finetune(&ft, &device, None, &mut progress)?;
    if let Some(s) = &outcome.load_summary {
        println!("{s}");
    }
    println!(
        "validation {}: {:.3} before training, best {:.3} after epoch {} ({} epochs run{})",
        outcome.monitor,
        outcome.initial_val_metric,
        outcome.best_val_metric,
        outcome.best_epoch,
        outcome.epochs_run,
        if outcome.stopped_early {
            ", stopped early"
        } else {
            ""
        }
    );
    println!("test split:\n{}", text_table(&outcome.test));
    Ok(())
}

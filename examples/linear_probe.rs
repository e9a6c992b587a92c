//! Linear probing of an ECG encoder, the paper's downstream evaluation: frozen embeddings of a
//! synthetic cohort's ECGs → logistic probes per disease (AUROC) and ridge probes of the
//! cardiac phenotypes (R²), fitted on train, regularised on val, tested on test with 95 %
//! bootstrap intervals.
//!
//! ```sh
//! cargo run --release --example linear_probe                    # randomly initialised encoder
//! cargo run --release --example linear_probe -- --checkpoint target/reproduce/runs/mae_mmcl
//! ```
//!
//! The cohort and its cache are made once under `--data` (reduced settings of
//! `mmcl reproduce`); `--config` takes a reproduce configuration for other encoders or data.

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use mmcl_suite::ecg::EcgVit;
use mmcl_suite::pipeline::reproduce::probe_ecg_encoder;
use mmcl_suite::pipeline::results::markdown_tables;
use mmcl_suite::train::checkpoint::find_ecg_encoder;

/// Linear probes of an ECG encoder on the synthetic cohort.
#[derive(Debug, Parser)]
struct Args {
    /// The ECG encoder: a run directory (its latest complete checkpoint), a checkpoint
    /// directory, or a file (MAE or MMCL export, released `signal_encoder*.pth`); without one,
    /// a seeded random initialisation.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    #[command(flatten)]
    cohort: common::CohortArgs,
}

fn main() -> Result<()> {
    let args: Args = common::start();
    let cohort = args.cohort.open()?;
    let model = common::checkpoint_or_random(
        args.checkpoint.as_deref(),
        |path| {
            let file = find_ecg_encoder(path)?;
            let (model, _, summary) =
                EcgVit::from_checkpoint(&cohort.vit, &file, cohort.vit.pooling(), &cohort.device)?;
            Ok((model, summary))
        },
        "no --checkpoint: randomly initialised encoder (seed 0)",
        || Ok(EcgVit::from_seed(&cohort.vit, 0, &cohort.device)?.0),
    )?;
    let r = probe_ecg_encoder(&cohort.cfg, &cohort.cache, &model, &cohort.device)?;
    print!("{}", markdown_tables(&[("this encoder", &r)]));
    Ok(())
}

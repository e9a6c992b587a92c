//! `mmcl pretrain-mmcl` (and `mmcl pretrain-mae`): the pre-training stages, driven by a JSON or
//! TOML configuration whose defaults are the paper's, resumable with `--resume`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use mmcl_train::{BarProgress, MaeTrainConfig, MaeTrainer, MmclConfig, MmclTrainer, Progress};

/// Arguments of `mmcl pretrain-mmcl`.
#[derive(Debug, clap::Args)]
pub struct MmclArgs {
    /// The configuration (.json or .toml); keys left out take the paper's values
    /// (`--print-config` lists them all).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue the run in this directory (or from this checkpoint directory) exactly where it
    /// stopped; with `--config`, that configuration replaces the saved one (e.g. more epochs).
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// The run directory (default: `runs/mmcl`, or the resumed run's own directory).
    #[arg(long, value_name = "DIR")]
    output: Option<PathBuf>,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Print the default configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

/// Runs `mmcl pretrain-mmcl`.
pub fn run_mmcl(args: MmclArgs) -> Result<()> {
    if args.print_config {
        print!("{}", MmclConfig::default().to_toml());
        return Ok(());
    }
    mmcl_nn::memory::keep_freed_memory();
    let device = super::common::parse_device(&args.device)?;
    let cfg = match &args.config {
        Some(path) => Some(MmclConfig::from_file(path)?),
        None => None,
    };
    let mut progress = BarProgress::new();
    let (mut trainer, notes) = match &args.resume {
        Some(dir) => MmclTrainer::resume(dir, cfg, args.output.as_deref(), &device)
            .with_context(|| format!("cannot resume {}", dir.display()))?,
        None => {
            let Some(cfg) = cfg else {
                bail!("--config is required for a new run (or --resume a run)");
            };
            let output = args.output.unwrap_or_else(|| PathBuf::from("runs/mmcl"));
            eprintln!("configuration:\n{}", cfg.to_toml());
            MmclTrainer::new(cfg, &output, &device)?
        }
    };
    for note in notes {
        progress.message(&note);
    }
    progress.message(&format!(
        "run directory {}; epochs {}..{}",
        trainer.run_dir().display(),
        trainer.epochs_done(),
        trainer.config().max_epochs
    ));
    trainer.fit(&mut progress)?;
    println!(
        "trained {} epochs ({} optimiser steps); checkpoints in {}",
        trainer.epochs_done(),
        trainer.steps_taken(),
        mmcl_train::checkpoint::checkpoints_dir(trainer.run_dir()).display()
    );
    Ok(())
}

/// Arguments of `mmcl pretrain-mae`.
#[derive(Debug, clap::Args)]
pub struct MaeArgs {
    /// The configuration (.json or .toml); keys left out take the paper's values
    /// (`--print-config` lists them all).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue the run in this directory (or from this checkpoint directory) exactly where it
    /// stopped; with `--config`, that configuration replaces the saved one (e.g. more epochs).
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// The run directory (default: `runs/mae`, or the resumed run's own directory).
    #[arg(long, value_name = "DIR")]
    output: Option<PathBuf>,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Print the default configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

/// Runs `mmcl pretrain-mae`.
pub fn run_mae(args: MaeArgs) -> Result<()> {
    if args.print_config {
        print!("{}", MaeTrainConfig::default().to_toml());
        return Ok(());
    }
    mmcl_nn::memory::keep_freed_memory();
    let device = super::common::parse_device(&args.device)?;
    let cfg = match &args.config {
        Some(path) => Some(MaeTrainConfig::from_file(path)?),
        None => None,
    };
    let mut progress = BarProgress::new();
    let (mut trainer, notes) = match &args.resume {
        Some(dir) => MaeTrainer::resume(dir, cfg, args.output.as_deref(), &device)
            .with_context(|| format!("cannot resume {}", dir.display()))?,
        None => {
            let Some(cfg) = cfg else {
                bail!("--config is required for a new run (or --resume a run)");
            };
            let output = args.output.unwrap_or_else(|| PathBuf::from("runs/mae"));
            eprintln!("configuration:\n{}", cfg.to_toml());
            MaeTrainer::new(cfg, &output, &device)?
        }
    };
    for note in notes {
        progress.message(&note);
    }
    progress.message(&format!(
        "run directory {}; epochs {}..{}",
        trainer.run_dir().display(),
        trainer.epochs_done(),
        trainer.config().max_epochs
    ));
    trainer.fit(&mut progress)?;
    println!(
        "trained {} epochs ({} optimiser steps); the ECG encoder is {}",
        trainer.epochs_done(),
        trainer.steps_taken(),
        trainer.encoder_path().display()
    );
    Ok(())
}

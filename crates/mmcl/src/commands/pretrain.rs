//! `mmcl pretrain-mae` and `mmcl pretrain-mmcl`: the pre-training stages, driven by a JSON or
//! TOML configuration whose defaults are the paper's, resumable with `--resume`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use mmcl_nn::precision::Precision;
use mmcl_train::mae::{MaeStage, MaeTrainer};
use mmcl_train::mmcl::{MmclStage, MmclTrainer};
use mmcl_train::{BarProgress, NoProgress, Progress, Stage, Trainer};

use super::print_config::{OptionalKey, documented_toml};

/// Arguments of `mmcl pretrain-mae` and `mmcl pretrain-mmcl`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration (.json or .toml); keys left out take the paper's values
    /// (`--print-config` lists them all).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue the run in this directory (or from this checkpoint directory) exactly where it
    /// stopped; with `--config`, that configuration replaces the saved one (e.g. more epochs).
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// The run directory (default: `runs/mae` or `runs/mmcl`, or the resumed run's own
    /// directory).
    #[arg(long, value_name = "DIR")]
    output: Option<PathBuf>,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// `f32` or `bf16` (mixed precision: bf16 matrix products, f32 sums, weights and
    /// optimiser); replaces the configuration's `precision`, also of a resumed run.
    #[arg(long, value_name = "f32|bf16")]
    precision: Option<Precision>,
    /// Print the default configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

/// The optional setting both stages have: clipping the gradients' global norm.
const GRADIENT_CLIP: OptionalKey = (
    "gradient_clip_val",
    "1.0",
    "clip the global gradient norm to this value",
);

/// What the command adds to a pre-training stage ([`Stage`] has the rest).
trait Command: Stage {
    /// Where a new run goes without `--output`.
    const DEFAULT_OUTPUT: &'static str;
    /// The settings unset by default, shown commented out by `--print-config`.
    const OPTIONAL: &'static [OptionalKey];
    /// The end of the closing line: where the run's outputs are.
    fn outputs(trainer: &Trainer<Self>) -> String;
    /// Sets the configuration's `precision` (`--precision`).
    fn set_precision(cfg: &mut Self::Config, precision: Precision);
}

impl Command for MmclStage {
    const DEFAULT_OUTPUT: &'static str = "runs/mmcl";
    const OPTIONAL: &'static [OptionalKey] = &[
        GRADIENT_CLIP,
        (
            "ecg.pretrain_checkpoint",
            "\"runs/mae\"",
            "start the ECG encoder from this run, checkpoint folder or file",
        ),
        (
            "imaging.pretrain_checkpoint",
            "\"image_encoder.pth\"",
            "start the image encoder from this checkpoint",
        ),
    ];
    fn set_precision(cfg: &mut Self::Config, precision: Precision) {
        cfg.precision = precision;
    }
    fn outputs(trainer: &MmclTrainer) -> String {
        format!(
            "checkpoints in {}; the ECG encoder is {}",
            mmcl_train::checkpoint::checkpoints_dir(trainer.run_dir()).display(),
            mmcl_train::checkpoint::ecg_encoder_path(trainer.run_dir()).display()
        )
    }
}

impl Command for MaeStage {
    const DEFAULT_OUTPUT: &'static str = "runs/mae";
    const OPTIONAL: &'static [OptionalKey] = &[
        (
            "lr",
            "1e-3",
            "absolute learning rate (default: blr × effective batch / 4)",
        ),
        GRADIENT_CLIP,
    ];
    fn set_precision(cfg: &mut Self::Config, precision: Precision) {
        cfg.precision = precision;
    }
    fn outputs(trainer: &MaeTrainer) -> String {
        format!("the ECG encoder is {}", trainer.encoder_path().display())
    }
}

/// Runs `mmcl pretrain-mmcl`.
pub fn run_mmcl(args: Args) -> Result<()> {
    run::<MmclStage>(args)
}

/// Runs `mmcl pretrain-mae`.
pub fn run_mae(args: Args) -> Result<()> {
    run::<MaeStage>(args)
}

fn run<S: Command>(args: Args) -> Result<()> {
    if args.print_config {
        print!("{}", documented_toml(&S::Config::default(), S::OPTIONAL)?);
        return Ok(());
    }
    mmcl_nn::memory::keep_freed_memory();
    // Under a launcher (`mpirun`), every process is one replica of a data-parallel group; the
    // stages that cannot train so refuse when the trainer starts.
    let (device, comm) = super::common::training_device_and_group(&args.device)?;
    let (rank, world) = (comm.rank(), comm.world_size());
    let main = comm.is_main();
    let comm_backend = comm.backend();
    let mut cfg = match &args.config {
        Some(path) => Some(S::load_config(path)?),
        None => None,
    };
    if let Some(precision) = args.precision {
        let mut changed = match (cfg.take(), &args.resume) {
            (Some(cfg), _) => cfg,
            (None, Some(dir)) => Trainer::<S>::saved_config(dir)
                .with_context(|| format!("cannot resume {}", dir.display()))?,
            (None, None) => bail!("--config is required for a new run (or --resume a run)"),
        };
        S::set_precision(&mut changed, precision);
        cfg = Some(changed);
    }
    let (mut trainer, notes) = match &args.resume {
        Some(dir) => Trainer::<S>::resume_in_group(dir, cfg, args.output.as_deref(), &device, comm)
            .with_context(|| format!("cannot resume {}", dir.display()))?,
        None => {
            let Some(cfg) = cfg else {
                bail!("--config is required for a new run (or --resume a run)");
            };
            let output = args
                .output
                .unwrap_or_else(|| PathBuf::from(S::DEFAULT_OUTPUT));
            // Printed once the run is set up, so that an error is not buried under it.
            let text = S::config_toml(&cfg);
            let made = Trainer::<S>::new_in_group(cfg, &output, &device, comm)?;
            if main {
                eprintln!("configuration:\n{text}");
            }
            made
        }
    };
    // Only the main replica reports; the others train silently.
    let mut progress: Box<dyn Progress> = if main {
        Box::new(BarProgress::new().with_epochs(trainer.max_epochs()))
    } else {
        Box::new(NoProgress)
    };
    if world > 1 {
        progress.message(&format!(
            "data-parallel: rank {rank} of {world} ({})",
            comm_backend
        ));
    }
    for note in notes {
        progress.message(&note);
    }
    progress.message(&format!(
        "run directory {}; epochs {} to {} of {}",
        trainer.run_dir().display(),
        (trainer.epochs_done() + 1).min(trainer.max_epochs()),
        trainer.max_epochs(),
        trainer.max_epochs()
    ));
    trainer.fit(progress.as_mut())?;
    if main {
        println!(
            "trained {} epochs ({} optimiser steps); {}",
            trainer.epochs_done(),
            trainer.steps_taken(),
            S::outputs(&trainer)
        );
    }
    Ok(())
}

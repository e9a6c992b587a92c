//! `mmcl pretrain-mae` and `mmcl pretrain-mmcl`: the pre-training stages, driven by a JSON or
//! TOML configuration whose defaults are the paper's, resumable with `--resume`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::Device;
use mmcl_train::{BarProgress, MaeTrainConfig, MaeTrainer, MmclConfig, MmclTrainer, Progress};

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
    /// Print the default configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

/// What the command needs of a pre-training stage; the two trainers differ only in types.
trait Stage: Sized {
    type Config: Default;
    /// Where a new run goes without `--output`.
    const DEFAULT_OUTPUT: &'static str;
    fn load_config(path: &Path) -> mmcl_train::Result<Self::Config>;
    fn config_toml(cfg: &Self::Config) -> String;
    fn start(
        cfg: Self::Config,
        run_dir: &Path,
        device: &Device,
    ) -> mmcl_train::Result<(Self, Vec<String>)>;
    fn resume(
        path: &Path,
        cfg: Option<Self::Config>,
        run_dir: Option<&Path>,
        device: &Device,
    ) -> mmcl_train::Result<(Self, Vec<String>)>;
    fn run_dir(&self) -> &Path;
    fn epochs_done(&self) -> usize;
    fn max_epochs(&self) -> usize;
    fn fit(&mut self, progress: &mut dyn Progress) -> mmcl_train::Result<()>;
    /// The closing line: what was trained and where its outputs are.
    fn summary(&self) -> String;
}

impl Stage for MmclTrainer {
    type Config = MmclConfig;
    const DEFAULT_OUTPUT: &'static str = "runs/mmcl";
    fn load_config(path: &Path) -> mmcl_train::Result<MmclConfig> {
        MmclConfig::from_file(path)
    }
    fn config_toml(cfg: &MmclConfig) -> String {
        cfg.to_toml()
    }
    fn start(
        cfg: MmclConfig,
        run_dir: &Path,
        device: &Device,
    ) -> mmcl_train::Result<(Self, Vec<String>)> {
        MmclTrainer::new(cfg, run_dir, device)
    }
    fn resume(
        path: &Path,
        cfg: Option<MmclConfig>,
        run_dir: Option<&Path>,
        device: &Device,
    ) -> mmcl_train::Result<(Self, Vec<String>)> {
        MmclTrainer::resume(path, cfg, run_dir, device)
    }
    fn run_dir(&self) -> &Path {
        MmclTrainer::run_dir(self)
    }
    fn epochs_done(&self) -> usize {
        MmclTrainer::epochs_done(self)
    }
    fn max_epochs(&self) -> usize {
        self.config().max_epochs
    }
    fn fit(&mut self, progress: &mut dyn Progress) -> mmcl_train::Result<()> {
        MmclTrainer::fit(self, progress)
    }
    fn summary(&self) -> String {
        format!(
            "trained {} epochs ({} optimiser steps); checkpoints in {}",
            self.epochs_done(),
            self.steps_taken(),
            mmcl_train::checkpoint::checkpoints_dir(MmclTrainer::run_dir(self)).display()
        )
    }
}

impl Stage for MaeTrainer {
    type Config = MaeTrainConfig;
    const DEFAULT_OUTPUT: &'static str = "runs/mae";
    fn load_config(path: &Path) -> mmcl_train::Result<MaeTrainConfig> {
        MaeTrainConfig::from_file(path)
    }
    fn config_toml(cfg: &MaeTrainConfig) -> String {
        cfg.to_toml()
    }
    fn start(
        cfg: MaeTrainConfig,
        run_dir: &Path,
        device: &Device,
    ) -> mmcl_train::Result<(Self, Vec<String>)> {
        MaeTrainer::new(cfg, run_dir, device)
    }
    fn resume(
        path: &Path,
        cfg: Option<MaeTrainConfig>,
        run_dir: Option<&Path>,
        device: &Device,
    ) -> mmcl_train::Result<(Self, Vec<String>)> {
        MaeTrainer::resume(path, cfg, run_dir, device)
    }
    fn run_dir(&self) -> &Path {
        MaeTrainer::run_dir(self)
    }
    fn epochs_done(&self) -> usize {
        MaeTrainer::epochs_done(self)
    }
    fn max_epochs(&self) -> usize {
        self.config().max_epochs
    }
    fn fit(&mut self, progress: &mut dyn Progress) -> mmcl_train::Result<()> {
        MaeTrainer::fit(self, progress)
    }
    fn summary(&self) -> String {
        format!(
            "trained {} epochs ({} optimiser steps); the ECG encoder is {}",
            MaeTrainer::epochs_done(self),
            self.steps_taken(),
            self.encoder_path().display()
        )
    }
}

/// Runs `mmcl pretrain-mmcl`.
pub fn run_mmcl(args: Args) -> Result<()> {
    run::<MmclTrainer>(args)
}

/// Runs `mmcl pretrain-mae`.
pub fn run_mae(args: Args) -> Result<()> {
    run::<MaeTrainer>(args)
}

fn run<S: Stage>(args: Args) -> Result<()> {
    if args.print_config {
        print!("{}", S::config_toml(&S::Config::default()));
        return Ok(());
    }
    mmcl_nn::memory::keep_freed_memory();
    let device = super::common::parse_device(&args.device)?;
    let cfg = match &args.config {
        Some(path) => Some(S::load_config(path)?),
        None => None,
    };
    let mut progress = BarProgress::new();
    let (mut trainer, notes) = match &args.resume {
        Some(dir) => S::resume(dir, cfg, args.output.as_deref(), &device)
            .with_context(|| format!("cannot resume {}", dir.display()))?,
        None => {
            let Some(cfg) = cfg else {
                bail!("--config is required for a new run (or --resume a run)");
            };
            let output = args
                .output
                .unwrap_or_else(|| PathBuf::from(S::DEFAULT_OUTPUT));
            eprintln!("configuration:\n{}", S::config_toml(&cfg));
            S::start(cfg, &output, &device)?
        }
    };
    for note in notes {
        progress.message(&note);
    }
    progress.message(&format!(
        "run directory {}; epochs {}..{}",
        trainer.run_dir().display(),
        trainer.epochs_done(),
        trainer.max_epochs()
    ));
    trainer.fit(&mut progress)?;
    println!("{}", trainer.summary());
    Ok(())
}

//! What the examples share (`#[path = "common/mod.rs"] mod common;` in each): the command-line
//! arguments and set-up of the pre-training examples (default output folders, a small
//! synthetic cohort turned into a dataset cache by `mmcl_synth` + `mmcl_data::build`), and of
//! the stage examples that run on the reproduce pipeline's cohort.

// Each example compiles this module on its own and uses only its part of it.
#![allow(dead_code)]

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use candle_core::Device;
use mmcl_suite::data::build::{BuildConfig, build_dataset};
use mmcl_suite::data::cache::Cache;
use mmcl_suite::ecg::EcgVitConfig;
use mmcl_suite::nn::device::parse_device;
use mmcl_suite::pipeline::reproduce::{load_config, prepare_data, probe_vit_config};
use mmcl_suite::pipeline::{ReproduceConfig, TerminalProgress};
use mmcl_suite::synth::{Cohort, SynthConfig, WriteOptions};
use mmcl_suite::train::checkpoint;
use mmcl_suite::train::{BarProgress, Progress};

/// How every example starts: freed activations are kept for reuse and candle's element-wise
/// pool is sized for the threads (as the `mmcl` binary does), then the command line is parsed.
pub fn start<A: clap::Parser>() -> A {
    mmcl_suite::nn::memory::keep_freed_memory();
    // SAFETY: the example has started no thread yet.
    unsafe { mmcl_suite::nn::threads::share_cores_with_candle(rayon::current_num_threads()) };
    A::parse()
}

/// `--config`, `--device`, `--output` and `--subjects` of the pre-training examples.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// A configuration (.json/.toml); without one, a quick run on a synthetic cohort.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The run directory (replaced if it holds an earlier example run).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Subjects of the synthetic cohort (without `--config`).
    #[arg(long, default_value_t = 96)]
    pub subjects: usize,
}

impl TrainArgs {
    /// The device and the run directory (`--output`, else [`default_output`]`(name)`).
    pub fn device_and_output(&self, name: &str) -> Result<(Device, PathBuf)> {
        let device = parse_device(&self.device)?;
        let output = self.output.clone().unwrap_or_else(|| default_output(name));
        Ok((device, output))
    }

    /// The cache of the quick run's synthetic cohort (images of 48²), made under
    /// [`default_output`]`("synthetic-cohort")`; an earlier example run in `output` is removed,
    /// since a new run there would be refused.
    pub fn quick_cache(&self, output: &Path) -> Result<PathBuf> {
        let data_dir = default_output("synthetic-cohort");
        let cache = synthetic_cache(&data_dir, self.subjects, 48)?;
        if checkpoint::find_checkpoint(output).is_ok() {
            std::fs::remove_dir_all(output)?;
        }
        Ok(cache)
    }
}

/// Prints the configuration (`config_toml`), makes the trainer with `new` (which returns it
/// with its notes) and trains it with `fit` under a progress bar.
pub fn train<T>(
    config_toml: &str,
    new: impl FnOnce() -> Result<(T, Vec<String>)>,
    fit: impl FnOnce(&mut T, &mut BarProgress) -> Result<()>,
) -> Result<T> {
    eprintln!("configuration:\n{config_toml}");
    let mut progress = BarProgress::new();
    let (mut trainer, notes) = new()?;
    for note in notes {
        progress.message(&note);
    }
    fit(&mut trainer, &mut progress)?;
    Ok(trainer)
}

/// `--config`, `--data` and `--device` of the stage examples that run on the reproduce
/// pipeline's synthetic cohort (each names its own count of cohort subjects).
#[derive(Debug, clap::Args)]
pub struct CohortArgs {
    /// A reproduce configuration (JSON/TOML) for the encoders and the data.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where the cohort and cache are made (reused when present).
    #[arg(long, default_value = "target/example-data")]
    pub data: PathBuf,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Subjects of the cohort (without --config).
    #[arg(long, default_value_t = 400)]
    pub cohort_subjects: usize,
}

impl CohortArgs {
    /// The device, the reproduce configuration (`--config`, else the reduced defaults with a
    /// cohort of `--cohort-subjects`) and its cohort's cache under `--data` (made when absent).
    pub fn prepare(&self) -> Result<(Device, ReproduceConfig, PathBuf)> {
        let device = parse_device(&self.device)?;
        let mut cfg = load_config(self.config.as_deref(), false)?;
        if self.config.is_none() {
            cfg.cohort.subjects = self.cohort_subjects;
        }
        let cache = prepare_data(&cfg, &self.data, &mut TerminalProgress::new())?;
        Ok((device, cfg, cache))
    }

    /// [`CohortArgs::prepare`] for the examples that load a model: the cache opened, and the
    /// ECG encoder configuration of the pipeline's probes ([`probe_vit_config`]).
    pub fn open(&self) -> Result<OpenCohort> {
        let (device, cfg, cache_dir) = self.prepare()?;
        let cache = Arc::new(Cache::open(&cache_dir)?);
        let vit = probe_vit_config(&cfg)?;
        Ok(OpenCohort {
            device,
            cfg,
            cache,
            vit,
        })
    }
}

/// What [`CohortArgs::open`] gives.
pub struct OpenCohort {
    /// The device of `--device`.
    pub device: Device,
    /// The reproduce configuration.
    pub cfg: ReproduceConfig,
    /// Its cohort's dataset cache.
    pub cache: Arc<Cache>,
    /// The ECG encoder configuration of the pipeline's probes.
    pub vit: EcgVitConfig,
}

/// The model of `--checkpoint`, read by `load`, which also says what loading did (printed);
/// without a checkpoint, `note` is printed and `random` makes a seeded random model.
pub fn checkpoint_or_random<M, S: Display>(
    checkpoint: Option<&Path>,
    load: impl FnOnce(&Path) -> Result<(M, S)>,
    note: &str,
    random: impl FnOnce() -> Result<M>,
) -> Result<M> {
    match checkpoint {
        Some(path) => {
            let (model, summary) = load(path)?;
            println!("{summary}");
            Ok(model)
        }
        None => {
            println!("{note}");
            random()
        }
    }
}

/// Where an example writes when not told: `target/example-runs/<name>` of the workspace.
pub fn default_output(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("example-runs")
        .join(name)
}

/// Generates a cohort of `subjects` synthetic participants under `dir/cohort` and builds its
/// cache at `dir/cache` (70 % train, 20 % validation, 10 % test; 12×5000 ECGs; small CMR
/// images of `image_size`²). Returns the cache.
pub fn synthetic_cache(dir: &Path, subjects: usize, image_size: usize) -> Result<PathBuf> {
    let mut synth = SynthConfig {
        subjects,
        seed: 2022,
        ..SynthConfig::default()
    };
    synth.cmr.image_size = image_size;
    synth.cmr.slices = 6;
    synth.cmr.frames = 4;
    let cohort = dir.join("cohort");
    eprintln!(
        "generating {subjects} synthetic subjects in {}",
        cohort.display()
    );
    Cohort::new(synth)?.write(&cohort, WriteOptions { overwrite: true }, &|| {})?;
    let mut build = BuildConfig {
        root: cohort,
        output: dir.join("cache"),
        overwrite: true,
        ..BuildConfig::default()
    };
    build.cmr.size = image_size;
    build.split.train = 0.7;
    build.split.val = 0.2;
    build.split.test = 0.1;
    let (index, _) = build_dataset(&build, &|_, _| {})?;
    eprintln!(
        "dataset cache {} (ECGs {:?}, images {:?})",
        build.output.display(),
        index.ecg,
        index.image
    );
    Ok(build.output)
}

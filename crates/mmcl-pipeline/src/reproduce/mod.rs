//! The paper's pipeline from one call: synthetic cohort → dataset cache → MAE pre-training →
//! MMCL pre-training (from random initialisation and from the MAE encoder) → ECG-only linear
//! probes of five encoders → `results.json`, `report.md`, training curves and localisation
//! maps.
//!
//! # Output directory
//!
//! ```text
//! <out>/
//!   config.toml            the resolved configuration
//!   cohort/                the synthetic cohort (UK Biobank layout)
//!   cache/                 the dataset cache
//!   runs/mae/              MAE run (checkpoints, metrics.jsonl, ecg_encoder export)
//!   runs/mmcl/             MMCL from random initialisation
//!   runs/mae_mmcl/         MMCL initialised from runs/mae
//!   runs/seed-<s>/…        the three runs of training seed s, when `seeds` is set
//!   results.json           the contract of [`crate::results`]
//!   report.md              the tables, the claim, timings, figures
//!   figures/               curves_<run>.png, localization/<eid>/*.png
//! ```
//!
//! Each stage directory carries `pipeline-stage.json`: the settings it was made with (its own
//! and its inputs') and whether it finished. A stage whose directory is complete for the same
//! settings is reused; a training run interrupted under the same settings is resumed from its
//! last checkpoint; anything else is rebuilt. The cohort and the cache are written into
//! temporary siblings and renamed, the trainers write atomic checkpoints, and the results,
//! report and figures are assembled in a temporary directory and moved into place at the end.

mod features;
mod figures;
mod probes;
mod progress;
mod report;
mod resources;
mod side_by_side;
mod stages;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use candle_core::Device;
use mmcl_data::build::{BuildConfig, build_dataset};
use mmcl_data::cache::Cache;
use mmcl_data::cmr::{CmrConfig, CropSpec};
use mmcl_data::ecg::preprocess::PreprocessConfig;
use mmcl_synth::{Cohort, WriteOptions};
use mmcl_train::checkpoint::ECG_ENCODER_FILE;
use serde_json::json;

pub use figures::{ExplainedSubject, explain_subjects};
pub use probes::{probe_ecg_encoder, probe_vit_config, probed_checkpoint};
pub use report::summary;
pub use side_by_side::threads_per_stage;
pub use stages::STAGE_FILE;

use figures::{localization_figures, training_curves};
use probes::{Evaluated, evaluate_encoders};
use progress::counted;
use report::report_markdown;
use resources::Clock;
use side_by_side::run_pair;
use stages::{
    MAE, MMCL, Runs, StageState, mae_config, mmcl_config, remove_dir, stage_state, train_stage,
    write_marker,
};

use crate::config::ReproduceConfig;
use crate::progress::PipelineProgress;
use crate::results::{Results, SeedResults};
use crate::{Error, Result};

/// Stages of a run, for progress displays.
const STAGES: usize = 7;

/// Paths of a run's output directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The output directory.
    pub root: PathBuf,
}

/// Accessors of [`Layout`] for the entries directly under its root: each returns
/// `root/<name>` and keeps its own doc comment.
macro_rules! entries_under_root {
    ($($(#[$doc:meta])* $method:ident => $name:literal;)*) => {
        $(
            $(#[$doc])*
            pub fn $method(&self) -> PathBuf {
                self.root.join($name)
            }
        )*
    };
}

impl Layout {
    /// The layout under `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }
    entries_under_root! {
        /// `config.toml`.
        config => "config.toml";
        /// The synthetic cohort.
        cohort => "cohort";
        /// The dataset cache.
        cache => "cache";
        /// `results.json`.
        results => "results.json";
        /// `report.md`.
        report => "report.md";
        /// The figures folder.
        figures => "figures";
    }
    /// The run directory of a training stage (`mae`, `mmcl`, `mae_mmcl`).
    pub fn run(&self, name: &str) -> PathBuf {
        self.root.join("runs").join(name)
    }
    /// The run directory of a training stage for a training seed: `runs/seed-<s>/<name>`, or
    /// [`Layout::run`] without one.
    pub fn seed_run(&self, seed: Option<u64>, name: &str) -> PathBuf {
        match seed {
            Some(s) => self.root.join("runs").join(format!("seed-{s}")).join(name),
            None => self.run(name),
        }
    }
}

/// How long a stage took.
#[derive(Debug, Clone, PartialEq)]
pub struct StageTiming {
    /// The stage.
    pub name: String,
    /// Wall-clock seconds.
    pub wall_s: f64,
    /// CPU seconds of the process (user + system, all threads), where the platform reports
    /// them (Linux).
    pub cpu_s: Option<f64>,
    /// Whether the stage's earlier output was reused.
    pub reused: bool,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// The results (as written to `results.json`).
    pub results: Results,
    /// The output layout (`results.json`, `report.md`, `figures/`).
    pub layout: Layout,
    /// Per-stage timings.
    pub timings: Vec<StageTiming>,
}

/// Runs the whole pipeline of `cfg` into `out_dir` on `device` (see the module docs for the
/// layout and the reuse of earlier stages).
///
/// # Errors
/// An invalid configuration, any stage's error (naming its files), too few subjects or cases
/// in a split for the probes.
pub fn run(
    cfg: &ReproduceConfig,
    out_dir: &Path,
    device: &Device,
    progress: &mut dyn PipelineProgress,
) -> Result<Outputs> {
    cfg.validate()?;
    let layout = Layout::new(out_dir);
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    mmcl_nn::io::write_bytes_atomic(&layout.config(), cfg.to_toml().as_bytes())?;
    let mut clock = Clock::new();

    let (cache_dir, cache_key) = prepare_stages(cfg, &layout, &mut clock, progress)?;

    // 3-6, once per training seed.
    let cache = Arc::new(Cache::open(&cache_dir)?);
    let per_seed = cfg.per_seed();
    let mut seeds = Vec::with_capacity(per_seed.len());
    let mut first_runs = None;
    for (k, (seed, seed_cfg)) in per_seed.iter().enumerate() {
        if let Some(s) = seed {
            progress.message(&format!(
                "training seed {s} ({} of {})",
                k + 1,
                per_seed.len()
            ));
        }
        let (runs, evaluated) = train_and_probe(
            seed_cfg,
            (&cache, &cache_dir, &cache_key),
            &layout,
            *seed,
            &mut clock,
            device,
            progress,
        )?;
        first_runs.get_or_insert(runs);
        seeds.push(SeedResults {
            seed: seed.unwrap_or(seed_cfg.mmcl.seed),
            encoders: evaluated.encoders,
            comparisons: evaluated.comparisons,
        });
    }
    let (Some(runs), Some(first)) = (first_runs, seeds.first().cloned()) else {
        return Err(Error::Insufficient {
            stage: "probes",
            reason: "no training seed ran".into(),
        });
    };
    let results = Results {
        encoders: first.encoders,
        comparisons: first.comparisons,
        negative_control: cfg.cohort.couplings.negative_control().map(str::to_string),
        seeds: if cfg.seeds.is_empty() {
            Vec::new()
        } else {
            seeds
        },
        config: serde_json::to_value(cfg).map_err(|e| Error::json(layout.config(), e))?,
    };

    // 7. Figures and report, assembled aside and moved into place.
    progress.stage(7, STAGES, "results, figures and report");
    let staging = out_dir.join(format!(".results.partial-{}", std::process::id()));
    remove_dir(&staging)?;
    let outcome = (|| -> Result<()> {
        let figures = staging.join("figures");
        std::fs::create_dir_all(&figures).map_err(|e| Error::io(&figures, e))?;
        let curves = training_curves(&runs, &figures)?;
        let maps = localization_figures(cfg, &cache, &runs, &figures.join("localization"), device)?;
        results.write(&staging.join("results.json"))?;
        clock.lap("figures", false);
        let report = report_markdown(cfg, &results, &clock.timings, &curves, &maps);
        mmcl_nn::io::write_bytes_atomic(&staging.join("report.md"), report.as_bytes())?;
        Ok(())
    })();
    if let Err(e) = outcome {
        let _ = remove_dir(&staging);
        return Err(e);
    }
    remove_dir(&layout.figures())?;
    for name in ["figures", "results.json", "report.md"] {
        let (from, to) = (staging.join(name), out_dir.join(name));
        std::fs::rename(&from, &to).map_err(|e| Error::io(&to, e))?;
    }
    remove_dir(&staging)?;
    progress.message(&results.claim().to_string());
    Ok(Outputs {
        results,
        layout,
        timings: clock.timings,
    })
}

/// Stages 3–6 for one training seed (`None`: the configuration's own seeds): MAE, MMCL from
/// random initialisation and from the MAE encoder, then the probes. Returns the run
/// directories and what the probes found.
fn train_and_probe(
    cfg: &ReproduceConfig,
    (cache, cache_dir, cache_key): (&Arc<Cache>, &Path, &serde_json::Value),
    layout: &Layout,
    seed: Option<u64>,
    clock: &mut Clock,
    device: &Device,
    progress: &mut dyn PipelineProgress,
) -> Result<(Runs, Evaluated)> {
    let lap = |name: &str| match seed {
        Some(s) => format!("{name} (seed {s})"),
        None => name.to_string(),
    };
    // 3. MAE.
    progress.stage(3, STAGES, "MAE pre-training of the ECG encoder");
    let mae_key = json!({"cache": cache_key, "mae": cfg.mae});
    let mae_dir = layout.seed_run(seed, "mae");
    let mae = mae_config(cfg, cache_dir);
    let reused = train_stage(&MAE, mae, &mae_dir, &mae_key, device, progress)?;
    clock.lap(&lap("mae"), reused);

    // 4-5. MMCL twice, side by side where the configuration and the machine allow.
    let mmcl_key = json!({"cache": cache_key, "mmcl": cfg.mmcl});
    let mmcl_dir = layout.seed_run(seed, "mmcl");
    let mmcl = mmcl_config(cfg, cache_dir, None);
    let mae_mmcl_key = json!({"mae": mae_key, "mmcl": cfg.mmcl});
    let mae_mmcl_dir = layout.seed_run(seed, "mae_mmcl");
    // The MAE encoder that is probed (its best validation epoch) initialises the run.
    let mae_encoder = probed_checkpoint(&mae_dir).join(ECG_ENCODER_FILE);
    let mae_mmcl = mmcl_config(cfg, cache_dir, Some(&mae_encoder));
    let from_random = "MMCL pre-training from random initialisation";
    let from_mae = "MMCL pre-training from the MAE encoder";
    // Side by side only when both stages have work left: a finished one is merely reused, and
    // the other would then train on half of the threads.
    let both_train = stage_state(&mmcl_dir, &mmcl_key) != StageState::Done
        && stage_state(&mae_mmcl_dir, &mae_mmcl_key) != StageState::Done;
    let shares = side_by_side::shares(cfg, device).filter(|_| both_train);
    match shares {
        Some(threads) => {
            progress.stage(4, STAGES, from_random);
            progress.stage(5, STAGES, &format!("{from_mae}, side by side with stage 4"));
            progress.message(&format!(
                "stages 4 and 5 on {} and {} threads; the bar follows stage 4",
                threads[0], threads[1]
            ));
            let (dir_4, key_4, dir_5, key_5) = (&mmcl_dir, &mmcl_key, &mae_mmcl_dir, &mae_mmcl_key);
            let (reused_4, reused_5) = run_pair(
                (
                    Box::new(move |p| train_stage(&MMCL, mmcl, dir_4, key_4, device, p)),
                    Box::new(move |p| train_stage(&MMCL, mae_mmcl, dir_5, key_5, device, p)),
                ),
                threads,
                ["stage 4", "stage 5"],
                progress,
            )?;
            clock.lap(&lap("mmcl + mae_mmcl, side by side"), reused_4 && reused_5);
        }
        _ => {
            progress.stage(4, STAGES, from_random);
            let reused = train_stage(&MMCL, mmcl, &mmcl_dir, &mmcl_key, device, progress)?;
            clock.lap(&lap("mmcl"), reused);
            progress.stage(5, STAGES, from_mae);
            let reused = train_stage(
                &MMCL,
                mae_mmcl,
                &mae_mmcl_dir,
                &mae_mmcl_key,
                device,
                progress,
            )?;
            clock.lap(&lap("mae_mmcl"), reused);
        }
    }

    // 6. Probes.
    progress.stage(6, STAGES, "linear probes of six encoders");
    let runs = Runs {
        mae: mae_dir,
        mmcl: mmcl_dir,
        mae_mmcl: mae_mmcl_dir,
    };
    let evaluated = evaluate_encoders(cfg, cache, &runs, device, progress)?;
    clock.lap(&lap("probes"), false);
    Ok((runs, evaluated))
}

/// Stages 1–2: the cohort and the cache under `layout` (reused when complete for the same
/// settings). Returns the cache directory and its stage key.
fn prepare_stages(
    cfg: &ReproduceConfig,
    layout: &Layout,
    clock: &mut Clock,
    progress: &mut dyn PipelineProgress,
) -> Result<(PathBuf, serde_json::Value)> {
    let total = if clock.standalone { 2 } else { STAGES };
    // 1. Cohort.
    progress.stage(1, total, "synthetic cohort");
    let cohort_key = json!({"cohort": cfg.cohort});
    let cohort_dir = layout.cohort();
    let reused = stage_state(&cohort_dir, &cohort_key) == StageState::Done;
    if reused {
        progress.message(&format!("reusing {}", cohort_dir.display()));
    } else {
        let cohort = Cohort::new(cfg.cohort.clone())?;
        let n = cfg.cohort.subjects;
        let summary = counted(progress, "subjects", n, |done| {
            cohort.write(&cohort_dir, WriteOptions { overwrite: true }, &|| {
                done.fetch_add(1, Ordering::Relaxed);
            })
        })?;
        write_marker(&cohort_dir, &cohort_key, true)?;
        progress.message(&format!(
            "{} subjects written to {} in {:.1} s",
            summary.records.len(),
            cohort_dir.display(),
            summary.seconds
        ));
    }
    clock.lap("cohort", reused);

    // 2. Dataset cache.
    progress.stage(2, total, "dataset cache");
    let cache_key = json!({"cohort": cohort_key, "data": cfg.data});
    let cache_dir = layout.cache();
    let reused = stage_state(&cache_dir, &cache_key) == StageState::Done;
    if reused {
        progress.message(&format!("reusing {}", cache_dir.display()));
    } else {
        let build = build_config(cfg, &cohort_dir, &cache_dir);
        let total = cfg.cohort.subjects;
        let (index, report) = counted(progress, "subjects", total, |done| {
            build_dataset(&build, &|d, _| done.store(d, Ordering::Relaxed))
        })?;
        write_marker(&cache_dir, &cache_key, true)?;
        progress.message(&format!(
            "cache {}: {} subjects ({:?}), {} skipped",
            cache_dir.display(),
            index.subjects.len(),
            report.written,
            report.skipped.len()
        ));
    }
    clock.lap("cache", reused);

    Ok((cache_dir, cache_key))
}

/// The synthetic cohort and its dataset cache only (stages 1–2 of [`run`]), under `out_dir`
/// (`cohort/`, `cache/`), reused when complete for the same settings: the data of the stage
/// examples. Returns the cache directory.
///
/// # Errors
/// An invalid configuration, generation or build errors.
pub fn prepare_data(
    cfg: &ReproduceConfig,
    out_dir: &Path,
    progress: &mut dyn PipelineProgress,
) -> Result<PathBuf> {
    cfg.validate()?;
    let layout = Layout::new(out_dir);
    let mut clock = Clock::new();
    clock.standalone = true;
    Ok(prepare_stages(cfg, &layout, &mut clock, progress)?.0)
}

/// The data layer's build configuration of the pipeline's cache.
fn build_config(cfg: &ReproduceConfig, cohort: &Path, cache: &Path) -> BuildConfig {
    let d = &cfg.data;
    BuildConfig {
        root: cohort.to_path_buf(),
        output: cache.to_path_buf(),
        ecg: PreprocessConfig {
            sample_rate: d.ecg_sample_rate,
            ..PreprocessConfig::default()
        },
        ecg_samples: d.ecg_samples,
        ecg_leads: Some(d.ecg_leads.clone()),
        cmr: CmrConfig {
            crop: CropSpec::LvCentre { size_mm: d.crop_mm },
            size: d.image_size,
            ..CmrConfig::default()
        },
        diseases: d.diseases.clone(),
        split: d.split.clone(),
        overwrite: true,
        ..BuildConfig::default()
    }
}

/// The configuration of a run: the reduced default, or the paper's with `paper`, with the
/// file at `path` (JSON or TOML) written over it.
///
/// # Errors
/// See [`ReproduceConfig::from_file`].
pub fn load_config(path: Option<&Path>, paper: bool) -> Result<ReproduceConfig> {
    let base = if paper {
        ReproduceConfig::paper()
    } else {
        ReproduceConfig::default()
    };
    match path {
        Some(p) => ReproduceConfig::from_file(p, base),
        None => Ok(base),
    }
}

/// [`load_config`], with the training seeds replaced by `seeds` when given (a `--seeds` flag
/// over the file's `seeds`).
///
/// # Errors
/// See [`load_config`]; a repeated seed.
pub fn load_config_with_seeds(
    path: Option<&Path>,
    paper: bool,
    seeds: Option<Vec<u64>>,
) -> Result<ReproduceConfig> {
    let mut cfg = load_config(path, paper)?;
    if let Some(seeds) = seeds {
        cfg.seeds = seeds;
        cfg.validate()?;
    }
    Ok(cfg)
}

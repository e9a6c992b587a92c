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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use mmcl_data::build::{BuildConfig, build_dataset};
use mmcl_data::cache::Cache;
use mmcl_data::cmr::{CmrConfig, CropSpec};
use mmcl_data::ecg::preprocess::PreprocessConfig;
use mmcl_data::loader::{Loader, LoaderConfig};
use mmcl_data::tables::Split;
use mmcl_ecg::{EcgVit, EcgVitConfig};
use mmcl_eval::Matrix;
use mmcl_eval::localization::localize;
use mmcl_eval::metrics::{Bootstrap, Estimate, Evaluation, Task, evaluate};
use mmcl_eval::plot::TrainingCurvesFigure;
use mmcl_eval::probe::{LinearProbe, ProbeConfig};
use mmcl_eval::runlog::RunLog;
use mmcl_synth::{Cohort, WriteOptions};
use mmcl_train::checkpoint::{ecg_encoder_path, find_checkpoint, last_dir};
use mmcl_train::{MaeTrainer, MmclModel, MmclTrainer};
use serde_json::json;

use crate::config::ReproduceConfig;
use crate::progress::PipelineProgress;
use crate::results::{Auroc, EncoderResults, Encoders, Phenotypes, R2, Results};
use crate::{Error, Result};

/// The marker file of a stage directory.
pub const STAGE_FILE: &str = "pipeline-stage.json";

/// Stages of a run, for progress displays.
const STAGES: usize = 7;

/// Paths of a run's output directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The output directory.
    pub root: PathBuf,
}

impl Layout {
    /// The layout under `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }
    /// `config.toml`.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    /// The synthetic cohort.
    pub fn cohort(&self) -> PathBuf {
        self.root.join("cohort")
    }
    /// The dataset cache.
    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }
    /// The run directory of a training stage (`mae`, `mmcl`, `mae_mmcl`).
    pub fn run(&self, name: &str) -> PathBuf {
        self.root.join("runs").join(name)
    }
    /// `results.json`.
    pub fn results(&self) -> PathBuf {
        self.root.join("results.json")
    }
    /// `report.md`.
    pub fn report(&self) -> PathBuf {
        self.root.join("report.md")
    }
    /// The figures folder.
    pub fn figures(&self) -> PathBuf {
        self.root.join("figures")
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

/// CPU seconds (user + system) of this process so far: `/proc/self/stat` fields 14 and 15, in
/// clock ticks of 1/100 s (the kernel's `USER_HZ` on every mainstream Linux).
fn cpu_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is parenthesised and may hold spaces: split after it.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The marker of a stage directory.
fn read_marker(dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join(STAGE_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_marker(dir: &Path, key: &serde_json::Value, complete: bool) -> Result<()> {
    let value = json!({"key": key, "complete": complete});
    let path = dir.join(STAGE_FILE);
    let text = serde_json::to_string_pretty(&value).map_err(|source| Error::Json {
        path: path.clone(),
        source,
    })?;
    mmcl_nn::io::write_bytes_atomic(&path, text.as_bytes())?;
    Ok(())
}

/// What to do with a stage directory given its marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StageState {
    /// Complete for these settings.
    Done,
    /// Started for these settings, not finished.
    Partial,
    /// Absent, or made with other settings.
    Stale,
}

fn stage_state(dir: &Path, key: &serde_json::Value) -> StageState {
    match read_marker(dir) {
        Some(m) if m.get("key") == Some(key) => {
            if m.get("complete") == Some(&json!(true)) {
                StageState::Done
            } else {
                StageState::Partial
            }
        }
        _ => StageState::Stale,
    }
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// Runs `work` on a scoped thread while reporting the counter it advances as `what`.
fn counted<T: Send>(
    progress: &mut dyn PipelineProgress,
    what: &str,
    total: usize,
    work: impl FnOnce(&AtomicUsize) -> T + Send,
) -> T {
    let counter = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let handle = s.spawn(|| work(&counter));
        progress.count(what, 0, total);
        while !handle.is_finished() {
            std::thread::sleep(Duration::from_millis(100));
            progress.count(what, counter.load(Ordering::Relaxed).min(total), total);
        }
        progress.count(what, total, total);
        match handle.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Times stages.
struct Clock {
    timings: Vec<StageTiming>,
    start: (Instant, Option<f64>),
    /// Stages 1–2 run on their own ([`prepare_data`]).
    standalone: bool,
}

impl Clock {
    fn new() -> Self {
        Self {
            timings: Vec::new(),
            start: (Instant::now(), cpu_seconds()),
            standalone: false,
        }
    }
    fn lap(&mut self, name: &str, reused: bool) {
        let now = (Instant::now(), cpu_seconds());
        self.timings.push(StageTiming {
            name: name.to_string(),
            wall_s: (now.0 - self.start.0).as_secs_f64(),
            cpu_s: match (now.1, self.start.1) {
                (Some(a), Some(b)) => Some(a - b),
                _ => None,
            },
            reused,
        });
        self.start = now;
    }
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

    // 3. MAE.
    progress.stage(3, STAGES, "MAE pre-training of the ECG encoder");
    let mae_key = json!({"cache": cache_key, "mae": cfg.mae});
    let mae_dir = layout.run("mae");
    let reused = train_mae(cfg, &cache_dir, &mae_dir, &mae_key, device, progress)?;
    clock.lap("mae", reused);

    // 4-5. MMCL twice.
    progress.stage(4, STAGES, "MMCL pre-training from random initialisation");
    let mmcl_key = json!({"cache": cache_key, "mmcl": cfg.mmcl});
    let mmcl_dir = layout.run("mmcl");
    let reused = train_mmcl(
        cfg, &cache_dir, None, &mmcl_dir, &mmcl_key, device, progress,
    )?;
    clock.lap("mmcl", reused);

    progress.stage(5, STAGES, "MMCL pre-training from the MAE encoder");
    let mae_mmcl_key = json!({"mae": mae_key, "mmcl": cfg.mmcl});
    let mae_mmcl_dir = layout.run("mae_mmcl");
    let mae_encoder = ecg_encoder_path(&mae_dir);
    let reused = train_mmcl(
        cfg,
        &cache_dir,
        Some(&mae_encoder),
        &mae_mmcl_dir,
        &mae_mmcl_key,
        device,
        progress,
    )?;
    clock.lap("mae_mmcl", reused);

    // 6. Probes.
    progress.stage(6, STAGES, "linear probes of five encoders");
    let runs = Runs {
        mae: mae_dir,
        mmcl: mmcl_dir,
        mae_mmcl: mae_mmcl_dir,
    };
    let cache = Arc::new(Cache::open(&cache_dir)?);
    let encoders = evaluate_encoders(cfg, &cache, &runs, device, progress)?;
    let results = Results {
        encoders,
        config: serde_json::to_value(cfg).map_err(|source| Error::Json {
            path: layout.config(),
            source,
        })?,
    };
    clock.lap("probes", false);

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

/// Trains (or reuses, or resumes) the MAE run. Returns whether a finished run was reused.
fn train_mae(
    cfg: &ReproduceConfig,
    cache: &Path,
    dir: &Path,
    key: &serde_json::Value,
    device: &Device,
    progress: &mut dyn PipelineProgress,
) -> Result<bool> {
    let mut mae = cfg.mae.clone();
    mae.data.cache = cache.to_path_buf();
    let state = stage_state(dir, key);
    if state == StageState::Done {
        progress.message(&format!("reusing {}", dir.display()));
        return Ok(true);
    }
    let (mut trainer, notes) = if state == StageState::Partial && find_checkpoint(dir).is_ok() {
        MaeTrainer::resume(dir, Some(mae), None, device)?
    } else {
        remove_dir(dir)?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        write_marker(dir, key, false)?;
        MaeTrainer::new(mae, dir, device)?
    };
    for n in notes {
        progress.message(&n);
    }
    trainer.fit(progress)?;
    write_marker(dir, key, true)?;
    Ok(false)
}

/// Trains (or reuses, or resumes) an MMCL run, initialised from `ecg_init` when given.
fn train_mmcl(
    cfg: &ReproduceConfig,
    cache: &Path,
    ecg_init: Option<&Path>,
    dir: &Path,
    key: &serde_json::Value,
    device: &Device,
    progress: &mut dyn PipelineProgress,
) -> Result<bool> {
    let mut mmcl = cfg.mmcl.clone();
    mmcl.data.cache = cache.to_path_buf();
    mmcl.ecg.pretrain_checkpoint = ecg_init.map(Path::to_path_buf);
    let state = stage_state(dir, key);
    if state == StageState::Done {
        progress.message(&format!("reusing {}", dir.display()));
        return Ok(true);
    }
    let (mut trainer, notes) = if state == StageState::Partial && find_checkpoint(dir).is_ok() {
        MmclTrainer::resume(dir, Some(mmcl), None, device)?
    } else {
        remove_dir(dir)?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        write_marker(dir, key, false)?;
        MmclTrainer::new(mmcl, dir, device)?
    };
    for n in notes {
        progress.message(&n);
    }
    trainer.fit(progress)?;
    write_marker(dir, key, true)?;
    Ok(false)
}

/// The three training runs.
#[derive(Debug, Clone)]
struct Runs {
    mae: PathBuf,
    mmcl: PathBuf,
    mae_mmcl: PathBuf,
}

/// One split's inputs: cache positions, labels (NaN = unknown) and raw phenotypes (NaN =
/// missing).
struct SplitData {
    positions: Vec<usize>,
    labels: Matrix<f64>,
    phenotypes: Matrix<f64>,
}

fn split_data(cache: &Cache, split: Split) -> Result<SplitData> {
    let positions = cache.split_indices(split);
    let index = cache.index();
    if positions.is_empty() {
        return Err(Error::Insufficient {
            stage: "probes",
            reason: format!("the {split:?} split of the cache is empty"),
        });
    }
    let (l, p) = (index.label_names.len(), index.phenotype_names.len());
    let mut labels = Vec::with_capacity(positions.len() * l);
    let mut phenotypes = Vec::with_capacity(positions.len() * p);
    for &i in &positions {
        let s = &index.subjects[i];
        labels.extend(s.labels.iter().map(|v| v.map_or(f64::NAN, f64::from)));
        phenotypes.extend(s.phenotypes.iter().map(|v| v.unwrap_or(f64::NAN)));
    }
    Ok(SplitData {
        labels: Matrix::new(positions.len(), l, labels)?,
        phenotypes: Matrix::new(positions.len(), p, phenotypes)?,
        positions,
    })
}

/// The evaluation loader of `positions`: ECGs cropped from sample 0 and/or un-augmented
/// images, in order.
fn eval_loader(
    cfg: &ReproduceConfig,
    cache: &Arc<Cache>,
    positions: &[usize],
    images: bool,
    device: &Device,
) -> Result<Arc<Loader>> {
    let mut lc = LoaderConfig::ecg_eval(cfg.evaluation.batch_size);
    lc.ecg = !images;
    lc.ecg_crop = Some(cfg.mmcl.ecg.input_size[2]);
    lc.image = images;
    lc.image_augment = None;
    lc.image_size = Some(cfg.mmcl.imaging.img_size);
    lc.seed = cfg.mmcl.seed;
    Ok(Arc::new(Loader::new(
        cache.clone(),
        positions.to_vec(),
        lc,
        device.clone(),
    )?))
}

/// Rows of `[B, D]` tensors stacked into a host matrix.
fn collect_rows(parts: Vec<Tensor>) -> Result<Matrix<f32>> {
    let all = Tensor::cat(&parts, 0)?.to_device(&Device::Cpu)?; // [N, D]
    let (n, d) = all.dims2()?;
    Ok(Matrix::new(n, d, all.flatten_all()?.to_vec1::<f32>()?)?)
}

/// Embeds every batch of `loader` with `f` (ECG or image batch → `[B, D]`).
fn embed_all(
    loader: &Arc<Loader>,
    images: bool,
    f: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> Result<Matrix<f32>> {
    let mut parts = Vec::new();
    for batch in loader.epoch(0, 0) {
        let batch = batch?;
        let x = if images { batch.image } else { batch.ecg };
        let x = x.ok_or_else(|| Error::Insufficient {
            stage: "probes",
            reason: "the loader returned a batch without the requested modality".into(),
        })?;
        parts.push(f(&x)?);
    }
    collect_rows(parts)
}

/// Fits the disease and phenotype probes on train (regularisation chosen on val) and evaluates
/// them on test.
fn probe_encoder(
    cfg: &ReproduceConfig,
    names: (&[String], &[String]),
    x: [&Matrix<f32>; 3],
    data: [&SplitData; 3],
) -> Result<EncoderResults> {
    let e = &cfg.evaluation;
    let probe_cfg = ProbeConfig {
        cs: e.cs.clone(),
        alphas: e.alphas.clone(),
        ..ProbeConfig::default()
    };
    let bootstrap = Bootstrap {
        resamples: e.bootstrap,
        seed: e.bootstrap_seed,
        confidence: e.confidence,
    };
    let [train, val, test] = data;
    let run = |task: Task, y: [&Matrix<f64>; 3], names: &[String]| -> Result<Evaluation> {
        let probe = LinearProbe::fit(task, x[0], y[0], Some((x[1], y[1])), &probe_cfg)?;
        let pred = probe.predict(x[2])?;
        Ok(evaluate(task, y[2], &pred, names, 0.5, &bootstrap)?)
    };
    // Diseases one by one: a rare one may lack cases in the validation split.
    let mut test_pred = Vec::with_capacity(test.labels.rows() * names.0.len());
    let mut columns = Vec::new();
    for k in 0..names.0.len() {
        let column =
            |m: &Matrix<f64>| Matrix::column_vector((0..m.rows()).map(|i| m.get(i, k)).collect());
        let (ytr, yval) = (column(&train.labels), column(&val.labels));
        let both_classes = {
            let present: Vec<f64> = yval
                .as_slice()
                .iter()
                .copied()
                .filter(|v| !v.is_nan())
                .collect();
            present.contains(&0.0) && present.contains(&1.0)
        };
        // A split too small to hold both classes (tiny cohorts) falls back to choosing on the
        // training rows: a weaker choice, but no failure.
        let validation = if both_classes {
            (x[1], &yval)
        } else {
            (x[0], &ytr)
        };
        let probe = LinearProbe::fit(
            Task::Classification,
            x[0],
            &ytr,
            Some(validation),
            &probe_cfg,
        )?;
        columns.push(probe.predict(x[2])?);
    }
    for i in 0..test.labels.rows() {
        test_pred.extend(columns.iter().map(|c| c.get(i, 0)));
    }
    let pred = Matrix::new(test.labels.rows(), names.0.len(), test_pred)?;
    let diseases = evaluate(
        Task::Classification,
        &test.labels,
        &pred,
        names.0,
        0.5,
        &bootstrap,
    )?;
    let phenotypes = run(
        Task::Regression,
        [&train.phenotypes, &val.phenotypes, &test.phenotypes],
        names.1,
    )?;
    let pick = |t: &mmcl_eval::metrics::TargetMetrics, m: &str| -> Result<Estimate> {
        t.metrics
            .get(m)
            .copied()
            .ok_or_else(|| Error::Insufficient {
                stage: "probes",
                reason: format!("no {m} for {}", t.name),
            })
    };
    let mut per_target = Vec::new();
    for t in &phenotypes.targets {
        let r = pick(t, "r2")?;
        per_target.push((
            t.name.clone(),
            R2 {
                r2: r.value,
                ci_low: r.ci_low,
                ci_high: r.ci_high,
            },
        ));
    }
    let mut disease_rows = Vec::new();
    for t in &diseases.targets {
        let a = pick(t, "auroc")?;
        disease_rows.push((
            t.name.clone(),
            Auroc {
                auroc: a.value,
                ci_low: a.ci_low,
                ci_high: a.ci_high,
            },
        ));
    }
    Ok(EncoderResults {
        phenotypes: Phenotypes {
            mean_r2: pick(&phenotypes.average, "r2")?.value,
            per_target,
        },
        diseases: disease_rows,
    })
}

/// The ECG encoder configuration of `cfg` for evaluation (no drop-path, no head).
///
/// # Errors
/// An unknown preset or inconsistent sizes.
pub fn probe_vit_config(cfg: &ReproduceConfig) -> Result<EcgVitConfig> {
    let mut vit = cfg.mmcl.ecg.vit_config()?;
    vit.drop_path_rate = 0.0;
    vit.num_classes = 0;
    Ok(vit)
}

/// The splits' data and the names of the labels and phenotypes.
struct ProbeData {
    names: (Vec<String>, Vec<String>),
    splits: [SplitData; 3],
}

fn probe_data(cache: &Cache) -> Result<ProbeData> {
    let index = cache.index();
    Ok(ProbeData {
        names: (index.label_names.clone(), index.phenotype_names.clone()),
        splits: [
            split_data(cache, Split::Train)?,
            split_data(cache, Split::Val)?,
            split_data(cache, Split::Test)?,
        ],
    })
}

/// Embeds each split with `f` (ECG batches, or image batches when `images`) and probes.
fn probe_with(
    cfg: &ReproduceConfig,
    cache: &Arc<Cache>,
    data: &ProbeData,
    images: bool,
    device: &Device,
    f: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> Result<EncoderResults> {
    let x: Vec<Matrix<f32>> = data
        .splits
        .iter()
        .map(|d| {
            let loader = eval_loader(cfg, cache, &d.positions, images, device)?;
            embed_all(&loader, images, f)
        })
        .collect::<Result<_>>()?;
    let [a, b, c] = &data.splits;
    probe_encoder(
        cfg,
        (&data.names.0, &data.names.1),
        [&x[0], &x[1], &x[2]],
        [a, b, c],
    )
}

/// ECG-only linear probes of `model` on the cache's splits, as the pipeline's evaluation
/// does: pooled embeddings of the ECGs cropped from sample 0 (`cfg.mmcl.ecg.input_size`),
/// logistic probes per disease (AUROC) and ridge probes of the phenotypes (R²) fitted on
/// train, regularised on val, evaluated on test with bootstrap intervals.
///
/// # Errors
/// Empty splits, a disease with one class only in the training or test split, embedding
/// errors.
pub fn probe_ecg_encoder(
    cfg: &ReproduceConfig,
    cache: &Arc<Cache>,
    model: &EcgVit,
    device: &Device,
) -> Result<EncoderResults> {
    let data = probe_data(cache)?;
    let pooling = model.config().pooling();
    probe_with(cfg, cache, &data, false, device, &|ecg| {
        Ok(model.embed(ecg, pooling)?)
    })
}

fn evaluate_encoders(
    cfg: &ReproduceConfig,
    cache: &Arc<Cache>,
    runs: &Runs,
    device: &Device,
    progress: &mut dyn PipelineProgress,
) -> Result<Encoders> {
    let data = probe_data(cache)?;
    let vit = probe_vit_config(cfg)?;
    let pooling = vit.pooling();

    let ecg_encoders: [(&str, Option<PathBuf>); 4] = [
        ("random_init", None),
        ("mae", Some(ecg_encoder_path(&runs.mae))),
        ("mmcl", Some(ecg_encoder_path(&runs.mmcl))),
        ("mae_mmcl", Some(ecg_encoder_path(&runs.mae_mmcl))),
    ];
    let total = ecg_encoders.len() + 1;
    let mut results = Vec::new();
    for (k, (name, path)) in ecg_encoders.iter().enumerate() {
        progress.count("encoders probed", k, total);
        let model = match path {
            None => EcgVit::from_seed(&vit, cfg.evaluation.random_init_seed, device)?.0,
            Some(p) => EcgVit::from_checkpoint(&vit, p, pooling, device)?.0,
        };
        let r = probe_with(cfg, cache, &data, false, device, &|ecg| {
            Ok(model.embed(ecg, pooling)?)
        })?;
        progress.message(&format!(
            "{name}: mean phenotype R² {:.3}; AUROC {}",
            r.phenotypes.mean_r2,
            r.diseases
                .iter()
                .map(|(n, a)| format!("{n} {:.3}", a.auroc))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        results.push(r);
    }

    // The CMR encoder of the MAE + MMCL run on the un-augmented images: the upper bound.
    progress.count("encoders probed", 4, total);
    let model = MmclModel::from_checkpoint(&last_dir(&runs.mae_mmcl), device)?;
    let cmr = probe_with(cfg, cache, &data, true, device, &|img| {
        Ok(model.image_features(img, false)?)
    })?;
    progress.message(&format!(
        "cmr: mean phenotype R² {:.3}",
        cmr.phenotypes.mean_r2
    ));
    progress.count("encoders probed", total, total);
    let mut it = results.into_iter();
    let mut next = || {
        it.next().ok_or_else(|| Error::Insufficient {
            stage: "probes",
            reason: "an encoder's results are missing".into(),
        })
    };
    Ok(Encoders {
        random_init: next()?,
        mae: next()?,
        mmcl: next()?,
        mae_mmcl: next()?,
        cmr,
    })
}

/// `curves_<run>.png` per training run; returns `(caption, file name relative to the report)`.
fn training_curves(runs: &Runs, figures: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (name, dir, title) in [
        ("mae", &runs.mae, "MAE pre-training"),
        ("mmcl", &runs.mmcl, "MMCL from random initialisation"),
        ("mae_mmcl", &runs.mae_mmcl, "MMCL from the MAE encoder"),
    ] {
        let log = RunLog::read(&dir.join("metrics.jsonl"))?;
        let mut figure = TrainingCurvesFigure::new(&log);
        figure.title = format!("{title} ({})", dir.display());
        let file = format!("curves_{name}.png");
        figure.save(&figures.join(&file))?;
        out.push((title.to_string(), format!("figures/{file}")));
    }
    Ok(out)
}

/// One subject's localisation figures.
#[derive(Debug, Clone, PartialEq)]
pub struct ExplainedSubject {
    /// The participant.
    pub eid: u64,
    /// Global cosine similarity of its ECG and CMR embeddings / τ.
    pub similarity: f64,
    /// `ecg_importance.png`, `ecg_attention.png`, `cmr_importance.png`.
    pub files: [PathBuf; 3],
}

/// Localisation maps of the cache subjects at `positions` under `model` (ECG cropped from
/// sample 0, un-augmented image), drawn into `dir/<eid>/` as `mmcl explain` draws them.
///
/// # Errors
/// Loading, model and drawing errors.
pub fn explain_subjects(
    cfg: &ReproduceConfig,
    cache: &Arc<Cache>,
    model: &MmclModel,
    positions: &[usize],
    dir: &Path,
    device: &Device,
) -> Result<Vec<ExplainedSubject>> {
    if positions.is_empty() {
        return Ok(Vec::new());
    }
    let mut lc = LoaderConfig::ecg_eval(positions.len());
    lc.ecg_crop = Some(model.encoder_ecg().config().img_size[2]);
    lc.image = true;
    lc.image_augment = None;
    lc.image_size = Some(cfg.mmcl.imaging.img_size);
    let loader = Loader::new(cache.clone(), positions.to_vec(), lc, device.clone())?;
    let batch = loader.batch(0, 0)?;
    let (Some(ecg), Some(image)) = (batch.ecg, batch.image) else {
        return Err(Error::Insufficient {
            stage: "localisation",
            reason: "the loader returned no ECG or image".into(),
        });
    };
    let maps = localize(model, &ecg, &image, &cfg.evaluation.localization)?;
    let (_, _, leads, t) = ecg.dims4()?;
    let (_, c, h, w) = image.dims4()?;
    // The reference's figure shows the middle channel (mid-systole) of three.
    let channel = if c > 1 { 1 } else { 0 };
    let mut out = Vec::new();
    for (b, eid) in batch.eids.iter().enumerate() {
        let subject = maps.subject(b)?;
        let signal = ecg.get(b)?.flatten_all()?.to_device(&Device::Cpu)?; // [leads·T]
        let signal = Matrix::new(leads, t, signal.to_vec1::<f32>()?)?;
        let slice = image
            .get(b)?
            .get(channel)?
            .flatten_all()?
            .to_device(&Device::Cpu)?; // [H·W]
        let slice = Matrix::new(h, w, slice.to_vec1::<f32>()?)?;
        let sub = dir.join(eid.to_string());
        std::fs::create_dir_all(&sub).map_err(|e| Error::io(&sub, e))?;
        let files = subject.save_figures(&sub, &signal, cfg.data.ecg_sample_rate, &slice)?;
        out.push(ExplainedSubject {
            eid: *eid,
            similarity: subject.similarity,
            files: [
                files.ecg_importance,
                files.ecg_attention,
                files.cmr_importance,
            ],
        });
    }
    Ok(out)
}

/// Localisation maps of the first test subjects with the MAE + MMCL model; returns
/// `(eid, similarity / τ, [ecg_importance, ecg_attention, cmr_importance] relative paths)`.
fn localization_figures(
    cfg: &ReproduceConfig,
    cache: &Arc<Cache>,
    runs: &Runs,
    dir: &Path,
    device: &Device,
) -> Result<Vec<(u64, f64, [String; 3])>> {
    let n = cfg.evaluation.explain_subjects;
    if n == 0 {
        return Ok(Vec::new());
    }
    let vit = probe_vit_config(cfg)?;
    let model_file = last_dir(&runs.mae_mmcl).join(mmcl_train::checkpoint::MODEL_FILE);
    let (model, _) = MmclModel::from_reference_checkpoint(&model_file, &vit, None, device)?;
    let positions: Vec<usize> = cache
        .split_indices(Split::Test)
        .into_iter()
        .take(n)
        .collect();
    let explained = explain_subjects(cfg, cache, &model, &positions, dir, device)?;
    Ok(explained
        .into_iter()
        .map(|e| {
            let rel = |p: &PathBuf| {
                p.file_name()
                    .map(|f| format!("figures/localization/{}/{}", e.eid, f.to_string_lossy()))
                    .unwrap_or_default()
            };
            let files = [rel(&e.files[0]), rel(&e.files[1]), rel(&e.files[2])];
            (e.eid, e.similarity, files)
        })
        .collect())
}

/// The Markdown report.
fn report_markdown(
    cfg: &ReproduceConfig,
    results: &Results,
    timings: &[StageTiming],
    curves: &[(String, String)],
    maps: &[(u64, f64, [String; 3])],
) -> String {
    let mut md = String::new();
    md.push_str("# Reproduction: ECG–CMR multimodal contrastive learning\n\n");
    md.push_str(&format!(
        "Synthetic cohort of {} subjects ({} train / {} val / {} test fractions), ECG encoder \
         `{}` on {:?} with patches {:?} at {} Hz, image encoder `{:?}` at {} px. MAE: {} \
         epochs; MMCL: {} epochs, batch {}, τ {}. Linear probes on frozen embeddings of the \
         test split's ECGs (CMR: of its images), {} bootstrap resamples for the {:.0} % \
         intervals.\n\n",
        cfg.cohort.subjects,
        cfg.data.split.train,
        cfg.data.split.val,
        cfg.data.split.test,
        cfg.mmcl.ecg.model,
        cfg.mmcl.ecg.input_size,
        cfg.mmcl.ecg.patch_size,
        cfg.data.ecg_sample_rate,
        cfg.mmcl.imaging.model,
        cfg.mmcl.imaging.img_size,
        cfg.mae.max_epochs,
        cfg.mmcl.max_epochs,
        cfg.mmcl.batch_size,
        cfg.mmcl.temperature,
        cfg.evaluation.bootstrap,
        cfg.evaluation.confidence * 100.0,
    ));
    md.push_str(&format!("**Claim**: {}.\n\n", results.claim()));
    md.push_str("## Disease detection (AUROC) and phenotype regression (R²)\n\n");
    md.push_str(&results.markdown_tables());
    md.push_str("\n## Training curves\n\n");
    for (caption, file) in curves {
        md.push_str(&format!("![{caption}]({file})\n\n"));
    }
    if !maps.is_empty() {
        md.push_str(
            "## Localisation (MAE + MMCL model)\n\nECG patch importance = cosine similarity of \
             each projected patch token to the subject's CMR embedding / τ; CMR region \
             importance likewise against the ECG embedding; class-token attention of the last \
             ECG block.\n\n",
        );
        for (eid, sim, files) in maps {
            md.push_str(&format!(
                "### Subject {eid} (global similarity / τ = {sim:.2})\n\n![ECG importance]({})\n\n\
                 ![ECG attention]({})\n\n![CMR importance]({})\n\n",
                files[0], files[1], files[2]
            ));
        }
    }
    md.push_str("## Run time\n\n| stage | wall (s) | CPU (s) | |\n|---|---|---|---|\n");
    let (mut wall, mut cpu) = (0.0, 0.0);
    for t in timings {
        wall += t.wall_s;
        cpu += t.cpu_s.unwrap_or(0.0);
        md.push_str(&format!(
            "| {} | {:.1} | {} | {} |\n",
            t.name,
            t.wall_s,
            t.cpu_s.map_or("–".into(), |c| format!("{c:.1}")),
            if t.reused { "reused" } else { "" }
        ));
    }
    md.push_str(&format!("| total | {wall:.1} | {cpu:.1} | |\n\n"));
    md.push_str(
        "The full configuration is in `config.toml` and under `config` in `results.json`.\n",
    );
    md
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

/// A few lines for the terminal at the end of a run: where the outputs are, the tables, the
/// claim and the run time.
pub fn summary(outputs: &Outputs) -> String {
    let (wall, cpu) = outputs.timings.iter().fold((0.0, 0.0), |(w, c), t| {
        (w + t.wall_s, c + t.cpu_s.unwrap_or(0.0))
    });
    format!(
        "{}\n{}\n\nresults: {}\nreport:  {}\nfigures: {}\nrun time: {wall:.0} s wall, {cpu:.0} s CPU",
        outputs.results.markdown_tables(),
        outputs.results.claim(),
        outputs.layout.results().display(),
        outputs.layout.report().display(),
        outputs.layout.figures().display(),
    )
}

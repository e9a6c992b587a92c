//! Stage 6: ECG-only linear probes of the encoders (and the CMR encoder as the upper bound) on
//! the cache's splits, with bootstrap intervals.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use mmcl_data::cache::Cache;
use mmcl_data::tables::Split;
use mmcl_ecg::{EcgVit, EcgVitConfig};
use mmcl_eval::Matrix;
use mmcl_eval::metrics::{Bootstrap, Estimate, Evaluation, TargetMetrics, Task};
use mmcl_eval::paired::compare;
use mmcl_eval::probe::{ProbeConfig, ProbeOutcome, probe_and_evaluate};
use mmcl_train::MmclModel;
use mmcl_train::checkpoint::{checkpoints_dir, find_ecg_encoder, last_dir};

use super::features::hand_features;
use super::side_by_side::{self, run_pair};
use super::stages::Runs;
use crate::config::ReproduceConfig;
use crate::embeddings::{EmbedSettings, SplitTargets, embed_ecgs, embed_images};
use crate::progress::PipelineProgress;
use crate::results::comparisons::COMPARED_PAIRS;
use crate::results::{Auroc, EncoderComparison, EncoderResults, Encoders, Phenotypes, R2};
use crate::{Error, Result};

/// The settings of the evaluation loader of `cfg`: ECGs cropped from sample 0 to the model's
/// length, un-augmented images at the model's size.
fn embed_settings(cfg: &ReproduceConfig) -> EmbedSettings {
    EmbedSettings {
        batch_size: cfg.evaluation.batch_size,
        ecg_crop: cfg.mmcl.ecg.input_size[2],
        image_size: cfg.mmcl.imaging.img_size,
        seed: cfg.mmcl.seed,
    }
}

/// Each target's estimate of `metric` (`pick`ed from its metrics) as a row of the results,
/// built by `row` from the value and interval, in order.
fn rows<T>(
    e: &Evaluation,
    metric: &str,
    pick: impl Fn(&TargetMetrics, &str) -> Result<Estimate>,
    row: impl Fn(f64, Option<f64>, Option<f64>) -> T,
) -> Result<Vec<(String, T)>> {
    e.targets
        .iter()
        .map(|t| {
            let e = pick(t, metric)?;
            Ok((t.name.clone(), row(e.value, e.ci_low, e.ci_high)))
        })
        .collect()
}

/// An encoder's probe results and its test predictions (diseases, phenotypes), kept for the
/// paired comparisons.
pub(super) struct Probed {
    pub results: EncoderResults,
    pub predictions: [Matrix<f64>; 2],
}

/// Fits the disease and phenotype probes on train (regularisation chosen on val where the
/// split allows) and evaluates them on test.
fn probe_encoder(
    cfg: &ReproduceConfig,
    names: (&[String], &[String]),
    x: [&Matrix<f32>; 3],
    data: [&SplitTargets; 3],
) -> Result<Probed> {
    let e = &cfg.evaluation;
    let probe_cfg = ProbeConfig {
        cs: e.cs.clone(),
        alphas: e.alphas.clone(),
        ..ProbeConfig::default()
    };
    let bootstrap = bootstrap(cfg);
    let [train, val, test] = data;
    let run = |task: Task, y: [&Matrix<f64>; 3], names: &[String]| -> Result<ProbeOutcome> {
        let outcome = probe_and_evaluate(
            task,
            (x[0], y[0]),
            Some((x[1], y[1])),
            (x[2], y[2]),
            names,
            &probe_cfg,
            0.5,
            &bootstrap,
        )?;
        Ok(outcome)
    };
    let diseases = run(
        Task::Classification,
        [&train.labels, &val.labels, &test.labels],
        names.0,
    )?;
    let phenotypes = run(
        Task::Regression,
        [&train.phenotypes, &val.phenotypes, &test.phenotypes],
        names.1,
    )?;
    let pick = |t: &TargetMetrics, m: &str| -> Result<Estimate> {
        t.metrics
            .get(m)
            .copied()
            .ok_or_else(|| Error::Insufficient {
                stage: "probes",
                reason: format!(
                    "no {m} for {}: {}",
                    t.name,
                    t.undefined.as_deref().unwrap_or("not computed")
                ),
            })
    };
    let per_target = rows(&phenotypes.evaluation, "r2", pick, |r2, ci_low, ci_high| {
        R2 {
            r2,
            ci_low,
            ci_high,
        }
    })?;
    let disease_rows = rows(
        &diseases.evaluation,
        "auroc",
        pick,
        |auroc, ci_low, ci_high| Auroc {
            auroc,
            ci_low,
            ci_high,
        },
    )?;
    Ok(Probed {
        results: EncoderResults {
            phenotypes: Phenotypes {
                mean_r2: pick(&phenotypes.evaluation.average, "r2")?.value,
                per_target,
            },
            diseases: disease_rows,
        },
        predictions: [diseases.predictions, phenotypes.predictions],
    })
}

/// The bootstrap of every interval of the run: one seed, so the encoders' intervals and the
/// paired comparisons come from the same resamples.
fn bootstrap(cfg: &ReproduceConfig) -> Bootstrap {
    let e = &cfg.evaluation;
    Bootstrap {
        resamples: e.bootstrap,
        seed: e.bootstrap_seed,
        confidence: e.confidence,
    }
}

/// The paired comparisons of [`COMPARED_PAIRS`] on the test split.
fn compare_encoders(
    cfg: &ReproduceConfig,
    data: &ProbeData,
    probed: &[(&str, Probed)],
) -> Result<Vec<(String, EncoderComparison)>> {
    let test = &data.splits[2];
    let boot = bootstrap(cfg);
    let find = |key: &str| {
        probed
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, p)| &p.predictions)
            .ok_or_else(|| Error::Insufficient {
                stage: "probes",
                reason: format!("the predictions of encoder {key} are missing"),
            })
    };
    COMPARED_PAIRS
        .iter()
        .map(|&(key, a, b)| {
            let (pa, pb) = (find(a)?, find(b)?);
            // Prediction block `i` of the two encoders (0: diseases, 1: phenotypes) compared
            // on `metric`, with the run's bootstrap.
            let block = |i: usize, task: Task, truth, names: &[String], metric: &str| {
                compare(task, truth, (&pa[i], &pb[i]), names, metric, 0.5, &boot)
            };
            let diseases = block(
                0,
                Task::Classification,
                &test.labels,
                &data.names.0,
                "auroc",
            )?;
            let phenotypes = block(1, Task::Regression, &test.phenotypes, &data.names.1, "r2")?;
            Ok((
                key.to_string(),
                EncoderComparison::new(&phenotypes, &diseases),
            ))
        })
        .collect()
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
    splits: [SplitTargets; 3],
}

fn probe_data(cache: &Cache) -> Result<ProbeData> {
    let index = cache.index();
    Ok(ProbeData {
        names: (index.label_names.clone(), index.phenotype_names.clone()),
        splits: [
            SplitTargets::of(cache, Split::Train)?,
            SplitTargets::of(cache, Split::Val)?,
            SplitTargets::of(cache, Split::Test)?,
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
) -> Result<Probed> {
    let settings = embed_settings(cfg);
    let x: Vec<Matrix<f32>> = data
        .splits
        .iter()
        .map(|d| {
            if images {
                embed_images(cache, &d.positions, &settings, device, f)
            } else {
                embed_ecgs(cache, &d.positions, &settings, device, &mut |_| {}, f)
            }
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
/// Empty splits, a disease with one class only in the test split, embedding
/// errors.
pub fn probe_ecg_encoder(
    cfg: &ReproduceConfig,
    cache: &Arc<Cache>,
    model: &EcgVit,
    device: &Device,
) -> Result<EncoderResults> {
    let data = probe_data(cache)?;
    let pooling = model.config().pooling();
    let probed = probe_with(cfg, cache, &data, false, device, &|ecg| {
        Ok(model.embed(ecg, pooling)?)
    })?;
    Ok(probed.results)
}

/// What stage 6 finds: every encoder's results and the paired comparisons.
pub(super) struct Evaluated {
    pub encoders: Encoders,
    pub comparisons: Vec<(String, EncoderComparison)>,
}

/// One probe of stage 6.
enum Job {
    /// An ECG encoder, from a checkpoint or (`None`) randomly initialised.
    Ecg(&'static str, Option<PathBuf>),
    /// Hand-made features of the same ECGs.
    Features,
    /// The CMR encoder of the MAE + MMCL run.
    Cmr(PathBuf),
}

impl Job {
    fn name(&self) -> &'static str {
        match self {
            Job::Ecg(name, _) => name,
            Job::Features => "ecg_features",
            Job::Cmr(_) => "cmr",
        }
    }

    /// Embeds the splits with this job's encoder and probes them.
    fn probe(
        &self,
        cfg: &ReproduceConfig,
        cache: &Arc<Cache>,
        data: &ProbeData,
        device: &Device,
    ) -> Result<Probed> {
        match self {
            Job::Ecg(_, path) => {
                let vit = probe_vit_config(cfg)?;
                let pooling = vit.pooling();
                let model = match path {
                    None => EcgVit::from_seed(&vit, cfg.evaluation.random_init_seed, device)?.0,
                    Some(p) => EcgVit::from_checkpoint(&vit, p, pooling, device)?.0,
                };
                probe_with(cfg, cache, data, false, device, &|ecg| {
                    Ok(model.embed(ecg, pooling)?)
                })
            }
            // The ceiling a linear probe can reach from the same input.
            Job::Features => {
                let rate = cfg.data.ecg_sample_rate;
                probe_with(cfg, cache, data, false, device, &|ecg| {
                    hand_features(ecg, rate)
                })
            }
            // The upper bound, on the un-augmented images.
            Job::Cmr(checkpoint) => {
                let model = MmclModel::from_checkpoint(checkpoint, device)?;
                probe_with(cfg, cache, data, true, device, &|img| {
                    Ok(model.image_features(img, false)?)
                })
            }
        }
    }
}

/// Runs `jobs` in turn, reporting each encoder's headline figures.
fn probe_jobs(
    jobs: Vec<Job>,
    cfg: &ReproduceConfig,
    cache: &Arc<Cache>,
    data: &ProbeData,
    device: &Device,
    progress: &mut dyn PipelineProgress,
) -> Result<Vec<(&'static str, Probed)>> {
    jobs.into_iter()
        .map(|job| {
            let probed = job.probe(cfg, cache, data, device)?;
            let r = &probed.results;
            progress.message(&format!(
                "{}: mean phenotype R² {:.3}; AUROC {}",
                job.name(),
                r.phenotypes.mean_r2,
                r.diseases
                    .iter()
                    .map(|(n, a)| format!("{n} {:.3}", a.auroc))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            Ok((job.name(), probed))
        })
        .collect()
}

/// Stage 6: the probes of the four ECG encoders (random initialisation, MAE, MMCL, MAE + MMCL),
/// of hand-made features of the same ECGs (the ceiling) and of the CMR encoder of the
/// MAE + MMCL run, then the paired comparisons. With `concurrent_stages` on the CPU the six
/// probes run in two groups side by side, each on half of the threads.
pub(super) fn evaluate_encoders(
    cfg: &ReproduceConfig,
    cache: &Arc<Cache>,
    runs: &Runs,
    device: &Device,
    progress: &mut dyn PipelineProgress,
) -> Result<Evaluated> {
    let data = probe_data(cache)?;
    let encoder = |run: &Path| find_ecg_encoder(&probed_checkpoint(run));
    // Two groups of about the same cost: three ECG embeddings and a cheaper fourth each.
    let first = vec![
        Job::Ecg("random_init", None),
        Job::Ecg("mae", Some(encoder(&runs.mae)?)),
        Job::Features,
    ];
    let second = vec![
        Job::Ecg("mmcl", Some(encoder(&runs.mmcl)?)),
        Job::Ecg("mae_mmcl", Some(encoder(&runs.mae_mmcl)?)),
        Job::Cmr(probed_checkpoint(&runs.mae_mmcl)),
    ];
    let shares = side_by_side::shares(cfg, device);
    let (mut probed, more) = match shares {
        Some(threads) => {
            let data = &data;
            run_pair(
                (
                    Box::new(move |p| probe_jobs(first, cfg, cache, data, device, p)),
                    Box::new(move |p| probe_jobs(second, cfg, cache, data, device, p)),
                ),
                threads,
                ["", ""],
                progress,
            )?
        }
        _ => (
            probe_jobs(first, cfg, cache, &data, device, progress)?,
            probe_jobs(second, cfg, cache, &data, device, progress)?,
        ),
    };
    probed.extend(more);

    let comparisons = compare_encoders(cfg, &data, &probed)?;
    let mut take = |key: &str| {
        let at = probed.iter().position(|(k, _)| *k == key);
        at.map(|i| probed.swap_remove(i).1.results)
            .ok_or_else(|| Error::Insufficient {
                stage: "probes",
                reason: format!("the results of encoder {key} are missing"),
            })
    };
    Ok(Evaluated {
        encoders: Encoders {
            random_init: take("random_init")?,
            mae: take("mae")?,
            mmcl: take("mmcl")?,
            mae_mmcl: take("mae_mmcl")?,
            cmr: take("cmr")?,
            ecg_features: Some(take("ecg_features")?),
        },
        comparisons,
    })
}

/// The checkpoint of a run that the probes use: the epoch with the lowest validation loss
/// (`checkpoints/best`) when the run validated, else its last one. A contrastive run on a
/// small cohort starts to memorise its pairs before the schedule ends; the best epoch is what
/// a user would keep.
pub fn probed_checkpoint(run: &Path) -> PathBuf {
    let best = checkpoints_dir(run).join("best");
    if best.join("state.json").is_file() {
        best
    } else {
        last_dir(run)
    }
}

//! Stage 6: ECG-only linear probes of the encoders (and the CMR encoder as the upper bound) on
//! the cache's splits, with bootstrap intervals.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use mmcl_data::cache::Cache;
use mmcl_data::loader::{Loader, LoaderConfig};
use mmcl_data::tables::Split;
use mmcl_ecg::{EcgVit, EcgVitConfig};
use mmcl_eval::Matrix;
use mmcl_eval::metrics::{Bootstrap, Estimate, Evaluation, TargetMetrics, Task, evaluate};
use mmcl_eval::probe::{LinearProbe, ProbeConfig};
use mmcl_train::MmclModel;
use mmcl_train::checkpoint::{ecg_encoder_path, last_dir};

use super::stages::Runs;
use crate::config::ReproduceConfig;
use crate::progress::PipelineProgress;
use crate::results::{Auroc, EncoderResults, Encoders, Phenotypes, R2};
use crate::{Error, Result};

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
    let pick = |t: &TargetMetrics, m: &str| -> Result<Estimate> {
        t.metrics
            .get(m)
            .copied()
            .ok_or_else(|| Error::Insufficient {
                stage: "probes",
                reason: format!("no {m} for {}", t.name),
            })
    };
    let per_target = rows(&phenotypes, "r2", pick, |r2, ci_low, ci_high| R2 {
        r2,
        ci_low,
        ci_high,
    })?;
    let disease_rows = rows(&diseases, "auroc", pick, |auroc, ci_low, ci_high| Auroc {
        auroc,
        ci_low,
        ci_high,
    })?;
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

/// Stage 6: the probes of the four ECG encoders (random initialisation, MAE, MMCL, MAE + MMCL)
/// and of the CMR encoder of the MAE + MMCL run.
pub(super) fn evaluate_encoders(
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

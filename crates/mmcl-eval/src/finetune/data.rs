//! The data of a fine-tuning run (targets, loaders over the cache's splits), the objective,
//! and the evaluation of a split.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use mmcl_data::cache::Cache;
use mmcl_data::loader::{Batch, Loader, LoaderConfig};
use mmcl_data::tables::Split;
use mmcl_losses::classification::{masked_bce_with_logits, masked_mse, smoothed_cross_entropy};

use super::{FinetuneConfig, FinetuneModel};
use crate::metrics::{Bootstrap, Task};
use crate::{Error, Matrix, Result};

/// How the task's targets are learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Objective {
    /// One binary target, two logits, softmax cross-entropy.
    Softmax,
    /// Several binary targets, one logit each.
    MultiLabel,
    /// Standardised continuous targets.
    Regression,
}

/// The error of a loss as this crate's (its messages unchanged).
fn loss_error(e: mmcl_losses::Error) -> Error {
    match e {
        mmcl_losses::Error::Candle(e) => Error::Candle(e),
        mmcl_losses::Error::Model(e) => e.into(),
        mmcl_losses::Error::InvalidInput(why) | mmcl_losses::Error::InvalidArgument(why) => {
            Error::InvalidInput(why)
        }
    }
}

/// The prepared data of a run.
pub(super) struct Data {
    pub(super) cache: Arc<Cache>,
    pub(super) train: Arc<Loader>,
    pub(super) val: Arc<Loader>,
    pub(super) test: Arc<Loader>,
    pub(super) columns: Vec<usize>,
    pub(super) names: Vec<String>,
}

pub(super) fn open_data(cfg: &FinetuneConfig, device: &Device) -> Result<Data> {
    let cache = Arc::new(Cache::open(&cfg.cache)?);
    let index = cache.index();
    let available = match cfg.task {
        Task::Classification => &index.label_names,
        Task::Regression => &index.phenotype_names,
    };
    let what = match cfg.task {
        Task::Classification => "label",
        Task::Regression => "phenotype",
    };
    let names: Vec<String> = if cfg.targets.is_empty() {
        available.clone()
    } else {
        cfg.targets.clone()
    };
    if names.is_empty() {
        return Err(Error::format(
            &cfg.cache,
            format!("the cache has no {what} to predict"),
        ));
    }
    let mut columns = Vec::with_capacity(names.len());
    for name in &names {
        let j = available.iter().position(|a| a == name).ok_or_else(|| {
            Error::format(
                &cfg.cache,
                format!(
                    "no {what} named {name:?}; the cache has: {}",
                    available.join(", ")
                ),
            )
        })?;
        columns.push(j);
    }
    // Each target must be learnable and measurable in every split: checked now, not after
    // hours of training.
    for split in [Split::Train, Split::Val, Split::Test] {
        let rows = cache.split_indices(split);
        if rows.is_empty() {
            return Err(Error::format(
                &cfg.cache,
                format!("the {split:?} split is empty; fine-tuning needs train, val and test"),
            ));
        }
        for (name, &j) in names.iter().zip(&columns) {
            let subjects = rows.iter().map(|&i| &index.subjects[i]);
            let ok = match cfg.task {
                Task::Classification => {
                    let values: Vec<u8> = subjects
                        .filter_map(|s| s.labels.get(j).copied().flatten())
                        .collect();
                    values.contains(&0) && values.contains(&1)
                }
                Task::Regression => {
                    let values: Vec<f64> = subjects
                        .filter_map(|s| s.phenotypes.get(j).copied().flatten())
                        .collect();
                    values.len() >= 2 && values.iter().any(|&v| v != values[0])
                }
            };
            if !ok {
                return Err(Error::format(
                    &cfg.cache,
                    format!(
                        "{what} {name:?} cannot be {} on the {split:?} split: {}",
                        if split == Split::Train {
                            "learnt"
                        } else {
                            "evaluated"
                        },
                        match cfg.task {
                            Task::Classification => "it needs both classes",
                            Task::Regression => "it needs at least two different values",
                        }
                    ),
                ));
            }
        }
    }
    let t = cfg.encoder.img_size[2];
    let train_cfg = LoaderConfig {
        batch_size: cfg.batch_size,
        shuffle: true,
        drop_last: false,
        seed: cfg.seed,
        ecg: true,
        ecg_crop: Some(t),
        ecg_random_crop: cfg.random_crop,
        ecg_augment: cfg.augment.clone(),
        image: false,
        image_augment: None,
        image_size: None,
        originals: false,
        prefetch: 2,
        threads: cfg.loader_threads,
    };
    let eval_cfg = LoaderConfig {
        seed: cfg.seed,
        ecg_crop: Some(t),
        threads: cfg.loader_threads,
        ..LoaderConfig::ecg_eval(cfg.batch_size)
    };
    let loader = |split, lc: &LoaderConfig| -> Result<Arc<Loader>> {
        Ok(Arc::new(Loader::new(
            cache.clone(),
            cache.split_indices(split),
            lc.clone(),
            device.clone(),
        )?))
    };
    Ok(Data {
        train: loader(Split::Train, &train_cfg)?,
        val: loader(Split::Val, &eval_cfg)?,
        test: loader(Split::Test, &eval_cfg)?,
        cache: cache.clone(),
        columns,
        names,
    })
}

/// The run's targets of a batch: values and mask `[B, K]` (standardised for regression).
pub(super) fn batch_targets(
    batch: &Batch,
    task: Task,
    columns: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let (values, mask) = match task {
        Task::Classification => (&batch.labels, &batch.label_mask),
        Task::Regression => (&batch.phenotypes, &batch.phenotype_mask),
    };
    Ok((
        values.index_select(columns, 1)?,
        mask.index_select(columns, 1)?,
    ))
}

/// The objective's loss of a batch (masked targets left out).
pub(super) fn loss_of(
    objective: Objective,
    logits: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
    smoothing: f64,
) -> Result<Tensor> {
    match objective {
        Objective::Softmax => {
            smoothed_cross_entropy(logits, &targets.squeeze(1)?, &mask.squeeze(1)?, smoothing)
        }
        Objective::MultiLabel => masked_bce_with_logits(logits, targets, mask, smoothing),
        Objective::Regression => masked_mse(logits, targets, mask),
    }
    .map_err(loss_error)
}

/// Predictions `[B, K]` from logits: probabilities, or standardised values.
fn predictions_of(objective: Objective, logits: &Tensor) -> Result<Tensor> {
    Ok(match objective {
        Objective::Softmax => mmcl_nn::ops::softmax_last_dim(logits)?.narrow(1, 1, 1)?,
        Objective::MultiLabel => candle_nn::ops::sigmoid(logits)?,
        Objective::Regression => logits.clone(),
    })
}

/// Predictions and truth of a whole split.
pub(super) struct SplitResult {
    pub(super) loss: f64,
    pub(super) truth: Matrix<f64>,
    pub(super) predictions: Matrix<f64>,
    pub(super) eids: Vec<u64>,
}

/// Predictions, truth and mean loss of a whole split (evaluation mode).
pub(super) fn run_split(
    model: &FinetuneModel,
    loader: &Arc<Loader>,
    data: &Data,
    cfg: &FinetuneConfig,
    objective: Objective,
    columns: &Tensor,
) -> Result<SplitResult> {
    let k = data.columns.len();
    let index = data.cache.index();
    let standardiser = &index.phenotype_standardiser;
    let (mut truth, mut predictions, mut eids) = (Vec::new(), Vec::new(), Vec::new());
    let (mut loss_sum, mut loss_weight) = (0.0, 0.0);
    for batch in loader.epoch(0, 0) {
        let batch = batch?;
        let ecg = batch
            .ecg
            .as_ref()
            .ok_or_else(|| Error::InvalidInput("the loader returned no ECGs".into()))?;
        let logits = model.forward_t(ecg, false)?;
        let (targets, mask) = batch_targets(&batch, cfg.task, columns)?;
        let loss = loss_of(objective, &logits, &targets, &mask, cfg.smoothing)?;
        let present = mask.sum_all()?.to_scalar::<f32>()? as f64;
        loss_sum += loss.to_scalar::<f32>()? as f64 * present;
        loss_weight += present;
        let pred: Vec<f32> = predictions_of(objective, &logits)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1()?;
        for (row, &pos) in batch.indices.iter().enumerate() {
            let subject = &index.subjects[pos];
            eids.push(subject.eid);
            for (c, &j) in data.columns.iter().enumerate() {
                let p = pred[row * k + c] as f64;
                match cfg.task {
                    Task::Classification => {
                        truth.push(
                            subject
                                .labels
                                .get(j)
                                .copied()
                                .flatten()
                                .map_or(f64::NAN, f64::from),
                        );
                        predictions.push(p);
                    }
                    Task::Regression => {
                        truth.push(
                            subject
                                .phenotypes
                                .get(j)
                                .copied()
                                .flatten()
                                .unwrap_or(f64::NAN),
                        );
                        predictions.push(p * standardiser.std[j] + standardiser.mean[j]);
                    }
                }
            }
        }
    }
    let n = eids.len();
    Ok(SplitResult {
        loss: if loss_weight > 0.0 {
            loss_sum / loss_weight
        } else {
            f64::NAN
        },
        truth: Matrix::new(n, k, truth)?,
        predictions: Matrix::new(n, k, predictions)?,
        eids,
    })
}

/// The monitored metric of a split's result (without bootstrap).
pub(super) fn monitored_value(
    result: &SplitResult,
    cfg: &FinetuneConfig,
    names: &[String],
    monitor: &str,
) -> Result<f64> {
    if monitor == "loss" {
        return Ok(result.loss);
    }
    let eval = crate::metrics::evaluate(
        cfg.task,
        &result.truth,
        &result.predictions,
        names,
        cfg.threshold,
        &Bootstrap {
            resamples: 0,
            ..cfg.bootstrap
        },
    )?;
    // Reports leave metrics with units (MAE) out of the average over several targets; early
    // stopping still needs one number, the plain mean of the targets' values.
    let mean_over_targets = || {
        let values: Vec<f64> = eval
            .targets
            .iter()
            .filter_map(|t| t.metrics.get(monitor).map(|e| e.value))
            .collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    eval.average_of(monitor)
        .map(|e| e.value)
        .or_else(mean_over_targets)
        .ok_or_else(|| Error::InvalidInput(format!("the evaluation has no metric {monitor}")))
}

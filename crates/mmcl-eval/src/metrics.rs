//! Classification and regression metrics, per target and averaged, with bootstrapped confidence
//! intervals.
//!
//! Definitions follow scikit-learn / SciPy so that figures can be compared with published ones:
//!
//! - **AUROC**: probability that a random positive scores above a random negative, ties counting
//!   ½ (`roc_auc_score`); computed from one sort, O(n log n).
//! - **AUPRC**: average precision `Σₖ (Rₖ − Rₖ₋₁)·Pₖ` over the distinct score thresholds taken in
//!   decreasing order (`average_precision_score`; no interpolation).
//! - **F1**, **balanced accuracy**, **accuracy** at a threshold: a score `>= threshold` predicts
//!   the positive class; F1 is 0 when there is no positive prediction and no positive label
//!   (scikit-learn's `zero_division=0`).
//! - **R²** (`r2_score`), **Pearson r** (`scipy.stats.pearsonr`), **MAE**.
//!
//! Confidence intervals are percentile bootstraps: the test rows are resampled with replacement
//! (all targets together, so the average's interval keeps their correlation), every metric is
//! recomputed, and the interval is the `(1 − confidence)/2` and `(1 + confidence)/2` quantiles
//! (NumPy's default linear interpolation) of the resampled values. Resamples are seeded and
//! independent of the number of threads.
//!
//! **Resamples on which a metric is undefined are skipped**, as in the usual scikit-learn recipe
//! (where `roc_auc_score` raises on a resample with one class only): for classification a
//! resample whose present labels of a target have one class only does not count for that
//! target (nor for the average); for regression, a resample whose targets are constant. The
//! number of resamples used is reported next to each interval.

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Error, Matrix, Result};

pub use mmcl_core::metrics::{
    Confusion, DEFAULT_THRESHOLD, RocCurve, accuracy_at, auroc, average_precision,
    balanced_accuracy_at, f1_at, mae, pearson_r, r2, roc_curve,
};
use mmcl_core::metrics::{ranking_metrics, regression_metrics};

// ---------------------------------------------------------------------------------------------
// Multi-target evaluation with bootstrap confidence intervals.
// ---------------------------------------------------------------------------------------------

/// The kind of downstream task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Binary targets (one or several, multi-label), predictions are probabilities.
    Classification,
    /// Continuous targets.
    Regression,
}

impl Task {
    /// The metrics reported for this task, in display order.
    pub fn metric_names(self) -> &'static [&'static str] {
        match self {
            Task::Classification => &["auroc", "auprc", "f1", "balanced_accuracy", "accuracy"],
            Task::Regression => &["r2", "pearson_r", "mae"],
        }
    }

    /// Whether a larger value of `metric` is better (all but the error metrics).
    pub fn higher_is_better(metric: &str) -> bool {
        metric != "mae"
    }

    /// Whether `metric` has no unit, so that averaging it over targets means something: the
    /// mean absolute error is in each target's unit (mL, g, %), and the average over several
    /// targets leaves it out.
    pub fn is_unit_free(metric: &str) -> bool {
        metric != "mae"
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Task::Classification => "classification",
            Task::Regression => "regression",
        })
    }
}

impl std::str::FromStr for Task {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "classification" => Ok(Task::Classification),
            "regression" => Ok(Task::Regression),
            other => Err(Error::InvalidInput(format!(
                "unknown task {other:?}: use classification or regression"
            ))),
        }
    }
}

/// Settings of the percentile bootstrap; a configuration may give any of them (the rest keep
/// their defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Bootstrap {
    /// Number of resamples (0 disables the intervals).
    pub resamples: usize,
    /// Seed of the resampling stream.
    pub seed: u64,
    /// Coverage of the interval, e.g. 0.95.
    pub confidence: f64,
}

/// The most bootstrap resamples an evaluation draws (ten thousand give intervals stable to
/// the third digit; more is a typo, and each resample holds its metrics in memory).
pub const MAX_RESAMPLES: usize = 1_000_000;

impl Bootstrap {
    /// Checks the settings: a coverage strictly between 0 and 1 and at most
    /// [`MAX_RESAMPLES`] resamples.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the setting.
    pub fn check(&self) -> Result<()> {
        if !(self.confidence > 0.0 && self.confidence < 1.0) {
            return Err(Error::InvalidInput(format!(
                "bootstrap confidence must lie in (0, 1), got {}",
                self.confidence
            )));
        }
        if self.resamples > MAX_RESAMPLES {
            return Err(Error::InvalidInput(format!(
                "{} bootstrap resamples, more than the limit of {MAX_RESAMPLES}",
                self.resamples
            )));
        }
        Ok(())
    }
}

impl Default for Bootstrap {
    fn default() -> Self {
        Self {
            resamples: 1000,
            seed: 0,
            confidence: 0.95,
        }
    }
}

/// A metric value with its bootstrap confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The metric on the whole evaluation set.
    pub value: f64,
    /// Lower end of the interval (`None` without bootstrap).
    pub ci_low: Option<f64>,
    /// Upper end of the interval (`None` without bootstrap).
    pub ci_high: Option<f64>,
}

/// The metrics of one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetMetrics {
    /// The target's name.
    pub name: String,
    /// Evaluation rows where the target is present.
    pub n: usize,
    /// Positive labels among them (classification only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_positive: Option<usize>,
    /// Bootstrap resamples on which the metrics were defined (see the module docs).
    pub resamples_used: usize,
    /// Metric name → estimate, for every name of [`Task::metric_names`]; empty when the
    /// metrics are [`undefined`](Self::undefined).
    #[serde(flatten)]
    pub metrics: BTreeMap<String, Estimate>,
    /// Why no metric is reported for this target (a classification target with one class
    /// only in the evaluated rows, a target without predictions because its probe could not be
    /// fitted, constant regression targets): the evaluation of the other targets goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undefined: Option<String>,
}

/// The metrics of every target and their average, as written to `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// The task.
    pub task: Task,
    /// Threshold of the thresholded classification metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// How the intervals were computed.
    pub bootstrap: Bootstrap,
    /// One entry per target, in column order.
    pub targets: Vec<TargetMetrics>,
    /// Each metric averaged over the targets (with its own bootstrap interval).
    pub average: TargetMetrics,
}

impl Evaluation {
    /// The estimate of `metric` averaged over targets, if reported.
    pub fn average_of(&self, metric: &str) -> Option<Estimate> {
        self.average.metrics.get(metric).copied()
    }

    /// The targets whose metrics are undefined, with the reason.
    pub fn undefined_targets(&self) -> impl Iterator<Item = (&str, &str)> {
        self.targets
            .iter()
            .filter_map(|t| Some((t.name.as_str(), t.undefined.as_deref()?)))
    }
}

/// One target's rows and pre-sorted order, ready for repeated weighted evaluation.
pub(crate) struct PreparedTarget {
    rows: Vec<usize>,
    labels: Vec<bool>,
    order: Vec<usize>,
}

/// A target checked for evaluation: its present rows, its positives (classification), and
/// either what repeated evaluation needs or why its metrics are undefined.
pub(crate) struct CheckedTarget {
    n: usize,
    n_positive: Option<usize>,
    pub(crate) prepared: std::result::Result<PreparedTarget, String>,
}

pub(crate) fn prepare(
    task: Task,
    name: &str,
    truth: &[f64],
    pred: &[f64],
) -> Result<CheckedTarget> {
    let rows: Vec<usize> = (0..truth.len()).filter(|&i| !truth[i].is_nan()).collect();
    if rows.is_empty() {
        return Err(Error::InvalidInput(format!(
            "target {name}: every value is missing (NaN)"
        )));
    }
    if let Some(&i) = rows.iter().find(|&&i| !truth[i].is_finite()) {
        return Err(Error::InvalidInput(format!(
            "target {name}: row {i} is {}",
            truth[i]
        )));
    }
    let labels: Vec<bool> = truth.iter().map(|&v| v == 1.0).collect();
    let mut n_positive = None;
    if task == Task::Classification {
        if let Some(&i) = rows.iter().find(|&&i| truth[i] != 0.0 && truth[i] != 1.0) {
            return Err(Error::InvalidInput(format!(
                "target {name}: classification labels must be 0 or 1 (or NaN when missing), row {i} is {}",
                truth[i]
            )));
        }
        n_positive = Some(rows.iter().filter(|&&i| labels[i]).count());
    }
    let n = rows.len();
    let checked = |prepared| CheckedTarget {
        n,
        n_positive,
        prepared,
    };
    // A probe that could not be fitted predicts NaN for every row: nothing to evaluate.
    if rows.iter().all(|&i| pred[i].is_nan()) {
        return Ok(checked(Err(
            "no predictions (the probe of this target could not be fitted)".into(),
        )));
    }
    if let Some(&i) = rows.iter().find(|&&i| !pred[i].is_finite()) {
        return Err(Error::InvalidInput(format!(
            "target {name}: the prediction of row {i} is {}",
            pred[i]
        )));
    }
    if let Some(positives) = n_positive
        && (positives == 0 || positives == rows.len())
    {
        return Ok(checked(Err(format!(
            "one class only: all {} present labels are {}",
            rows.len(),
            if positives == 0 { 0 } else { 1 }
        ))));
    }
    let mut order = Vec::new();
    if task == Task::Classification {
        order = rows.clone();
        order.sort_by(|&a, &b| pred[b].total_cmp(&pred[a]));
    }
    Ok(checked(Ok(PreparedTarget {
        rows,
        labels,
        order,
    })))
}

/// All metrics of one target under row weights; `None` where undefined.
pub(crate) fn target_values(
    task: Task,
    target: &PreparedTarget,
    truth: &[f64],
    pred: &[f64],
    threshold: f64,
    weight: &(impl Fn(usize) -> f64 + Sync),
) -> Option<Vec<f64>> {
    match task {
        Task::Classification => {
            let (auc, ap) = ranking_metrics(&target.order, &target.labels, pred, weight)?;
            let mut c = Confusion::default();
            for &i in &target.rows {
                let w = weight(i);
                match (target.labels[i], pred[i] >= threshold) {
                    (true, true) => c.tp += w,
                    (true, false) => c.fn_ += w,
                    (false, true) => c.fp += w,
                    (false, false) => c.tn += w,
                }
            }
            Some(vec![auc, ap, c.f1(), c.balanced_accuracy()?, c.accuracy()?])
        }
        Task::Regression => {
            let (r2, r, mae) = regression_metrics(&target.rows, truth, pred, weight)?;
            Some(vec![r2?, r?, mae])
        }
    }
}

/// Linear-interpolated quantile of sorted values (NumPy's default method).
fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// The central `confidence` interval of bootstrap replicates (percentile method); `None`
/// bounds without replicates.
pub(crate) fn percentile_interval(
    mut values: Vec<f64>,
    confidence: f64,
) -> (Option<f64>, Option<f64>) {
    if values.is_empty() {
        return (None, None);
    }
    values.sort_by(f64::total_cmp);
    (
        Some(quantile_sorted(&values, (1.0 - confidence) / 2.0)),
        Some(quantile_sorted(&values, (1.0 + confidence) / 2.0)),
    )
}

/// Row counts of bootstrap resample `b`: how often each of `n` rows is drawn.
pub(crate) fn resample_counts(seed: u64, b: usize, n: usize) -> Vec<u32> {
    let mut rng =
        mmcl_nn::rng::SplitMix64::new(seed ^ (b as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut counts = vec![0u32; n];
    for _ in 0..n {
        // Lemire's multiply-shift maps 64 random bits to [0, n) without a division.
        let i = ((rng.next_u64() as u128 * n as u128) >> 64) as usize;
        counts[i] += 1;
    }
    counts
}

/// `each` evaluated on every bootstrap resample of `n` rows, in parallel and in resample
/// order: it gets the resample's row counts (how often each row was drawn).
pub(crate) fn over_resamples<T: Send>(
    bootstrap: &Bootstrap,
    n: usize,
    each: impl Fn(&[u32]) -> T + Sync,
) -> Vec<T> {
    (0..bootstrap.resamples)
        .into_par_iter()
        .map(|b| each(&resample_counts(bootstrap.seed, b, n)))
        .collect()
}

/// Evaluates predictions of one or several targets, with bootstrap intervals.
///
/// `truth` and `predictions` are `N × K`; a NaN in `truth` marks a missing value (that row does
/// not count for that target). For classification, `truth` holds 0/1 labels and `predictions`
/// probabilities (scores); `threshold` applies to the thresholded metrics. `names` names the
/// `K` targets (`target_0`, … when empty).
///
/// Errors when the shapes differ, a target has no present value, a present row's prediction
/// is not finite, or [`Bootstrap::check`] refuses the settings. A target whose metrics are undefined — one class only among its
/// present labels, NaN predictions for all its rows (a probe that could not be fitted),
/// constant regression targets or predictions — is reported with
/// [`TargetMetrics::undefined`] and no metrics, and the average is over the other targets.
///
/// ```
/// use mmcl_eval::{Matrix, metrics::{Bootstrap, Task, evaluate}};
/// let truth = Matrix::column_vector(vec![0.0, 1.0, 1.0, 0.0, 1.0, 0.0]);
/// let pred = Matrix::column_vector(vec![0.2, 0.9, 0.6, 0.4, 0.3, 0.1]);
/// let eval = evaluate(Task::Classification, &truth, &pred, &[], 0.5, &Bootstrap::default()).unwrap();
/// let auroc = eval.average_of("auroc").unwrap();
/// assert!((auroc.value - 8.0 / 9.0).abs() < 1e-12);
/// assert!(auroc.ci_low.unwrap() <= auroc.value && auroc.value <= auroc.ci_high.unwrap());
/// ```
pub fn evaluate(
    task: Task,
    truth: &Matrix<f64>,
    predictions: &Matrix<f64>,
    names: &[String],
    threshold: f64,
    bootstrap: &Bootstrap,
) -> Result<Evaluation> {
    if truth.rows() != predictions.rows() || truth.cols() != predictions.cols() {
        return Err(Error::InvalidInput(format!(
            "truth is {}×{} but predictions are {}×{}",
            truth.rows(),
            truth.cols(),
            predictions.rows(),
            predictions.cols()
        )));
    }
    let k = truth.cols();
    if k == 0 || truth.rows() == 0 {
        return Err(Error::InvalidInput(
            "nothing to evaluate (no rows or no targets)".into(),
        ));
    }
    if !names.is_empty() && names.len() != k {
        return Err(Error::InvalidInput(format!(
            "{} target names for {k} targets",
            names.len()
        )));
    }
    bootstrap.check()?;
    let names: Vec<String> = if names.is_empty() {
        (0..k).map(|j| format!("target_{j}")).collect()
    } else {
        names.to_vec()
    };
    let columns: Vec<(Vec<f64>, Vec<f64>)> = (0..k)
        .map(|j| (truth.column(j), predictions.column(j)))
        .collect();
    let mut checked = Vec::with_capacity(k);
    for (j, (t, p)) in columns.iter().enumerate() {
        checked.push(prepare(task, &names[j], t, p)?);
    }
    let metric_names = task.metric_names();
    // Each target's metrics on the whole set, or why they are undefined.
    let full: Vec<std::result::Result<Vec<f64>, String>> = checked
        .iter()
        .zip(&columns)
        .map(|(c, (t, p))| {
            let target = c.prepared.as_ref().map_err(Clone::clone)?;
            target_values(task, target, t, p, threshold, &|_| 1.0)
                .ok_or_else(|| "the targets or the predictions are constant".to_string())
        })
        .collect();
    let defined: Vec<usize> = (0..k).filter(|&j| full[j].is_ok()).collect();

    // Resample rows once per replicate and evaluate every defined target on it.
    let n = truth.rows();
    let replicates: Vec<Vec<Option<Vec<f64>>>> = over_resamples(bootstrap, n, |counts| {
        let weight = |i: usize| f64::from(counts[i]);
        checked
            .iter()
            .zip(&full)
            .zip(&columns)
            .map(|((c, value), (t, p))| match (&c.prepared, value) {
                (Ok(target), Ok(_)) => target_values(task, target, t, p, threshold, &weight),
                _ => None,
            })
            .collect()
    });

    let interval = |samples: &[Vec<f64>], m: usize| -> (Option<f64>, Option<f64>) {
        percentile_interval(samples.iter().map(|v| v[m]).collect(), bootstrap.confidence)
    };
    let summarise = |name: String,
                     n: usize,
                     n_positive: Option<usize>,
                     value: std::result::Result<&Vec<f64>, String>,
                     samples: Vec<Vec<f64>>| {
        let (metrics, undefined) = match value {
            Ok(value) => (
                metric_names
                    .iter()
                    .enumerate()
                    .map(|(m, metric)| {
                        let (ci_low, ci_high) = interval(&samples, m);
                        (
                            metric.to_string(),
                            Estimate {
                                value: value[m],
                                ci_low,
                                ci_high,
                            },
                        )
                    })
                    .collect(),
                None,
            ),
            Err(reason) => (BTreeMap::new(), Some(reason)),
        };
        TargetMetrics {
            name,
            n,
            n_positive,
            resamples_used: if undefined.is_some() {
                0
            } else {
                samples.len()
            },
            metrics,
            undefined,
        }
    };

    let targets = (0..k)
        .map(|j| {
            let samples = replicates.iter().filter_map(|r| r[j].clone()).collect();
            summarise(
                names[j].clone(),
                checked[j].n,
                checked[j].n_positive,
                full[j].as_ref().map_err(Clone::clone),
                samples,
            )
        })
        .collect();
    let mean_over_targets = |values: &[&Vec<f64>]| -> Vec<f64> {
        (0..metric_names.len())
            .map(|m| values.iter().map(|v| v[m]).sum::<f64>() / values.len() as f64)
            .collect()
    };
    // The average is over the defined targets; a replicate counts for it only when every one
    // of them is defined on it.
    let defined_values: Vec<&Vec<f64>> = full.iter().filter_map(|v| v.as_ref().ok()).collect();
    let average_value = mean_over_targets(&defined_values);
    let average_samples = replicates
        .iter()
        .filter_map(|r| {
            let values: Option<Vec<&Vec<f64>>> = defined.iter().map(|&j| r[j].as_ref()).collect();
            values.map(|v| mean_over_targets(&v))
        })
        .collect();
    let mut average = summarise(
        "average".into(),
        (0..n)
            .filter(|&i| (0..k).any(|j| !truth.get(i, j).is_nan()))
            .count(),
        None,
        if defined.is_empty() {
            Err("no target has defined metrics".to_string())
        } else {
            Ok(&average_value)
        },
        average_samples,
    );
    if k > 1 {
        average
            .metrics
            .retain(|metric, _| Task::is_unit_free(metric));
    }
    Ok(Evaluation {
        task,
        threshold: (task == Task::Classification).then_some(threshold),
        bootstrap: *bootstrap,
        targets,
        average,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile_sorted(&v, 0.5), 2.5);
        assert!((quantile_sorted(&v, 0.025) - 1.075).abs() < 1e-12);
    }

    #[test]
    fn resampling_draws_n_rows() {
        let c = resample_counts(7, 3, 50);
        assert_eq!(c.iter().sum::<u32>(), 50);
        assert_eq!(c, resample_counts(7, 3, 50));
        assert_ne!(c, resample_counts(7, 4, 50));
    }

    #[test]
    fn missing_targets_are_skipped_per_target() {
        let nan = f64::NAN;
        let truth = Matrix::new(4, 2, vec![1.0, 2.0, 3.0, nan, 5.0, 4.0, 7.0, 9.0]).unwrap();
        let pred = Matrix::new(4, 2, vec![1.5, 2.0, 2.5, 0.0, 5.5, 4.0, 7.5, 8.0]).unwrap();
        let boot = Bootstrap {
            resamples: 0,
            ..Bootstrap::default()
        };
        let e = evaluate(Task::Regression, &truth, &pred, &[], 0.5, &boot).unwrap();
        assert_eq!(e.targets[1].n, 3);
        let mae1 = e.targets[1].metrics["mae"].value;
        assert!((mae1 - 1.0 / 3.0).abs() < 1e-12);
        // MAE is in each target's unit: the average leaves it out.
        assert!(!e.average.metrics.contains_key("mae"));
        assert_eq!(e.average.metrics["r2"].ci_low, None);
    }
}

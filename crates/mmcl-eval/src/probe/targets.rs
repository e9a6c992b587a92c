//! Probes fitted target by target, so that one target that cannot be probed (a rare disease
//! without cases in a small split) is reported and skipped instead of stopping the others.

use serde::{Deserialize, Serialize};

use super::fit::{LinearProbe, ProbeConfig};
use crate::metrics::{Bootstrap, Evaluation, Task, evaluate};
use crate::{Error, Matrix, Result};

/// Where a target's regularisation was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// On the validation split.
    Validation,
    /// On a seeded hold-out of the training rows ([`ProbeConfig::holdout_fraction`]), the
    /// probe then refitted on all of them.
    Holdout,
    /// On the training rows themselves: the last resort when neither the validation split nor
    /// a hold-out holds both classes (a weak choice, stated in the target's note).
    Training,
}

/// The probe of one target, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetProbe {
    /// The target's name.
    pub name: String,
    /// Training rows where the target is present.
    pub n_train: usize,
    /// Positive training labels among them (classification).
    pub n_train_positive: Option<usize>,
    /// The fitted single-target probe; `None` when the target could not be fitted.
    pub probe: Option<LinearProbe>,
    /// Where the regularisation was chosen (`None` when not fitted).
    pub selection: Option<Selection>,
    /// What a reader of the results should know: why the target was not fitted, or why its
    /// regularisation was not chosen on the validation split.
    pub note: Option<String>,
}

/// One linear probe per target ([`LinearProbe`] with a single head each).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetProbes {
    /// Classification or regression.
    pub task: Task,
    /// One entry per target column, in order.
    pub targets: Vec<TargetProbe>,
}

/// Present values of column `t` of `y`, and how many are positive (classification).
fn present(y: &Matrix<f64>, t: usize) -> (usize, usize) {
    let column = y.column(t);
    let values: Vec<f64> = column.into_iter().filter(|v| !v.is_nan()).collect();
    let positives = values.iter().filter(|&&v| v == 1.0).count();
    (values.len(), positives)
}

/// Why column `t` of `y` cannot train or score a probe of `task`, if it cannot.
fn unusable(task: Task, y: &Matrix<f64>, t: usize, split: &str) -> Option<String> {
    let (n, positives) = present(y, t);
    match task {
        Task::Classification if positives == 0 || positives == n => Some(format!(
            "one class only in the {split} split ({positives} positive of {n} present labels)"
        )),
        Task::Regression if n < 2 => Some(format!(
            "{n} present value{} in the {split} split",
            if n == 1 { "" } else { "s" }
        )),
        Task::Regression => {
            let values: Vec<f64> = y.column(t).into_iter().filter(|v| !v.is_nan()).collect();
            values
                .iter()
                .all(|&v| v == values[0])
                .then(|| format!("the target is constant in the {split} split"))
        }
        Task::Classification => None,
    }
}

impl TargetProbes {
    /// Fits one probe per column of `train_y` (NaN where missing), choosing each one's
    /// regularisation on `validation` when its column there can score a probe (both classes,
    /// or two distinct values), else on a hold-out of the training rows, else on the training
    /// rows. A target whose training column cannot train a probe (one class, fewer than two
    /// values) is skipped with a note. `names` names the columns.
    ///
    /// ```
    /// use mmcl_eval::{Matrix, metrics::Task, probe::{ProbeConfig, TargetProbes}};
    /// let x: Vec<f32> = (0..40).flat_map(|i| [i as f32, ((i * 7) % 5) as f32]).collect();
    /// // A common class and a disease with no case in this training split.
    /// let y: Vec<f64> = (0..40).flat_map(|i| [(i >= 20) as u8 as f64, 0.0]).collect();
    /// let (x, y) = (Matrix::new(40, 2, x).unwrap(), Matrix::new(40, 2, y).unwrap());
    /// let names = ["common".to_string(), "rare".to_string()];
    /// let probes =
    ///     TargetProbes::fit(Task::Classification, &x, &y, None, &names, &ProbeConfig::default())
    ///         .unwrap();
    /// assert!(probes.targets[0].probe.is_some());
    /// assert!(probes.targets[1].note.as_deref().unwrap().contains("one class only"));
    /// let p = probes.predict(&x).unwrap();
    /// assert!(p.get(39, 0) > 0.5 && p.get(39, 1).is_nan());
    /// ```
    pub fn fit(
        task: Task,
        train_x: &Matrix<f32>,
        train_y: &Matrix<f64>,
        validation: Option<(&Matrix<f32>, &Matrix<f64>)>,
        names: &[String],
        config: &ProbeConfig,
    ) -> Result<Self> {
        if names.len() != train_y.cols() {
            return Err(Error::InvalidInput(format!(
                "{} target names for {} target columns",
                names.len(),
                train_y.cols()
            )));
        }
        if let Some((vx, vy)) = validation
            && (vy.cols() != train_y.cols() || vx.rows() != vy.rows())
        {
            return Err(Error::InvalidInput(format!(
                "validation set: {} embedding rows and {} target columns, training set {} \
                 target columns",
                vx.rows(),
                vy.cols(),
                train_y.cols()
            )));
        }
        let mut targets = Vec::with_capacity(names.len());
        for (t, name) in names.iter().enumerate() {
            let (n_train, positives) = present(train_y, t);
            let n_train_positive = (task == Task::Classification).then_some(positives);
            let skipped = |note: String| TargetProbe {
                name: name.clone(),
                n_train,
                n_train_positive,
                probe: None,
                selection: None,
                note: Some(note),
            };
            if let Some(why) = unusable(task, train_y, t, "training") {
                targets.push(skipped(format!("not fitted: {why}")));
                continue;
            }
            let ytr = Matrix::column_vector(train_y.column(t));
            let mut notes = Vec::new();
            let mut fitted = None;
            if let Some((vx, vy)) = validation {
                match unusable(task, vy, t, "validation") {
                    None => {
                        let yval = Matrix::column_vector(vy.column(t));
                        let probe =
                            LinearProbe::fit(task, train_x, &ytr, Some((vx, &yval)), config)
                                .map_err(|e| named(name, e))?;
                        fitted = Some((probe, Selection::Validation));
                    }
                    Some(why) => notes.push(why),
                }
            }
            if fitted.is_none() {
                // The hold-out may itself lack a class: then the training rows choose.
                match LinearProbe::fit(task, train_x, &ytr, None, config) {
                    Ok(probe) => fitted = Some((probe, Selection::Holdout)),
                    Err(e) => {
                        notes.push(format!("no usable hold-out ({e})"));
                        let probe =
                            LinearProbe::fit(task, train_x, &ytr, Some((train_x, &ytr)), config)
                                .map_err(|e| named(name, e))?;
                        fitted = Some((probe, Selection::Training));
                    }
                }
            }
            let (probe, selection) = fitted
                .ok_or_else(|| named(name, Error::InvalidInput("no probe was fitted".into())))?;
            let note = match selection {
                Selection::Validation => None,
                Selection::Holdout if validation.is_none() => None,
                Selection::Holdout => Some(format!(
                    "regularisation chosen on a hold-out of the training rows: {}",
                    notes.join("; ")
                )),
                Selection::Training => Some(format!(
                    "regularisation chosen on the training rows (weak): {}",
                    notes.join("; ")
                )),
            };
            targets.push(TargetProbe {
                name: name.clone(),
                n_train,
                n_train_positive,
                probe: Some(probe),
                selection: Some(selection),
                note,
            });
        }
        Ok(Self { task, targets })
    }

    /// Predictions for every row of `x`, one column per target: probabilities
    /// (classification) or values (regression); NaN in the columns of targets not fitted.
    pub fn predict(&self, x: &Matrix<f32>) -> Result<Matrix<f64>> {
        let k = self.targets.len();
        let mut out = vec![f64::NAN; x.rows() * k];
        for (t, target) in self.targets.iter().enumerate() {
            let Some(probe) = &target.probe else {
                continue;
            };
            let column = probe.predict(x)?;
            for i in 0..x.rows() {
                out[i * k + t] = column.get(i, 0);
            }
        }
        Matrix::new(x.rows(), k, out)
    }

    /// The targets with a note (not fitted, or regularised elsewhere than on the validation
    /// split), as `(name, note)`.
    pub fn notes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.targets
            .iter()
            .filter_map(|t| Some((t.name.as_str(), t.note.as_deref()?)))
    }
}

/// Probes fitted on a training split and evaluated on a test split.
#[derive(Debug, Clone)]
pub struct ProbeOutcome {
    /// The fitted probes (with their notes).
    pub probes: TargetProbes,
    /// Test predictions, `M × K` (NaN in the columns of targets not fitted).
    pub predictions: Matrix<f64>,
    /// Test metrics with bootstrap intervals; undefined for targets not fitted or with one
    /// class in the test split.
    pub evaluation: Evaluation,
}

/// The embeddings and targets of one split.
pub type Split<'a> = (&'a Matrix<f32>, &'a Matrix<f64>);

/// Fits [`TargetProbes`] on `train` (regularisation chosen on `validation` where it can be),
/// predicts `test` and evaluates the predictions ([`evaluate`]): the whole linear-probing
/// protocol in one call.
///
/// # Errors
/// Mismatched shapes, labels other than 0/1 (classification), a target missing in every row.
// The arguments are the protocol's whole specification; bundling them would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn probe_and_evaluate(
    task: Task,
    train: Split<'_>,
    validation: Option<Split<'_>>,
    test: Split<'_>,
    names: &[String],
    config: &ProbeConfig,
    threshold: f64,
    bootstrap: &Bootstrap,
) -> Result<ProbeOutcome> {
    let probes = TargetProbes::fit(task, train.0, train.1, validation, names, config)?;
    let predictions = probes.predict(test.0)?;
    let mut evaluation = evaluate(task, test.1, &predictions, names, threshold, bootstrap)?;
    // A target not fitted is undefined for the training split's reason, not the generic one.
    for (metrics, probe) in evaluation.targets.iter_mut().zip(&probes.targets) {
        if probe.probe.is_none() {
            metrics.undefined.clone_from(&probe.note);
        }
    }
    Ok(ProbeOutcome {
        probes,
        predictions,
        evaluation,
    })
}

fn named(name: &str, e: Error) -> Error {
    Error::InvalidInput(format!("target {name}: {e}"))
}

//! Classification and regression metrics of one target on plain slices, defined as
//! scikit-learn / SciPy define them so that figures can be compared with published ones:
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
//! They sit here, below training, because trainers monitor validation AUROC; multi-target
//! evaluation with bootstrapped confidence intervals is built on them in `mmcl-eval`.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The threshold on predicted probabilities used for F1, balanced accuracy and accuracy unless
/// another is given.
pub const DEFAULT_THRESHOLD: f64 = 0.5;

// ---------------------------------------------------------------------------------------------
// Single-target metrics on plain slices.
// ---------------------------------------------------------------------------------------------

fn check_pairs(what: &'static str, a: &[f64], b: &[f64]) -> Result<()> {
    if a.len() != b.len() {
        return Err(Error::InvalidInput(format!(
            "{what}: {} truth values but {} predictions",
            a.len(),
            b.len()
        )));
    }
    if a.is_empty() {
        return Err(Error::Undefined {
            metric: what,
            reason: "no samples".into(),
        });
    }
    if let Some(i) = a.iter().chain(b).position(|v| !v.is_finite()) {
        return Err(Error::InvalidInput(format!(
            "{what}: value #{} is not finite",
            i % a.len()
        )));
    }
    Ok(())
}

fn check_binary(what: &'static str, labels: &[f64], scores: &[f64]) -> Result<()> {
    check_pairs(what, labels, scores)?;
    if let Some(v) = labels.iter().find(|&&v| v != 0.0 && v != 1.0) {
        return Err(Error::InvalidInput(format!(
            "{what}: labels must be 0 or 1, found {v}"
        )));
    }
    Ok(())
}

/// Indices of `scores` sorted by decreasing score (ties keep their input order).
fn descending_order(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

/// AUROC and average precision from rows sorted by decreasing score, each row counted
/// `weight(i)` times. `None` when one class has zero weight.
pub fn ranking_metrics(
    order: &[usize],
    labels: &[bool],
    scores: &[f64],
    weight: impl Fn(usize) -> f64,
) -> Option<(f64, f64)> {
    let (mut pos_total, mut neg_total) = (0.0, 0.0);
    for &i in order {
        let w = weight(i);
        if labels[i] {
            pos_total += w;
        } else {
            neg_total += w;
        }
    }
    if pos_total == 0.0 || neg_total == 0.0 {
        return None;
    }
    // Walk the distinct thresholds from the highest score down; a group of tied scores enters
    // at once (ties count ½ for AUROC, one precision-recall point for AP).
    let (mut tp, mut fp) = (0.0, 0.0);
    let (mut pairs, mut ap) = (0.0, 0.0);
    let mut k = 0;
    while k < order.len() {
        let value = scores[order[k]];
        let (mut group_pos, mut group_neg) = (0.0, 0.0);
        while k < order.len() && scores[order[k]] == value {
            let i = order[k];
            if labels[i] {
                group_pos += weight(i);
            } else {
                group_neg += weight(i);
            }
            k += 1;
        }
        pairs += group_neg * (tp + 0.5 * group_pos);
        tp += group_pos;
        fp += group_neg;
        if group_pos > 0.0 {
            ap += group_pos / pos_total * (tp / (tp + fp));
        }
    }
    Some((pairs / (pos_total * neg_total), ap))
}

/// Area under the ROC curve of binary `labels` (0/1) given `scores`; ties count ½.
///
/// ```
/// let auc = mmcl_core::metrics::auroc(&[0.0, 0.0, 1.0, 1.0], &[0.1, 0.4, 0.35, 0.8]).unwrap();
/// assert_eq!(auc, 0.75);
/// ```
pub fn auroc(labels: &[f64], scores: &[f64]) -> Result<f64> {
    check_binary("AUROC", labels, scores)?;
    let flags: Vec<bool> = labels.iter().map(|&v| v == 1.0).collect();
    ranking_metrics(&descending_order(scores), &flags, scores, |_| 1.0)
        .map(|(auc, _)| auc)
        .ok_or_else(|| one_class("AUROC"))
}

/// Average precision (area under the precision-recall curve, scikit-learn's definition).
pub fn average_precision(labels: &[f64], scores: &[f64]) -> Result<f64> {
    check_binary("AUPRC", labels, scores)?;
    let flags: Vec<bool> = labels.iter().map(|&v| v == 1.0).collect();
    if !flags.iter().any(|&p| p) {
        return Err(Error::Undefined {
            metric: "AUPRC",
            reason: "no positive label".into(),
        });
    }
    // With negatives absent the precision is 1 everywhere; the shared walk needs both classes.
    if flags.iter().all(|&p| p) {
        return Ok(1.0);
    }
    ranking_metrics(&descending_order(scores), &flags, scores, |_| 1.0)
        .map(|(_, ap)| ap)
        .ok_or_else(|| one_class("AUPRC"))
}

fn one_class(metric: &'static str) -> Error {
    Error::Undefined {
        metric,
        reason: "the labels have one class only".into(),
    }
}

/// Points of a ROC curve, one per distinct threshold, starting at (0, 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RocCurve {
    /// False-positive rates, non-decreasing, from 0 to 1.
    pub fpr: Vec<f64>,
    /// True-positive rates, non-decreasing, from 0 to 1.
    pub tpr: Vec<f64>,
    /// The score threshold of each point (`+∞` for the first).
    pub thresholds: Vec<f64>,
}

/// The ROC curve of binary `labels` given `scores` (all distinct thresholds kept).
pub fn roc_curve(labels: &[f64], scores: &[f64]) -> Result<RocCurve> {
    check_binary("ROC curve", labels, scores)?;
    let positives = labels.iter().filter(|&&v| v == 1.0).count() as f64;
    let negatives = labels.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return Err(one_class("ROC curve"));
    }
    let order = descending_order(scores);
    let mut curve = RocCurve {
        fpr: vec![0.0],
        tpr: vec![0.0],
        thresholds: vec![f64::INFINITY],
    };
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut k = 0;
    while k < order.len() {
        let value = scores[order[k]];
        while k < order.len() && scores[order[k]] == value {
            if labels[order[k]] == 1.0 {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            k += 1;
        }
        curve.fpr.push(fp / negatives);
        curve.tpr.push(tp / positives);
        curve.thresholds.push(value);
    }
    Ok(curve)
}

/// Weighted confusion counts of a thresholded binary prediction.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Confusion {
    /// True positives.
    pub tp: f64,
    /// False positives.
    pub fp: f64,
    /// True negatives.
    pub tn: f64,
    /// False negatives.
    pub fn_: f64,
}

impl Confusion {
    /// Counts of `score >= threshold` against binary `labels`.
    pub fn at_threshold(labels: &[f64], scores: &[f64], threshold: f64) -> Result<Self> {
        check_binary("confusion matrix", labels, scores)?;
        Ok(Self::weighted(
            labels.iter().map(|&v| v == 1.0),
            scores,
            threshold,
            |_| 1.0,
        ))
    }

    fn weighted(
        labels: impl Iterator<Item = bool>,
        scores: &[f64],
        threshold: f64,
        weight: impl Fn(usize) -> f64,
    ) -> Self {
        let mut c = Confusion::default();
        for (i, (positive, &s)) in labels.zip(scores).enumerate() {
            let w = weight(i);
            match (positive, s >= threshold) {
                (true, true) => c.tp += w,
                (true, false) => c.fn_ += w,
                (false, true) => c.fp += w,
                (false, false) => c.tn += w,
            }
        }
        c
    }

    /// `2·TP / (2·TP + FP + FN)`, 0 when the denominator is 0.
    pub fn f1(&self) -> f64 {
        let denominator = 2.0 * self.tp + self.fp + self.fn_;
        if denominator == 0.0 {
            0.0
        } else {
            2.0 * self.tp / denominator
        }
    }

    /// Mean of sensitivity and specificity; `None` when a class is absent.
    pub fn balanced_accuracy(&self) -> Option<f64> {
        Some(0.5 * (self.sensitivity()? + self.specificity()?))
    }

    /// Fraction of correct predictions; `None` without samples.
    pub fn accuracy(&self) -> Option<f64> {
        let total = self.tp + self.fp + self.tn + self.fn_;
        (total > 0.0).then(|| (self.tp + self.tn) / total)
    }

    /// True-positive rate; `None` without positives.
    pub fn sensitivity(&self) -> Option<f64> {
        let p = self.tp + self.fn_;
        (p > 0.0).then(|| self.tp / p)
    }

    /// True-negative rate; `None` without negatives.
    pub fn specificity(&self) -> Option<f64> {
        let n = self.tn + self.fp;
        (n > 0.0).then(|| self.tn / n)
    }
}

/// F1 of `score >= threshold` against binary `labels`.
pub fn f1_at(labels: &[f64], scores: &[f64], threshold: f64) -> Result<f64> {
    Ok(Confusion::at_threshold(labels, scores, threshold)?.f1())
}

/// Balanced accuracy of `score >= threshold`; undefined with one class only.
pub fn balanced_accuracy_at(labels: &[f64], scores: &[f64], threshold: f64) -> Result<f64> {
    Confusion::at_threshold(labels, scores, threshold)?
        .balanced_accuracy()
        .ok_or_else(|| one_class("balanced accuracy"))
}

/// Accuracy of `score >= threshold`.
pub fn accuracy_at(labels: &[f64], scores: &[f64], threshold: f64) -> Result<f64> {
    Confusion::at_threshold(labels, scores, threshold)?
        .accuracy()
        .ok_or_else(|| Error::Undefined {
            metric: "accuracy",
            reason: "no samples".into(),
        })
}

/// Weighted regression statistics: (R², Pearson r, MAE); R² and r are `None` when the targets
/// (or, for r, the predictions) are constant.
pub fn regression_metrics(
    rows: &[usize],
    truth: &[f64],
    pred: &[f64],
    weight: impl Fn(usize) -> f64,
) -> Option<(Option<f64>, Option<f64>, f64)> {
    let (mut sw, mut sy, mut sp, mut abs) = (0.0, 0.0, 0.0, 0.0);
    for &i in rows {
        let w = weight(i);
        sw += w;
        sy += w * truth[i];
        sp += w * pred[i];
        abs += w * (truth[i] - pred[i]).abs();
    }
    if sw == 0.0 {
        return None;
    }
    let (my, mp) = (sy / sw, sp / sw);
    let (mut syy, mut spp, mut syp, mut sres) = (0.0, 0.0, 0.0, 0.0);
    for &i in rows {
        let w = weight(i);
        let (dy, dp) = (truth[i] - my, pred[i] - mp);
        syy += w * dy * dy;
        spp += w * dp * dp;
        syp += w * dy * dp;
        let r = truth[i] - pred[i];
        sres += w * r * r;
    }
    let r2 = (syy > 0.0).then(|| 1.0 - sres / syy);
    let r = (syy > 0.0 && spp > 0.0).then(|| (syp / (syy.sqrt() * spp.sqrt())).clamp(-1.0, 1.0));
    Some((r2, r, abs / sw))
}

fn constant_targets(metric: &'static str) -> Error {
    Error::Undefined {
        metric,
        reason: "the targets are constant".into(),
    }
}

/// Coefficient of determination `1 − SS_res / SS_tot`.
pub fn r2(truth: &[f64], pred: &[f64]) -> Result<f64> {
    check_pairs("R²", truth, pred)?;
    let rows: Vec<usize> = (0..truth.len()).collect();
    regression_metrics(&rows, truth, pred, |_| 1.0)
        .and_then(|(r2, _, _)| r2)
        .ok_or_else(|| constant_targets("R²"))
}

/// Pearson correlation coefficient.
pub fn pearson_r(truth: &[f64], pred: &[f64]) -> Result<f64> {
    check_pairs("Pearson r", truth, pred)?;
    let rows: Vec<usize> = (0..truth.len()).collect();
    regression_metrics(&rows, truth, pred, |_| 1.0)
        .and_then(|(_, r, _)| r)
        .ok_or_else(|| Error::Undefined {
            metric: "Pearson r",
            reason: "the targets or the predictions are constant".into(),
        })
}

/// Mean absolute error.
pub fn mae(truth: &[f64], pred: &[f64]) -> Result<f64> {
    check_pairs("MAE", truth, pred)?;
    Ok(truth
        .iter()
        .zip(pred)
        .map(|(t, p)| (t - p).abs())
        .sum::<f64>()
        / truth.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_counts_ties_as_half() {
        // One positive tied with one negative: pairs (p>n)=3 of 4 plus ½ for the tie.
        let labels = [1.0, 0.0, 1.0, 0.0];
        let scores = [0.5, 0.5, 0.9, 0.1];
        assert_eq!(auroc(&labels, &scores).unwrap(), 3.5 / 4.0);
    }

    #[test]
    fn average_precision_matches_hand_computation() {
        // Descending: 0.9(+) 0.8(-) 0.7(+) → AP = ½·1 + ½·(2/3).
        let ap = average_precision(&[1.0, 0.0, 1.0], &[0.9, 0.8, 0.7]).unwrap();
        assert!((ap - (0.5 + 1.0 / 3.0)).abs() < 1e-15);
    }

    #[test]
    fn one_class_is_undefined() {
        assert!(matches!(
            auroc(&[1.0, 1.0], &[0.2, 0.3]),
            Err(Error::Undefined { .. })
        ));
        assert!(auroc(&[0.0, 2.0], &[0.2, 0.3]).is_err());
        assert!(auroc(&[0.0, 1.0], &[0.2, f64::NAN]).is_err());
        assert!(auroc(&[0.0, 1.0], &[0.2]).is_err());
    }

    #[test]
    fn roc_curve_ends_at_one() {
        let c = roc_curve(&[0.0, 1.0, 1.0, 0.0], &[0.1, 0.8, 0.4, 0.4]).unwrap();
        assert_eq!(c.fpr, vec![0.0, 0.0, 0.5, 1.0]);
        assert_eq!(c.tpr, vec![0.0, 0.5, 1.0, 1.0]);
    }
}

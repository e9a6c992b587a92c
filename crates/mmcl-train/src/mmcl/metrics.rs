//! The metrics of a phase of the multimodal stage.

/// Metrics of one validation pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValMetrics {
    /// Mean CLIP loss (weighted by batch size).
    pub loss: f64,
    /// Retrieval top-1 within each batch, over all samples.
    pub top1: f64,
    /// Retrieval top-5 (batches of more than 5 samples).
    pub top5: Option<f64>,
    /// The classifier's mean loss.
    pub classifier_loss: Option<f64>,
    /// The classifier's AUROC over the validation set.
    pub classifier_auc: Option<f64>,
    /// The classifier's accuracy (argmax).
    pub classifier_accuracy: Option<f64>,
    /// Samples seen.
    pub samples: usize,
}

/// Running sums for a phase's metrics.
#[derive(Debug, Default)]
pub(super) struct Sums {
    pub(super) loss: f64,
    pub(super) top1: f64,
    top5: f64,
    top5_samples: usize,
    pub(super) samples: usize,
    pub(super) classifier_loss: f64,
    pub(super) classifier_batches: usize,
}

impl Sums {
    pub(super) fn add(&mut self, b: usize, loss: f64, top1: f64, top5: Option<f64>) {
        self.loss += loss * b as f64;
        self.top1 += top1 * b as f64;
        if let Some(t5) = top5 {
            self.top5 += t5 * b as f64;
            self.top5_samples += b;
        }
        self.samples += b;
    }

    pub(super) fn top5(&self) -> Option<f64> {
        (self.top5_samples > 0).then(|| self.top5 / self.top5_samples as f64)
    }
}

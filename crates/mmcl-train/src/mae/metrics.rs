//! The objective's values over a phase.

use mmcl_losses::mae::MaeMetrics;

/// Means of the objective's values over a phase (weighted by batch size).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MaeEpochMetrics {
    /// The means; an optional term is `None` when no batch produced it.
    pub means: MaeMetrics,
    /// Samples seen.
    pub samples: usize,
}

/// Running sums of [`MaeEpochMetrics`].
#[derive(Debug, Default)]
pub(super) struct MaeSums {
    total: f64,
    loss: f64,
    mse: f64,
    ncc: f64,
    optional: [(f64, usize); 3],
    samples: usize,
}

impl MaeSums {
    pub(super) fn add(&mut self, m: &MaeMetrics, n: usize) {
        let w = n as f64;
        self.total += m.total * w;
        self.loss += m.loss * w;
        self.mse += m.mse * w;
        self.ncc += m.ncc * w;
        // z_std is NaN for a single-sample batch: such batches do not count towards it.
        for (slot, v) in self
            .optional
            .iter_mut()
            .zip([m.loss_cos, m.cos_embed, m.z_std])
        {
            if let Some(v) = v.filter(|v| v.is_finite()) {
                slot.0 += v * w;
                slot.1 += n;
            }
        }
        self.samples += n;
    }

    pub(super) fn means(&self) -> MaeEpochMetrics {
        let n = self.samples.max(1) as f64;
        let opt = |(s, c): (f64, usize)| (c > 0).then(|| s / c as f64);
        MaeEpochMetrics {
            means: MaeMetrics {
                total: self.total / n,
                loss: self.loss / n,
                mse: self.mse / n,
                ncc: self.ncc / n,
                loss_cos: opt(self.optional[0]),
                cos_embed: opt(self.optional[1]),
                z_std: opt(self.optional[2]),
            },
            samples: self.samples,
        }
    }
}

//! The objective's values over a phase.

use mmcl_losses::mae::MaeMetrics;

/// Means of the objective's values over a phase (weighted by batch size).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MaeEpochMetrics {
    /// The back-propagated total (`loss + cos_weight · loss_cos`).
    pub total: f64,
    /// The reconstruction loss (the reference's `loss`).
    pub loss: f64,
    /// Its squared-error part.
    pub mse: f64,
    /// Normalised cross-correlation of reconstructions and inputs.
    pub ncc: f64,
    /// The SimSiam term.
    pub loss_cos: Option<f64>,
    /// Cosine similarity of the two views' embeddings.
    pub cos_embed: Option<f64>,
    /// Spread of the normalised embeddings (about 1 when not collapsed).
    pub z_std: Option<f64>,
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
            total: self.total / n,
            loss: self.loss / n,
            mse: self.mse / n,
            ncc: self.ncc / n,
            loss_cos: opt(self.optional[0]),
            cos_embed: opt(self.optional[1]),
            z_std: opt(self.optional[2]),
            samples: self.samples,
        }
    }
}

impl MaeEpochMetrics {
    /// The values as `(name, value)` pairs for the run log.
    pub(super) fn record(&self) -> Vec<(&'static str, f64)> {
        let mut out = vec![
            ("loss", self.loss),
            ("total", self.total),
            ("mse", self.mse),
            ("ncc", self.ncc),
        ];
        for (k, v) in [
            ("loss_cos", self.loss_cos),
            ("cos_embed", self.cos_embed),
            ("z_std", self.z_std),
        ] {
            if let Some(v) = v {
                out.push((k, v));
            }
        }
        out
    }
}

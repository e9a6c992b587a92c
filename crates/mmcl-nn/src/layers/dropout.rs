//! Dropout and drop-path (stochastic depth), active only in training.

use candle_core::{ModuleT, Result, Tensor};

use crate::rng::SharedRng;

/// Element-wise dropout (`nn.Dropout`): in training, zeroes each element with probability
/// `prob` and scales the rest by `1/(1−prob)`; the identity in evaluation.
#[derive(Debug, Clone)]
pub struct Dropout {
    prob: f64,
    rng: SharedRng,
}

impl Dropout {
    /// Dropout with probability `prob` (in [0, 1]) drawing from `rng`.
    pub fn new(prob: f64, rng: SharedRng) -> Self {
        Self {
            prob: prob.clamp(0.0, 1.0),
            rng,
        }
    }

    /// The drop probability.
    pub fn prob(&self) -> f64 {
        self.prob
    }

    /// Whether a pass in this mode draws a mask: in training, with a nonzero probability
    /// (otherwise the layer is the identity and the stream is not drawn from).
    fn draws(&self, train: bool) -> bool {
        train && self.prob != 0.0
    }

    /// `n` keep factors from the stream: 0 with probability `prob`, else `1/(1−prob)`.
    fn keep_mask(&self, n: usize) -> Vec<f32> {
        self.rng.keep_mask(n, 1.0 - self.prob)
    }
}

impl ModuleT for Dropout {
    /// # Shapes
    /// Any shape, unchanged.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !self.draws(train) {
            return Ok(x.clone());
        }
        let mask = self.keep_mask(x.elem_count());
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x * mask
    }
}

/// Drop-path (timm's `DropPath`): in training, drops the whole residual branch of each sample
/// with probability `prob` and scales kept ones by `1/(1−prob)`; the identity in evaluation.
///
/// A [`Dropout`] whose mask has one factor per sample: the probability, its clamping and the
/// stream live there.
#[derive(Debug, Clone)]
pub struct DropPath(Dropout);

impl DropPath {
    /// Drop-path with probability `prob` (in [0, 1]) drawing from `rng`.
    pub fn new(prob: f64, rng: SharedRng) -> Self {
        Self(Dropout::new(prob, rng))
    }

    /// The drop probability.
    pub fn prob(&self) -> f64 {
        self.0.prob()
    }

    /// The per-sample factors of the two residual branches of a block, drawn as two
    /// consecutive calls of [`ModuleT::forward_t`] on a batch of `batch` would draw them
    /// (attention branch first); `None` when nothing is dropped (evaluation or `prob` 0).
    pub fn branch_scales(&self, batch: usize, train: bool) -> Option<crate::ops::BranchScales> {
        if !self.0.draws(train) {
            return None;
        }
        // Fields are evaluated in the order written: the attention branch draws first.
        Some(crate::ops::BranchScales {
            attn: self.0.keep_mask(batch),
            mlp: self.0.keep_mask(batch),
        })
    }
}

impl ModuleT for DropPath {
    /// # Shapes
    /// `[B, ..]`, unchanged; one draw per sample.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !self.0.draws(train) {
            return Ok(x.clone());
        }
        let b = x.dim(0)?;
        let mut shape = vec![1usize; x.rank()];
        shape[0] = b;
        let mask = self.0.keep_mask(b);
        let mask = Tensor::from_vec(mask, shape, x.device())?.to_dtype(x.dtype())?; // [B, 1, ..]
        x.broadcast_mul(&mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn only_active_in_training_and_seeded() -> Result<()> {
        let x = Tensor::ones((8, 3, 5), DType::F32, &Device::Cpu)?;
        let d = DropPath::new(0.5, SharedRng::new(1));
        assert_eq!(
            d.forward_t(&x, false)?.to_vec3::<f32>()?,
            x.to_vec3::<f32>()?
        );
        let y = d.forward_t(&x, true)?.to_vec3::<f32>()?;
        for sample in &y {
            let v = sample[0][0];
            assert!(v == 0.0 || v == 2.0);
            assert!(
                sample.iter().flatten().all(|&u| u == v),
                "one draw per sample"
            );
        }
        let again = DropPath::new(0.5, SharedRng::new(1)).forward_t(&x, true)?;
        assert_eq!(again.to_vec3::<f32>()?, y);

        let drop = Dropout::new(0.25, SharedRng::new(2));
        assert_eq!(
            drop.forward_t(&x, false)?.to_vec3::<f32>()?,
            x.to_vec3::<f32>()?
        );
        let z: Vec<f32> = drop.forward_t(&x, true)?.flatten_all()?.to_vec1()?;
        assert!(z.iter().all(|&u| u == 0.0 || (u - 4.0 / 3.0).abs() < 1e-6));
        assert!(z.contains(&0.0) && z.iter().any(|&u| u > 0.0));
        Ok(())
    }
}

//! `nn.LayerNorm`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::init;

/// LayerNorm over the last dimension with affine `weight` (init 1) and `bias` (init 0), and a
/// configurable epsilon (the ViTs use 1e-6), differentiable in all its inputs.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// A LayerNorm over `dim` features.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(dim, "weight", init::ONES)?,
            bias: vb.get_with_hints(dim, "bias", init::ZEROS)?,
            eps,
        })
    }

    /// The scale, `[D]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The shift, `[D]`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// The epsilon added to the variance.
    pub fn eps(&self) -> f64 {
        self.eps
    }
}

impl Module for LayerNorm {
    /// # Shapes
    /// `[.., D]` → `[.., D]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

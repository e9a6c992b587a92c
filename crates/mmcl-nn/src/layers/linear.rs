//! `nn.Linear`.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::init::{self, WeightInit};

/// A linear layer `x·Wᵀ + b` with PyTorch's names and layout (`weight` `[out, in]`, `bias`
/// `[out]`).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// A layer whose weight and bias are initialised by the given hints.
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        bias: Option<Init>,
        weight_init: Init,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", weight_init)?;
        let bias = match bias {
            Some(init) => Some(vb.get_with_hints(out_dim, "bias", init)?),
            None => None,
        };
        Ok(Self { weight, bias })
    }

    /// A layer initialised as the reference's `_init_weights` does: the weight by `weight_init`'s
    /// scheme for its shape, the bias (with `bias`) at zero.
    pub fn with_weight_init(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        weight_init: WeightInit,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = weight_init.linear_weight(in_dim, out_dim);
        Self::new(in_dim, out_dim, bias.then_some(init::ZEROS), weight, vb)
    }

    /// A layer with PyTorch's default initialisation of `nn.Linear` (uniform in
    /// `±1/√in` for the weight and the bias).
    pub fn torch_default(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let b = bias.then(|| init::torch_default_bias(in_dim));
        Self::new(in_dim, out_dim, b, init::torch_default_weight(in_dim), vb)
    }

    /// A layer from existing tensors.
    pub fn from_weights(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// The weight, `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, `[out]`.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// `x·Wᵀ` without the bias (for fusing the bias into what follows).
    ///
    /// # Shapes
    /// `[.., in]` → `[.., out]`.
    pub fn forward_no_bias(&self, x: &Tensor) -> Result<Tensor> {
        crate::ops::linear(x, &self.weight, None)
    }
}

impl Module for Linear {
    /// # Shapes
    /// `[.., in]` → `[.., out]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::ops::linear(x, &self.weight, self.bias.as_ref())
    }
}

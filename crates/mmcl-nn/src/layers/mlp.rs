//! timm's `Mlp`: fc1 → exact GELU → dropout → fc2 → dropout.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;

use super::{Dropout, Linear};
use crate::init::WeightInit;
use crate::rng::SharedRng;

/// The transformer MLP with keys `fc1.*`, `fc2.*`.
#[derive(Debug, Clone)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
    drop: Dropout,
}

impl Mlp {
    /// `dim → hidden → dim`, with dropout `drop` after the activation and after `fc2`.
    pub fn new(
        dim: usize,
        hidden: usize,
        drop: f64,
        weight_init: WeightInit,
        rng: SharedRng,
        vb: VarBuilder,
    ) -> Result<Self> {
        let fc1 = Linear::with_weight_init(dim, hidden, true, weight_init, vb.pp("fc1"))?;
        let fc2 = Linear::with_weight_init(hidden, dim, true, weight_init, vb.pp("fc2"))?;
        Ok(Self {
            fc1,
            fc2,
            drop: Dropout::new(drop, rng),
        })
    }

    /// The first layer.
    pub fn fc1(&self) -> &Linear {
        &self.fc1
    }

    /// The second layer.
    pub fn fc2(&self) -> &Linear {
        &self.fc2
    }

    /// The dropout probability after the activation and after `fc2`.
    pub fn dropout_prob(&self) -> f64 {
        self.drop.prob()
    }

    /// The hidden activation `gelu(fc1(x))`, before dropout.
    ///
    /// # Shapes
    /// `[.., D]` → `[.., H]`.
    pub fn hidden(&self, x: &Tensor) -> Result<Tensor> {
        self.hidden_t(x, true)
    }

    /// [`Mlp::hidden`]; with `train` false the activation is taken inside `fc1`'s product
    /// ([`crate::ops::linear_gelu_inference`]: the same values, one pass over the hidden layer
    /// fewer, nothing kept for a backward pass).
    ///
    /// # Shapes
    /// `[.., D]` → `[.., H]`.
    pub fn hidden_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self.fc1.bias() {
            Some(b) if !train => crate::ops::linear_gelu_inference(x, self.fc1.weight(), b),
            // The bias add is fused into the activation (one pass over the wide hidden layer).
            Some(b) => crate::ops::bias_gelu(&self.fc1.forward_no_bias(x)?, b),
            None => crate::ops::gelu_erf(&self.fc1.forward(x)?),
        }
    }
}

impl ModuleT for Mlp {
    /// # Shapes
    /// `[.., D]` → `[.., D]`.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.drop.forward_t(&self.hidden_t(x, train)?, train)?;
        let y = self.fc2.forward(&h)?; // [.., D]
        self.drop.forward_t(&y, train)
    }
}

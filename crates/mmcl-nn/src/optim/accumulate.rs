//! Gradient accumulation over micro-batches and gradient-norm clipping.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::Result;

/// Sums gradients over several micro-batches (gradient accumulation).
#[derive(Debug, Default)]
pub struct GradAccumulator {
    sums: HashMap<candle_core::TensorId, Tensor>,
    micro_batches: usize,
}

impl GradAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the gradients of `vars` from one micro-batch.
    pub fn add(&mut self, vars: &[(String, Var)], grads: &GradStore) -> Result<()> {
        for (_, var) in vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                let g = g.detach();
                let id = var.as_tensor().id();
                let sum = match self.sums.remove(&id) {
                    Some(s) => (s + g)?,
                    None => g,
                };
                self.sums.insert(id, sum);
            }
        }
        self.micro_batches += 1;
        Ok(())
    }

    /// Number of micro-batches added.
    pub fn micro_batches(&self) -> usize {
        self.micro_batches
    }

    /// The accumulated gradients, each divided by `divisor` (the number of micro-batches when
    /// every micro-batch loss was a mean), as a `GradStore` for [`Adam::step`](super::Adam::step); resets.
    pub fn take(&mut self, vars: &[(String, Var)], divisor: f64) -> Result<GradStore> {
        let mut store = GradStore::default();
        for (_, var) in vars {
            if let Some(sum) = self.sums.remove(&var.as_tensor().id()) {
                store.insert(var.as_tensor(), sum.affine(1.0 / divisor, 0.0)?);
            }
        }
        self.sums.clear();
        self.micro_batches = 0;
        Ok(store)
    }
}

/// The global L2 norm of the gradients of `vars`.
pub fn grad_norm(vars: &[(String, Var)], grads: &GradStore) -> Result<f64> {
    let mut total = 0f64;
    for (_, var) in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            total += g
                .to_dtype(DType::F32)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f32>()? as f64;
        }
    }
    Ok(total.sqrt())
}

/// Scales the gradients so their global norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_` (coefficient `max_norm / (norm + 1e-6)`, applied only when
/// below 1). Returns the norm before clipping.
pub fn clip_grad_norm(vars: &[(String, Var)], grads: &mut GradStore, max_norm: f64) -> Result<f64> {
    let norm = grad_norm(vars, grads)?;
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for (_, var) in vars {
            if let Some(g) = grads.remove(var.as_tensor()) {
                grads.insert(var.as_tensor(), g.affine(coef, 0.0)?);
            }
        }
    }
    Ok(norm)
}

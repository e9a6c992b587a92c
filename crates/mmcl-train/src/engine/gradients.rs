//! What the optimisation steps share about their gradients: accumulation over micro-batches,
//! and the optimiser step on the group's mean gradient. One place, so that the MAE and
//! multimodal steps accumulate, reduce and clip alike.

use candle_core::Var;
use candle_core::backprop::GradStore;
use mmcl_nn::distributed::GradSync;
use mmcl_nn::optim::{Adam, GradAccumulator, clip_grad_norm};

use crate::Result;

/// The gradients to step with after one more micro-batch's `grads` of `vars`: `grads` itself
/// when every batch steps (`every` 1), else the mean of the last `every` micro-batches once
/// `accumulator` holds them all, and `None` while it fills.
pub(crate) fn accumulate(
    accumulator: &mut GradAccumulator,
    vars: &[(String, Var)],
    grads: GradStore,
    every: usize,
) -> Result<Option<GradStore>> {
    if every == 1 {
        return Ok(Some(grads));
    }
    accumulator.add(vars, &grads)?;
    // The sums hold them now; freed before the optimiser step allocates.
    drop(grads);
    if accumulator.micro_batches() < every {
        return Ok(None);
    }
    Ok(Some(accumulator.take(vars, every as f64)?))
}

/// Steps `optimizer` at rate `lr` with `grads` of `vars` averaged over the group `comm`, then
/// clipped to the global norm `clip` when given (after the reduction, so that every replica
/// clips alike). Returns the norm before clipping, when clipping.
pub(crate) fn step_on_group_mean(
    comm: &dyn GradSync,
    optimizer: &mut Adam,
    vars: &[(String, Var)],
    mut grads: GradStore,
    clip: Option<f64>,
    lr: f64,
) -> Result<Option<f64>> {
    comm.all_reduce_mean(vars, &mut grads)?;
    let norm = match clip {
        Some(max) => Some(clip_grad_norm(vars, &mut grads, max)?),
        None => None,
    };
    optimizer.step(&grads, lr)?;
    Ok(norm)
}

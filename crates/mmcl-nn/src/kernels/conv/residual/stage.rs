//! Consecutive residual blocks (a ResNet stage) as one differentiable operation.
//!
//! One fused block per autograd node still leaves candle's bookkeeping between blocks: for the
//! gradient of every block's input its backward pass zero-fills a buffer and adds the block's
//! gradient into it, on the calling thread while the other cores wait (the four stages of
//! ResNet50 at 210² pass about 60 M such values per step). Chained inside one node, each
//! block's input gradient goes straight to the block before it. The arithmetic is the fused
//! blocks', in the same order.

use std::sync::{Arc, OnceLock};

use candle_core::{Shape, Tensor};

use super::{
    ConvBnUnit, NodeValues, Plan, ResidualOp, Saved, node_gradients, packed_parameters,
    residual_block, update_running,
};
use crate::Result;
use crate::kernels::fast_path;
use crate::kernels::op::{CpuKernel, Gradients, Input, Op};

/// The units of one residual block, as [`residual_block`] takes them.
#[derive(Debug, Clone)]
pub struct BlockUnits<'a> {
    /// The conv-BN units in order, each but the last followed by ReLU.
    pub units: Vec<ConvBnUnit<'a>>,
    /// The unit that downsamples the identity, if any.
    pub downsample: Option<ConvBnUnit<'a>>,
}

/// `blocks` applied in order, each as [`residual_block`] applies it: a ResNet stage.
///
/// In training on the CPU in `f32`, where every block takes [`residual_block`]'s fused path,
/// the stage is one autograd node (see the module documentation); otherwise the blocks run one
/// by one. Values, gradients and running statistics are the same either way.
///
/// # Errors
/// As [`residual_block`].
///
/// # Shapes
/// `x`: `[N, C, H, W]` → the last block's output.
pub fn residual_stage(x: &Tensor, blocks: &[BlockUnits], train: bool) -> Result<Tensor> {
    if train
        && blocks.len() > 1
        && fast_path(x)
        && let Some(plans) = stage_plans(x, blocks)?
    {
        return run_stage(x, blocks, plans);
    }
    let mut y = x.clone();
    for block in blocks {
        y = residual_block(&y, &block.units, block.downsample.as_ref(), train)?;
    }
    Ok(y)
}

/// Every block's fused plan, each on the previous one's output, or `None` if one block would
/// not take the fused path.
pub(super) fn stage_plans(x: &Tensor, blocks: &[BlockUnits]) -> Result<Option<Vec<Plan>>> {
    let Ok(&(mut dims)) = <&[usize; 4]>::try_from(x.dims()) else {
        return Ok(None);
    };
    let mut plans = Vec::with_capacity(blocks.len());
    for block in blocks {
        let Some(plan) = Plan::for_input(dims, &block.units, block.downsample.as_ref())? else {
            return Ok(None);
        };
        dims = plan.op.output_dims()?;
        plans.push(plan);
    }
    Ok(Some(plans))
}

/// Runs the stage as one node and updates every batch norm's running statistics.
fn run_stage(x: &Tensor, blocks: &[BlockUnits], plans: Vec<Plan>) -> Result<Tensor> {
    let packed = packed_parameters(plans.iter().flat_map(|p| &p.params))?;
    let mut offsets = vec![0];
    let mut ops = Vec::with_capacity(plans.len());
    for plan in plans {
        offsets.push(offsets[offsets.len() - 1] + plan.op.packed_len());
        ops.push(plan.op);
    }
    let saved: Vec<Arc<OnceLock<Saved>>> = ops.iter().map(|op| op.saved.clone()).collect();
    let stage = StageOp {
        blocks: ops,
        offsets,
        outputs: OnceLock::new(),
    };
    let y = x.contiguous()?.apply_op2(&packed, Op(stage))?;
    for (block, saved) in blocks.iter().zip(&saved) {
        update_running(saved, &block.units, block.downsample.as_ref(), x.device())?;
    }
    Ok(y)
}

/// The fused stage: inputs `(x [N, C, H, W], packed parameters [P])`, the blocks' packed
/// parameters one after the other.
struct StageOp {
    blocks: Vec<ResidualOp>,
    /// Where each block's parameters start in the packed vector, and the total at the end.
    offsets: Vec<usize>,
    /// The output of every block but the last (the next block's input, its own gradient's
    /// gate), kept by the forward pass.
    outputs: OnceLock<Vec<Vec<f32>>>,
}

impl CpuKernel<2> for StageOp {
    const NAME: &'static str = "residual-stage";

    fn forward(&self, [x, packed]: [Input<'_>; 2]) -> candle_core::Result<(Vec<f32>, Shape)> {
        let total = self.offsets[self.offsets.len() - 1];
        if packed.data.len() != total {
            candle_core::bail!(
                "internal error: a residual stage with {total} parameters got {}",
                packed.data.len()
            );
        }
        let mut outputs: Vec<Vec<f32>> = Vec::with_capacity(self.blocks.len());
        for (b, block) in self.blocks.iter().enumerate() {
            let input = outputs.last().map_or(x.data, Vec::as_slice);
            let params = &packed.data[self.offsets[b]..self.offsets[b + 1]];
            let y = block.run_forward(input, params)?;
            outputs.push(y);
        }
        let (Some(y), Some(last)) = (outputs.pop(), self.blocks.last()) else {
            candle_core::bail!("internal error: a residual stage without blocks");
        };
        let shape = Shape::from(last.output_dims()?.to_vec());
        let _ = self.outputs.set(outputs);
        Ok((y, shape))
    }

    fn backward(&self, inputs: [&Tensor; 2], res: &Tensor, grad: &Tensor) -> Gradients<2> {
        let outputs = self.outputs.get().ok_or_else(|| {
            candle_core::Error::Msg("residual stage backward before forward".into())
        })?;
        node_gradients(inputs, res, grad, |values, need_dx| {
            self.gradients(values, outputs, need_dx)
        })
    }
}

impl StageOp {
    /// The gradients of the input (when `need_dx`) and of the packed parameters: the blocks'
    /// backward passes from the last to the first, each handing its input's gradient to the
    /// block before it.
    fn gradients(
        &self,
        (xs, params, ys, dy): NodeValues,
        outputs: &[Vec<f32>],
        need_dx: bool,
    ) -> candle_core::Result<(Option<Vec<f32>>, Vec<f32>)> {
        let total = self.offsets[self.offsets.len() - 1];
        if params.len() != total || outputs.len() + 1 != self.blocks.len() {
            candle_core::bail!(
                "internal error: a residual stage of {} blocks and {total} parameters got {} \
                 parameters and {} kept outputs",
                self.blocks.len(),
                params.len(),
                outputs.len()
            );
        }
        let mut dpacked = vec![0f32; params.len()];
        let mut upstream: Option<Vec<f32>> = None;
        for (b, block) in self.blocks.iter().enumerate().rev() {
            let saved = block.saved.get().ok_or_else(|| {
                candle_core::Error::Msg("residual stage backward before forward".into())
            })?;
            let input = if b == 0 { xs } else { &outputs[b - 1] };
            let output = outputs.get(b).map_or(ys, Vec::as_slice);
            let dout = upstream.as_deref().unwrap_or(dy);
            let (range, need_input) = (self.offsets[b]..self.offsets[b + 1], b > 0 || need_dx);
            let inputs = (input, &params[range.clone()], output, dout);
            let dinput = block.gradients(saved, inputs, need_input, &mut dpacked[range])?;
            if b == 0 {
                return Ok((dinput, dpacked));
            }
            upstream = Some(dinput.ok_or_else(|| {
                candle_core::Error::Msg(
                    "internal error: a block's input gradient is missing".into(),
                )
            })?);
        }
        Ok((None, dpacked))
    }
}

//! A ResNet residual block (basic or bottleneck, torchvision's layout) as one differentiable
//! operation.
//!
//! Composed, a bottleneck block is seven to nine nodes of candle's autograd graph (a
//! convolution and a batch norm per unit, the residual sum), and candle's backward pass
//! zero-fills a gradient buffer for every node input and adds each contribution into it: a
//! pass over every convolution output and every normalised activation of the block. In
//! training on the CPU in `f32` the block is one node here: the forward pass runs the same
//! convolution and normalisation kernels and keeps what the backward pass needs, the backward
//! pass hands each gradient straight to the next kernel. The arithmetic is the composed
//! path's, so the values and gradients are the same (up to the sign of zeros).

use std::sync::{Arc, OnceLock};

use candle_core::{Shape, Tensor};

use super::planar::Planar;
use super::{Geometry, conv2d};
use crate::batch_norm::BatchNorm;
use crate::distributed::sync_batch_norm_active;
use crate::kernels::batch_norm::{ChannelStats, TrainNorm};
use crate::kernels::op::{CpuKernel, Gradients, Input, Op};
use crate::kernels::ops::add::{Add, AddRelu, WherePositive, pointwise};
use crate::kernels::{fast_path, with_contiguous_f32};
use crate::ops::add_relu;
use crate::{Error, Result};

mod stage;
pub use stage::{BlockUnits, residual_stage};

/// One convolution (no bias) followed by its batch norm: a unit of a residual block.
#[derive(Debug, Clone, Copy)]
pub struct ConvBnUnit<'a> {
    /// The convolution's weight `[C_out, C_in, k, k]`.
    pub weight: &'a Tensor,
    /// The convolution's stride.
    pub stride: usize,
    /// The convolution's zero padding.
    pub padding: usize,
    /// The batch norm over the convolution's `C_out` channels.
    pub bn: &'a BatchNorm,
}

impl ConvBnUnit<'_> {
    /// `bn(conv(x))`, then ReLU if `relu`: the composed path.
    fn forward(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        let y = conv2d(x, self.weight, self.stride, self.padding)?;
        if relu {
            self.bn.forward_t_relu(&y, train)
        } else {
            self.bn.forward_t(&y, train)
        }
    }
}

/// `relu(units(x) + identity)`: torchvision's `BasicBlock` (two units) or `Bottleneck` (three),
/// each unit but the last followed by ReLU, the identity `x` itself or `downsample(x)`.
///
/// In training (`train`) on the CPU in `f32` the block is one autograd node (see the module
/// documentation) and updates the batch norms' running statistics as
/// [`BatchNorm::forward_t`] does; otherwise the units compose [`conv2d`] and
/// [`BatchNorm`].
///
/// # Errors
/// When `units` is empty, or the shapes do not chain (as the composed layers report them).
///
/// # Shapes
/// `x`: `[N, C, H, W]` → `[N, C_out, H', W']` of the last unit.
///
/// # Example
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use mmcl_nn::ParamStore;
/// use mmcl_nn::batch_norm::{BatchNormConfig, batch_norm};
/// use mmcl_nn::conv::{ConvBnUnit, residual_block};
///
/// # fn main() -> mmcl_nn::Result<()> {
/// let store = ParamStore::new(0);
/// let vb = store.var_builder(DType::F32, &Device::Cpu);
/// // torchvision's BasicBlock with 8 channels: two 3×3 conv-BN units, the identity.
/// let init = candle_nn::Init::Randn { mean: 0.0, stdev: 0.1 };
/// let w1 = vb.get_with_hints((8, 8, 3, 3), "conv1.weight", init)?;
/// let w2 = vb.get_with_hints((8, 8, 3, 3), "conv2.weight", init)?;
/// let bn1 = batch_norm(8, BatchNormConfig::default(), vb.pp("bn1"))?;
/// let bn2 = batch_norm(8, BatchNormConfig::default(), vb.pp("bn2"))?;
/// let unit = |weight, bn| ConvBnUnit { weight, stride: 1, padding: 1, bn };
/// let units = [unit(&w1, &bn1), unit(&w2, &bn2)];
/// let x = Tensor::randn(0f32, 1.0, (4, 8, 12, 12), &Device::Cpu)?;
/// let y = residual_block(&x, &units, None, true)?; // training: batch statistics
/// assert_eq!(y.dims(), &[4, 8, 12, 12]);
/// assert!(store.vars_without_gradient(&y.sqr()?.sum_all()?, &[])?.is_empty());
/// # Ok(())
/// # }
/// ```
pub fn residual_block(
    x: &Tensor,
    units: &[ConvBnUnit],
    downsample: Option<&ConvBnUnit>,
    train: bool,
) -> Result<Tensor> {
    let Some(last) = units.len().checked_sub(1) else {
        return Err(Error::InvalidArgument(
            "a residual block needs at least one convolution".into(),
        ));
    };
    if train && let Some(plan) = Plan::new(x, units, downsample)? {
        return plan.run(x, units, downsample);
    }
    let mut out = x.clone();
    for (i, unit) in units.iter().enumerate() {
        out = unit.forward(&out, train, i < last)?;
    }
    let identity = match downsample {
        Some(d) => d.forward(x, train, false)?,
        None => x.clone(),
    };
    Ok(add_relu(&out, &identity)?)
}

/// One unit of the fused operation: where its parameters lie in the packed parameter vector
/// and how it normalises.
#[derive(Debug, Clone)]
struct UnitPlan {
    geometry: Geometry,
    /// `[C_out, C_in, k, k]`.
    weight_dims: [usize; 4],
    /// The unit's input `[N, C_in, H, W]`.
    input_dims: [usize; 4],
    norm: TrainNorm,
    /// Offsets of the weight, the batch norm's scale and its shift in the packed parameters.
    weight_at: usize,
    scale_at: usize,
    shift_at: usize,
}

impl UnitPlan {
    fn channels(&self) -> usize {
        self.weight_dims[0]
    }

    fn weight<'a>(&self, packed: &'a [f32]) -> &'a [f32] {
        &packed[self.weight_at..self.weight_at + self.weight_dims.iter().product::<usize>()]
    }

    fn scale<'a>(&self, packed: &'a [f32]) -> &'a [f32] {
        &packed[self.scale_at..self.scale_at + self.channels()]
    }

    fn shift<'a>(&self, packed: &'a [f32]) -> &'a [f32] {
        &packed[self.shift_at..self.shift_at + self.channels()]
    }

    /// The convolution, in the calling thread's matrix-product precision.
    fn conv(&self) -> candle_core::Result<Planar> {
        Planar::new(&self.input_dims, &self.weight_dims, self.geometry)
    }

    /// `(N, C_out, H'·W')` of the output.
    fn output_ncl(&self) -> candle_core::Result<(usize, usize, usize)> {
        let [n, c, h, w] = self.conv()?.output_dims();
        Ok((n, c, h * w))
    }

    /// `bn(conv(input))` (ReLU included where the plan says) and what its backward pass needs:
    /// the convolution's output and the batch statistics.
    fn forward(
        &self,
        input: &[f32],
        packed: &[f32],
    ) -> candle_core::Result<(Vec<f32>, Vec<f32>, ChannelStats)> {
        let conv = self.conv()?.forward(input, self.weight(packed))?;
        let ncl = self.output_ncl()?;
        let (out, stats) =
            self.norm
                .normalize(&conv, self.scale(packed), self.shift(packed), ncl)?;
        Ok((conv, out, stats))
    }

    /// The gradients of the unit's input (when `need_input`) and, into `dpacked`, of its
    /// parameters, given the gradient `dout` of its output.
    fn backward(
        &self,
        (input, packed): (&[f32], &[f32]),
        saved: &UnitSaved,
        dout: &[f32],
        need_input: bool,
        dpacked: &mut [f32],
    ) -> candle_core::Result<Option<Vec<f32>>> {
        let ncl = self.output_ncl()?;
        let (dconv, dscale, dshift) = self.norm.gradients(
            &saved.stats,
            (self.scale(packed), self.shift(packed)),
            ncl,
            [&saved.conv, dout],
        )?;
        let (dinput, dweight) =
            self.conv()?
                .backward(input, self.weight(packed), &dconv, need_input)?;
        let c = self.channels();
        dpacked[self.weight_at..self.weight_at + dweight.len()].copy_from_slice(&dweight);
        dpacked[self.scale_at..self.scale_at + c].copy_from_slice(&dscale);
        dpacked[self.shift_at..self.shift_at + c].copy_from_slice(&dshift);
        Ok(dinput)
    }
}

/// What one unit's forward pass keeps for the backward pass.
struct UnitSaved {
    /// The convolution's output (the batch norm's input).
    conv: Vec<f32>,
    /// The unit's output; the last unit's is dropped after the residual sum (the block's
    /// output gates its gradient).
    out: Vec<f32>,
    stats: ChannelStats,
}

/// The fused block's forward state.
struct Saved {
    units: Vec<UnitSaved>,
    downsample: Option<UnitSaved>,
}

/// The fused operation: inputs `(x [N, C, H, W], packed parameters [P])`.
struct ResidualOp {
    units: Vec<UnitPlan>,
    downsample: Option<UnitPlan>,
    saved: Arc<OnceLock<Saved>>,
}

/// The fused path's plan for one call, or `None` where the composed path applies (another
/// device or dtype, shapes that do not chain: the composed layers report those).
struct Plan {
    op: ResidualOp,
    /// The parameters in packing order: every unit's weight, then every unit's scale and shift
    /// (the downsampling unit last in each part).
    params: Vec<Tensor>,
}

impl Plan {
    fn new(
        x: &Tensor,
        units: &[ConvBnUnit],
        downsample: Option<&ConvBnUnit>,
    ) -> Result<Option<Self>> {
        match <&[usize; 4]>::try_from(x.dims()) {
            Ok(&dims) if fast_path(x) => Self::for_input(dims, units, downsample),
            _ => Ok(None),
        }
    }

    /// The plan for an input of `[N, C, H, W]` = `dims` on the fast path's device and dtype.
    fn for_input(
        [n, c, h, w]: [usize; 4],
        units: &[ConvBnUnit],
        downsample: Option<&ConvBnUnit>,
    ) -> Result<Option<Self>> {
        let all: Vec<&ConvBnUnit> = units.iter().chain(downsample).collect();
        // Packing order: every weight, then every unit's scale and shift.
        let weights = all.iter().map(|u| u.weight);
        let norms = all.iter().flat_map(|u| [u.bn.weight(), u.bn.bias()]);
        let params: Vec<Tensor> = weights.chain(norms).cloned().collect();
        // Without units the composed path reports the error (`units.len() - 1` below).
        if units.is_empty() || !params.iter().all(fast_path) {
            return Ok(None);
        }
        let mut offset = 0;
        let mut weight_at = Vec::with_capacity(all.len());
        for unit in &all {
            weight_at.push(offset);
            offset += unit.weight.elem_count();
        }
        let last = units.len() - 1;
        let mut plans = Vec::with_capacity(all.len());
        let mut input_dims = [n, c, h, w];
        let mut block_out = None;
        for (i, unit) in all.iter().enumerate() {
            let is_downsample = i > last;
            if is_downsample {
                input_dims = [n, c, h, w];
            }
            let Some(mut plan) = unit_plan(unit, input_dims, i < last, weight_at[i]) else {
                return Ok(None);
            };
            plan.scale_at = offset;
            plan.shift_at = offset + plan.channels();
            offset += 2 * plan.channels();
            let out = plan.conv()?.output_dims();
            if i == last {
                block_out = Some(out);
            }
            if is_downsample && Some(out) != block_out {
                return Ok(None);
            }
            input_dims = out;
            plans.push(plan);
        }
        let identity_fits = downsample.is_some() || block_out == Some([n, c, h, w]);
        if !identity_fits {
            return Ok(None);
        }
        // The node costs a copy of the block's parameters and of their gradient (packed) per
        // step and saves two gradient buffers per convolution output: it pays where the outputs
        // hold at least as many values as the parameters (ResNet50 at 210 px: 3 % faster
        // steps; ResNet18 at 48 px, whose late blocks hold 2×2 maps: 6 % slower fused
        // throughout, as fast with this rule).
        // Synchronised, every replica must run its batch norms' collectives in the same order,
        // whatever its own batch: the rule, which depends on the batch, is then not applied.
        let outputs: usize = plans
            .iter()
            .map(|p| p.conv().map(|c| c.output_dims().iter().product::<usize>()))
            .sum::<candle_core::Result<usize>>()?;
        if outputs < offset && !sync_batch_norm_active() {
            return Ok(None);
        }
        let downsample = downsample.and_then(|_| plans.pop());
        Ok(Some(Self {
            op: ResidualOp {
                units: plans,
                downsample,
                saved: Arc::new(OnceLock::new()),
            },
            params,
        }))
    }

    /// Runs the fused operation and updates the running statistics of the batch norms.
    fn run(
        self,
        x: &Tensor,
        units: &[ConvBnUnit],
        downsample: Option<&ConvBnUnit>,
    ) -> Result<Tensor> {
        let packed = packed_parameters(&self.params)?;
        let saved = self.op.saved.clone();
        let y = x.contiguous()?.apply_op2(&packed, Op(self.op))?;
        update_running(&saved, units, downsample, x.device())?;
        Ok(y)
    }
}

/// `params` flattened and concatenated: the packed parameter vector `[P]` of a fused node.
fn packed_parameters<'a>(params: impl IntoIterator<Item = &'a Tensor>) -> Result<Tensor> {
    let flat = params
        .into_iter()
        .map(|t| t.flatten_all())
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&flat, 0)?)
}

/// Updates the running statistics of a block's batch norms from the batch statistics its
/// forward pass kept in `saved`.
fn update_running(
    saved: &OnceLock<Saved>,
    units: &[ConvBnUnit],
    downsample: Option<&ConvBnUnit>,
    device: &candle_core::Device,
) -> Result<()> {
    let saved = saved
        .get()
        .ok_or_else(|| Error::InvalidArgument("the residual block did not run".into()))?;
    let pairs = units.iter().zip(&saved.units);
    for (unit, kept) in pairs.chain(downsample.into_iter().zip(&saved.downsample)) {
        let (mean, var) = kept.stats.tensors(device)?;
        unit.bn
            .update_running(&mean, &var, kept.stats.count as usize)?;
    }
    Ok(())
}

/// The plan of one unit on an input of `input_dims`, or `None` where the composed layers
/// would refuse it (they then report why).
fn unit_plan(
    unit: &ConvBnUnit,
    input_dims: [usize; 4],
    relu: bool,
    weight_at: usize,
) -> Option<UnitPlan> {
    let Ok(&[cout, cin, kh, kw]) = <&[usize; 4]>::try_from(unit.weight.dims()) else {
        return None;
    };
    let geometry = Geometry {
        kernel: kh,
        stride: unit.stride,
        padding: unit.padding,
    };
    let [n, c, h, w] = input_dims;
    let (ho, wo) = (geometry.output_size(h)?, geometry.output_size(w)?);
    let fits = c == cin
        && kh == kw
        && kh > 0
        && unit.stride > 0
        && unit.bn.num_features() == cout
        && n * ho * wo >= 2;
    fits.then(|| UnitPlan {
        geometry,
        weight_dims: [cout, cin, kh, kw],
        input_dims,
        norm: TrainNorm::new(unit.bn.config().eps, relu),
        weight_at,
        scale_at: 0,
        shift_at: 0,
    })
}

impl ResidualOp {
    fn packed_len(&self) -> usize {
        self.units
            .iter()
            .chain(&self.downsample)
            .map(|u| u.shift_at + u.channels())
            .max()
            .unwrap_or(0)
    }

    /// The output's dimensions, the last unit's.
    fn output_dims(&self) -> candle_core::Result<[usize; 4]> {
        match self.units.last() {
            Some(unit) => Ok(unit.conv()?.output_dims()),
            None => candle_core::bail!("internal error: a residual block without units"),
        }
    }

    /// The block's output for the input `x` and the `packed` parameters; keeps what the
    /// backward pass needs.
    fn run_forward(&self, x: &[f32], packed: &[f32]) -> candle_core::Result<Vec<f32>> {
        if packed.len() != self.packed_len() {
            candle_core::bail!(
                "internal error: a residual block with {} parameters got {}",
                self.packed_len(),
                packed.len()
            );
        }
        let mut kept: Vec<UnitSaved> = Vec::with_capacity(self.units.len());
        for unit in &self.units {
            let input = kept.last().map_or(x, |k| &k.out);
            let (conv, out, stats) = unit.forward(input, packed)?;
            kept.push(UnitSaved { conv, out, stats });
        }
        let downsample = match &self.downsample {
            Some(unit) => {
                let (conv, out, stats) = unit.forward(x, packed)?;
                Some(UnitSaved { conv, out, stats })
            }
            None => None,
        };
        let identity = downsample.as_ref().map_or(x, |d| &d.out);
        let last = kept.last_mut().ok_or_else(|| {
            candle_core::Error::Msg("internal error: a residual block without units".into())
        })?;
        // relu(out + identity), as `add_relu` computes it.
        let y = pointwise::<AddRelu>(&last.out, identity)?;
        // Neither the last unit's output nor the downsampled identity is read again.
        last.out = Vec::new();
        let downsample = downsample.map(|d| UnitSaved {
            out: Vec::new(),
            ..d
        });
        let _ = self.saved.set(Saved {
            units: kept,
            downsample,
        });
        Ok(y)
    }
}

impl CpuKernel<2> for ResidualOp {
    const NAME: &'static str = "residual-block";

    fn forward(&self, [x, packed]: [Input<'_>; 2]) -> candle_core::Result<(Vec<f32>, Shape)> {
        let y = self.run_forward(x.data, packed.data)?;
        Ok((y, Shape::from(self.output_dims()?.to_vec())))
    }

    fn backward(&self, inputs: [&Tensor; 2], res: &Tensor, grad: &Tensor) -> Gradients<2> {
        let saved = self.saved.get().ok_or_else(|| {
            candle_core::Error::Msg("residual block backward before forward".into())
        })?;
        node_gradients(inputs, res, grad, |values, need_dx| {
            let mut dpacked = vec![0f32; values.1.len()];
            let dx = self.gradients(saved, values, need_dx, &mut dpacked)?;
            Ok((dx, dpacked))
        })
    }
}

/// The contiguous values a fused node's backward pass reads: its input, its packed parameters,
/// its output and the output's gradient.
type NodeValues<'a> = (&'a [f32], &'a [f32], &'a [f32], &'a [f32]);

/// The backward pass of a fused node with inputs `(x, packed)` and output `res`: `gradients`
/// of the values, told whether the input's gradient is needed (`x` tracked), returns it and the
/// packed parameters' gradient, made tensors of their inputs' shapes here.
fn node_gradients(
    [x, packed]: [&Tensor; 2],
    res: &Tensor,
    grad: &Tensor,
    gradients: impl FnOnce(NodeValues, bool) -> candle_core::Result<(Option<Vec<f32>>, Vec<f32>)>,
) -> Gradients<2> {
    let need_dx = x.track_op();
    let (dx, dpacked) = with_contiguous_f32(x, |xs| {
        with_contiguous_f32(packed, |params| {
            with_contiguous_f32(res, |ys| {
                with_contiguous_f32(grad, |dy| gradients((xs, params, ys, dy), need_dx))
            })
        })
    })?;
    Ok([
        dx.map(|dx| Tensor::from_vec(dx, x.shape(), x.device()))
            .transpose()?,
        Some(Tensor::from_vec(dpacked, packed.shape(), packed.device())?),
    ])
}

impl ResidualOp {
    /// The gradient of the input (when `need_dx`) and, into `dpacked`, of the packed
    /// parameters, from the block's input `xs`, parameters, output `ys` and output gradient
    /// `dy`.
    fn gradients(
        &self,
        saved: &Saved,
        (xs, params, ys, dy): NodeValues,
        need_dx: bool,
        dpacked: &mut [f32],
    ) -> candle_core::Result<Option<Vec<f32>>> {
        // The residual sum's ReLU passes the gradient where the output is positive; the sum
        // hands it to both branches.
        let gated = pointwise::<WherePositive>(ys, dy)?;
        // The gradient of the current unit's output: the gated one for the last unit.
        let mut upstream: Option<Vec<f32>> = None;
        let mut dx = None;
        for (i, (unit, kept)) in self.units.iter().zip(&saved.units).enumerate().rev() {
            let dout = upstream.as_deref().unwrap_or(&gated);
            let input = if i == 0 { xs } else { &saved.units[i - 1].out };
            let need_input = i > 0 || need_dx;
            let dinput = unit.backward((input, params), kept, dout, need_input, dpacked)?;
            match dinput {
                Some(d) if i > 0 => upstream = Some(d),
                d => dx = d,
            }
        }
        let identity_grad = match (&self.downsample, &saved.downsample) {
            (Some(unit), Some(kept)) => {
                unit.backward((xs, params), kept, &gated, need_dx, dpacked)?
            }
            _ => need_dx.then_some(gated),
        };
        Ok(match (dx, identity_grad) {
            (Some(a), Some(b)) => Some(pointwise::<Add>(&a, &b)?),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests;

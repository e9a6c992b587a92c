//! The train-mode batch normalisation of [`crate::layers::batch_norm`] on the CPU in `f32`, as
//! one fused operation: one pass for the statistics (in `f64`), one for the output; the
//! backward pass needs two more. An optional ReLU is fused in (applied to the output, its mask
//! to the gradient).

use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use candle_core::{Shape, Tensor};
use rayon::prelude::*;

use crate::distributed::{group_sums, sync_batch_norm_active};
use crate::kernels::op::{CpuKernel, Gradients, Input, Op};
use crate::kernels::simd::multiversion;
use crate::kernels::with_contiguous_f32;
use crate::{Error, Result};

/// The fused train-mode normalisation `(x − mean) / sqrt(var + eps) · weight + bias` (then
/// ReLU if `relu`), with the batch statistics of each channel (dimension 1).
///
/// Inside [`crate::distributed::with_sync_batch_norm`] the statistics are the whole group's
/// batch's, and so are the two reductions of the backward pass (`SyncBatchNorm`).
///
/// Returns the output and, for the running averages, the batch mean, the **biased** batch
/// variance `[C]` and the number of values per channel they cover.
///
/// # Shapes
/// `x`: `[N, C, *]`, `weight` and `bias`: `[C]` → `[N, C, *]`.
pub(crate) fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor, usize)> {
    let stats = Arc::new(OnceLock::new());
    let op = BatchNormTrain {
        norm: TrainNorm::new(eps, relu),
        stats: stats.clone(),
    };
    let y = x
        .contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, Op(op))?;
    let stats: &ChannelStats = stats
        .get()
        .ok_or_else(|| Error::InvalidArgument("batch norm statistics were not computed".into()))?;
    let (mean, var) = stats.tensors(x.device())?;
    Ok((y, mean, var, stats.count as usize))
}

/// Per-channel batch statistics of a train-mode forward.
#[derive(Debug)]
pub(crate) struct ChannelStats {
    /// Batch mean.
    pub(crate) mean: Vec<f32>,
    /// Biased variance.
    pub(crate) var: Vec<f32>,
    /// `1 / sqrt(var + eps)`.
    inv_std: Vec<f32>,
    /// Values per channel behind the statistics (the group's, when synchronised).
    pub(crate) count: f64,
}

impl ChannelStats {
    /// The mean and the biased variance as `[C]` tensors on `device` (for the running
    /// averages).
    pub(crate) fn tensors(&self, device: &candle_core::Device) -> Result<(Tensor, Tensor)> {
        let c = self.mean.len();
        Ok((
            Tensor::from_slice(&self.mean, c, device)?,
            Tensor::from_slice(&self.var, c, device)?,
        ))
    }
}

/// The arithmetic of one train-mode normalisation over slices `[N, C, L]`: the forward pass
/// with its statistics, and the gradients. [`BatchNormTrain`] runs it as a candle operation;
/// the fused residual block of [`crate::conv`] calls it directly.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TrainNorm {
    eps: f64,
    /// Whether a ReLU follows (fused: applied to the output, its mask to the gradient).
    relu: bool,
    /// Whether the statistics and the backward reductions are summed over the group.
    synced: bool,
}

/// The fused operation of [`batch_norm_train`]: inputs `(x [N, C, L], weight [C], bias [C])`;
/// the statistics are kept for the running averages and the backward pass.
struct BatchNormTrain {
    norm: TrainNorm,
    stats: Arc<OnceLock<ChannelStats>>,
}

/// `(N, C, L)` of an input `[N, C, *]`.
fn ncl(shape: &Shape) -> (usize, usize, usize) {
    let dims = shape.dims();
    (dims[0], dims[1], dims[2..].iter().product())
}

/// Independent `f64` accumulators of [`sum_lanes`] and [`sum_lanes_pair`]: a single one is
/// latency-bound at one addition per four cycles; sixteen let the loop vectorise.
const SUM_LANES: usize = 16;

/// `Σ f(x[i])` in `f64` (as wide as the old scalar sum, so huge activations do not overflow),
/// over [`SUM_LANES`] independent accumulators. The vector width changes no lane's order of
/// additions, so the [`multiversion!`] copies give the same bits.
#[inline(always)]
fn sum_lanes(x: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut lanes = [0f64; SUM_LANES];
    let (chunks, rest) = x.as_chunks::<SUM_LANES>();
    for chunk in chunks {
        for (sum, &v) in lanes.iter_mut().zip(chunk) {
            *sum += f(v);
        }
    }
    let mut total: f64 = lanes.iter().sum();
    for &v in rest {
        total += f(v);
    }
    total
}

/// The two sums `Σ f(a[i], b[i])` of one pass, each added as [`sum_lanes`] adds one (the same
/// bits as two passes of their own). Written out for two rather than generic over the count:
/// the compiler vectorises only the plain zipped loop.
#[inline(always)]
fn sum_lanes_pair(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> (f64, f64)) -> [f64; 2] {
    let (mut first, mut second) = ([0f64; SUM_LANES], [0f64; SUM_LANES]);
    let ((ca, ra), (cb, rb)) = (a.as_chunks::<SUM_LANES>(), b.as_chunks::<SUM_LANES>());
    for (a, b) in ca.iter().zip(cb) {
        let lanes = first.iter_mut().zip(second.iter_mut());
        for (((s, t), &u), &v) in lanes.zip(a).zip(b) {
            let (p, q) = f(u, v);
            *s += p;
            *t += q;
        }
    }
    let mut totals = [first.iter().sum::<f64>(), second.iter().sum::<f64>()];
    for (&u, &v) in ra.iter().zip(rb) {
        let (p, q) = f(u, v);
        totals[0] += p;
        totals[1] += q;
    }
    totals
}

/// `Σ x` of one row.
#[inline(always)]
fn row_sum_kernel(x: &[f32]) -> f64 {
    sum_lanes(x, |v| v as f64)
}

/// `Σ (x − mean)²` of one row.
#[inline(always)]
fn row_square_kernel(x: &[f32], mean: f64) -> f64 {
    sum_lanes(x, |v| (v as f64 - mean).powi(2))
}

/// One channel's forward arithmetic, `(x − mean)·scale + shift` in `f32`, from which the
/// backward pass recomputes the fused ReLU's mask instead of reading the output again (a third
/// of the memory its two passes read).
#[derive(Debug, Clone, Copy)]
struct Affine {
    mean: f32,
    /// `weight · inv_std`.
    scale: f32,
    shift: f32,
}

impl Affine {
    /// The output before the ReLU, the same bits in both passes (Rust contracts no
    /// multiply-add without being told). Centred first: folding the mean into the shift
    /// (`v·scale + shift'`) cancels catastrophically when the spread is small against the mean
    /// (tiny batches).
    #[inline(always)]
    fn apply(self, v: f32) -> f32 {
        (v - self.mean) * self.scale + self.shift
    }
}

/// The upstream gradient `g` where the fused ReLU let it through (output `> 0`, PyTorch's ReLU
/// backward: NaN outputs pass nothing), else 0; without the ReLU `g` itself. The output is
/// `max(affine(v), 0)`, positive exactly where `affine(v)` is.
#[inline(always)]
fn gated<const RELU: bool>(g: f32, v: f32, affine: Affine) -> f32 {
    if !RELU || affine.apply(v) > 0.0 {
        g
    } else {
        0.0
    }
}

/// `[Σ g, Σ g·x̂]` of one row, `g` the upstream gradient `dy` gated as [`gated`] when `relu`,
/// `x̂ = (x − mean)·inv_std`.
#[inline(always)]
fn row_gradient_sums_kernel(
    dy: &[f32],
    xs: &[f32],
    affine: Affine,
    (mean, inv_std): (f64, f64),
    relu: bool,
) -> [f64; 2] {
    // Inlined into each `multiversion!` copy, so compiled for its vector width.
    #[inline(always)]
    fn sums<const RELU: bool>(
        dy: &[f32],
        xs: &[f32],
        affine: Affine,
        mean: f64,
        inv_std: f64,
    ) -> [f64; 2] {
        sum_lanes_pair(dy, xs, |g, v| {
            let g = gated::<RELU>(g, v, affine) as f64;
            (g, g * (v as f64 - mean) * inv_std)
        })
    }
    if relu {
        sums::<true>(dy, xs, affine, mean, inv_std)
    } else {
        sums::<false>(dy, xs, affine, mean, inv_std)
    }
}

/// `dst = (x − mean)·scale + shift` over one row (then ReLU if `relu`).
#[inline(always)]
fn normalize_row_kernel(x: &[f32], dst: &mut [MaybeUninit<f32>], affine: Affine, relu: bool) {
    if relu {
        for (d, &v) in dst.iter_mut().zip(x) {
            // `max` maps NaN to 0, as candle's ReLU (the unfused path) does.
            d.write(affine.apply(v).max(0.0));
        }
    } else {
        for (d, &v) in dst.iter_mut().zip(x) {
            d.write(affine.apply(v));
        }
    }
}

/// One channel's constants of the input gradient.
#[derive(Debug, Clone, Copy)]
struct ChannelGradient {
    /// The forward pass's arithmetic (its `scale` is also the gradient's).
    affine: Affine,
    inv_std: f32,
    /// The mean of `dy` (gated).
    mean_dy: f32,
    /// The mean of `dy·x̂` (gated).
    mean_dy_xhat: f32,
}

/// The input gradient of one row: `scale·(g − mean(g) − x̂·mean(g·x̂))`, `g` gated as in
/// [`row_gradient_sums_kernel`].
#[inline(always)]
fn input_gradient_row_kernel(
    dy: &[f32],
    xs: &[f32],
    dst: &mut [MaybeUninit<f32>],
    norm: ChannelGradient,
    relu: bool,
) {
    #[inline(always)]
    fn row<const RELU: bool>(
        dy: &[f32],
        xs: &[f32],
        dst: &mut [MaybeUninit<f32>],
        n: ChannelGradient,
    ) {
        let a = n.affine;
        for ((d, &v), &g) in dst.iter_mut().zip(xs).zip(dy) {
            let g = gated::<RELU>(g, v, a);
            let xhat = (v - a.mean) * n.inv_std;
            d.write(a.scale * (g - n.mean_dy - xhat * n.mean_dy_xhat));
        }
    }
    if relu {
        row::<true>(dy, xs, dst, norm)
    } else {
        row::<false>(dy, xs, dst, norm)
    }
}

multiversion!(fn row_sum(x: &[f32]) -> f64 => row_sum_kernel);
multiversion!(fn row_square(x: &[f32], mean: f64) -> f64 => row_square_kernel);
multiversion!(
    fn row_gradient_sums(
        dy: &[f32],
        xs: &[f32],
        affine: Affine,
        moments: (f64, f64),
        relu: bool
    ) -> [f64; 2] => row_gradient_sums_kernel
);
multiversion!(
    fn normalize_row(x: &[f32], dst: &mut [MaybeUninit<f32>], affine: Affine, relu: bool)
        => normalize_row_kernel
);
multiversion!(
    fn input_gradient_row(
        dy: &[f32],
        xs: &[f32],
        dst: &mut [MaybeUninit<f32>],
        norm: ChannelGradient,
        relu: bool
    ) => input_gradient_row_kernel
);

/// The `K` sums of `row_sums` over the rows of channel `ch` of `[N, C, L]` arrays, image by
/// image, added in image order.
fn channel_sums<const K: usize>(
    (n, channels, l): (usize, usize, usize),
    ch: usize,
    row_sums: impl Fn(Range<usize>) -> [f64; K],
) -> [f64; K] {
    let rows: Vec<[f64; K]> = (0..n)
        .map(|img| row_sums((img * channels + ch) * l..(img * channels + ch + 1) * l))
        .collect();
    std::array::from_fn(|k| rows.iter().map(|r| r[k]).sum())
}

impl TrainNorm {
    /// A normalisation with `eps`, an optional fused ReLU, synchronised over the data-parallel
    /// group when called inside [`crate::distributed::with_sync_batch_norm`].
    pub(crate) fn new(eps: f64, relu: bool) -> Self {
        Self {
            eps,
            relu,
            synced: sync_batch_norm_active(),
        }
    }

    /// `local` summed over the group when synchronised, else itself.
    fn summed_over_group(&self, local: Vec<f64>) -> candle_core::Result<Vec<f64>> {
        if !self.synced {
            return Ok(local);
        }
        match group_sums(&local) {
            Some(sums) => sums.map_err(candle_core::Error::wrap),
            None => Err(candle_core::Error::Msg(
                "synchronised batch norm outside its group's scope: run the backward pass \
                 inside with_sync_batch_norm too"
                    .into(),
            )),
        }
    }

    /// The gradients of the input, the scale and the shift from the input `xs` and the upstream
    /// gradient `dy`, given the forward pass's statistics, `weight` and `bias` (with the fused
    /// ReLU the output's sign, which gates `dy`, is recomputed from `xs`): one pass for the two
    /// reductions per channel, one for the input gradient. `dims` are `(N, C, L)`.
    pub(crate) fn gradients(
        &self,
        stats: &ChannelStats,
        (weight, bias): (&[f32], &[f32]),
        dims: (usize, usize, usize),
        [xs, dy]: [&[f32]; 2],
    ) -> candle_core::Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let (c, l) = (dims.1, dims.2);
        let (count, relu) = (stats.count, self.relu);
        // As the forward pass computed them: `scale` by the same multiplication.
        let affine = |ch: usize| Affine {
            mean: stats.mean[ch],
            scale: weight[ch] * stats.inv_std[ch],
            shift: bias[ch],
        };
        // Σ dy and Σ dy·x̂ per channel.
        let sums: Vec<[f64; 2]> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let moments = (stats.mean[ch] as f64, stats.inv_std[ch] as f64);
                channel_sums(dims, ch, |r| {
                    row_gradient_sums(&dy[r.clone()], &xs[r], affine(ch), moments, relu)
                })
            })
            .collect();
        // Synchronised, the input gradient needs the group's reductions (the output of every
        // replica depends on this one's rows through the statistics); the scale and shift keep
        // their own rows' part, which the group's gradient mean sums.
        let group = self.summed_over_group(sums.concat())?;
        // SAFETY: the kernel writes every value of its task's chunk (at most `l` values), which
        // it zips with input rows of `l` values (slicing a short input panics, which leaves
        // nothing behind).
        let dx = unsafe {
            crate::kernels::par_written(xs.len(), l, |row, dst| {
                let (xr, gr) = (&xs[row * l..][..l], &dy[row * l..][..l]);
                let ch = row % c;
                let norm = ChannelGradient {
                    affine: affine(ch),
                    inv_std: stats.inv_std[ch],
                    mean_dy: (group[2 * ch] / count) as f32,
                    mean_dy_xhat: (group[2 * ch + 1] / count) as f32,
                };
                input_gradient_row(gr, xr, dst, norm, relu);
            })
        };
        let dweight = sums.iter().map(|s| s[1] as f32).collect();
        let dbias = sums.iter().map(|s| s[0] as f32).collect();
        Ok((dx, dweight, dbias))
    }

    /// The normalised (and, with the ReLU, rectified) `x` `[N, C, L]` (`dims`) and its batch
    /// statistics.
    pub(crate) fn normalize(
        &self,
        x: &[f32],
        weight: &[f32],
        bias: &[f32],
        dims: (usize, usize, usize),
    ) -> candle_core::Result<(Vec<f32>, ChannelStats)> {
        let (n, c, l) = dims;
        // Two passes (the sum, then the squares about the mean) keep the variance exact when
        // the spread is small against the mean; synchronised, each pass's sums are the group's.
        let mut sums: Vec<f64> = (0..c)
            .into_par_iter()
            .map(|ch| channel_sums(dims, ch, |r| [row_sum(&x[r])])[0])
            .collect();
        sums.push((n * l) as f64);
        let sums = self.summed_over_group(sums)?;
        let count = sums[c];
        let means: Vec<f64> = sums[..c].iter().map(|s| s / count).collect();
        let squares: Vec<f64> = (0..c)
            .into_par_iter()
            .map(|ch| channel_sums(dims, ch, |r| [row_square(&x[r], means[ch])])[0])
            .collect();
        let squares = self.summed_over_group(squares)?;
        let per_channel: Vec<(f32, f32, f32)> = means
            .iter()
            .zip(&squares)
            .map(|(&mean, &square)| {
                let var = square / count;
                (
                    mean as f32,
                    var as f32,
                    (1.0 / (var + self.eps).sqrt()) as f32,
                )
            })
            .collect();
        // SAFETY: as for the input gradient: the kernel writes every value of its task's chunk.
        let y = unsafe {
            crate::kernels::par_written(x.len(), l, |row, dst| {
                let ch = row % c;
                let (mean, _, inv_std) = per_channel[ch];
                let affine = Affine {
                    mean,
                    scale: weight[ch] * inv_std,
                    shift: bias[ch],
                };
                normalize_row(&x[row * l..][..l], dst, affine, self.relu);
            })
        };
        let stats = ChannelStats {
            mean: per_channel.iter().map(|s| s.0).collect(),
            var: per_channel.iter().map(|s| s.1).collect(),
            inv_std: per_channel.iter().map(|s| s.2).collect(),
            count,
        };
        Ok((y, stats))
    }
}

impl CpuKernel<3> for BatchNormTrain {
    const NAME: &'static str = "batch-norm-train";

    fn forward(
        &self,
        [input, weight, bias]: [Input<'_>; 3],
    ) -> candle_core::Result<(Vec<f32>, Shape)> {
        let dims = ncl(input.shape());
        let (y, stats) = self
            .norm
            .normalize(input.data, weight.data, bias.data, dims)?;
        // A repeated forward of the same op (not done by candle) would keep the first statistics.
        let _ = self.stats.set(stats);
        Ok((y, input.shape().clone()))
    }

    fn backward(&self, [x, weight, bias]: [&Tensor; 3], _: &Tensor, grad: &Tensor) -> Gradients<3> {
        let stats = self
            .stats
            .get()
            .ok_or_else(|| candle_core::Error::Msg("batch norm backward before forward".into()))?;
        let (weight, bias) = (weight.to_vec1::<f32>()?, bias.to_vec1::<f32>()?);
        // With the fused ReLU the gradient passes only where the output is positive: the mask is
        // applied while the gradient is read, not written out as a masked copy first.
        let (dx, dweight, dbias) = with_contiguous_f32(x, |xs| {
            with_contiguous_f32(grad, |dy| {
                let affine = (weight.as_slice(), bias.as_slice());
                self.norm.gradients(stats, affine, ncl(x.shape()), [xs, dy])
            })
        })?;
        let (device, c) = (x.device(), weight.len());
        Ok([
            Some(Tensor::from_vec(dx, x.shape(), device)?),
            Some(Tensor::from_vec(dweight, c, device)?),
            Some(Tensor::from_vec(dbias, c, device)?),
        ])
    }
}

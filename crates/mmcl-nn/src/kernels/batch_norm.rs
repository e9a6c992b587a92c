//! The train-mode batch normalisation of [`crate::layers::batch_norm`] on the CPU in `f32`, as
//! one fused operation: one pass for the statistics (in `f64`), one for the output; the
//! backward pass needs two more. An optional ReLU is fused in (applied to the output, its mask
//! to the gradient).

use std::sync::{Arc, OnceLock};

use candle_core::{Shape, Tensor};
use rayon::prelude::*;

use crate::distributed::{group_sums, sync_batch_norm_active};
use crate::kernels::op::{CpuKernel, Gradients, Input, Op};
use crate::kernels::{CHUNK, with_contiguous_f32};
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
        eps,
        relu,
        synced: sync_batch_norm_active(),
        stats: stats.clone(),
    };
    let y = x
        .contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, Op(op))?;
    let stats: &ChannelStats = stats
        .get()
        .ok_or_else(|| Error::InvalidArgument("batch norm statistics were not computed".into()))?;
    let (c, device) = (stats.mean.len(), x.device());
    let mean = Tensor::from_slice(&stats.mean, c, device)?;
    let var = Tensor::from_slice(&stats.var, c, device)?;
    Ok((y, mean, var, stats.count as usize))
}

/// Per-channel batch statistics of a train-mode forward.
#[derive(Debug)]
struct ChannelStats {
    mean: Vec<f32>,
    /// Biased variance.
    var: Vec<f32>,
    /// `1 / sqrt(var + eps)`.
    inv_std: Vec<f32>,
    /// Values per channel behind the statistics (the group's, when synchronised).
    count: f64,
}

/// The fused operation of [`batch_norm_train`]: inputs `(x [N, C, L], weight [C], bias [C])`;
/// the statistics are kept for the running averages and the backward pass.
struct BatchNormTrain {
    eps: f64,
    /// Whether a ReLU follows (fused: applied to the output, its mask to the gradient).
    relu: bool,
    /// Whether the statistics and the backward reductions are summed over the group.
    synced: bool,
    stats: Arc<OnceLock<ChannelStats>>,
}

/// `(N, C, L)` of an input `[N, C, *]`.
fn ncl(shape: &Shape) -> (usize, usize, usize) {
    let dims = shape.dims();
    (dims[0], dims[1], dims[2..].iter().product())
}

/// Independent `f64` accumulators of [`sum_pairs`]: a single one is latency-bound at one
/// addition per four cycles; sixteen let the loop vectorise.
const SUM_LANES: usize = 16;

/// `Σ f(a[i], b[i])` in `f64` (as wide as the old scalar sum, so huge activations do not
/// overflow), over [`SUM_LANES`] independent accumulators.
#[inline(always)]
fn sum_pairs(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f64) -> f64 {
    let mut lanes = [0f64; SUM_LANES];
    let (a_lanes, b_lanes) = (a.chunks_exact(SUM_LANES), b.chunks_exact(SUM_LANES));
    let (a_rest, b_rest) = (a_lanes.remainder(), b_lanes.remainder());
    for (a, b) in a_lanes.zip(b_lanes) {
        for ((acc, &u), &v) in lanes.iter_mut().zip(a).zip(b) {
            *acc += f(u, v);
        }
    }
    let mut total: f64 = lanes.iter().sum();
    for (&u, &v) in a_rest.iter().zip(b_rest) {
        total += f(u, v);
    }
    total
}

/// `Σ f(a[i], b[i])` over the rows of channel `ch` of two `[N, C, L]` arrays, in `f64`.
fn channel_sum(
    a: &[f32],
    b: &[f32],
    (n, c, l): (usize, usize, usize),
    ch: usize,
    f: impl Fn(f32, f32) -> f64 + Copy,
) -> f64 {
    (0..n)
        .map(|img| {
            let start = (img * c + ch) * l;
            sum_pairs(&a[start..start + l], &b[start..start + l], f)
        })
        .sum()
}

impl BatchNormTrain {
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
}

impl CpuKernel<3> for BatchNormTrain {
    const NAME: &'static str = "batch-norm-train";

    fn forward(
        &self,
        [input, weight, bias]: [Input<'_>; 3],
    ) -> candle_core::Result<(Vec<f32>, Shape)> {
        let (x, weight, bias) = (input.data, weight.data, bias.data);
        let dims = ncl(input.shape());
        let (n, c, l) = dims;
        // Two passes (the sum, then the squares about the mean) keep the variance exact when
        // the spread is small against the mean; synchronised, each pass's sums are the group's.
        let mut sums: Vec<f64> = (0..c)
            .into_par_iter()
            .map(|ch| channel_sum(x, x, dims, ch, |v, _| v as f64))
            .collect();
        sums.push((n * l) as f64);
        let sums = self.summed_over_group(sums)?;
        let count = sums[c];
        let means: Vec<f64> = sums[..c].iter().map(|s| s / count).collect();
        let squares: Vec<f64> = (0..c)
            .into_par_iter()
            .map(|ch| channel_sum(x, x, dims, ch, |v, _| (v as f64 - means[ch]).powi(2)))
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
        let mut y = vec![0f32; x.len()];
        if l > 0 {
            y.par_chunks_mut(l)
                .zip(x.par_chunks(l))
                .enumerate()
                .for_each(|(row, (dst, src))| {
                    let ch = row % c;
                    let (mean, _, inv_std) = per_channel[ch];
                    let scale = weight[ch] * inv_std;
                    // Centre first: folding the mean into a shift (`v·scale + shift`) cancels
                    // catastrophically when the spread is small against the mean (tiny batches).
                    let shift = bias[ch];
                    if self.relu {
                        for (d, &v) in dst.iter_mut().zip(src) {
                            // `max` maps NaN to 0, as candle's ReLU (the unfused path) does.
                            *d = ((v - mean) * scale + shift).max(0.0);
                        }
                    } else {
                        for (d, &v) in dst.iter_mut().zip(src) {
                            *d = (v - mean) * scale + shift;
                        }
                    }
                });
        }
        let stats = ChannelStats {
            mean: per_channel.iter().map(|s| s.0).collect(),
            var: per_channel.iter().map(|s| s.1).collect(),
            inv_std: per_channel.iter().map(|s| s.2).collect(),
            count,
        };
        // A repeated forward of the same op (not done by candle) would keep the first statistics.
        let _ = self.stats.set(stats);
        Ok((y, input.shape().clone()))
    }

    fn backward(&self, [x, weight, _]: [&Tensor; 3], res: &Tensor, grad: &Tensor) -> Gradients<3> {
        let stats = self
            .stats
            .get()
            .ok_or_else(|| candle_core::Error::Msg("batch norm backward before forward".into()))?;
        let dims = ncl(x.shape());
        let (c, l) = (dims.1, dims.2);
        let count = stats.count;
        let weight = weight.to_vec1::<f32>()?;
        // With the fused ReLU, the gradient passes only where the output is positive.
        let masked = if self.relu {
            Some(relu_masked_grad(res, grad)?)
        } else {
            None
        };
        let grad = masked.as_ref().unwrap_or(grad);
        let (dx, dweight, dbias) = with_contiguous_f32(x, |xs| {
            with_contiguous_f32(grad, |dy| {
                // Σ dy and Σ dy·x̂ per channel.
                let sums: Vec<(f64, f64)> = (0..c)
                    .into_par_iter()
                    .map(|ch| {
                        let (mean, inv_std) = (stats.mean[ch] as f64, stats.inv_std[ch] as f64);
                        let sum_dy = channel_sum(dy, dy, dims, ch, |g, _| g as f64);
                        let sum_dy_xhat = channel_sum(dy, xs, dims, ch, |g, v| {
                            g as f64 * (v as f64 - mean) * inv_std
                        });
                        (sum_dy, sum_dy_xhat)
                    })
                    .collect();
                // Synchronised, the input gradient needs the group's reductions (the output of
                // every replica depends on this one's rows through the statistics); the scale
                // and shift keep their own rows' part, which the group's gradient mean sums.
                let flat: Vec<f64> = sums.iter().flat_map(|&(a, b)| [a, b]).collect();
                let group = self.summed_over_group(flat)?;
                let mut dx = vec![0f32; xs.len()];
                if l > 0 {
                    dx.par_chunks_mut(l)
                        .zip(xs.par_chunks(l).zip(dy.par_chunks(l)))
                        .enumerate()
                        .for_each(|(row, (dst, (xr, gr)))| {
                            let ch = row % c;
                            let (mean, inv_std) = (stats.mean[ch], stats.inv_std[ch]);
                            let mean_dy = (group[2 * ch] / count) as f32;
                            let mean_dy_xhat = (group[2 * ch + 1] / count) as f32;
                            let scale = weight[ch] * inv_std;
                            for ((d, &v), &g) in dst.iter_mut().zip(xr).zip(gr) {
                                let xhat = (v - mean) * inv_std;
                                *d = scale * (g - mean_dy - xhat * mean_dy_xhat);
                            }
                        });
                }
                let dweight: Vec<f32> = sums.iter().map(|s| s.1 as f32).collect();
                let dbias: Vec<f32> = sums.iter().map(|s| s.0 as f32).collect();
                Ok((dx, dweight, dbias))
            })
        })?;
        let device = x.device();
        Ok([
            Some(Tensor::from_vec(dx, x.shape(), device)?),
            Some(Tensor::from_vec(dweight, c, device)?),
            Some(Tensor::from_vec(dbias, c, device)?),
        ])
    }
}

/// `grad` where `output > 0`, else 0 (PyTorch's ReLU backward), as a new CPU `f32` tensor.
fn relu_masked_grad(output: &Tensor, grad: &Tensor) -> candle_core::Result<Tensor> {
    let masked = with_contiguous_f32(output, |ys| {
        with_contiguous_f32(grad, |gs| {
            let mut out = vec![0f32; gs.len()];
            out.par_chunks_mut(CHUNK)
                .zip(ys.par_chunks(CHUNK).zip(gs.par_chunks(CHUNK)))
                .for_each(|(dst, (y, g))| {
                    for ((d, &y), &g) in dst.iter_mut().zip(y).zip(g) {
                        *d = if y > 0.0 { g } else { 0.0 };
                    }
                });
            Ok(out)
        })
    })?;
    Tensor::from_vec(masked, grad.shape(), grad.device())
}

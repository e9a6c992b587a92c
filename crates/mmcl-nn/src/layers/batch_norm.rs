//! Batch normalisation with PyTorch's training semantics (`BatchNorm1d` / `BatchNorm2d`).
//!
//! candle-nn's `BatchNorm` keeps its running statistics outside the variable store; here they are
//! buffers of the [`ParamStore`](crate::ParamStore) (`running_mean`, `running_var`,
//! `num_batches_tracked`), so checkpoints round-trip and a training step updates them in place.
//!
//! - Train mode normalises with the batch mean and the **biased** batch variance and updates
//!   `running = (1 - momentum) * running + momentum * batch_statistic`, with the **unbiased**
//!   variance, exactly as `torch.nn.BatchNorm2d`.
//! - Eval mode normalises with the running statistics.
//! - Inside [`with_sync_batch_norm`](crate::distributed::with_sync_batch_norm), train mode
//!   uses the statistics of the whole data-parallel group's batch (`SyncBatchNorm`; CPU `f32`).
//!
//! Channels are dimension 1 of the input: `[N, C]`, `[N, C, L]` and `[N, C, H, W]` all work.

use candle_core::{DType, Tensor, Var};
use candle_nn::{Init, ModuleT, VarBuilder};

use crate::distributed::sync_batch_norm_active;
use crate::kernels::batch_norm::batch_norm_train;
use crate::kernels::fast_path;
use crate::{Error, Result};

/// Hyper-parameters of a batch-normalisation layer (PyTorch's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormConfig {
    /// Added to the variance before the square root.
    pub eps: f64,
    /// Weight of the new batch statistic in the running average.
    pub momentum: f64,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        Self {
            eps: 1e-5,
            momentum: 0.1,
        }
    }
}

/// A batch-normalisation layer with learnable scale (`weight`) and shift (`bias`).
#[derive(Debug, Clone)]
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    num_batches_tracked: Var,
    num_features: usize,
    config: BatchNormConfig,
}

/// Builds a [`BatchNorm`] over `num_features` channels from `vb` (keys `weight`, `bias`,
/// `running_mean`, `running_var`, `num_batches_tracked`), initialised as PyTorch does: weight 1,
/// bias 0, running mean 0, running variance 1, counter 0.
pub fn batch_norm(
    num_features: usize,
    config: BatchNormConfig,
    vb: VarBuilder,
) -> Result<BatchNorm> {
    check_config(num_features, config)?;
    let weight = vb.get_with_hints(num_features, "weight", Init::Const(1.0))?;
    let bias = vb.get_with_hints(num_features, "bias", Init::Const(0.0))?;
    BatchNorm::with_buffers(weight, bias, config, &vb)
}

/// Builds a [`BatchNorm`] without learnable scale and shift (PyTorch's `affine=False`, e.g. the
/// last layer of the SimSiam projector): `vb` holds only the buffers `running_mean`,
/// `running_var` and `num_batches_tracked`; the scale is a constant 1 and the shift a constant 0.
pub fn batch_norm_no_affine(
    num_features: usize,
    config: BatchNormConfig,
    vb: VarBuilder,
) -> Result<BatchNorm> {
    check_config(num_features, config)?;
    // Constants outside the store: the fused kernel computes their gradients, nobody reads them.
    let weight = Tensor::ones(num_features, vb.dtype(), vb.device())?;
    let bias = Tensor::zeros(num_features, vb.dtype(), vb.device())?;
    BatchNorm::with_buffers(weight, bias, config, &vb)
}

fn check_config(num_features: usize, config: BatchNormConfig) -> Result<()> {
    if num_features == 0 || config.eps <= 0.0 || !(0.0..=1.0).contains(&config.momentum) {
        return Err(Error::InvalidArgument(format!(
            "batch norm needs num_features > 0, eps > 0 and momentum in [0, 1] \
             (got {num_features}, {}, {})",
            config.eps, config.momentum
        )));
    }
    Ok(())
}

impl BatchNorm {
    /// The layer with its running statistics from `vb`, for a scale and shift `[C]`.
    fn with_buffers(
        weight: Tensor,
        bias: Tensor,
        config: BatchNormConfig,
        vb: &VarBuilder,
    ) -> Result<Self> {
        let num_features = weight.elem_count();
        // The store hands out its variables' own tensors, so these `Var`s share storage with the
        // stored buffers: `set` updates the store (and any checkpoint taken from it) in place.
        let running_mean = Var::from_tensor(&vb.get_with_hints(
            num_features,
            "running_mean",
            Init::Const(0.0),
        )?)?;
        let running_var =
            Var::from_tensor(&vb.get_with_hints(num_features, "running_var", Init::Const(1.0))?)?;
        let num_batches_tracked = Var::from_tensor(&vb.get_with_hints_dtype(
            (),
            "num_batches_tracked",
            Init::Const(0.0),
            DType::I64,
        )?)?;
        Ok(Self {
            weight,
            bias,
            running_mean,
            running_var,
            num_batches_tracked,
            num_features,
            config,
        })
    }

    /// Number of channels.
    pub fn num_features(&self) -> usize {
        self.num_features
    }

    /// The hyper-parameters.
    pub fn config(&self) -> BatchNormConfig {
        self.config
    }

    /// The learnable scale `[C]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The learnable shift `[C]`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// The running mean `[C]` (a buffer of the store).
    pub fn running_mean(&self) -> &Tensor {
        self.running_mean.as_tensor()
    }

    /// The running variance `[C]` (a buffer of the store).
    pub fn running_var(&self) -> &Tensor {
        self.running_var.as_tensor()
    }

    /// How many train-mode forwards updated the running statistics (an `i64` scalar).
    pub fn num_batches_tracked(&self) -> &Tensor {
        self.num_batches_tracked.as_tensor()
    }

    /// The eval-mode transform as a per-channel affine map `y = x * scale + shift`, both `[C]`:
    /// `scale = weight / sqrt(running_var + eps)`, `shift = bias - running_mean * scale`.
    ///
    /// Differentiable with respect to `weight` and `bias`; the running statistics are constants.
    /// Used to fold the normalisation into a preceding convolution for inference.
    pub fn eval_scale_shift(&self) -> Result<(Tensor, Tensor)> {
        let inv_std = (self.running_var.as_tensor().detach() + self.config.eps)?
            .sqrt()?
            .recip()?;
        let scale = self.weight.mul(&inv_std)?;
        let shift = self
            .bias
            .sub(&self.running_mean.as_tensor().detach().mul(&scale)?)?;
        Ok((scale, shift))
    }

    /// Normalises `x`, with batch statistics when `train` (updating the running statistics) and
    /// with the running statistics otherwise.
    ///
    /// # Shapes
    /// `x`: `[N, C, *]` → `[N, C, *]`.
    ///
    /// # Errors
    /// When `x` has fewer than 2 dimensions, not `C` channels in dimension 1, or (in train mode)
    /// only one value per channel, where the variance is undefined (PyTorch refuses it too).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_impl(x, train, false)
    }

    /// `relu(self.forward_t(x, train))`, fused on the CPU in `f32` in train mode (the ReLU is
    /// applied while the output is written and its mask while the gradient is read, instead of
    /// separate element-wise operations with their own passes over memory in each direction).
    /// The gradient follows PyTorch's ReLU: it passes where the output is positive.
    ///
    /// # Shapes
    /// `x`: `[N, C, *]` → `[N, C, *]`.
    ///
    /// # Errors
    /// As [`Self::forward_t`].
    pub fn forward_t_relu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_impl(x, train, true)
    }

    fn forward_impl(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() < 2 || dims[1] != self.num_features {
            return Err(Error::InvalidArgument(format!(
                "batch norm over {} channels got an input of shape {dims:?}",
                self.num_features
            )));
        }
        // [C] reshaped to broadcast along dimension 1: [1, C, 1, ...].
        let mut channel_shape = vec![1usize; dims.len()];
        channel_shape[1] = self.num_features;
        if !train {
            let (scale, shift) = self.eval_scale_shift()?;
            let scale = scale.reshape(channel_shape.as_slice())?;
            let shift = shift.reshape(channel_shape.as_slice())?;
            let y = x.broadcast_mul(&scale)?.broadcast_add(&shift)?;
            return Ok(if relu { y.relu()? } else { y });
        }
        let count = x.elem_count() / self.num_features;
        if count < 2 {
            return Err(Error::InvalidArgument(format!(
                "batch norm in train mode needs more than one value per channel, got input \
                 shape {dims:?}"
            )));
        }
        if [x, &self.weight, &self.bias].iter().all(|t| fast_path(t)) {
            let (y, mean, var, count) =
                batch_norm_train(x, &self.weight, &self.bias, self.config.eps, relu)?;
            self.update_running(&mean, &var, count)?;
            return Ok(y);
        }
        if sync_batch_norm_active() {
            return Err(Error::InvalidArgument(format!(
                "synchronised batch norm is built for CPU f32 tensors, got {:?} {:?}",
                x.device().location(),
                x.dtype()
            )));
        }
        let y = self.forward_train_composed(x, &channel_shape, count)?;
        Ok(if relu { y.relu()? } else { y })
    }

    /// Train mode from differentiable tensor operations (any device and dtype).
    fn forward_train_composed(
        &self,
        x: &Tensor,
        channel_shape: &[usize],
        count: usize,
    ) -> Result<Tensor> {
        let reduce: Vec<usize> = (0..x.rank()).filter(|&d| d != 1).collect();
        let mean = x.mean_keepdim(reduce.as_slice())?; // [1, C, 1, ...]
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(reduce.as_slice())?; // biased, [1, C, 1, ...]
        let inv_std = (&var + self.config.eps)?.sqrt()?.recip()?;
        let y = centred
            .broadcast_mul(&inv_std)?
            .broadcast_mul(&self.weight.reshape(channel_shape)?)?
            .broadcast_add(&self.bias.reshape(channel_shape)?)?;
        self.update_running(&mean, &var, count)?;
        Ok(y)
    }

    /// `running = (1 - momentum) * running + momentum * batch`, with the unbiased variance.
    pub(crate) fn update_running(
        &self,
        mean: &Tensor,
        biased_var: &Tensor,
        count: usize,
    ) -> Result<()> {
        let m = self.config.momentum;
        let dtype = self.running_mean.dtype();
        let mean = mean.detach().flatten_all()?.to_dtype(dtype)?;
        let unbiased = (biased_var.detach().flatten_all()? * (count as f64 / (count - 1) as f64))?
            .to_dtype(dtype)?;
        let new_mean = ((self.running_mean.as_tensor().detach() * (1.0 - m))? + (mean * m)?)?;
        let new_var = ((self.running_var.as_tensor().detach() * (1.0 - m))? + (unbiased * m)?)?;
        self.running_mean.set(&new_mean)?;
        self.running_var.set(&new_var)?;
        let tracked = self.num_batches_tracked.as_tensor().detach();
        let one = Tensor::ones((), tracked.dtype(), tracked.device())?;
        self.num_batches_tracked.set(&tracked.add(&one)?)?;
        Ok(())
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        BatchNorm::forward_t(self, xs, train).map_err(into_candle_error)
    }
}

/// Turns our error back into candle's for the `Module` traits, unwrapping candle's own errors.
fn into_candle_error(err: Error) -> candle_core::Error {
    match err {
        Error::Candle(inner) => inner,
        other => candle_core::Error::wrap(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ParamStore;
    use crate::kernels::test_support::{PathValues, assert_paths_agree};
    use candle_core::{Device, IndexOp};

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all()
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_vec1())
            .expect("values")
    }

    #[test]
    fn train_mode_matches_hand_computation_and_updates_the_store() -> Result<()> {
        let store = ParamStore::new(0);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        let bn = batch_norm(2, BatchNormConfig::default(), vb.pp("bn"))?;
        // Channel 0 holds 1, 2, 3, 4; channel 1 holds 10, 10, 10, 14.
        let x = Tensor::new(
            &[[[1f32, 2.], [10., 10.]], [[3., 4.], [10., 14.]]],
            &Device::Cpu,
        )?;
        let y = bn.forward_t(&x, true)?;
        let var0: f32 = 1.25; // biased variance of 1..4
        let expected0 = (1.0 - 2.5) / (var0 + 1e-5).sqrt();
        assert!((values(&y.i((0, 0, 0))?)[0] - expected0).abs() < 1e-6);
        let rm = values(store.get("bn.running_mean").expect("buffer").as_tensor());
        let rv = values(store.get("bn.running_var").expect("buffer").as_tensor());
        assert!((rm[0] - 0.25).abs() < 1e-6 && (rm[1] - 1.1).abs() < 1e-6);
        // Unbiased variance of 1..4 is 5/3; of (10, 10, 10, 14) is 4.
        assert!((rv[0] - (0.9 + 0.1 * 5.0 / 3.0)).abs() < 1e-6);
        assert!((rv[1] - (0.9 + 0.4)).abs() < 1e-6);
        let tracked = store.get("bn.num_batches_tracked").expect("counter");
        assert_eq!(tracked.as_tensor().to_scalar::<i64>()?, 1);
        // Eval mode now uses the updated running statistics.
        let y = bn.forward_t(&x, false)?;
        let expected = (1.0 - rm[0]) / (rv[0] + 1e-5).sqrt();
        assert!((values(&y)[0] - expected).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn fused_and_composed_train_paths_agree() -> Result<()> {
        for relu in [false, true] {
            fused_and_composed_train_paths_agree_with(relu)?;
        }
        Ok(())
    }

    /// The fused kernel (with its ReLU when `relu`) against candle's composed operations (then
    /// candle's ReLU): outputs, input and parameter gradients, running statistics.
    fn fused_and_composed_train_paths_agree_with(relu: bool) -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::rng::SplitMix64::new(8);
        let (n, c, h, w) = (3, 4, 5, 6);
        let data: Vec<f32> = (0..n * c * h * w)
            .map(|_| (rng.next_normal() * 3.0 + 1.0) as f32)
            .collect();
        let r: Vec<f32> = (0..n * c * h * w)
            .map(|_| rng.next_normal() as f32)
            .collect();
        let r = Tensor::from_vec(r, (n, c, h, w), &dev)?;
        let run = |fused: bool| -> Result<PathValues> {
            let store = ParamStore::new(1);
            let vb = store.var_builder(DType::F32, &dev);
            let bn = batch_norm(c, BatchNormConfig::default(), vb)?;
            store
                .get("weight")
                .ok_or(Error::InvalidArgument("weight".into()))?
                .set(&Tensor::new(&[0.5f32, 1.5, -1.0, 2.0], &dev)?)?;
            let x = Var::from_tensor(&Tensor::from_vec(data.clone(), (n, c, h, w), &dev)?)?;
            let y = match (fused, relu) {
                (true, false) => bn.forward_t(x.as_tensor(), true)?,
                (true, true) => bn.forward_t_relu(x.as_tensor(), true)?,
                (false, _) => {
                    let y = bn.forward_train_composed(x.as_tensor(), &[1, c, 1, 1], n * h * w)?;
                    if relu { y.relu()? } else { y }
                }
            };
            // (y² + y)·r: the upstream gradient (2y + 1)·r is not zero where a ReLU cut y to 0,
            // so the gate on the gradient is tested too.
            let grads = ((y.sqr()? + &y)? * &r)?.sum_all()?.backward()?;
            let mut out = vec![values(grads.get(x.as_tensor()).expect("dx"))];
            for name in ["weight", "bias", "running_mean", "running_var"] {
                let var = store.get(name).expect("var");
                out.push(match grads.get(var.as_tensor()) {
                    Some(g) => values(g),
                    None => values(var.as_tensor()),
                });
            }
            Ok((values(&y), out))
        };
        let what = if relu {
            "batch norm + ReLU"
        } else {
            "batch norm"
        };
        assert_paths_agree(&run(true)?, &run(false)?, 1e-5, what);
        Ok(())
    }

    #[test]
    fn without_affine_only_buffers_are_stored_and_the_input_gets_a_gradient() -> Result<()> {
        let store = ParamStore::new(0);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        let bn = batch_norm_no_affine(2, BatchNormConfig::default(), vb.pp("bn"))?;
        let names: Vec<String> = store.named_vars().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "bn.num_batches_tracked",
                "bn.running_mean",
                "bn.running_var"
            ]
        );
        assert!(store.trainable_vars().is_empty());
        let x = Var::from_tensor(&Tensor::new(&[[1f32, 10.], [3., 14.]], &Device::Cpu)?)?;
        let y = bn.forward_t(x.as_tensor(), true)?;
        // (x - mean) / sqrt(biased var + eps): ±1 up to eps in both channels.
        for (v, e) in values(&y).iter().zip([-1f32, -1., 1., 1.]) {
            assert!((v - e).abs() < 1e-4, "{v} vs {e}");
        }
        let grads = (y.i((0, 0))? * 2.0)?.backward()?;
        assert!(grads.get(x.as_tensor()).is_some());
        let rm = values(store.get("bn.running_mean").expect("buffer").as_tensor());
        assert!((rm[0] - 0.2).abs() < 1e-6 && (rm[1] - 1.2).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn a_single_value_per_channel_is_refused_in_train_mode() -> Result<()> {
        let store = ParamStore::new(0);
        let bn = batch_norm(
            3,
            BatchNormConfig::default(),
            store.var_builder(DType::F32, &Device::Cpu),
        )?;
        let x = Tensor::zeros((1, 3), DType::F32, &Device::Cpu)?;
        assert!(bn.forward_t(&x, true).is_err());
        assert!(bn.forward_t(&x, false).is_ok());
        assert!(
            bn.forward_t(&Tensor::zeros((2, 4), DType::F32, &Device::Cpu)?, false)
                .is_err()
        );
        Ok(())
    }
}

//! The CLIP loss of the multimodal stage.

use candle_core::{DType, Tensor};

use crate::{Error, Result, cross_entropy, l2_normalize_rows};

/// What [`ClipLoss::forward`] returns.
#[derive(Debug, Clone)]
pub struct ClipOutput {
    /// The scalar loss.
    pub loss: Tensor,
    /// `norm(z_a) · norm(z_b)ᵀ / τ`, `[N, N]`: row i holds the similarities of sample i of the first
    /// modality to every sample of the second.
    pub logits: Tensor,
    /// `0..N` (u32): the matching pairs lie on the diagonal.
    pub labels: Tensor,
}

/// `loss = λ·CE(logits, arange) + (1−λ)·CE(logitsᵀ, arange)` with
/// `logits = norm(z_a)·norm(z_b)ᵀ / τ` (the reference's `CLIPLoss`; the paper uses τ = 0.1,
/// λ = 0.5, with `z_a` the imaging and `z_b` the ECG projections).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipLoss {
    temperature: f64,
    lambda: f64,
}

impl ClipLoss {
    /// A loss with temperature `temperature` (> 0) and direction weight `lambda` in `[0, 1]`.
    pub fn new(temperature: f64, lambda: f64) -> Result<Self> {
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "CLIP temperature must be positive, got {temperature}"
            )));
        }
        if !(0.0..=1.0).contains(&lambda) {
            return Err(Error::InvalidArgument(format!(
                "CLIP lambda must lie in [0, 1], got {lambda}"
            )));
        }
        Ok(Self {
            temperature,
            lambda,
        })
    }

    /// The temperature τ.
    pub fn temperature(&self) -> f64 {
        self.temperature
    }

    /// The weight λ of the first direction.
    pub fn lambda(&self) -> f64 {
        self.lambda
    }

    /// Loss, logits and labels for a batch of paired projections.
    ///
    /// # Shapes
    /// `z_a`, `z_b`: `[N, D]` → loss scalar, logits `[N, N]`, labels `[N]`
    pub fn forward(&self, z_a: &Tensor, z_b: &Tensor) -> Result<ClipOutput> {
        if z_a.dims() != z_b.dims() || z_a.rank() != 2 {
            return Err(Error::InvalidArgument(format!(
                "CLIP needs two [N, D] batches of the same shape, got {:?} and {:?}",
                z_a.dims(),
                z_b.dims()
            )));
        }
        let n = z_a.dim(0)?;
        let a = l2_normalize_rows(z_a)?;
        let b = l2_normalize_rows(z_b)?;
        let logits = a.matmul(&b.t()?)?.affine(1.0 / self.temperature, 0.0)?; // [N, N]
        let labels = Tensor::arange(0u32, n as u32, z_a.device())?;
        let forward = cross_entropy(&logits, &labels)?;
        let backward = cross_entropy(&logits.t()?.contiguous()?, &labels)?;
        let loss =
            (forward.affine(self.lambda, 0.0)? + backward.affine(1.0 - self.lambda, 0.0)?)?;
        Ok(ClipOutput {
            loss: loss.to_dtype(DType::F32)?,
            logits,
            labels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use mmcl_testutil::{Fixture, Tolerance, assert_close, assert_grad_close};

    #[test]
    fn parity_with_reference_clip_loss() -> Result<()> {
        let Some(io) = Fixture::load("clip_loss.io") else {
            return Ok(());
        };
        let temperature = io.meta("temperature").as_f64().unwrap_or(f64::NAN);
        let lambda = io.meta("lambda_0").as_f64().unwrap_or(f64::NAN);
        let z_img = Var::from_tensor(&io.tensor("z_imaging"))?;
        let z_ecg = Var::from_tensor(&io.tensor("z_ecg"))?;
        let out = ClipLoss::new(temperature, lambda)?.forward(&z_img, &z_ecg)?;
        assert_close(
            "logits",
            &out.logits,
            &io.tensor("logits"),
            Tolerance::FORWARD,
        );
        assert_close(
            "loss",
            &out.loss.reshape(1)?,
            &io.tensor("loss"),
            Tolerance::LOSS,
        );
        let grads = out.loss.backward()?;
        let g_img = grads
            .get(&z_img)
            .ok_or(Error::InvalidArgument("no grad".into()))?;
        let g_ecg = grads
            .get(&z_ecg)
            .ok_or(Error::InvalidArgument("no grad".into()))?;
        assert_grad_close("grad_z_imaging", g_img, &io.tensor("grad_z_imaging"), 1e-3);
        assert_grad_close("grad_z_ecg", g_ecg, &io.tensor("grad_z_ecg"), 1e-3);
        Ok(())
    }

    #[test]
    fn perfect_alignment_gives_low_loss_and_bad_arguments_fail() -> Result<()> {
        let dev = Device::Cpu;
        let z = Tensor::eye(4, DType::F32, &dev)?;
        let out = ClipLoss::new(0.1, 0.5)?.forward(&z, &z)?;
        let loss = out.loss.to_scalar::<f32>()?;
        // Each row: log(1 + 3 e^{-10}) ≈ 1.36e-4.
        assert!(
            (loss - (1.0f32 + 3.0 * (-10f32).exp()).ln()).abs() < 1e-6,
            "{loss}"
        );
        assert!(ClipLoss::new(0.0, 0.5).is_err());
        assert!(ClipLoss::new(0.1, 1.5).is_err());
        let other = Tensor::zeros((3, 4), DType::F32, &dev)?;
        assert!(ClipLoss::new(0.1, 0.5)?.forward(&z, &other).is_err());
        Ok(())
    }
}

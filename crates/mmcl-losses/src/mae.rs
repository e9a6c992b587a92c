//! The masked-autoencoder objective of the paper's first stage (the mae repo's
//! `MaskedAutoencoderViT.forward_loss` plus the SimSiam term of `engine_pretrain.py`).
//!
//! - **Reconstruction** ([`ReconstructionTarget::AllPatches`], the reference): the mean squared
//!   error between the predicted patches and the normalised-pixel targets (each patch minus its
//!   mean, over `sqrt(unbiased variance + 1e-6)`) over **all** patches, computed as
//!   `sum / (numel + 1e-5)`, mixed with the normalised cross-correlation of the whole
//!   reconstructed signal: `loss = (1 − ncc_weight)·MSE + ncc_weight·(1 − NCC)`.
//!   [`ReconstructionTarget::MaskedPatches`] is the classic MAE loss: the MSE over the removed
//!   patches only, without the NCC term (`ncc_weight` is then unused; the NCC is still
//!   reported).
//! - **SimSiam term**: a second, independently masked view of the batch goes through the
//!   encoder; with `z` the mean patch token of each view, `p = projector(z)`, `h =
//!   predictor(p)`: `loss_cos = −(cos(h₁, sg(p₂)) + cos(h₂, sg(p₁))) / 2` (`sg` = stop-gradient).
//! - **Total** (what is back-propagated): `loss + cos_weight·loss_cos`; the paper's setting is
//!   mask ratio 0.8, `ncc_weight` 0.1, `cos_weight` 0.1.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use mmcl_ecg::mae::{MaeConfig, MaskedAutoencoder};
//! use mmcl_losses::mae::{MaeLoss, MaeLossConfig};
//! use mmcl_nn::rng::SharedRng;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = MaeConfig::preset("mae_vit_pluto_patchX", [1, 12, 500], [1, 100])?;
//! let (mae, store) = MaskedAutoencoder::from_seed(&cfg, 0, &Device::Cpu)?;
//! let objective = MaeLoss::new(MaeLossConfig::paper())?;
//! let ecg = Tensor::randn(0f32, 1.0, (4, 1, 12, 500), &Device::Cpu)?;
//! let rng = SharedRng::new(1); // draws both views' maskings; its state goes into checkpoints
//! let out = objective.forward_random(&mae, &ecg, &rng, true)?;
//! let grads = out.total.backward()?; // for the optimiser
//! let metrics = out.metrics()?; // loss, mse, ncc, loss_cos, cos_embed, z_std for the logs
//! assert!(metrics.total.is_finite() && metrics.loss_cos.is_some());
//! # let _ = (grads, store);
//! # Ok(())
//! # }
//! ```

use candle_core::backprop::GradStore;
use candle_core::{D, DType, Tensor, Var};
use mmcl_ecg::mae::{MaeOutput, MaskedAutoencoder, Masking, SimSiamOutput};
use mmcl_nn::rng::SharedRng;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Which patches the squared error is averaged over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconstructionTarget {
    /// Every patch, `sum / (numel + 1e-5)` (the reference code the paper ran).
    #[default]
    AllPatches,
    /// The removed patches only: per-patch mean, then the mean over removed patches, and no NCC
    /// term (the original MAE loss).
    MaskedPatches,
}

/// The objective's hyper-parameters (the reference's command-line arguments).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaeLossConfig {
    /// Fraction of patches removed from each view.
    pub mask_ratio: f64,
    /// Whether targets are normalised per patch (`--norm_pix_loss`).
    pub norm_pix_loss: bool,
    /// Weight of `1 − NCC` against the squared error (all-patch target only).
    pub ncc_weight: f64,
    /// Weight of the SimSiam term; 0 skips the second view entirely.
    pub cos_weight: f64,
    /// Which patches the squared error covers.
    pub target: ReconstructionTarget,
}

impl Default for MaeLossConfig {
    fn default() -> Self {
        Self::paper()
    }
}

impl MaeLossConfig {
    /// The paper's setting: mask ratio 0.8, normalised-pixel targets over all patches,
    /// `ncc_weight` 0.1, `cos_weight` 0.1.
    pub fn paper() -> Self {
        Self {
            mask_ratio: 0.8,
            norm_pix_loss: true,
            ncc_weight: 0.1,
            cos_weight: 0.1,
            target: ReconstructionTarget::AllPatches,
        }
    }

    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::InvalidArgument(why));
        if !(0.0..1.0).contains(&self.mask_ratio) {
            return bad(format!(
                "mask_ratio must lie in [0, 1), got {}",
                self.mask_ratio
            ));
        }
        if !(0.0..=1.0).contains(&self.ncc_weight) {
            return bad(format!(
                "ncc_weight must lie in [0, 1], got {}",
                self.ncc_weight
            ));
        }
        if !(self.cos_weight.is_finite() && self.cos_weight >= 0.0) {
            return bad(format!("cos_weight must be >= 0, got {}", self.cos_weight));
        }
        Ok(())
    }
}

/// The reconstruction part of the loss.
#[derive(Debug, Clone)]
pub struct Reconstruction {
    /// `(1 − ncc_weight)·mse + ncc_weight·(1 − ncc)` over all patches, or the masked-patch
    /// `mse` alone ([`ReconstructionTarget`]), scalar.
    pub loss: Tensor,
    /// The squared error over the configured patches, scalar.
    pub mse: Tensor,
    /// The mean normalised cross-correlation of reconstructed and input signals, scalar.
    pub ncc: Tensor,
}

/// Everything one step of the objective produces.
#[derive(Debug, Clone)]
pub struct MaeLossOutput {
    /// `loss + cos_weight·loss_cos`: back-propagate this.
    pub total: Tensor,
    /// The reference's `loss` (reconstruction), scalar.
    pub loss: Tensor,
    /// Its squared-error part, scalar.
    pub mse: Tensor,
    /// Its normalised cross-correlation, scalar (the reference logs it as `ncc`).
    pub ncc: Tensor,
    /// The SimSiam term, scalar (absent when `cos_weight` is 0).
    pub loss_cos: Option<Tensor>,
    /// Mean cosine similarity of the two views' pooled embeddings (detached, for logs).
    pub cos_embed: Option<Tensor>,
    /// Spread of the L2-normalised pooled embeddings: mean per-feature standard deviation
    /// times `sqrt(D)` (detached; about 1 when not collapsed).
    pub z_std: Option<Tensor>,
    /// Latent, mask, ids_restore and prediction of the first view.
    pub output: MaeOutput,
}

/// [`MaeLossOutput`] as numbers, for logs (one batch's, or means over a phase).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MaeMetrics {
    /// The back-propagated total.
    pub total: f64,
    /// The reconstruction loss.
    pub loss: f64,
    /// Its squared error.
    pub mse: f64,
    /// Its normalised cross-correlation.
    pub ncc: f64,
    /// The SimSiam term.
    pub loss_cos: Option<f64>,
    /// Cosine similarity of the views' embeddings.
    pub cos_embed: Option<f64>,
    /// Spread of the normalised embeddings.
    pub z_std: Option<f64>,
}

impl MaeMetrics {
    /// The values as `(name, value)` pairs for a run log; absent optional terms are left out.
    pub fn record(&self) -> Vec<(&'static str, f64)> {
        let mut out = vec![
            ("loss", self.loss),
            ("total", self.total),
            ("mse", self.mse),
            ("ncc", self.ncc),
        ];
        for (k, v) in [
            ("loss_cos", self.loss_cos),
            ("cos_embed", self.cos_embed),
            ("z_std", self.z_std),
        ] {
            if let Some(v) = v {
                out.push((k, v));
            }
        }
        out
    }
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?[0])
}

fn opt_scalar(t: &Option<Tensor>) -> Result<Option<f64>> {
    t.as_ref().map(scalar).transpose()
}

impl MaeLossOutput {
    /// The scalars, read back to the host.
    pub fn metrics(&self) -> Result<MaeMetrics> {
        Ok(MaeMetrics {
            total: scalar(&self.total)?,
            loss: scalar(&self.loss)?,
            mse: scalar(&self.mse)?,
            ncc: scalar(&self.ncc)?,
            loss_cos: opt_scalar(&self.loss_cos)?,
            cos_embed: opt_scalar(&self.cos_embed)?,
            z_std: opt_scalar(&self.z_std)?,
        })
    }
}

/// The objective; see the [module documentation](self).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaeLoss {
    cfg: MaeLossConfig,
}

/// `(x − mean) / sqrt(var + eps)` over the last dimension, with the unbiased variance (as
/// `torch.var`).
///
/// # Shapes
/// `[.., n]` → `[.., n]`, `n ≥ 2`.
pub fn standardize_last_dim(x: &Tensor, eps: f64) -> Result<Tensor> {
    let n = x.dim(D::Minus1)?;
    if n < 2 {
        return Err(Error::InvalidArgument(format!(
            "the unbiased variance needs at least 2 values along the last dimension of {:?}",
            x.dims()
        )));
    }
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = (centred.sqr()?.sum_keepdim(D::Minus1)? / (n - 1) as f64)?; // [.., 1]
    Ok(centred.broadcast_div(&(var + eps)?.sqrt()?)?)
}

/// `torch.nn.CosineSimilarity(dim=1, eps=1e-8)`: each row divided by `max(‖row‖, eps)`, then
/// the dot product.
///
/// # Shapes
/// `a`, `b`: `[N, D]` → `[N]`.
pub fn cosine_similarity(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    const EPS: f64 = 1e-8;
    let unit = |x: &Tensor| -> Result<Tensor> {
        // sqrt(max(‖x‖², eps²)) = max(‖x‖, eps), but without the infinite derivative of the
        // square root at a zero row (which a ReLU before the last layer can produce): there the
        // clamp is active and no gradient reaches the square.
        let norm = x.sqr()?.sum_keepdim(1)?.maximum(EPS * EPS)?.sqrt()?; // [N, 1]
        Ok(x.broadcast_div(&norm)?)
    };
    Ok((unit(a)? * unit(b)?)?.sum(1)?)
}

impl MaeLoss {
    /// An objective with `cfg` (checked).
    pub fn new(cfg: MaeLossConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self { cfg })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &MaeLossConfig {
        &self.cfg
    }

    /// The reconstruction loss of a prediction (the reference's `forward_loss`).
    ///
    /// # Shapes
    /// `imgs`: `[B, C, H, W]`, `pred`: `[B, L, ph·pw·C]`, `mask`: `[B, L]` → scalars.
    pub fn reconstruction(
        &self,
        model: &MaskedAutoencoder,
        imgs: &Tensor,
        pred: &Tensor,
        mask: &Tensor,
    ) -> Result<Reconstruction> {
        let patches = model.patchify(imgs)?.detach(); // [B, L, P]
        if patches.dims() != pred.dims() {
            return Err(Error::InvalidArgument(format!(
                "prediction of shape {:?} for targets of shape {:?}",
                pred.dims(),
                patches.dims()
            )));
        }
        let target = if self.cfg.norm_pix_loss {
            standardize_last_dim(&patches, 1e-6)?
        } else {
            patches
        };
        let sq = (pred - target.to_dtype(pred.dtype())?)?.sqr()?; // [B, L, P]
        let mse = match self.cfg.target {
            ReconstructionTarget::AllPatches => (sq.sum_all()? / (sq.elem_count() as f64 + 1e-5))?,
            ReconstructionTarget::MaskedPatches => {
                let per_patch = sq.mean(D::Minus1)?; // [B, L]
                let mask = mask.to_dtype(per_patch.dtype())?;
                let removed = mask.sum_all()?;
                (per_patch * &mask)?.sum_all()?.broadcast_div(&removed)?
            }
        };
        let ncc = self.ncc(model, imgs, pred)?;
        let loss = match self.cfg.target {
            ReconstructionTarget::AllPatches => {
                let w = self.cfg.ncc_weight;
                (mse.affine(1.0 - w, 0.0)? + ncc.affine(-w, w)?)?
            }
            ReconstructionTarget::MaskedPatches => mse.clone(),
        };
        Ok(Reconstruction { loss, mse, ncc })
    }

    /// The mean normalised cross-correlation of each reconstructed lead (`unpatchify(pred)`)
    /// with the input, over the time axis: `Σ(norm(x)·norm(x̂)) / (T − 1)` averaged over
    /// samples, channels and leads (the reference's `ncc`).
    ///
    /// # Shapes
    /// `imgs`: `[B, C, H, W]`, `pred`: `[B, L, P]` → scalar.
    pub fn ncc(&self, model: &MaskedAutoencoder, imgs: &Tensor, pred: &Tensor) -> Result<Tensor> {
        let recon = model.unpatchify(pred)?; // [B, C, H', W']
        let (b, c, h, w) = recon.dims4()?;
        // The region the patches cover (all of it when the size is a multiple of the patch).
        let x = model
            .encoder()
            .check_input(imgs)?
            .narrow(2, 0, h)?
            .narrow(3, 0, w)?
            .detach();
        let x = standardize_last_dim(&x, 1e-12)?.to_dtype(recon.dtype())?;
        let r = standardize_last_dim(&recon, 1e-12)?;
        let cross = (x * r)?.sum_all()?; // Σ over every lead and time step
        Ok((cross / ((w - 1) as f64 * (b * c * h) as f64))?)
    }

    /// The SimSiam term of two views: `−(cos(h₁, sg(p₂)) + cos(h₂, sg(p₁))) / 2`, batch means.
    pub fn cosine_term(view1: &SimSiamOutput, view2: &SimSiamOutput) -> Result<Tensor> {
        let a = cosine_similarity(&view1.h, &view2.p.detach())?.mean_all()?;
        let b = cosine_similarity(&view2.h, &view1.p.detach())?.mean_all()?;
        Ok(((a + b)? * -0.5)?)
    }

    /// The full objective with the given maskings of the two views (`second` is required when
    /// `cos_weight > 0`, ignored otherwise). `train` selects batch statistics in the SimSiam
    /// heads' BatchNorm layers (the encoder and decoder have no train-only layers).
    ///
    /// # Shapes
    /// `imgs`: `[B, C, H, W]` (`B ≥ 2` in train mode when `cos_weight > 0`) → scalars.
    pub fn forward(
        &self,
        model: &MaskedAutoencoder,
        imgs: &Tensor,
        first: &Masking,
        second: Option<&Masking>,
        train: bool,
    ) -> Result<MaeLossOutput> {
        // The patch embedding is shared by both views (the reference computes it twice).
        let tokens = model.embed_patches(imgs)?; // [B, L, D]
        let latent = model.encode_masked(&tokens, first, train)?; // [B, 1 + K, D]
        let pred = model.forward_decoder(&latent, first, train)?; // [B, L, P]
        let device = imgs.device();
        let mask = first.mask(device)?;
        let rec = self.reconstruction(model, imgs, &pred, &mask)?;
        let (total, loss_cos, cos_embed, z_std) = if self.cfg.cos_weight > 0.0 {
            let second = second.ok_or_else(|| {
                Error::InvalidArgument(
                    "the SimSiam term (cos_weight > 0) needs the masking of a second view".into(),
                )
            })?;
            let latent2 = model.encode_masked(&tokens, second, train)?;
            let v1 = model.simsiam(&latent, train)?;
            let v2 = model.simsiam(&latent2, train)?;
            let loss_cos = Self::cosine_term(&v1, &v2)?;
            let total = (&rec.loss + loss_cos.affine(self.cfg.cos_weight, 0.0)?)?;
            let (z1, z2) = (v1.z.detach(), v2.z.detach());
            let cos_embed = cosine_similarity(&z1, &z2)?.mean_all()?;
            (
                total,
                Some(loss_cos),
                Some(cos_embed),
                Some(embedding_spread(&z1)?),
            )
        } else {
            (rec.loss.clone(), None, None, None)
        };
        Ok(MaeLossOutput {
            total,
            loss: rec.loss,
            mse: rec.mse,
            ncc: rec.ncc,
            loss_cos,
            cos_embed,
            z_std,
            output: MaeOutput {
                latent,
                mask,
                ids_restore: first.ids_restore(device)?,
                pred,
            },
        })
    }

    /// [`Self::forward`] with both maskings drawn from `rng` (first view, then second): the
    /// call a training loop makes for each batch.
    pub fn forward_random(
        &self,
        model: &MaskedAutoencoder,
        imgs: &Tensor,
        rng: &SharedRng,
        train: bool,
    ) -> Result<MaeLossOutput> {
        let (first, second) = self.draw_maskings(model, imgs, rng)?;
        self.forward(model, imgs, &first, second.as_ref(), train)
    }

    /// Both views' maskings for `imgs` from `rng` (the second only with the SimSiam term).
    fn draw_maskings(
        &self,
        model: &MaskedAutoencoder,
        imgs: &Tensor,
        rng: &SharedRng,
    ) -> Result<(Masking, Option<Masking>)> {
        let b = imgs.dim(0)?;
        let l = model.config().num_patches();
        let first = Masking::random(rng, b, l, self.cfg.mask_ratio)?;
        let second = if self.cfg.cos_weight > 0.0 {
            Some(Masking::random(rng, b, l, self.cfg.mask_ratio)?)
        } else {
            None
        };
        Ok((first, second))
    }

    /// [`Self::forward`] in training mode and the gradients of its total, with the two views
    /// run side by side: the first view's encoder and the decoder on one of rayon's threads
    /// while the second view's encoder runs on another, forward and backward, each thread
    /// taking work from the other's products when its own view waits. The loss and every
    /// gradient are those of `forward(..).total.backward()` bit for bit: the objective is
    /// differentiated first down to copies of the prediction and the latents, each view then
    /// from there, and the shared patch embedding last from the sum of the views' gradients
    /// (every value shared by the two views receives two gradients, whose sum does not depend
    /// on their order). Without the SimSiam term there is one view, and off the CPU (where the
    /// operations queue on the device's stream from one thread) both views, run as `forward`
    /// runs them.
    ///
    /// The model must draw no random numbers in training (the MAE has no dropout or
    /// drop-path), and the views run on rayon's threads: the [`Precision`] the calling thread
    /// entered is carried over, a data-parallel group's SyncBatchNorm is not.
    ///
    /// [`Precision`]: mmcl_nn::precision::Precision
    pub fn forward_backward(
        &self,
        model: &MaskedAutoencoder,
        imgs: &Tensor,
        first: &Masking,
        second: Option<&Masking>,
    ) -> Result<(MaeLossOutput, GradStore)> {
        let second = match second {
            Some(second) if self.cfg.cos_weight > 0.0 && imgs.device().is_cpu() => second,
            _ => {
                let out = self.forward(model, imgs, first, second, true)?;
                let grads = out.total.backward()?;
                return Ok((out, grads));
            }
        };
        let precision = mmcl_nn::precision::matmul_precision();
        let tokens = model.embed_patches(imgs)?; // [B, L, D]
        // Each tensor below whose name ends in `_end` is a copy at which a backward pass stops.
        let tokens_end = Var::from_tensor(&tokens.detach())?;
        let (view1, latent2) = rayon::join(
            || -> Result<(Tensor, Tensor)> {
                let _precision = precision.enter();
                let latent = model.encode_masked(tokens_end.as_tensor(), first, true)?;
                let pred = model.forward_decoder(&latent, first, true)?;
                Ok((latent, pred))
            },
            || {
                let _precision = precision.enter();
                model.encode_masked(tokens_end.as_tensor(), second, true)
            },
        );
        let ((latent, pred), latent2) = (view1?, latent2?);
        let [latent_end, pred_end, latent2_end] =
            [&latent, &pred, &latent2].map(|t| Var::from_tensor(&t.detach()));
        let (latent_end, pred_end, latent2_end) = (latent_end?, pred_end?, latent2_end?);
        let device = imgs.device();
        let mask = first.mask(device)?;
        let rec = self.reconstruction(model, imgs, pred_end.as_tensor(), &mask)?;
        let v1 = model.simsiam(latent_end.as_tensor(), true)?;
        let v2 = model.simsiam(latent2_end.as_tensor(), true)?;
        let loss_cos = Self::cosine_term(&v1, &v2)?;
        let total = (&rec.loss + loss_cos.affine(self.cfg.cos_weight, 0.0)?)?;
        let mut grads = total.backward()?;

        let upstream = |end: &Var| -> Result<Tensor> {
            grads.get(end.as_tensor()).cloned().ok_or_else(|| {
                Error::InvalidArgument("the objective does not depend on a view".into())
            })
        };
        // `Σ t·g` hands `t` the gradient `g` itself (a product with ones).
        let from = |t: &Tensor, g: Tensor| -> Result<Tensor> { Ok((t * g)?.sum_all()?) };
        let roots = [
            (from(&pred, upstream(&pred_end)?)? + from(&latent, upstream(&latent_end)?)?)?,
            from(&latent2, upstream(&latent2_end)?)?,
        ];
        let backward = |root: &Tensor| -> Result<GradStore> {
            let _precision = precision.enter();
            Ok(root.backward()?)
        };
        let (grads1, grads2) = rayon::join(|| backward(&roots[0]), || backward(&roots[1]));
        let (grads1, grads2) = (grads1?, grads2?);
        let shared = |g: &GradStore| -> Result<Tensor> {
            g.get(tokens_end.as_tensor()).cloned().ok_or_else(|| {
                Error::InvalidArgument("a view does not depend on the patch tokens".into())
            })
        };
        let tokens_grad = (shared(&grads1)? + shared(&grads2)?)?;
        grads.extend(grads1)?;
        grads.extend(grads2)?;
        grads.extend(from(&tokens, tokens_grad)?.backward()?)?;

        let (z1, z2) = (v1.z.detach(), v2.z.detach());
        let cos_embed = cosine_similarity(&z1, &z2)?.mean_all()?;
        let out = MaeLossOutput {
            total,
            loss: rec.loss,
            mse: rec.mse,
            ncc: rec.ncc,
            loss_cos: Some(loss_cos),
            cos_embed: Some(cos_embed),
            z_std: Some(embedding_spread(&z1)?),
            output: MaeOutput {
                latent,
                mask,
                ids_restore: first.ids_restore(device)?,
                pred,
            },
        };
        Ok((out, grads))
    }

    /// [`Self::forward_backward`] with both maskings drawn from `rng`, as
    /// [`Self::forward_random`] draws them.
    pub fn forward_backward_random(
        &self,
        model: &MaskedAutoencoder,
        imgs: &Tensor,
        rng: &SharedRng,
    ) -> Result<(MaeLossOutput, GradStore)> {
        let (first, second) = self.draw_maskings(model, imgs, rng)?;
        self.forward_backward(model, imgs, &first, second.as_ref())
    }
}

/// `normalize(z, dim=-1).std(dim=0).mean() · sqrt(D)` (the reference's `z_std`); NaN for one
/// sample.
fn embedding_spread(z: &Tensor) -> Result<Tensor> {
    let (n, d) = z.dims2()?;
    let unit = crate::l2_normalize_rows(z)?;
    let centred = unit.broadcast_sub(&unit.mean_keepdim(0)?)?;
    let var = (centred.sqr()?.sum(0)? / (n as f64 - 1.0))?; // [D]
    Ok((var.sqrt()?.mean_all()? * (d as f64).sqrt())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn configuration_is_checked_and_reads_from_json() {
        assert!(MaeLoss::new(MaeLossConfig::paper()).is_ok());
        let bad = MaeLossConfig {
            mask_ratio: 1.0,
            ..MaeLossConfig::paper()
        };
        assert!(MaeLoss::new(bad).is_err());
        let cfg: MaeLossConfig =
            serde_json::from_str(r#"{"cos_weight": 0.0, "target": "masked_patches"}"#)
                .expect("parse");
        assert_eq!(cfg.mask_ratio, 0.8);
        assert_eq!(cfg.target, ReconstructionTarget::MaskedPatches);
        assert!(serde_json::from_str::<MaeLossConfig>(r#"{"cos_weigth": 0.1}"#).is_err());
    }

    #[test]
    fn cosine_similarity_matches_hand_values() -> Result<()> {
        let a = Tensor::new(&[[1f32, 0.], [3., 4.], [0., 0.]], &Device::Cpu)?;
        let b = Tensor::new(&[[0f32, 2.], [6., 8.], [1., 1.]], &Device::Cpu)?;
        let c = cosine_similarity(&a, &b)?.to_vec1::<f32>()?;
        assert!(c[0].abs() < 1e-7 && (c[1] - 1.0).abs() < 1e-6 && c[2] == 0.0);
        Ok(())
    }

    #[test]
    fn a_zero_row_has_similarity_zero_and_a_finite_gradient() -> Result<()> {
        let a =
            candle_core::Var::from_tensor(&Tensor::new(&[[0f32, 0.], [1., 2.]], &Device::Cpu)?)?;
        let b = Tensor::new(&[[1f32, 1.], [2., 4.]], &Device::Cpu)?;
        let c = cosine_similarity(a.as_tensor(), &b)?;
        assert_eq!(c.to_vec1::<f32>()?[0], 0.0);
        let g = c.sum_all()?.backward()?;
        let g = g
            .get(a.as_tensor())
            .expect("gradient")
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
        Ok(())
    }

    #[test]
    fn standardisation_uses_the_unbiased_variance() -> Result<()> {
        let x = Tensor::new(&[[1f32, 2., 3.]], &Device::Cpu)?;
        let y = standardize_last_dim(&x, 0.0)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(y, vec![-1.0, 0.0, 1.0]);
        assert!(standardize_last_dim(&Tensor::new(&[[1f32]], &Device::Cpu)?, 0.0).is_err());
        Ok(())
    }
}

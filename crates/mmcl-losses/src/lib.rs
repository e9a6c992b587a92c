//! Every loss of the workspace: CLIP and NT-Xent for multimodal contrastive learning (with
//! retrieval accuracies from their logits), the masked autoencoder's objective, and the
//! supervised criteria of the online classifier and of fine-tuning ([`classification`]).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use mmcl_losses::clip::ClipLoss;
//!
//! # fn main() -> mmcl_losses::Result<()> {
//! let dev = Device::Cpu;
//! let z_imaging = Tensor::randn(0f32, 1.0, (8, 16), &dev)?;
//! let z_ecg = Tensor::randn(0f32, 1.0, (8, 16), &dev)?;
//! // The paper's setting: temperature 0.1, both directions weighted 0.5.
//! let out = ClipLoss::new(0.1, 0.5)?.forward(&z_imaging, &z_ecg)?;
//! assert_eq!(out.logits.dims(), &[8, 8]);
//! let (top1, top5) = mmcl_losses::retrieval::top1_top5(&out.logits, &out.labels)?;
//! assert!((0.0..=1.0).contains(&top1) && top1 <= top5);
//! # Ok(())
//! # }
//! ```

pub mod classification;
pub mod clip;
mod error;
pub mod mae;
pub mod ntxent;
pub mod retrieval;

pub use error::{Error, Result};

use candle_core::{D, Tensor};

/// `torch.nn.functional.normalize(x, dim=1)`: rows divided by `max(‖row‖₂, 1e-12)`.
///
/// # Shapes
/// `x`: `[N, D]` → `[N, D]`
pub fn l2_normalize_rows(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?; // [N, 1]
    Ok(x.broadcast_div(&norm)?)
}

/// Mean cross-entropy of `logits` against integer class `labels`
/// (`torch.nn.CrossEntropyLoss(reduction="mean")`).
///
/// # Shapes
/// `logits`: `[N, C]`, `labels`: `[N]` (u32) → scalar
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::loss::cross_entropy(logits, labels)?)
}

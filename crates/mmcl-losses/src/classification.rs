//! Supervised criteria: the online classifier's class-weighted cross-entropy (multimodal
//! stage) and the fine-tuning losses (label-smoothed cross-entropy, masked binary
//! cross-entropy, masked mean squared error). Missing labels are masked: they add nothing to a
//! loss and are not counted in its mean.

use candle_core::{D, Tensor};

use crate::{Error, Result};

/// `Σ values·mask / max(Σ mask, 1)`.
fn masked_mean(values: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let count = mask.sum_all()?.clamp(1.0, f64::MAX)?;
    Ok((values * mask)?.sum_all()?.div(&count)?)
}

/// Checks that the masked losses' three inputs, named, have the same shape; else the error
/// names `loss` and every input's shape.
fn check_same_dims(loss: &str, [(a, x), (b, y), (c, mask)]: [(&str, &Tensor); 3]) -> Result<()> {
    if y.dims() != x.dims() || mask.dims() != x.dims() {
        return Err(Error::InvalidInput(format!(
            "{loss}: {a} {:?}, {b} {:?} and {c} {:?} differ",
            x.dims(),
            y.dims(),
            mask.dims()
        )));
    }
    Ok(())
}

/// `log_softmax` over the last dimension, stable (the maximum is subtracted, as a constant: no
/// gradient flows through it).
fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach(); // [N, 1]
    let shifted = logits.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?; // [N, 1]
    Ok(shifted.broadcast_sub(&log_sum)?)
}

/// Class-weighted cross-entropy over the rows whose target is known, as
/// `nn.CrossEntropyLoss(weight=…)`: `Σ w[y_i]·(−log p_i[y_i]) / Σ w[y_i]`. `None` when no row
/// counts.
///
/// # Shapes
/// `logits` `[B, 2]`, `targets` `B` entries → scalar.
pub fn weighted_cross_entropy(
    logits: &Tensor,
    targets: &[Option<u32>],
    weights: [f64; 2],
) -> Result<Option<Tensor>> {
    let (b, classes) = logits.dims2()?;
    if targets.len() != b {
        return Err(Error::InvalidInput(format!(
            "{} targets for {b} rows of logits",
            targets.len()
        )));
    }
    let mut w = vec![0f32; b * classes];
    let mut total = 0f64;
    for (i, t) in targets.iter().enumerate() {
        if let Some(c) = t {
            let c = *c as usize;
            if c >= classes || c >= weights.len() {
                return Err(Error::InvalidInput(format!(
                    "class {c} out of range for {classes} classes"
                )));
            }
            w[i * classes + c] = weights[c] as f32;
            total += weights[c];
        }
    }
    if total <= 0.0 {
        return Ok(None);
    }
    let w = Tensor::from_vec(w, (b, classes), logits.device())?.affine(1.0 / total, 0.0)?;
    // candle's log-softmax, not [`log_softmax`]: its gradient also passes through the row
    // maximum, and the multimodal checkpoints are reproduced bit for bit with it.
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?; // [B, 2]
    Ok(Some((log_p * w)?.sum_all()?.neg()?))
}

/// Cross-entropy with label smoothing `ε`, as `nn.CrossEntropyLoss(label_smoothing=ε)`: the
/// target distribution is `(1 − ε)·onehot + ε/C`; rows whose `mask` is 0 are left out of the
/// mean.
///
/// # Shapes
/// `logits`: `[N, C]`, `labels`: `[N]` (class indices as floats), `mask`: `[N]` → scalar.
pub fn smoothed_cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    mask: &Tensor,
    smoothing: f64,
) -> Result<Tensor> {
    let (n, c) = logits.dims2()?;
    if labels.dims() != [n] || mask.dims() != [n] {
        return Err(Error::InvalidInput(format!(
            "cross-entropy: logits {:?}, labels {:?} and mask {:?} do not fit",
            logits.dims(),
            labels.dims(),
            mask.dims()
        )));
    }
    let classes = Tensor::arange(0u32, c as u32, logits.device())?
        .to_dtype(labels.dtype())?
        .unsqueeze(0)?; // [1, C]
    let onehot = labels
        .unsqueeze(1)?
        .broadcast_eq(&classes)?
        .to_dtype(logits.dtype())?; // [N, C]
    let target = onehot.affine(1.0 - smoothing, smoothing / c as f64)?; // [N, C]
    let per_row = (target * log_softmax(logits)?)?.sum(1)?.neg()?; // [N]
    masked_mean(&per_row, &mask.to_dtype(logits.dtype())?)
}

/// Binary cross-entropy with logits on smoothed targets `y·(1 − ε) + ε/2`, averaged over the
/// entries whose `mask` is 1 (computed stably as `max(z, 0) − z·y + log(1 + e^{−|z|})`).
///
/// # Shapes
/// `logits`, `labels`, `mask`: `[N, K]` → scalar.
pub fn masked_bce_with_logits(
    logits: &Tensor,
    labels: &Tensor,
    mask: &Tensor,
    smoothing: f64,
) -> Result<Tensor> {
    check_same_dims(
        "binary cross-entropy",
        [("logits", logits), ("labels", labels), ("mask", mask)],
    )?;
    let y = labels
        .to_dtype(logits.dtype())?
        .affine(1.0 - smoothing, smoothing / 2.0)?;
    let softplus = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    let per_entry = ((logits.relu()? - (logits * y)?)? + softplus)?;
    masked_mean(&per_entry, &mask.to_dtype(logits.dtype())?)
}

/// Mean squared error over the entries whose `mask` is 1.
///
/// # Shapes
/// `prediction`, `target`, `mask`: `[N, K]` → scalar.
pub fn masked_mse(prediction: &Tensor, target: &Tensor, mask: &Tensor) -> Result<Tensor> {
    check_same_dims(
        "mean squared error",
        [
            ("prediction", prediction),
            ("target", target),
            ("mask", mask),
        ],
    )?;
    let diff = (prediction - target.to_dtype(prediction.dtype())?)?;
    masked_mean(&diff.sqr()?, &mask.to_dtype(prediction.dtype())?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn weighted_cross_entropy_matches_pytorch() -> Result<()> {
        // torch.nn.CrossEntropyLoss(weight=torch.tensor([0.55, 10.]))(logits, y) with the
        // third row ignored (unknown label): 2.2880775928497314
        let logits = Tensor::new(
            &[[0.2f32, -1.0], [1.5, 0.5], [3.0, 3.0], [-0.3, 0.8]],
            &Device::Cpu,
        )?;
        let targets = vec![Some(1), Some(0), None, Some(1)];
        let loss = weighted_cross_entropy(&logits, &targets, [0.55, 10.0])?
            .ok_or(Error::InvalidInput("no loss".into()))?
            .to_scalar::<f32>()?;
        let expected = {
            let lse = |a: f64, b: f64| (a.exp() + b.exp()).ln();
            let rows = [(0.2, -1.0, 1usize), (1.5, 0.5, 0), (-0.3, 0.8, 1)];
            let w = [0.55, 10.0];
            let (mut num, mut den) = (0.0, 0.0);
            for (a, b, y) in rows {
                let nll = lse(a, b) - if y == 0 { a } else { b };
                num += w[y] * nll;
                den += w[y];
            }
            num / den
        };
        assert!(
            (loss as f64 - expected).abs() < 1e-5,
            "{loss} vs {expected}"
        );
        assert!(weighted_cross_entropy(&logits, &[None; 4], [1.0, 1.0])?.is_none());
        Ok(())
    }
}

//! Retrieval accuracies from contrastive logits.

use candle_core::{D, DType, Tensor};

use crate::{Error, Result};

/// Fraction of rows whose label is among the `k` highest logits (`torchmetrics.Accuracy(top_k=k)`
/// on the logits). Ties are broken in favour of the lower column index, as `torch.topk` does in
/// practice on CPU.
///
/// # Shapes
/// `logits`: `[N, C]`, `labels`: `[N]` integer → fraction in `[0, 1]`
pub fn top_k_accuracy(logits: &Tensor, labels: &Tensor, k: usize) -> Result<f64> {
    let (n, c) = logits.dims2()?;
    if labels.dims() != [n] {
        return Err(Error::InvalidArgument(format!(
            "labels of shape {:?} do not fit logits {:?}",
            labels.dims(),
            logits.dims()
        )));
    }
    if n == 0 {
        return Err(Error::InvalidArgument("no rows to score".into()));
    }
    let logits = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let labels = labels.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    let k = k.min(c);
    let mut hits = 0usize;
    for (row, &label) in logits.iter().zip(&labels) {
        let label = label as usize;
        if label >= c {
            return Err(Error::InvalidArgument(format!(
                "label {label} out of range for {c} classes"
            )));
        }
        let target = row[label];
        // Rank of the target = number of entries strictly greater, plus equal ones before it.
        let rank = row
            .iter()
            .enumerate()
            .filter(|&(j, &v)| v > target || (v == target && j < label))
            .count();
        if rank < k {
            hits += 1;
        }
    }
    Ok(hits as f64 / n as f64)
}

/// Top-1 and top-5 retrieval accuracies.
pub fn top1_top5(logits: &Tensor, labels: &Tensor) -> Result<(f64, f64)> {
    Ok((
        top_k_accuracy(logits, labels, 1)?,
        top_k_accuracy(logits, labels, 5)?,
    ))
}

/// The index of the largest logit of each row.
///
/// # Shapes
/// `logits`: `[N, C]` → `[N]` (u32)
pub fn argmax_rows(logits: &Tensor) -> Result<Tensor> {
    Ok(logits.argmax(D::Minus1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn counts_hits() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::new(
            &[[3.0f32, 1.0, 2.0], [0.0, 1.0, 5.0], [1.0, 1.0, 0.0]],
            &dev,
        )?;
        let labels = Tensor::new(&[0u32, 1, 1], &dev)?;
        assert!((top_k_accuracy(&logits, &labels, 1)? - 1.0 / 3.0).abs() < 1e-12);
        assert!((top_k_accuracy(&logits, &labels, 2)? - 1.0).abs() < 1e-12);
        assert!(top_k_accuracy(&logits, &Tensor::new(&[0u32], &dev)?, 1).is_err());
        Ok(())
    }
}

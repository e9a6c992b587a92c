//! NT-Xent (SimCLR) loss over two views, as lightly's `NTXentLoss` without a memory bank.

use candle_core::{DType, Tensor};

use crate::{Error, Result, cross_entropy, l2_normalize_rows};

/// Normalised-temperature cross-entropy over two views of the same batch: for each of the 2N
/// samples, the other view of the same subject is the positive and the remaining 2N − 2 samples
/// are negatives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NtXentLoss {
    temperature: f64,
}

/// What [`NtXentLoss::forward`] returns.
#[derive(Debug, Clone)]
pub struct NtXentOutput {
    /// The scalar loss.
    pub loss: Tensor,
    /// `[2N, 2N − 1]` logits: for row i < N, column j < N is view-1 sample j, the rest are view-0
    /// samples other than i (and symmetrically for rows ≥ N).
    pub logits: Tensor,
    /// `[2N]` (u32): the column of each row's positive.
    pub labels: Tensor,
}

impl NtXentLoss {
    /// A loss with temperature `temperature` (|τ| ≥ 1e-8, as lightly requires).
    pub fn new(temperature: f64) -> Result<Self> {
        if !(temperature.is_finite() && temperature.abs() >= 1e-8) {
            return Err(Error::InvalidArgument(format!(
                "NT-Xent temperature must satisfy |t| >= 1e-8, got {temperature}"
            )));
        }
        Ok(Self { temperature })
    }

    /// Loss of two views.
    ///
    /// # Shapes
    /// `z0`, `z1`: `[N, D]` → loss scalar, logits `[2N, 2N − 1]`, labels `[2N]`
    pub fn forward(&self, z0: &Tensor, z1: &Tensor) -> Result<NtXentOutput> {
        if z0.dims() != z1.dims() || z0.rank() != 2 || z0.dim(0)? < 2 {
            return Err(Error::InvalidArgument(format!(
                "NT-Xent needs two [N, D] batches (N ≥ 2) of the same shape, got {:?} and {:?}",
                z0.dims(),
                z1.dims()
            )));
        }
        let n = z0.dim(0)?;
        let dev = z0.device();
        let a = l2_normalize_rows(z0)?;
        let b = l2_normalize_rows(z1)?;
        let scale = 1.0 / self.temperature;
        let l00 = a.matmul(&a.t()?)?.affine(scale, 0.0)?; // [N, N]
        let l01 = a.matmul(&b.t()?)?.affine(scale, 0.0)?;
        let l10 = b.matmul(&a.t()?)?.affine(scale, 0.0)?;
        let l11 = b.matmul(&b.t()?)?.affine(scale, 0.0)?;
        // Drop the self-similarities: row i keeps columns j != i, via a gather index [N, N-1].
        let off_diagonal: Vec<u32> = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(|j| j as u32))
            .collect();
        let index = Tensor::from_vec(off_diagonal, (n, n - 1), dev)?;
        let l00 = l00.gather(&index, 1)?; // [N, N-1]
        let l11 = l11.gather(&index, 1)?;
        let top = Tensor::cat(&[&l01, &l00], 1)?; // [N, 2N-1]
        let bottom = Tensor::cat(&[&l10, &l11], 1)?;
        let logits = Tensor::cat(&[&top, &bottom], 0)?; // [2N, 2N-1]
        let labels = Tensor::arange(0u32, n as u32, dev)?.repeat(2)?;
        let loss = cross_entropy(&logits, &labels)?.to_dtype(DType::F32)?;
        Ok(NtXentOutput {
            loss,
            logits,
            labels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Direct f64 evaluation of the SimCLR loss for comparison.
    fn reference(z0: &[Vec<f64>], z1: &[Vec<f64>], t: f64) -> f64 {
        let norm = |v: &Vec<f64>| {
            let n = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
            v.iter().map(|x| x / n).collect::<Vec<_>>()
        };
        let all: Vec<Vec<f64>> = z0.iter().chain(z1).map(norm).collect();
        let n = z0.len();
        let dot = |a: &Vec<f64>, b: &Vec<f64>| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let mut total = 0.0;
        for i in 0..2 * n {
            let pos = (i + n) % (2 * n);
            let denom: f64 = (0..2 * n)
                .filter(|&k| k != i)
                .map(|k| (dot(&all[i], &all[k]) / t).exp())
                .sum();
            total += -(dot(&all[i], &all[pos]) / t).exp().ln() + denom.ln();
        }
        total / (2 * n) as f64
    }

    #[test]
    fn matches_direct_evaluation() -> Result<()> {
        let dev = Device::Cpu;
        let z0v = vec![
            vec![1.0, 0.2, -0.3],
            vec![0.1, 0.9, 0.4],
            vec![-0.5, 0.3, 1.0],
        ];
        let z1v = vec![
            vec![0.8, 0.1, -0.2],
            vec![0.3, 1.0, 0.2],
            vec![-0.4, 0.5, 0.7],
        ];
        let to_t = |v: &Vec<Vec<f64>>| -> Result<Tensor> {
            let flat: Vec<f32> = v.iter().flatten().map(|&x| x as f32).collect();
            Ok(Tensor::from_vec(flat, (3, 3), &dev)?)
        };
        let out = NtXentLoss::new(0.5)?.forward(&to_t(&z0v)?, &to_t(&z1v)?)?;
        assert_eq!(out.logits.dims(), &[6, 5]);
        let got = out.loss.to_scalar::<f32>()? as f64;
        let want = reference(&z0v, &z1v, 0.5);
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        assert!(NtXentLoss::new(0.0).is_err());
        Ok(())
    }
}

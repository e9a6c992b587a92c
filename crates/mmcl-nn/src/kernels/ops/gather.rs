//! Rows of a tensor and one extra row picked by an index, as one autograd node (the masked
//! autoencoder's token selection with its class token, and its decoder's input with the mask
//! token).
//!
//! Composed, that is `cat([rows, extra])` then `index_select`: a copy of the whole table
//! forward, and backward a zeroed table, the additions of `index_add`, the split of `cat` and,
//! for each of these nodes, candle's zeroed gradient and addition, all on the calling thread
//! while the other cores wait. In the masked autoencoder's step (two views of `[32, 300, 384]`
//! tokens, a decoder input of `[32, 301, 256]`) the copies, gathers and `index_add` were 0.8 %
//! of the step's CPU time (a Zen 4, session 56); this node's are 0.05 %.

use candle_core::{Result, Shape, Tensor};

use crate::kernels::op::{CpuKernel, Gradients, Input, Op};
use crate::kernels::{fast_path, par_filled, rows_per_task, simd, with_contiguous_f32, zeros};

/// The rows of the table `[rows; extra]` (every row of `rows`, flattened to `[R, D]`, then the
/// single row `extra`) picked by `index` (values up to `R`; `R` is `extra`), without building the
/// table: `[groups, index.len() / groups, D]`.
///
/// The same values as `Tensor::cat(&[rows.reshape((R, D)), extra], 0)?.index_select(index, 0)`
/// reshaped, and on the CPU the same gradients, bit for bit: each gradient row is the sum, in the
/// index's order and starting from zero, of the output rows that picked it.
///
/// # Shapes
/// `rows`: `[.., D]`; `extra`: `[1, D]` (or `[D]`); `index`: `groups · n` values ≤ `R` →
/// `[groups, n, D]`.
pub fn gather_rows(rows: &Tensor, extra: &Tensor, index: &[u32], groups: usize) -> Result<Tensor> {
    let d = rows.dims().last().copied().unwrap_or(0);
    let r = rows.elem_count().checked_div(d).unwrap_or(0);
    if rows.rank() < 1 || extra.elem_count() != d {
        candle_core::bail!(
            "gather_rows: rows {:?} and an extra row {:?} of different widths",
            rows.dims(),
            extra.dims()
        );
    }
    if groups == 0 || !index.len().is_multiple_of(groups) {
        candle_core::bail!(
            "gather_rows: {} indices cannot be split into {groups} groups",
            index.len()
        );
    }
    if let Some(&bad) = index.iter().find(|&&i| i as usize > r) {
        candle_core::bail!("gather_rows: index {bad} beyond the table's {} rows", r + 1);
    }
    let out_shape = (groups, index.len() / groups, d);
    if fast_path(rows) && fast_path(extra) {
        let op = GatherRows {
            index: index.to_vec(),
            out_shape,
        };
        return rows
            .contiguous()?
            .apply_op2(&extra.reshape((1, d))?.contiguous()?, Op(op));
    }
    let table = Tensor::cat(&[&rows.reshape((r, d))?, &extra.reshape((1, d))?], 0)?;
    let idx = Tensor::from_slice(index, index.len(), rows.device())?;
    table.index_select(&idx, 0)?.reshape(out_shape)
}

struct GatherRows {
    index: Vec<u32>,
    out_shape: (usize, usize, usize),
}

impl CpuKernel<2> for GatherRows {
    const NAME: &'static str = "mmcl-gather-rows";

    fn forward(&self, [rows, extra]: [Input<'_>; 2]) -> Result<(Vec<f32>, Shape)> {
        let d = self.out_shape.2;
        let r = rows.data.len() / d.max(1);
        let step = rows_per_task(d) * d.max(1);
        let out = par_filled(self.index.len() * d, step, |t, block| {
            let picks = &self.index[t * (step / d.max(1))..];
            for (dst, &i) in block.chunks_exact_mut(d.max(1)).zip(picks) {
                let i = i as usize;
                dst.copy_from_slice(if i < r {
                    &rows.data[i * d..(i + 1) * d]
                } else {
                    extra.data
                });
            }
        });
        Ok((out, Shape::from(self.out_shape)))
    }

    fn backward(&self, [rows, extra]: [&Tensor; 2], _: &Tensor, grad: &Tensor) -> Gradients<2> {
        let d = self.out_shape.2;
        let r = rows.elem_count() / d.max(1);
        // Starting from zeros and adding in the index's order, as `index_add` does (so that a
        // row picked once gets `0 + g`: a negative zero becomes positive, as there).
        let mut d_rows = zeros(r * d);
        let mut d_extra = vec![0f32; d];
        with_contiguous_f32(grad, |g| {
            for (src, &i) in g.chunks_exact(d.max(1)).zip(&self.index) {
                let i = i as usize;
                let dst = if i < r {
                    &mut d_rows[i * d..(i + 1) * d]
                } else {
                    &mut d_extra[..]
                };
                simd::add_rows(dst, src);
            }
            Ok(())
        })?;
        Ok([
            Some(Tensor::from_vec(d_rows, rows.shape(), rows.device())?),
            Some(Tensor::from_vec(d_extra, extra.shape(), extra.device())?),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_support::{bits, rand_tensor};
    use candle_core::Var;

    /// Values and both gradients equal the composed `cat` + `index_select`, bit for bit, with
    /// rows picked once, twice and never, and the extra row picked several times.
    #[test]
    fn matches_cat_and_index_select_bit_for_bit() -> Result<()> {
        let rows = Var::from_tensor(&rand_tensor(&[2, 5, 4], 1, 1.0)?)?;
        let extra = Var::from_tensor(&rand_tensor(&[1, 4], 2, 1.0)?)?;
        let index = [10, 3, 0, 10, 9, 3, 1, 10, 7];
        let up = rand_tensor(&[3, 3, 4], 3, 1.0)?;
        let run = |fast: bool| -> Result<Vec<Vec<u32>>> {
            let y = if fast {
                gather_rows(rows.as_tensor(), extra.as_tensor(), &index, 3)?
            } else {
                let table =
                    Tensor::cat(&[&rows.as_tensor().reshape((10, 4))?, extra.as_tensor()], 0)?;
                let idx = Tensor::from_slice(&index, index.len(), table.device())?;
                table.index_select(&idx, 0)?.reshape((3, 3, 4))?
            };
            let grads = (&y * &up)?.sum_all()?.backward()?;
            let grad = |v: &Var| {
                grads
                    .get(v.as_tensor())
                    .ok_or_else(|| candle_core::Error::Msg("no gradient".into()))
            };
            Ok(vec![bits(&y)?, bits(grad(&rows)?)?, bits(grad(&extra)?)?])
        };
        assert_eq!(run(true)?, run(false)?);
        Ok(())
    }

    #[test]
    fn bad_indices_and_shapes_are_errors() -> Result<()> {
        let rows = rand_tensor(&[2, 5, 4], 1, 1.0)?;
        let extra = rand_tensor(&[1, 4], 2, 1.0)?;
        assert!(gather_rows(&rows, &extra, &[11], 1).is_err());
        assert!(gather_rows(&rows, &extra, &[1, 2, 3], 2).is_err());
        assert!(gather_rows(&rows, &rand_tensor(&[1, 3], 2, 1.0)?, &[1], 1).is_err());
        assert!(gather_rows(&rows, &extra, &[1], 0).is_err());
        Ok(())
    }
}

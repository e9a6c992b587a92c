//! The fused block against the composition of the per-layer ops, and finite differences.

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};

use super::*;
use crate::kernels::test_support::*;

struct Weights {
    vars: Vec<Var>,
}

impl Weights {
    fn new(d: usize, h: usize, seed: u64, qkv_bias: bool) -> Result<Self> {
        let shapes: Vec<Vec<usize>> = vec![
            vec![d],
            vec![d],
            vec![3 * d, d],
            vec![3 * d],
            vec![d, d],
            vec![d],
            vec![d],
            vec![d],
            vec![h, d],
            vec![h],
            vec![d, h],
            vec![d],
        ];
        let mut vars = Vec::new();
        for (i, s) in shapes.iter().enumerate() {
            if i == 3 && !qkv_bias {
                continue;
            }
            let scale = if s.len() == 2 { 0.3 } else { 0.5 };
            let mut t = rand_tensor(s, seed + i as u64, scale)?;
            if i == 0 || i == 6 {
                t = (t + 1.0)?; // norm weights around 1
            }
            vars.push(Var::from_tensor(&t)?);
        }
        Ok(Self { vars })
    }

    fn params(&self, heads: usize, d: usize) -> BlockParams<'_> {
        let v = |i: usize| self.vars[i].as_tensor();
        let with_bias = self.vars.len() == 12;
        let o = usize::from(!with_bias);
        BlockParams {
            norm1: (v(0), v(1)),
            qkv: (v(2), with_bias.then(|| v(3))),
            proj: (v(4 - o), v(5 - o)),
            norm2: (v(6 - o), v(7 - o)),
            fc1: (v(8 - o), v(9 - o)),
            fc2: (v(10 - o), v(11 - o)),
            num_heads: heads,
            scale: ((d / heads) as f64).powf(-0.5),
            eps: 1e-6,
        }
    }
}

fn check(qkv_bias: bool, scales: Option<BranchScales>) -> Result<()> {
    check_within(qkv_bias, scales, (1e-5, 1e-4))
}

/// The fused block against the composition: output and every gradient within `(fwd, grad)`
/// relative error.
fn check_within(
    qkv_bias: bool,
    scales: Option<BranchScales>,
    (fwd, grad): (f32, f32),
) -> Result<()> {
    let (b, n, d, h, heads) = (3, 7, 16, 40, 4);
    let w = Weights::new(d, h, 10, qkv_bias)?;
    let x = Var::from_tensor(&rand_tensor(&[b, n, d], 1, 2.0)?)?;
    let up = rand_tensor(&[b, n, d], 2, 1.0)?;
    let p = w.params(heads, d);
    let zeros = Tensor::zeros(3 * d, DType::F32, &candle_core::Device::Cpu)?;
    let run = |fused: bool| -> Result<(Tensor, Vec<Tensor>)> {
        let y = if fused {
            transformer_block(x.as_tensor(), &p, scales.as_ref(), true)?
        } else {
            composed(
                x.as_tensor(),
                &p,
                p.qkv.1.unwrap_or(&zeros),
                scales.as_ref(),
            )?
        };
        let g = (&y * &up)?.sum_all()?.backward()?;
        let mut out = vec![g.get(x.as_tensor()).cloned().expect("dx")];
        for v in &w.vars {
            out.push(g.get(v.as_tensor()).cloned().expect("parameter gradient"));
        }
        Ok((y, out))
    };
    let (yf, gf) = run(true)?;
    let (yc, gc) = run(false)?;
    assert!(rel_err(&yf, &yc)? < fwd, "forward {}", rel_err(&yf, &yc)?);
    for (i, (a, c)) in gf.iter().zip(&gc).enumerate() {
        let e = rel_err(a, c)?;
        assert!(e < grad, "gradient {i}: {e}");
    }
    Ok(())
}

#[test]
fn fused_block_matches_the_composition_forward_and_backward() -> Result<()> {
    check(true, None)?;
    check(false, None)?;
    check(
        true,
        Some(BranchScales {
            attn: vec![0.0, 1.25, 1.25],
            mlp: vec![1.25, 0.0, 1.25],
        }),
    )
}

/// Under bf16 both paths round the products' operands; the fused block also evaluates its GELU
/// and softmax with fused multiply-adds. They agree to bf16's rounding (a value whose last f32
/// bit moves can round to the neighbouring bf16, 2⁻⁸ away).
#[test]
fn bf16_block_matches_the_bf16_composition() -> Result<()> {
    let _bf16 = crate::precision::Precision::Bf16.enter();
    check_within(true, None, (5e-4, 5e-3))
}

#[test]
fn gradients_agree_with_finite_differences() -> Result<()> {
    let (b, n, d, h, heads) = (2, 5, 8, 16, 2);
    let w = Weights::new(d, h, 30, true)?;
    let p = w.params(heads, d);
    let x = rand_tensor(&[b, n, d], 3, 1.5)?;
    let up = rand_tensor(&[b, n, d], 4, 1.0)?;
    let f = |t: &Tensor| transformer_block(t, &p, None, true);
    let dx = autograd(&x, &up, &f)?;
    let coords = [0, 9, 33, 61, 79];
    assert_matches_finite_differences(&dx, (&x, &up), &f, &coords, (1e-2, 5e-3))
}

#[test]
fn bad_shapes_are_errors() -> Result<()> {
    let (d, h) = (8, 16);
    let w = Weights::new(d, h, 50, true)?;
    let p = w.params(3, d); // 8 features in 3 heads
    let x = rand_tensor(&[1, 2, d], 5, 1.0)?;
    assert!(transformer_block(&x, &p, None, true).is_err());
    let p = w.params(2, d);
    let s = BranchScales {
        attn: vec![1.0; 2],
        mlp: vec![1.0; 2],
    };
    assert!(transformer_block(&x, &p, Some(&s), true).is_err());
    assert!(transformer_block(&rand_tensor(&[1, 2, 6], 5, 1.0)?, &p, None, true).is_err());
    Ok(())
}

/// A backward pass after a forward pass that expected none (`train = false`, nothing kept)
/// computes the attention probabilities again: the same gradients, bit for bit.
#[test]
fn backward_after_an_inference_pass_recomputes_the_probabilities() -> Result<()> {
    let (b, n, d, h, heads) = (2, 5, 8, 16, 2);
    let w = Weights::new(d, h, 60, true)?;
    let p = w.params(heads, d);
    let x = Var::from_tensor(&rand_tensor(&[b, n, d], 7, 1.5)?)?;
    let up = rand_tensor(&[b, n, d], 8, 1.0)?;
    let grads = |train: bool| -> Result<Vec<Vec<f32>>> {
        let y = transformer_block(x.as_tensor(), &p, None, train)?;
        gradient_values(&(&y * &up)?.sum_all()?.backward()?, &x, &w)
    };
    assert_eq!(grads(true)?, grads(false)?);
    Ok(())
}

/// The gradients of `x` and of every weight in `store`, as values (an error where one is
/// missing).
fn gradient_values(store: &GradStore, x: &Var, w: &Weights) -> Result<Vec<Vec<f32>>> {
    std::iter::once(x)
        .chain(&w.vars)
        .map(|v| match store.get(v.as_tensor()) {
            Some(g) => g.flatten_all()?.to_vec1::<f32>(),
            None => candle_core::bail!("no gradient"),
        })
        .collect()
}

/// The parameters reach the block through carriers (`kernels::carrier`): a second backward
/// pass over the same graph gives the same gradients again, and parameters that are not
/// variables get none while the input still does.
#[test]
fn parameter_gradients_are_carried_again_and_only_to_variables() -> Result<()> {
    let (b, n, d, h, heads) = (2, 5, 8, 16, 2);
    let w = Weights::new(d, h, 40, true)?;
    let p = w.params(heads, d);
    let x = Var::from_tensor(&rand_tensor(&[b, n, d], 7, 1.0)?)?;
    let loss = transformer_block(x.as_tensor(), &p, None, true)?
        .sqr()?
        .sum_all()?;
    let first = gradient_values(&loss.backward()?, &x, &w)?;
    assert_eq!(first, gradient_values(&loss.backward()?, &x, &w)?);

    let frozen: Vec<Tensor> = w.vars.iter().map(|v| v.as_tensor().detach()).collect();
    let t = |i: usize| &frozen[i];
    let p = BlockParams {
        norm1: (t(0), t(1)),
        qkv: (t(2), Some(t(3))),
        proj: (t(4), t(5)),
        norm2: (t(6), t(7)),
        fc1: (t(8), t(9)),
        fc2: (t(10), t(11)),
        ..p
    };
    let store = transformer_block(x.as_tensor(), &p, None, true)?
        .sqr()?
        .sum_all()?
        .backward()?;
    let dx = store
        .get(x.as_tensor())
        .map(|g| g.flatten_all()?.to_vec1::<f32>());
    assert_eq!(dx.transpose()?.as_ref(), Some(&first[0]));
    assert!(frozen.iter().all(|t| store.get(t).is_none()));
    Ok(())
}

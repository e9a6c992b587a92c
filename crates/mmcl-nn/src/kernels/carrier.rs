//! Parameters handed to a fused CPU node through carrier nodes, so that their gradients reach
//! the variables through one level of candle's gradient bookkeeping and are not copied.
//!
//! candle's backward pass gives every input of a node a zero-filled gradient buffer and adds
//! the node's gradient into it (an allocation, a fill and a pass over three streams). A fused
//! node with more parameters than candle's three inputs per custom operation used to take them
//! packed into one vector (`cat` of their flattened views): each step copied every parameter
//! into it, and each parameter's gradient went through that bookkeeping three times (the
//! node's input, the `cat`, the flattening). [`carry`] instead chains nodes of no value (`[1]`,
//! zero) whose inputs are the parameters themselves, two or three per node, each taking the one
//! before it; the fused node takes the last carrier as an input and reads the parameters'
//! values from the tensors it holds. Its backward pass leaves the parameters' gradients in the
//! shared [`ParamGrads`]; candle reaches the carriers after it (each is an input of the node
//! after it), and each hands its parameters their gradients.

use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{DType, Result, Shape, Tensor};

use super::op::{CpuKernel, Gradients, Input, Op};

/// The gradients of carried parameters, from the fused node's backward pass to the carriers'
/// (one slot per parameter, in the order given to [`carry`]).
#[derive(Clone)]
pub(crate) struct ParamGrads(Arc<Mutex<Vec<Option<Vec<f32>>>>>);

impl ParamGrads {
    fn slots(&self) -> Result<MutexGuard<'_, Vec<Option<Vec<f32>>>>> {
        self.0
            .lock()
            .map_err(|_| candle_core::Error::Msg("carried gradients: a thread panicked".into()))
    }

    /// Leaves `grads` (one per parameter, in [`carry`]'s order, each with its parameter's
    /// element count) for the carriers.
    pub(crate) fn put(&self, grads: Vec<Vec<f32>>) -> Result<()> {
        let mut slots = self.slots()?;
        if grads.len() != slots.len() {
            candle_core::bail!(
                "carried gradients: {} given for {} parameters",
                grads.len(),
                slots.len()
            );
        }
        *slots = grads.into_iter().map(Some).collect();
        Ok(())
    }
}

/// The carriers of `params` (contiguous f32 CPU tensors: a carrier's forward pass reads its
/// inputs as such, an error otherwise): the last one (the fused node's extra input, `[1]`) and
/// the slots its backward pass fills ([`ParamGrads::put`]). With no parameters, `None`.
pub(crate) fn carry(params: &[Tensor]) -> Result<Option<(Tensor, ParamGrads)>> {
    let grads = ParamGrads(Arc::new(Mutex::new(vec![None; params.len()])));
    let carrier = |first: usize, params: usize| {
        Op(Carrier {
            first,
            params,
            grads: grads.clone(),
        })
    };
    // Three parameters in the first node, then two and the carrier before them in each next.
    let mut last = match params {
        [] => return Ok(None),
        [a] => a.apply_op1(carrier(0, 1))?,
        [a, b] => a.apply_op2(b, carrier(0, 2))?,
        [a, b, c, ..] => a.apply_op3(b, c, carrier(0, 3))?,
    };
    let mut next = 3.min(params.len());
    while next < params.len() {
        last = match &params[next..] {
            [a] => a.apply_op2(&last, carrier(next, 1))?,
            [a, b, ..] => a.apply_op3(b, &last, carrier(next, 2))?,
            [] => break,
        };
        next += 2;
    }
    Ok(Some((last, grads)))
}

/// A carrier node: its first `params` inputs are the parameters of slots `first..`, any input
/// after them the carrier before it.
struct Carrier {
    first: usize,
    params: usize,
    grads: ParamGrads,
}

/// The carriers' name in candle's errors.
const CARRIER: &str = "mmcl-parameter-carrier";

impl<const N: usize> CpuKernel<N> for Carrier {
    const NAME: &'static str = CARRIER;

    fn forward(&self, _: [Input<'_>; N]) -> Result<(Vec<f32>, Shape)> {
        Ok((vec![0.0], Shape::from(1)))
    }

    fn backward(&self, inputs: [&Tensor; N], _: &Tensor, _: &Tensor) -> Gradients<N> {
        let mut slots = self.grads.slots()?;
        let mut out: [Option<Tensor>; N] = std::array::from_fn(|_| None);
        for (i, (o, input)) in out.iter_mut().zip(inputs).enumerate() {
            *o = Some(if i < self.params {
                let Some(grad) = slots[self.first + i].take() else {
                    candle_core::bail!("{}: the fused node's backward pass did not run", CARRIER);
                };
                Tensor::from_vec(grad, input.shape(), input.device())?
            } else {
                Tensor::zeros(1, DType::F32, input.device())?
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// A node that doubles `x` and adds `Σ p` of each carried parameter `p`, through the
    /// carriers: every parameter gets its gradient, for any count.
    #[test]
    fn every_parameter_gets_its_gradient_through_the_chain() -> Result<()> {
        struct Sum {
            params: Vec<Tensor>,
            grads: ParamGrads,
        }
        impl CpuKernel<2> for Sum {
            const NAME: &'static str = "test-sum";
            fn forward(&self, [x, _]: [Input<'_>; 2]) -> Result<(Vec<f32>, Shape)> {
                let total: f32 = self
                    .params
                    .iter()
                    .map(|p| p.sum_all()?.to_scalar::<f32>())
                    .sum::<Result<f32>>()?;
                Ok((
                    x.data.iter().map(|v| 2.0 * v + total).collect(),
                    x.shape().clone(),
                ))
            }
            fn backward(&self, [x, _]: [&Tensor; 2], _: &Tensor, g: &Tensor) -> Gradients<2> {
                let total = g.sum_all()?.to_scalar::<f32>()?;
                let grads = self.params.iter().map(|p| vec![total; p.elem_count()]);
                self.grads.put(grads.collect())?;
                Ok([
                    Some((g * 2.0)?),
                    Some(Tensor::zeros(1, DType::F32, x.device())?),
                ])
            }
        }
        for count in 1..=6 {
            let vars = (0..count)
                .map(|i| Var::new(vec![i as f32; i + 1], &Device::Cpu))
                .collect::<Result<Vec<_>>>()?;
            let params: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let Some((last, grads)) = carry(&params)? else {
                panic!("no carrier for {count} parameters");
            };
            let x = Var::new(&[1f32, 2.0, 3.0], &Device::Cpu)?;
            let y = x.as_tensor().apply_op2(&last, Op(Sum { params, grads }))?;
            let store = (y * 3.0)?.sum_all()?.backward()?;
            let dx = store.get(x.as_tensor()).map(|g| g.to_vec1::<f32>());
            assert_eq!(dx.transpose()?, Some(vec![6.0; 3]));
            for (i, v) in vars.iter().enumerate() {
                let g = store.get(v.as_tensor()).map(|g| g.to_vec1::<f32>());
                assert_eq!(
                    g.transpose()?,
                    Some(vec![9.0; i + 1]),
                    "{count} parameters, {i}"
                );
            }
        }
        assert!(carry(&[])?.is_none());
        Ok(())
    }

    /// A backward pass through carriers whose fused node left no gradients is an error, not a
    /// panic or a zero gradient.
    #[test]
    fn carriers_without_gradients_are_an_error() -> Result<()> {
        let p = Var::new(&[1f32, 2.0], &Device::Cpu)?;
        let Some((last, _)) = carry(&[p.as_tensor().clone()])? else {
            panic!("no carrier");
        };
        assert!(last.sum_all()?.backward().is_err());
        Ok(())
    }
}

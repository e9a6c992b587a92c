//! A check of gradient flow: which trainable variables a loss does not reach. Tests of every
//! model crate use it, and so can a user who wires a new head onto an encoder.

use candle_core::Tensor;

use crate::{Error, ParamStore, Result};

impl ParamStore {
    /// Back-propagates `loss` and checks that every trainable variable of the store receives a
    /// gradient that is present, finite, and not identically zero.
    ///
    /// Returns the names of the variables that fail, sorted (empty when all pass), so a test can
    /// assert on it and print the culprits. Variables whose name matches one of `exempt` (glob
    /// patterns, see [`crate::checkpoint::glob_match`]) are skipped: e.g. a classification head not
    /// used by the loss.
    pub fn vars_without_gradient(&self, loss: &Tensor, exempt: &[&str]) -> Result<Vec<String>> {
        if loss.elem_count() != 1 {
            return Err(Error::InvalidArgument(format!(
                "the loss must be a scalar, got shape {:?}",
                loss.dims()
            )));
        }
        let grads = loss.backward()?;
        let mut failing = Vec::new();
        for (name, var) in self.trainable_vars() {
            if exempt
                .iter()
                .any(|p| crate::checkpoint::glob_match(p, &name))
            {
                continue;
            }
            let ok = match grads.get(var.as_tensor()) {
                None => false,
                Some(g) => {
                    let g = g.to_dtype(candle_core::DType::F32)?;
                    let finite = g
                        .flatten_all()?
                        .to_vec1::<f32>()?
                        .iter()
                        .all(|v| v.is_finite());
                    let magnitude = g.abs()?.sum_all()?.to_scalar::<f32>()?;
                    finite && magnitude > 0.0
                }
            };
            if !ok {
                failing.push(name);
            }
        }
        Ok(failing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Module};

    #[test]
    fn finds_the_unused_variable() -> Result<()> {
        let store = ParamStore::new(1);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        let used = candle_nn::linear(3, 2, vb.pp("used"))?;
        let _unused = candle_nn::linear(3, 2, vb.pp("unused"))?;
        let x = Tensor::ones((4, 3), DType::F32, &Device::Cpu)?;
        let loss = used.forward(&x)?.sqr()?.sum_all()?;
        let failing = store.vars_without_gradient(&loss, &[])?;
        assert_eq!(
            failing,
            vec!["unused.bias".to_string(), "unused.weight".to_string()]
        );
        let failing = store.vars_without_gradient(&loss, &["unused.*"])?;
        assert!(failing.is_empty());
        Ok(())
    }
}

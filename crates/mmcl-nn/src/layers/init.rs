//! Weight initialisations of the reference implementations, as candle [`Init`] hints.
//!
//! The values themselves are drawn by the [`ParamStore`](crate::ParamStore) from its seed and the
//! parameter's name, so they are reproducible but not bit-identical to PyTorch's (which draws from
//! its global generator); the distributions are the reference's.

use candle_nn::Init;
use serde::{Deserialize, Serialize};

/// How the weights of linear layers (and the embeddings around them) are initialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightInit {
    /// timm's ViT default (`init_weights_vit_timm`): linear weights `trunc_normal(std=.02)`,
    /// biases 0; used by the reference `ECGEncoder` and fine-tuning `VisionTransformer`.
    #[default]
    Timm,
    /// The masked autoencoder's (`MaskedAutoencoderViT.initialize_weights`): linear weights
    /// `xavier_uniform`, biases 0, the patch projection `xavier_uniform` over its `[D, C·ph·pw]`
    /// view, class and mask tokens `normal(std=.02)`, fixed 2-D sin-cos position embeddings.
    Mae,
}

impl WeightInit {
    /// The initialisation of a linear weight `[fan_out, fan_in]` under this scheme.
    pub fn linear_weight(self, fan_in: usize, fan_out: usize) -> Init {
        match self {
            WeightInit::Timm => trunc_normal(0.02),
            WeightInit::Mae => xavier_uniform(fan_in, fan_out),
        }
    }
}

/// `xavier_uniform_`: `U(−a, a)` with `a = sqrt(6 / (fan_in + fan_out))` (gain 1).
pub fn xavier_uniform(fan_in: usize, fan_out: usize) -> Init {
    let a = (6.0 / (fan_in + fan_out).max(1) as f64).sqrt();
    Init::Uniform { lo: -a, up: a }
}

/// timm's `trunc_normal_(std)` with its default cut-off at ±2 (absolute, not in standard
/// deviations).
///
/// For the standard deviations the reference uses (0.02 and smaller) the cut-off lies 100σ out,
/// where the normal has no mass a float can represent, so this is the plain normal; the MAE code
/// makes the same remark.
pub fn trunc_normal(std: f64) -> Init {
    Init::Randn {
        mean: 0.0,
        stdev: std,
    }
}

/// `normal_(std)`.
pub fn normal(std: f64) -> Init {
    Init::Randn {
        mean: 0.0,
        stdev: std,
    }
}

/// PyTorch's default for `nn.Linear` and `nn.Conv2d` weights, `kaiming_uniform_(a=√5)`:
/// `U(−1/√fan_in, 1/√fan_in)`.
pub fn torch_default_weight(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// PyTorch's default for `nn.Linear` and `nn.Conv2d` biases: `U(−1/√fan_in, 1/√fan_in)`.
pub fn torch_default_bias(fan_in: usize) -> Init {
    torch_default_weight(fan_in)
}

/// Zeros.
pub const ZEROS: Init = Init::Const(0.0);
/// Ones.
pub const ONES: Init = Init::Const(1.0);

/// The tensor `name` of `vb`, initialised to the computed `values` when it does not exist yet
/// (e.g. a fixed sin-cos table, which no [`Init`] hint describes).
///
/// With a [`ParamStore`](crate::ParamStore) backend the new variable is created and then set
/// to `values`; an existing one (loaded or shared) is returned unchanged, as is whatever a
/// read-only backend (a checkpoint file) holds.
pub fn get_with_values(
    vb: &candle_nn::VarBuilder,
    shape: &[usize],
    name: &str,
    values: impl FnOnce() -> candle_core::Result<candle_core::Tensor>,
) -> candle_core::Result<candle_core::Tensor> {
    if vb.contains_tensor(name) {
        return vb.get(shape, name);
    }
    let t = vb.get_with_hints(shape, name, ZEROS)?;
    let v = values()?.to_dtype(t.dtype())?.to_device(t.device())?;
    if v.dims() != shape {
        candle_core::bail!(
            "initial values of {name} have shape {:?}, not {shape:?}",
            v.dims()
        );
    }
    if t.is_variable() {
        candle_core::Var::from_tensor(&t)?.set(&v)?;
        Ok(t)
    } else {
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_the_reference_ones() {
        match xavier_uniform(384, 1152) {
            Init::Uniform { lo, up } => {
                assert!((up - (6.0f64 / 1536.0).sqrt()).abs() < 1e-12 && lo == -up)
            }
            other => panic!("{other:?}"),
        }
        match torch_default_weight(100) {
            Init::Uniform { up, .. } => assert!((up - 0.1).abs() < 1e-12),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            WeightInit::Timm.linear_weight(3, 4),
            Init::Randn { stdev, .. } if stdev == 0.02
        ));
    }

    #[test]
    fn computed_values_initialise_fresh_variables_only() -> candle_core::Result<()> {
        use candle_core::{DType, Device, Tensor};
        let store = crate::ParamStore::new(0);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        let make = || Tensor::new(&[1f32, 2., 3.], &Device::Cpu);
        let t = get_with_values(&vb, &[3], "table", make)?;
        assert_eq!(t.to_vec1::<f32>()?, vec![1., 2., 3.]);
        let stored = store.get("table").map(|v| v.as_tensor().to_vec1::<f32>());
        assert_eq!(stored.transpose()?, Some(vec![1., 2., 3.]));
        // Existing values are not overwritten.
        let again = get_with_values(&vb, &[3], "table", || {
            Tensor::zeros(3, DType::F32, &Device::Cpu)
        })?;
        assert_eq!(again.to_vec1::<f32>()?, vec![1., 2., 3.]);
        Ok(())
    }
}

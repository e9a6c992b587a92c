//! The SimCLR projection head of the reference (`lightly.models.modules.SimCLRProjectionHead`
//! as of lightly 1.2): `Linear(in, hidden) → ReLU → Linear(hidden, out)`, keys `layers.0.*` and
//! `layers.2.*`.

use candle_core::{Module, Tensor};
use candle_nn::{Init, Linear, VarBuilder};

use crate::{Error, Result};

/// `Linear → ReLU → Linear`, applied to the last dimension.
#[derive(Debug, Clone)]
pub struct ProjectionHead {
    first: Linear,
    second: Linear,
    dims: (usize, usize, usize),
}

/// A `torch.nn.Linear` with PyTorch's default initialisation: weight and bias uniform in
/// `±1/√in` (what `kaiming_uniform_(a=√5)` amounts to).
fn torch_linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let bound = 1.0 / (in_dim as f64).sqrt();
    let init = Init::Uniform {
        lo: -bound,
        up: bound,
    };
    let weight = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
    let bias = vb.get_with_hints(out_dim, "bias", init)?;
    Ok(Linear::new(weight, Some(bias)))
}

impl ProjectionHead {
    /// Builds the head from `vb` (keys `layers.0.weight`, `layers.0.bias`, `layers.2.weight`,
    /// `layers.2.bias`). The paper uses `in = 2048` (ResNet50), `hidden = 2048`, `out = 128`.
    pub fn new(
        input_dim: usize,
        hidden_dim: usize,
        output_dim: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        if input_dim == 0 || hidden_dim == 0 || output_dim == 0 {
            return Err(Error::InvalidConfig(format!(
                "projection head dimensions must be positive, got {input_dim}, {hidden_dim}, \
                 {output_dim}"
            )));
        }
        let vb = vb.pp("layers");
        Ok(Self {
            first: torch_linear(input_dim, hidden_dim, vb.pp("0"))?,
            second: torch_linear(hidden_dim, output_dim, vb.pp("2"))?,
            dims: (input_dim, hidden_dim, output_dim),
        })
    }

    /// `(input, hidden, output)` dimensions.
    pub fn dims(&self) -> (usize, usize, usize) {
        self.dims
    }

    /// Projects embeddings.
    ///
    /// # Shapes
    /// `x`: `[…, in]` → `[…, out]` (any number of leading dimensions).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        if dims.last() != Some(&self.dims.0) {
            return Err(Error::InvalidInput(format!(
                "the projection head expects a last dimension of {}, got shape {dims:?}",
                self.dims.0
            )));
        }
        // Flatten leading dimensions so the matrix products are plain 2-D ones.
        let lead = &dims[..dims.len() - 1];
        let rows: usize = lead.iter().product();
        let x = x.reshape((rows, self.dims.0))?; // [R, in]
        let h = self.first.forward(&x)?.relu()?; // [R, hidden]
        let y = self.second.forward(&h)?; // [R, out]
        let mut shape = lead.to_vec();
        shape.push(self.dims.2);
        Ok(y.reshape(shape)?) // […, out]
    }
}

impl Module for ProjectionHead {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        ProjectionHead::forward(self, xs).map_err(candle_core::Error::wrap)
    }
}

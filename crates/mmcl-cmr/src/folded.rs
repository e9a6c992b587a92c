//! Inference with BatchNorm folded into the convolutions.
//!
//! In eval mode every `conv → BatchNorm` pair is one affine map per output channel, so it equals
//! a single convolution with scaled weights and a bias:
//! `W' = W · γ/√(σ² + ε)`, `b' = β − μ · γ/√(σ² + ε)`. That removes every normalisation pass
//! from the forward. The folded copy is a snapshot: it does not follow later changes of the
//! model's weights, and it carries no gradients.

use candle_core::Tensor;
use mmcl_nn::pool::{global_avg_pool2d, max_pool2d};

use crate::resnet::{Block, ConvBn, ResNet, ResNetOutput, conv2d};
use crate::upsample::upsample_bilinear2d;
use crate::{ResNetConfig, Result};

/// A convolution with the following BatchNorm folded in.
#[derive(Debug, Clone)]
struct FoldedConv {
    weight: Tensor,
    /// `[1, C_out, 1, 1]`.
    bias: Tensor,
    stride: usize,
    padding: usize,
}

impl FoldedConv {
    fn new(unit: &ConvBn) -> Result<Self> {
        let (scale, shift) = unit.bn.eval_scale_shift()?;
        let c = scale.dim(0)?;
        let weight = unit
            .weight
            .detach()
            .broadcast_mul(&scale.detach().reshape((c, 1, 1, 1))?)?
            .contiguous()?;
        let bias = shift.detach().reshape((1, c, 1, 1))?;
        Ok(Self {
            weight,
            bias,
            stride: unit.stride,
            padding: unit.padding,
        })
    }

    /// # Shapes
    /// `[N, C_in, H, W]` → `[N, C_out, H', W']`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(conv2d(x, &self.weight, self.stride, self.padding)?.broadcast_add(&self.bias)?)
    }
}

#[derive(Debug, Clone)]
struct FoldedBlock {
    units: Vec<FoldedConv>,
    downsample: Option<FoldedConv>,
}

impl FoldedBlock {
    fn new(block: &Block) -> Result<Self> {
        Ok(Self {
            units: block
                .units
                .iter()
                .map(FoldedConv::new)
                .collect::<Result<_>>()?,
            downsample: block.downsample.as_ref().map(FoldedConv::new).transpose()?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut out = x.clone();
        let last = self.units.len() - 1;
        for (i, unit) in self.units.iter().enumerate() {
            out = unit.forward(&out)?;
            if i < last {
                out = out.relu()?;
            }
        }
        let identity = match &self.downsample {
            Some(d) => d.forward(x)?,
            None => x.clone(),
        };
        Ok((out + identity)?.relu()?)
    }
}

/// An eval-mode [`ResNet`] with BatchNorm folded into its convolutions: the same outputs as
/// `ResNet::forward_t(x, false)` (up to rounding), fewer passes over memory.
#[derive(Debug, Clone)]
pub struct FoldedResNet {
    stem: FoldedConv,
    stages: Vec<Vec<FoldedBlock>>,
    model: ResNet,
}

impl ResNet {
    /// A folded inference copy of the current weights and running statistics.
    pub fn fold(&self) -> Result<FoldedResNet> {
        Ok(FoldedResNet {
            stem: FoldedConv::new(&self.stem)?,
            stages: self
                .stages
                .iter()
                .map(|stage| stage.iter().map(FoldedBlock::new).collect())
                .collect::<Result<_>>()?,
            model: self.clone(),
        })
    }
}

impl FoldedResNet {
    /// The configuration of the folded model.
    pub fn config(&self) -> &ResNetConfig {
        self.model.config()
    }

    /// The feature map before pooling (eval mode).
    ///
    /// # Shapes
    /// `x`: `[N, C_in, H, W]` → `[N, D, H/32, W/32]`.
    pub fn forward_features(&self, x: &Tensor) -> Result<Tensor> {
        self.model.check_input(x)?;
        let mut x = self.stem.forward(x)?.relu()?; // [N, 64, H/2, W/2]
        x = max_pool2d(&x, 3, 2, 1)?; // [N, 64, H/4, W/4]
        for stage in &self.stages {
            for block in stage {
                x = block.forward(&x)?;
            }
        } // [N, D, H/32, W/32]
        Ok(x)
    }

    /// Feature map and pooled embedding (eval mode).
    ///
    /// # Shapes
    /// `x`: `[N, C_in, H, W]` → feature map `[N, D, H/32, W/32]`, pooled `[N, D]`.
    pub fn forward(&self, x: &Tensor) -> Result<ResNetOutput> {
        let feature_map = self.forward_features(x)?;
        let pooled = global_avg_pool2d(&feature_map)?; // [N, D]
        Ok(ResNetOutput {
            feature_map,
            pooled,
        })
    }

    /// The image embedding.
    ///
    /// # Shapes
    /// `x`: `[N, C_in, H, W]` → `[N, D]`.
    pub fn embed(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward(x)?.pooled)
    }

    /// Per-location features, as [`ResNet::forward_localized`] in eval mode.
    ///
    /// # Shapes
    /// `x`: `[N, C_in, H, W]` → `[N, H'', W'', D]`.
    pub fn forward_localized(&self, x: &Tensor, upsample_factor: f64) -> Result<Tensor> {
        let mut map = self.forward_features(x)?; // [N, D, h, w]
        if upsample_factor != 1.0 {
            map = upsample_bilinear2d(&map, upsample_factor)?; // [N, D, h'', w'']
        }
        Ok(map.permute((0, 2, 3, 1))?.contiguous()?) // [N, h'', w'', D]
    }
}

//! Inference with BatchNorm folded into the convolutions.
//!
//! In eval mode every `conv → BatchNorm` pair is one affine map per output channel, so it equals
//! a single convolution with scaled weights and a bias:
//! `W' = W · γ/√(σ² + ε)`, `b' = β − μ · γ/√(σ² + ε)`. That removes every normalisation pass
//! from the forward. The folded copy is a snapshot: it does not follow later changes of the
//! model's weights, and it carries no gradients.
//!
//! Two engines run the folded model:
//! - on the CPU in `f32`, channels-last kernels ([`mmcl_nn::conv`]) with bias, residual and ReLU
//!   applied while each output block is in cache;
//! - elsewhere (CUDA, other dtypes), candle's tensor operations.

use candle_core::{DType, Tensor};
use mmcl_nn::conv::{BufferPool, NhwcTensor, PackedConv2d};
use mmcl_nn::pool::{global_avg_pool_nhwc, global_avg_pool2d, max_pool2d, max_pool2d_nhwc_pooled};

use crate::resnet::{Block, ConvBn, ResNet, ResNetOutput};
use crate::upsample::upsample_bilinear2d;
use crate::{ResNetConfig, Result};
use mmcl_nn::conv::conv2d;

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

/// A folded block for the channels-last CPU engine.
#[derive(Debug, Clone)]
struct PackedBlock {
    units: Vec<PackedConv2d>,
    downsample: Option<PackedConv2d>,
}

impl PackedBlock {
    fn new(block: &FoldedBlock) -> Result<Self> {
        Ok(Self {
            units: block.units.iter().map(pack).collect::<Result<_>>()?,
            downsample: block.downsample.as_ref().map(pack).transpose()?,
        })
    }

    /// Consumes `x`; intermediate buffers go back to `pool`.
    ///
    /// # Shapes
    /// `[N, H, W, C_in]` → `[N, H/stride, W/stride, C_out]`.
    fn forward(&self, x: NhwcTensor, pool: &BufferPool) -> Result<NhwcTensor> {
        let (last, inner) = self
            .units
            .split_last()
            .ok_or_else(|| crate::Error::InvalidConfig("a residual block without units".into()))?;
        let mut hidden: Option<NhwcTensor> = None;
        for unit in inner {
            let next = unit.forward_pooled(hidden.as_ref().unwrap_or(&x), None, true, pool)?;
            if let Some(done) = hidden.replace(next) {
                pool.recycle(done);
            }
        }
        let projected = match &self.downsample {
            Some(d) => Some(d.forward_pooled(&x, None, false, pool)?),
            None => None,
        };
        let identity = projected.as_ref().unwrap_or(&x);
        // The last unit adds the identity and applies the block's ReLU in its epilogue.
        let out = last.forward_pooled(hidden.as_ref().unwrap_or(&x), Some(identity), true, pool)?;
        for done in [hidden, projected].into_iter().flatten() {
            pool.recycle(done);
        }
        pool.recycle(x);
        Ok(out)
    }
}

fn pack(conv: &FoldedConv) -> Result<PackedConv2d> {
    let bias = conv.bias.flatten_all()?;
    Ok(PackedConv2d::new(
        &conv.weight,
        Some(&bias),
        conv.stride,
        conv.padding,
    )?)
}

/// Which engine runs a [`FoldedResNet`].
#[derive(Debug, Clone)]
enum Engine {
    /// candle tensor operations (any device, any float dtype).
    Tensor {
        stem: FoldedConv,
        stages: Vec<Vec<FoldedBlock>>,
    },
    /// Channels-last CPU kernels (`f32` on the CPU).
    Cpu {
        stem: PackedConv2d,
        stages: Vec<Vec<PackedBlock>>,
        /// Activation buffers reused across layers and calls.
        pool: BufferPool,
    },
}

/// An eval-mode [`ResNet`] with BatchNorm folded into its convolutions: the same outputs as
/// `ResNet::forward_t(x, false)` (up to rounding), in far fewer passes over memory.
#[derive(Debug, Clone)]
pub struct FoldedResNet {
    engine: Engine,
    model: ResNet,
}

impl ResNet {
    /// A folded inference copy of the current weights and running statistics, run by the
    /// channels-last CPU engine when the model is `f32` on the CPU, and by candle's tensor
    /// operations otherwise.
    pub fn fold(&self) -> Result<FoldedResNet> {
        let portable = self.fold_tensor_ops()?;
        let cpu = self.stem.weight.device().is_cpu() && self.stem.weight.dtype() == DType::F32;
        if !cpu {
            return Ok(portable);
        }
        let Engine::Tensor { stem, stages } = &portable.engine else {
            return Ok(portable);
        };
        let engine = Engine::Cpu {
            stem: pack(stem)?,
            stages: stages
                .iter()
                .map(|stage| stage.iter().map(PackedBlock::new).collect())
                .collect::<Result<_>>()?,
            pool: BufferPool::new(),
        };
        Ok(FoldedResNet {
            engine,
            model: self.clone(),
        })
    }

    /// [`Self::fold`], always run by candle's tensor operations on the model's device.
    pub fn fold_tensor_ops(&self) -> Result<FoldedResNet> {
        Ok(FoldedResNet {
            engine: Engine::Tensor {
                stem: FoldedConv::new(&self.stem)?,
                stages: self
                    .stages
                    .iter()
                    .map(|stage| stage.iter().map(FoldedBlock::new).collect())
                    .collect::<Result<_>>()?,
            },
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
        Ok(self.forward(x)?.feature_map)
    }

    /// Feature map and pooled embedding (eval mode).
    ///
    /// # Shapes
    /// `x`: `[N, C_in, H, W]` → feature map `[N, D, H/32, W/32]`, pooled `[N, D]`.
    pub fn forward(&self, x: &Tensor) -> Result<ResNetOutput> {
        self.model.check_input(x)?;
        match &self.engine {
            Engine::Tensor { stem, stages } => {
                let mut h = stem.forward(x)?.relu()?; // [N, 64, H/2, W/2]
                h = max_pool2d(&h, 3, 2, 1)?; // [N, 64, H/4, W/4]
                for stage in stages {
                    for block in stage {
                        h = block.forward(&h)?;
                    }
                } // [N, D, H/32, W/32]
                let pooled = global_avg_pool2d(&h)?; // [N, D]
                Ok(ResNetOutput {
                    feature_map: h,
                    pooled,
                })
            }
            Engine::Cpu { stem, stages, pool } => {
                let input = NhwcTensor::from_nchw(x)?; // [N, H, W, C_in]
                let stem_out = stem.forward_pooled(&input, None, true, pool)?; // [N, H/2, W/2, 64]
                let mut h = max_pool2d_nhwc_pooled(&stem_out, 3, 2, 1, pool)?; // [N, H/4, W/4, 64]
                pool.recycle(stem_out);
                for stage in stages {
                    for block in stage {
                        h = block.forward(h, pool)?;
                    }
                } // [N, H/32, W/32, D]
                let pooled = Tensor::from_vec(global_avg_pool_nhwc(&h), (h.n, h.c), x.device())?;
                let feature_map = h.to_nchw(x.device())?; // [N, D, H/32, W/32]
                pool.recycle(h);
                Ok(ResNetOutput {
                    feature_map,
                    pooled,
                })
            }
        }
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

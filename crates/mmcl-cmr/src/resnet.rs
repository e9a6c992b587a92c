//! The ResNet image encoder in torchvision's layout (v1.5: the bottleneck strides on its 3×3).
//!
//! Parameter names are torchvision's `state_dict` keys (`conv1.weight`, `bn1.running_mean`,
//! `layer2.0.downsample.0.weight`, …); the classification head `fc` is not part of the encoder.

use candle_core::{DType, Tensor};
use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use candle_nn::{Init, ModuleT, VarBuilder};
use mmcl_nn::batch_norm::{BatchNorm, BatchNormConfig, batch_norm};
use mmcl_nn::conv::{BlockUnits, ConvBnUnit, conv2d, residual_stage};
use mmcl_nn::pool::{global_avg_pool2d, max_pool2d};

use crate::config::{BlockKind, ResNetConfig};
use crate::upsample::upsample_bilinear2d;
use crate::{Error, Result};

/// torchvision's initialisation of convolutions: `kaiming_normal_(mode="fan_out",
/// nonlinearity="relu")`.
const CONV_INIT: Init = Init::Kaiming {
    dist: NormalOrUniform::Normal,
    fan: FanInOut::FanOut,
    non_linearity: NonLinearity::ReLU,
};

/// A bias-free square convolution followed by batch normalisation.
#[derive(Debug, Clone)]
pub(crate) struct ConvBn {
    pub(crate) weight: Tensor,
    pub(crate) stride: usize,
    pub(crate) padding: usize,
    pub(crate) bn: BatchNorm,
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        vb_conv: VarBuilder,
        vb_bn: VarBuilder,
    ) -> Result<Self> {
        let weight = vb_conv.get_with_hints(
            (out_channels, in_channels, kernel, kernel),
            "weight",
            CONV_INIT,
        )?;
        let bn = batch_norm(out_channels, BatchNormConfig::default(), vb_bn)?;
        Ok(Self {
            weight,
            stride,
            padding,
            bn,
        })
    }

    /// The unit as the residual block of `mmcl_nn::conv` takes it.
    fn unit(&self) -> ConvBnUnit<'_> {
        ConvBnUnit {
            weight: &self.weight,
            stride: self.stride,
            padding: self.padding,
            bn: &self.bn,
        }
    }

    /// `relu(bn(conv(x)))`, with the ReLU fused into the batch norm (the stem).
    ///
    /// # Shapes
    /// `[N, C_in, H, W]` → `[N, C_out, H', W']`.
    fn forward_t_relu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = conv2d(x, &self.weight, self.stride, self.padding)?;
        Ok(self.bn.forward_t_relu(&y, train)?)
    }
}

/// A residual block: two (basic) or three (bottleneck) conv-BN units and an optional projection
/// of the identity.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub(crate) units: Vec<ConvBn>,
    pub(crate) downsample: Option<ConvBn>,
}

impl Block {
    fn new(
        kind: BlockKind,
        in_channels: usize,
        planes: usize,
        stride: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let out_channels = planes * kind.expansion();
        let units = match kind {
            BlockKind::Basic => vec![
                ConvBn::new(
                    in_channels,
                    planes,
                    3,
                    stride,
                    1,
                    vb.pp("conv1"),
                    vb.pp("bn1"),
                )?,
                ConvBn::new(planes, planes, 3, 1, 1, vb.pp("conv2"), vb.pp("bn2"))?,
            ],
            BlockKind::Bottleneck => vec![
                ConvBn::new(in_channels, planes, 1, 1, 0, vb.pp("conv1"), vb.pp("bn1"))?,
                ConvBn::new(planes, planes, 3, stride, 1, vb.pp("conv2"), vb.pp("bn2"))?,
                ConvBn::new(planes, out_channels, 1, 1, 0, vb.pp("conv3"), vb.pp("bn3"))?,
            ],
        };
        let downsample = if stride != 1 || in_channels != out_channels {
            let vb = vb.pp("downsample");
            Some(ConvBn::new(
                in_channels,
                out_channels,
                1,
                stride,
                0,
                vb.pp("0"),
                vb.pp("1"),
            )?)
        } else {
            None
        };
        Ok(Self { units, downsample })
    }

    /// The block's units, as the fused residual kernels take them: `relu(units(x) + identity)`.
    fn units(&self) -> BlockUnits<'_> {
        BlockUnits {
            units: self.units.iter().map(ConvBn::unit).collect(),
            downsample: self.downsample.as_ref().map(ConvBn::unit),
        }
    }
}

/// What the encoder computes for a batch of images.
#[derive(Debug, Clone)]
pub struct ResNetOutput {
    /// The last stage's output before pooling, `[N, D, H/32, W/32]` (for localisation maps).
    pub feature_map: Tensor,
    /// The global average of the feature map, `[N, D]`: the image embedding.
    pub pooled: Tensor,
}

/// A torchvision ResNet without its classification head, i.e. the reference's
/// `nn.Sequential(*resnet.children()[:-1])`.
#[derive(Debug, Clone)]
pub struct ResNet {
    pub(crate) stem: ConvBn,
    pub(crate) stages: Vec<Vec<Block>>,
    config: ResNetConfig,
    dtype: DType,
}

impl ResNet {
    /// Builds the encoder from `vb`, whose paths become torchvision's key names. New parameters
    /// are initialised as torchvision does: Kaiming-normal (fan-out, ReLU gain) convolutions,
    /// BatchNorm weight 1 and bias 0.
    pub fn new(config: &ResNetConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let kind = config.model.block();
        let stem = ConvBn::new(
            config.in_channels,
            64,
            7,
            2,
            3,
            vb.pp("conv1"),
            vb.pp("bn1"),
        )?;
        let mut in_channels = 64;
        let mut stages = Vec::with_capacity(4);
        for (stage, &blocks) in config.model.layers().iter().enumerate() {
            let planes = 64 << stage;
            let stride = if stage == 0 { 1 } else { 2 };
            let vb_stage = vb.pp(format!("layer{}", stage + 1));
            let mut stage_blocks = Vec::with_capacity(blocks);
            for b in 0..blocks {
                let block = Block::new(
                    kind,
                    in_channels,
                    planes,
                    if b == 0 { stride } else { 1 },
                    vb_stage.pp(b.to_string()),
                )?;
                in_channels = planes * kind.expansion();
                stage_blocks.push(block);
            }
            stages.push(stage_blocks);
        }
        Ok(Self {
            stem,
            stages,
            config: config.clone(),
            dtype: vb.dtype(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ResNetConfig {
        &self.config
    }

    /// Channels of the feature map and of the embedding (512 or 2048).
    pub fn feature_dim(&self) -> usize {
        self.config.feature_dim()
    }

    pub(crate) fn check_input(&self, x: &Tensor) -> Result<()> {
        let dims = x.dims();
        if dims.len() != 4 || dims[1] != self.config.in_channels || dims[2] == 0 || dims[3] == 0 {
            return Err(Error::InvalidInput(format!(
                "the {} encoder expects images of shape (N, {}, H, W), got {dims:?}",
                self.config.model, self.config.in_channels
            )));
        }
        if x.dtype() != self.dtype {
            return Err(Error::InvalidInput(format!(
                "images are {:?} but the encoder's weights are {:?}",
                x.dtype(),
                self.dtype
            )));
        }
        Ok(())
    }

    /// The feature map before pooling; batch statistics (and running-statistics updates) when
    /// `train`, running statistics otherwise.
    ///
    /// # Shapes
    /// `x`: `[N, C_in, H, W]` → `[N, D, ⌈H/32⌉, ⌈W/32⌉]` (exactly: each of the five stride-2
    /// steps maps a side `s` to `⌊(s − 1)/2⌋ + 1`).
    pub fn forward_features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input(x)?;
        let mut x = self.stem.forward_t_relu(x, train)?; // [N, 64, H/2, W/2]
        x = max_pool2d(&x, 3, 2, 1)?; // [N, 64, H/4, W/4]
        for stage in &self.stages {
            let blocks: Vec<BlockUnits> = stage.iter().map(Block::units).collect();
            // One autograd node per stage in training on the CPU.
            x = residual_stage(&x, &blocks, train)?;
        } // [N, D, H/32, W/32]
        Ok(x)
    }

    /// The feature map and its global average.
    ///
    /// # Shapes
    /// `x`: `[N, C_in, H, W]` → feature map `[N, D, H/32, W/32]`, pooled `[N, D]`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<ResNetOutput> {
        let feature_map = self.forward_features(x, train)?;
        let pooled = global_avg_pool2d(&feature_map)?; // [N, D]
        Ok(ResNetOutput {
            feature_map,
            pooled,
        })
    }

    /// The image embedding in eval mode (running statistics), differentiable with respect to
    /// the weights. For inference over many images, [`Self::fold`] once and embed with the
    /// folded copy: several times faster on the CPU.
    ///
    /// # Shapes
    /// `x`: `[N, C_in, H, W]` → `[N, D]`.
    pub fn embed(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_t(x, false)?.pooled)
    }

    /// Per-location features for localisation maps, as the reference's `forward_imaging(…,
    /// localized=True)` before its projection head: the feature map, bilinearly upsampled by
    /// `upsample_factor` (the reference's `upsample_factor_img`; 1 keeps it as is), with the
    /// channels moved last so that a [`crate::ProjectionHead`] applies per location.
    ///
    /// # Shapes
    /// `x`: `[N, C_in, H, W]` → `[N, H'', W'', D]` with `H'' = ⌊(H/32)·upsample_factor⌋`.
    pub fn forward_localized(
        &self,
        x: &Tensor,
        upsample_factor: f64,
        train: bool,
    ) -> Result<Tensor> {
        let mut map = self.forward_features(x, train)?; // [N, D, h, w]
        if upsample_factor != 1.0 {
            map = upsample_bilinear2d(&map, upsample_factor)?; // [N, D, h'', w'']
        }
        Ok(map.permute((0, 2, 3, 1))?.contiguous()?) // [N, h'', w'', D]
    }
}

impl ModuleT for ResNet {
    /// The pooled embedding `[N, D]`.
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        ResNet::forward_t(self, xs, train)
            .map(|o| o.pooled)
            .map_err(candle_core::Error::wrap)
    }
}

//! Configuration of the ResNet image encoder.

use std::fmt;
use std::str::FromStr;

use mmcl_nn::config::{MAX_ACTIVATIONS, MAX_PARAMETERS, checked_product, checked_sum};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The torchvision ResNet variants (names as the reference's `model` argument spells them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResNetArch {
    /// Basic blocks [2, 2, 2, 2], 512-dimensional embedding.
    ResNet18,
    /// Basic blocks [3, 4, 6, 3], 512-dimensional embedding.
    ResNet34,
    /// Bottleneck blocks [3, 4, 6, 3], 2048-dimensional embedding (the paper's image encoder).
    ResNet50,
    /// Bottleneck blocks [3, 4, 23, 3], 2048-dimensional embedding.
    ResNet101,
    /// Bottleneck blocks [3, 8, 36, 3], 2048-dimensional embedding.
    ResNet152,
}

/// The residual block type of a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3×3 convolutions (expansion 1).
    Basic,
    /// 1×1 → 3×3 → 1×1 convolutions, stride on the 3×3 (torchvision's "v1.5"; expansion 4).
    Bottleneck,
}

impl BlockKind {
    /// Output channels per `planes` of a stage.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

impl ResNetArch {
    /// Every variant, shallowest first.
    pub const ALL: [ResNetArch; 5] = [
        ResNetArch::ResNet18,
        ResNetArch::ResNet34,
        ResNetArch::ResNet50,
        ResNetArch::ResNet101,
        ResNetArch::ResNet152,
    ];

    /// The name used by torchvision and the reference (`resnet50`).
    pub fn name(self) -> &'static str {
        match self {
            ResNetArch::ResNet18 => "resnet18",
            ResNetArch::ResNet34 => "resnet34",
            ResNetArch::ResNet50 => "resnet50",
            ResNetArch::ResNet101 => "resnet101",
            ResNetArch::ResNet152 => "resnet152",
        }
    }

    /// The block type.
    pub fn block(self) -> BlockKind {
        match self {
            ResNetArch::ResNet18 | ResNetArch::ResNet34 => BlockKind::Basic,
            _ => BlockKind::Bottleneck,
        }
    }

    /// Blocks per stage (`layer1` … `layer4`).
    pub fn layers(self) -> [usize; 4] {
        match self {
            ResNetArch::ResNet18 => [2, 2, 2, 2],
            ResNetArch::ResNet34 | ResNetArch::ResNet50 => [3, 4, 6, 3],
            ResNetArch::ResNet101 => [3, 4, 23, 3],
            ResNetArch::ResNet152 => [3, 8, 36, 3],
        }
    }

    /// Channels of the feature map and of the pooled embedding (512 or 2048).
    pub fn feature_dim(self) -> usize {
        512 * self.block().expansion()
    }
}

impl fmt::Display for ResNetArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ResNetArch {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let lower = s.to_ascii_lowercase();
        ResNetArch::ALL
            .into_iter()
            .find(|a| a.name() == lower)
            .ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "unknown ResNet {s:?}: use one of resnet18, resnet34, resnet50, resnet101, \
                     resnet152"
                ))
            })
    }
}

/// Configuration of [`crate::ResNet`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResNetConfig {
    /// The variant (the reference's `model` argument).
    pub model: ResNetArch,
    /// Channels of the input images (3 for torchvision; CMR inputs often stack frames or
    /// slices as channels).
    pub in_channels: usize,
}

impl ResNetConfig {
    /// A configuration for `model` over `in_channels`-channel images.
    pub fn new(model: ResNetArch, in_channels: usize) -> Self {
        Self { model, in_channels }
    }

    /// ResNet18 over 3-channel images.
    pub fn resnet18() -> Self {
        Self::new(ResNetArch::ResNet18, 3)
    }

    /// ResNet34 over 3-channel images.
    pub fn resnet34() -> Self {
        Self::new(ResNetArch::ResNet34, 3)
    }

    /// ResNet50 over 3-channel images (the paper's image encoder).
    pub fn resnet50() -> Self {
        Self::new(ResNetArch::ResNet50, 3)
    }

    /// ResNet101 over 3-channel images.
    pub fn resnet101() -> Self {
        Self::new(ResNetArch::ResNet101, 3)
    }

    /// ResNet152 over 3-channel images.
    pub fn resnet152() -> Self {
        Self::new(ResNetArch::ResNet152, 3)
    }

    /// The same variant over `in_channels` channels.
    pub fn with_in_channels(mut self, in_channels: usize) -> Self {
        self.in_channels = in_channels;
        self
    }

    /// Channels of the feature map and the pooled embedding.
    pub fn feature_dim(&self) -> usize {
        self.model.feature_dim()
    }

    /// Checks the values: at least one input channel, and at most
    /// [`MAX_PARAMETERS`](mmcl_nn::config::MAX_PARAMETERS) parameters (the stem grows with
    /// `in_channels`), before anything is allocated.
    pub fn validate(&self) -> Result<()> {
        if self.in_channels == 0 {
            return Err(Error::InvalidConfig(
                "in_channels must be at least 1".into(),
            ));
        }
        mmcl_nn::config::check_limit(
            &format!("model {} and in_channels {}", self.model, self.in_channels),
            "parameters",
            self.parameter_count(),
            MAX_PARAMETERS,
        )
        .map_err(Error::InvalidConfig)
    }

    /// Parameters and batch-norm statistics of the encoder (no `fc`), with checked arithmetic:
    /// `None` when the count does not fit in 64 bits.
    pub fn parameter_count(&self) -> Option<u64> {
        // A bias-free k×k convolution and its batch norm (weight, bias, mean, variance).
        let conv_bn = |cin: u64, cout: u64, k: u64| {
            checked_sum(&[
                checked_product(&[cin, cout, k, k]),
                checked_product(&[4, cout]),
            ])
        };
        let kind = self.model.block();
        let expansion = kind.expansion() as u64;
        let mut terms = vec![conv_bn(self.in_channels as u64, 64, 7)];
        let mut cin = 64u64;
        for (stage, &blocks) in self.model.layers().iter().enumerate() {
            let planes = 64u64 << stage;
            let cout = planes * expansion;
            for b in 0..blocks {
                match kind {
                    BlockKind::Basic => {
                        terms.push(conv_bn(cin, planes, 3));
                        terms.push(conv_bn(planes, planes, 3));
                    }
                    BlockKind::Bottleneck => {
                        terms.push(conv_bn(cin, planes, 1));
                        terms.push(conv_bn(planes, planes, 3));
                        terms.push(conv_bn(planes, cout, 1));
                    }
                }
                if b == 0 && (stage > 0 || cin != cout) {
                    terms.push(conv_bn(cin, cout, 1));
                }
                cin = cout;
            }
        }
        checked_sum(&terms)
    }

    /// Checks that one `height` × `width` image fits the activation limit
    /// ([`MAX_ACTIVATIONS`](mmcl_nn::config::MAX_ACTIVATIONS)): the input, and the stem's and
    /// first stage's feature maps (64 and 64·expansion channels at ½ and ¼ resolution), the
    /// largest of the network. `what` names the setting the size comes from.
    pub fn check_image_size(&self, what: &str, height: usize, width: usize) -> Result<()> {
        let (h, w) = (height as u64, width as u64);
        let expansion = self.model.block().expansion() as u64;
        let largest = [
            checked_product(&[self.in_channels as u64, h, w]),
            checked_product(&[64, h.div_ceil(2), w.div_ceil(2)]),
            checked_product(&[64 * expansion, h.div_ceil(4), w.div_ceil(4)]),
        ]
        .into_iter()
        .try_fold(0u64, |acc, v| v.map(|v| acc.max(v)));
        mmcl_nn::config::check_limit(
            &format!("{what} {height}×{width} with model {}", self.model),
            "activations per image",
            largest,
            MAX_ACTIVATIONS,
        )
        .map_err(Error::InvalidConfig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for arch in ResNetArch::ALL {
            assert_eq!(arch.name().parse::<ResNetArch>().ok(), Some(arch));
            let json = serde_json::to_string(&arch).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", arch.name()));
        }
        assert!("ResNet50".parse::<ResNetArch>().is_ok());
        assert!("resnet49".parse::<ResNetArch>().is_err());
        assert_eq!(ResNetConfig::resnet50().feature_dim(), 2048);
        assert_eq!(ResNetConfig::resnet34().feature_dim(), 512);
        assert!(
            ResNetConfig::resnet18()
                .with_in_channels(0)
                .validate()
                .is_err()
        );
    }

    #[test]
    fn sizes_match_torchvision_and_absurd_ones_are_refused() {
        // torchvision's parameter counts without `fc`, plus 2·C per batch norm for its
        // running statistics.
        let count = |cfg: ResNetConfig| cfg.parameter_count().unwrap_or(0);
        let (r18, r50) = (
            count(ResNetConfig::resnet18()),
            count(ResNetConfig::resnet50()),
        );
        assert!((11_170_000..11_200_000).contains(&r18), "{r18}");
        assert!((23_500_000..23_620_000).contains(&r50), "{r50}");
        for huge in [1_000_000_000, usize::MAX] {
            let err = ResNetConfig::resnet50().with_in_channels(huge).validate();
            assert!(
                err.as_ref()
                    .is_err_and(|e| e.to_string().contains("in_channels")),
                "{err:?}"
            );
        }
        let cfg = ResNetConfig::resnet50();
        assert!(cfg.check_image_size("img_size", 210, 210).is_ok());
        let err = cfg.check_image_size("img_size", 1 << 20, 1 << 20);
        assert!(err.is_err_and(|e| e.to_string().contains("img_size")));
        assert!(
            cfg.check_image_size("img_size", usize::MAX, usize::MAX)
                .is_err()
        );
    }
}

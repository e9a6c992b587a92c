//! ResNet encoders over cardiac MRI short-axis images (torchvision layout) and SimCLR projection
//! heads, loadable from torchvision-style and released MMCL checkpoints.
//!
//! - [`ResNet`]: ResNet18/34/50/101/152 with any number of input channels, trainable (BatchNorm
//!   with PyTorch's train-mode semantics, differentiable stem max-pool) and returning both the
//!   pooled embedding and the feature map before pooling ([`ResNetOutput`]);
//!   [`ResNet::forward_localized`] gives the upsampled per-location features of the reference's
//!   localisation maps.
//! - [`ProjectionHead`]: `Linear → ReLU → Linear` (keys `layers.0`, `layers.2`).
//! - [`checkpoint`]: finds an encoder in torchvision or released (`encoder_imaging.<i>`) layout,
//!   loads it with a by-name report, and exports the released layout.
//! - [`FoldedResNet`]: an inference-only copy with BatchNorm folded into the convolutions.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use mmcl_cmr::{ProjectionHead, ResNet, ResNetConfig};
//! use mmcl_nn::ParamStore;
//!
//! # fn main() -> mmcl_cmr::Result<()> {
//! let store = ParamStore::new(0);
//! let vb = store.var_builder(DType::F32, &Device::Cpu);
//! // A ResNet18 over two-channel images (say, the ED and ES frames of one slice).
//! let config = ResNetConfig::resnet18().with_in_channels(2);
//! let encoder = ResNet::new(&config, vb.pp("encoder_imaging"))?;
//! let head = ProjectionHead::new(512, 2048, 128, vb.pp("projection_head_imaging"))?;
//! assert!(store.get("encoder_imaging.layer1.0.conv1.weight").is_some());
//!
//! let images = Tensor::randn(0f32, 1.0, (2, 2, 64, 64), &Device::Cpu)?;
//! let out = encoder.forward_t(&images, false)?;
//! assert_eq!(out.pooled.dims(), &[2, 512]);
//! assert_eq!(out.feature_map.dims(), &[2, 512, 2, 2]);
//! assert_eq!(head.forward(&out.pooled)?.dims(), &[2, 128]);
//! # Ok(())
//! # }
//! ```

pub mod checkpoint;
mod config;
mod error;
mod folded;
mod head;
mod resnet;
mod upsample;

pub use config::{BlockKind, ResNetArch, ResNetConfig};
pub use error::{Error, Result};
pub use folded::FoldedResNet;
pub use head::ProjectionHead;
pub use resnet::{ResNet, ResNetOutput};
pub use upsample::upsample_bilinear2d;

//! A frozen image tower (`imaging.frozen`, the reference's `pretrained_imaging_strategy:
//! frozen`) is used as it was loaded: no gradient, and its BatchNorm layers in evaluation mode,
//! so a training step leaves their running statistics as they were.

use candle_core::{Device, Tensor};
use mmcl_cmr::{ResNetArch, ResNetConfig};
use mmcl_ecg::EcgVitConfig;
use mmcl_losses::clip::ClipLoss;
use mmcl_nn::init::WeightInit;
use mmcl_train::config::{ClassifierInit, OnlineClassifier};
use mmcl_train::mmcl::contrastive_loss;
use mmcl_train::{MmclArchitecture, MmclModel};

fn model() -> MmclModel {
    let arch = MmclArchitecture {
        imaging: ResNetConfig::new(ResNetArch::ResNet18, 3),
        ecg: EcgVitConfig {
            model: None,
            img_size: [1, 12, 100],
            patch_size: [1, 50],
            embed_dim: 16,
            depth: 1,
            num_heads: 2,
            drop_path_rate: 0.0,
            num_classes: 0,
            weight_init: WeightInit::Timm,
            ..EcgVitConfig::paper()
        },
        embedding_dim: 512,
        projection_dim: 16,
        classifier: OnlineClassifier::None,
        classifier_init: ClassifierInit::Kaiming,
    };
    MmclModel::new(&arch, 0, &Device::Cpu).expect("model")
}

/// The image tower's BatchNorm running means, flattened, after one training forward.
fn running_means_after_step(frozen: bool) -> (Vec<f32>, Vec<f32>) {
    let model = model();
    let running = |m: &MmclModel| -> Vec<f32> {
        let sd = m.image_encoder_state_dict().expect("state");
        let mut v = Vec::new();
        for (key, t) in sd.iter() {
            if key.ends_with("running_mean") {
                v.extend(t.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            }
        }
        v
    };
    let before = running(&model);
    let images = Tensor::randn(0f32, 1.0, (4, 3, 32, 32), &Device::Cpu).unwrap();
    let ecgs = Tensor::randn(0f32, 1.0, (4, 1, 12, 100), &Device::Cpu).unwrap();
    let clip = ClipLoss::new(0.1, 0.5).unwrap();
    contrastive_loss(&model, &clip, &images, &ecgs, true, frozen).expect("step");
    (before, running(&model))
}

#[test]
fn a_frozen_image_tower_keeps_its_batchnorm_statistics() {
    let (before, after) = running_means_after_step(true);
    assert!(!before.is_empty(), "the tower has BatchNorm layers");
    assert_eq!(before, after, "frozen: running statistics unchanged");
    // The check can fail: a trainable tower updates them in the same step.
    let (before, after) = running_means_after_step(false);
    assert_ne!(before, after, "trainable: running statistics updated");
}

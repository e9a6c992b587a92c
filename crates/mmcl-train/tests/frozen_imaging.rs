//! A frozen image tower (`imaging.frozen`, the reference's `pretrained_imaging_strategy:
//! frozen`) is used as it was loaded: no gradient, and its BatchNorm layers in evaluation mode,
//! so a training step leaves their running statistics as they were.

mod common;

use candle_core::Device;
use common::small_architecture;
use mmcl_losses::clip::ClipLoss;
use mmcl_train::MmclModel;
use mmcl_train::mmcl::contrastive_loss;

fn model() -> MmclModel {
    MmclModel::new(&small_architecture(), 0, &Device::Cpu).expect("model")
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
    let images = mmcl_testutil::seeded_randn(1, &[4, 3, 32, 32]);
    let ecgs = mmcl_testutil::seeded_randn(2, &[4, 1, 12, 200]);
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

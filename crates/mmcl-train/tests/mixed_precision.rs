//! The `precision` setting of the trainers: bf16 matrix products (f32 sums, weights and
//! optimiser) give the f32 step's loss to bf16 accuracy, actually change the arithmetic, and
//! leave the thread's precision as it was.

use candle_core::{Device, Tensor};
use mmcl_ecg::mae::{MaeConfig, MaskedAutoencoder};
use mmcl_nn::precision::{Precision, matmul_precision};
use mmcl_nn::rng::SplitMix64;
use mmcl_train::{MaeStep, MaeTrainConfig};

/// The total losses of two consecutive steps on one fixed batch.
fn two_step_losses(precision: Precision) -> [f64; 2] {
    let mut cfg = MaeTrainConfig {
        precision,
        ..MaeTrainConfig::default()
    };
    cfg.model = MaeConfig::preset("mae_vit_tiny_patchX", [1, 12, 200], [1, 20]).expect("preset");
    let device = Device::Cpu;
    let (model, store) = MaskedAutoencoder::from_seed(&cfg.model, 0, &device).expect("model");
    let mut step = MaeStep::new(model, store, &cfg).expect("step");
    let mut rng = SplitMix64::new(3);
    let values: Vec<f32> = (0..4 * 12 * 200)
        .map(|_| rng.next_normal() as f32)
        .collect();
    let batch = Tensor::from_vec(values, (4, 1, 12, 200), &device).expect("batch");
    let losses = [0, 1].map(|_| step.train_batch(&batch, 1e-3).expect("step").metrics.total);
    assert_eq!(
        matmul_precision(),
        Precision::F32,
        "the step restores the precision"
    );
    losses
}

#[test]
fn bf16_steps_track_the_f32_steps() {
    let f32_losses = two_step_losses(Precision::F32);
    let bf16_losses = two_step_losses(Precision::Bf16);
    for (a, b) in f32_losses.iter().zip(&bf16_losses) {
        assert!(a.is_finite() && b.is_finite());
        // bf16 keeps 8 significant bits: the loss agrees to about a percent.
        assert!((a - b).abs() <= 2e-2 * a.abs(), "f32 {a} vs bf16 {b}");
    }
    assert_ne!(
        f32_losses, bf16_losses,
        "bf16 products must change the arithmetic (the setting did not reach the kernels)"
    );
}

#[test]
fn precision_is_a_configuration_key() {
    let cfg: MaeTrainConfig = toml::from_str("precision = \"bf16\"").expect("parses");
    assert_eq!(cfg.precision, Precision::Bf16);
    assert!(toml::from_str::<MaeTrainConfig>("precision = \"fp8\"").is_err());
    let cfg: mmcl_train::MmclConfig = toml::from_str("precision = \"bf16\"").expect("parses");
    assert_eq!(cfg.precision, Precision::Bf16);
}

//! Criterion benchmarks of fine-tuning and localisation at the paper's shapes.
//!
//! - `finetune_step_b32`: one optimisation step of the fine-tuning model (`vit_tiny_patchX` on
//!   1×12×2500, attention pooling, drop-path 0.2, two-logit head): forward in training mode,
//!   label-smoothed cross-entropy, backward, AdamW over layer-decayed groups. The anchor is
//!   `reference_finetune_step.py` (the same step in plain PyTorch).
//! - `localize_b1`: the three localisation maps of one subject (the ECG encoder and a ResNet50
//!   over 3×210×210, projection heads 2048 → 2048 → 128, upsampling ×2).
//!
//! `cargo bench --bench finetune -- --measurement-time 20`

use candle_core::{DType, Device, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use mmcl_cmr::ResNetConfig;
use mmcl_ecg::EcgVitConfig;
use mmcl_eval::finetune::{FinetuneConfig, FinetuneModel};
use mmcl_eval::localization::{self, LocalizationConfig};
use mmcl_losses::classification::smoothed_cross_entropy;
use mmcl_nn::optim::{Adam, AdamConfig, ParamGroup};
use mmcl_train::{MmclArchitecture, MmclModel};

fn finetune_step(c: &mut Criterion) {
    mmcl_nn::memory::keep_freed_memory();
    // SAFETY: criterion runs the benchmarks on this thread and has started no other.
    unsafe { mmcl_nn::threads::share_cores_with_candle(rayon::current_num_threads()) };
    let cpu = Device::Cpu;
    // The fine-tuning encoder: the paper's, with attention pooling and drop-path 0.2.
    let cfg = FinetuneConfig::default().encoder;
    let model = FinetuneModel::new(&cfg, 2, 0.01, true, 0, &cpu).expect("model");
    let mut groups = ParamGroup::layer_decay_groups(model.store(), "", cfg.depth, 0.2, 0.5);
    let unused = model.unused_parameters();
    for g in &mut groups {
        g.vars.retain(|(n, _)| !unused.contains(n));
    }
    groups.retain(|g| !g.vars.is_empty());
    // AdamW with torch's default betas and eps, as the fine-tuning loop builds it.
    let adamw = AdamConfig {
        decoupled_weight_decay: true,
        ..AdamConfig::adam_l2()
    };
    let mut adam = Adam::new(groups, adamw).expect("optimiser");
    let x = Tensor::randn(0f32, 1.0, (32, 1, 12, 2500), &cpu).expect("input");
    let labels = Tensor::from_vec(
        (0..32).map(|i| (i % 2) as f32).collect::<Vec<_>>(),
        32,
        &cpu,
    )
    .expect("labels");
    let mask = Tensor::ones(32, DType::F32, &cpu).expect("mask");
    let mut group = c.benchmark_group("finetune");
    group.sample_size(10);
    group.bench_function("finetune_step_b32", |b| {
        b.iter(|| {
            let logits = model.forward_t(&x, true).expect("forward");
            let loss = smoothed_cross_entropy(&logits, &labels, &mask, 0.1).expect("loss");
            let grads = loss.backward().expect("backward");
            adam.step(&grads, 1e-4).expect("step");
        })
    });
    group.finish();
}

fn localize(c: &mut Criterion) {
    mmcl_nn::memory::keep_freed_memory();
    // SAFETY: criterion runs the benchmarks on this thread and has started no other.
    unsafe { mmcl_nn::threads::share_cores_with_candle(rayon::current_num_threads()) };
    let cpu = Device::Cpu;
    let arch = MmclArchitecture::without_classifier(
        &EcgVitConfig::paper(),
        &ResNetConfig::resnet50(),
        2048,
        128,
    );
    let model = MmclModel::new(&arch, 0, &cpu).expect("model");
    let ecg = Tensor::randn(0f32, 1.0, (1, 1, 12, 2500), &cpu).expect("ecg");
    let image = Tensor::rand(0f32, 1.0, (1, 3, 210, 210), &cpu).expect("image");
    let cfg = LocalizationConfig::default();
    let mut group = c.benchmark_group("localization");
    group.sample_size(10);
    group.bench_function("localize_b1", |b| {
        b.iter(|| localization::localize(&model, &ecg, &image, &cfg).expect("maps"))
    });
    group.finish();
}

criterion_group!(benches, finetune_step, localize);
criterion_main!(benches);

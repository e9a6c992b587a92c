//! One multimodal (MMCL) training step at the paper's shapes: batch 16, ResNet50 over 3×210×210
//! images (train mode), `vit_tiny_patchX` over 1×12×2500 ECGs (drop-path 0.1), projection heads
//! 2048–2048–128 and 384–2048–128, CLIP loss (τ 0.1, λ 0.5), backward, and Adam with L2 weight
//! decay over every parameter — [`mmcl_suite::train::MmclStep::train_batch`] without the online
//! classifier, as `benches/reference_mmcl_step.py` runs the reference.
//!
//! The reference PyTorch code does 4.3 samples/s on the project's 2-thread CPU machine.
//!
//! `reduced_defaults` is the step `mmcl reproduce` trains with by default: batch 32, ResNet18
//! over 3×48×48 images, `vit_pluto_patchX` over 1×12×500 ECGs, heads 256 → 64
//! (`ReproduceConfig::default().mmcl`).
//!
//! ```sh
//! cargo bench --bench mmcl_step -- --measurement-time 60
//! python3 benches/reference_mmcl_step.py --threads 2 --iters 3
//! ```

mod common;

use std::hint::black_box;
use std::time::Duration;

use anyhow::Result;
use candle_core::{Device, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use mmcl_suite::nn::precision::Precision;
use mmcl_suite::pipeline::ReproduceConfig;
use mmcl_suite::train::config::OnlineClassifier;
use mmcl_suite::train::mmcl::MmclBatch;
use mmcl_suite::train::{MmclArchitecture, MmclConfig, MmclModel, MmclStep};

const BATCH: usize = 16;

fn setup(device: &Device) -> Result<(MmclStep, MmclBatch, f64)> {
    let mut cfg = MmclConfig::default();
    cfg.classifier.online_classifier = OnlineClassifier::None;
    cfg.batch_size = BATCH;
    setup_with(&cfg, device)
}

/// The step of `cfg` on a batch of random images and ECGs at its shapes.
fn setup_with(cfg: &MmclConfig, device: &Device) -> Result<(MmclStep, MmclBatch, f64)> {
    let arch = MmclArchitecture::from_config(cfg, 3)?;
    let model = MmclModel::new(&arch, cfg.seed, device)?;
    let step = MmclStep::new(model, cfg)?;
    let (size, [_, leads, samples]) = (cfg.imaging.img_size, cfg.ecg.input_size);
    let batch = MmclBatch {
        images: Tensor::randn(0f32, 1.0, (cfg.batch_size, 3, size, size), device)?,
        ecgs: Tensor::randn(0f32, 1.0, (cfg.batch_size, 1, leads, samples), device)?,
        images_orig: None,
        ecgs_orig: None,
        targets: None,
    };
    Ok((step, batch, cfg.lr))
}

fn reduced_defaults(c: &mut Criterion) {
    let cfg = ReproduceConfig::default().mmcl;
    let mut group = common::batch_group(c, "mmcl_step", cfg.batch_size, 30);
    common::on_each_device(
        |device| setup_with(&cfg, device),
        |name, (mut step, batch, lr)| {
            group.bench_function(format!("reduced_defaults/{name}"), |b| {
                b.iter(|| {
                    let report = step.train_batch(black_box(&batch), lr);
                    black_box(report.map(|r| r.loss))
                })
            });
        },
    );
    group.finish();
}

fn mmcl_step(c: &mut Criterion) {
    let mut group = common::batch_group(c, "mmcl_step", BATCH, 60);
    group.warm_up_time(Duration::from_secs(5));
    common::on_each_device(setup, |name, (mut step, batch, lr)| {
        group.bench_function(format!("resnet50_210px_vit_tiny_b{BATCH}/{name}"), |b| {
            b.iter(|| {
                let report = step.train_batch(black_box(&batch), lr);
                black_box(report.map(|r| r.loss))
            })
        });
        if name == "cpu" {
            // Mixed precision: bf16 operands, f32 sums, weights and optimiser (AMX where present).
            group.bench_function(format!("resnet50_210px_vit_tiny_b{BATCH}/cpu_bf16"), |b| {
                b.iter(|| {
                    let _bf16 = Precision::Bf16.enter();
                    let report = step.train_batch(black_box(&batch), lr);
                    black_box(report.map(|r| r.loss))
                })
            });
        }
    });
    group.finish();
}

criterion_group!(benches, mmcl_step, reduced_defaults);
criterion_main!(benches);

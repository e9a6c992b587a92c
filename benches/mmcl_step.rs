//! One multimodal (MMCL) training step at the paper's shapes: batch 16, ResNet50 over 3×210×210
//! images (train mode), `vit_tiny_patchX` over 1×12×2500 ECGs (drop-path 0.1), projection heads
//! 2048–2048–128 and 384–2048–128, CLIP loss (τ 0.1, λ 0.5), backward, and Adam with L2 weight
//! decay over every parameter — [`mmcl_suite::train::MmclStep::train_batch`] without the online
//! classifier, as `benches/reference_mmcl_step.py` runs the reference.
//!
//! The reference PyTorch code's speed moves with the machine and the minute (2.3–3.8 samples/s
//! on the Zen 4 machines of `docs/performance.md`): compare it in the same minutes.
//!
//! `reduced_defaults` is the step `mmcl reproduce` trains with by default: batch 32, ResNet18
//! over 3×48×48 images, `vit_pluto_patchX` over 1×8×500 ECGs (the eight independent leads),
//! heads 256 → 64 (`ReproduceConfig::default().mmcl`).
//!
//! `mmcl_encoders` times the step's two encoders alone (train-mode forward, a sum, backward),
//! the reference's with `--part image` and `--part ecg`.
//!
//! ```sh
//! cargo bench --bench mmcl_step -- --measurement-time 60
//! python3 benches/reference_mmcl_step.py --threads 2 --iters 3
//! python3 benches/reference_mmcl_step.py --threads 2 --iters 5 --part image
//! ```

mod common;

use std::hint::black_box;
use std::time::Duration;

use common::workloads::{MMCL_STEP_BATCH as BATCH, MmclEncoderPasses, MmclTrainingStep};
use criterion::{Criterion, criterion_group};
use mmcl_suite::nn::precision::Precision;
use mmcl_suite::pipeline::ReproduceConfig;

fn reduced_defaults(c: &mut Criterion) {
    let cfg = ReproduceConfig::default().mmcl;
    let mut group = common::batch_group(c, "mmcl_step", cfg.batch_size, 30);
    common::on_each_device(
        |device| MmclTrainingStep::with_config(&cfg, device),
        |name, mut step| {
            group.bench_function(format!("reduced_defaults/{name}"), |b| {
                b.iter(|| black_box(step.run()))
            });
        },
    );
    group.finish();
}

fn mmcl_step(c: &mut Criterion) {
    let mut group = common::batch_group(c, "mmcl_step", BATCH, 60);
    group.warm_up_time(Duration::from_secs(5));
    for precision in [Precision::F32, Precision::Bf16] {
        // Mixed precision: bf16 operands, f32 sums, weights and optimiser (AMX where present on
        // the CPU, cuBLAS's bf16 products on a GPU). The step enters the precision it was built
        // with, not the caller's.
        let suffix = match precision {
            Precision::F32 => "",
            Precision::Bf16 => "_bf16",
        };
        common::on_each_device(
            |device| MmclTrainingStep::new(device, BATCH, precision),
            |name, mut step| {
                group.bench_function(
                    format!("resnet50_210px_vit_tiny_b{BATCH}/{name}{suffix}"),
                    |b| b.iter(|| black_box(step.run())),
                );
            },
        );
    }
    group.finish();
}

/// The step's two encoders alone (`MmclEncoderPasses`), against
/// `reference_mmcl_step.py --part image|ecg`.
fn encoders(c: &mut Criterion) {
    let mut group = common::batch_group(c, "mmcl_encoders", BATCH, 30);
    common::on_each_device(
        |device| MmclEncoderPasses::new(device, BATCH),
        |name, passes| {
            group.bench_function(format!("resnet50_210px_fwd_bwd_b{BATCH}/{name}"), |b| {
                b.iter(|| black_box(passes.image_trunk()))
            });
            group.bench_function(format!("vit_tiny_fwd_bwd_b{BATCH}/{name}"), |b| {
                b.iter(|| black_box(passes.ecg_encoder()))
            });
        },
    );
    group.finish();
}

criterion_group!(benches, mmcl_step, reduced_defaults, encoders);
fn main() {
    common::main_with_census(benches);
}

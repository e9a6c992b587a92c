//! One masked-autoencoder training step at the paper's shapes: `mae_vit_tiny_patchX` (encoder
//! 384 wide, 3 blocks; decoder 256 wide, 2 blocks) on a batch of 32 ECGs of 1×12×2500 (1×100
//! patches), mask ratio 0.8, the full reference objective (all-patch normalised-pixel MSE + NCC,
//! SimSiam term on a second view), backward, and an AdamW step (betas 0.9/0.95, weight decay
//! 0.15), f32 on the CPU (and on CUDA when built with `--features cuda` and a device is
//! present).
//!
//! The reference PyTorch code (`benches/reference_mae_step.py`) runs 18.0 samples/s on the
//! project's 2-thread CPU machine.
//!
//! ```sh
//! cargo bench --bench mae_step -- --measurement-time 30
//! # with the forward and forward + backward passes timed on their own:
//! MAE_STEP_BREAKDOWN=1 cargo bench --bench mae_step -- --measurement-time 30
//! ```

mod common;

use std::hint::black_box;

use common::workloads::{MAE_STEP_BATCH as BATCH, MaeStep};
use criterion::{Criterion, criterion_group};
use mmcl_suite::nn::precision::Precision;

fn mae_step(c: &mut Criterion) {
    let mut group = common::batch_group(c, "mae_step", BATCH, 30);
    common::on_each_device(
        |device| MaeStep::new(device, BATCH),
        |name, mut step| {
            // Where the time goes: the objective's forward pass, plus the backward pass.
            if std::env::var_os("MAE_STEP_BREAKDOWN").is_some() {
                group.bench_function(format!("forward/{name}"), |b| {
                    b.iter(|| black_box(step.forward().unwrap_or_else(|e| panic!("{e:#}"))))
                });
                group.bench_function(format!("forward_backward/{name}"), |b| {
                    b.iter(|| {
                        black_box(step.forward_backward().unwrap_or_else(|e| panic!("{e:#}")))
                    })
                });
            }
            group.bench_function(
                format!("mae_vit_tiny_patchX_b{BATCH}_mask0.8/{name}"),
                |b| {
                    b.iter(|| {
                        let loss = step
                            .run()
                            .unwrap_or_else(|e| panic!("the training step failed: {e:#}"));
                        black_box(loss)
                    })
                },
            );
            {
                // Mixed precision: bf16 operands, f32 sums, weights and optimiser (AMX where present
                // on the CPU, cuBLAS's bf16 products on a GPU).
                group.bench_function(
                    format!("mae_vit_tiny_patchX_b{BATCH}_mask0.8/{name}_bf16"),
                    |b| {
                        b.iter(|| {
                            let _bf16 = Precision::Bf16.enter();
                            let loss = step
                                .run()
                                .unwrap_or_else(|e| panic!("the training step failed: {e:#}"));
                            black_box(loss)
                        })
                    },
                );
            }
        },
    );
    group.finish();
}

criterion_group!(benches, mae_step);
fn main() {
    common::main_with_census(benches);
}

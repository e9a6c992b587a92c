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

use anyhow::Result;
use candle_core::{Device, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use mmcl_suite::ecg::mae::{MaeConfig, MaskedAutoencoder};
use mmcl_suite::losses::mae::{MaeLoss, MaeLossConfig};
use mmcl_suite::nn::optim::{Adam, AdamConfig};
use mmcl_suite::nn::precision::Precision;
use mmcl_suite::nn::rng::SharedRng;

const BATCH: usize = 32;

/// Everything one training step needs.
struct Step {
    model: MaskedAutoencoder,
    objective: MaeLoss,
    optimiser: Adam,
    rng: SharedRng,
    x: Tensor,
}

impl Step {
    fn new(device: &Device) -> Result<Self> {
        let cfg = MaeConfig::paper();
        let (model, store) = MaskedAutoencoder::from_seed(&cfg, 0, device)?;
        let optimiser = Adam::new(
            MaskedAutoencoder::param_groups(&store, 0.15),
            AdamConfig::adamw_mae(),
        )?;
        let objective = MaeLoss::new(MaeLossConfig::paper())?;
        let x = Tensor::randn(0f32, 1.0, (BATCH, 1, 12, 2500), device)?;
        Ok(Self {
            model,
            objective,
            optimiser,
            rng: SharedRng::new(1),
            x,
        })
    }

    fn forward(&self) -> Result<f32> {
        let out = self
            .objective
            .forward_random(&self.model, &self.x, &self.rng, true)?;
        Ok(out.total.to_device(&Device::Cpu)?.to_scalar::<f32>()?)
    }

    fn forward_backward(&self) -> Result<usize> {
        let out = self
            .objective
            .forward_random(&self.model, &self.x, &self.rng, true)?;
        let grads = out.total.backward()?;
        Ok(grads.get_ids().count())
    }

    fn run(&mut self) -> Result<f32> {
        let out = self
            .objective
            .forward_random(&self.model, &self.x, &self.rng, true)?;
        let grads = out.total.backward()?;
        self.optimiser.step(&grads, 1e-4)?;
        Ok(out.total.to_device(&Device::Cpu)?.to_scalar::<f32>()?)
    }
}

fn mae_step(c: &mut Criterion) {
    let mut group = common::batch_group(c, "mae_step", BATCH, 30);
    common::on_each_device(Step::new, |name, mut step| {
        // Where the time goes: the objective's forward pass, plus the backward pass.
        if std::env::var_os("MAE_STEP_BREAKDOWN").is_some() {
            group.bench_function(format!("forward/{name}"), |b| {
                b.iter(|| black_box(step.forward().unwrap_or_else(|e| panic!("{e:#}"))))
            });
            group.bench_function(format!("forward_backward/{name}"), |b| {
                b.iter(|| black_box(step.forward_backward().unwrap_or_else(|e| panic!("{e:#}"))))
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
        if name == "cpu" {
            // Mixed precision: bf16 operands, f32 sums, weights and optimiser (AMX where present).
            group.bench_function(
                format!("mae_vit_tiny_patchX_b{BATCH}_mask0.8/cpu_bf16"),
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
    });
    group.finish();
}

criterion_group!(benches, mae_step);
criterion_main!(benches);

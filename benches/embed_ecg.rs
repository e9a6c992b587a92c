//! Embedding throughput of the paper's ECG encoder: `vit_tiny_patchX` on 1×12×2500 inputs
//! (1×100 patches, 300 tokens + class token), global pooling, batch 64, evaluation mode, f32 on
//! the CPU (and on CUDA when built with `--features cuda` and a device is present).
//!
//! The reference PyTorch code embeds 27.5 samples/s on the project's 2-thread CPU machine.
//!
//! ```sh
//! cargo bench --bench embed_ecg -- --measurement-time 20
//! ```

mod common;

use std::hint::black_box;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use mmcl_suite::ecg::{EcgVit, EcgVitConfig, Pooling};

const BATCH: usize = 64;

fn setup(device: &Device) -> Result<(EcgVit, Tensor)> {
    let cfg = EcgVitConfig::paper();
    let (model, _store) = EcgVit::from_seed(&cfg, 0, device)?;
    let x = Tensor::randn(0f32, 1.0, (BATCH, 1, 12, 2500), device)?.to_dtype(DType::F32)?;
    Ok((model, x))
}

fn embed_ecg(c: &mut Criterion) {
    let mut group = common::batch_group(c, "embed_ecg", BATCH, 20);
    common::on_each_device(setup, |name, (model, x)| {
        group.bench_function(format!("vit_tiny_patchX_b{BATCH}_global/{name}"), |b| {
            b.iter(|| {
                let y = model
                    .embed(black_box(&x), Pooling::Global)
                    .and_then(|y| Ok(y.to_device(&Device::Cpu)?));
                black_box(y.map(|y| y.dims().to_vec()))
            })
        });
    });
    group.finish();
}

criterion_group!(benches, embed_ecg);
criterion_main!(benches);

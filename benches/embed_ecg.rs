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

use common::workloads::{ECG_EMBEDDING_BATCH as BATCH, EcgEmbedding};
use criterion::{Criterion, criterion_group};

fn embed_ecg(c: &mut Criterion) {
    let mut group = common::batch_group(c, "embed_ecg", BATCH, 20);
    common::on_each_device(
        |device| EcgEmbedding::new(device, BATCH),
        |name, workload| {
            group.bench_function(format!("vit_tiny_patchX_b{BATCH}_global/{name}"), |b| {
                b.iter(|| black_box(workload.run()))
            });
        },
    );
    group.finish();
}

criterion_group!(benches, embed_ecg);
fn main() {
    common::main_with_census(benches);
}

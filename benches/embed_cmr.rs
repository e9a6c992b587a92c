//! ResNet50 image embedding at the paper's shape: batch 16, 3×210×210, eval mode, on the CPU
//! (and on CUDA when built with `--features cuda` and a device is present).
//!
//! The reference PyTorch code does 35.1 samples/s on this machine kind with 2 threads; criterion
//! reports our throughput in elements (samples) per second. Variants:
//! - `folded`: [`mmcl_cmr::FoldedResNet::embed`], BatchNorm folded into the convolutions, run
//!   by the device's engine: the channels-last CPU kernels on the CPU (what `mmcl embed-cmr`
//!   runs), candle's operations elsewhere;
//! - `folded_tensor_ops`: the same folded model as candle tensor operations (the engine used
//!   on GPUs; on the CPU its convolutions are the channels-first gemm operation of
//!   `mmcl_nn::conv::conv2d`);
//! - `resnet`: [`mmcl_cmr::ResNet::embed`], the trainable model in eval mode (BatchNorm as its
//!   own pass, autograd-tracked tensors).
//!
//! On the CPU the group's names are the variants' alone (as earlier runs recorded them); on a
//! GPU they end in `/cuda`.

mod common;

use std::hint::black_box;

use common::workloads::{CMR_EMBEDDING_BATCH as BATCH, CMR_SIDE, CmrEmbedding};
use criterion::{Criterion, criterion_group};

fn embed_resnet50(c: &mut Criterion) {
    let mut group = common::batch_group(
        c,
        &format!("embed_cmr_resnet50_b{BATCH}_{CMR_SIDE}px"),
        BATCH,
        5,
    );
    common::on_each_device(
        |device| CmrEmbedding::new(device, BATCH),
        |name, workload| {
            let id = |variant: &str| match name {
                "cpu" => variant.to_string(),
                _ => format!("{variant}/{name}"),
            };
            group.bench_function(id("folded"), |b| {
                b.iter(|| black_box(workload.run(&workload.folded)))
            });
            // Off the CPU `folded` already runs candle's operations.
            if name == "cpu" {
                group.bench_function(id("folded_tensor_ops"), |b| {
                    b.iter(|| black_box(workload.run(&workload.folded_tensor_ops)))
                });
            }
            group.bench_function(id("resnet"), |b| {
                b.iter(|| black_box(workload.run_resnet()))
            });
        },
    );
    group.finish();
}

criterion_group!(benches, embed_resnet50);
fn main() {
    common::main_with_census(benches);
}

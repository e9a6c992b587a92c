//! ResNet50 image embedding at the paper's shape: batch 16, 3×210×210, eval mode, CPU.
//!
//! The reference PyTorch code does 35.1 samples/s on this machine kind with 2 threads; criterion
//! reports our throughput in elements (samples) per second. Variants:
//! - `folded`: [`mmcl_cmr::FoldedResNet::embed`], BatchNorm folded into the convolutions, run
//!   by the channels-last CPU engine (what `mmcl embed-cmr` runs);
//! - `folded_tensor_ops`: the same folded model run as candle tensor operations (the engine used
//!   on GPUs; on the CPU its convolutions are the channels-first gemm operation of
//!   `mmcl_nn::conv::conv2d`);
//! - `resnet`: [`ResNet::embed`], the trainable model in eval mode (BatchNorm as its own pass,
//!   autograd-tracked tensors).

use candle_core::{DType, Device, Tensor};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mmcl_cmr::{ResNet, ResNetConfig};
use mmcl_nn::ParamStore;

const BATCH: usize = 16;
const SIDE: usize = 210;

fn embed_resnet50(c: &mut Criterion) {
    let device = Device::Cpu;
    let store = ParamStore::new(0);
    let model = match ResNet::new(
        &ResNetConfig::resnet50(),
        store.var_builder(DType::F32, &device),
    ) {
        Ok(model) => model,
        Err(e) => panic!("cannot build ResNet50: {e}"),
    };
    let (folded, folded_tensor_ops) = match (model.fold(), model.fold_tensor_ops()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => panic!("cannot fold ResNet50: {e}"),
    };
    let images = match Tensor::randn(0f32, 1.0, (BATCH, 3, SIDE, SIDE), &device) {
        Ok(t) => t,
        Err(e) => panic!("cannot make images: {e}"),
    };
    let mut group = c.benchmark_group("embed_cmr_resnet50_b16_210px");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(10);
    group.bench_function("folded", |b| {
        b.iter(|| folded.embed(&images).map(|t| t.dims().to_vec()))
    });
    group.bench_function("folded_tensor_ops", |b| {
        b.iter(|| folded_tensor_ops.embed(&images).map(|t| t.dims().to_vec()))
    });
    group.bench_function("resnet", |b| {
        b.iter(|| model.embed(&images).map(|t| t.dims().to_vec()))
    });
    group.finish();
}

criterion_group!(benches, embed_resnet50);
criterion_main!(benches);

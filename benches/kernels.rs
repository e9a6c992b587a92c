//! Kernel-level benchmarks for profiling, at the paper's shapes, CPU, f32.
//!
//! ECG encoder (`vit_tiny_patchX`): D 384, 6 heads, 301 tokens (300 patches of 1×100 plus the
//! class token); batch 64 for the inference (`fwd`) figures, batch 32 for the training
//! (`fwd_bwd`: forward, sum, backward) figures. The MAE decoder (`mae_decoder/…`): D 256, 8
//! heads, the same tokens, batch 32. ResNet50 first layers at 210×210, batch 16.
//!
//! Every kernel is called the way the models call it (`mmcl_nn::ops`, `mmcl_nn::conv`,
//! `mmcl_nn::pool`; the ECG patch embedding is `mmcl_ecg::PatchEmbed::forward`'s reshape and
//! linear map). `reference_kernels.py` next to this file runs the same shapes in plain PyTorch
//! (2 threads) under the same names, so that each kernel gets a ratio.
//!
//! `peak/fma_f32_1thread` is the CPU's f32 multiply-add peak on one thread, the yardstick of
//! `docs/performance.md`'s "Against the machine's peak".
//!
//! ```sh
//! cargo bench --bench kernels -- --warm-up-time 1 --measurement-time 3
//! python3 benches/reference_kernels.py --threads 2
//! # On a shared machine: CPU time per call ÷ threads (both programs print it).
//! MMCL_BENCH_CLOCK=cpu cargo bench --bench kernels -- --measurement-time 3
//! ```

use std::hint::black_box;
use std::time::Duration;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use criterion::{
    BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main, measurement::WallTime,
};
use mmcl_nn::batch_norm::{BatchNormConfig, batch_norm};
use mmcl_nn::params::ParamStore;
use mmcl_nn::precision::Precision;
use mmcl_nn::{conv, ops, pool};
use mmcl_suite::ecg::mae::MaeConfig;

#[path = "common/workloads.rs"]
mod workloads;

use workloads::{
    CMR_EMBEDDING_BATCH as IMAGE_BATCH, CMR_SIDE as IMAGE_SIDE, ECG_DIM as DIM,
    ECG_EMBEDDING_BATCH as INFER_BATCH, ECG_HEADS as HEADS, ECG_TOKENS as TOKENS,
    MAE_STEP_BATCH as TRAIN_BATCH,
};

fn randn(shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::randn(0f32, 1.0, shape, &Device::Cpu)?)
}

fn var(shape: &[usize], std: f64) -> Result<Var> {
    Ok(Var::from_tensor(&(randn(shape)? * std)?)?)
}

/// Times `step` under `name`.
fn bench(group: &mut BenchmarkGroup<WallTime>, name: &str, step: impl Fn() -> Result<()>) {
    group.bench_function(name, |b| {
        timed(b, || {
            // A failing kernel stops the run: timing errors would be meaningless.
            if let Err(e) = step() {
                panic!("{name}: {e:#}");
            }
        })
    });
}

/// Times `forward` alone.
fn bench_fwd<E: Into<anyhow::Error>>(
    group: &mut BenchmarkGroup<WallTime>,
    name: &str,
    forward: impl Fn() -> std::result::Result<Tensor, E>,
) {
    bench(group, name, || {
        black_box(forward().map_err(Into::into)?);
        Ok(())
    });
}

/// Times `forward`, the sum of its output and the backward pass to every variable it uses.
fn bench_fwd_bwd<E: Into<anyhow::Error>>(
    group: &mut BenchmarkGroup<WallTime>,
    name: &str,
    forward: impl Fn() -> std::result::Result<Tensor, E>,
) {
    bench(group, name, || {
        let y = forward().map_err(Into::into)?;
        black_box(y.sum_all()?.backward()?);
        Ok(())
    });
}

/// CPU seconds used so far by this process, all threads (`/proc/self/stat` utime + stime, in
/// the kernel's fixed 100 Hz user ticks).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Times `f` by wall clock, or, with `MMCL_BENCH_CLOCK=cpu`, by the process's CPU time divided
/// by the worker threads: on a shared machine that approximates the wall time on an idle one
/// (the PyTorch anchor prints the same figure).
fn timed(b: &mut criterion::Bencher<'_>, mut f: impl FnMut()) {
    if std::env::var("MMCL_BENCH_CLOCK").as_deref() != Ok("cpu") {
        b.iter(&mut f);
        return;
    }
    let threads = rayon::current_num_threads() as f64;
    b.iter_custom(|iters| {
        let start = process_cpu_seconds().unwrap_or(0.0);
        for _ in 0..iters {
            f();
        }
        let used = process_cpu_seconds().unwrap_or(0.0) - start;
        Duration::from_secs_f64(used.max(0.0) / threads)
    })
}

/// The ECG patch embedding as `mmcl_ecg::PatchEmbed::forward` computes it: the 1×100 patches
/// flattened, then one linear map with the conv weight viewed as `[D, 100]`.
fn patch_embed(x: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (ph, pw) = (1, 100);
    let (gh, gw) = (h / ph, w / pw);
    let patches = x
        .reshape((b, c, gh, ph, gw, pw))?
        .permute((0, 2, 4, 1, 3, 5))? // [B, gh, gw, C, ph, pw]
        .reshape((b, gh * gw, c * ph * pw))?; // [B, L, C·ph·pw]
    ops::linear(&patches, &weight.reshape((DIM, ()))?, Some(bias)) // [B, L, D]
}

fn vit_kernels(c: &mut Criterion) -> Result<()> {
    mmcl_nn::memory::keep_freed_memory();
    // SAFETY: criterion runs the benchmarks on this thread and has started no other.
    unsafe { mmcl_nn::threads::share_cores_with_candle(rayon::current_num_threads()) };
    let mut group = c.benchmark_group("vit");
    group.sample_size(10);
    let scale = ((DIM / HEADS) as f64).powf(-0.5);

    // Fused attention over the packed qkv projection: [B, N, 3D] → [B, N, D].
    let qkv = randn(&[INFER_BATCH, TOKENS, 3 * DIM])?;
    bench_fwd(&mut group, "attention/fwd_b64", || {
        ops::attention(&qkv, HEADS, scale)
    });
    let qkv = var(&[TRAIN_BATCH, TOKENS, 3 * DIM], 1.0)?;
    bench_fwd_bwd(&mut group, "attention/fwd_bwd_b32", || {
        ops::attention(qkv.as_tensor(), HEADS, scale)
    });
    // The same in mixed precision: the heads' products on AMX where present.
    bench(&mut group, "attention/fwd_bwd_b32_bf16", || {
        let _bf16 = Precision::Bf16.enter();
        let y = ops::attention(qkv.as_tensor(), HEADS, scale)?;
        black_box(y.sum_all()?.backward()?);
        Ok(())
    });

    // LayerNorm over D with affine weight and bias, eps 1e-6.
    let x = randn(&[INFER_BATCH, TOKENS, DIM])?;
    let (w, b) = (var(&[DIM], 1.0)?, var(&[DIM], 0.1)?);
    bench_fwd(&mut group, "layer_norm/fwd_b64", || {
        ops::layer_norm(&x, w.as_tensor(), b.as_tensor(), 1e-6)
    });
    let x = var(&[TRAIN_BATCH, TOKENS, DIM], 1.0)?;
    bench_fwd_bwd(&mut group, "layer_norm/fwd_bwd_b32", || {
        ops::layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-6)
    });

    // Softmax over the attention scores [B, heads, N, N].
    let scores = randn(&[INFER_BATCH, HEADS, TOKENS, TOKENS])?;
    bench_fwd(&mut group, "softmax/fwd_b64", || {
        ops::softmax_last_dim(&scores)
    });
    drop(scores);
    let scores = var(&[TRAIN_BATCH, HEADS, TOKENS, TOKENS], 1.0)?;
    bench_fwd_bwd(&mut group, "softmax/fwd_bwd_b32", || {
        ops::softmax_last_dim(scores.as_tensor())
    });
    drop(scores);

    // Exact GELU on the MLP's hidden layer [B, N, 4D]; in inference fused with fc1's bias add
    // (PyTorch adds that bias inside its product, so its anchor is the GELU alone).
    let hidden = randn(&[INFER_BATCH, TOKENS, 4 * DIM])?;
    let hidden_bias = var(&[4 * DIM], 0.1)?;
    bench_fwd(&mut group, "gelu/fwd_b64", || {
        ops::bias_gelu(&hidden, hidden_bias.as_tensor())
    });
    drop(hidden);
    // Exact GELU on the MLP's hidden layer [B, N, 4D].
    let hidden = var(&[TRAIN_BATCH, TOKENS, 4 * DIM], 1.0)?;
    bench_fwd_bwd(&mut group, "gelu/fwd_bwd_b32", || {
        ops::gelu_erf(hidden.as_tensor())
    });
    drop(hidden);

    // Patch embedding of 1×12×2500 ECGs: [B, 1, 12, 2500] → [B, 300, D].
    let ecg = randn(&[INFER_BATCH, 1, 12, 2500])?;
    let (pw, pb) = (var(&[DIM, 1, 1, 100], 0.1)?, var(&[DIM], 0.1)?);
    bench_fwd(&mut group, "patch_embed/fwd_b64", || {
        patch_embed(&ecg, pw.as_tensor(), pb.as_tensor())
    });
    let ecg = randn(&[TRAIN_BATCH, 1, 12, 2500])?;
    bench_fwd_bwd(&mut group, "patch_embed/fwd_bwd_b32", || {
        patch_embed(&ecg, pw.as_tensor(), pb.as_tensor())
    });

    // The encoder's matrix products, [B·N, D]×[D, k] (+ bias), weight in PyTorch's [k, D].
    for (name, k_in, k_out) in block_linears(DIM) {
        let (w, b) = (var(&[k_out, k_in], 0.05)?, var(&[k_out], 0.1)?);
        let x = randn(&[INFER_BATCH * TOKENS, k_in])?;
        bench_fwd(&mut group, &format!("matmul_{name}/fwd_b64"), || {
            ops::linear(&x, w.as_tensor(), Some(b.as_tensor()))
        });
        // The same product in mixed precision (bf16 operands, f32 sums: AMX where present).
        bench_fwd(&mut group, &format!("matmul_{name}/fwd_b64_bf16"), || {
            let _bf16 = Precision::Bf16.enter();
            ops::linear(&x, w.as_tensor(), Some(b.as_tensor()))
        });
        let x = var(&[TRAIN_BATCH * TOKENS, k_in], 1.0)?;
        bench_fwd_bwd(&mut group, &format!("matmul_{name}/fwd_bwd_b32"), || {
            ops::linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()))
        });
        bench(
            &mut group,
            &format!("matmul_{name}/fwd_bwd_b32_bf16"),
            || {
                // Forward and backward both in bf16, as a training step runs them.
                let _bf16 = Precision::Bf16.enter();
                let y = ops::linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()))?;
                black_box(y.sum_all()?.backward()?);
                Ok(())
            },
        );
    }
    group.finish();
    Ok(())
}

fn resnet_kernels(c: &mut Criterion) -> Result<()> {
    mmcl_nn::memory::keep_freed_memory();
    // SAFETY: criterion runs the benchmarks on this thread and has started no other.
    unsafe { mmcl_nn::threads::share_cores_with_candle(rayon::current_num_threads()) };
    let mut group = c.benchmark_group("resnet50");
    group.sample_size(10);

    // The stem: 7×7 stride 2 padding 3, 3 → 64 channels, 210² → 105². The image needs no
    // gradient (as in training), the weight does.
    let image = randn(&[IMAGE_BATCH, 3, IMAGE_SIDE, IMAGE_SIDE])?;
    let stem = var(&[64, 3, 7, 7], 0.05)?;
    bench_fwd(&mut group, "conv_stem_7x7s2/fwd_b16", || {
        conv::conv2d(&image, stem.as_tensor(), 2, 3)
    });
    bench_fwd_bwd(&mut group, "conv_stem_7x7s2/fwd_bwd_b16", || {
        conv::conv2d(&image, stem.as_tensor(), 2, 3)
    });

    // Max-pool 3×3 stride 2 padding 1 after the stem: [16, 64, 105, 105] → [16, 64, 53, 53].
    let stem_out = var(&[IMAGE_BATCH, 64, 105, 105], 1.0)?;
    bench_fwd(&mut group, "max_pool_3x3s2/fwd_b16", || {
        pool::max_pool2d(stem_out.as_tensor(), 3, 2, 1)
    });
    bench_fwd_bwd(&mut group, "max_pool_3x3s2/fwd_bwd_b16", || {
        pool::max_pool2d(stem_out.as_tensor(), 3, 2, 1)
    });

    // The stem's train-mode batch norm with its fused ReLU, on the same activations: the
    // largest of the step's 53 normalisations.
    let store = ParamStore::new(0);
    let bn = batch_norm(
        64,
        BatchNormConfig::default(),
        store.var_builder(DType::F32, &Device::Cpu),
    )?;
    bench_fwd_bwd(&mut group, "batch_norm_relu_stem/fwd_bwd_b16", || {
        bn.forward_t_relu(stem_out.as_tensor(), true)
    });
    drop(stem_out);

    // layer1's bottleneck 3×3 convolution: 64 → 64 channels at 53², stride 1 padding 1.
    let h = var(&[IMAGE_BATCH, 64, 53, 53], 1.0)?;
    let w = var(&[64, 64, 3, 3], 0.05)?;
    bench_fwd(&mut group, "conv_3x3/fwd_b16", || {
        conv::conv2d(h.as_tensor(), w.as_tensor(), 1, 1)
    });
    bench_fwd_bwd(&mut group, "conv_3x3/fwd_bwd_b16", || {
        conv::conv2d(h.as_tensor(), w.as_tensor(), 1, 1)
    });

    // The 3×3 convolutions of layer3 (256 channels at 14²) and layer4 (512 at 7²), stride 1
    // padding 1: Winograd's F(2×2, 3×3) on CPUs (forward and input gradient).
    for (name, channels, side) in [("conv_3x3_layer3", 256, 14), ("conv_3x3_layer4", 512, 7)] {
        let x = var(&[IMAGE_BATCH, channels, side, side], 1.0)?;
        let w = var(&[channels, channels, 3, 3], 0.02)?;
        bench_fwd(&mut group, &format!("{name}/fwd_b16"), || {
            conv::conv2d(x.as_tensor(), w.as_tensor(), 1, 1)
        });
        bench_fwd_bwd(&mut group, &format!("{name}/fwd_bwd_b16"), || {
            conv::conv2d(x.as_tensor(), w.as_tensor(), 1, 1)
        });
    }

    // layer1's expanding pointwise convolution: 64 → 256 channels at 53², the products with the
    // shortest sums (64 terms) and the largest outputs (2.9 MB per image) of the network.
    let expand = var(&[256, 64, 1, 1], 0.05)?;
    bench_fwd(&mut group, "conv_1x1_expand/fwd_b16", || {
        conv::conv2d(h.as_tensor(), expand.as_tensor(), 1, 0)
    });
    bench_fwd_bwd(&mut group, "conv_1x1_expand/fwd_bwd_b16", || {
        conv::conv2d(h.as_tensor(), expand.as_tensor(), 1, 0)
    });
    group.finish();
    Ok(())
}

/// The linear maps of a transformer block of width `dim` (timm's `Block`): name, inputs and
/// outputs.
fn block_linears(dim: usize) -> [(&'static str, usize, usize); 4] {
    [
        ("qkv", dim, 3 * dim),
        ("proj", dim, dim),
        ("fc1", dim, 4 * dim),
        ("fc2", 4 * dim, dim),
    ]
}

/// The MAE decoder's attention and products in training (`fwd_bwd`, batch 32) at the paper's
/// decoder (`mae_vit_tiny_patchX_dec256d2b`: D 256, 8 heads of 32, over all 301 tokens), whose
/// shapes the encoder's benchmarks above do not cover: 32-wide heads, products 256 and 1024
/// wide.
fn mae_decoder_kernels(c: &mut Criterion) -> Result<()> {
    let mut group = c.benchmark_group("mae_decoder");
    group.sample_size(10);
    let config = MaeConfig::paper();
    let (dim, heads) = (config.decoder_embed_dim, config.decoder_num_heads);
    let scale = ((dim / heads) as f64).powf(-0.5);
    let qkv = var(&[TRAIN_BATCH, TOKENS, 3 * dim], 1.0)?;
    bench_fwd_bwd(&mut group, "attention/fwd_bwd_b32", || {
        ops::attention(qkv.as_tensor(), heads, scale)
    });
    drop(qkv);
    for (name, k_in, k_out) in block_linears(dim) {
        let (w, b) = (var(&[k_out, k_in], 0.05)?, var(&[k_out], 0.1)?);
        let x = var(&[TRAIN_BATCH * TOKENS, k_in], 1.0)?;
        bench_fwd_bwd(&mut group, &format!("matmul_{name}/fwd_bwd_b32"), || {
            ops::linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()))
        });
    }
    group.finish();
    Ok(())
}

/// The CPU's f32 multiply-add peak on one thread, as a yardstick for every figure above
/// (`peak/fma_f32_1thread`, throughput in FLOP/s): twelve independent chains of 8-lane fused
/// multiply-adds that never touch memory, so nothing but the FMA units limits them. 256-bit
/// operations, which reach the full rate on both machine types (Zen 4 runs a 512-bit FMA as two
/// 256-bit halves; the Xeon's 512-bit rate is twice its 256-bit one, so double its figure there).
fn fma_peak(c: &mut Criterion) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        const ITERS: usize = 20_000_000;
        let mut group = c.benchmark_group("peak");
        group.throughput(Throughput::Elements((ITERS * FMA_CHAINS * 8 * 2) as u64));
        group.bench_function("fma_f32_1thread", |b| {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            b.iter(|| black_box(unsafe { fma_chains(black_box(ITERS)) }))
        });
        group.finish();
    }
}

/// Independent multiply-add chains: enough of them to cover the FMA latency on both units.
#[cfg(target_arch = "x86_64")]
const FMA_CHAINS: usize = 12;

/// `iters` rounds of [`FMA_CHAINS`] independent 8-lane FMAs; the sum of the chains, so that
/// the work cannot be optimised away.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_chains(iters: usize) -> f32 {
    use std::arch::x86_64::{_mm256_add_ps, _mm256_fmadd_ps, _mm256_set1_ps, _mm256_storeu_ps};
    // Opaque operands: the compiler must not see that the chains stay at a fixed point.
    let (x, y) = (
        _mm256_set1_ps(black_box(0.999_999_9)),
        _mm256_set1_ps(black_box(1e-7)),
    );
    let mut chains: [_; FMA_CHAINS] = std::array::from_fn(|i| _mm256_set1_ps(black_box(i as f32)));
    for _ in 0..iters {
        for chain in &mut chains {
            *chain = _mm256_fmadd_ps(*chain, x, y);
        }
    }
    let total = chains
        .iter()
        .fold(_mm256_set1_ps(0.0), |s, &c| _mm256_add_ps(s, c));
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds the 8 values the store writes.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), total) };
    lanes.iter().sum()
}

fn kernels(c: &mut Criterion) {
    // Set-up failures (out of memory, say) are reported rather than silently skipped.
    if let Err(e) = vit_kernels(c) {
        eprintln!("vit kernels: {e:#}");
        std::process::exit(1);
    }
    if let Err(e) = mae_decoder_kernels(c) {
        eprintln!("mae decoder kernels: {e:#}");
        std::process::exit(1);
    }
    if let Err(e) = resnet_kernels(c) {
        eprintln!("resnet50 kernels: {e:#}");
        std::process::exit(1);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = kernels, fma_peak
}
criterion_main!(benches);

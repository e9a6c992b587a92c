//! Where the workloads' time goes on a device: their building blocks timed one at a time at
//! the paper's shapes (the ECG encoder's LayerNorm, products, attention, softmax, GELU and
//! residual adds at batch 256 for inference and 64 forward + backward; ResNet50 convolutions at
//! batch 64), each against what the device can do at best: the bytes it must read and write
//! over the time (GB/s) and, for products, the arithmetic over the time (TFLOP/s). A block far
//! below the device's memory bandwidth or matrix throughput is where a workload loses time.

use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use mmcl_suite::nn::ops;
use mmcl_suite::nn::precision::{self, Precision};
use serde_json::{Value, json};

use crate::median;

use crate::workloads::{ECG_DIM as DIM, ECG_HEADS as HEADS, ECG_TOKENS as TOKENS};

/// Batches: inference (the ECG embedding's 256), training, and ResNet50.
const INFER_BATCH: usize = 256;
const TRAIN_BATCH: usize = 64;
const IMAGE_BATCH: usize = 64;
/// Timed calls per block and precision (after two warm-up calls).
const CALLS: usize = 5;

/// One building block: what it computes, on which inputs, and its minimal traffic and work.
struct Case {
    name: String,
    batch: usize,
    /// Bytes the block must read and write at least (f32 inputs and outputs).
    bytes: f64,
    /// Floating-point operations of its products (0 for the others).
    flops: f64,
    run: Box<dyn Fn() -> candle_core::Result<()>>,
}

fn randn(shape: &[usize], device: &Device) -> candle_core::Result<Tensor> {
    Tensor::randn(0f32, 1f32, shape, device)
}

fn var(shape: &[usize], device: &Device) -> candle_core::Result<Var> {
    Var::from_tensor(&randn(shape, device)?)
}

/// `f` as an inference case (the output computed and dropped) or, with `train`, as a training
/// case: forward, sum, backward (3× the forward's traffic and products).
fn case(
    train: bool,
    name: &str,
    batch: usize,
    bytes: f64,
    flops: f64,
    f: impl Fn() -> candle_core::Result<Tensor> + 'static,
) -> Case {
    let (kind, passes) = if train {
        ("fwd_bwd", 3.0)
    } else {
        ("fwd", 1.0)
    };
    Case {
        name: format!("{name}/{kind}_b{batch}"),
        batch,
        bytes: passes * bytes,
        flops: passes * flops,
        run: if train {
            Box::new(move || f()?.sum_all()?.backward().map(drop))
        } else {
            Box::new(move || f().map(drop))
        },
    }
}

/// The blocks on `device`, inputs drawn on it.
fn cases(device: &Device) -> candle_core::Result<Vec<Case>> {
    const F32: f64 = 4.0;
    let mut out = Vec::new();
    let tokens = |b: usize, width: usize| (b * TOKENS * width) as f64;
    let scale = ((DIM / HEADS) as f64).powf(-0.5);
    let (w, b) = (var(&[DIM], device)?, var(&[DIM], device)?);

    for (batch, train) in [(INFER_BATCH, false), (TRAIN_BATCH, true)] {
        let leaf = |shape: &[usize]| -> candle_core::Result<Tensor> {
            Ok(if train {
                var(shape, device)?.as_tensor().clone()
            } else {
                randn(shape, device)?
            })
        };

        let x = leaf(&[batch, TOKENS, DIM])?;
        let (w1, b1) = (w.as_tensor().clone(), b.as_tensor().clone());
        let xs = x.clone();
        out.push(case(
            train,
            "layer_norm",
            batch,
            2.0 * F32 * tokens(batch, DIM),
            0.0,
            move || ops::layer_norm(&xs, &w1, &b1, 1e-6),
        ));
        let (xa, xb) = (x.clone(), leaf(&[batch, TOKENS, DIM])?);
        out.push(case(
            train,
            "add",
            batch,
            3.0 * F32 * tokens(batch, DIM),
            0.0,
            move || ops::add(&xa, &xb),
        ));

        for (name, k_in, k_out) in [
            ("linear_qkv", DIM, 3 * DIM),
            ("linear_proj", DIM, DIM),
            ("linear_fc1", DIM, 4 * DIM),
            ("linear_fc2", 4 * DIM, DIM),
        ] {
            let input = leaf(&[batch, TOKENS, k_in])?;
            let weight = var(&[k_out, k_in], device)?.as_tensor().clone();
            let bias = var(&[k_out], device)?.as_tensor().clone();
            let bytes = F32 * (tokens(batch, k_in) + tokens(batch, k_out));
            let flops = 2.0 * tokens(batch, k_in) * k_out as f64;
            out.push(case(train, name, batch, bytes, flops, move || {
                ops::linear(&input, &weight, Some(&bias))
            }));
        }

        let qkv = leaf(&[batch, TOKENS, 3 * DIM])?;
        let attention_flops = 4.0 * (batch * TOKENS * TOKENS * DIM) as f64;
        let bytes = F32 * (tokens(batch, 3 * DIM) + tokens(batch, DIM));
        out.push(case(
            train,
            "attention",
            batch,
            bytes,
            attention_flops,
            move || ops::attention(&qkv, HEADS, scale),
        ));

        let scores = leaf(&[batch, HEADS, TOKENS, TOKENS])?;
        let bytes = 2.0 * F32 * (batch * HEADS * TOKENS * TOKENS) as f64;
        out.push(case(train, "softmax", batch, bytes, 0.0, move || {
            ops::softmax_last_dim(&scores)
        }));

        let (hidden, bias) = (leaf(&[batch, TOKENS, 4 * DIM])?, leaf(&[4 * DIM])?);
        out.push(case(
            train,
            "bias_gelu",
            batch,
            2.0 * F32 * tokens(batch, 4 * DIM),
            0.0,
            move || ops::bias_gelu(&hidden, &bias),
        ));
    }

    // ResNet50's stem and the first stage's 3×3 and 1×1 convolutions, at 210 × 210 inputs.
    for (name, cin, cout, side, k, stride, pad) in [
        ("conv_stem_7x7s2", 3, 64, 210, 7, 2, 3),
        ("conv_3x3", 64, 64, 53, 3, 1, 1),
        ("conv_1x1", 256, 64, 53, 1, 1, 0),
    ] {
        let side_out = (side + 2 * pad - k) / stride + 1;
        let n = IMAGE_BATCH;
        let bytes = F32 * (n * (cin * side * side + cout * side_out * side_out)) as f64;
        let flops = 2.0 * (n * cout * side_out * side_out * cin * k * k) as f64;
        let (x, weight) = (
            randn(&[n, cin, side, side], device)?,
            var(&[cout, cin, k, k], device)?,
        );
        let weight_fwd = weight.as_tensor().clone();
        let x_fwd = x.clone();
        out.push(case(false, name, n, bytes, flops, move || {
            precision::conv2d(&x_fwd, &weight_fwd, pad, stride)
        }));
        let x = Var::from_tensor(&x)?.as_tensor().clone();
        let weight = weight.as_tensor().clone();
        out.push(case(true, name, n, bytes, flops, move || {
            precision::conv2d(&x, &weight, pad, stride)
        }));
    }
    Ok(out)
}

/// Times every block on `device` in f32 and bf16; prints a table and returns its rows.
pub fn profile(device: &Device) -> Result<Vec<Value>> {
    let cases = cases(device)?;
    let mut rows = Vec::new();
    eprintln!(
        "{:<28} {:<4} {:>9} {:>8} {:>9}",
        "block", "prec", "ms", "GB/s", "TFLOP/s"
    );
    for case in &cases {
        for precision in [Precision::F32, Precision::Bf16] {
            let _precision = precision.enter();
            let mut row = json!({
                "block": case.name, "batch": case.batch, "precision": precision.as_str(),
            });
            let timed = || -> Result<f64> {
                for _ in 0..2 {
                    (case.run)()?;
                }
                device.synchronize()?;
                let mut seconds = Vec::with_capacity(CALLS);
                for _ in 0..CALLS {
                    let t = Instant::now();
                    (case.run)()?;
                    device.synchronize()?;
                    seconds.push(t.elapsed().as_secs_f64());
                }
                Ok(median(seconds))
            };
            match timed() {
                Ok(seconds) => {
                    let bandwidth = case.bytes / seconds / 1e9;
                    let throughput = case.flops / seconds / 1e12;
                    eprintln!(
                        "{:<28} {:<4} {:>9.3} {:>8.0} {:>9}",
                        case.name,
                        precision.as_str(),
                        seconds * 1e3,
                        bandwidth,
                        if case.flops > 0.0 {
                            format!("{throughput:.1}")
                        } else {
                            "-".to_string()
                        }
                    );
                    row["ms"] = json!(seconds * 1e3);
                    row["gb_per_s"] = json!(bandwidth);
                    if case.flops > 0.0 {
                        row["tflop_per_s"] = json!(throughput);
                    }
                }
                Err(e) => {
                    eprintln!("{:<28} {:<4} failed: {e:#}", case.name, precision.as_str());
                    row["error"] = json!(format!("{e:#}"));
                }
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

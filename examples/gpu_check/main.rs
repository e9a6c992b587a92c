//! The GPU check's Rust half (`scripts/gpu-check.sh` runs it on a CUDA machine): the paper's
//! four workloads — ECG embedding, MAE training step, ResNet50 embedding, MMCL training step —
//! first held against the CPU, then timed, in f32 and bf16, at the paper's batches and at
//! batch 256; one JSON of figures.
//!
//! **Agreement.** The CPU path matches the reference PyTorch code (the parity suite, in CI);
//! here every workload runs on the same seeded inputs and weights on the CPU and on the device,
//! and the device's embeddings and losses must agree with the CPU's within stated tolerances:
//! f32 with TF32 off (candle's default), f32 with TF32 on (cuBLAS's reduced-precision f32
//! products), and bf16. The training steps are compared over three consecutive steps: the
//! first loss (same weights, forward pass only) within the arithmetic's tolerance, the later
//! ones within [`TRAJECTORY_TOLERANCE`]. Adam's first updates move every weight by about ±lr
//! whatever the size of its gradient, so gradient elements that are rounding noise (those a
//! BatchNorm makes vanish in theory) take device-dependent signs and the trajectories part:
//! on an H200 the MMCL step's f32 losses differed by 1.0e-6, 1.6e-3 and 7.2e-3 over three steps
//! while the MAE step's stayed at 4e-7. The step itself is held against the reference PyTorch
//! code on each device by the parity suite (loss, every gradient, the updated weights); here a
//! wrong gradient or update still shows as a later loss far off.
//!
//! **Building blocks** (`--parts ops`, in `ops.rs`): the workloads' layers timed alone against
//! the device's bandwidth and matrix throughput.
//!
//! **Throughput.** Each workload is warmed up, then timed one iteration at a time (every
//! iteration copies a small result to the host, so the device's queue is drained); the figure
//! is samples per second of the median iteration.
//!
//! ```sh
//! scripts/cuda-toolkit.sh --link cargo build --release --features cuda --example gpu_check
//! target/release/examples/gpu_check --device cuda --out gpu-check.json
//! # a quick run of the same code on the CPU (agreement of the CPU with itself):
//! cargo run --release --example gpu_check -- --device cpu --batches paper --iters 2 \
//!     --workloads embed_ecg,mae_step
//! ```

mod ops;
#[path = "../../benches/common/workloads.rs"]
mod workloads;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use clap::Parser;
use mmcl_suite::nn::device::parse_device;
use mmcl_suite::nn::precision::{Precision, matmul_precision};
use serde_json::{Value, json};
use workloads::{
    CMR_EMBEDDING_BATCH, CmrEmbedding, ECG_EMBEDDING_BATCH, EcgEmbedding, MAE_STEP_BATCH,
    MMCL_STEP_BATCH, MaeStep, MmclTrainingStep,
};

/// Check the paper's workloads on a device against the CPU, then time them.
#[derive(Debug, Parser)]
struct Args {
    /// The device to check: cuda, cuda:N (or cpu, for a run of the same code without a GPU).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Where the JSON of figures goes.
    #[arg(long, default_value = "gpu-check.json")]
    out: PathBuf,
    /// Timed iterations per workload, precision and batch (after two warm-up iterations).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Batches to time: `paper` (each workload's batch in the paper) and/or numbers.
    #[arg(long, value_delimiter = ',', default_value = "paper,256")]
    batches: Vec<String>,
    /// Workloads to check and time (embed_ecg, mae_step, embed_cmr, mmcl_step).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "embed_ecg,mae_step,embed_cmr,mmcl_step"
    )]
    workloads: Vec<String>,
    /// Parts to run: `agreement` (with the CPU), `throughput` (of the workloads), `ops` (their
    /// building blocks timed alone, against the device's bandwidth and matrix throughput).
    #[arg(long, value_delimiter = ',', default_value = "agreement,throughput")]
    parts: Vec<String>,
}

impl Args {
    fn runs(&self, part: &str) -> bool {
        self.parts.iter().any(|p| p == part)
    }
}

/// The workloads by name, with their paper batch.
const WORKLOADS: [(&str, usize); 4] = [
    ("embed_ecg", ECG_EMBEDDING_BATCH),
    ("mae_step", MAE_STEP_BATCH),
    ("embed_cmr", CMR_EMBEDDING_BATCH),
    ("mmcl_step", MMCL_STEP_BATCH),
];

/// The batch of the agreement runs (the CPU runs each workload too).
const AGREEMENT_BATCH: usize = 4;
/// Training steps compared in the agreement runs.
const AGREEMENT_STEPS: usize = 3;
/// The largest relative difference of a training step's later losses (see the module notes).
const TRAJECTORY_TOLERANCE: f64 = 5e-2;

/// One workload built on a device, run one iteration at a time (boxed: one lives at a time,
/// and the training steps are large).
enum Workload {
    EcgEmbedding(Box<EcgEmbedding>),
    MaeStep(Box<MaeStep>),
    CmrEmbedding(Box<CmrEmbedding>),
    MmclStep(Box<MmclTrainingStep>),
}

impl Workload {
    /// `name` at `batch` on `device`, in the current thread's precision.
    fn new(name: &str, device: &Device, batch: usize) -> Result<Self> {
        Ok(match name {
            "embed_ecg" => Self::EcgEmbedding(Box::new(EcgEmbedding::new(device, batch)?)),
            "mae_step" => Self::MaeStep(Box::new(MaeStep::new(device, batch)?)),
            "embed_cmr" => Self::CmrEmbedding(Box::new(CmrEmbedding::new(device, batch)?)),
            "mmcl_step" => Self::MmclStep(Box::new(MmclTrainingStep::new(
                device,
                batch,
                matmul_precision(),
            )?)),
            other => bail!("unknown workload {other:?}"),
        })
    }

    /// `name` at the agreement's batch on `device`, in the current thread's precision, with
    /// nothing drawn at random during a step (the MMCL step without drop-path).
    fn for_agreement(name: &str, device: &Device) -> Result<Self> {
        Ok(match name {
            "mmcl_step" => Self::MmclStep(Box::new(MmclTrainingStep::without_drop_path(
                device,
                AGREEMENT_BATCH,
                matmul_precision(),
            )?)),
            other => Self::new(other, device, AGREEMENT_BATCH)?,
        })
    }

    /// One iteration: the embeddings of an embedding workload, the loss (as a one-element
    /// tensor) of a training step; always on the host.
    fn run(&mut self) -> Result<Tensor> {
        match self {
            Self::EcgEmbedding(w) => w.run(),
            Self::CmrEmbedding(w) => w.run(&w.folded),
            Self::MaeStep(w) => Ok(Tensor::new(&[w.run()?], &Device::Cpu)?),
            Self::MmclStep(w) => Ok(Tensor::new(&[w.run()?], &Device::Cpu)?),
        }
    }

    /// What the agreement compares: one embedding pass, or the losses of consecutive steps.
    fn outputs(&mut self) -> Result<Vec<Tensor>> {
        let runs = match self {
            Self::EcgEmbedding(_) | Self::CmrEmbedding(_) => 1,
            Self::MaeStep(_) | Self::MmclStep(_) => AGREEMENT_STEPS,
        };
        (0..runs).map(|_| self.run()).collect()
    }
}

/// The arithmetic a run uses on the device.
#[derive(Debug, Clone, Copy)]
enum Arithmetic {
    F32,
    Tf32,
    Bf16,
}

impl Arithmetic {
    fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Tf32 => "f32_tf32",
            Self::Bf16 => "bf16",
        }
    }

    /// The largest relative difference from the CPU's f32 results this arithmetic may show:
    /// f32 sums in another order stay near 1e-6 per product, TF32 and bf16 round the operands
    /// of every product (10 and 8 bits of mantissa) and compound that over the layers.
    fn tolerance(self) -> f64 {
        match self {
            Self::F32 => 1e-4,
            Self::Tf32 => 2e-2,
            Self::Bf16 => 5e-2,
        }
    }

    /// Runs `f` in this arithmetic.
    fn run<T>(self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let _precision = match self {
            Self::Bf16 => Precision::Bf16.enter(),
            Self::F32 | Self::Tf32 => Precision::F32.enter(),
        };
        set_tf32(matches!(self, Self::Tf32));
        let out = f();
        set_tf32(false);
        out
    }
}

/// Switches cuBLAS's reduced-precision (TF32) f32 products on or off; without CUDA there is
/// nothing to switch.
fn set_tf32(on: bool) {
    #[cfg(feature = "cuda")]
    candle_core::cuda_backend::set_gemm_reduced_precision_f32(on);
    #[cfg(not(feature = "cuda"))]
    let _ = on;
}

/// ‖a − b‖ / ‖b‖ over all elements.
fn relative_difference(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(candle_core::DType::F64)?.flatten_all()?;
    let b = b.to_dtype(candle_core::DType::F64)?.flatten_all()?;
    let norm = |t: &Tensor| -> Result<f64> { Ok(t.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt()) };
    let difference = norm(&(&a - &b)?)?;
    let scale = norm(&b)?;
    if !difference.is_finite() || !scale.is_finite() {
        return Ok(f64::INFINITY);
    }
    Ok(if scale > 0.0 {
        difference / scale
    } else {
        difference
    })
}

/// The agreement of every workload on `device` with the CPU, in each arithmetic.
fn agreement(names: &[String], device: &Device) -> Result<(Vec<Value>, bool)> {
    let mut rows = Vec::new();
    let mut all_pass = true;
    for name in names {
        let expected = Workload::for_agreement(name, &Device::Cpu)?.outputs()?;
        for arithmetic in [Arithmetic::F32, Arithmetic::Tf32, Arithmetic::Bf16] {
            let actual = arithmetic
                .run(|| Workload::for_agreement(name, device)?.outputs())
                .with_context(|| format!("{name} in {} on {device:?}", arithmetic.name()))?;
            // One difference per output: the embedding, or each step's loss.
            let differences = actual
                .iter()
                .zip(&expected)
                .map(|(a, e)| relative_difference(a, e))
                .collect::<Result<Vec<f64>>>()?;
            let worst = differences.iter().copied().fold(0f64, f64::max);
            let pass = differences.iter().enumerate().all(|(step, &d)| {
                d <= if step == 0 {
                    arithmetic.tolerance()
                } else {
                    arithmetic.tolerance().max(TRAJECTORY_TOLERANCE)
                }
            });
            all_pass &= pass;
            eprintln!(
                "agreement {name:<10} {:<9} relative difference {worst:.2e} (tolerance {:.0e}, \
                 later steps {TRAJECTORY_TOLERANCE:.0e}; per output {}) {}",
                arithmetic.name(),
                arithmetic.tolerance(),
                differences
                    .iter()
                    .map(|d| format!("{d:.1e}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                if pass { "ok" } else { "FAILED" }
            );
            rows.push(json!({
                "workload": name,
                "arithmetic": arithmetic.name(),
                "batch": AGREEMENT_BATCH,
                "relative_difference": worst,
                "per_output": differences,
                "tolerance": arithmetic.tolerance(),
                "later_steps_tolerance": arithmetic.tolerance().max(TRAJECTORY_TOLERANCE),
                "pass": pass,
            }));
        }
    }
    Ok((rows, all_pass))
}

/// The median of `values` (not empty).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Samples per second of `name` at `batch` on `device` in `precision`, or the error that
/// stopped it (out of memory, say), which is reported rather than ending the check.
fn throughput(
    name: &str,
    device: &Device,
    batch: usize,
    precision: Precision,
    iters: usize,
) -> Value {
    let timed = || -> Result<(f64, f64)> {
        let _precision = precision.enter();
        let started = Instant::now();
        let mut workload = Workload::new(name, device, batch)?;
        for _ in 0..2 {
            workload.run()?;
        }
        let warm_up = started.elapsed().as_secs_f64();
        let mut seconds = Vec::with_capacity(iters);
        for _ in 0..iters.max(1) {
            let t = Instant::now();
            workload.run()?;
            seconds.push(t.elapsed().as_secs_f64());
        }
        Ok((median(seconds), warm_up))
    };
    let mut row = json!({ "workload": name, "precision": precision.as_str(), "batch": batch });
    match timed() {
        Ok((seconds, warm_up)) => {
            let samples_per_s = batch as f64 / seconds;
            eprintln!(
                "throughput {name:<10} {:<4} batch {batch:<4} {samples_per_s:>9.1} samples/s",
                precision.as_str()
            );
            row["seconds_per_iteration"] = json!(seconds);
            row["samples_per_s"] = json!(samples_per_s);
            row["warm_up_s"] = json!(warm_up);
            row
        }
        Err(e) => {
            eprintln!(
                "throughput {name:<10} {:<4} batch {batch:<4} failed: {e:#}",
                precision.as_str()
            );
            row["error"] = json!(format!("{e:#}"));
            row
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = parse_device(&args.device)?;
    for part in &args.parts {
        if !["agreement", "throughput", "ops"].contains(&part.as_str()) {
            bail!("unknown part {part:?} (expected agreement, throughput, ops)");
        }
    }
    for name in &args.workloads {
        if !WORKLOADS.iter().any(|(known, _)| known == name) {
            bail!("unknown workload {name:?} (expected embed_ecg, mae_step, embed_cmr, mmcl_step)");
        }
    }
    // `None`: each workload's paper batch.
    let batches = args
        .batches
        .iter()
        .map(|batch| match batch.as_str() {
            "paper" => Ok(None),
            n => n
                .parse()
                .map(Some)
                .with_context(|| format!("--batches: {n:?} is not a batch size")),
        })
        .collect::<Result<Vec<Option<usize>>>>()?;
    let started = Instant::now();
    // The figures are rewritten after every part, so that a run stopped by a time limit
    // leaves what it measured.
    let mut figures = json!({
        "device": args.device,
        "cuda_build": cfg!(feature = "cuda"),
        "agreement": [],
        "agreement_pass": true,
        "throughput": [],
        "ops": [],
        "complete": false,
    });
    let write = |figures: &mut Value| -> Result<()> {
        figures["seconds"] = json!(started.elapsed().as_secs_f64());
        mmcl_suite::core::io::write_bytes_atomic(
            &args.out,
            serde_json::to_string_pretty(figures)?.as_bytes(),
        )
        .with_context(|| format!("writing {}", args.out.display()))
    };
    if args.runs("agreement") {
        let (rows, pass) = agreement(&args.workloads, &device)?;
        (figures["agreement"], figures["agreement_pass"]) = (json!(rows), json!(pass));
    }
    write(&mut figures)?;
    if args.runs("ops") {
        figures["ops"] = json!(ops::profile(&device)?);
        write(&mut figures)?;
    }
    let mut throughput_rows = Vec::new();
    for (name, paper_batch) in WORKLOADS {
        if !args.runs("throughput") || !args.workloads.iter().any(|w| w == name) {
            continue;
        }
        for batch in &batches {
            let batch = batch.unwrap_or(paper_batch);
            for precision in [Precision::F32, Precision::Bf16] {
                throughput_rows.push(throughput(name, &device, batch, precision, args.iters));
                figures["throughput"] = json!(throughput_rows);
                write(&mut figures)?;
            }
        }
    }
    figures["complete"] = json!(true);
    write(&mut figures)?;
    eprintln!("figures written to {}", args.out.display());
    if figures["agreement_pass"] == json!(false) {
        bail!("the device's results do not agree with the CPU's (see above)");
    }
    Ok(())
}

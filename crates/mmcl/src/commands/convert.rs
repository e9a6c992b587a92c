//! `mmcl convert`: PyTorch checkpoints (or safetensors) to safetensors.
//!
//! ```text
//! mmcl convert --input CKPT --output OUT.safetensors [--key-prefix PREFIX | --ecg-encoder]
//!     [--dtype keep|f32|f16|bf16]
//! ```
//!
//! Every tensor reachable through string-keyed dictionaries is written, nested keys joined with
//! `.` (a Lightning checkpoint gives `state_dict.encoder_ecg.…`); optimizer states and other
//! objects are left out. `--key-prefix` keeps the keys under a prefix (removing it);
//! `--ecg-encoder` finds the ECG encoder in any released layout and writes it under its own
//! names, without the MAE decoder.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use candle_core::DType;
use mmcl_nn::StateDict;

use super::common::{OutputKind, ensure_output_not_input};

/// Arguments of `mmcl convert`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Checkpoint to read (.pth, .pt, .ckpt, .bin, .safetensors).
    #[arg(long)]
    pub input: PathBuf,
    /// Safetensors file to write.
    #[arg(long)]
    pub output: PathBuf,
    /// Keep only keys starting with this prefix, and remove it (e.g. "state_dict.encoder_ecg.").
    #[arg(long, conflicts_with = "ecg_encoder")]
    pub key_prefix: Option<String>,
    /// Extract the ECG encoder (plain, {"model": …}, Lightning or MAE layouts) under its own
    /// key names.
    #[arg(long)]
    pub ecg_encoder: bool,
    /// Element type of the written tensors: keep (as stored), f32, f16 or bf16.
    #[arg(long, default_value = "keep")]
    pub dtype: String,
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    let dtype = match args.dtype.as_str() {
        "keep" => None,
        "f32" => Some(DType::F32),
        "f16" => Some(DType::F16),
        "bf16" => Some(DType::BF16),
        other => bail!("unknown --dtype {other:?}: use keep, f32, f16 or bf16"),
    };
    ensure_output_not_input(&args.output, OutputKind::File, &[&args.input])?;
    let raw = StateDict::read(&args.input)?;
    let (state, what) = if args.ecg_encoder {
        let enc = mmcl_ecg::extract_encoder(&raw)?;
        let what = format!("ECG encoder ({})", enc.layout);
        (enc.state, what)
    } else if let Some(prefix) = &args.key_prefix {
        let state = raw.strip_prefix(prefix);
        if state.is_empty() {
            let sample: Vec<&str> = raw.keys().take(6).collect();
            bail!(
                "{}: no key starts with {prefix:?} (keys look like {})",
                args.input.display(),
                sample.join(", ")
            );
        }
        (state, format!("keys under {prefix:?}"))
    } else {
        (raw, "every tensor".to_string())
    };
    let state = match dtype {
        Some(dt) => {
            // Only floating tensors change type; integer buffers keep theirs.
            let mut out = StateDict::with_source(state.source());
            for (k, t) in state.iter() {
                let t = if t.dtype().is_float() {
                    t.to_dtype(dt)?
                } else {
                    t.clone()
                };
                out.insert(k, t);
            }
            out
        }
        None => state,
    };
    let mut metadata = HashMap::new();
    metadata.insert(
        "converted_from".to_string(),
        args.input
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    metadata.insert(
        "converted_by".to_string(),
        format!("mmcl {}", env!("CARGO_PKG_VERSION")),
    );
    state
        .write_safetensors(&args.output, Some(metadata))
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    eprintln!(
        "wrote {} tensors ({what}) from {} to {}",
        state.len(),
        args.input.display(),
        args.output.display()
    );
    Ok(())
}

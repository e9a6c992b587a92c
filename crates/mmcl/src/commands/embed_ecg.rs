//! `mmcl embed-ecg`: embeddings of ECGs from a trained encoder.
//!
//! ```text
//! mmcl embed-ecg --checkpoint FILE --config CONFIG.json --input X.npy --output OUT.npy
//!     [--pooling global|cls|attention|tokens] [--batch-size N] [--device cpu|cuda]
//! ```
//!
//! `X.npy` is float32 (or float64) `(N, 12, T)` or `(N, 1, 12, T)` matching the configuration,
//! used as is; `OUT.npy` is float32 `(N, D)`, or `(N, L, D)` for `tokens`. Every problem is
//! reported with the file it concerns before anything is written; the output appears only
//! when complete (written to a temporary sibling, then renamed).

use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use mmcl_ecg::{EcgVit, EcgVitConfig, Pooling};

/// Arguments of `mmcl embed-ecg`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Encoder checkpoint: safetensors, or a PyTorch .pth/.ckpt (plain, {"model": …} or
    /// Lightning {"state_dict": {"encoder_ecg.…"}}).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Encoder configuration (JSON with the reference's keys: img_size, patch_size, embed_dim,
    /// depth, num_heads, …, or a "model" preset name).
    #[arg(long)]
    pub config: PathBuf,
    /// ECGs as a float32 .npy array (N, 12, T) or (N, 1, 12, T).
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the float32 .npy embeddings.
    #[arg(long)]
    pub output: PathBuf,
    /// Pooling: global (mean of patch tokens + fc_norm), cls, attention, or tokens (all patch
    /// tokens). Default: the configuration's.
    #[arg(long)]
    pub pooling: Option<String>,
    /// ECGs per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    mmcl_nn::memory::keep_freed_memory();
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let cfg = EcgVitConfig::from_file(&args.config)?;
    let pooling: Pooling = match &args.pooling {
        Some(p) => p.parse()?,
        None => cfg.pooling(),
    };
    check_pooling(&cfg, pooling, &args.config)?;
    let device = super::common::parse_device(&args.device)?;
    let input = read_ecgs(&args.input, &cfg)?;
    let (model, _store, summary) =
        EcgVit::from_checkpoint(&cfg, &args.checkpoint, pooling, &device)?;
    eprintln!("{summary}");

    let n = input.dims[0];
    let per_sample: usize = input.dims[1..].iter().product();
    let progress = progress_bar(n, args.batch_size);
    let mut out: Vec<f32> = Vec::new();
    let mut out_dims: Vec<usize> = Vec::new();
    for start in (0..n).step_by(args.batch_size) {
        let count = args.batch_size.min(n - start);
        let slice = &input.values[start * per_sample..(start + count) * per_sample];
        let mut dims = input.dims.clone();
        dims[0] = count;
        let x = Tensor::from_slice(slice, dims.as_slice(), &device)?;
        let y = model.embed(&x, pooling).with_context(|| {
            format!(
                "embedding ECGs {start}..{} of {}",
                start + count,
                args.input.display()
            )
        })?;
        let y = y
            .to_device(&Device::Cpu)?
            .to_dtype(candle_core::DType::F32)?;
        if out_dims.is_empty() {
            out_dims = y.dims().to_vec();
            out_dims[0] = n;
            out.reserve(out_dims.iter().product());
        }
        out.extend(y.flatten_all()?.to_vec1::<f32>()?);
        progress.inc(count as u64);
    }
    progress.finish_and_clear();
    write_npy(&args.output, &out, &out_dims)?;
    eprintln!(
        "wrote {} embeddings of shape {:?} ({pooling} pooling) to {}",
        n,
        &out_dims[1..],
        args.output.display()
    );
    Ok(())
}

/// Refuses a pooling the configured encoder has no layers for, naming the config file.
fn check_pooling(cfg: &EcgVitConfig, pooling: Pooling, config: &Path) -> Result<()> {
    let missing = match pooling {
        Pooling::Global if !cfg.has_fc_norm() => Some("\"global_pool\": true"),
        Pooling::Attention if !cfg.attention_pool => Some("\"attention_pool\": true"),
        _ => None,
    };
    if let Some(setting) = missing {
        bail!(
            "{}: {pooling} pooling needs an encoder configured with {setting}",
            config.display()
        );
    }
    Ok(())
}

/// ECGs read from a .npy file, shaped as the model takes them.
struct Ecgs {
    values: Vec<f32>,
    dims: Vec<usize>,
}

/// Reads `(N, leads, T)` or `(N, C, leads, T)` float32/float64 ECGs and checks them against the
/// configuration.
fn read_ecgs(path: &Path, cfg: &EcgVitConfig) -> Result<Ecgs> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let npy = npyz::NpyFile::new(BufReader::new(file))
        .with_context(|| format!("{}: not a readable .npy file", path.display()))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let [c, h, w] = cfg.img_size;
    let dims = match shape.as_slice() {
        [n, xh, xw] if c == 1 && (*xh, *xw) == (h, w) => vec![*n, 1, h, w],
        [n, xc, xh, xw] if (*xc, *xh, *xw) == (c, h, w) => vec![*n, c, h, w],
        _ => {
            let expected = if c == 1 {
                format!("(N, {h}, {w}) or (N, 1, {h}, {w})")
            } else {
                format!("(N, {c}, {h}, {w})")
            };
            bail!(
                "{}: array of shape {shape:?} does not match the configuration's input {expected}",
                path.display()
            );
        }
    };
    if dims[0] == 0 {
        bail!("{}: the array holds no ECGs", path.display());
    }
    let fortran = npy.order() == npyz::Order::Fortran;
    let type_str = match npy.dtype() {
        npyz::DType::Plain(ty) => ty.to_string(),
        other => other.descr(),
    };
    let values: Vec<f32> = match type_str.trim_start_matches(['<', '>', '|', '=']) {
        "f4" => npy.into_vec::<f32>(),
        "f8" => npy
            .into_vec::<f64>()
            .map(|v| v.into_iter().map(|x| x as f32).collect()),
        other => bail!(
            "{}: ECGs must be float32 (or float64), not numpy dtype {other:?}",
            path.display()
        ),
    }
    .with_context(|| {
        format!(
            "{}: cannot read the array data (truncated file?)",
            path.display()
        )
    })?;
    let values = if fortran {
        // Column-major storage: reverse the axes back into row-major order.
        let reversed: Vec<usize> = shape.iter().rev().copied().collect();
        let perm: Vec<usize> = (0..shape.len()).rev().collect();
        Tensor::from_vec(values, reversed.as_slice(), &Device::Cpu)?
            .permute(perm.as_slice())?
            .flatten_all()?
            .to_vec1::<f32>()?
    } else {
        values
    };
    Ok(Ecgs { values, dims })
}

/// A progress bar on stderr for inputs longer than one batch (hidden when stderr is no terminal).
fn progress_bar(n: usize, batch: usize) -> ProgressBar {
    if n <= batch {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(n as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ECGs ({per_sec}, eta {eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message("embedding");
    bar
}

/// Writes a float32 array as .npy, atomically.
fn write_npy(path: &Path, values: &[f32], dims: &[usize]) -> Result<()> {
    let shape: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
    mmcl_nn::io::write_atomic(path, |tmp| {
        let io_err = |source: std::io::Error| mmcl_nn::Error::Io {
            path: tmp.to_path_buf(),
            source,
        };
        let file = std::fs::File::create(tmp).map_err(io_err)?;
        let mut writer = {
            use npyz::WriterBuilder;
            npyz::WriteOptions::new()
                .default_dtype()
                .shape(&shape)
                .writer(std::io::BufWriter::new(file))
                .begin_nd()
                .map_err(io_err)?
        };
        writer.extend(values.iter().copied()).map_err(io_err)?;
        writer.finish().map_err(io_err)
    })?;
    Ok(())
}

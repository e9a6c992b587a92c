//! `mmcl embed-ecg`: embeddings of ECGs from a trained encoder.
//!
//! ```text
//! mmcl embed-ecg --checkpoint FILE --config CONFIG.json --input X.npy --output OUT.npy
//!     [--pooling global|cls|attention|tokens] [--batch-size N] [--device cpu|cuda]
//! ```
//!
//! `X.npy` is float32 (or float64) `(N, 12, T)` or `(N, 1, 12, T)` matching the configuration,
//! used as is; `OUT.npy` is float32 `(N, D)`, or `(N, L, D)` for `tokens`. Input and output are
//! streamed batch by batch, so arrays larger than memory work. Every problem is reported with
//! the file it concerns; the output appears only when complete (written to a temporary
//! sibling, then renamed), and never when anything failed.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use mmcl_ecg::{EcgVit, EcgVitConfig, Pooling};

use super::common::{OutputKind, ensure_output_not_input};

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
    ensure_output_not_input(
        &args.output,
        OutputKind::File,
        &[&args.input, &args.config, &args.checkpoint],
    )?;
    let cfg = EcgVitConfig::from_file(&args.config)?;
    let pooling: Pooling = match &args.pooling {
        Some(p) => p.parse()?,
        None => cfg.pooling(),
    };
    check_pooling(&cfg, pooling, &args.config)?;
    let device = super::common::parse_device(&args.device)?;
    // Everything that can be checked is checked before the output is created.
    let mut input = EcgReader::open(&args.input, &cfg)?;
    let (model, _store, summary) =
        EcgVit::from_checkpoint(&cfg, &args.checkpoint, pooling, &device)?;
    eprintln!("{summary}");

    let n = input.count();
    let mut out_dims = vec![n, cfg.embed_dim];
    if pooling == Pooling::Tokens {
        out_dims.insert(1, cfg.num_patches());
    }
    let progress = progress_bar(n, args.batch_size);
    write_npy_atomically(&args.output, &out_dims, |writer| {
        for start in (0..n).step_by(args.batch_size) {
            let count = args.batch_size.min(n - start);
            let x = input.next_batch(count, &device)?;
            let y = model.embed(&x, pooling).with_context(|| {
                format!(
                    "embedding ECGs {start}..{} of {}",
                    start + count,
                    args.input.display()
                )
            })?;
            let y = y.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
            writer
                .extend(y.flatten_all()?.to_vec1::<f32>()?)
                .with_context(|| format!("cannot write {}", args.output.display()))?;
            progress.inc(count as u64);
        }
        Ok(())
    })?;
    progress.finish_and_clear();
    eprintln!(
        "wrote {n} embeddings of shape {:?} ({pooling} pooling) to {}",
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

/// The element type of the input array.
enum Elements {
    F32(npyz::NpyReader<f32, BufReader<File>>),
    F64(npyz::NpyReader<f64, BufReader<File>>),
    /// A column-major array, read whole and reordered.
    InMemory(std::vec::IntoIter<f32>),
}

/// Reads ECGs batch by batch from a `(N, leads, T)` or `(N, C, leads, T)` float32/float64 .npy
/// file, after checking its header against the file (the workspace's checked opener) and the
/// configuration.
struct EcgReader {
    path: PathBuf,
    elements: Elements,
    /// `[N, C, leads, T]`.
    dims: Vec<usize>,
    /// Index of the next ECG to read.
    next: usize,
}

impl EcgReader {
    fn open(path: &Path, cfg: &EcgVitConfig) -> Result<Self> {
        // Validates the header, the shape's size and the data against the file's length
        // before anything is allocated from them.
        let checked = mmcl_core::npy::open_npy(path)?;
        let shape = checked.layout().shape.clone();
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
        let type_str = checked.layout().dtype.to_string();
        let npy = checked.into_npy();
        let kind = type_str
            .trim_start_matches(['<', '>', '|', '='])
            .to_string();
        if kind != "f4" && kind != "f8" {
            bail!(
                "{}: ECGs must be float32 (or float64), not numpy dtype {type_str:?}",
                path.display()
            );
        }
        let unreadable = || format!("{}: cannot read the array data", path.display());
        let elements = if npy.order() == npyz::Order::Fortran {
            let values: Vec<f32> = if kind == "f4" {
                npy.into_vec::<f32>()
            } else {
                npy.into_vec::<f64>()
                    .map(|v| v.into_iter().map(|x| x as f32).collect())
            }
            .with_context(|| format!("{} (truncated file?)", unreadable()))?;
            // Column-major storage: reverse the axes back into row-major order.
            let reversed: Vec<usize> = shape.iter().rev().copied().collect();
            let perm: Vec<usize> = (0..shape.len()).rev().collect();
            let values = Tensor::from_vec(values, reversed.as_slice(), &Device::Cpu)?
                .permute(perm.as_slice())?
                .flatten_all()?
                .to_vec1::<f32>()?;
            Elements::InMemory(values.into_iter())
        } else if kind == "f4" {
            Elements::F32(npy.data::<f32>().with_context(unreadable)?)
        } else {
            Elements::F64(npy.data::<f64>().with_context(unreadable)?)
        };
        Ok(Self {
            path: path.to_path_buf(),
            elements,
            dims,
            next: 0,
        })
    }

    /// Number of ECGs.
    fn count(&self) -> usize {
        self.dims[0]
    }

    /// The next `count` ECGs as `[count, C, leads, T]` on `device`.
    fn next_batch(&mut self, count: usize, device: &Device) -> Result<Tensor> {
        let per_sample: usize = self.dims[1..].iter().product();
        let want = count * per_sample;
        let truncated = || {
            format!(
                "{}: cannot read the array data (truncated file?)",
                self.path.display()
            )
        };
        let values: Vec<f32> = match &mut self.elements {
            Elements::F32(r) => r.by_ref().take(want).collect::<std::io::Result<_>>(),
            Elements::F64(r) => r
                .by_ref()
                .take(want)
                .map(|v| v.map(|x| x as f32))
                .collect::<std::io::Result<_>>(),
            Elements::InMemory(it) => Ok(it.by_ref().take(want).collect()),
        }
        .with_context(truncated)?;
        if values.len() != want {
            bail!(truncated());
        }
        // A NaN or infinity would silently become NaN embeddings: refuse, naming the ECG.
        if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
            bail!(
                "{}: the ECG at row {} holds a non-finite value ({})",
                self.path.display(),
                self.next + bad / per_sample,
                values[bad]
            );
        }
        self.next += count;
        let mut dims = self.dims.clone();
        dims[0] = count;
        Ok(Tensor::from_vec(values, dims.as_slice(), device)?)
    }
}

/// Streams a float32 .npy of shape `dims` through `fill` into a temporary sibling of `path`,
/// renamed over `path` only when `fill` succeeded; on failure nothing is left behind.
fn write_npy_atomically(
    path: &Path,
    dims: &[usize],
    fill: impl FnOnce(&mut npyz::NpyWriter<f32, BufWriter<File>>) -> Result<()>,
) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create the directory of {}", path.display()))?;
    }
    let tmp = mmcl_nn::io::temporary_sibling(path);
    let result = (|| -> Result<()> {
        use npyz::WriterBuilder;
        let file =
            File::create(&tmp).with_context(|| format!("cannot create {}", path.display()))?;
        let shape: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        let mut writer = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&shape)
            .writer(BufWriter::new(file))
            .begin_nd()
            .with_context(|| format!("cannot write {}", path.display()))?;
        fill(&mut writer)?;
        writer
            .finish()
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    })()
    .and_then(|()| {
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
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

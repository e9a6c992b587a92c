//! `mmcl embed-ecg`: embeddings of ECGs from a trained encoder.
//!
//! ```text
//! mmcl embed-ecg --encoder MODEL --cache DIR [--split train,val,test|all] --output DIR
//! mmcl embed-ecg --encoder MODEL --ecg FILE_OR_FOLDER… [--leads I,II,…] --output DIR
//! mmcl embed-ecg --encoder MODEL --input X.npy --output OUT.npy
//!     [--config CONFIG.json] [--pooling global|cls|attention|tokens] [--batch-size N]
//!     [--device cpu|cuda] [--overwrite]
//! ```
//!
//! `MODEL` is a training run's folder, one of its checkpoint folders, or an encoder file
//! (safetensors or PyTorch); exports of `mmcl` carry their configuration, other files need
//! `--config`.
//!
//! **From a dataset cache** (`mmcl build-dataset`), the ECGs are fed as the model expects (the
//! window of its input length from sample 0, as every evaluation does) and each split is
//! written to `DIR/<split>/`: `embeddings.npy` (float32 `(N, D)`), `labels.npy` and
//! `phenotypes.npy` (float32 `(N, L)` and `(N, P)`, NaN where unknown; phenotypes in their
//! units), and `subjects.csv` (eid, labels and phenotypes by name, one row per subject in the
//! order of the arrays). `DIR` appears only when complete.
//!
//! **From ECG files as they come** (`--ecg`: CardioSoft XML, WFDB, NPY/NPZ, or folders of
//! them), each recording is preprocessed as the cache's are, cut to the encoder's leads
//! (`--leads`; by default all 12, or I, II, V1–V6 for an 8-lead encoder) and cropped from
//! sample 0; `DIR/embeddings.npy` holds one row per recording and `DIR/files.csv` names its
//! file.
//!
//! **From an array**, `X.npy` is float32 (or float64) `(N, 12, T)` or `(N, 1, 12, T)` matching
//! the configuration, used as is; `OUT.npy` is float32 `(N, D)`, or `(N, L, D)` for `tokens`.
//! Input and output are streamed batch by batch, so arrays larger than memory work; the output
//! appears only when complete (written to a temporary sibling, then renamed).

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use mmcl_data::cache::Cache;
use mmcl_data::tables::Split;
use mmcl_ecg::{EcgVitConfig, Pooling};
use mmcl_eval::Matrix;
use mmcl_pipeline::embeddings::{EmbedSettings, SplitTargets, embed_ecgs};

use super::common::{
    LoadedEncoder, OutputKind, StagedDir, encoder_leads, ensure_output_not_input, load_ecg_encoder,
};

/// Arguments of `mmcl embed-ecg`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The encoder: a training run's folder (its latest checkpoint), a checkpoint folder, or a
    /// file (safetensors, or a PyTorch .pth/.ckpt: plain, {"model": …} or Lightning
    /// {"state_dict": {"encoder_ecg.…"}}).
    #[arg(long, alias = "checkpoint", value_name = "MODEL")]
    pub encoder: PathBuf,
    /// Encoder configuration (JSON with the reference's keys: img_size, patch_size, embed_dim,
    /// depth, num_heads, …, or a "model" preset name). Default: the one an `mmcl` export
    /// carries; needed for other files.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// ECGs as a float32 .npy array (N, 12, T) or (N, 1, 12, T).
    #[arg(long, conflicts_with = "cache", required_unless_present_any = ["cache", "ecg"])]
    pub input: Option<PathBuf>,
    /// A dataset cache (`mmcl build-dataset`): embed its subjects, with their labels and
    /// phenotypes.
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// ECG files as they come (CardioSoft XML, WFDB `.hea`, NPY/NPZ), or folders of them:
    /// preprocessed as the cache is (the reference pipeline) and cropped to the model's input
    /// from sample 0. Writes `embeddings.npy` and `files.csv` (row → file) into --output.
    #[arg(long, num_args = 1.., conflicts_with_all = ["input", "cache"])]
    pub ecg: Vec<PathBuf>,
    /// With --ecg: the leads the encoder reads, in its input's order (comma-separated names,
    /// cut from the 12 after preprocessing, as a cache's `ecg_leads` are). Default: all 12
    /// for a 12-lead encoder, I,II,V1,V2,V3,V4,V5,V6 (the reduced reproduction's) for an
    /// 8-lead one; other encoders need the list.
    #[arg(long, value_delimiter = ',', requires = "ecg")]
    pub leads: Option<Vec<String>>,
    /// With --ecg: the sampling rate of NPY/NPZ arrays, which carry none (Hz).
    #[arg(long, default_value_t = 500.0)]
    pub npy_sample_rate: f64,
    /// With --cache: the splits to embed (train, val, test, or all for every subject),
    /// comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "train,val,test",
        requires = "cache"
    )]
    pub split: Vec<String>,
    /// Where to write: the .npy embeddings (with --input) or a folder (with --cache).
    #[arg(long)]
    pub output: PathBuf,
    /// Replace an existing output folder (with --cache or --ecg).
    #[arg(long)]
    pub overwrite: bool,
    /// Pooling: global (mean of patch tokens + fc_norm), cls, attention, or tokens (all patch
    /// tokens; with --input only). Default: the configuration's.
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
    match (&args.input, &args.cache, args.ecg.is_empty()) {
        (Some(input), None, true) => run_array(&args, input),
        (None, Some(cache), true) => run_cache(&args, cache),
        (None, None, false) => run_files(&args),
        _ => bail!("give one of --input X.npy, --cache DIR or --ecg FILE…"),
    }
}

/// The splits named by `--split` (`all` alone: every subject).
pub fn parse_splits(names: &[String]) -> Result<Vec<Option<Split>>> {
    let mut splits = Vec::new();
    for name in names {
        let split = match name.trim() {
            "train" => Some(Split::Train),
            "val" | "validation" => Some(Split::Val),
            "test" => Some(Split::Test),
            "all" => None,
            other => bail!("--split: unknown split {other:?} (use train, val, test or all)"),
        };
        if !splits.contains(&split) {
            splits.push(split);
        }
    }
    Ok(splits)
}

/// The folder name of a split's outputs.
pub fn split_name(split: Option<Split>) -> &'static str {
    match split {
        Some(Split::Train) => "train",
        Some(Split::Val) => "val",
        Some(Split::Test) => "test",
        None => "all",
    }
}

/// Embeds the subjects of `split` (every subject when `None`) of `cache` with `encoder`,
/// with a progress bar; returns the embeddings and the subjects' targets.
pub fn embed_cache_split(
    cache: &Arc<Cache>,
    split: Option<Split>,
    encoder: &LoadedEncoder,
    batch_size: usize,
    device: &Device,
) -> Result<(Matrix<f32>, SplitTargets)> {
    let targets = match split {
        Some(s) => SplitTargets::of(cache, s)?,
        None => SplitTargets::all(cache)?,
    };
    let settings = EmbedSettings::for_ecg_model(encoder.config.img_size[2], batch_size);
    let bar = progress_bar(targets.positions.len(), batch_size);
    bar.set_message(format!("embedding {}", split_name(split)));
    let pooling = encoder.pooling;
    let x = embed_ecgs(
        cache,
        &targets.positions,
        &settings,
        device,
        &mut |done| bar.set_position(done as u64),
        &|ecg| Ok(encoder.model.embed(ecg, pooling)?),
    )
    .with_context(|| {
        format!(
            "cannot embed the {} subjects of {}",
            split_name(split),
            cache.dir().display()
        )
    })?;
    bar.finish_and_clear();
    Ok((x, targets))
}

/// The output checked against every input (`inputs`, the encoder and its configuration), then
/// the device and the encoder.
fn checked_encoder(
    args: &Args,
    kind: OutputKind,
    inputs: &[&Path],
) -> Result<(Device, LoadedEncoder)> {
    let mut all = inputs.to_vec();
    all.push(&args.encoder);
    all.extend(args.config.as_deref());
    ensure_output_not_input(&args.output, kind, &all)?;
    let device = super::common::parse_device(&args.device)?;
    let encoder = load_ecg_encoder(
        &args.encoder,
        args.config.as_deref(),
        args.pooling.as_deref(),
        &device,
    )?;
    Ok((device, encoder))
}

/// The checks and the encoder of the modes that write a folder of `(N, D)` arrays: the output
/// folder is none of `inputs` (nor the encoder), the pooling is not `tokens`.
fn encoder_for_folder(
    args: &Args,
    inputs: &[&Path],
    mode: &str,
) -> Result<(Device, LoadedEncoder)> {
    let (device, encoder) = checked_encoder(args, OutputKind::Directory, inputs)?;
    if encoder.pooling == Pooling::Tokens {
        bail!("--pooling tokens writes (N, L, D) arrays: use it with --input, not {mode}");
    }
    eprintln!("{}", encoder.summary);
    Ok((device, encoder))
}

fn run_cache(args: &Args, cache_dir: &Path) -> Result<()> {
    let splits = parse_splits(&args.split)?;
    let (device, encoder) = encoder_for_folder(args, &[cache_dir], "--cache")?;
    let cache = Arc::new(Cache::open(cache_dir)?);
    check_cache_length(&cache, &encoder.config, cache_dir)?;
    let out = StagedDir::begin(&args.output, args.overwrite)?;
    let index = cache.index();
    for &split in &splits {
        let (x, targets) = embed_cache_split(&cache, split, &encoder, args.batch_size, &device)?;
        let dir = out.path().join(split_name(split));
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        write_matrix(&dir.join("embeddings.npy"), &x)?;
        write_matrix(&dir.join("labels.npy"), &to_f32(&targets.labels)?)?;
        write_matrix(&dir.join("phenotypes.npy"), &to_f32(&targets.phenotypes)?)?;
        write_subjects_csv(
            &dir.join("subjects.csv"),
            &targets,
            &index.label_names,
            &index.phenotype_names,
        )?;
        eprintln!(
            "{}: {} subjects × {} features",
            split_name(split),
            x.rows(),
            x.cols()
        );
    }
    out.commit()?;
    eprintln!(
        "wrote embeddings ({} pooling), labels ({}) and phenotypes ({}) to {}",
        encoder.pooling,
        index.label_names.join(", "),
        index.phenotype_names.join(", "),
        args.output.display()
    );
    Ok(())
}

/// Refuses a cache whose ECGs are shorter than the model's input (the crop would fail midway).
fn check_cache_length(cache: &Cache, cfg: &EcgVitConfig, dir: &Path) -> Result<()> {
    let Some(layout) = cache.index().ecg else {
        bail!("{}: the cache holds no ECGs", dir.display());
    };
    let want = cfg.img_size[2];
    if layout.samples < want || layout.leads != cfg.img_size[1] {
        bail!(
            "{}: the cache's ECGs are {} leads × {} samples, the encoder needs {} × at least {want}",
            dir.display(),
            layout.leads,
            layout.samples,
            cfg.img_size[1]
        );
    }
    Ok(())
}

/// Writes a float32 `(rows, cols)` array.
fn write_matrix(path: &Path, m: &Matrix<f32>) -> Result<()> {
    mmcl_core::npy::write_npy_f32(path, &[m.rows(), m.cols()], m.as_slice())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A matrix of f64 values as f32 (labels and phenotypes are stored as float32 arrays).
fn to_f32(m: &Matrix<f64>) -> Result<Matrix<f32>> {
    let values = m.as_slice().iter().map(|&v| v as f32).collect();
    Ok(Matrix::new(m.rows(), m.cols(), values)?)
}

/// `eid,<label names>,<phenotype names>`: one row per subject, empty where unknown.
fn write_subjects_csv(
    path: &Path,
    targets: &SplitTargets,
    label_names: &[String],
    phenotype_names: &[String],
) -> Result<()> {
    use std::fmt::Write as _;
    let mut text = String::from("eid");
    for name in label_names.iter().chain(phenotype_names) {
        text.push(',');
        text.push_str(&csv_field(name));
    }
    text.push('\n');
    for (i, eid) in targets.eids.iter().enumerate() {
        let _ = write!(text, "{eid}");
        let labels = (0..targets.labels.cols()).map(|j| targets.labels.get(i, j));
        let phenotypes = (0..targets.phenotypes.cols()).map(|j| targets.phenotypes.get(i, j));
        for v in labels.chain(phenotypes) {
            text.push(',');
            if !v.is_nan() {
                let _ = write!(text, "{v}");
            }
        }
        text.push('\n');
    }
    mmcl_nn::io::write_bytes_atomic(path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A CSV field, quoted when it holds a separator, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `--ecg FILE…`: ECG files as they come, preprocessed, cropped and embedded batch by batch.
fn run_files(args: &Args) -> Result<()> {
    let mut files = Vec::new();
    for path in &args.ecg {
        if path.is_dir() {
            let found = mmcl_data::ecg::convert::ecg_files(path)?;
            if found.is_empty() {
                bail!(
                    "{}: no ECG file (.xml, .hea, .npy, .npz) in the folder",
                    path.display()
                );
            }
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    let inputs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let (device, encoder) = encoder_for_folder(args, &inputs, "--ecg")?;
    let [_, leads, length] = encoder.config.img_size;
    let (selection, _) = encoder_leads(args.leads.as_deref(), leads, "--leads")?;
    let preprocessing = mmcl_data::ecg::preprocess::PreprocessConfig::default();
    let out = StagedDir::begin(&args.output, args.overwrite)?;
    let bar = progress_bar(files.len(), args.batch_size);
    let mut rows: Vec<String> = vec!["row,id,file".into()];
    let mut embeddings = Vec::new();
    let mut batch = Vec::new();
    let flush = |batch: &mut Vec<f32>, embeddings: &mut Vec<f32>| -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let n = batch.len() / (leads * length);
        let x = Tensor::from_vec(std::mem::take(batch), (n, 1, leads, length), &device)?;
        let y = encoder.model.embed(&x, encoder.pooling)?;
        embeddings.extend(y.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    };
    for file in &files {
        let (id, shape, values) =
            mmcl_data::ecg::convert::preprocess_file(file, &preprocessing, args.npy_sample_rate)?;
        // (12, T) for one recording, (N, 12, T) for an array of several.
        let (count, file_leads, samples) = match shape.as_slice() {
            [l, t] => (1, *l, *t),
            [n, l, t] => (*n, *l, *t),
            other => bail!(
                "{}: unexpected preprocessed shape {other:?}",
                file.display()
            ),
        };
        if file_leads != mmcl_data::ecg::NUM_LEADS || samples < length {
            bail!(
                "{}: {file_leads} leads × {samples} samples after preprocessing; the encoder \
                 needs {} × at least {length}",
                file.display(),
                mmcl_data::ecg::NUM_LEADS
            );
        }
        for k in 0..count {
            let record = &values[k * file_leads * samples..(k + 1) * file_leads * samples];
            for &lead in &selection {
                let start = lead * samples;
                batch.extend_from_slice(&record[start..start + length]);
            }
            let name = if count == 1 {
                id.clone()
            } else {
                format!("{id}_{k}")
            };
            let row = rows.len() - 1;
            rows.push(format!(
                "{row},{},{}",
                csv_field(&name),
                csv_field(&file.display().to_string())
            ));
            if batch.len() == args.batch_size * leads * length {
                flush(&mut batch, &mut embeddings)?;
            }
        }
        bar.inc(1);
    }
    flush(&mut batch, &mut embeddings)?;
    bar.finish_and_clear();
    let n = rows.len() - 1;
    let dim = embeddings.len() / n.max(1);
    write_matrix(
        &out.path().join("embeddings.npy"),
        &Matrix::new(n, dim, embeddings)?,
    )?;
    let csv = out.path().join("files.csv");
    mmcl_nn::io::write_bytes_atomic(&csv, (rows.join("\n") + "\n").as_bytes())
        .with_context(|| format!("cannot write {}", csv.display()))?;
    out.commit()?;
    eprintln!(
        "wrote {n} embeddings of {dim} features ({} pooling) from {} file(s) to {}",
        encoder.pooling,
        files.len(),
        args.output.display()
    );
    Ok(())
}

fn run_array(args: &Args, input_path: &Path) -> Result<()> {
    let (device, encoder) = checked_encoder(args, OutputKind::File, &[input_path])?;
    let (cfg, pooling) = (&encoder.config, encoder.pooling);
    // Everything that can be checked is checked before the output is created.
    let mut input = EcgReader::open(input_path, cfg)?;
    eprintln!("{}", encoder.summary);

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
            let y = encoder.model.embed(&x, pooling).with_context(|| {
                format!(
                    "embedding ECGs {start}..{} of {}",
                    start + count,
                    input_path.display()
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

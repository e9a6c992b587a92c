//! `mmcl embed-cmr`: image embeddings of a ResNet CMR encoder for a batch of images.
//!
//! Reads `X.npy` (float32 `(N, C, H, W)`, C order or Fortran order; float64 is converted),
//! loads a torchvision-style or released (`encoder_imaging.<i>`) checkpoint, and writes the
//! pooled eval-mode embeddings as float32 `(N, 512 | 2048)` to `OUT.npy`. Any problem with an
//! input file stops the command with an error naming the file; the output is written to a
//! temporary name and renamed only when complete.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use mmcl_cmr::checkpoint::{extract_encoder, load_encoder};
use mmcl_cmr::{FoldedResNet, ResNet, ResNetArch, ResNetConfig};
use mmcl_nn::{ParamStore, StateDict};
use npyz::{Order, WriterBuilder};

use super::common::{OutputKind, ensure_output_not_input};

/// Arguments of `mmcl embed-cmr`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Encoder checkpoint: safetensors or PyTorch `.pth`, torchvision names or the released
    /// `{"state_dict": {"encoder_imaging.<i>…"}}` layout; or a run or checkpoint folder of
    /// `mmcl pretrain-mmcl` (its `image_encoder.safetensors`).
    #[arg(long = "encoder", alias = "checkpoint", value_name = "MODEL")]
    checkpoint: PathBuf,
    /// Encoder architecture.
    #[arg(long, value_parser = parse_arch)]
    arch: ResNetArch,
    /// Input channels (default: read from the checkpoint's first convolution).
    #[arg(long)]
    in_channels: Option<usize>,
    /// Images, float32 `(N, C, H, W)` `.npy`.
    #[arg(long)]
    input: PathBuf,
    /// Where to write the float32 `(N, D)` embeddings (`.npy`).
    #[arg(long)]
    output: PathBuf,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn parse_arch(s: &str) -> std::result::Result<ResNetArch, String> {
    s.parse::<ResNetArch>().map_err(|e| e.to_string())
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    ensure_output_not_input(
        &args.output,
        OutputKind::File,
        &[&args.input, &args.checkpoint],
    )?;
    if let Some(channels) = args.in_channels {
        // Refused before the checkpoint is read: the stem's size grows with the channels.
        ResNetConfig::new(args.arch, channels)
            .validate()
            .context("--in-channels")?;
    }
    let device = super::common::parse_device(&args.device)?;
    let file = mmcl_train::checkpoint::find_image_encoder(&args.checkpoint)?;
    let state = StateDict::read(&file)
        .with_context(|| format!("cannot read checkpoint {}", file.display()))?;
    let encoder = extract_encoder(&state, None)?;
    let in_channels = match args.in_channels {
        Some(c) => c,
        None => match encoder.state.get("conv1.weight").map(|w| w.dims().to_vec()) {
            Some(dims) if dims.len() == 4 => dims[1],
            _ => 3,
        },
    };
    let store = ParamStore::new(0);
    let model = ResNet::new(
        &ResNetConfig::new(args.arch, in_channels),
        store.var_builder(DType::F32, &device),
    )?;
    load_encoder(&store, "", &encoder).with_context(|| {
        format!(
            "{} does not hold a {} encoder over {in_channels} channels",
            file.display(),
            args.arch
        )
    })?;
    let model = model.fold()?;

    let mut images = ImageFile::open(&args.input, in_channels)?;
    let dim = args.arch.feature_dim();
    let progress = if images.count > args.batch_size {
        let bar = ProgressBar::new(images.count as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "embedding {bar:40} {pos}/{len} images ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut embeddings = Vec::with_capacity(images.count * dim);
    let mut start = 0;
    while start < images.count {
        let n = args.batch_size.min(images.count - start);
        let batch = images.read_batch(start, n, &device)?;
        let pooled = embed(&model, &batch)
            .with_context(|| format!("embedding images {start}..{} failed", start + n))?;
        embeddings.extend(pooled);
        start += n;
        progress.set_position(start as u64);
    }
    progress.finish_and_clear();
    write_npy_f32(
        &args.output,
        &embeddings,
        &[images.count as u64, dim as u64],
    )?;
    eprintln!(
        "wrote {} embeddings of dimension {dim} to {}",
        images.count,
        args.output.display()
    );
    Ok(())
}

fn embed(model: &FoldedResNet, batch: &Tensor) -> Result<Vec<f32>> {
    let pooled = model.embed(batch)?; // [n, D]
    Ok(pooled
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

/// An `.npy` file of images `(N, C, H, W)`, read batch by batch.
struct ImageFile {
    path: PathBuf,
    count: usize,
    /// `(C, H, W)`.
    image_shape: [usize; 3],
    source: Source,
}

enum Source {
    /// C-order float32 or float64 values, streamed from the file.
    Stream {
        reader: BufReader<File>,
        item: Item,
        next_image: usize,
    },
    /// A Fortran-order file, read whole and reordered.
    InMemory(Vec<f32>),
}

#[derive(Clone, Copy)]
enum Item {
    F32 { big_endian: bool },
    F64 { big_endian: bool },
}

impl Item {
    fn size(self) -> usize {
        match self {
            Item::F32 { .. } => 4,
            Item::F64 { .. } => 8,
        }
    }

    fn decode(self, bytes: &[u8], out: &mut Vec<f32>) {
        match self {
            Item::F32 { big_endian } => out.extend(bytes.chunks_exact(4).map(|b| {
                let b = [b[0], b[1], b[2], b[3]];
                if big_endian {
                    f32::from_be_bytes(b)
                } else {
                    f32::from_le_bytes(b)
                }
            })),
            Item::F64 { big_endian } => out.extend(bytes.chunks_exact(8).map(|b| {
                let b = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
                (if big_endian {
                    f64::from_be_bytes(b)
                } else {
                    f64::from_le_bytes(b)
                }) as f32
            })),
        }
    }
}

impl ImageFile {
    fn open(path: &Path, in_channels: usize) -> Result<Self> {
        let name = path.display();
        // The workspace's checked opener: header, shape size and data length are validated
        // against the file before anything is allocated from them.
        let (layout, reader) = mmcl_core::npy::open_npy(path)?.into_parts();
        let ts = &layout.dtype;
        let item = match (ts.type_char(), ts.size_field()) {
            (npyz::TypeChar::Float, 4) => Item::F32 {
                big_endian: ts.endianness() == npyz::Endianness::Big,
            },
            (npyz::TypeChar::Float, 8) => Item::F64 {
                big_endian: ts.endianness() == npyz::Endianness::Big,
            },
            _ => bail!("{name}: images must be float32 (or float64), found dtype {ts}"),
        };
        let shape = layout.shape.clone();
        let [count, c, h, w] = shape.as_slice() else {
            bail!("{name}: images must have shape (N, C, H, W), found shape {shape:?}");
        };
        let (count, c, h, w) = (*count, *c, *h, *w);
        if c != in_channels {
            bail!(
                "{name}: the images have {c} channels but the encoder takes {in_channels} (shape \
                 {shape:?}; see --in-channels)"
            );
        }
        if h == 0 || w == 0 {
            bail!("{name}: empty images of {h}x{w} pixels");
        }
        let source = match layout.order {
            Order::C => Source::Stream {
                reader,
                item,
                next_image: 0,
            },
            Order::Fortran => {
                // Fortran order is C order of the reversed shape (W, H, C, N).
                let mut values = Vec::new();
                read_values(reader, item, layout.len, &mut values)
                    .with_context(|| format!("{name}: cannot read the image data"))?;
                let t = Tensor::from_vec(values, (w, h, c, count), &Device::Cpu)?
                    .permute((3, 2, 1, 0))?
                    .contiguous()?;
                Source::InMemory(t.flatten_all()?.to_vec1()?)
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            count,
            image_shape: [c, h, w],
            source,
        })
    }

    /// Images `start .. start + n` as a `[n, C, H, W]` tensor on `device`.
    fn read_batch(&mut self, start: usize, n: usize, device: &Device) -> Result<Tensor> {
        let per_image: usize = self.image_shape.iter().product();
        let name = self.path.display();
        let values = match &mut self.source {
            Source::Stream {
                reader,
                item,
                next_image,
            } => {
                if *next_image != start {
                    bail!("{name}: images must be read in order");
                }
                let mut values = Vec::with_capacity(n * per_image);
                read_values(reader, *item, n * per_image, &mut values).with_context(|| {
                    format!("{name}: cannot read images {start}..{}", start + n)
                })?;
                *next_image += n;
                values
            }
            Source::InMemory(all) => all[start * per_image..(start + n) * per_image].to_vec(),
        };
        if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
            bail!(
                "{name}: image {} holds a non-finite value ({})",
                start + bad / per_image,
                values[bad]
            );
        }
        let [c, h, w] = self.image_shape;
        Ok(Tensor::from_vec(values, (n, c, h, w), &Device::Cpu)?.to_device(device)?)
    }
}

/// Reads `count` values of type `item` from `reader`, appending them to `out` as f32.
fn read_values(
    mut reader: impl Read,
    item: Item,
    count: usize,
    out: &mut Vec<f32>,
) -> std::io::Result<()> {
    const CHUNK: usize = 1 << 16;
    let mut bytes = vec![0u8; CHUNK * item.size()];
    let mut left = count;
    while left > 0 {
        let take = left.min(CHUNK);
        let buf = &mut bytes[..take * item.size()];
        reader.read_exact(buf)?;
        item.decode(buf, out);
        left -= take;
    }
    Ok(())
}

/// Writes a float32 `.npy` file atomically (temporary sibling, then rename).
fn write_npy_f32(path: &Path, values: &[f32], shape: &[u64]) -> Result<()> {
    mmcl_nn::io::write_atomic(path, |tmp| {
        let io_err = |source: std::io::Error| mmcl_nn::Error::io(tmp, source);
        let file = File::create(tmp).map_err(io_err)?;
        let mut writer = npyz::WriteOptions::new()
            .default_dtype()
            .shape(shape)
            .writer(BufWriter::new(file))
            .begin_nd()
            .map_err(io_err)?;
        writer.extend(values.iter().copied()).map_err(io_err)?;
        writer.finish().map_err(io_err)
    })
    .with_context(|| format!("cannot write {}", path.display()))
}

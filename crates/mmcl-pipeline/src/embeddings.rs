//! Embeddings of a dataset cache's subjects with a frozen encoder, beside their labels and
//! phenotypes: what the reproduction's probes, `mmcl embed-ecg --cache` and
//! `mmcl probe --cache` share.
//!
//! ECGs are fed as the evaluation does everywhere in the workspace: the window of the model's
//! length starting at sample 0, not augmented; images without augmentation, resized to the
//! model's size.
//!
//! ```no_run
//! use std::sync::Arc;
//! use candle_core::Device;
//! use mmcl_data::{cache::Cache, tables::Split};
//! use mmcl_ecg::EcgVit;
//! use mmcl_pipeline::embeddings::{EmbedSettings, SplitTargets, embed_ecgs};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = Arc::new(Cache::open("cache".as_ref())?);
//! let cfg = mmcl_ecg::EcgVitConfig::from_export("ecg_encoder.safetensors".as_ref())?
//!     .ok_or("the export carries no configuration")?;
//! let pooling = cfg.pooling();
//! let (model, _, _) =
//!     EcgVit::from_checkpoint(&cfg, "ecg_encoder.safetensors".as_ref(), pooling, &Device::Cpu)?;
//! let test = SplitTargets::of(&cache, Split::Test)?;
//! let settings = EmbedSettings::for_ecg_model(cfg.img_size[2], 64);
//! let z = embed_ecgs(&cache, &test.positions, &settings, &Device::Cpu, &mut |_| {}, &|x| {
//!     Ok(model.embed(x, pooling)?)
//! })?;
//! assert_eq!(z.rows(), test.eids.len());
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use candle_core::{Device, Tensor};
use mmcl_data::cache::Cache;
use mmcl_data::loader::{Loader, LoaderConfig};
use mmcl_data::tables::{Eid, Split};
use mmcl_eval::Matrix;

use crate::{Error, Result};

/// One split's subjects: cache positions, participant ids, disease labels (NaN = unknown) and
/// raw phenotypes (NaN = missing), in cache order.
#[derive(Debug, Clone)]
pub struct SplitTargets {
    /// Positions of the subjects in the cache.
    pub positions: Vec<usize>,
    /// Their participant ids.
    pub eids: Vec<Eid>,
    /// `N × L` labels in the order of the cache's `label_names` (1 case, 0 control, NaN
    /// unknown).
    pub labels: Matrix<f64>,
    /// `N × P` phenotypes in the order of the cache's `phenotype_names`, in their units (not
    /// standardised; NaN missing).
    pub phenotypes: Matrix<f64>,
}

impl SplitTargets {
    /// The subjects of `split`.
    ///
    /// # Errors
    /// An empty split.
    pub fn of(cache: &Cache, split: Split) -> Result<Self> {
        Self::at(
            cache,
            cache.split_indices(split),
            &format!("the {split:?} split"),
        )
    }

    /// Every subject of the cache, whatever its split.
    ///
    /// # Errors
    /// An empty cache.
    pub fn all(cache: &Cache) -> Result<Self> {
        Self::at(cache, (0..cache.len()).collect(), "the cache")
    }

    fn at(cache: &Cache, positions: Vec<usize>, what: &str) -> Result<Self> {
        let index = cache.index();
        if positions.is_empty() {
            return Err(Error::Insufficient {
                stage: "embeddings",
                reason: format!("{what} of {} holds no subject", cache.dir().display()),
            });
        }
        let (l, p) = (index.label_names.len(), index.phenotype_names.len());
        let mut labels = Vec::with_capacity(positions.len() * l);
        let mut phenotypes = Vec::with_capacity(positions.len() * p);
        let mut eids = Vec::with_capacity(positions.len());
        for &i in &positions {
            let s = &index.subjects[i];
            eids.push(s.eid);
            labels.extend(s.labels.iter().map(|v| v.map_or(f64::NAN, f64::from)));
            phenotypes.extend(s.phenotypes.iter().map(|v| v.unwrap_or(f64::NAN)));
        }
        Ok(Self {
            labels: Matrix::new(positions.len(), l, labels)?,
            phenotypes: Matrix::new(positions.len(), p, phenotypes)?,
            eids,
            positions,
        })
    }
}

/// How the evaluation loader feeds an encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbedSettings {
    /// Samples per forward pass.
    pub batch_size: usize,
    /// ECG window fed to the model (its input length), from sample 0.
    pub ecg_crop: usize,
    /// Side of the square images fed to an image encoder.
    pub image_size: usize,
    /// Seed of the loader (it draws nothing when evaluating; kept for reproducibility).
    pub seed: u64,
}

impl EmbedSettings {
    /// Settings for an ECG encoder whose input is `ecg_length` samples long.
    pub fn for_ecg_model(ecg_length: usize, batch_size: usize) -> Self {
        Self {
            batch_size,
            ecg_crop: ecg_length,
            image_size: 0,
            seed: 0,
        }
    }
}

/// The evaluation loader of `positions`: ECGs cropped from sample 0, or un-augmented images,
/// in order.
fn eval_loader(
    cache: &Arc<Cache>,
    positions: &[usize],
    images: bool,
    settings: &EmbedSettings,
    device: &Device,
) -> Result<Arc<Loader>> {
    if settings.batch_size == 0 {
        return Err(Error::Insufficient {
            stage: "embeddings",
            reason: "the batch size must be at least 1".into(),
        });
    }
    let mut lc = LoaderConfig::ecg_eval(settings.batch_size);
    lc.ecg = !images;
    lc.ecg_crop = Some(settings.ecg_crop);
    lc.image = images;
    lc.image_augment = None;
    lc.image_size = images.then_some(settings.image_size);
    lc.seed = settings.seed;
    Ok(Arc::new(Loader::new(
        cache.clone(),
        positions.to_vec(),
        lc,
        device.clone(),
    )?))
}

/// Embeds the ECGs of `positions` with `f` (`[B, 1, leads, T]` → `[B, D]`), calling `progress`
/// with the number of subjects done after each batch.
///
/// # Errors
/// A cache whose ECGs are shorter than `settings.ecg_crop`, loader and model errors.
pub fn embed_ecgs(
    cache: &Arc<Cache>,
    positions: &[usize],
    settings: &EmbedSettings,
    device: &Device,
    progress: &mut dyn FnMut(usize),
    f: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> Result<Matrix<f32>> {
    let loader = eval_loader(cache, positions, false, settings, device)?;
    embed_all(&loader, false, progress, f)
}

/// Embeds the images of `positions` with `f` (`[B, C, H, W]` → `[B, D]`).
///
/// # Errors
/// A cache without images, loader and model errors.
pub fn embed_images(
    cache: &Arc<Cache>,
    positions: &[usize],
    settings: &EmbedSettings,
    device: &Device,
    f: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> Result<Matrix<f32>> {
    let loader = eval_loader(cache, positions, true, settings, device)?;
    embed_all(&loader, true, &mut |_| {}, f)
}

/// Embeds every batch of `loader` with `f` and stacks the rows into a host matrix.
fn embed_all(
    loader: &Arc<Loader>,
    images: bool,
    progress: &mut dyn FnMut(usize),
    f: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> Result<Matrix<f32>> {
    let mut rows = Vec::new();
    let (mut n, mut d) = (0, 0);
    for batch in loader.epoch(0, 0) {
        let batch = batch?;
        let x = if images { batch.image } else { batch.ecg };
        let x = x.ok_or_else(|| Error::Insufficient {
            stage: "embeddings",
            reason: "the loader returned a batch without the requested modality".into(),
        })?;
        let y = f(&x)?
            .to_dtype(candle_core::DType::F32)?
            .to_device(&Device::Cpu)?;
        let (b, dim) = y.dims2()?;
        d = dim;
        n += b;
        rows.extend(y.flatten_all()?.to_vec1::<f32>()?);
        progress(n);
    }
    Ok(Matrix::new(n, d, rows)?)
}

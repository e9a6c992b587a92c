//! The parallel batch loader over a [`Cache`].
//!
//! A batch is a pure function of `(seed, epoch, batch number)`: the epoch's order is a seeded
//! shuffle, and each sample's crop and augmentations come from a stream derived from
//! `(seed, epoch, subject)`. Workers may run in any order; a trainer that resumes at epoch `e`,
//! batch `b` gets exactly the batches it would have got.
//!
//! Samples of a batch are prepared in parallel on a dedicated rayon pool (so the loader never
//! competes with more threads than it was given), batches are prepared ahead on a background
//! thread and handed over through a bounded channel (`prefetch` batches), and tensors are
//! created on the consumer's thread, on the requested device.
//!
//! For data-parallel training a loader can be one replica's shard ([`Loader::sharded`]): every
//! replica computes the same epoch order and global batches, and loads and augments only its
//! rows of each (a sample is augmented alike whichever replica loads it), so a group of `N`
//! sees exactly the data of one process at `1/N` of the loading work each.

use std::ops::Range;
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use crossbeam_channel::{Receiver, bounded};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cache::Cache;
use crate::cmr::ImageAugmentConfig;
use crate::ecg::augment::{EcgAugmentConfig, random_crop_start};
use crate::rng::Rng;
use crate::tables::Eid;
use crate::{Error, Result};

/// Stream tags of the per-sample random streams.
const STREAM_SHUFFLE: u64 = 0x5348_5546;
const STREAM_ECG: u64 = 1;
const STREAM_IMAGE: u64 = 2;

/// What the loader produces and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoaderConfig {
    /// Samples per batch (256 in the paper).
    pub batch_size: usize,
    /// Shuffle each epoch (training) or keep the storage order (evaluation).
    pub shuffle: bool,
    /// Drop the last incomplete batch.
    pub drop_last: bool,
    /// Seed of shuffling and augmentation.
    pub seed: u64,
    /// Load ECGs.
    pub ecg: bool,
    /// ECG crop length (2500 of 5000 in the paper); `None` keeps the whole recording.
    pub ecg_crop: Option<usize>,
    /// Random crop start (training) instead of 0 (validation).
    pub ecg_random_crop: bool,
    /// ECG augmentation; `None` for none.
    pub ecg_augment: Option<EcgAugmentConfig>,
    /// Load images.
    pub image: bool,
    /// Image augmentation (its `size` is the output size); `None` passes the cached image
    /// through resized to `image_size`.
    pub image_augment: Option<ImageAugmentConfig>,
    /// Output image side when not augmenting (`None`: as cached).
    pub image_size: Option<usize>,
    /// Also return the un-augmented views (`ecg_orig`, `image_orig`).
    pub originals: bool,
    /// Batches prepared ahead.
    pub prefetch: usize,
    /// Worker threads (0: half the available cores, at least 1).
    pub threads: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self::mmcl_train()
    }
}

impl LoaderConfig {
    /// Multimodal contrastive training: batch 256, shuffled, random 2500-sample ECG crops with
    /// the reference's ECG augmentations, images augmented to 210×210 (probability 0.95).
    pub fn mmcl_train() -> Self {
        Self {
            batch_size: 256,
            shuffle: true,
            drop_last: false,
            seed: 2022,
            ecg: true,
            ecg_crop: Some(2500),
            ecg_random_crop: true,
            ecg_augment: Some(EcgAugmentConfig::mmcl()),
            image: true,
            image_augment: Some(ImageAugmentConfig::default()),
            image_size: Some(210),
            originals: false,
            prefetch: 2,
            threads: 0,
        }
    }

    /// Validation of the contrastive stage: in order, ECG crop from sample 0; ECGs and images
    /// are still augmented with probability 0.95, as the reference's validation set is.
    pub fn mmcl_val() -> Self {
        Self {
            shuffle: false,
            ecg_random_crop: false,
            ..Self::mmcl_train()
        }
    }

    /// Plain ECG evaluation: in order, crop from 0, no augmentation, no images.
    pub fn ecg_eval(batch_size: usize) -> Self {
        Self {
            batch_size,
            shuffle: false,
            ecg_random_crop: false,
            ecg_augment: None,
            image: false,
            image_augment: None,
            ..Self::mmcl_train()
        }
    }
}

/// One replica's share of every global batch: replica `rank` of `replicas` takes rows
/// `⌊rank·n/replicas⌋..⌊(rank+1)·n/replicas⌋` of a batch of `n` (equal shares when `replicas`
/// divides `n`; otherwise they differ by one, and may be empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    rank: usize,
    replicas: usize,
}

impl Shard {
    /// Replica `rank` of `replicas`.
    ///
    /// # Errors
    /// No replicas, or a rank outside them.
    pub fn new(rank: usize, replicas: usize) -> Result<Self> {
        if rank >= replicas {
            return Err(Error::InvalidInput(format!(
                "replica {rank} of a group of {replicas}"
            )));
        }
        Ok(Self { rank, replicas })
    }

    /// This replica's rows of a global batch of `n`.
    pub fn rows(&self, n: usize) -> Range<usize> {
        self.rank * n / self.replicas..(self.rank + 1) * n / self.replicas
    }
}

/// One batch, as tensors on the loader's device.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The batch's rows within the global batch (all of them unless the loader is a shard).
    pub global_rows: Range<usize>,
    /// The size of the global batch this batch is a part of.
    pub global_size: usize,
    /// Positions of the samples in the cache.
    pub indices: Vec<usize>,
    /// Their participant ids.
    pub eids: Vec<Eid>,
    /// ECGs `[B, 1, leads, T]` (augmented when configured).
    pub ecg: Option<Tensor>,
    /// Un-augmented ECGs `[B, 1, leads, T]` (same crop), when `originals`.
    pub ecg_orig: Option<Tensor>,
    /// Images `[B, C, H, W]` (augmented when configured).
    pub image: Option<Tensor>,
    /// Un-augmented images `[B, C, H, W]`, when `originals`.
    pub image_orig: Option<Tensor>,
    /// Disease labels `[B, L]` (0/1; 0 where unknown).
    pub labels: Tensor,
    /// `[B, L]`: 1 where the label is known.
    pub label_mask: Tensor,
    /// Standardised phenotypes `[B, P]` (0 where missing).
    pub phenotypes: Tensor,
    /// `[B, P]`: 1 where the phenotype is observed.
    pub phenotype_mask: Tensor,
}

/// A batch on the host, before it becomes tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    /// The batch's rows within the global batch.
    pub global_rows: Range<usize>,
    /// The size of the global batch.
    pub global_size: usize,
    /// Positions in the cache.
    pub indices: Vec<usize>,
    /// Participant ids.
    pub eids: Vec<Eid>,
    /// `[B, leads, T]` flattened, with `T`.
    pub ecg: Option<(Vec<f32>, usize)>,
    /// Un-augmented ECGs.
    pub ecg_orig: Option<Vec<f32>>,
    /// `[B, C, H, W]` flattened, with `(C, H, W)`.
    pub image: Option<(Vec<f32>, [usize; 3])>,
    /// Un-augmented images.
    pub image_orig: Option<Vec<f32>>,
    /// `[B, L]` labels and mask.
    pub labels: (Vec<f32>, Vec<f32>),
    /// `[B, P]` phenotypes and mask.
    pub phenotypes: (Vec<f32>, Vec<f32>),
}

/// One prepared sample.
struct Sample {
    ecg: Option<Vec<f32>>,
    ecg_orig: Option<Vec<f32>>,
    image: Option<Vec<f32>>,
    image_orig: Option<Vec<f32>>,
}

/// A batch loader over a subset of a cache.
pub struct Loader {
    cache: Arc<Cache>,
    subset: Vec<usize>,
    cfg: LoaderConfig,
    device: Device,
    pool: Arc<rayon::ThreadPool>,
    shard: Option<Shard>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("subjects", &self.subset.len())
            .field("cfg", &self.cfg)
            .field("shard", &self.shard)
            .finish()
    }
}

impl Loader {
    /// A loader over the cache positions `subset` (e.g. [`Cache::split_indices`]).
    ///
    /// # Errors
    /// A batch size of 0, positions out of range, a modality the cache does not hold, an ECG
    /// crop longer than the cached recordings, a thread pool that cannot start.
    pub fn new(
        cache: Arc<Cache>,
        subset: Vec<usize>,
        cfg: LoaderConfig,
        device: Device,
    ) -> Result<Self> {
        if cfg.batch_size == 0 {
            return Err(Error::InvalidInput("batch size must be positive".into()));
        }
        if let Some(bad) = subset.iter().find(|&&i| i >= cache.len()) {
            return Err(Error::InvalidInput(format!(
                "subject position {bad} is outside the cache of {}",
                cache.len()
            )));
        }
        let index = cache.index();
        if cfg.ecg {
            let layout = index
                .ecg
                .ok_or_else(|| Error::InvalidInput("the cache holds no ECGs".into()))?;
            if let Some(c) = cfg.ecg_crop
                && (c == 0 || c > layout.samples)
            {
                return Err(Error::InvalidInput(format!(
                    "ECG crop {c} does not fit the cached {} samples",
                    layout.samples
                )));
            }
        }
        if cfg.image_augment.as_ref().is_some_and(|a| a.size == 0) || cfg.image_size == Some(0) {
            return Err(Error::InvalidInput("image size must be positive".into()));
        }
        if cfg.image && index.image.is_none() {
            return Err(Error::InvalidInput("the cache holds no images".into()));
        }
        let threads = if cfg.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
        } else {
            cfg.threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("mmcl-loader-{i}"))
            .build()
            .map_err(|e| Error::InvalidInput(format!("cannot start the loader threads: {e}")))?;
        Ok(Self {
            cache,
            subset,
            cfg,
            device,
            pool: Arc::new(pool),
            shard: None,
        })
    }

    /// This loader as the replica `shard` of a data-parallel group: the same epochs and global
    /// batches, of which it yields only its rows (sharing the cache and the worker threads).
    pub fn sharded(&self, shard: Shard) -> Self {
        Self {
            cache: Arc::clone(&self.cache),
            subset: self.subset.clone(),
            cfg: self.cfg.clone(),
            device: self.device.clone(),
            pool: Arc::clone(&self.pool),
            shard: Some(shard),
        }
    }

    /// The replica's share this loader yields, if it is one.
    pub fn shard(&self) -> Option<Shard> {
        self.shard
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }

    /// Samples per epoch.
    pub fn len(&self) -> usize {
        self.subset.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.subset.is_empty()
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        let n = self.subset.len();
        let b = self.cfg.batch_size;
        if self.cfg.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The order of the subset in `epoch`.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order = self.subset.clone();
        if self.cfg.shuffle {
            Rng::derive(self.cfg.seed, &[STREAM_SHUFFLE, epoch]).shuffle(&mut order);
        }
        order
    }

    /// Batch `b` of `epoch` on the host (a pure function of seed, epoch, `b` and the shard).
    ///
    /// # Errors
    /// `b` out of range; cache read errors.
    pub fn host_batch(&self, epoch: u64, b: usize) -> Result<HostBatch> {
        let order = self.epoch_order(epoch);
        self.host_batch_from(&order, epoch, b)
    }

    fn host_batch_from(&self, order: &[usize], epoch: u64, b: usize) -> Result<HostBatch> {
        if b >= self.num_batches() {
            return Err(Error::InvalidInput(format!(
                "batch {b} is outside the {} batches of an epoch",
                self.num_batches()
            )));
        }
        let bs = self.cfg.batch_size;
        let global = &order[b * bs..((b + 1) * bs).min(order.len())];
        let global_rows = self.shard.map_or(0..global.len(), |s| s.rows(global.len()));
        let indices: Vec<usize> = global[global_rows.clone()].to_vec();
        let samples: Vec<Sample> = self.pool.install(|| {
            indices
                .par_iter()
                .map(|&i| self.sample(epoch, i))
                .collect::<Result<Vec<_>>>()
        })?;
        let index = self.cache.index();
        let eids = indices.iter().map(|&i| index.subjects[i].eid).collect();
        let n_labels = index.label_names.len();
        let mut labels = (Vec::new(), Vec::new());
        let mut phenotypes = (Vec::new(), Vec::new());
        for &i in &indices {
            let s = &index.subjects[i];
            for k in 0..n_labels {
                let l = s.labels.get(k).copied().flatten();
                labels.0.push(l.unwrap_or(0) as f32);
                labels.1.push(l.is_some() as u8 as f32);
            }
            let raw: Vec<f64> = s.phenotypes.iter().map(|v| v.unwrap_or(f64::NAN)).collect();
            let (v, m) = index.phenotype_standardiser.transform(&raw);
            phenotypes.0.extend(v);
            phenotypes.1.extend(m);
        }
        let take = |f: fn(&Sample) -> &Option<Vec<f32>>| -> Option<Vec<f32>> {
            if samples.iter().any(|s| f(s).is_none()) {
                return None;
            }
            Some(
                samples
                    .iter()
                    .flat_map(|s| f(s).iter().flatten().copied())
                    .collect(),
            )
        };
        let ecg_len = self.ecg_len();
        let image_shape = self.image_shape();
        Ok(HostBatch {
            global_size: global.len(),
            global_rows,
            eids,
            ecg: take(|s| &s.ecg).map(|v| (v, ecg_len)),
            ecg_orig: take(|s| &s.ecg_orig),
            image: take(|s| &s.image).zip(image_shape),
            image_orig: take(|s| &s.image_orig),
            labels,
            phenotypes,
            indices,
        })
    }

    fn ecg_len(&self) -> usize {
        let samples = self.cache.index().ecg.map_or(0, |l| l.samples);
        self.cfg.ecg_crop.unwrap_or(samples)
    }

    fn image_shape(&self) -> Option<[usize; 3]> {
        let l = self.cache.index().image?;
        let size = match &self.cfg.image_augment {
            Some(a) => Some(a.size),
            None => self.cfg.image_size,
        };
        Some(match size {
            Some(s) => [l.channels, s, s],
            None => [l.channels, l.height, l.width],
        })
    }

    /// Prepares one sample: crop, augmentations, with its own random streams.
    fn sample(&self, epoch: u64, i: usize) -> Result<Sample> {
        let mut out = Sample {
            ecg: None,
            ecg_orig: None,
            image: None,
            image_orig: None,
        };
        let subject = self.cache.index().subjects[i].eid;
        if self.cfg.ecg
            && let Some(layout) = self.cache.index().ecg
        {
            let mut rng = Rng::derive(self.cfg.seed, &[epoch, subject, STREAM_ECG]);
            let len = self.ecg_len();
            let start = if self.cfg.ecg_random_crop {
                random_crop_start(layout.samples, len, &mut rng)
            } else {
                0
            };
            let mut x = vec![0.0f32; layout.leads * len];
            self.cache.read_ecg_window(i, start, &mut x)?;
            if self.cfg.originals {
                out.ecg_orig = Some(x.clone());
            }
            if let Some(aug) = &self.cfg.ecg_augment {
                aug.apply(&mut x, layout.leads, len, &mut rng);
            }
            out.ecg = Some(x);
        }
        if self.cfg.image {
            let img = self.cache.image(i)?;
            let mut rng = Rng::derive(self.cfg.seed, &[epoch, subject, STREAM_IMAGE]);
            let [_, h, w] = self.image_shape().unwrap_or([0, img.height, img.width]);
            if self.cfg.originals {
                out.image_orig = Some(img.resize(h, w).data);
            }
            out.image = Some(match &self.cfg.image_augment {
                Some(aug) => aug.apply(&img, &mut rng).data,
                None => img.resize(h, w).data,
            });
        }
        Ok(out)
    }

    /// Turns a host batch into tensors on the loader's device.
    ///
    /// # Errors
    /// Tensor creation or transfer errors.
    pub fn to_batch(&self, host: HostBatch) -> Result<Batch> {
        let b = host.indices.len();
        let dev = &self.device;
        // The cache's lead count, not the 12 of the standard ECG: a cache may hold a subset.
        let leads = self
            .cache
            .index()
            .ecg
            .map_or(crate::ecg::NUM_LEADS, |l| l.leads);
        let ecg_tensor = |v: Vec<f32>, t: usize| -> Result<Tensor> {
            Ok(Tensor::from_vec(v, (b, 1, leads, t), &Device::Cpu)?.to_device(dev)?)
        };
        let (ecg, ecg_orig) = match host.ecg {
            Some((v, t)) => (
                Some(ecg_tensor(v, t)?),
                host.ecg_orig.map(|o| ecg_tensor(o, t)).transpose()?,
            ),
            None => (None, None),
        };
        let (image, image_orig) = match host.image {
            Some((v, [c, h, w])) => {
                let t = |v: Vec<f32>| -> Result<Tensor> {
                    Ok(Tensor::from_vec(v, (b, c, h, w), &Device::Cpu)?.to_device(dev)?) // [B, C, H, W]
                };
                (Some(t(v)?), host.image_orig.map(t).transpose()?)
            }
            None => (None, None),
        };
        let l = self.cache.index().label_names.len();
        let p = self.cache.index().phenotype_names.len();
        let mat = |v: Vec<f32>, k: usize| -> Result<Tensor> {
            Ok(Tensor::from_vec(v, (b, k), &Device::Cpu)?.to_device(dev)?)
        };
        Ok(Batch {
            global_rows: host.global_rows,
            global_size: host.global_size,
            eids: host.eids,
            ecg,
            ecg_orig,
            image,
            image_orig,
            labels: mat(host.labels.0, l)?,
            label_mask: mat(host.labels.1, l)?,
            phenotypes: mat(host.phenotypes.0, p)?,
            phenotype_mask: mat(host.phenotypes.1, p)?,
            indices: host.indices,
        })
    }

    /// Batch `b` of `epoch` as tensors (for resuming mid-epoch, or random access).
    ///
    /// # Errors
    /// As [`Loader::host_batch`] and [`Loader::to_batch`].
    pub fn batch(&self, epoch: u64, b: usize) -> Result<Batch> {
        let host = self.host_batch(epoch, b)?;
        self.to_batch(host)
    }

    /// Iterates over the batches of `epoch` from batch `from` on, preparing `prefetch`
    /// batches ahead on a background thread.
    pub fn epoch(self: &Arc<Self>, epoch: u64, from: usize) -> EpochIter {
        let (tx, rx) = bounded(self.cfg.prefetch.max(1));
        let loader = Arc::clone(self);
        let n = self.num_batches();
        let handle = std::thread::Builder::new()
            .name("mmcl-loader".into())
            .spawn(move || {
                let order = loader.epoch_order(epoch);
                for b in from..n {
                    let host = loader.host_batch_from(&order, epoch, b);
                    let failed = host.is_err();
                    if tx.send(host).is_err() || failed {
                        break; // the consumer is gone, or the error has been handed over
                    }
                }
            });
        match handle {
            Ok(handle) => EpochIter {
                loader: Arc::clone(self),
                rx: Some(rx),
                handle: Some(handle),
                remaining: n.saturating_sub(from),
            },
            Err(_) => EpochIter {
                loader: Arc::clone(self),
                rx: None,
                handle: None,
                remaining: n.saturating_sub(from),
            },
        }
    }
}

/// The batches of one epoch (see [`Loader::epoch`]).
pub struct EpochIter {
    loader: Arc<Loader>,
    rx: Option<Receiver<Result<HostBatch>>>,
    handle: Option<JoinHandle<()>>,
    remaining: usize,
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let Some(rx) = &self.rx else {
            self.remaining = 0;
            return Some(Err(Error::LoaderStopped));
        };
        match rx.recv() {
            Ok(Ok(host)) => Some(self.loader.to_batch(host)),
            Ok(Err(e)) => {
                self.remaining = 0;
                Some(Err(e))
            }
            Err(_) => {
                self.remaining = 0;
                Some(Err(Error::LoaderStopped))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        // Dropping the receiver makes the producer's next send fail, so it stops promptly.
        self.rx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

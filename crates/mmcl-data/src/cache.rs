//! The dataset cache: preprocessed ECGs and CMR images written once, read fast every epoch.
//!
//! Layout of a cache directory:
//!
//! ```text
//! index.json                 CacheIndex: version, layouts, subjects (eid, split, labels,
//!                            phenotypes, shard, row), label/phenotype names, the
//!                            standardisation of the phenotypes (fitted on the training split),
//!                            the build configuration and report
//! shard-00000.safetensors    "ecg"   f32 [n, 12, T]     (when the cache holds ECGs)
//!                            "image" f32 [n, C, H, W]   (when it holds CMR images)
//!                            "eid"   i64 [n]
//! ```
//!
//! The writer fills a temporary sibling directory and renames it into place when the index is
//! written, so an interrupted build leaves nothing that looks like a cache. The reader maps the
//! shards into memory and copies out only the samples (or ECG windows) asked for.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::cmr::Image;
use crate::tables::{Eid, Split, Standardiser};
use crate::{Error, Result};

/// Version of the cache layout; readers refuse other versions.
pub const CACHE_VERSION: u32 = 1;

/// Name of the index file.
pub const INDEX_FILE: &str = "index.json";

/// Shape of the cached ECGs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EcgLayout {
    /// Leads (12).
    pub leads: usize,
    /// Samples per lead.
    pub samples: usize,
    /// Sampling rate in Hz.
    pub sample_rate: f64,
}

/// Shape of the cached images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageLayout {
    /// Channels.
    pub channels: usize,
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
}

/// What the cache writer needs of a layout.
trait Layout: std::fmt::Debug + Copy {
    /// How many `f32` values one subject takes.
    fn subject_len(&self) -> usize;
}

impl Layout for EcgLayout {
    fn subject_len(&self) -> usize {
        self.leads * self.samples
    }
}

impl Layout for ImageLayout {
    fn subject_len(&self) -> usize {
        self.channels * self.height * self.width
    }
}

/// Appends one subject's `values` (its `what`: ECG or image) to `buf` when they fit `layout`;
/// neither is fine too (the cache holds none of them), anything else is an error naming the
/// subject.
fn append_fitting<L: Layout>(
    buf: &mut Vec<f32>,
    layout: Option<L>,
    values: Option<&[f32]>,
    eid: Eid,
    what: &str,
) -> Result<()> {
    match (layout, values) {
        (Some(l), Some(x)) if x.len() == l.subject_len() => buf.extend_from_slice(x),
        (None, None) => {}
        _ => {
            return Err(Error::InvalidInput(format!(
                "subject {eid}: {what} does not fit the cache layout {layout:?}"
            )));
        }
    }
    Ok(())
}

impl CacheIndex {
    /// Checks what the readers rely on: the version, the layouts, shard files inside the cache,
    /// and every subject on its own row of a shard with as many labels (0 or 1) and phenotypes
    /// as there are names. The shards' tensors are checked against the layouts when opened.
    /// Returns each subject's position by eid.
    fn check(&self) -> std::result::Result<HashMap<Eid, usize>, String> {
        if self.version != CACHE_VERSION {
            return Err(format!(
                "cache version {} is not the supported version {CACHE_VERSION}; rebuild it",
                self.version
            ));
        }
        if self.ecg.is_none() && self.image.is_none() {
            return Err("the index describes neither ECGs nor images".into());
        }
        if let Some(l) = self.ecg {
            if l.leads == 0 || l.samples == 0 {
                return Err(format!("an ECG layout of {l:?} holds no samples"));
            }
            crate::ecg::check_sample_rate(l.sample_rate).map_err(|e| format!("ECG layout: {e}"))?;
        }
        if let Some(l) = self.image
            && (l.channels == 0 || l.height == 0 || l.width == 0)
        {
            return Err(format!("an image layout of {l:?} holds no pixels"));
        }
        if let Some(names) = &self.ecg_lead_names {
            let leads = self.ecg.map_or(0, |l| l.leads);
            let named = crate::ecg::lead_selection(Some(names))
                .map_err(|reason| format!("ecg_lead_names: {reason}"))?;
            if named.len() != leads {
                return Err(format!(
                    "ecg_lead_names {names:?} do not name the {leads} stored ECG leads"
                ));
            }
        }
        // A shard is a file of the cache's own folder, not a path out of it.
        if let Some(bad) = self.shards.iter().find(|s| {
            let name = Path::new(&s.file);
            name.file_name().is_none_or(|f| f != name.as_os_str())
        }) {
            return Err(format!(
                "shard {:?} is not a file name in the cache",
                bad.file
            ));
        }
        let (mut rows, mut by_eid) = (HashSet::new(), HashMap::new());
        let (labels, phenotypes) = (self.label_names.len(), self.phenotype_names.len());
        for (i, s) in self.subjects.iter().enumerate() {
            if s.shard >= self.shards.len() || s.row >= self.shards[s.shard].count {
                return Err(format!("subject {} points outside the shards", s.eid));
            }
            if by_eid.insert(s.eid, i).is_some() {
                return Err(format!("subject {} is listed twice", s.eid));
            }
            if !rows.insert((s.shard, s.row)) {
                return Err(format!(
                    "subject {} shares row {} of shard {} with another subject",
                    s.eid, s.row, s.shard
                ));
            }
            if s.labels.len() != labels || s.phenotypes.len() != phenotypes {
                return Err(format!(
                    "subject {} has {} labels and {} phenotypes for {labels} and {phenotypes} \
                     names",
                    s.eid,
                    s.labels.len(),
                    s.phenotypes.len()
                ));
            }
            if s.labels.iter().flatten().any(|&l| l > 1) {
                return Err(format!("subject {} has a label other than 0 or 1", s.eid));
            }
        }
        let st = &self.phenotype_standardiser;
        if st.mean.len() != phenotypes || st.std.len() != phenotypes {
            return Err(format!(
                "the phenotype standardiser has {} means and {} deviations for {phenotypes} \
                 phenotypes",
                st.mean.len(),
                st.std.len()
            ));
        }
        if st.mean.iter().any(|m| !m.is_finite())
            || st.std.iter().any(|d| !(d.is_finite() && *d > 0.0))
        {
            return Err("the phenotype standardiser holds a non-finite mean or a deviation that is not positive".into());
        }
        Ok(by_eid)
    }
}

/// One subject of the cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectEntry {
    /// Participant id.
    pub eid: Eid,
    /// Its split.
    pub split: Split,
    /// Shard index.
    pub shard: usize,
    /// Row within the shard.
    pub row: usize,
    /// Disease labels in the order of [`CacheIndex::label_names`] (`None` unknown).
    pub labels: Vec<Option<u8>>,
    /// Raw phenotypes in the order of [`CacheIndex::phenotype_names`] (`None` missing).
    pub phenotypes: Vec<Option<f64>>,
}

/// One shard file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// File name within the cache directory.
    pub file: String,
    /// Subjects in it.
    pub count: usize,
}

/// The content of `index.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheIndex {
    /// [`CACHE_VERSION`] of the writer.
    pub version: u32,
    /// ECG layout, when the cache holds ECGs.
    pub ecg: Option<EcgLayout>,
    /// Image layout, when it holds images.
    pub image: Option<ImageLayout>,
    /// Names of the disease labels.
    pub label_names: Vec<String>,
    /// Names of the phenotypes.
    pub phenotype_names: Vec<String>,
    /// Standardisation of the phenotypes, fitted on the training subjects.
    pub phenotype_standardiser: Standardiser,
    /// The shards.
    pub shards: Vec<ShardInfo>,
    /// The subjects, in storage order.
    pub subjects: Vec<SubjectEntry>,
    /// The ECG leads' names, in storage order, when the cache holds a subset of the 12 (a
    /// build with `ecg_leads`); `None` for the 12 standard leads in canonical order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecg_lead_names: Option<Vec<String>>,
    /// The configuration the cache was built with.
    pub config: serde_json::Value,
    /// What the build reported (missing modalities, skipped files).
    pub report: serde_json::Value,
}

/// What the writer needs to know about one subject besides its tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectMeta {
    /// Participant id.
    pub eid: Eid,
    /// Split.
    pub split: Split,
    /// Labels.
    pub labels: Vec<Option<u8>>,
    /// Raw phenotypes (`NaN` missing).
    pub phenotypes: Vec<f64>,
}

/// Writes a cache shard by shard.
pub struct CacheWriter {
    target: PathBuf,
    partial: PathBuf,
    ecg: Option<EcgLayout>,
    image: Option<ImageLayout>,
    shard_size: usize,
    ecg_buf: Vec<f32>,
    image_buf: Vec<f32>,
    eid_buf: Vec<i64>,
    shards: Vec<ShardInfo>,
    subjects: Vec<SubjectEntry>,
    lead_names: Option<Vec<String>>,
}

fn f32_bytes(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

impl CacheWriter {
    /// Starts a cache at `dir` (which must not hold a cache yet unless `overwrite`).
    ///
    /// # Errors
    /// An existing cache without `overwrite`, a layout with nothing to store, I/O errors.
    pub fn create(
        dir: &Path,
        ecg: Option<EcgLayout>,
        image: Option<ImageLayout>,
        shard_size: usize,
        overwrite: bool,
    ) -> Result<Self> {
        if ecg.is_none() && image.is_none() {
            return Err(Error::InvalidInput(
                "a cache must hold ECGs, images or both".into(),
            ));
        }
        if dir.exists() && !overwrite {
            return Err(Error::format(
                dir,
                "the output exists; choose another or allow overwriting",
            ));
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "cache".into());
        let partial = dir.with_file_name(format!(".{name}.partial-{}", std::process::id()));
        if partial.exists() {
            fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
        }
        fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
        Ok(Self {
            target: dir.to_path_buf(),
            partial,
            ecg,
            image,
            shard_size: shard_size.max(1),
            ecg_buf: Vec::new(),
            image_buf: Vec::new(),
            eid_buf: Vec::new(),
            shards: Vec::new(),
            subjects: Vec::new(),
            lead_names: None,
        })
    }

    /// Names the stored ECG leads ([`CacheIndex::ecg_lead_names`]) when they are a subset of
    /// the 12; `None` keeps the canonical 12.
    #[must_use]
    pub fn with_lead_names(mut self, names: Option<Vec<String>>) -> Self {
        self.lead_names = names;
        self
    }

    /// Adds one subject.
    ///
    /// # Errors
    /// Tensors missing or of the wrong size for the layouts; I/O errors when a shard is
    /// flushed.
    pub fn push(
        &mut self,
        meta: SubjectMeta,
        ecg: Option<&[f32]>,
        image: Option<&[f32]>,
    ) -> Result<()> {
        append_fitting(&mut self.ecg_buf, self.ecg, ecg, meta.eid, "ECG")?;
        append_fitting(&mut self.image_buf, self.image, image, meta.eid, "image")?;
        self.eid_buf.push(meta.eid as i64);
        self.subjects.push(SubjectEntry {
            eid: meta.eid,
            split: meta.split,
            shard: self.shards.len(),
            row: self.eid_buf.len() - 1,
            labels: meta.labels,
            phenotypes: meta
                .phenotypes
                .iter()
                .map(|v| (!v.is_nan()).then_some(*v))
                .collect(),
        });
        if self.eid_buf.len() >= self.shard_size {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let n = self.eid_buf.len();
        if n == 0 {
            return Ok(());
        }
        let file = format!("shard-{:05}.safetensors", self.shards.len());
        let path = self.partial.join(&file);
        let st_err = |source| Error::Safetensors {
            path: path.clone(),
            source,
        };
        let ecg_bytes = f32_bytes(&self.ecg_buf);
        let image_bytes = f32_bytes(&self.image_buf);
        let eid_bytes: Vec<u8> = self.eid_buf.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut views = Vec::new();
        if let Some(l) = self.ecg {
            views.push((
                "ecg",
                TensorView::new(Dtype::F32, vec![n, l.leads, l.samples], &ecg_bytes)
                    .map_err(st_err)?,
            ));
        }
        if let Some(l) = self.image {
            views.push((
                "image",
                TensorView::new(
                    Dtype::F32,
                    vec![n, l.channels, l.height, l.width],
                    &image_bytes,
                )
                .map_err(st_err)?,
            ));
        }
        views.push((
            "eid",
            TensorView::new(Dtype::I64, vec![n], &eid_bytes).map_err(st_err)?,
        ));
        let bytes = safetensors::serialize(views, None).map_err(st_err)?;
        fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
        self.shards.push(ShardInfo { file, count: n });
        self.ecg_buf.clear();
        self.image_buf.clear();
        self.eid_buf.clear();
        Ok(())
    }

    /// Writes the last shard and the index, and moves the cache into place. The phenotype
    /// standardisation is fitted on the training subjects here.
    ///
    /// # Errors
    /// I/O errors; nothing is left at the target on failure.
    pub fn finish(
        mut self,
        label_names: Vec<String>,
        phenotype_names: Vec<String>,
        config: serde_json::Value,
        report: serde_json::Value,
    ) -> Result<CacheIndex> {
        self.flush()?;
        let train_rows: Vec<Vec<f64>> = self
            .subjects
            .iter()
            .filter(|s| s.split == Split::Train)
            .map(|s| s.phenotypes.iter().map(|v| v.unwrap_or(f64::NAN)).collect())
            .collect();
        let standardiser =
            Standardiser::fit(train_rows.iter().map(Vec::as_slice), phenotype_names.len());
        let index = CacheIndex {
            version: CACHE_VERSION,
            ecg: self.ecg,
            image: self.image,
            label_names,
            phenotype_names,
            phenotype_standardiser: standardiser,
            shards: std::mem::take(&mut self.shards),
            subjects: std::mem::take(&mut self.subjects),
            ecg_lead_names: self.lead_names.take(),
            config,
            report,
        };
        let index_path = self.partial.join(INDEX_FILE);
        let json = serde_json::to_vec_pretty(&index).map_err(|e| Error::json(&index_path, e))?;
        fs::write(&index_path, json).map_err(|e| Error::io(&index_path, e))?;
        if self.target.exists() {
            fs::remove_dir_all(&self.target).map_err(|e| Error::io(&self.target, e))?;
        }
        fs::rename(&self.partial, &self.target).map_err(|e| Error::io(&self.target, e))?;
        Ok(index)
    }
}

impl Drop for CacheWriter {
    fn drop(&mut self) {
        // After a successful finish the partial directory has been renamed away.
        if self.partial.exists() {
            let _ = fs::remove_dir_all(&self.partial);
        }
    }
}

/// A mapped shard and where its tensors start.
struct Shard {
    map: Mmap,
    ecg_offset: Option<usize>,
    image_offset: Option<usize>,
}

/// A cache opened for reading.
pub struct Cache {
    dir: PathBuf,
    index: CacheIndex,
    shards: Vec<Shard>,
    by_eid: HashMap<Eid, usize>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("dir", &self.dir)
            .field("subjects", &self.index.subjects.len())
            .field("ecg", &self.index.ecg)
            .field("image", &self.index.image)
            .finish()
    }
}

impl Cache {
    /// Opens a cache directory, checking the version and every shard's tensors.
    ///
    /// # Errors
    /// A missing or malformed index, another version, missing or malformed shards.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join(INDEX_FILE);
        let index: CacheIndex = mmcl_core::files::read_json_bounded(
            &index_path,
            mmcl_core::files::MAX_JSON_BYTES,
            "the cache index",
        )?;
        let by_eid = index
            .check()
            .map_err(|reason| Error::format(&index_path, reason))?;
        let mut shards = Vec::with_capacity(index.shards.len());
        for info in &index.shards {
            let path = dir.join(&info.file);
            // A regular file only: a FIFO in its place would block the open.
            let (file, _) = mmcl_core::files::open_regular(&path)?;
            // SAFETY: the cache is written once and never modified in place (a rebuild
            // replaces the directory), so the mapping's bytes do not change under us.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            let (header_len, meta) =
                SafeTensors::read_metadata(&map).map_err(|source| Error::Safetensors {
                    path: path.clone(),
                    source,
                })?;
            let base = 8 + header_len;
            let offset = |name: &str, shape: Option<Vec<usize>>| -> Result<Option<usize>> {
                let Some(shape) = shape else { return Ok(None) };
                let t = meta
                    .info(name)
                    .ok_or_else(|| Error::format(&path, format!("shard has no tensor {name:?}")))?;
                if t.dtype != Dtype::F32 || t.shape != shape {
                    return Err(Error::format(
                        &path,
                        format!(
                            "tensor {name:?} is {:?} {:?}, the index expects F32 {shape:?}",
                            t.dtype, t.shape
                        ),
                    ));
                }
                Ok(Some(base + t.data_offsets.0))
            };
            let n = info.count;
            let ecg_offset = offset("ecg", index.ecg.map(|l| vec![n, l.leads, l.samples]))?;
            let image_offset = offset(
                "image",
                index.image.map(|l| vec![n, l.channels, l.height, l.width]),
            )?;
            shards.push(Shard {
                map,
                ecg_offset,
                image_offset,
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            index,
            shards,
            by_eid,
        })
    }

    /// The index.
    pub fn index(&self) -> &CacheIndex {
        &self.index
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of subjects.
    pub fn len(&self) -> usize {
        self.index.subjects.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.index.subjects.is_empty()
    }

    /// Position of a subject.
    pub fn position(&self, eid: Eid) -> Option<usize> {
        self.by_eid.get(&eid).copied()
    }

    /// Positions of the subjects of a split, in storage order.
    pub fn split_indices(&self, split: Split) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.index.subjects[i].split == split)
            .collect()
    }

    /// The ECG layout, or an error when the cache holds no ECGs.
    fn ecg_layout(&self) -> Result<EcgLayout> {
        self.index
            .ecg
            .ok_or_else(|| Error::InvalidInput("the cache holds no ECGs".into()))
    }

    /// The index entry of subject `i`, or an error when `i` is out of range.
    fn subject(&self, i: usize) -> Result<&SubjectEntry> {
        self.index
            .subjects
            .get(i)
            .ok_or_else(|| Error::InvalidInput(format!("subject {i} is out of range")))
    }

    fn read_f32(bytes: &[u8], out: &mut [f32]) {
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
    }

    /// Copies samples `[start, start + out.len()/leads)` of every lead of subject `i` into
    /// `out` (`[leads, len]`, lead-major).
    ///
    /// # Errors
    /// No ECGs in the cache, an index or window out of range.
    pub fn read_ecg_window(&self, i: usize, start: usize, out: &mut [f32]) -> Result<()> {
        let layout = self.ecg_layout()?;
        let s = self.subject(i)?;
        let len = out.len() / layout.leads;
        if len * layout.leads != out.len() || start + len > layout.samples {
            return Err(Error::InvalidInput(format!(
                "ECG window [{start}, {}) does not fit {} samples",
                start + len,
                layout.samples
            )));
        }
        let shard = &self.shards[s.shard];
        let base = shard.ecg_offset.unwrap_or(0) + s.row * layout.leads * layout.samples * 4;
        for lead in 0..layout.leads {
            let from = base + (lead * layout.samples + start) * 4;
            Self::read_f32(
                &shard.map[from..from + len * 4],
                &mut out[lead * len..(lead + 1) * len],
            );
        }
        Ok(())
    }

    /// The whole ECG of subject `i`, `[leads, samples]`.
    ///
    /// # Errors
    /// As [`Cache::read_ecg_window`].
    pub fn ecg(&self, i: usize) -> Result<Vec<f32>> {
        let layout = self.ecg_layout()?;
        let mut out = vec![0.0; layout.subject_len()];
        self.read_ecg_window(i, 0, &mut out)?;
        Ok(out)
    }

    /// The image of subject `i`.
    ///
    /// # Errors
    /// No images in the cache, an index out of range.
    pub fn image(&self, i: usize) -> Result<Image> {
        let layout = self
            .index
            .image
            .ok_or_else(|| Error::InvalidInput("the cache holds no images".into()))?;
        let s = self.subject(i)?;
        let shard = &self.shards[s.shard];
        let n = layout.subject_len();
        let from = shard.image_offset.unwrap_or(0) + s.row * n * 4;
        let mut img = Image::zeros(layout.channels, layout.height, layout.width);
        Self::read_f32(&shard.map[from..from + n * 4], &mut img.data);
        Ok(img)
    }
}

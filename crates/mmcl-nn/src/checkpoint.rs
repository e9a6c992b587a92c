//! Checkpoint I/O: reading safetensors and PyTorch files into a [`StateDict`], matching its keys
//! against a model, and writing safetensors atomically.
//!
//! PyTorch archives are read by the `mmcl-pth` crate. Key renaming for the released layouts
//! (`{"model": …}`, Lightning `{"state_dict": …}`, Sequential indices) lives in the model
//! crates, as [`KeyRemap`] tables applied with [`StateDict::remap`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

pub use mmcl_pth::{KeyRemap, KeyRule, glob_match};

/// Named tensors read from a checkpoint (or taken from a model), sorted by name.
#[derive(Debug, Clone, Default)]
pub struct StateDict {
    tensors: BTreeMap<String, Tensor>,
    source: PathBuf,
}

/// The on-disk formats we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// A safetensors file.
    Safetensors,
    /// A PyTorch `torch.save` zip archive (`.pth`, `.pt`, `.ckpt`, `.bin`).
    TorchZip,
}

impl CheckpointFormat {
    /// Detects the format from the first bytes of a file.
    pub fn sniff(head: &[u8]) -> Option<Self> {
        if head.starts_with(b"PK\x03\x04") {
            return Some(Self::TorchZip);
        }
        if head.len() >= 9 && head[8] == b'{' {
            return Some(Self::Safetensors);
        }
        None
    }
}

impl StateDict {
    /// An empty state dict attributed to `source` (used in error messages).
    pub fn with_source(source: impl Into<PathBuf>) -> Self {
        Self {
            tensors: BTreeMap::new(),
            source: source.into(),
        }
    }

    /// Reads every tensor of a safetensors or PyTorch checkpoint, on the CPU, in its stored dtype.
    ///
    /// PyTorch files may nest dictionaries (`{"model": {...}}`, Lightning's
    /// `{"state_dict": {...}}`): nested keys are joined with `.`, so a released MMCL signal encoder
    /// reads as `model.blocks.0.…`; strip such prefixes with [`StateDict::strip_prefix`].
    pub fn read(path: &Path) -> Result<Self> {
        // A regular file only (a device or FIFO is refused, not read without end), of at most
        // `MAX_CHECKPOINT_BYTES` (a sparse file claiming more is refused before the buffer).
        let bytes =
            mmcl_core::files::read_regular_bounded(path, MAX_CHECKPOINT_BYTES, "the checkpoint")?;
        let bad = |reason: String| Error::BadCheckpoint {
            path: path.to_path_buf(),
            reason,
        };
        if bytes.is_empty() {
            return Err(bad("the file is empty".into()));
        }
        let tensors = match CheckpointFormat::sniff(&bytes) {
            Some(CheckpointFormat::Safetensors) => {
                candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
                    .map_err(|e| bad(format!("damaged safetensors file: {e}")))?
                    .into_iter()
                    .collect()
            }
            Some(CheckpointFormat::TorchZip) => mmcl_pth::read_bytes(&bytes)
                .map_err(|reason| bad(reason.to_string()))?
                .into_iter()
                .collect(),
            None if bytes.first() == Some(&mmcl_pth::LEGACY_MAGIC) => {
                return Err(bad(mmcl_pth::ArchiveError::LegacyFormat.to_string()));
            }
            None => {
                return Err(bad(
                    "neither safetensors nor a PyTorch zip archive (unknown header)".into(),
                ));
            }
        };
        Ok(Self {
            tensors,
            source: path.to_path_buf(),
        })
    }

    /// The file this state dict was read from (empty for in-memory ones).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Inserts or replaces a tensor.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) -> Option<Tensor> {
        self.tensors.insert(name.into(), tensor)
    }

    /// Removes a tensor.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name)
    }

    /// The tensor `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Names, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// `(name, tensor)` pairs, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there is no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Whether some key starts with `prefix`.
    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.tensors.keys().any(|k| k.starts_with(prefix))
    }

    /// Keeps only keys starting with `prefix`, with the prefix removed.
    pub fn strip_prefix(&self, prefix: &str) -> Self {
        self.remap(&KeyRemap::new().strip_prefix(prefix).drop_unmatched())
            .0
    }

    /// Prepends `prefix` to every key.
    pub fn add_prefix(&self, prefix: &str) -> Self {
        self.remap(&KeyRemap::new().replace_prefix("", prefix)).0
    }

    /// Renames every key through `remap`; returns the renamed state dict (same source) and the
    /// original names of the keys it dropped, sorted. When two keys get the same name, the later
    /// one in name order wins.
    pub fn remap(&self, remap: &KeyRemap) -> (Self, Vec<String>) {
        let out = remap.apply_to(self.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let state = Self {
            tensors: out.kept.into_iter().collect(),
            source: self.source.clone(),
        };
        (state, out.dropped)
    }

    /// Renames keys through `rename`; keys for which it returns `None` are dropped.
    pub fn map_keys(&self, mut rename: impl FnMut(&str) -> Option<String>) -> Self {
        let tensors = self
            .tensors
            .iter()
            .filter_map(|(k, v)| rename(k).map(|k| (k, v.clone())))
            .collect();
        Self {
            tensors,
            source: self.source.clone(),
        }
    }

    /// Every floating-point tensor converted to `dtype` (f16/bf16/f64 checkpoints become f32
    /// this way). Integer and boolean tensors keep their dtype: counters stay exact, and an
    /// integer where a weight belongs is still refused by [`match_keys`] instead of passing as a
    /// float.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let mut tensors = BTreeMap::new();
        for (k, v) in &self.tensors {
            let v = if v.dtype().is_float() {
                v.to_dtype(dtype)?
            } else {
                v.clone()
            };
            tensors.insert(k.clone(), v);
        }
        Ok(Self {
            tensors,
            source: self.source.clone(),
        })
    }

    /// Writes a safetensors file atomically, with optional string metadata.
    pub fn write_safetensors(
        &self,
        path: &Path,
        metadata: Option<HashMap<String, String>>,
    ) -> Result<()> {
        let mut cpu = Vec::with_capacity(self.tensors.len());
        for (k, v) in &self.tensors {
            cpu.push((k.clone(), v.to_device(&Device::Cpu)?.contiguous()?));
        }
        crate::io::write_atomic(path, |tmp| {
            safetensors::tensor::serialize_to_file(cpu.iter().map(|(k, v)| (k, v)), metadata, tmp)
                .map_err(|e| Error::io(tmp, std::io::Error::other(e)))?;
            sort_header_metadata(tmp)
        })
    }
}

/// Puts the `__metadata__` entries of a freshly written safetensors header in sorted order, in
/// place. The safetensors crate takes the metadata as a `HashMap`, whose iteration order changes
/// from run to run, so the same export would otherwise differ in its bytes; the header keeps its
/// length (the same entries, reordered, padded with spaces as before).
fn sort_header_metadata(path: &Path) -> Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let io = |e| Error::io(path, e);
    let internal = |reason: String| {
        io(std::io::Error::other(format!(
            "internal error: re-reading the safetensors header just written: {reason}"
        )))
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    let header = read_safetensors_header(&mut file, path)?;
    let mut entries: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| internal(e.to_string()))?;
    let Some(metadata) = entries.get_mut("__metadata__") else {
        return Ok(());
    };
    let sorted: BTreeMap<String, String> =
        serde_json::from_value(metadata.take()).map_err(|e| internal(e.to_string()))?;
    *metadata = serde_json::to_value(sorted).map_err(|e| internal(e.to_string()))?;
    let mut text = serde_json::to_vec(&entries).map_err(|e| internal(e.to_string()))?;
    if text.len() > header.len() {
        return Err(internal("the reordered header is longer".into()));
    }
    text.resize(header.len(), b' ');
    file.seek(SeekFrom::Start(8)).map_err(io)?;
    file.write_all(&text).map_err(io)?;
    Ok(())
}

/// The largest safetensors header read by [`read_safetensors_metadata`] (the format's own limit).
const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

/// The largest checkpoint file [`StateDict::read`] reads whole: far above the paper's models
/// (a ResNet50 + ViT multimodal checkpoint with its optimiser is well under 1 GiB), below what a
/// hostile sparse file could make it try to hold.
pub const MAX_CHECKPOINT_BYTES: u64 = 16 << 30;

/// The string metadata (`__metadata__`) of a safetensors file, read from its header alone: the
/// header's claimed length is checked against the file (and the format's 100 MB limit) before
/// anything is allocated from it, so a damaged or hostile file cannot exhaust memory. A file
/// without metadata gives an empty map.
pub fn read_safetensors_metadata(path: &Path) -> Result<HashMap<String, String>> {
    // A regular file only: a FIFO in its place would block the open.
    let (mut file, _) = mmcl_core::files::open_regular(path)?;
    let header = read_safetensors_header(&mut file, path)?;
    #[derive(serde::Deserialize)]
    struct Header {
        #[serde(rename = "__metadata__", default)]
        metadata: Option<HashMap<String, String>>,
    }
    let parsed: Header =
        serde_json::from_slice(&header).map_err(|e| damaged_safetensors(path, e.to_string()))?;
    Ok(parsed.metadata.unwrap_or_default())
}

/// A safetensors file that cannot be read, and why.
fn damaged_safetensors(path: &Path, reason: String) -> Error {
    Error::BadCheckpoint {
        path: path.to_path_buf(),
        reason: format!("not a readable safetensors file: {reason}"),
    }
}

/// The JSON header of the safetensors file `file` (read from its start, `path` naming it), its
/// claimed length checked against the file and the format's limit before it is allocated.
fn read_safetensors_header(file: &mut std::fs::File, path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let io = |e| Error::io(path, e);
    let damaged = |reason: String| damaged_safetensors(path, reason);
    let len = file.metadata().map_err(io)?.len();
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => damaged(format!("the file is only {len} bytes")),
        _ => io(e),
    })?;
    let n = u64::from_le_bytes(prefix);
    let room = len.saturating_sub(8);
    if n > room || n > MAX_SAFETENSORS_HEADER {
        return Err(damaged(format!(
            "it claims {n} bytes of header, the file holds {room} after the length"
        )));
    }
    let mut header = Vec::new();
    file.take(n).read_to_end(&mut header).map_err(io)?;
    if header.len() as u64 != n {
        return Err(damaged("the file ended inside the header".into()));
    }
    Ok(header)
}

impl FromIterator<(String, Tensor)> for StateDict {
    fn from_iter<I: IntoIterator<Item = (String, Tensor)>>(iter: I) -> Self {
        Self {
            tensors: iter.into_iter().collect(),
            source: PathBuf::new(),
        }
    }
}

/// Which differences between a model and a checkpoint are acceptable.
///
/// Patterns are names in which `*` matches any run of characters (`head.*`, `decoder_*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Model keys that may be absent from the checkpoint (they keep their initial values).
    pub allow_missing: Vec<String>,
    /// Checkpoint keys that may have no counterpart in the model (they are ignored).
    pub allow_unexpected: Vec<String>,
}

impl LoadOptions {
    /// Every key must match exactly.
    pub fn strict() -> Self {
        Self::default()
    }

    /// Adds patterns of model keys allowed to be missing.
    pub fn allow_missing<S: Into<String>>(mut self, patterns: impl IntoIterator<Item = S>) -> Self {
        self.allow_missing
            .extend(patterns.into_iter().map(Into::into));
        self
    }

    /// Adds patterns of checkpoint keys allowed to be unexpected.
    pub fn allow_unexpected<S: Into<String>>(
        mut self,
        patterns: impl IntoIterator<Item = S>,
    ) -> Self {
        self.allow_unexpected
            .extend(patterns.into_iter().map(Into::into));
        self
    }
}

/// A key whose shapes differ between model and checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// The key.
    pub name: String,
    /// The model's shape.
    pub model: Vec<usize>,
    /// The checkpoint's shape.
    pub checkpoint: Vec<usize>,
}

/// The last components of the keys whose tensors are legitimately integer: BatchNorm's step
/// counter, the only integer buffer of PyTorch layers and of the models and optimiser files this
/// workspace writes (the optimiser keeps its step count in the safetensors metadata). Any other
/// integer or boolean tensor that fills a model key is refused rather than silently cast to
/// floating point.
pub const INTEGER_KEYS: [&str; 1] = ["num_batches_tracked"];

/// Whether the checkpoint key `name` may hold an integer tensor (see [`INTEGER_KEYS`]).
pub fn is_integer_key(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    INTEGER_KEYS.contains(&last)
}

/// A key whose checkpoint tensor holds integers (or booleans) where the model holds
/// floating-point values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DtypeMismatch {
    /// The key.
    pub name: String,
    /// The checkpoint tensor's dtype.
    pub checkpoint: DType,
}

/// The outcome of matching a checkpoint against a model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Keys present in both with equal shapes.
    pub loaded: Vec<String>,
    /// Model keys absent from the checkpoint.
    pub missing: Vec<String>,
    /// Checkpoint keys with no counterpart in the model.
    pub unexpected: Vec<String>,
    /// Keys present in both with different shapes (always an error).
    pub shape_mismatches: Vec<ShapeMismatch>,
    /// Keys whose checkpoint tensor is integer where a floating-point weight is expected
    /// (always an error; see [`INTEGER_KEYS`]).
    pub dtype_mismatches: Vec<DtypeMismatch>,
}

impl LoadReport {
    /// `Ok` when every difference is allowed by `options`; else the report of the disallowed ones.
    pub fn check(&self, options: &LoadOptions) -> std::result::Result<(), LoadReport> {
        // The keys that no pattern of `allowed` covers.
        let disallowed = |keys: &[String], allowed: &[String]| -> Vec<String> {
            keys.iter()
                .filter(|k| !allowed.iter().any(|p| glob_match(p, k)))
                .cloned()
                .collect()
        };
        let missing = disallowed(&self.missing, &options.allow_missing);
        let unexpected = disallowed(&self.unexpected, &options.allow_unexpected);
        if missing.is_empty()
            && unexpected.is_empty()
            && self.shape_mismatches.is_empty()
            && self.dtype_mismatches.is_empty()
        {
            Ok(())
        } else {
            Err(LoadReport {
                loaded: self.loaded.clone(),
                missing,
                unexpected,
                shape_mismatches: self.shape_mismatches.clone(),
                dtype_mismatches: self.dtype_mismatches.clone(),
            })
        }
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!("missing keys: {}", self.missing.join(", ")));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!("unexpected keys: {}", self.unexpected.join(", ")));
        }
        for m in &self.shape_mismatches {
            parts.push(format!(
                "{} has shape {:?} in the checkpoint but {:?} in the model",
                m.name, m.checkpoint, m.model
            ));
        }
        for m in &self.dtype_mismatches {
            parts.push(format!(
                "{} holds {} values in the checkpoint where the model expects floating-point \
                 weights (refusing to cast them)",
                m.name,
                m.checkpoint.as_str()
            ));
        }
        if parts.is_empty() {
            write!(f, "{} keys loaded", self.loaded.len())
        } else {
            write!(f, "{}", parts.join("; "))
        }
    }
}

/// Matches model keys (with shapes) against a state dict. A checkpoint tensor that holds integers
/// or booleans under a key other than [`INTEGER_KEYS`] is a dtype mismatch: the model's weights
/// are floating point, and casting would hide a broken or foreign file.
pub fn match_keys<'a>(
    model: impl IntoIterator<Item = (&'a str, &'a [usize])>,
    state: &StateDict,
) -> LoadReport {
    let mut report = LoadReport::default();
    let mut seen = std::collections::BTreeSet::new();
    for (name, shape) in model {
        seen.insert(name);
        match state.get(name) {
            None => report.missing.push(name.to_string()),
            Some(t) if t.dims() != shape => report.shape_mismatches.push(ShapeMismatch {
                name: name.to_string(),
                model: shape.to_vec(),
                checkpoint: t.dims().to_vec(),
            }),
            Some(t) if !t.dtype().is_float() && !is_integer_key(name) => {
                report.dtype_mismatches.push(DtypeMismatch {
                    name: name.to_string(),
                    checkpoint: t.dtype(),
                })
            }
            Some(_) => report.loaded.push(name.to_string()),
        }
    }
    report.unexpected = state
        .keys()
        .filter(|k| !seen.contains(k))
        .map(str::to_string)
        .collect();
    report
}

/// A PyTorch archive that `mmcl-pth` could not read, as this crate's error (same message).
impl From<mmcl_pth::Error> for Error {
    fn from(e: mmcl_pth::Error) -> Self {
        let path = e.path;
        match *e.reason {
            mmcl_pth::ArchiveError::Io(source) => Error::io(path, source),
            reason => Error::BadCheckpoint {
                path,
                reason: reason.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state dict of `entries` (the tests build small ones by hand).
    fn state_dict<const N: usize>(entries: [(&str, Tensor); N]) -> StateDict {
        entries
            .into_iter()
            .map(|(key, t)| (key.to_string(), t))
            .collect()
    }

    #[test]
    fn the_same_export_is_the_same_bytes() -> Result<()> {
        let dev = Device::Cpu;
        let state = state_dict([
            ("w", Tensor::ones((2, 3), DType::F32, &dev)?),
            ("b", Tensor::zeros(3, DType::F32, &dev)?),
        ]);
        let entries: Vec<(String, String)> = (0..16)
            .map(|i| (format!("key{i}"), format!("value \"{i}\"")))
            .collect();
        let dir = tempfile::tempdir().map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let mut files = Vec::new();
        for (run, order) in [entries.clone(), entries.iter().rev().cloned().collect()]
            .into_iter()
            .enumerate()
        {
            // Each map hashes with its own random keys, as separate runs do.
            let metadata: HashMap<String, String> = order.into_iter().collect();
            let path = dir.path().join(format!("{run}.safetensors"));
            state.write_safetensors(&path, Some(metadata))?;
            files.push(std::fs::read(&path).map_err(|e| Error::InvalidArgument(e.to_string()))?);
            let read = read_safetensors_metadata(&path)?;
            assert_eq!(read.len(), 16);
            assert_eq!(read["key3"], "value \"3\"");
        }
        assert!(files[0] == files[1], "two writes of one export differ");
        let loaded = safetensors::SafeTensors::deserialize(&files[0])
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        assert_eq!(
            loaded.tensor("w").map(|t| t.shape().to_vec()).ok(),
            Some(vec![2, 3])
        );
        Ok(())
    }

    #[test]
    fn report_names_every_difference() -> Result<()> {
        let dev = Device::Cpu;
        let state = state_dict([
            ("a", Tensor::zeros((2, 3), DType::F32, &dev)?),
            ("b", Tensor::zeros(4, DType::F32, &dev)?),
            ("extra", Tensor::zeros(1, DType::F32, &dev)?),
        ]);
        let report = match_keys(
            [
                ("a", &[2usize, 3][..]),
                ("b", &[5usize][..]),
                ("head.weight", &[1usize][..]),
            ],
            &state,
        );
        assert_eq!(report.loaded, vec!["a"]);
        assert_eq!(report.missing, vec!["head.weight"]);
        assert_eq!(report.unexpected, vec!["extra"]);
        assert_eq!(report.shape_mismatches.len(), 1);
        let text = report.to_string();
        assert!(text.contains("head.weight") && text.contains("extra") && text.contains("b has"));
        let options = LoadOptions::strict()
            .allow_missing(["head.*"])
            .allow_unexpected(["extra"]);
        let rest = report
            .check(&options)
            .expect_err("shape mismatch stays an error");
        assert!(rest.missing.is_empty() && rest.unexpected.is_empty());
        Ok(())
    }

    #[test]
    fn safetensors_round_trip_and_bad_files() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("mmcl-nn-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let dev = Device::Cpu;
        let t = Tensor::arange(0f32, 6.0, &dev)?.reshape((2, 3))?;
        let state = state_dict([("model.w", t.clone())]);
        let path = dir.join("x.safetensors");
        state.write_safetensors(&path, None)?;
        let back = StateDict::read(&path)?.strip_prefix("model.");
        let w = back.get("w").ok_or(Error::InvalidArgument("no w".into()))?;
        assert_eq!(w.to_vec2::<f32>()?, t.to_vec2::<f32>()?);

        let empty = dir.join("empty.pth");
        std::fs::write(&empty, b"").map_err(|e| Error::io(&empty, e))?;
        let err = StateDict::read(&empty).expect_err("empty file");
        assert!(err.to_string().contains("empty.pth") && err.to_string().contains("empty"));

        let junk = dir.join("junk.bin");
        std::fs::write(&junk, b"hello world, not a checkpoint").map_err(|e| Error::io(&junk, e))?;
        let err = StateDict::read(&junk).expect_err("junk file");
        assert!(err.to_string().contains("junk.bin"));

        let truncated = dir.join("trunc.safetensors");
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        std::fs::write(&truncated, &bytes[..bytes.len() - 5])
            .map_err(|e| Error::io(&truncated, e))?;
        let err = StateDict::read(&truncated).expect_err("truncated file");
        assert!(err.to_string().contains("trunc.safetensors"));
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}

//! Reading PyTorch `torch.save` zip archives (`.pth`, `.pt`, `.ckpt`, `.bin`).
//!
//! The archive holds `<name>/data.pkl` (the pickled object) and one entry `<name>/data/<key>`
//! per storage. We run the pickle with our own machine ([`pickle`]), which turns
//! `_rebuild_tensor_v2` calls into strided views of storages and everything else into plain or
//! opaque values, then collect the tensors reachable through dictionaries with string keys,
//! joining nested keys with `.`: a Lightning checkpoint gives `state_dict.encoder_ecg.…`, a
//! released MAE checkpoint `model.…`. Optimizer states (integer keys, lists), hyper-parameter
//! objects and other values are skipped without reading their storages.
//!
//! Every size the file states is checked before memory is taken for it:
//! - every entry is read through [`read_entry`], which refuses an entry whose declared size
//!   exceeds what its compressed bytes can inflate to or what the pickle says it holds, and
//!   stops reading at that limit, so a zip bomb costs at most its declared storage;
//! - tensor shapes, strides and offsets are combined with checked arithmetic and must stay inside
//!   the storage bytes actually read ([`view_bytes`]);
//! - the walk over nested dictionaries is bounded in entries and key bytes (memo references can
//!   share one dictionary so that a small file nests it exponentially), and the tensors built
//!   may repeat storage bytes only a few times over ([`VIEW_REPEAT_FACTOR`]).

mod pickle;

use std::collections::HashMap;
use std::fmt;
use std::io::{Cursor, Read};
use std::rc::Rc;

use candle_core::{DType, Device, Tensor};

use pickle::{PickleError, StorageDType, TensorRef, Value};

/// Largest `data.pkl` read: real ones are kilobytes to a few megabytes even for models with
/// thousands of tensors.
const MAX_PICKLE_BYTES: u64 = 64 << 20;

/// Largest `byteorder` entry (it holds `little` or `big`).
const MAX_BYTEORDER_BYTES: u64 = 16;

/// Most bytes one compressed byte can inflate to: deflate's limit is about 1032:1, so no genuine
/// deflated entry can exceed its compressed size times this. (`torch.save` stores entries
/// uncompressed; a stored entry holds exactly its compressed size.)
const MAX_INFLATE_RATIO: u64 = 1032;

/// Most dictionary entries visited when collecting tensors (shared dictionaries nested in each
/// other would otherwise expand to astronomically many key paths).
const MAX_FLATTENED_ENTRIES: usize = 1_000_000;

/// Most bytes of key paths built while collecting tensors (long keys nested deep multiply too).
const MAX_KEY_PATH_BYTES: usize = 128 << 20;

/// Depth beyond which nested dictionaries are not followed (guards against cyclic pickles).
const MAX_DEPTH: usize = 64;

/// The tensors built from an archive may repeat storage bytes (tied weights, slices and
/// transposes of one buffer) up to this many times the bytes of the storages read, plus
/// [`VIEW_SLACK_BYTES`]; a pickle naming one storage over and over could otherwise multiply
/// memory without bound.
const VIEW_REPEAT_FACTOR: usize = 4;

/// See [`VIEW_REPEAT_FACTOR`].
const VIEW_SLACK_BYTES: usize = 64 << 20;

/// Why a PyTorch archive could not be read (the caller adds the file name).
#[derive(Debug)]
pub(crate) enum PthError {
    /// Not a zip archive, or a damaged one.
    Zip(zip::result::ZipError),
    /// No `data.pkl` entry.
    NoPickle,
    /// An entry could not be read.
    Entry(String, std::io::Error),
    /// An entry declares more bytes than it may hold.
    EntryTooLarge {
        entry: String,
        declared: u64,
        limit: u64,
        bound: &'static str,
    },
    /// An entry inflates past the bytes it may hold (a zip bomb, or a lying header).
    EntryInflates {
        entry: String,
        limit: u64,
        bound: &'static str,
    },
    /// A storage's declared size in bytes does not fit in a machine word.
    StorageSize { key: String, numel: usize },
    /// The pickle could not be executed, or was refused.
    Pickle(PickleError),
    /// The pickle is not a dictionary of tensors.
    NotADict,
    /// No tensor is reachable through string-keyed dictionaries.
    NoTensors,
    /// Collecting tensors visits too many dictionary entries or builds too many key bytes.
    TooManyEntries,
    /// A tensor refers to a storage entry that is absent.
    MissingStorage(String, String),
    /// A tensor's element count or byte size overflows.
    ShapeOverflow { tensor: String, size: Vec<usize> },
    /// A tensor's view reaches beyond its storage.
    StorageTooSmall {
        tensor: String,
        needed: usize,
        have: usize,
    },
    /// The tensors built would repeat storage bytes far more than real checkpoints do.
    TooMuchRepetition { tensor: String, limit: usize },
    /// The archive declares a byte order we do not know.
    ByteOrder(String),
    /// Building a tensor failed.
    Candle(String, candle_core::Error),
}

impl fmt::Display for PthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PthError::Zip(e) => write!(
                f,
                "not a readable PyTorch zip archive ({e}); is it truncated?"
            ),
            PthError::NoPickle => {
                write!(f, "the zip archive has no data.pkl: not a torch.save file")
            }
            PthError::Entry(name, e) => write!(f, "cannot read archive entry {name}: {e}"),
            PthError::EntryTooLarge {
                entry,
                declared,
                limit,
                bound,
            } => write!(
                f,
                "archive entry {entry} declares {declared} bytes, more than {bound} \
                 ({limit} bytes)"
            ),
            PthError::EntryInflates {
                entry,
                limit,
                bound,
            } => write!(
                f,
                "archive entry {entry} inflates past {limit} bytes, {bound} (a zip bomb?)"
            ),
            PthError::StorageSize { key, numel } => write!(
                f,
                "storage data/{key} declares {numel} elements, more bytes than any file holds"
            ),
            PthError::Pickle(e) => write!(f, "{e}"),
            PthError::NotADict => write!(f, "the saved object is not a dictionary of tensors"),
            PthError::NoTensors => write!(f, "the archive holds no tensors under string keys"),
            PthError::TooManyEntries => write!(
                f,
                "the saved dictionaries expand to more than {MAX_FLATTENED_ENTRIES} entries or \
                 {MAX_KEY_PATH_BYTES} bytes of key names (one dictionary shared and nested over \
                 and over?)"
            ),
            PthError::MissingStorage(tensor, key) => {
                write!(
                    f,
                    "tensor {tensor} refers to storage data/{key}, which is missing (truncated archive?)"
                )
            }
            PthError::ShapeOverflow { tensor, size } => write!(
                f,
                "tensor {tensor} has shape {size:?}, whose size in bytes overflows"
            ),
            PthError::StorageTooSmall {
                tensor,
                needed,
                have,
            } => write!(
                f,
                "tensor {tensor} needs {needed} bytes of its storage but the archive holds {have} (truncated?)"
            ),
            PthError::TooMuchRepetition { tensor, limit } => write!(
                f,
                "tensor {tensor} would bring the tensors built from the archive past {limit} \
                 bytes: their views repeat the storages' bytes far more than checkpoints do"
            ),
            PthError::ByteOrder(order) => write!(f, "unknown byte order {order:?}"),
            PthError::Candle(tensor, e) => write!(f, "cannot build tensor {tensor}: {e}"),
        }
    }
}

type Archive<'a> = zip::ZipArchive<Cursor<&'a [u8]>>;

/// Reads the entry `name` whole, if it holds at most `limit` bytes (`bound` says where the limit
/// comes from). The declared size must also fit what the compressed bytes can inflate to; the
/// read stops past `limit` whatever the header says, so no size from the file is trusted before
/// it is checked.
fn read_entry(
    archive: &mut Archive<'_>,
    name: &str,
    limit: u64,
    bound: &'static str,
) -> Result<Vec<u8>, PthError> {
    let entry = archive.by_name(name).map_err(PthError::Zip)?;
    let (declared, compressed) = (entry.size(), entry.compressed_size());
    let holdable = match entry.compression() {
        zip::CompressionMethod::Stored => compressed,
        _ => compressed.saturating_mul(MAX_INFLATE_RATIO),
    };
    let too_large = |limit, bound| PthError::EntryTooLarge {
        entry: name.to_string(),
        declared,
        limit,
        bound,
    };
    if declared > limit {
        return Err(too_large(limit, bound));
    }
    if declared > holdable {
        return Err(too_large(holdable, "its compressed bytes can hold"));
    }
    // `declared` is now bounded by `limit`, which the caller derived from a checked size.
    let mut out = Vec::with_capacity(usize::try_from(declared).unwrap_or(0));
    let cap = limit.min(holdable);
    entry
        .take(cap.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| PthError::Entry(name.to_string(), e))?;
    if out.len() as u64 > cap {
        return Err(PthError::EntryInflates {
            entry: name.to_string(),
            limit: cap,
            bound: if cap == limit {
                bound
            } else {
                "what its compressed bytes can hold"
            },
        });
    }
    Ok(out)
}

/// Reads the tensors of a PyTorch zip archive held in memory, on the CPU, in their stored dtype
/// (`int8` is widened to `i16` and `bool` stored as `u8`, which candle has).
pub(crate) fn read_torch_zip(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, PthError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(PthError::Zip)?;
    let names: Vec<String> = archive
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .collect();
    let pickle_name = names
        .iter()
        .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(|n| n.len())
        .ok_or(PthError::NoPickle)?
        .clone();
    let prefix = pickle_name.trim_end_matches("data.pkl").to_string();
    let byteorder = format!("{prefix}byteorder");
    let big_endian = match names.contains(&byteorder) {
        true => {
            let order = read_entry(
                &mut archive,
                &byteorder,
                MAX_BYTEORDER_BYTES,
                "a byte-order entry holds",
            )?;
            match String::from_utf8_lossy(&order).trim() {
                "little" => false,
                "big" => true,
                other => return Err(PthError::ByteOrder(other.to_string())),
            }
        }
        false => false,
    };
    let pickled = read_entry(
        &mut archive,
        &pickle_name,
        MAX_PICKLE_BYTES,
        "the limit for data.pkl",
    )?;
    let root = pickle::load(&pickled).map_err(PthError::Pickle)?;
    if !matches!(root, Value::Dict(_)) {
        return Err(PthError::NotADict);
    }
    let mut found = Vec::new();
    collect_tensors(&root, "", 0, &mut Walk::default(), &mut found)?;
    if found.is_empty() {
        return Err(PthError::NoTensors);
    }
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut storage_bytes = 0usize;
    let mut built_bytes = 0usize;
    let mut out = Vec::with_capacity(found.len());
    for (name, tref) in found {
        let key = &tref.storage.key;
        if !storages.contains_key(key) {
            let entry = format!("{prefix}data/{key}");
            if !names.contains(&entry) {
                return Err(PthError::MissingStorage(name, key.clone()));
            }
            // The pickle declares each storage's element count: its entry may hold no more.
            let element = tref.storage.dtype.map_or(1, StorageDType::size);
            let declared = tref
                .storage
                .numel
                .checked_mul(element)
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| PthError::StorageSize {
                    key: key.clone(),
                    numel: tref.storage.numel,
                })?;
            let data = read_entry(
                &mut archive,
                &entry,
                declared,
                "the size the pickle declares for this storage",
            )?;
            storage_bytes = storage_bytes.saturating_add(data.len());
            storages.insert(key.clone(), data);
        }
        let data = storages.get(key).map(Vec::as_slice).unwrap_or_default();
        let size = view_bytes(&name, data.len(), &tref)?;
        let limit = storage_bytes
            .saturating_mul(VIEW_REPEAT_FACTOR)
            .saturating_add(VIEW_SLACK_BYTES);
        built_bytes = built_bytes.saturating_add(size);
        if built_bytes > limit {
            return Err(PthError::TooMuchRepetition {
                tensor: name,
                limit,
            });
        }
        let tensor = build_tensor(&name, data, &tref, size, big_endian)?;
        out.push((name, tensor));
    }
    Ok(out)
}

/// What collecting tensors has spent of its budget.
#[derive(Default)]
struct Walk {
    entries: usize,
    key_bytes: usize,
}

/// Tensors reachable from `value` through string-keyed dictionaries, with `.`-joined names.
fn collect_tensors(
    value: &Value,
    prefix: &str,
    depth: usize,
    walk: &mut Walk,
    out: &mut Vec<(String, Rc<TensorRef>)>,
) -> Result<(), PthError> {
    let Value::Dict(dict) = value else {
        return Ok(());
    };
    if depth > MAX_DEPTH {
        return Ok(());
    }
    for (k, v) in dict.borrow().iter() {
        walk.entries += 1;
        if walk.entries > MAX_FLATTENED_ENTRIES {
            return Err(PthError::TooManyEntries);
        }
        let Value::Str(k) = k else { continue };
        if !matches!(v, Value::Tensor(_) | Value::Dict(_)) {
            continue;
        }
        walk.key_bytes = walk.key_bytes.saturating_add(prefix.len() + 1 + k.len());
        if walk.key_bytes > MAX_KEY_PATH_BYTES {
            return Err(PthError::TooManyEntries);
        }
        let name = if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Tensor(t) => out.push((name, t.clone())),
            _ => collect_tensors(v, &name, depth + 1, walk, out)?,
        }
    }
    Ok(())
}

/// The bytes a view copies out of its storage, checked: the element count and byte size must
/// not overflow, and the furthest element the view touches must lie inside the storage's
/// `have` bytes.
fn view_bytes(name: &str, have: usize, t: &TensorRef) -> Result<usize, PthError> {
    let es = t.dtype.size();
    let overflow = || PthError::ShapeOverflow {
        tensor: name.to_string(),
        size: t.size.clone(),
    };
    let count = t
        .size
        .iter()
        .try_fold(1usize, |acc, &n| acc.checked_mul(n))
        .ok_or_else(overflow)?;
    let bytes = count.checked_mul(es).ok_or_else(overflow)?;
    if count == 0 {
        return Ok(0);
    }
    let last = t
        .size
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |acc, (&n, &s)| {
            acc.checked_add((n - 1).checked_mul(s)?)
        });
    let needed = last.and_then(|l| l.checked_add(1)?.checked_mul(es));
    match needed {
        Some(needed) if needed <= have => Ok(bytes),
        needed => Err(PthError::StorageTooSmall {
            tensor: name.to_string(),
            needed: needed.unwrap_or(usize::MAX),
            have,
        }),
    }
}

/// Copies the elements of a strided view out of its storage bytes into a tensor; `size` is the
/// view's byte size from [`view_bytes`], which checked it against the storage.
fn build_tensor(
    name: &str,
    storage: &[u8],
    t: &TensorRef,
    size: usize,
    big_endian: bool,
) -> Result<Tensor, PthError> {
    let es = t.dtype.size();
    let outside = || PthError::StorageTooSmall {
        tensor: name.to_string(),
        needed: size,
        have: storage.len(),
    };
    let mut bytes = Vec::with_capacity(size);
    if size > 0 {
        if is_row_major(&t.size, &t.stride) {
            let start = t.offset.checked_mul(es).ok_or_else(outside)?;
            let end = start.checked_add(size).ok_or_else(outside)?;
            bytes.extend_from_slice(storage.get(start..end).ok_or_else(outside)?);
        } else {
            let count = size / es;
            let mut index = vec![0usize; t.size.len()];
            for _ in 0..count {
                // Below the furthest element, which `view_bytes` checked without overflow.
                let at: usize = t.offset
                    + index
                        .iter()
                        .zip(&t.stride)
                        .map(|(i, s)| i * s)
                        .sum::<usize>();
                let element = storage.get(at * es..(at + 1) * es).ok_or_else(outside)?;
                bytes.extend_from_slice(element);
                // Advance the multi-index, last dimension fastest.
                for d in (0..index.len()).rev() {
                    index[d] += 1;
                    if index[d] < t.size[d] {
                        break;
                    }
                    index[d] = 0;
                }
            }
        }
    }
    if big_endian && es > 1 {
        for chunk in bytes.chunks_exact_mut(es) {
            chunk.reverse();
        }
    }
    let (dtype, bytes) = match t.dtype {
        StorageDType::F64 => (DType::F64, bytes),
        StorageDType::F32 => (DType::F32, bytes),
        StorageDType::F16 => (DType::F16, bytes),
        StorageDType::BF16 => (DType::BF16, bytes),
        StorageDType::I64 => (DType::I64, bytes),
        StorageDType::I32 => (DType::I32, bytes),
        StorageDType::I16 => (DType::I16, bytes),
        StorageDType::I8 => (
            DType::I16,
            bytes
                .iter()
                .flat_map(|&b| (b as i8 as i16).to_le_bytes())
                .collect(),
        ),
        StorageDType::U8 | StorageDType::Bool => (DType::U8, bytes),
    };
    Tensor::from_raw_buffer(&bytes, dtype, &t.size, &Device::Cpu)
        .map_err(|e| PthError::Candle(name.to_string(), e))
}

/// Whether `stride` is the row-major (contiguous) stride of `size` (size-1 dims ignored).
fn is_row_major(size: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1usize;
    for (&n, &s) in size.iter().zip(stride).rev() {
        if n != 1 && s != expected {
            return false;
        }
        expected = expected.saturating_mul(n);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_major_detection() {
        assert!(is_row_major(&[2, 3], &[3, 1]));
        assert!(is_row_major(&[2, 1, 3], &[3, 7, 1]));
        assert!(!is_row_major(&[3, 2], &[1, 3]));
        assert!(is_row_major(&[], &[]));
    }
}

//! Reading PyTorch `torch.save` zip archives (`.pth`, `.pt`, `.ckpt`, `.bin`).
//!
//! The archive holds `<name>/data.pkl` (the pickled object) and one entry `<name>/data/<key>`
//! per storage. We run the pickle with our own machine ([`pickle`]), which turns
//! `_rebuild_tensor_v2` calls into strided views of storages and everything else into plain or
//! opaque values, then collect the tensors reachable through dictionaries with string keys,
//! joining nested keys with `.`: a Lightning checkpoint gives `state_dict.encoder_ecg.…`, a
//! released MAE checkpoint `model.…`. Optimizer states (integer keys, lists), hyper-parameter
//! objects and other values are skipped without reading their storages.

mod pickle;

use std::collections::HashMap;
use std::fmt;
use std::io::{Cursor, Read};
use std::rc::Rc;

use candle_core::{DType, Device, Tensor};

use pickle::{PickleError, StorageDType, TensorRef, Value};

/// Why a PyTorch archive could not be read (the caller adds the file name).
#[derive(Debug)]
pub(crate) enum PthError {
    /// Not a zip archive, or a damaged one.
    Zip(zip::result::ZipError),
    /// No `data.pkl` entry.
    NoPickle,
    /// An entry could not be read.
    Entry(String, std::io::Error),
    /// The pickle could not be executed.
    Pickle(PickleError),
    /// The pickle is not a dictionary of tensors.
    NotADict,
    /// No tensor is reachable through string-keyed dictionaries.
    NoTensors,
    /// A tensor refers to a storage entry that is absent.
    MissingStorage(String, String),
    /// A tensor's view reaches beyond its storage.
    StorageTooSmall {
        tensor: String,
        needed: usize,
        have: usize,
    },
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
            PthError::Pickle(e) => write!(f, "{e}"),
            PthError::NotADict => write!(f, "the saved object is not a dictionary of tensors"),
            PthError::NoTensors => write!(f, "the archive holds no tensors under string keys"),
            PthError::MissingStorage(tensor, key) => {
                write!(
                    f,
                    "tensor {tensor} refers to storage data/{key}, which is missing (truncated archive?)"
                )
            }
            PthError::StorageTooSmall {
                tensor,
                needed,
                have,
            } => write!(
                f,
                "tensor {tensor} needs {needed} bytes of its storage but the archive holds {have} (truncated?)"
            ),
            PthError::ByteOrder(order) => write!(f, "unknown byte order {order:?}"),
            PthError::Candle(tensor, e) => write!(f, "cannot build tensor {tensor}: {e}"),
        }
    }
}

/// Depth beyond which nested dictionaries are not followed (guards against cyclic pickles).
const MAX_DEPTH: usize = 64;

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
    let read_entry = |archive: &mut zip::ZipArchive<Cursor<&[u8]>>, name: &str| {
        let mut entry = archive.by_name(name).map_err(PthError::Zip)?;
        let mut out = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut out)
            .map_err(|e| PthError::Entry(name.to_string(), e))?;
        Ok::<_, PthError>(out)
    };
    let big_endian = match names.iter().any(|n| *n == format!("{prefix}byteorder")) {
        true => {
            let order = read_entry(&mut archive, &format!("{prefix}byteorder"))?;
            match String::from_utf8_lossy(&order).trim() {
                "little" => false,
                "big" => true,
                other => return Err(PthError::ByteOrder(other.to_string())),
            }
        }
        false => false,
    };
    let pickled = read_entry(&mut archive, &pickle_name)?;
    let root = pickle::load(&pickled).map_err(PthError::Pickle)?;
    if !matches!(root, Value::Dict(_)) {
        return Err(PthError::NotADict);
    }
    let mut found = Vec::new();
    collect_tensors(&root, "", 0, &mut found);
    if found.is_empty() {
        return Err(PthError::NoTensors);
    }
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(found.len());
    for (name, tref) in found {
        let key = &tref.storage.key;
        if !storages.contains_key(key) {
            let entry = format!("{prefix}data/{key}");
            if !names.contains(&entry) {
                return Err(PthError::MissingStorage(name, key.clone()));
            }
            storages.insert(key.clone(), read_entry(&mut archive, &entry)?);
        }
        let data = storages.get(key).map(Vec::as_slice).unwrap_or_default();
        let tensor = build_tensor(&name, data, &tref, big_endian)?;
        out.push((name, tensor));
    }
    Ok(out)
}

/// Tensors reachable from `value` through string-keyed dictionaries, with `.`-joined names.
fn collect_tensors(
    value: &Value,
    prefix: &str,
    depth: usize,
    out: &mut Vec<(String, Rc<TensorRef>)>,
) {
    let Value::Dict(dict) = value else { return };
    if depth > MAX_DEPTH {
        return;
    }
    for (k, v) in dict.borrow().iter() {
        let Value::Str(k) = k else { continue };
        let name = if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Tensor(t) => out.push((name, t.clone())),
            Value::Dict(_) => collect_tensors(v, &name, depth + 1, out),
            _ => {}
        }
    }
}

/// Copies the elements of a strided view out of its storage bytes into a tensor.
fn build_tensor(
    name: &str,
    storage: &[u8],
    t: &TensorRef,
    big_endian: bool,
) -> Result<Tensor, PthError> {
    let es = t.dtype.size();
    let count: usize = t.size.iter().product();
    let mut bytes = Vec::with_capacity(count * es);
    if count > 0 {
        // The furthest element the view touches must lie inside the storage.
        let last = t
            .size
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |acc, (&n, &s)| {
                acc.checked_add((n - 1).checked_mul(s)?)
            });
        let needed = last.and_then(|l| l.checked_add(1)?.checked_mul(es));
        match needed {
            Some(needed) if needed <= storage.len() => {}
            needed => {
                return Err(PthError::StorageTooSmall {
                    tensor: name.to_string(),
                    needed: needed.unwrap_or(usize::MAX),
                    have: storage.len(),
                });
            }
        }
        if is_row_major(&t.size, &t.stride) {
            bytes.extend_from_slice(&storage[t.offset * es..(t.offset + count) * es]);
        } else {
            let mut index = vec![0usize; t.size.len()];
            for _ in 0..count {
                let at: usize = t.offset
                    + index
                        .iter()
                        .zip(&t.stride)
                        .map(|(i, s)| i * s)
                        .sum::<usize>();
                bytes.extend_from_slice(&storage[at * es..(at + 1) * es]);
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

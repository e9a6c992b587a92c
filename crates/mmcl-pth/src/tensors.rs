//! The tensors of an unpickled archive: found through string-keyed dictionaries, then copied out
//! of their storages as strided views.
//!
//! Nested keys are joined with `.`: a Lightning checkpoint gives `state_dict.encoder_ecg.…`, a
//! released MAE checkpoint `model.…`. Optimizer states (integer keys, lists), hyper-parameter
//! objects and other values are skipped without reading their storages.

use std::rc::Rc;

use candle_core::{DType, Device, Tensor};

use crate::error::ArchiveError;
use crate::pickle::{StorageDType, TensorRef, Value};

/// Most dictionary entries visited when collecting tensors (shared dictionaries nested in each
/// other would otherwise expand to astronomically many key paths).
pub(crate) const MAX_FLATTENED_ENTRIES: usize = 1_000_000;

/// Most bytes of key paths built while collecting tensors (long keys nested deep multiply too).
pub(crate) const MAX_KEY_PATH_BYTES: usize = 128 << 20;

/// Depth beyond which nested dictionaries are not followed (guards against cyclic pickles).
const MAX_DEPTH: usize = 64;

/// What collecting tensors has spent of its budget.
#[derive(Default)]
pub(crate) struct Walk {
    entries: usize,
    key_bytes: usize,
}

/// Tensors reachable from `value` through string-keyed dictionaries, with `.`-joined names.
pub(crate) fn collect_tensors(
    value: &Value,
    prefix: &str,
    depth: usize,
    walk: &mut Walk,
    out: &mut Vec<(String, Rc<TensorRef>)>,
) -> Result<(), ArchiveError> {
    let Value::Dict(dict) = value else {
        return Ok(());
    };
    if depth > MAX_DEPTH {
        return Ok(());
    }
    for (k, v) in dict.borrow().iter() {
        walk.entries += 1;
        if walk.entries > MAX_FLATTENED_ENTRIES {
            return Err(ArchiveError::TooManyEntries);
        }
        let Value::Str(k) = k else { continue };
        if !matches!(v, Value::Tensor(_) | Value::Dict(_)) {
            continue;
        }
        walk.key_bytes = walk.key_bytes.saturating_add(prefix.len() + 1 + k.len());
        if walk.key_bytes > MAX_KEY_PATH_BYTES {
            return Err(ArchiveError::TooManyEntries);
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
pub(crate) fn view_bytes(name: &str, have: usize, t: &TensorRef) -> Result<usize, ArchiveError> {
    let es = t.dtype.size();
    let overflow = || ArchiveError::ShapeOverflow {
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
        needed => Err(ArchiveError::StorageTooSmall {
            tensor: name.to_string(),
            needed: needed.unwrap_or(usize::MAX),
            have,
        }),
    }
}

/// Copies the elements of a strided view out of its storage bytes into a tensor; `size` is the
/// view's byte size from [`view_bytes`], which checked it against the storage.
pub(crate) fn build_tensor(
    name: &str,
    storage: &[u8],
    t: &TensorRef,
    size: usize,
    big_endian: bool,
) -> Result<Tensor, ArchiveError> {
    let es = t.dtype.size();
    let outside = || ArchiveError::StorageTooSmall {
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
        .map_err(|e| ArchiveError::Candle(name.to_string(), e))
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

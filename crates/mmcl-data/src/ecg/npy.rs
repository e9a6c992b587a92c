//! NumPy arrays of ECGs: `.npy` files holding `(12, T)` or `(N, 12, T)` (C or Fortran order;
//! float32/64 or integer), `.npz` archives of such arrays, and writing float32 `.npy` files.

use std::io::{Read, Write};
use std::path::Path;

use npyz::{DType, NpyFile, Order, TypeChar};

use super::{Ecg, NUM_LEADS, NamedEcg, file_stem, read_file};
use crate::{Error, Result};

/// A numeric array read from a `.npy`: its shape and its values in C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

/// Reads any numeric `.npy` array as f32, naming `path` in errors.
///
/// # Errors
/// Unreadable, empty or truncated files, non-numeric dtypes.
pub fn read_array(path: &Path) -> Result<Array> {
    let bytes = read_file(path)?;
    if bytes.is_empty() {
        return Err(Error::format(path, "the file is empty"));
    }
    parse_array(&bytes[..], path)
}

fn parse_array(reader: &[u8], path: &Path) -> Result<Array> {
    let bytes_len = reader.len() as u64;
    let npy = NpyFile::new(reader)
        .map_err(|e| Error::format(path, format!("not a NumPy .npy array: {e}")))?;
    npy_to_array(npy, path, "", bytes_len)
}

/// Reads the values of an opened array; `what` prefixes error messages (an npz member's name).
/// `available` bounds the data size, so that a hostile header cannot make us allocate more
/// than the file holds.
fn npy_to_array<R: Read>(
    npy: NpyFile<R>,
    path: &Path,
    what: &str,
    available: u64,
) -> Result<Array> {
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let order = npy.order();
    let DType::Plain(ts) = npy.dtype() else {
        return Err(Error::format(
            path,
            format!("{what}structured arrays are not supported"),
        ));
    };
    let claimed = (npy.len() as u128) * (ts.num_bytes().unwrap_or(1) as u128);
    if claimed > available as u128 {
        return Err(Error::format(
            path,
            format!("{what}truncated: shape {shape:?} needs {claimed} bytes, the file holds fewer"),
        ));
    }
    let truncated =
        |e: std::io::Error| Error::format(path, format!("{what}cannot read the data: {e}"));
    let data: Vec<f32> = match (ts.type_char(), ts.size_field()) {
        (TypeChar::Float, 4) => npy.into_vec::<f32>().map_err(truncated)?,
        (TypeChar::Float, 8) => npy
            .into_vec::<f64>()
            .map_err(truncated)?
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        (TypeChar::Int, 2) => npy
            .into_vec::<i16>()
            .map_err(truncated)?
            .into_iter()
            .map(f32::from)
            .collect(),
        (TypeChar::Int, 4) => npy
            .into_vec::<i32>()
            .map_err(truncated)?
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        (TypeChar::Int, 8) => npy
            .into_vec::<i64>()
            .map_err(truncated)?
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        _ => {
            return Err(Error::format(
                path,
                format!("{what}unsupported dtype {ts} (expected float or integer)"),
            ));
        }
    };
    let expected: usize = shape.iter().product();
    if data.len() != expected {
        return Err(Error::format(
            path,
            format!(
                "{what}truncated: shape {shape:?} needs {expected} values, the file holds {}",
                data.len()
            ),
        ));
    }
    let data = match order {
        Order::C => data,
        Order::Fortran => fortran_to_c(&data, &shape),
    };
    Ok(Array { shape, data })
}

/// Reorders column-major values into row-major ones.
fn fortran_to_c(data: &[f32], shape: &[usize]) -> Vec<f32> {
    let n = data.len();
    let mut out = vec![0.0; n];
    let mut index = vec![0usize; shape.len()];
    for value in out.iter_mut() {
        // `index` walks row-major; the Fortran offset is sum(index[k] * prod(shape[..k])).
        let mut offset = 0;
        let mut stride = 1;
        for (k, &d) in shape.iter().enumerate() {
            offset += index[k] * stride;
            stride *= d;
        }
        *value = data[offset];
        for k in (0..shape.len()).rev() {
            index[k] += 1;
            if index[k] < shape[k] {
                break;
            }
            index[k] = 0;
        }
    }
    out
}

/// Splits an array of shape `(12, T)` or `(N, 12, T)` into recordings named after `stem`
/// (`stem`, or `stem_0`, `stem_1`, …).
fn array_to_ecgs(array: Array, stem: &str, rate: f64, path: &Path) -> Result<Vec<NamedEcg>> {
    let (n, t) = match array.shape.as_slice() {
        [NUM_LEADS, t] => (None, *t),
        [n, NUM_LEADS, t] => (Some(*n), *t),
        other => {
            return Err(Error::format(
                path,
                format!("expected an array of shape (12, T) or (N, 12, T), got {other:?}"),
            ));
        }
    };
    if t == 0 {
        return Err(Error::format(path, "the array holds no samples"));
    }
    let per = NUM_LEADS * t;
    let wrap = |e: Error| Error::format(path, e.to_string());
    match n {
        None => Ok(vec![NamedEcg {
            id: stem.to_string(),
            ecg: Ecg::new(array.data, t, rate).map_err(wrap)?,
        }]),
        Some(n) => (0..n)
            .map(|i| {
                Ok(NamedEcg {
                    id: format!("{stem}_{i}"),
                    ecg: Ecg::new(array.data[i * per..(i + 1) * per].to_vec(), t, rate)
                        .map_err(wrap)?,
                })
            })
            .collect(),
    }
}

/// Reads a `.npy` of shape `(12, T)` (one recording named after the file) or `(N, 12, T)`
/// (recordings `stem_0` …), assuming `sample_rate` Hz.
///
/// # Errors
/// See [`read_array`]; a shape other than those two.
pub fn read_npy(path: &Path, sample_rate: f64) -> Result<Vec<NamedEcg>> {
    let array = read_array(path)?;
    array_to_ecgs(array, &file_stem(path), sample_rate, path)
}

/// Reads every array of a `.npz` archive (each `(12, T)` or `(N, 12, T)`); recordings are named
/// `stem_key` (and `stem_key_i`).
///
/// # Errors
/// Not a zip archive, or any array as in [`read_npy`].
pub fn read_npz(path: &Path, sample_rate: f64) -> Result<Vec<NamedEcg>> {
    let bytes = read_file(path)?;
    if bytes.is_empty() {
        return Err(Error::format(path, "the file is empty"));
    }
    let mut archive = npyz::npz::NpzArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| Error::format(path, format!("not a NumPy .npz archive: {e}")))?;
    let names: Vec<String> = archive.array_names().map(str::to_string).collect();
    let stem = file_stem(path);
    let mut out = Vec::new();
    for name in names {
        let member = npyz::npz::file_name_from_array_name(&name);
        let available = archive
            .zip_archive()
            .by_name(&member)
            .map(|f| f.size())
            .map_err(|e| Error::format(path, format!("array {name}: {e}")))?;
        let npy = archive
            .by_name(&name)
            .map_err(|e| Error::format(path, format!("array {name}: {e}")))?
            .ok_or_else(|| Error::format(path, format!("array {name} vanished")))?;
        let array = npy_to_array(npy, path, &format!("array {name}: "), available)?;
        out.extend(array_to_ecgs(
            array,
            &format!("{stem}_{name}"),
            sample_rate,
            path,
        )?);
    }
    if out.is_empty() {
        return Err(Error::format(path, "the archive holds no arrays"));
    }
    Ok(out)
}

/// The bytes of a float32 little-endian C-order `.npy` (format version 1.0).
pub fn npy_f32_bytes(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims = match shape {
        [d] => format!("({d},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    // Magic (6) + version (2) + header length (2) + header, padded so data starts on 64 bytes.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + 4 * data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes a float32 `.npy` atomically (a temporary sibling renamed into place).
///
/// # Errors
/// When the shape does not match the data, or the file cannot be written.
pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    if shape.iter().product::<usize>() != data.len() {
        return Err(Error::InvalidInput(format!(
            "shape {shape:?} does not hold {} values",
            data.len()
        )));
    }
    let bytes = npy_f32_bytes(shape, data);
    mmcl_nn::io::write_atomic(path, |tmp| {
        let mut f = std::fs::File::create(tmp).map_err(|source| mmcl_nn::Error::Io {
            path: tmp.to_path_buf(),
            source,
        })?;
        f.write_all(&bytes).map_err(|source| mmcl_nn::Error::Io {
            path: tmp.to_path_buf(),
            source,
        })
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_npy_reads_back() {
        let data: Vec<f32> = (0..24).map(|v| v as f32 * 0.5).collect();
        let bytes = npy_f32_bytes(&[12, 2], &data);
        assert_eq!((bytes.len() - data.len() * 4) % 64, 0);
        let array = parse_array(&bytes[..], Path::new("x.npy")).unwrap();
        assert_eq!(array.shape, vec![12, 2]);
        assert_eq!(array.data, data);
    }

    #[test]
    fn fortran_order_is_transposed() {
        // 2x3 array [[0,1,2],[3,4,5]] stored column-major.
        let f = [0.0, 3.0, 1.0, 4.0, 2.0, 5.0];
        assert_eq!(
            fortran_to_c(&f, &[2, 3]),
            vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        );
    }
}

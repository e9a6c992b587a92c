//! NumPy arrays of ECGs: `.npy` files holding `(12, T)` or `(N, 12, T)` (C or Fortran order;
//! float32/64 or integer) and `.npz` archives of such arrays, read through the checked reader
//! of [`mmcl_core::npy`] (which also writes float32 `.npy` files).

use std::io::{BufReader, Read};
use std::path::Path;

use mmcl_core::files::open_regular;
use mmcl_core::npy::{Array, check_npy, npy_to_array, read_array};

use super::{Ecg, NUM_LEADS, NamedEcg, file_stem};
use crate::{Error, Result};

/// The largest decompressed size accepted for one `.npz` member, in bytes (2 GiB).
///
/// Members are read whole into memory, so the bound is what one array may cost; a larger
/// array belongs in a `.npy`, which the commands stream. Checked against the size the archive
/// declares before anything is read, and against the bytes that actually inflate.
pub const MAX_NPZ_MEMBER_LEN: u64 = 2 << 30;

/// Splits an array of shape `(12, T)` or `(N, 12, T)` into recordings named after `stem`
/// (`stem`, or `stem_0`, `stem_1`, …); `what` prefixes messages (an npz member's name).
fn array_to_ecgs(
    array: Array,
    stem: &str,
    rate: f64,
    path: &Path,
    what: &str,
) -> Result<Vec<NamedEcg>> {
    let bad = |reason: String| Error::format(path, format!("{what}{reason}"));
    let (n, t) = match array.shape.as_slice() {
        [NUM_LEADS, t] => (None, *t),
        [n, NUM_LEADS, t] => (Some(*n), *t),
        other => {
            return Err(bad(format!(
                "expected an array of shape (12, T) or (N, 12, T), got {other:?}"
            )));
        }
    };
    if n == Some(0) {
        return Err(bad(format!(
            "the array of shape {:?} holds no recordings (N = 0)",
            array.shape
        )));
    }
    if t == 0 {
        return Err(bad(format!(
            "the array of shape {:?} holds no samples (T = 0)",
            array.shape
        )));
    }
    // Cannot overflow: the header check bounded the product of the shape.
    let per = NUM_LEADS * t;
    let wrap = |e: Error| match e {
        Error::InvalidInput(reason) => bad(reason),
        other => other,
    };
    match n {
        None => Ok(vec![NamedEcg {
            id: stem.to_string(),
            ecg: Ecg::new(array.data, t, rate).map_err(wrap)?,
        }]),
        Some(n) => array
            .data
            .chunks_exact(per)
            .take(n)
            .enumerate()
            .map(|(i, values)| {
                Ok(NamedEcg {
                    id: format!("{stem}_{i}"),
                    ecg: Ecg::new(values.to_vec(), t, rate).map_err(wrap)?,
                })
            })
            .collect(),
    }
}

/// Reads a `.npy` of shape `(12, T)` (one recording named after the file) or `(N, 12, T)`
/// (recordings `stem_0` …), assuming `sample_rate` Hz.
///
/// # Errors
/// See [`read_array`]; a shape other than those two, or one holding no recordings or samples.
pub fn read_npy(path: &Path, sample_rate: f64) -> Result<Vec<NamedEcg>> {
    let array = read_array(path)?;
    array_to_ecgs(array, &file_stem(path), sample_rate, path, "")
}

/// Reads every array of a `.npz` archive (each `(12, T)` or `(N, 12, T)`); recordings are named
/// `stem_key` (and `stem_key_i`).
///
/// Each member is read through [`check_npy`] with its declared size, which must not exceed
/// [`MAX_NPZ_MEMBER_LEN`] and must equal what its array needs; reading stops one byte past
/// that, so a member that inflates further (a zip bomb) is refused without being inflated.
///
/// # Errors
/// Not a zip archive, an archive without arrays, or any array as in [`read_npy`].
pub fn read_npz(path: &Path, sample_rate: f64) -> Result<Vec<NamedEcg>> {
    let (file, size) = open_regular(path)?;
    if size == 0 {
        return Err(Error::format(path, "the file is empty"));
    }
    let mut zip = npyz::zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| Error::format(path, format!("not a NumPy .npz archive: {e}")))?;
    let stem = file_stem(path);
    let mut out = Vec::new();
    // Archive order (what `np.load(...).files` lists), so that recording order is stable.
    for index in 0..zip.len() {
        let mut member = zip
            .by_index(index)
            .map_err(|e| Error::format(path, format!("cannot read archive member {index}: {e}")))?;
        let Some(name) = npyz::npz::array_name_from_file_name(member.name()).map(str::to_string)
        else {
            continue;
        };
        let what = format!("array {name}: ");
        let array = read_npz_member(&mut member, path, &what)?;
        out.extend(array_to_ecgs(
            array,
            &format!("{stem}_{name}"),
            sample_rate,
            path,
            &what,
        )?);
    }
    if out.is_empty() {
        return Err(Error::format(path, "the archive holds no arrays"));
    }
    Ok(out)
}

/// Reads the array of an npz archive member, bounded by its checked header (see [`read_npz`]).
fn read_npz_member(
    member: &mut npyz::zip::read::ZipFile<'_>,
    path: &Path,
    what: &str,
) -> Result<Array> {
    let bad = |reason: String| Error::format(path, format!("{what}{reason}"));
    // NumPy writes stored or deflated members only; refusing the rest before the first read
    // keeps hostile input away from the other decoders.
    let method = member.compression();
    if !matches!(
        method,
        npyz::zip::CompressionMethod::Stored | npyz::zip::CompressionMethod::Deflated
    ) {
        return Err(bad(format!(
            "unsupported compression method {method} (NumPy writes stored or deflated members)"
        )));
    }
    let declared = member.size();
    if declared > MAX_NPZ_MEMBER_LEN {
        return Err(bad(format!(
            "the archive declares {declared} bytes for it, more than the limit of \
             {MAX_NPZ_MEMBER_LEN} bytes per array"
        )));
    }
    let checked = check_npy(&mut *member, declared, path, what)?;
    // Cannot overflow: both are within `declared`.
    let needed = checked.layout().header_len + checked.layout().data_len;
    if needed != declared {
        return Err(bad(format!(
            "the archive declares {declared} bytes for it but its array needs {needed}"
        )));
    }
    let array = npy_to_array(checked, path, what)?;
    // One byte more tells a member that inflates beyond its array, without inflating it.
    let mut extra = [0u8; 1];
    match member.read(&mut extra) {
        Ok(0) => Ok(array),
        Ok(_) => Err(bad(format!(
            "the member inflates beyond the {needed} bytes its array needs (a zip bomb?)"
        ))),
        Err(e) => Err(bad(format!("cannot read the archive member: {e}"))),
    }
}

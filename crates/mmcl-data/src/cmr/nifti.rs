//! A NIfTI-1 reader (single-file `.nii`, gzipped `.nii.gz`), little- or big-endian.
//!
//! Reads the header fields the data layer needs (dimensions, voxel size, data type, scaling)
//! and the voxels as f32 with `scl_slope`/`scl_inter` applied. Two-file `.hdr`/`.img` pairs and
//! NIfTI-2 are refused with a clear error.

use std::io::Read;
use std::path::Path;

use crate::ecg::read_file;
use crate::{Error, Result};

/// Size of a NIfTI-1 header.
const HEADER_LEN: usize = 348;

/// A NIfTI-1 image: its dimensions (x fastest), voxel size and voxels.
#[derive(Debug, Clone, PartialEq)]
pub struct NiftiImage {
    /// `dim[1..=dim[0]]`: x, y, z, t, … (x varies fastest in `data`).
    pub dims: Vec<usize>,
    /// `pixdim[1..=dim[0]]`: voxel size in mm (and the frame interval for t).
    pub pixdim: Vec<f64>,
    /// The NIfTI data-type code of the stored voxels.
    pub datatype: i16,
    /// The voxels as f32, scaled by `scl_slope`/`scl_inter` when the slope is non-zero.
    pub data: Vec<f32>,
}

impl NiftiImage {
    /// The voxel size in mm of the first three axes (1 where the file has fewer).
    pub fn voxel_mm(&self) -> [f64; 3] {
        let mut v = [1.0; 3];
        for (i, p) in self.pixdim.iter().take(3).enumerate() {
            v[i] = p.abs();
        }
        v
    }
}

/// Reads a `.nii` or `.nii.gz` file (gzip is recognised by its magic bytes).
///
/// # Errors
/// A clear error naming the file: unreadable, empty, not gzip-decodable, not NIfTI-1, an
/// unsupported data type, or voxels missing (truncated).
pub fn read_nifti(path: &Path) -> Result<NiftiImage> {
    let raw = read_file(path)?;
    if raw.is_empty() {
        return Err(Error::format(path, "the file is empty"));
    }
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::format(path, format!("cannot decompress (gzip): {e}")))?;
        out
    } else {
        raw
    };
    parse_nifti(&bytes, path)
}

/// Parses the bytes of an uncompressed NIfTI-1 file; `path` names it in errors.
///
/// # Errors
/// See [`read_nifti`].
pub fn parse_nifti(bytes: &[u8], path: &Path) -> Result<NiftiImage> {
    if bytes.len() < HEADER_LEN {
        return Err(Error::format(
            path,
            format!(
                "truncated: {} bytes, a NIfTI-1 header alone has {HEADER_LEN}",
                bytes.len()
            ),
        ));
    }
    let size_le = i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let size_be = i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let little = match (size_le, size_be) {
        (348, _) => true,
        (_, 348) => false,
        (540, _) | (_, 540) => {
            return Err(Error::format(path, "NIfTI-2 files are not supported"));
        }
        _ => {
            return Err(Error::format(
                path,
                "not a NIfTI-1 file (sizeof_hdr is not 348)",
            ));
        }
    };
    let i16_at = |o: usize| {
        let b = [bytes[o], bytes[o + 1]];
        if little {
            i16::from_le_bytes(b)
        } else {
            i16::from_be_bytes(b)
        }
    };
    let f32_at = |o: usize| {
        let b = [bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]];
        if little {
            f32::from_le_bytes(b)
        } else {
            f32::from_be_bytes(b)
        }
    };
    let magic = &bytes[344..348];
    if magic == b"ni1\0" {
        return Err(Error::format(
            path,
            "two-file NIfTI (.hdr/.img) is not supported; convert to .nii",
        ));
    }
    if magic != b"n+1\0" {
        return Err(Error::format(path, "bad NIfTI-1 magic (expected \"n+1\")"));
    }
    let ndim = i16_at(40);
    if !(1..=7).contains(&ndim) {
        return Err(Error::format(path, format!("bad dim[0] = {ndim}")));
    }
    let ndim = ndim as usize;
    let mut dims = Vec::with_capacity(ndim);
    let mut pixdim = Vec::with_capacity(ndim);
    for k in 1..=ndim {
        let d = i16_at(40 + 2 * k);
        if d < 1 {
            return Err(Error::format(path, format!("dimension {k} has size {d}")));
        }
        dims.push(d as usize);
        pixdim.push(f32_at(76 + 4 * k) as f64);
    }
    let datatype = i16_at(70);
    let vox_offset = f32_at(108);
    let (slope, inter) = (f32_at(112), f32_at(116));
    let offset = if vox_offset.is_finite() && vox_offset >= HEADER_LEN as f32 {
        vox_offset as usize
    } else {
        HEADER_LEN + 4
    };
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::format(path, format!("dimensions {dims:?} are too large")))?;
    let width = match datatype {
        2 | 256 => 1,
        4 | 512 => 2,
        8 | 16 | 768 => 4,
        64 => 8,
        other => {
            return Err(Error::format(
                path,
                format!("unsupported NIfTI data type {other}"),
            ));
        }
    };
    let needed = count
        .checked_mul(width)
        .and_then(|n| n.checked_add(offset))
        .ok_or_else(|| Error::format(path, format!("dimensions {dims:?} are too large")))?;
    if bytes.len() < needed {
        return Err(Error::format(
            path,
            format!(
                "truncated: dimensions {dims:?} need {needed} bytes, the file has {}",
                bytes.len()
            ),
        ));
    }
    let body = &bytes[offset..needed];
    let mut data: Vec<f32> = match datatype {
        2 => body.iter().map(|&b| b as f32).collect(),
        256 => body.iter().map(|&b| b as i8 as f32).collect(),
        4 => body
            .chunks_exact(2)
            .map(|c| endian16(c, little) as i16 as f32)
            .collect(),
        512 => body
            .chunks_exact(2)
            .map(|c| endian16(c, little) as f32)
            .collect(),
        8 => body
            .chunks_exact(4)
            .map(|c| endian32(c, little) as i32 as f32)
            .collect(),
        768 => body
            .chunks_exact(4)
            .map(|c| endian32(c, little) as f32)
            .collect(),
        16 => body
            .chunks_exact(4)
            .map(|c| f32::from_bits(endian32(c, little)))
            .collect(),
        _ => body
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                (if little {
                    f64::from_le_bytes(b)
                } else {
                    f64::from_be_bytes(b)
                }) as f32
            })
            .collect(),
    };
    if slope != 0.0 && slope.is_finite() && !(slope == 1.0 && inter == 0.0) {
        let inter = if inter.is_finite() { inter } else { 0.0 };
        data.iter_mut().for_each(|v| *v = *v * slope + inter);
    }
    Ok(NiftiImage {
        dims,
        pixdim,
        datatype,
        data,
    })
}

fn endian16(c: &[u8], little: bool) -> u16 {
    let b = [c[0], c[1]];
    if little {
        u16::from_le_bytes(b)
    } else {
        u16::from_be_bytes(b)
    }
}

fn endian32(c: &[u8], little: bool) -> u32 {
    let b = [c[0], c[1], c[2], c[3]];
    if little {
        u32::from_le_bytes(b)
    } else {
        u32::from_be_bytes(b)
    }
}

//! A NIfTI-1 writer (`.nii.gz`) for 4-D cines and their segmentations, through the `nifti`
//! crate's writer.
//!
//! The header carries the voxel size, the frame interval (ms), and the voxel-to-world matrix
//! twice, as a quaternion (qform, with `qfac` for left-handed stacks) and as rows (sform), both
//! with code 1 (scanner coordinates), as converted UK Biobank files do. The crate's own
//! `set_affine` is not used: it needs its `nalgebra_affine` feature and writes the sform with
//! code 2 and the qform with code 0, which nibabel would not read as scanner coordinates.

use std::path::{Path, PathBuf};

use flate2::Compression;
use ndarray::{ArrayView, ShapeBuilder};
use nifti::writer::WriterOptions;
use nifti::{Endianness, NiftiError, NiftiHeader};

use crate::{Error, Result};

/// Size of the NIfTI-1 header plus the 4-byte extension flag; the voxels start here.
pub const VOX_OFFSET: usize = 352;

/// `xyzt_units`: millimetres and milliseconds.
const UNITS_MM_MS: u8 = 2 | 16;

/// The voxels of a volume.
#[derive(Debug, Clone, Copy)]
pub enum Voxels<'a> {
    /// Signed 16-bit intensities.
    I16(&'a [i16]),
    /// Unsigned 8-bit labels.
    U8(&'a [u8]),
}

impl Voxels<'_> {
    fn len(&self) -> usize {
        match self {
            Self::I16(v) => v.len(),
            Self::U8(v) => v.len(),
        }
    }
}

/// A 4-D volume to write.
#[derive(Debug, Clone, Copy)]
pub struct Volume<'a> {
    /// `[x, y, z, t]`.
    pub dims: [usize; 4],
    /// Voxel size `[x, y, z]`, mm.
    pub voxel_mm: [f64; 3],
    /// Time between frames, ms.
    pub frame_ms: f64,
    /// Voxel-to-world matrix (RAS+, mm); its columns have the lengths of `voxel_mm`.
    pub affine: &'a [[f64; 4]; 3],
    /// The voxels, x fastest.
    pub voxels: Voxels<'a>,
    /// Free text for the header's `descrip` (at most 79 bytes are kept).
    pub description: &'a str,
}

/// NIfTI's quaternion (b, c, d) and `qfac` of the rotation in `affine`.
pub fn quaternion(affine: &[[f64; 4]; 3]) -> ([f64; 3], f64) {
    let mut r = [[0.0; 3]; 3];
    for col in 0..3 {
        let norm = (0..3)
            .map(|row| affine[row][col].powi(2))
            .sum::<f64>()
            .sqrt();
        for row in 0..3 {
            r[row][col] = if norm > 0.0 {
                affine[row][col] / norm
            } else {
                0.0
            };
        }
    }
    let det = r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1])
        - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
        + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
    let qfac = if det < 0.0 { -1.0 } else { 1.0 };
    if qfac < 0.0 {
        for row in r.iter_mut() {
            row[2] = -row[2];
        }
    }
    let trace = r[0][0] + r[1][1] + r[2][2] + 1.0;
    let (mut a, mut b, mut c, mut d);
    if trace > 0.5 {
        a = 0.5 * trace.sqrt();
        b = 0.25 * (r[2][1] - r[1][2]) / a;
        c = 0.25 * (r[0][2] - r[2][0]) / a;
        d = 0.25 * (r[1][0] - r[0][1]) / a;
    } else {
        let xd = 1.0 + r[0][0] - (r[1][1] + r[2][2]);
        let yd = 1.0 + r[1][1] - (r[0][0] + r[2][2]);
        let zd = 1.0 + r[2][2] - (r[0][0] + r[1][1]);
        if xd > 1.0 {
            b = 0.5 * xd.sqrt();
            c = 0.25 * (r[0][1] + r[1][0]) / b;
            d = 0.25 * (r[0][2] + r[2][0]) / b;
            a = 0.25 * (r[2][1] - r[1][2]) / b;
        } else if yd > 1.0 {
            c = 0.5 * yd.sqrt();
            b = 0.25 * (r[0][1] + r[1][0]) / c;
            d = 0.25 * (r[1][2] + r[2][1]) / c;
            a = 0.25 * (r[0][2] - r[2][0]) / c;
        } else {
            d = 0.5 * zd.sqrt();
            b = 0.25 * (r[0][2] + r[2][0]) / d;
            c = 0.25 * (r[1][2] + r[2][1]) / d;
            a = 0.25 * (r[1][0] - r[0][1]) / d;
        }
        if a < 0.0 {
            (a, b, c, d) = (-a, -b, -c, -d);
        }
    }
    debug_assert!(a >= 0.0);
    ([b, c, d], qfac)
}

/// The header of `volume` (the crate's writer fills in the dimensions, data type, `bitpix`,
/// `vox_offset` = [`VOX_OFFSET`], `scl_slope` = 1, `scl_inter` = 0 and the magic `n+1`).
pub fn header(volume: &Volume<'_>) -> NiftiHeader {
    let (quatern, qfac) = quaternion(volume.affine);
    let srow = |row: usize| volume.affine[row].map(|v| v as f32);
    let description = volume.description.as_bytes();
    let mut descrip = vec![0u8; 80];
    // At most 79 bytes: the field stays NUL-terminated.
    let kept = description.len().min(79);
    descrip[..kept].copy_from_slice(&description[..kept]);
    NiftiHeader {
        regular: b'r',
        pixdim: [
            qfac as f32,
            volume.voxel_mm[0] as f32,
            volume.voxel_mm[1] as f32,
            volume.voxel_mm[2] as f32,
            volume.frame_ms as f32,
            1.0,
            1.0,
            1.0,
        ],
        xyzt_units: UNITS_MM_MS,
        descrip,
        qform_code: 1, // scanner
        sform_code: 1,
        quatern_b: quatern[0] as f32,
        quatern_c: quatern[1] as f32,
        quatern_d: quatern[2] as f32,
        quatern_x: volume.affine[0][3] as f32,
        quatern_y: volume.affine[1][3] as f32,
        quatern_z: volume.affine[2][3] as f32,
        srow_x: srow(0),
        srow_y: srow(1),
        srow_z: srow(2),
        // Little-endian whatever the machine, as before.
        endianness: Endianness::Little,
        ..NiftiHeader::default()
    }
}

/// Refuses dimensions that do not fit NIfTI-1 and voxels that do not fill them.
fn check(volume: &Volume<'_>) -> std::io::Result<()> {
    if volume.dims.iter().any(|&d| d == 0 || d > i16::MAX as usize) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "dimensions {:?} do not fit NIfTI-1 (1..=32767)",
                volume.dims
            ),
        ));
    }
    let expected: usize = volume.dims.iter().product();
    if volume.voxels.len() != expected {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{} voxels do not fill dimensions {:?}",
                volume.voxels.len(),
                volume.dims
            ),
        ));
    }
    Ok(())
}

/// The temporary sibling the crate writes `path` into: the crate names its output by the
/// extension (a `.nii.gz` stays one, anything else becomes one), so the name ends in `.nii.gz`.
fn staging_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}.nii.gz", std::process::id()))
}

/// Writes `volume` with `header` to `staging` through the crate.
fn write_staging(
    staging: &Path,
    volume: &Volume<'_>,
    header: &NiftiHeader,
    level: u32,
) -> std::result::Result<(), NiftiError> {
    let options = WriterOptions::new(staging)
        .reference_header(header)
        .compression_level(Compression::new(level.min(9)));
    // NIfTI's order (x fastest) is ndarray's Fortran order over [x, y, z, t].
    let [x, y, z, t] = volume.dims;
    let shape = (x, y, z, t).f();
    let shape_error = |e: ndarray::ShapeError| NiftiError::Io(std::io::Error::other(e));
    match volume.voxels {
        Voxels::I16(v) => {
            options.write_nifti(&ArrayView::from_shape(shape, v).map_err(shape_error)?)
        }
        Voxels::U8(v) => {
            options.write_nifti(&ArrayView::from_shape(shape, v).map_err(shape_error)?)
        }
    }
}

/// Writes `volume` as a gzip-compressed NIfTI-1 file at `level` (0–9), atomically: the crate
/// writes a temporary sibling (`staging_path`) that is renamed over `path` once complete, and
/// removed on any error.
///
/// # Errors
/// a file error ([`crate::Error::Core`]) naming the file, also when a dimension does not fit NIfTI-1 or the
/// voxel count does not fill `dims`.
pub fn write_nifti_gz(path: &Path, volume: &Volume<'_>, level: u32) -> Result<()> {
    check(volume).map_err(|e| Error::io(path, e))?;
    let staging = staging_path(path);
    let written = write_staging(&staging, volume, &header(volume), level)
        .map_err(|e| match e {
            NiftiError::Io(e) => e,
            other => std::io::Error::other(other),
        })
        .and_then(|()| std::fs::rename(&staging, path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&staging);
        Error::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotation_from_quaternion(q: [f64; 3]) -> [[f64; 3]; 3] {
        let [b, c, d] = q;
        let a = (1.0 - b * b - c * c - d * d).max(0.0).sqrt();
        [
            [
                a * a + b * b - c * c - d * d,
                2.0 * (b * c - a * d),
                2.0 * (b * d + a * c),
            ],
            [
                2.0 * (b * c + a * d),
                a * a + c * c - b * b - d * d,
                2.0 * (c * d - a * b),
            ],
            [
                2.0 * (b * d - a * c),
                2.0 * (c * d + a * b),
                a * a + d * d - b * b - c * c,
            ],
        ]
    }

    #[test]
    fn quaternion_round_trips_proper_and_improper_rotations() {
        // A rotation about an oblique axis, scaled, with and without a flipped third column.
        let axis = [0.3f64, -0.5, 0.81];
        let n = (axis.iter().map(|x| x * x).sum::<f64>()).sqrt();
        let (x, y, z) = (axis[0] / n, axis[1] / n, axis[2] / n);
        for angle in [0.3f64, 2.0, 3.1] {
            let (s, c) = angle.sin_cos();
            let t = 1.0 - c;
            let r = [
                [t * x * x + c, t * x * y - s * z, t * x * z + s * y],
                [t * x * y + s * z, t * y * y + c, t * y * z - s * x],
                [t * x * z - s * y, t * y * z + s * x, t * z * z + c],
            ];
            for flip in [1.0, -1.0] {
                let sizes = [1.8, 1.8, 8.0 * flip];
                let mut a = [[0.0; 4]; 3];
                for row in 0..3 {
                    for col in 0..3 {
                        a[row][col] = r[row][col] * sizes[col];
                    }
                }
                let (q, qfac) = quaternion(&a);
                assert_eq!(qfac, flip);
                let back = rotation_from_quaternion(q);
                for row in 0..3 {
                    for col in 0..3 {
                        assert!((back[row][col] - r[row][col]).abs() < 1e-9);
                    }
                }
            }
        }
    }

    #[test]
    fn header_fields_are_where_nifti1_puts_them() {
        use std::io::Read;
        let affine = [
            [1.8, 0.0, 0.0, -10.0],
            [0.0, 1.8, 0.0, 5.0],
            [0.0, 0.0, 8.0, 2.0],
        ];
        let data: Vec<i16> = (0..4 * 3 * 2 * 5).map(|v| v - 7).collect();
        let v = Volume {
            dims: [4, 3, 2, 5],
            voxel_mm: [1.8, 1.8, 8.0],
            frame_ms: 40.0,
            affine: &affine,
            voxels: Voxels::I16(&data),
            description: "test",
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sa.nii.gz");
        write_nifti_gz(&path, &v, 6).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no staging file left behind");
        let mut h = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap())
            .read_to_end(&mut h)
            .unwrap();
        let i16_at = |o: usize| i16::from_le_bytes(h[o..o + 2].try_into().unwrap());
        let f32_at = |o: usize| f32::from_le_bytes(h[o..o + 4].try_into().unwrap());
        assert_eq!(i32::from_le_bytes(h[0..4].try_into().unwrap()), 348);
        assert_eq!(h[38], b'r');
        let dim: Vec<i16> = (0..8).map(|k| i16_at(40 + 2 * k)).collect();
        assert_eq!(dim, [4, 4, 3, 2, 5, 1, 1, 1]);
        assert_eq!((i16_at(70), i16_at(72)), (4, 16)); // int16
        let pixdim: Vec<f32> = (0..8).map(|k| f32_at(76 + 4 * k)).collect();
        assert_eq!(pixdim, [1.0, 1.8, 1.8, 8.0, 40.0, 1.0, 1.0, 1.0]);
        assert_eq!(f32_at(108), VOX_OFFSET as f32);
        assert_eq!((f32_at(112), f32_at(116)), (1.0, 0.0)); // scl_slope, scl_inter
        assert_eq!(h[123], UNITS_MM_MS);
        assert_eq!(&h[148..153], b"test\0");
        assert_eq!((i16_at(252), i16_at(254)), (1, 1)); // qform, sform: scanner
        assert_eq!(f32_at(276), 2.0); // qoffset_z
        let srow: Vec<f32> = (0..12).map(|k| f32_at(280 + 4 * k)).collect();
        assert_eq!(srow[..4], [1.8, 0.0, 0.0, -10.0]);
        assert_eq!(srow[8..], [0.0, 0.0, 8.0, 2.0]);
        assert_eq!(&h[344..348], b"n+1\0");
        assert_eq!(&h[348..VOX_OFFSET], [0; 4]); // no extensions
        let voxels: Vec<i16> = h[VOX_OFFSET..]
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(voxels, data, "x fastest, little-endian");

        // A volume that does not fit is refused, leaving nothing behind.
        let bad = Volume {
            dims: [4, 3, 2, 6],
            ..v
        };
        let err = write_nifti_gz(&dir.path().join("bad.nii.gz"), &bad, 6).unwrap_err();
        assert!(err.to_string().contains("bad.nii.gz"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

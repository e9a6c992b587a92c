//! A NIfTI-1 writer (`.nii.gz`) for 4-D cines and their segmentations.
//!
//! The header carries the voxel size, the frame interval (ms), and the voxel-to-world matrix
//! twice, as a quaternion (qform, with `qfac` for left-handed stacks) and as rows (sform), both
//! with code 1 (scanner coordinates), as converted UK Biobank files do.

use std::io::Write;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;

use crate::Result;
use crate::io::write_file_atomic;

/// Size of the NIfTI-1 header plus the 4-byte extension flag; the voxels start here.
pub const VOX_OFFSET: usize = 352;

/// NIfTI datatype codes used here.
const DT_UINT8: i16 = 2;
const DT_INT16: i16 = 4;
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

/// The 352 bytes preceding the voxels: the NIfTI-1 header and an empty extension flag.
pub fn header(volume: &Volume<'_>) -> [u8; VOX_OFFSET] {
    let mut h = [0u8; VOX_OFFSET];
    let mut put =
        |offset: usize, bytes: &[u8]| h[offset..offset + bytes.len()].copy_from_slice(bytes);
    put(0, &348i32.to_le_bytes());
    put(38, b"r");
    let dims = volume.dims;
    let dim: [i16; 8] = [
        4,
        dims[0] as i16,
        dims[1] as i16,
        dims[2] as i16,
        dims[3] as i16,
        1,
        1,
        1,
    ];
    for (i, d) in dim.iter().enumerate() {
        put(40 + 2 * i, &d.to_le_bytes());
    }
    let (datatype, bitpix) = match volume.voxels {
        Voxels::I16(_) => (DT_INT16, 16i16),
        Voxels::U8(_) => (DT_UINT8, 8i16),
    };
    put(70, &datatype.to_le_bytes());
    put(72, &bitpix.to_le_bytes());
    let (quatern, qfac) = quaternion(volume.affine);
    let pixdim: [f32; 8] = [
        qfac as f32,
        volume.voxel_mm[0] as f32,
        volume.voxel_mm[1] as f32,
        volume.voxel_mm[2] as f32,
        volume.frame_ms as f32,
        1.0,
        1.0,
        1.0,
    ];
    for (i, p) in pixdim.iter().enumerate() {
        put(76 + 4 * i, &p.to_le_bytes());
    }
    put(108, &(VOX_OFFSET as f32).to_le_bytes());
    put(112, &1f32.to_le_bytes()); // scl_slope
    put(116, &0f32.to_le_bytes()); // scl_inter
    put(123, &[UNITS_MM_MS]);
    let descrip = volume.description.as_bytes();
    put(148, &descrip[..descrip.len().min(79)]);
    put(252, &1i16.to_le_bytes()); // qform_code: scanner
    put(254, &1i16.to_le_bytes()); // sform_code: scanner
    for (i, q) in quatern.iter().enumerate() {
        put(256 + 4 * i, &(*q as f32).to_le_bytes());
    }
    for row in 0..3 {
        put(268 + 4 * row, &(volume.affine[row][3] as f32).to_le_bytes());
    }
    for row in 0..3 {
        for col in 0..4 {
            put(
                280 + 16 * row + 4 * col,
                &(volume.affine[row][col] as f32).to_le_bytes(),
            );
        }
    }
    put(344, b"n+1\0");
    h
}

/// Writes `volume` as a gzip-compressed NIfTI-1 file at `level` (0–9), atomically.
///
/// # Errors
/// [`crate::Error::Io`] naming the file, also when a dimension does not fit NIfTI-1 or the
/// voxel count does not fill `dims`.
pub fn write_nifti_gz(path: &Path, volume: &Volume<'_>, level: u32) -> Result<()> {
    write_file_atomic(path, |out| {
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
        let mut gz = GzEncoder::new(out, Compression::new(level.min(9)));
        gz.write_all(&header(volume))?;
        match volume.voxels {
            Voxels::U8(v) => gz.write_all(v)?,
            Voxels::I16(v) => {
                let mut buf = Vec::with_capacity(1 << 16);
                for chunk in v.chunks(1 << 15) {
                    buf.clear();
                    for x in chunk {
                        buf.extend_from_slice(&x.to_le_bytes());
                    }
                    gz.write_all(&buf)?;
                }
            }
        }
        gz.finish()?;
        Ok(())
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
        let affine = [
            [1.8, 0.0, 0.0, -10.0],
            [0.0, 1.8, 0.0, 5.0],
            [0.0, 0.0, 8.0, 2.0],
        ];
        let data = vec![0u8; 4 * 3 * 2 * 5];
        let v = Volume {
            dims: [4, 3, 2, 5],
            voxel_mm: [1.8, 1.8, 8.0],
            frame_ms: 40.0,
            affine: &affine,
            voxels: Voxels::U8(&data),
            description: "test",
        };
        let h = header(&v);
        assert_eq!(i32::from_le_bytes(h[0..4].try_into().unwrap()), 348);
        assert_eq!(i16::from_le_bytes(h[40..42].try_into().unwrap()), 4);
        assert_eq!(i16::from_le_bytes(h[48..50].try_into().unwrap()), 5);
        assert_eq!(f32::from_le_bytes(h[108..112].try_into().unwrap()), 352.0);
        assert_eq!(&h[344..348], b"n+1\0");
        assert_eq!(f32::from_le_bytes(h[76..80].try_into().unwrap()), 1.0);
        assert_eq!(f32::from_le_bytes(h[276..280].try_into().unwrap()), 2.0);
    }
}

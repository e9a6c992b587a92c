//! A NIfTI-1 reader (single-file `.nii`, gzipped `.nii.gz`), little- or big-endian.
//!
//! Reads the header fields the data layer needs (dimensions, voxel size, data type, scaling)
//! and the voxels as f32 with `scl_slope`/`scl_inter` applied. Two-file `.hdr`/`.img` pairs and
//! NIfTI-2 are refused with a clear error.
//!
//! Memory is bounded by the header, never by the file: the 348-byte header is read first (from
//! the start of the decompressed stream for `.nii.gz`), the exact byte count it declares
//! (`vox_offset` + voxels × bytes per voxel, checked arithmetic) is validated against
//! [`MAX_VOXELS`] and [`MAX_VOX_OFFSET`], and then exactly that many bytes are read. A stream
//! that holds more (a decompression bomb, a wrong header) or less (truncated) is an error naming
//! the file.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::{Error, Result};
use mmcl_core::files::open_regular;

/// Size of a NIfTI-1 header.
const HEADER_LEN: usize = 348;

/// Largest number of voxels accepted in one image: 2^28 (1 GiB as f32). A UK Biobank short-axis
/// cine has about 208 × 208 × 10 × 50 ≈ 2.2 × 10^7 voxels, so this leaves a tenfold margin while
/// keeping a hostile header from asking for tens of gigabytes.
pub const MAX_VOXELS: usize = 1 << 28;

/// Largest `vox_offset` accepted (16 MiB): header extensions are small metadata blocks; a larger
/// offset means a corrupt header rather than data worth skipping.
pub const MAX_VOX_OFFSET: usize = 16 << 20;

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

/// The header fields needed to read and decode the voxels.
struct Header {
    little: bool,
    dims: Vec<usize>,
    pixdim: Vec<f64>,
    datatype: i16,
    /// Bytes per voxel.
    width: usize,
    slope: f32,
    inter: f32,
    /// Where the voxels start.
    offset: usize,
    /// Bytes of voxel data (voxels × width).
    data_len: usize,
}

impl Header {
    /// The byte count the header declares for the whole file.
    fn total_len(&self) -> usize {
        // Both terms are bounded by the limits checked in `parse_header`, so this cannot
        // overflow.
        self.offset + self.data_len
    }
}

/// Where the bytes come from, for error messages.
#[derive(Clone, Copy, PartialEq)]
enum Source {
    Plain,
    Gzip,
}

impl Source {
    fn read_error(self, path: &Path, e: std::io::Error) -> Error {
        match self {
            Source::Plain => Error::io(path, e),
            Source::Gzip => Error::format(path, format!("cannot decompress (gzip): {e}")),
        }
    }

    fn holds(self) -> &'static str {
        match self {
            Source::Plain => "the file holds",
            Source::Gzip => "it decompresses to",
        }
    }
}

/// Reads a `.nii` or `.nii.gz` file (gzip is recognised by its magic bytes).
///
/// # Errors
/// A clear error naming the file: unreadable, empty, not gzip-decodable, not NIfTI-1, an
/// unsupported data type, dimensions beyond [`MAX_VOXELS`], or a voxel stream shorter
/// (truncated) or longer than the header declares.
pub fn read_nifti(path: &Path) -> Result<NiftiImage> {
    // Only regular files: a FIFO or device named `sa.nii` would block or never end.
    let (file, file_len) = open_regular(path)?;
    if file_len == 0 {
        return Err(Error::format(path, "the file is empty"));
    }
    let mut reader = BufReader::new(file);
    let start = reader.fill_buf().map_err(|e| Error::io(path, e))?;
    if start.starts_with(&[0x1f, 0x8b]) {
        let mut gz = flate2::read::MultiGzDecoder::new(reader);
        read_stream(&mut gz, path, Source::Gzip, None)
    } else {
        read_stream(&mut reader, path, Source::Plain, Some(file_len))
    }
}

/// Parses the bytes of an uncompressed NIfTI-1 file; `path` names it in errors.
///
/// # Errors
/// See [`read_nifti`].
pub fn parse_nifti(bytes: &[u8], path: &Path) -> Result<NiftiImage> {
    let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    read_stream(&mut &bytes[..], path, Source::Plain, Some(len))
}

/// Reads header and voxels from `src`; `known_len` is the stream's length where it is known
/// before reading (a plain file), so a wrong length is refused before any voxel is read.
fn read_stream(
    src: &mut impl Read,
    path: &Path,
    source: Source,
    known_len: Option<u64>,
) -> Result<NiftiImage> {
    let mut head = [0u8; HEADER_LEN];
    let got = read_up_to(src, &mut head).map_err(|e| source.read_error(path, e))?;
    if got < HEADER_LEN {
        return Err(Error::format(
            path,
            format!("truncated: {got} bytes, a NIfTI-1 header alone has {HEADER_LEN}"),
        ));
    }
    let header = parse_header(&head, path)?;
    let total = header.total_len();
    if let Some(len) = known_len {
        let total = total as u64;
        if len < total {
            return Err(truncated(path, &header, source, len));
        }
        if len > total {
            return Err(too_long(path, &header, source));
        }
    }
    // Extensions between the header and the voxels are skipped (bounded by MAX_VOX_OFFSET).
    let skip = header.offset.saturating_sub(HEADER_LEN) as u64;
    let skipped = std::io::copy(&mut src.by_ref().take(skip), &mut std::io::sink())
        .map_err(|e| source.read_error(path, e))?;
    if skipped < skip {
        return Err(truncated(
            path,
            &header,
            source,
            HEADER_LEN as u64 + skipped,
        ));
    }
    // One byte more than declared is requested so that a longer stream is detected without
    // ever holding more than the declared size plus one byte.
    let mut body = Vec::with_capacity(header.data_len);
    src.take(header.data_len as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| source.read_error(path, e))?;
    if body.len() < header.data_len {
        let seen = (header.offset + body.len()) as u64;
        return Err(truncated(path, &header, source, seen));
    }
    if body.len() > header.data_len {
        return Err(too_long(path, &header, source));
    }
    Ok(decode(header, &body))
}

/// Reads until `buf` is full or the stream ends; the number of bytes read.
fn read_up_to(src: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn truncated(path: &Path, header: &Header, source: Source, got: u64) -> Error {
    Error::format(
        path,
        format!(
            "truncated: dimensions {:?} need {} bytes, {} {got}",
            header.dims,
            header.total_len(),
            source.holds()
        ),
    )
}

fn too_long(path: &Path, header: &Header, source: Source) -> Error {
    Error::format(
        path,
        format!(
            "{} more than the {} bytes its header declares (dimensions {:?}, {} byte(s) per \
             voxel, data at offset {}); refusing a corrupt header or a decompression bomb",
            source.holds(),
            header.total_len(),
            header.dims,
            header.width,
            header.offset
        ),
    )
}

/// Parses and validates the 348-byte header; every size is checked before anything is
/// allocated from it.
fn parse_header(bytes: &[u8; HEADER_LEN], path: &Path) -> Result<Header> {
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
    let vox_offset = f32_at(108);
    let offset = if vox_offset.is_finite() && vox_offset >= HEADER_LEN as f32 {
        if vox_offset > MAX_VOX_OFFSET as f32 {
            return Err(Error::format(
                path,
                format!("vox_offset {vox_offset} is beyond the maximum of {MAX_VOX_OFFSET}"),
            ));
        }
        vox_offset as usize
    } else {
        HEADER_LEN + 4
    };
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            Error::format(
                path,
                format!("dimensions {dims:?} are too large (their product overflows)"),
            )
        })?;
    if count > MAX_VOXELS {
        return Err(Error::format(
            path,
            format!(
                "dimensions {dims:?} are too large: {count} voxels, the maximum is {MAX_VOXELS}"
            ),
        ));
    }
    let data_len = count
        .checked_mul(width)
        .filter(|n| n.checked_add(offset).is_some())
        .ok_or_else(|| Error::format(path, format!("dimensions {dims:?} are too large")))?;
    Ok(Header {
        little,
        dims,
        pixdim,
        datatype,
        width,
        slope: f32_at(112),
        inter: f32_at(116),
        offset,
        data_len,
    })
}

/// The voxels of `body` (exactly `header.data_len` bytes) as a scaled f32 image.
fn decode(header: Header, body: &[u8]) -> NiftiImage {
    let little = header.little;
    let mut data: Vec<f32> = match header.datatype {
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
    let (slope, inter) = (header.slope, header.inter);
    if slope != 0.0 && slope.is_finite() && !(slope == 1.0 && inter == 0.0) {
        let inter = if inter.is_finite() { inter } else { 0.0 };
        data.iter_mut().for_each(|v| *v = *v * slope + inter);
    }
    NiftiImage {
        dims: header.dims,
        pixdim: header.pixdim,
        datatype: header.datatype,
        data,
    }
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

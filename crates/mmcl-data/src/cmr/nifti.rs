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
//!
//! The `nifti` crate parses the header fields (from those 348 bytes) and decodes the voxels (from
//! the bytes read); the reading itself stays here, because the crate's readers size their
//! buffers from the header and inflate gzip without a cap, and so do the checks, which refuse
//! more than the crate does (sizes beyond [`MAX_VOXELS`], far offsets, 64-bit integer and
//! complex data) with errors that name the file.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use nifti::{Endianness, InMemNiftiVolume, IntoNdArray, NiftiHeader, NiftiType};

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

/// The data types read: 8-, 16- and 32-bit integers, `f32` and `f64`.
const SUPPORTED: [NiftiType; 8] = [
    NiftiType::Uint8,
    NiftiType::Int8,
    NiftiType::Int16,
    NiftiType::Uint16,
    NiftiType::Int32,
    NiftiType::Uint32,
    NiftiType::Float32,
    NiftiType::Float64,
];

/// The header fields needed to read and decode the voxels, validated.
struct Header {
    /// The header as the `nifti` crate parsed it.
    raw: NiftiHeader,
    dims: Vec<usize>,
    pixdim: Vec<f64>,
    datatype: NiftiType,
    /// Bytes per voxel.
    width: usize,
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
    decode(header, body, path)
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
    let size = [bytes[0], bytes[1], bytes[2], bytes[3]];
    let little = match (i32::from_le_bytes(size), i32::from_be_bytes(size)) {
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
    let magic = &bytes[344..348];
    if magic == nifti::header::MAGIC_CODE_NI1 {
        return Err(Error::format(
            path,
            "two-file NIfTI (.hdr/.img) is not supported; convert to .nii",
        ));
    }
    if magic != nifti::header::MAGIC_CODE_NIP1 {
        return Err(Error::format(path, "bad NIfTI-1 magic (expected \"n+1\")"));
    }
    let raw = NiftiHeader::from_reader(&bytes[..])
        .map_err(|e| Error::format(path, format!("bad NIfTI-1 header: {e}")))?;
    // The crate takes the byte order from dim[0] (swapped when above 7), this reader from
    // sizeof_hdr; where they differ, dim[0] read in our order is out of range and refused here,
    // so every field below was read in the order sizeof_hdr gives.
    let order = if little {
        Endianness::Little
    } else {
        Endianness::Big
    };
    let in_our_order = |v: u16| {
        if raw.endianness == order {
            v
        } else {
            v.swap_bytes()
        }
    };
    let ndim = in_our_order(raw.dim[0]) as i16;
    if !(1..=7).contains(&ndim) {
        return Err(Error::format(path, format!("bad dim[0] = {ndim}")));
    }
    let ndim = ndim as usize;
    let mut dims = Vec::with_capacity(ndim);
    let mut pixdim = Vec::with_capacity(ndim);
    for k in 1..=ndim {
        let d = raw.dim[k] as i16;
        if d < 1 {
            return Err(Error::format(path, format!("dimension {k} has size {d}")));
        }
        dims.push(d as usize);
        pixdim.push(raw.pixdim[k] as f64);
    }
    let datatype = match raw.data_type() {
        Ok(t) if SUPPORTED.contains(&t) => t,
        _ => {
            return Err(Error::format(
                path,
                format!("unsupported NIfTI data type {}", raw.datatype),
            ));
        }
    };
    let width = datatype.size_of();
    let vox_offset = raw.vox_offset;
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
        raw,
        dims,
        pixdim,
        datatype,
        width,
        offset,
        data_len,
    })
}

/// The voxels of `body` (exactly `header.data_len` bytes) as a scaled f32 image, decoded by the
/// `nifti` crate.
///
/// The scaling is this reader's: none for a zero, non-finite or identity (1, 0) slope, and a
/// non-finite intercept counts as 0. The crate scales whenever the slope is non-zero, so it is
/// handed the slope and intercept that give exactly that (`v · slope + inter` in f32 either way).
fn decode(header: Header, body: Vec<u8>, path: &Path) -> Result<NiftiImage> {
    let (slope, inter) = (header.raw.scl_slope, header.raw.scl_inter);
    let (slope, inter) = if slope != 0.0 && slope.is_finite() && !(slope == 1.0 && inter == 0.0) {
        (slope, if inter.is_finite() { inter } else { 0.0 })
    } else {
        (0.0, 0.0)
    };
    // The validated dimensions and type, not the header's raw fields (the crate would size the
    // data from `bitpix`, which this reader ignores).
    let mut dim = [1u16; 8];
    dim[0] = header.dims.len() as u16;
    for (d, &n) in dim[1..].iter_mut().zip(&header.dims) {
        *d = n as u16;
    }
    let decoded = InMemNiftiVolume::from_raw_fields(
        dim,
        header.datatype,
        slope,
        inter,
        body,
        header.raw.endianness,
    )
    .and_then(|volume| volume.into_ndarray::<f32>())
    .map_err(|e| Error::format(path, format!("cannot decode the voxels: {e}")))?;
    // The crate's array is in NIfTI's (Fortran) order, x fastest, as `NiftiImage::data`.
    let (data, _) = decoded.into_raw_vec_and_offset();
    Ok(NiftiImage {
        dims: header.dims,
        pixdim: header.pixdim,
        datatype: header.raw.datatype,
        data,
    })
}

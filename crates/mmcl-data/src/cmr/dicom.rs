//! UK Biobank CMR DICOM (field 20209): one zip per subject and visit
//! (`<eid>_20209_2_0.zip`) holding the short-axis cine as uncompressed DICOM files, usually one
//! series per slice (`CINE_segmented_SAX_b1` … `_bN`), ~50 frames each, often with a
//! `manifest.csv` (or `manifest.cvs`) beside them. [`read_dicom_zip`] turns it into the same
//! [`CmrStudy`] the NIfTI path gives.
//!
//! # Mapping
//!
//! - **x = DICOM column, y = DICOM row**: a frame's pixels are stored row by row, so they are
//!   copied as they are into a plane with x fastest. This is the layout of the NIfTI
//!   conversions of UK Biobank (each frame's `pixel_array` transposed into `[x, y]`) and of
//!   [`CmrStudy::preprocess`], which takes rows as y.
//! - **Voxel size**: `PixelSpacing` is (row spacing, column spacing), so x = its second value
//!   and y its first; z is the mean distance between adjacent slice positions (the slice
//!   spacing, as in a NIfTI conversion), or `SliceThickness` for a single slice. The three
//!   are rounded to `f32`, the precision a NIfTI header keeps, so that a study and its NIfTI
//!   conversion give the same crop.
//! - **Slices** are the distinct positions along the slice normal n = row × column direction
//!   (`ImageOrientationPatient`), the position being `ImagePositionPatient` · n; **slice 0 is
//!   the largest position**. Short-axis images are viewed from the apex (LV on the image's
//!   right, anterior at the top), so n points from the apex towards the base and slice 0 is
//!   basal, as UK Biobank's `SAX_b1` and the synthetic cohort's NIfTI. Without position or
//!   orientation on every image, `SliceLocation` takes the place of the position (same rule).
//!   Two series at the same position (a repeated acquisition) keep the one with the larger
//!   `SeriesNumber`.
//! - **Frames** are ordered by `TriggerTime` (else `InstanceNumber`) within a slice; every
//!   slice must have the same number of frames.
//! - **Intensities**: 16-bit stored values (`BitsAllocated` 16, `PixelRepresentation` 0
//!   unsigned or 1 signed, the low `BitsStored` bits), then `RescaleSlope` · v +
//!   `RescaleIntercept` (1 and 0 when absent).
//! - Members skipped: folders, the manifest, files that are neither DICOM (no `DICM` magic)
//!   nor named `*.dcm`, DICOM objects without `PixelData`, and Siemens' derived
//!   `*InlineVF*` series (the scanner's own contours). Everything else that is wrong — rows,
//!   columns, orientation or spacing that differ between images, a missing tag, truncated or
//!   compressed pixel data, a symbolic link — is an error naming the zip, the member and the
//!   problem.
//!
//! # Bounds
//!
//! At most [`MAX_ZIP_MEMBERS`] members, each at most [`MAX_MEMBER_BYTES`] uncompressed (checked
//! against the declared size before reading and enforced while reading), at most
//! [`MAX_TOTAL_BYTES`] in all, at most [`MAX_SIDE`] rows or columns, and at most
//! [`MAX_VOXELS`] voxels (X × Y × slices × frames, counted before each frame's pixels are
//! decoded). Every element length in a member is checked against the member's size before
//! the DICOM parser runs (`scan`).
//!
//! `dicom-pixeldata` is not used: it exists to decode compressed transfer syntaxes and pulls
//! in image codecs, while UK Biobank's files are native uncompressed pixels, read here
//! directly from `PixelData`.

use std::borrow::Cow;
use std::io::Read;
use std::path::Path;

use dicom_core::value::{PrimitiveValue, Value};
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{InMemDicomObject, OpenFileOptions, Tag};

use super::CmrStudy;
use crate::{Error, Result};

use crate::dicom_scan as scan;
mod volume;

/// Most members a zip may hold (UK Biobank's hold about 15 slices × 50 frames).
pub const MAX_ZIP_MEMBERS: usize = 20_000;
/// Largest uncompressed member in bytes (a 512 × 512 16-bit frame is 0.5 MiB).
pub const MAX_MEMBER_BYTES: u64 = 64 << 20;
/// Largest uncompressed total over the members read, in bytes.
pub const MAX_TOTAL_BYTES: u64 = 4 << 30;
/// Most rows or columns of an image.
pub const MAX_SIDE: usize = 4096;
/// Most voxels of a study (X × Y × slices × frames): 512 MiB of `f32`.
pub const MAX_VOXELS: usize = 1 << 27;

/// One image (one frame of one slice) read from a member.
#[derive(Debug, Clone)]
struct Frame {
    member: String,
    series: String,
    series_number: i64,
    rows: usize,
    columns: usize,
    orientation: Option<[f64; 6]>,
    position: Option<[f64; 3]>,
    slice_location: Option<f64>,
    trigger_ms: Option<f64>,
    instance: Option<i64>,
    /// (row spacing, column spacing), mm.
    spacing: [f64; 2],
    thickness: Option<f64>,
    /// Rescaled intensities, row by row.
    pixels: Vec<f32>,
}

/// Whether `path` names a zip (the extension, any case).
pub fn is_zip(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("zip"))
}

/// Reads a UK Biobank CMR zip of short-axis cine DICOM files into a study without
/// segmentation (see the module documentation for the mapping and bounds).
///
/// # Errors
/// An error naming the zip (and the member, where one is at fault): not a zip, too many or too
/// large members, a symbolic link, a DICOM file that is truncated, compressed or lacks a
/// required tag, images that do not form one X × Y × slices × frames volume, no image at all.
pub fn read_dicom_zip(path: &Path) -> Result<CmrStudy> {
    // A regular file only: a FIFO in its place would block the open.
    let (file, _) = mmcl_core::files::open_regular(path)?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| Error::format(path, format!("not a readable zip archive: {e}")))?;
    if archive.len() > MAX_ZIP_MEMBERS {
        return Err(Error::format(
            path,
            format!(
                "holds {} members, more than the {MAX_ZIP_MEMBERS} a CMR zip may hold",
                archive.len()
            ),
        ));
    }
    let mut frames = Vec::new();
    let (mut total_bytes, mut voxels) = (0u64, 0usize);
    for index in 0..archive.len() {
        let mut member = archive
            .by_index(index)
            .map_err(|e| Error::format(path, format!("member {index}: {e}")))?;
        let name = member
            .name()
            .map(Cow::into_owned)
            .unwrap_or_else(|_| format!("member {index}"));
        let at = |reason: String| Error::format(path, format!("{name}: {reason}"));
        if member.is_dir() {
            continue;
        }
        let regular = member
            .unix_mode()
            .is_none_or(|m| m & 0o170_000 == 0 || m & 0o170_000 == 0o100_000);
        if !member.is_file() || !regular {
            return Err(at(
                "not a regular file (a link or special file); only regular files are read".into(),
            ));
        }
        let base = name
            .rsplit('/')
            .next()
            .unwrap_or(&name)
            .to_ascii_lowercase();
        if base.starts_with("manifest.") {
            continue;
        }
        let declared = member.size();
        if declared > MAX_MEMBER_BYTES {
            return Err(at(format!(
                "{declared} bytes uncompressed, more than the {MAX_MEMBER_BYTES} allowed per member"
            )));
        }
        total_bytes += declared;
        if total_bytes > MAX_TOTAL_BYTES {
            return Err(at(format!(
                "the members hold more than {MAX_TOTAL_BYTES} bytes uncompressed"
            )));
        }
        // The declared size is bounded above; the read is bounded too, whatever it declared.
        let mut bytes = Vec::with_capacity(declared as usize);
        (&mut member)
            .take(MAX_MEMBER_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| at(format!("cannot decompress: {e}")))?;
        if bytes.len() as u64 != declared {
            return Err(at(format!(
                "decompresses to {} bytes where the zip declares {declared}",
                bytes.len()
            )));
        }
        if scan::magic_offset(&bytes).is_none() && !base.ends_with(".dcm") {
            continue;
        }
        if let Some(mut frame) = read_member(&bytes, &mut voxels).map_err(at)? {
            frame.member = name;
            frames.push(frame);
        }
    }
    volume::assemble(frames).map_err(|reason| Error::format(path, reason))
}

/// The image of one DICOM member; `None` for an object without pixels or of a derived series.
/// `voxels` counts the voxels decoded so far, across members.
fn read_member(bytes: &[u8], voxels: &mut usize) -> std::result::Result<Option<Frame>, String> {
    let layout = scan::check(bytes)?;
    let obj = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .from_reader(&bytes[layout.magic..])
        .map_err(|e| format!("not a readable DICOM file: {e}"))?;
    if obj.get(tags::PIXEL_DATA).is_none() {
        return Ok(None);
    }
    let description = text(&obj, tags::SERIES_DESCRIPTION).unwrap_or_default();
    if description.contains("InlineVF") {
        return Ok(None);
    }
    let rows = side(&obj, tags::ROWS, "Rows")?;
    let columns = side(&obj, tags::COLUMNS, "Columns")?;
    let plane = rows * columns;
    *voxels = voxels
        .checked_add(plane)
        .filter(|&v| v <= MAX_VOXELS)
        .ok_or_else(|| {
            format!(
                "the images hold more than {MAX_VOXELS} voxels (X × Y × slices × frames), the \
                 limit of a study"
            )
        })?;
    let bits = required(
        integer(&obj, tags::BITS_ALLOCATED, "BitsAllocated")?,
        "BitsAllocated",
    )?;
    if bits != 16 {
        return Err(format!(
            "BitsAllocated is {bits}; only 16-bit pixels are read"
        ));
    }
    let stored = integer(&obj, tags::BITS_STORED, "BitsStored")?.unwrap_or(16);
    if !(1..=16).contains(&stored) {
        return Err(format!("BitsStored {stored} is not in 1..=16"));
    }
    let signed = match required(
        integer(&obj, tags::PIXEL_REPRESENTATION, "PixelRepresentation")?,
        "PixelRepresentation",
    )? {
        0 => false,
        1 => true,
        other => return Err(format!("PixelRepresentation {other} is neither 0 nor 1")),
    };
    for (tag, name) in [
        (tags::SAMPLES_PER_PIXEL, "SamplesPerPixel"),
        (tags::NUMBER_OF_FRAMES, "NumberOfFrames"),
    ] {
        if let Some(n) = integer(&obj, tag, name)?
            && n != 1
        {
            return Err(format!(
                "{name} is {n}; one grey-level frame per file is read"
            ));
        }
    }
    let spacing = floats::<2>(&obj, tags::PIXEL_SPACING, "PixelSpacing")?;
    let spacing = required(spacing, "PixelSpacing")?;
    if spacing.iter().any(|&s| s <= 0.0) {
        return Err(format!("PixelSpacing {spacing:?} is not positive"));
    }
    let slope = float(&obj, tags::RESCALE_SLOPE, "RescaleSlope")?.unwrap_or(1.0);
    let intercept = float(&obj, tags::RESCALE_INTERCEPT, "RescaleIntercept")?.unwrap_or(0.0);
    let stored_values = pixel_values(&obj, plane)?;
    let pixels = stored_values
        .iter()
        .map(|&raw| {
            let v = if stored == 16 {
                if signed {
                    f64::from(raw as i16)
                } else {
                    f64::from(raw)
                }
            } else {
                let low = raw & ((1u16 << stored) - 1);
                if signed && low >> (stored - 1) == 1 {
                    f64::from(low) - f64::from(1u32 << stored)
                } else {
                    f64::from(low)
                }
            };
            (slope * v + intercept) as f32
        })
        .collect();
    Ok(Some(Frame {
        member: String::new(),
        series: text(&obj, tags::SERIES_INSTANCE_UID).unwrap_or_default(),
        series_number: integer(&obj, tags::SERIES_NUMBER, "SeriesNumber")?.unwrap_or(0),
        rows,
        columns,
        orientation: floats::<6>(
            &obj,
            tags::IMAGE_ORIENTATION_PATIENT,
            "ImageOrientationPatient",
        )?,
        position: floats::<3>(&obj, tags::IMAGE_POSITION_PATIENT, "ImagePositionPatient")?,
        slice_location: float(&obj, tags::SLICE_LOCATION, "SliceLocation")?,
        trigger_ms: float(&obj, tags::TRIGGER_TIME, "TriggerTime")?,
        instance: integer(&obj, tags::INSTANCE_NUMBER, "InstanceNumber")?,
        spacing,
        thickness: float(&obj, tags::SLICE_THICKNESS, "SliceThickness")?,
        pixels,
    }))
}

/// The first `n` stored 16-bit values of `PixelData` (little endian).
fn pixel_values(obj: &InMemDicomObject, n: usize) -> std::result::Result<Vec<u16>, String> {
    let value = obj
        .get(tags::PIXEL_DATA)
        .map(|e| e.value())
        .ok_or("missing tag PixelData")?;
    let Value::Primitive(p) = value else {
        return Err("PixelData is encapsulated (compressed); only native pixels are read".into());
    };
    let have = p.calculate_byte_len();
    if have < 2 * n {
        return Err(format!(
            "PixelData holds {have} bytes, Rows × Columns × 2 = {} expected (truncated?)",
            2 * n
        ));
    }
    match p {
        PrimitiveValue::U16(v) => Ok(v[..n].to_vec()),
        PrimitiveValue::I16(v) => Ok(v[..n].iter().map(|&x| x as u16).collect()),
        PrimitiveValue::U8(v) => Ok(v[..2 * n]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect()),
        _ => Err("PixelData is not a binary value".into()),
    }
}

fn required<T>(value: Option<T>, name: &str) -> std::result::Result<T, String> {
    value.ok_or_else(|| format!("missing tag {name}"))
}

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let s = obj.get(tag)?.to_str().ok()?;
    let s = s.trim_matches(['\0', ' ']);
    (!s.is_empty()).then(|| s.to_string())
}

fn bad(name: &str, tag: Tag, e: impl std::fmt::Display) -> String {
    format!("tag {name} ({:04X},{:04X}): {e}", tag.0, tag.1)
}

/// A tag's numbers; `None` when absent or empty.
fn numbers(
    obj: &InMemDicomObject,
    tag: Tag,
    name: &str,
) -> std::result::Result<Option<Vec<f64>>, String> {
    let Some(e) = obj.get(tag) else {
        return Ok(None);
    };
    // Type 2 attributes may be present and empty.
    if e.to_str()
        .is_ok_and(|s| s.trim_matches(['\0', ' ']).is_empty())
    {
        return Ok(None);
    }
    let v = e.to_multi_float64().map_err(|err| bad(name, tag, err))?;
    if v.is_empty() {
        return Ok(None);
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(bad(name, tag, format!("non-finite value in {v:?}")));
    }
    Ok(Some(v))
}

fn floats<const N: usize>(
    obj: &InMemDicomObject,
    tag: Tag,
    name: &str,
) -> std::result::Result<Option<[f64; N]>, String> {
    match numbers(obj, tag, name)? {
        None => Ok(None),
        Some(v) => <[f64; N]>::try_from(v.as_slice()).map(Some).map_err(|_| {
            bad(
                name,
                tag,
                format!("{} values where {N} are expected", v.len()),
            )
        }),
    }
}

fn float(obj: &InMemDicomObject, tag: Tag, name: &str) -> std::result::Result<Option<f64>, String> {
    Ok(floats::<1>(obj, tag, name)?.map(|[v]| v))
}

fn integer(
    obj: &InMemDicomObject,
    tag: Tag,
    name: &str,
) -> std::result::Result<Option<i64>, String> {
    match float(obj, tag, name)? {
        Some(v) if v.fract() != 0.0 || v.abs() > 1e15 => {
            Err(bad(name, tag, format!("{v} is not an integer")))
        }
        other => Ok(other.map(|v| v as i64)),
    }
}

fn side(obj: &InMemDicomObject, tag: Tag, name: &str) -> std::result::Result<usize, String> {
    let n = required(integer(obj, tag, name)?, name)?;
    usize::try_from(n)
        .ok()
        .filter(|n| (1..=MAX_SIDE).contains(n))
        .ok_or_else(|| bad(name, tag, format!("{n} is not in 1..={MAX_SIDE}")))
}

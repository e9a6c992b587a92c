//! A writer of UK Biobank–style CMR zips (field 20209): the short-axis cine as one DICOM
//! series per slice (`CINE_segmented_SAX_b1` = basal … `_bN`), one uncompressed MR Image
//! Storage file per frame, and a `manifest.csv`, as `cmr/<eid>/<eid>_20209_2_0.zip`.
//!
//! The geometry is the NIfTI file's, in DICOM's patient coordinates (LPS: the NIfTI affine's
//! RAS x and y negated): `ImageOrientationPatient` holds the directions of the affine's first
//! column (along a row, x = DICOM column) and second column (down a column, y = DICOM row),
//! `ImagePositionPatient` the world position of voxel (0, 0, z), `PixelSpacing` the (y, x)
//! voxel size, `SliceThickness` the slice spacing, `TriggerTime` the frame's time after the R
//! wave. Intensities are stored as signed 16-bit values minus [`RESCALE_INTERCEPT`] with
//! `RescaleIntercept` = [`RESCALE_INTERCEPT`] and `RescaleSlope` 1, so that a reader must apply
//! the rescale (and read negative stored values) to recover the NIfTI intensities exactly.

use std::io::Write;
use std::path::Path;

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use zip::write::SimpleFileOptions;

use crate::cmr::Cine;
use crate::{Error, Result};

/// MR Image Storage.
pub const MR_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.4";
/// Explicit VR little endian.
pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";
/// Added back by `RescaleIntercept`: stored value = intensity − this.
pub const RESCALE_INTERCEPT: i32 = 1024;

/// The zip's name for a subject: `<eid>_20209_2_0.zip` (imaging visit 2, first array index).
pub fn cmr_zip_name(eid: u64) -> String {
    format!("{eid}_20209_2_0.zip")
}

/// A UID under the `2.25` (UUID-derived) root, unique within a cohort.
fn uid(eid: u64, kind: u128, z: usize, t: usize) -> String {
    let n = (u128::from(eid) << 40) | (kind << 32) | ((z as u128) << 16) | t as u128;
    format!("2.25.{n}")
}

/// A decimal string (VR DS) of at most 16 characters with as many decimals as fit.
fn ds(v: f64) -> String {
    for decimals in (0..=10).rev() {
        let mut s = format!("{v:.decimals$}");
        if s.contains('.') {
            let trimmed = s.trim_end_matches('0').trim_end_matches('.').len();
            s.truncate(trimmed);
        }
        if s == "-0" {
            s = "0".into();
        }
        if s.len() <= 16 {
            return s;
        }
    }
    format!("{v:.0}")
}

fn ds_list(values: &[f64]) -> String {
    values.iter().map(|&v| ds(v)).collect::<Vec<_>>().join("\\")
}

/// Puts a string element, padded to an even length as DICOM requires (UIDs with NUL).
fn put_str(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    let mut s = value.to_string();
    if s.len() % 2 == 1 {
        s.push(if vr == VR::UI { '\0' } else { ' ' });
    }
    obj.put(DataElement::new(tag, vr, PrimitiveValue::from(s)));
}

fn put_u16(obj: &mut InMemDicomObject, tag: Tag, value: u16) {
    obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
}

/// The geometry of the stack in LPS: row and column directions and the position of slice 0's
/// first voxel plus the step between slices.
struct Geometry {
    row: [f64; 3],
    col: [f64; 3],
    origin: [f64; 3],
    step: [f64; 3],
}

impl Geometry {
    fn of(affine: &[[f64; 4]; 3]) -> Self {
        // RAS → LPS flips the first two world axes.
        let lps = |c: usize| [-affine[0][c], -affine[1][c], affine[2][c]];
        let unit = |v: [f64; 3]| {
            let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
            if n > 0.0 { v.map(|x| x / n) } else { v }
        };
        Self {
            row: unit(lps(0)),
            col: unit(lps(1)),
            origin: lps(3),
            step: lps(2),
        }
    }

    fn position(&self, z: usize) -> [f64; 3] {
        [0, 1, 2].map(|i| self.origin[i] + z as f64 * self.step[i])
    }

    fn normal(&self) -> [f64; 3] {
        let (a, b) = (self.row, self.col);
        [
            a[1] * b[2] - a[2] * b[1],
            a[2] * b[0] - a[0] * b[2],
            a[0] * b[1] - a[1] * b[0],
        ]
    }
}

/// One frame of one slice as a DICOM Part 10 file.
fn frame_file(
    cine: &Cine,
    eid: u64,
    geometry: &Geometry,
    z: usize,
    t: usize,
) -> std::io::Result<Vec<u8>> {
    let [nx, ny, nz, _] = cine.dims;
    let mut obj = InMemDicomObject::new_empty();
    let series = z + 1;
    put_str(&mut obj, tags::SOP_CLASS_UID, VR::UI, MR_IMAGE_STORAGE);
    put_str(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, &uid(eid, 3, z, t));
    put_str(
        &mut obj,
        tags::IMAGE_TYPE,
        VR::CS,
        "ORIGINAL\\PRIMARY\\M\\NORM",
    );
    put_str(&mut obj, tags::MODALITY, VR::CS, "MR");
    put_str(
        &mut obj,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        &format!("CINE_segmented_SAX_b{series}"),
    );
    put_str(&mut obj, tags::PATIENT_ID, VR::LO, &eid.to_string());
    put_str(
        &mut obj,
        tags::SLICE_THICKNESS,
        VR::DS,
        &ds(cine.voxel_mm[2]),
    );
    put_str(
        &mut obj,
        tags::TRIGGER_TIME,
        VR::DS,
        &ds(t as f64 * cine.frame_ms),
    );
    put_str(
        &mut obj,
        tags::CARDIAC_NUMBER_OF_IMAGES,
        VR::IS,
        &cine.dims[3].to_string(),
    );
    put_str(
        &mut obj,
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        &uid(eid, 1, 0, 0),
    );
    put_str(
        &mut obj,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &uid(eid, 2, z, 0),
    );
    put_str(&mut obj, tags::SERIES_NUMBER, VR::IS, &series.to_string());
    put_str(
        &mut obj,
        tags::INSTANCE_NUMBER,
        VR::IS,
        &(t + 1).to_string(),
    );
    let position = geometry.position(z);
    put_str(
        &mut obj,
        tags::IMAGE_POSITION_PATIENT,
        VR::DS,
        &ds_list(&position),
    );
    let orientation = [geometry.row, geometry.col].concat();
    put_str(
        &mut obj,
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        &ds_list(&orientation),
    );
    put_str(
        &mut obj,
        tags::FRAME_OF_REFERENCE_UID,
        VR::UI,
        &uid(eid, 4, 0, 0),
    );
    let n = geometry.normal();
    let location = (0..3).map(|i| position[i] * n[i]).sum::<f64>();
    put_str(&mut obj, tags::SLICE_LOCATION, VR::DS, &ds(location));
    put_u16(&mut obj, tags::SAMPLES_PER_PIXEL, 1);
    put_str(
        &mut obj,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        "MONOCHROME2",
    );
    put_u16(&mut obj, tags::ROWS, ny as u16);
    put_u16(&mut obj, tags::COLUMNS, nx as u16);
    let spacing = [cine.voxel_mm[1], cine.voxel_mm[0]];
    put_str(&mut obj, tags::PIXEL_SPACING, VR::DS, &ds_list(&spacing));
    put_u16(&mut obj, tags::BITS_ALLOCATED, 16);
    put_u16(&mut obj, tags::BITS_STORED, 16);
    put_u16(&mut obj, tags::HIGH_BIT, 15);
    put_u16(&mut obj, tags::PIXEL_REPRESENTATION, 1);
    put_str(
        &mut obj,
        tags::RESCALE_INTERCEPT,
        VR::DS,
        &RESCALE_INTERCEPT.to_string(),
    );
    put_str(&mut obj, tags::RESCALE_SLOPE, VR::DS, "1");
    put_str(&mut obj, tags::RESCALE_TYPE, VR::LO, "US");
    // The plane of (z, t), x fastest: DICOM's row-by-row order with x = column.
    let start = (t * nz + z) * nx * ny;
    let plane = &cine.image[start..start + nx * ny];
    let stored: Vec<u16> = plane
        .iter()
        .map(|&v| {
            let s =
                (i32::from(v) - RESCALE_INTERCEPT).clamp(i32::from(i16::MIN), i32::from(i16::MAX));
            s as i16 as u16
        })
        .collect();
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(stored.into()),
    ));
    let file = obj
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(EXPLICIT_VR_LITTLE_ENDIAN))
        .map_err(std::io::Error::other)?;
    let mut bytes = Vec::new();
    file.write_all(&mut bytes).map_err(std::io::Error::other)?;
    Ok(bytes)
}

/// Writes `cine` as a UK Biobank–style zip of DICOM files at `path`, atomically (a temporary
/// sibling renamed into place), deflating the members at gzip `level` (0 stores them).
///
/// # Errors
/// a file error ([`Error::Core`]) naming the file when the cine does not fit DICOM (a side over 65535) or
/// writing fails.
pub fn write_cine_zip(path: &Path, cine: &Cine, eid: u64, level: u32) -> Result<()> {
    let [nx, ny, nz, nt] = cine.dims;
    if nx > usize::from(u16::MAX)
        || ny > usize::from(u16::MAX)
        || cine.image.len() != nx * ny * nz * nt
    {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("a cine of dimensions {:?} does not fit DICOM", cine.dims),
            ),
        ));
    }
    let geometry = Geometry::of(&cine.affine);
    let options = if level == 0 {
        SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored)
    } else {
        SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .compression_level(Some(i64::from(level.min(9))))
    };
    crate::io::write_file_atomic(path, |w| {
        let mut zip = zip::ZipWriter::new(w);
        let mut manifest =
            String::from("filename,seriesdescription,seriesnumber,instancenumber,triggertime\n");
        for z in 0..nz {
            for t in 0..nt {
                let name = format!("{}.dcm", uid(eid, 3, z, t));
                zip.start_file(name.as_str(), options)
                    .map_err(std::io::Error::other)?;
                zip.write_all(&frame_file(cine, eid, &geometry, z, t)?)?;
                manifest.push_str(&format!(
                    "{name},CINE_segmented_SAX_b{},{},{},{}\n",
                    z + 1,
                    z + 1,
                    t + 1,
                    ds(t as f64 * cine.frame_ms)
                ));
            }
        }
        zip.start_file("manifest.csv", options)
            .map_err(std::io::Error::other)?;
        zip.write_all(manifest.as_bytes())?;
        zip.finish().map_err(std::io::Error::other)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_strings_fit_sixteen_characters() {
        assert_eq!(ds(1.796875), "1.796875");
        assert_eq!(ds(10.0), "10");
        assert_eq!(ds(-1e-11), "0");
        assert_eq!(ds(-123.456_789_012_345), "-123.4567890123");
        assert!(ds(1.0e14 / 3.0).len() <= 16);
        assert_eq!(ds(f64::from(1.8f32)), "1.7999999523");
    }
}

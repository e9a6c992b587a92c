//! UK Biobank CMR DICOM zips (field 20209): an independent writer's file (pydicom,
//! `fixtures/make_cmr_dicom.py`) read to known voxels and geometry, and hostile zips — each an
//! error naming the file, before anything large is allocated.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::{fixture, format_error, write};
use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use mmcl_data::cmr::dicom::{MAX_MEMBER_BYTES, MAX_ZIP_MEMBERS, read_dicom_zip};
use mmcl_data::cmr::read_study;
use zip::write::SimpleFileOptions;

#[test]
fn pydicom_zip_reads_to_known_voxels_and_geometry() {
    let path = fixture("cmr_dicom/1000002_20209_2_0.zip");
    let study = read_study(&path, None).unwrap();
    // x = columns (5), y = rows (6), 3 slices (b1 first), 4 frames by TriggerTime.
    assert_eq!(study.dims, [5, 6, 3, 4]);
    // PixelSpacing is (rows 1.5, columns 1.25); z is the 10 mm between positions, not the
    // 8 mm SliceThickness.
    assert_eq!(study.voxel_mm, [1.25, 1.5, 10.0]);
    assert!(study.labels.is_none());
    for t in 0..4 {
        for z in 0..3 {
            for y in 0..6 {
                for x in 0..5 {
                    let stored = 1000 + 100 * z + 10 * t + 5 * y + x;
                    let expected = 0.5 * stored as f32 - 10.0;
                    let got = study.image[((t * 3 + z) * 6 + y) * 5 + x];
                    assert_eq!(got, expected, "x {x} y {y} z {z} t {t}");
                }
            }
        }
    }
    assert_eq!(read_dicom_zip(&path).unwrap(), study);
}

/// One frame of a small stack (4 columns × 3 rows, slices along -z, b1 at the top) as a Part
/// 10 file, after `edit` changed its object.
fn frame(z: usize, t: usize, edit: impl Fn(&mut InMemDicomObject)) -> Vec<u8> {
    let mut obj = InMemDicomObject::new_empty();
    let mut put = |tag: Tag, vr: VR, v: &str| {
        let mut s = v.to_string();
        if s.len() % 2 == 1 {
            s.push(if vr == VR::UI { '\0' } else { ' ' });
        }
        obj.put(DataElement::new(tag, vr, PrimitiveValue::from(s)));
    };
    put(tags::SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.4");
    put(tags::SOP_INSTANCE_UID, VR::UI, &format!("2.25.1{z}0{t}"));
    put(tags::SERIES_INSTANCE_UID, VR::UI, &format!("2.25.2{z}"));
    put(tags::SERIES_NUMBER, VR::IS, &(z + 1).to_string());
    put(tags::TRIGGER_TIME, VR::DS, &(30 * t).to_string());
    put(
        tags::IMAGE_POSITION_PATIENT,
        VR::DS,
        &format!("0\\0\\{}", -10.0 * z as f64),
    );
    put(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, "1\\0\\0\\0\\1\\0");
    put(tags::PIXEL_SPACING, VR::DS, "2\\2");
    for (tag, value) in [
        (tags::ROWS, 3u16),
        (tags::COLUMNS, 4),
        (tags::BITS_ALLOCATED, 16),
        (tags::PIXEL_REPRESENTATION, 1),
    ] {
        obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
    }
    let pixels: Vec<u16> = (0..12).map(|i| (i + 100 * z + 10 * t) as u16).collect();
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(pixels.into()),
    ));
    edit(&mut obj);
    let file = obj
        .with_meta(FileMetaTableBuilder::new().transfer_syntax("1.2.840.10008.1.2.1"))
        .unwrap();
    let mut bytes = Vec::new();
    file.write_all(&mut bytes).unwrap();
    bytes
}

/// A zip of `members` (name, bytes), deflated.
fn zip_of(dir: &Path, name: &str, members: &[(String, Vec<u8>)]) -> PathBuf {
    let path = dir.join(name);
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (member, bytes) in members {
        zip.start_file(member.as_str(), options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
    path
}

/// The members of a valid 2-slice × 3-frame stack, `edit` applied to slice `z`, frame `t`.
fn stack(edit_at: (usize, usize), edit: impl Fn(&mut InMemDicomObject)) -> Vec<(String, Vec<u8>)> {
    let mut members = Vec::new();
    for z in 0..2 {
        for t in 0..3 {
            let bytes = if (z, t) == edit_at {
                frame(z, t, &edit)
            } else {
                frame(z, t, |_| {})
            };
            members.push((format!("s{z}f{t}.dcm"), bytes));
        }
    }
    members
}

#[test]
fn a_written_stack_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = zip_of(dir.path(), "ok.zip", &stack((0, 0), |_| {}));
    let study = read_dicom_zip(&path).unwrap();
    assert_eq!(study.dims, [4, 3, 2, 3]);
    assert_eq!(study.voxel_mm, [2.0, 2.0, 10.0]);
    // Slice 0 is the largest position along row × column = +z: the slice at z = 0 mm.
    assert_eq!(study.image[..4], [0.0, 1.0, 2.0, 3.0]);
    assert_eq!(study.image[12], 100.0);
    assert_eq!(study.image[24], 10.0);
}

#[test]
fn hostile_and_inconsistent_zips_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let check = |name: &str, members: Vec<(String, Vec<u8>)>, expect: &str| {
        let path = zip_of(d, name, &members);
        let msg = format_error(read_dicom_zip(&path), &path);
        assert!(msg.contains(expect), "{name}: {msg}");
    };
    // Truncated DICOM: an element runs past the end of the member.
    let mut members = stack((0, 0), |_| {});
    let cut = members[1].1.len() - 7;
    members[1].1.truncate(cut);
    check("truncated.zip", members, "s0f1.dcm");
    // A `.dcm` member that is not DICOM.
    let mut members = stack((0, 0), |_| {});
    members[2].1 = b"hello".to_vec();
    check("not_dicom.zip", members, "no DICM magic");
    // One element of the frame `at` removed or set.
    let check_edit = |name: &str, at, edit: &dyn Fn(&mut InMemDicomObject), expect: &str| {
        check(name, stack(at, edit), expect);
    };
    let missing = |tag: Tag| {
        move |o: &mut InMemDicomObject| {
            o.remove_element(tag);
        }
    };
    let set = |tag: Tag, vr: VR, value: PrimitiveValue| {
        move |o: &mut InMemDicomObject| {
            o.put(DataElement::new(tag, vr, value.clone()));
        }
    };
    // Missing tags.
    check_edit(
        "no_rows.zip",
        (1, 2),
        &missing(tags::ROWS),
        "missing tag Rows",
    );
    check_edit(
        "no_spacing.zip",
        (0, 1),
        &missing(tags::PIXEL_SPACING),
        "missing tag PixelSpacing",
    );
    check_edit(
        "no_order.zip",
        (0, 1),
        &missing(tags::IMAGE_POSITION_PATIENT),
        "slice order is unknown",
    );
    // Inconsistent series.
    check_edit(
        "columns.zip",
        (1, 0),
        &set(tags::COLUMNS, VR::US, 2u16.into()),
        "same size",
    );
    check_edit(
        "tilted.zip",
        (1, 1),
        &set(
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            "1\\0\\0\\0\\0.8\\0.6 ".into(),
        ),
        "not parallel",
    );
    let mut members = stack((0, 0), |_| {});
    members.pop();
    check("frames.zip", members, "same number of frames");
    check_edit(
        "short_pixels.zip",
        (0, 2),
        &set(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(vec![1u16; 5].into()),
        ),
        "PixelData holds 10 bytes",
    );
    check_edit(
        "bits.zip",
        (0, 2),
        &set(tags::BITS_ALLOCATED, VR::US, 8u16.into()),
        "BitsAllocated is 8",
    );
    // Compressed transfer syntax.
    let mut members = stack((0, 0), |_| {});
    let jpeg = {
        let mut f = members[0].1.clone();
        let at = f
            .windows(19)
            .position(|w| w == b"1.2.840.10008.1.2.1")
            .unwrap();
        f[at..at + 19].copy_from_slice(b"1.2.840.10008.1.2.5");
        f
    };
    members[0].1 = jpeg;
    check("rle.zip", members, "not supported");
    // A declared element length of ~4 GiB in a small member.
    let mut members = stack((0, 0), |_| {});
    let f = &mut members[3].1;
    let at = f
        .windows(4)
        .position(|w| w == [0xE0, 0x7F, 0x10, 0x00])
        .unwrap();
    f[at + 8..at + 12].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    check("huge_length.zip", members, "declares 4294967280 bytes");
    // No image at all; manifest only.
    check(
        "empty.zip",
        vec![("manifest.csv".into(), b"a,b\n".to_vec())],
        "no DICOM image",
    );
    // Not a zip.
    let path = write(d, "fake.zip", b"PK\x03\x04 but not really a zip archive");
    format_error(read_dicom_zip(&path), &path);
    let path = write(d, "empty_file.zip", b"");
    format_error(read_study(&path, None), &path);
}

#[test]
fn zip_bombs_and_links_are_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    // One member just over the per-member limit, streamed into the zip as zeros (it deflates
    // to about 64 KiB).
    let path = dir.path().join("bomb.zip");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let options = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(false);
    zip.start_file("big.dcm", options).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = MAX_MEMBER_BYTES + 1;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        zip.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    zip.finish().unwrap();
    let msg = format_error(read_dicom_zip(&path), &path);
    assert!(
        msg.contains("big.dcm") && msg.contains("uncompressed"),
        "{msg}"
    );

    // Too many members.
    let path = dir.path().join("many.zip");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let stored = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..=MAX_ZIP_MEMBERS {
        zip.start_file(format!("{i}"), stored).unwrap();
    }
    zip.finish().unwrap();
    let msg = format_error(read_dicom_zip(&path), &path);
    assert!(msg.contains("members"), "{msg}");

    // A symbolic link among the images.
    let path = dir.path().join("link.zip");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    zip.start_file("a.dcm", stored).unwrap();
    zip.write_all(&frame(0, 0, |_| {})).unwrap();
    zip.add_symlink("b.dcm", "/etc/passwd", stored).unwrap();
    zip.finish().unwrap();
    let msg = format_error(read_dicom_zip(&path), &path);
    assert!(msg.contains("b.dcm") && msg.contains("regular"), "{msg}");
}

#[test]
fn a_segmentation_of_another_shape_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let zip = zip_of(dir.path(), "sa.zip", &stack((0, 0), |_| {}));
    let seg = fixture("cmr/1000001/seg_sa.nii.gz");
    let msg = format_error(read_study(&zip, Some(&seg)), &seg);
    assert!(msg.contains("does not match"), "{msg}");
}

#[test]
fn corrupted_members_never_panic() {
    // Deterministic byte flips and cuts of one member of a valid stack: each read is a study or
    // an error naming the zip, never a panic or a huge allocation (a flipped VR byte once made
    // the parser read a 4 GiB length that the length walk had read as 16-bit).
    let dir = tempfile::tempdir().unwrap();
    let base = stack((0, 0), |_| {});
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for case in 0..200 {
        let mut members = base.clone();
        let k = (next() % members.len() as u64) as usize;
        let bytes = &mut members[k].1;
        for _ in 0..1 + next() % 4 {
            let at = (next() % bytes.len() as u64) as usize;
            bytes[at] = next() as u8;
        }
        if case % 5 == 0 {
            let keep = (next() % bytes.len() as u64) as usize;
            bytes.truncate(keep);
        }
        let path = zip_of(dir.path(), &format!("fuzz{case}.zip"), &members);
        if let Err(e) = read_dicom_zip(&path) {
            common::assert_format_error(&e, &path);
        }
    }
}

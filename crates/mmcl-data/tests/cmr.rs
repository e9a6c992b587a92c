//! CMR studies written by nibabel: reading, phenotypes, preprocessing, augmentation, bad input.

mod common;

use std::path::PathBuf;

use common::max_abs_diff;
use mmcl_data::cmr::nifti::read_nifti;
use mmcl_data::cmr::{
    CmrConfig, CmrStudy, CropSpec, EsWithoutSegmentation, FrameSpec, ImageAugmentConfig, read_study,
};
use mmcl_data::rng::Rng;

fn fixture(name: &str) -> PathBuf {
    common::fixture("cmr").join(name)
}

/// The fixture study with its segmentation.
fn segmented_study() -> CmrStudy {
    read_study(
        &fixture("1000001/sa.nii.gz"),
        Some(&fixture("1000001/seg_sa.nii.gz")),
    )
    .unwrap()
}

fn expected(key: &str) -> f64 {
    let text = std::fs::read_to_string(fixture("1000001_expected.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v[key].as_f64().unwrap()
}

#[test]
fn nibabel_files_read_with_values_and_voxel_size() {
    let img = read_nifti(&fixture("1000001/sa.nii.gz")).unwrap();
    assert_eq!(img.dims, vec![24, 20, 5, 6]);
    assert_eq!(img.voxel_mm(), [1.8f32 as f64, 1.8f32 as f64, 8.0]);
    let exp = mmcl_core::npy::read_array(&fixture("1000001_sa_expected.npy")).unwrap();
    // The expected array is stored (t, z, y, x) in C order, i.e. x fastest like NIfTI.
    assert_eq!(exp.shape, vec![6, 5, 20, 24]);
    assert_eq!(img.data, exp.data);

    let be = read_nifti(&fixture("big_endian_scaled.nii")).unwrap();
    assert_eq!(be.dims, img.dims);
    let worst = max_abs_diff(&be.data, &exp.data);
    assert!(worst < 1e-3, "big-endian scaled file differs by {worst}");
}

#[test]
fn phenotypes_and_es_frame_from_the_segmentation() {
    let study = segmented_study();
    let p = study.phenotypes(Some(60.0)).unwrap().unwrap();
    assert_eq!(p.es_frame, expected("es_frame") as usize);
    for (ours, key) in [
        (p.lvedv, "lvedv"),
        (p.lvesv, "lvesv"),
        (p.lvm, "lvm"),
        (p.rvedv, "rvedv"),
    ] {
        // nibabel stores pixdim as float32: allow its rounding.
        assert!(
            (ours - expected(key)).abs() < 1e-5 * expected(key),
            "{key}: {ours}"
        );
    }
}

#[test]
fn preprocessing_stacks_frames_of_the_mid_slice() {
    let study = segmented_study();
    let cfg = CmrConfig {
        size: 32,
        crop: CropSpec::LvCentre { size_mm: 25.0 },
        ..CmrConfig::default()
    };
    let out = study.preprocess(&cfg).unwrap();
    assert_eq!(out.slice, 2, "middle of slices 1..=3 holding LV");
    assert_eq!(out.es_frame, 3);
    assert_eq!(
        (out.image.channels, out.image.height, out.image.width),
        (3, 32, 32)
    );
    assert!(out.image.data.iter().all(|v| (0.0..=1.0).contains(v)));
    // The LV blood pool (bright) sits at the centre of the LV-centred crop.
    let centre = out.image.data[16 * 32 + 16];
    let corner = out.image.data[0];
    assert!(centre > corner, "centre {centre} corner {corner}");

    // Without a segmentation: middle slice and the configured ES frame.
    let study = read_study(&fixture("1000001/sa.nii.gz"), None).unwrap();
    let cfg = CmrConfig {
        channels: vec![FrameSpec::Ed, FrameSpec::Es],
        crop: CropSpec::Fraction {
            top: 0.21,
            left: 0.325,
            height: 0.375,
            width: 0.375,
        },
        es_frame_without_segmentation: EsWithoutSegmentation::Frame(4),
        size: 16,
        ..CmrConfig::default()
    };
    let out = study.preprocess(&cfg).unwrap();
    assert_eq!((out.slice, out.es_frame, out.image.channels), (2, 4, 2));
    // By default end-systole is estimated from the images: the LV blood pool (x 12, y 9, the
    // only bright blob) is smallest in frame 3, as the segmentation says.
    let located = study.locate_lv(2).unwrap();
    assert_eq!(located.es_frame, 3);
    let (row, col) = located.centre;
    assert!(
        (row - 9.5).abs() < 0.5 && (col - 12.5).abs() < 0.5,
        "{row}, {col}"
    );
    let cfg = CmrConfig {
        es_frame_without_segmentation: EsWithoutSegmentation::FromImage,
        ..cfg
    };
    assert_eq!(study.preprocess(&cfg).unwrap().es_frame, 3);

    let aug = ImageAugmentConfig {
        size: 24,
        apply_prob: 1.0,
        ..Default::default()
    };
    let a = aug.apply(&out.image, &mut Rng::new(1));
    assert_eq!((a.channels, a.height, a.width), (2, 24, 24));
}

#[test]
fn bad_nifti_files_are_clear_errors() {
    let sa = fixture("1000001/sa.nii.gz");
    let err = read_study(&fixture("bad/three_d.nii.gz"), None).unwrap_err();
    assert!(
        err.to_string().contains("three_d.nii.gz") && err.to_string().contains("4-D"),
        "{err}"
    );
    let err = read_study(&sa, Some(&fixture("bad/seg_wrong_shape.nii.gz"))).unwrap_err();
    assert!(
        err.to_string().contains("seg_wrong_shape.nii.gz")
            && err.to_string().contains("does not match"),
        "{err}"
    );
    let err = read_nifti(&fixture("bad/truncated.nii")).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.nii.gz");
    std::fs::write(&empty, b"").unwrap();
    assert!(
        read_nifti(&empty)
            .unwrap_err()
            .to_string()
            .contains("empty")
    );
    let junk = dir.path().join("junk.nii");
    std::fs::write(&junk, vec![7u8; 400]).unwrap();
    assert!(read_nifti(&junk).unwrap_err().to_string().contains("NIfTI"));
    // A header claiming an enormous image is refused before anything is allocated.
    let mut hostile = std::fs::read(fixture("big_endian_scaled.nii")).unwrap();
    for k in 1..=7 {
        hostile[40 + 2 * k..42 + 2 * k].copy_from_slice(&32767i16.to_be_bytes());
    }
    hostile[40..42].copy_from_slice(&7i16.to_be_bytes());
    let huge = dir.path().join("huge.nii");
    std::fs::write(&huge, &hostile).unwrap();
    let err = read_nifti(&huge).unwrap_err().to_string();
    assert!(
        err.contains("huge.nii") && err.contains("too large"),
        "{err}"
    );
    // A voxel size that would ask for an absurd crop is an error, not an allocation.
    let mut tiny = std::fs::read(fixture("big_endian_scaled.nii")).unwrap();
    for k in 1..=2 {
        tiny[76 + 4 * k..80 + 4 * k].copy_from_slice(&1e-6f32.to_be_bytes());
    }
    let tiny_path = dir.path().join("tiny_voxels.nii");
    std::fs::write(&tiny_path, &tiny).unwrap();
    let study = read_study(&tiny_path, None).unwrap();
    let err = study
        .preprocess(&CmrConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not fit"), "{err}");
    let gz = dir.path().join("cut.nii.gz");
    let bytes = std::fs::read(&sa).unwrap();
    std::fs::write(&gz, &bytes[..bytes.len() / 2]).unwrap();
    let err = read_nifti(&gz).unwrap_err();
    assert!(err.to_string().contains("cut.nii.gz"), "{err}");
}

#[test]
fn rotation_and_resize_match_torchvision() {
    let img = mmcl_data::cmr::Image {
        data: (0..2 * 7 * 9).map(|v| v as f32 / 126.0).collect(),
        channels: 2,
        height: 7,
        width: 9,
    };
    let expected = mmcl_core::npy::read_array(&fixture("../image_rotate_30_m45.npy")).unwrap();
    let n = 2 * 7 * 9;
    // Nearest-neighbour ties may fall either way with floating-point details (torch's
    // matrix product may fuse operations): allow one pixel per channel to differ.
    for (angle, exp) in [(30.0, &expected.data[..n]), (-45.0, &expected.data[n..])] {
        let ours = img.rotate(angle).data;
        let differ = ours.iter().zip(exp).filter(|(a, b)| a != b).count();
        eprintln!("rotate {angle}°: {differ} of {n} pixels differ from torchvision");
        assert!(differ <= 2, "{angle}°: {differ} pixels differ");
    }
    let expected = mmcl_core::npy::read_array(&fixture("../image_resize_4x13.npy")).unwrap();
    let ours = img.resize(4, 13);
    let worst = max_abs_diff(&ours.data, &expected.data);
    assert!(worst < 1e-5, "{worst}");
}

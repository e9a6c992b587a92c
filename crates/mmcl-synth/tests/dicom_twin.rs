//! A cohort written with `cmr_format = "dicom"` (UK Biobank–style zips of DICOM files) reads
//! to the same studies and builds the same cache as its NIfTI twin.

mod common;

use mmcl_data::build::{BuildConfig, build_dataset};
use mmcl_data::cache::Cache;
use mmcl_data::cmr::{CmrConfig, read_study};
use mmcl_synth::dicom::cmr_zip_name;
use mmcl_synth::{CmrFormat, Cohort, WriteOptions};

#[test]
fn dicom_cohort_builds_the_same_cache_as_its_nifti_twin() {
    let dir = tempfile::tempdir().unwrap();
    let mut roots = Vec::new();
    for format in [CmrFormat::Nifti, CmrFormat::Dicom] {
        let mut cfg = common::small_cohort(4, 11, 48, 6, 5);
        cfg.cmr_format = format;
        let root = dir.path().join(format.name());
        Cohort::new(cfg)
            .unwrap()
            .write(&root, WriteOptions::default(), &|| {})
            .unwrap();
        roots.push(root);
    }
    let (nifti, dicom) = (&roots[0], &roots[1]);
    let eid = 1_000_001u64;
    let subject = |root: &std::path::Path| root.join("cmr").join(eid.to_string());
    assert!(subject(nifti).join("sa.nii.gz").is_file());
    assert!(!subject(dicom).join("sa.nii.gz").exists());
    let zip = subject(dicom).join(cmr_zip_name(eid));
    assert!(zip.is_file());

    // The same voxels, shape and voxel size: the writer's geometry and rescale invert exactly.
    let seg = subject(dicom).join("seg_sa.nii.gz");
    let a = read_study(&subject(nifti).join("sa.nii.gz"), Some(&seg)).unwrap();
    let b = read_study(&zip, Some(&seg)).unwrap();
    assert_eq!(a.dims, b.dims);
    assert_eq!(a.voxel_mm, b.voxel_mm);
    assert_eq!(a.image, b.image, "slice 0 basal and x = column in both");
    // Without the segmentation both locate the LV alike and take the same crop.
    let cfg = CmrConfig::default();
    let (a0, b0) = (
        read_study(&subject(nifti).join("sa.nii.gz"), None).unwrap(),
        read_study(&zip, None).unwrap(),
    );
    assert_eq!(a0.preprocess(&cfg).unwrap(), b0.preprocess(&cfg).unwrap());

    // The caches: images equal, phenotypes measured alike.
    let mut caches = Vec::new();
    for root in &roots {
        let out = root.with_extension("cache");
        let build = BuildConfig {
            root: root.clone(),
            output: out.clone(),
            cmr: CmrConfig {
                size: 48,
                ..CmrConfig::default()
            },
            ..BuildConfig::default()
        };
        let (_, report) = build_dataset(&build, &|_, _| {}).unwrap();
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
        caches.push(Cache::open(&out).unwrap());
    }
    assert_eq!(caches[0].len(), 4);
    assert_eq!(caches[1].len(), 4);
    for i in 0..4 {
        let (x, y) = (caches[0].image(i).unwrap(), caches[1].image(i).unwrap());
        assert_eq!(x.data, y.data, "subject {i}");
    }
    let (pa, pb) = (&caches[0].index().subjects, &caches[1].index().subjects);
    for (sa, sb) in pa.iter().zip(pb) {
        assert_eq!(sa.eid, sb.eid);
        for (va, vb) in sa.phenotypes.iter().zip(&sb.phenotypes) {
            match (va, vb) {
                (Some(va), Some(vb)) => {
                    assert!((va - vb).abs() <= 1e-9 * va.abs().max(1.0), "{va} vs {vb}")
                }
                _ => assert_eq!(va, vb),
            }
        }
    }
}

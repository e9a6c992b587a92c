//! The data layer's LV located without a segmentation (`mmcl_data::cmr::locate`) on the
//! synthetic cohort's cines, against the cohort's own segmentation.

mod common;

use mmcl_data::cmr::{CmrConfig, CmrStudy};
use mmcl_synth::{Cohort, SynthConfig};

/// What the heuristic got right on a cohort.
struct Measured {
    /// Distance (mm) from the segmentation's LV centre, per subject (infinite where nothing
    /// was found).
    errors: Vec<f64>,
    /// The same for the image centre (the fallback before the heuristic).
    image_centre: Vec<f64>,
    /// Frames between the estimated end-systole and the segmentation's.
    es_misses: Vec<usize>,
}

/// The heuristic on the middle slice of the first `subjects` cines of `cfg`, as
/// `CmrStudy::preprocess` runs it without a segmentation.
fn measure(cfg: SynthConfig, subjects: usize) -> Measured {
    let cohort = Cohort::new(cfg).unwrap();
    let mut m = Measured {
        errors: Vec::new(),
        image_centre: Vec::new(),
        es_misses: Vec::new(),
    };
    for i in 0..subjects {
        let cine = cohort.cine(&cohort.hidden_state(i));
        let study = CmrStudy {
            image: cine.image.iter().map(|&v| f32::from(v)).collect(),
            dims: cine.dims,
            voxel_mm: cine.voxel_mm,
            labels: Some(cine.labels.clone()),
        };
        let es = study.phenotypes(None).unwrap().unwrap().es_frame;
        let bare = CmrStudy {
            labels: None,
            ..study.clone()
        };
        let [nx, ny, nz, _] = study.dims;
        let z = nz / 2;
        let truth = study.segmented_lv_centre(z).unwrap();
        let mm = |a: (f64, f64)| {
            ((a.0 - truth.0) * study.voxel_mm[1]).hypot((a.1 - truth.1) * study.voxel_mm[0])
        };
        let found = bare.locate_lv(z);
        m.errors.push(found.map_or(f64::INFINITY, |f| mm(f.centre)));
        m.image_centre.push(mm((ny as f64 / 2.0, nx as f64 / 2.0)));
        m.es_misses
            .push(found.map_or(usize::MAX, |f| f.es_frame.abs_diff(es)));
        // What preprocessing reports agrees with the estimate.
        let out = bare.preprocess(&CmrConfig::default()).unwrap();
        assert_eq!(
            (out.slice, Some(out.es_frame)),
            (z, found.map(|f| f.es_frame))
        );
    }
    m
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

fn within(misses: &[usize], frames: usize) -> usize {
    misses.iter().filter(|&&m| m <= frames).count()
}

fn report(name: &str, m: &Measured) {
    eprintln!(
        "{name}: {} subjects, centre error mean {:.2} mm, max {:.2} mm (image centre mean {:.1}, \
         max {:.1}); end-systole exact in {}, within one frame in {}, within three in {}",
        m.errors.len(),
        mean(&m.errors),
        max(&m.errors),
        mean(&m.image_centre),
        max(&m.image_centre),
        within(&m.es_misses, 0),
        within(&m.es_misses, 1),
        within(&m.es_misses, 3),
    );
}

#[test]
fn the_lv_is_found_on_the_synthetic_cohort() {
    let subjects = 60;
    // The default cine: 128² pixels of 1.8 mm, 10 slices, 25 frames.
    let default = measure(common::small_cohort(subjects, 3, 128, 10, 25), subjects);
    report("default cine", &default);
    assert!(mean(&default.errors) < 1.0 && max(&default.errors) < 5.0);
    assert!(
        mean(&default.image_centre) > 15.0,
        "the old fallback is far off"
    );
    assert!(within(&default.es_misses, 1) * 10 >= subjects * 9);
    assert_eq!(within(&default.es_misses, 3), subjects);

    // The reduced cine of quick reproductions: 64² pixels of 2.5 mm, 8 slices, 8 frames.
    let mut cfg = SynthConfig::reproduce();
    cfg.subjects = subjects;
    cfg.seed = 3;
    let reduced = measure(cfg, subjects);
    report("reproduce cine", &reduced);
    assert!(mean(&reduced.errors) < 1.0 && max(&reduced.errors) < 5.0);
    assert!(within(&reduced.es_misses, 0) * 10 >= subjects * 9);
    assert_eq!(within(&reduced.es_misses, 1), subjects);
}

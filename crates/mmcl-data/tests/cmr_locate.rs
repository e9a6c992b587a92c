//! The LV located without a segmentation (`cmr::locate`) on synthetic beating hearts placed off
//! the image centre, its end-systolic frame, the fallbacks on degenerate studies, and the
//! segmentation path unchanged by it.

mod common;

use std::f64::consts::{PI, TAU};

use mmcl_data::cmr::{
    CmrConfig, CmrStudy, CropSpec, EsWithoutSegmentation, FrameSpec, Image, SliceSpec,
    normalise_intensity, read_study,
};
use mmcl_data::phenotypes::{LABEL_LV_BLOOD_POOL, LABEL_LV_MYOCARDIUM};
use mmcl_data::rng::Rng;

/// Partial-volume coverage of a pixel whose centre is `d` mm outside an edge (ramp of `w` mm).
fn cover(d: f64, w: f64) -> f64 {
    (0.5 - d / w).clamp(0.0, 1.0)
}

/// A synthetic short-axis cine with its segmentation: a beating LV (bright blood pool whose
/// radius shrinks to end-systole and recovers, a darker myocardium of constant area), an RV
/// crescent on a random side with a thin free wall, patchy epicardial fat, placed `offset_mm`
/// from the image centre in a random direction; around it a chest (body with subcutaneous fat
/// and texture, dark lungs, a static bright aorta next to the LV), a coil-sensitivity gradient,
/// Rician noise and, in some, a ghost flickering at the heart rate along the top edge.
/// Returns the study and its true end-systolic frame.
fn phantom(seed: u64, offset_mm: (f64, f64)) -> (CmrStudy, usize) {
    let mut rng = Rng::new(seed);
    let px = rng.uniform_in(1.5, 2.1);
    let nx = 96 + rng.below(40) as usize;
    let ny = 88 + rng.below(40) as usize;
    let (nz, nt) = (7, 16 + rng.below(15) as usize);
    let (fx, fy) = (nx as f64 * px, ny as f64 * px);
    let angle = rng.uniform_in(0.0, TAU);
    let dist = rng.uniform_in(offset_mm.0, offset_mm.1);
    let lv = (fx / 2.0 + dist * angle.cos(), fy / 2.0 + dist * angle.sin());
    let tilt = (rng.normal(), rng.normal());
    let r_ed = rng.uniform_in(18.0, 26.0);
    let es_ratio = rng.uniform_in(0.55, 0.75);
    let wall = rng.uniform_in(7.0, 10.0);
    let es = ((rng.uniform_in(0.3, 0.42) * nt as f64).round() as usize).clamp(1, nt - 2);
    let relax = (0.3 * nt as f64).max(1.0);
    // Fraction of the contraction: 0 at ED, 1 at ES, back to 0 by mid-diastole.
    let contraction = |t: usize| {
        let t = t as f64;
        if t <= es as f64 {
            0.5 * (1.0 - (PI * t / es as f64).cos())
        } else if t < es as f64 + relax {
            0.5 * (1.0 + (PI * (t - es as f64) / relax).cos())
        } else {
            0.0
        }
    };
    let rv_dir = rng.uniform_in(0.0, TAU);
    let aorta_dir = rv_dir + PI + rng.uniform_in(-1.0, 1.0);
    let aorta_r = rng.uniform_in(10.0, 13.0);
    let aorta_at = r_ed + wall + 18.0 + aorta_r;
    let aorta = (
        lv.0 + aorta_at * aorta_dir.cos(),
        lv.1 + aorta_at * aorta_dir.sin(),
    );
    let fat_phase = rng.uniform_in(0.0, TAU);
    let body = (fx / 2.0 + 5.0 * rng.normal(), fy / 2.0 + 5.0 * rng.normal());
    let body_axes = (0.47 * fx, 0.47 * fy);
    let lung_sides = [rv_dir + 0.5 * PI, rv_dir - 0.5 * PI];
    let texture: Vec<(f64, f64, f64)> = (0..4)
        .map(|_| {
            (
                rng.uniform_in(0.02, 0.08),
                rng.uniform_in(0.02, 0.08),
                rng.uniform_in(0.0, TAU),
            )
        })
        .collect();
    let bias = (rng.uniform_in(-0.3, 0.3), rng.uniform_in(-0.3, 0.3));
    let ghost = rng.chance(0.5);
    let noise = rng.uniform_in(0.02, 0.05);
    let gain = 300.0 * rng.uniform_in(0.7, 1.4);
    let (blood, myo, fat) = (1.0, rng.uniform_in(0.22, 0.32), rng.uniform_in(0.8, 0.95));

    let plane = nx * ny;
    // The static chest, the same in every slice and frame.
    let chest: Vec<f64> = (0..plane)
        .map(|p| {
            let (x, y) = ((p % nx) as f64 + 0.5, (p / nx) as f64 + 0.5);
            let (x, y) = (x * px, y * px);
            let e = ((x - body.0) / body_axes.0).powi(2) + ((y - body.1) / body_axes.1).powi(2);
            let mut v = if e > 1.0 {
                0.0
            } else if e > 0.8 {
                fat
            } else {
                let grain: f64 = texture
                    .iter()
                    .map(|&(a, b, p)| (a * x + b * y + p).sin())
                    .sum();
                0.35 * (1.0 + 0.05 * grain)
            };
            for side in lung_sides {
                let lc = (lv.0 + 80.0 * side.cos(), lv.1 + 80.0 * side.sin());
                if e < 0.8 && (x - lc.0).hypot(y - lc.1) < 42.0 {
                    v = 0.05;
                }
            }
            v + (0.9 - v) * cover((x - aorta.0).hypot(y - aorta.1) - aorta_r, px)
        })
        .collect();
    // A smooth coil sensitivity.
    let coil: Vec<f64> = (0..plane)
        .map(|p| {
            let (x, y) = ((p % nx) as f64 + 0.5, (p / nx) as f64 + 0.5);
            (bias.0 * (x / nx as f64 - 0.5) + bias.1 * (y / ny as f64 - 0.5)).exp()
        })
        .collect();
    let mut image = vec![0f32; plane * nz * nt];
    let mut labels = vec![0u8; plane * nz * nt];
    for t in 0..nt {
        let c = contraction(t);
        for k in 0..nz {
            let g = 1.0 - 0.08 * (k as f64 - 3.0).abs();
            let off = k as f64 - 3.0;
            let centre = (lv.0 + tilt.0 * off, lv.1 + tilt.1 * off);
            let r = g * r_ed * (1.0 - (1.0 - es_ratio) * c);
            let epi = (r * r + g * g * ((r_ed + wall).powi(2) - r_ed * r_ed)).sqrt();
            let rv_off = 0.55 * g * (r_ed + wall);
            let rv_r = g * (r_ed + wall) * (0.95 - 0.2 * c);
            let rv = (
                centre.0 + rv_off * rv_dir.cos(),
                centre.1 + rv_off * rv_dir.sin(),
            );
            let base = (t * nz + k) * plane;
            for j in 0..ny {
                for i in 0..nx {
                    let (x, y) = ((i as f64 + 0.5) * px, (j as f64 + 0.5) * px);
                    let mut v = chest[j * nx + i];
                    // The heart, outside in.
                    let d_lv = (x - centre.0).hypot(y - centre.1);
                    let d_rv = (x - rv.0).hypot(y - rv.1);
                    let outer = (d_lv - epi).min(d_rv - rv_r - 3.0);
                    if outer < 2.5 + px {
                        let phi = (y - centre.1).atan2(x - centre.0);
                        if (3.0 * phi + fat_phase).sin() > 0.2 {
                            v += (fat - v) * cover(outer - 2.5, px);
                        }
                    }
                    v += (myo - v) * cover(d_rv - rv_r - 3.0, px);
                    v += (blood - v) * cover(d_rv - rv_r, px);
                    v += (myo - v) * cover(d_lv - epi, px);
                    v += (blood - v) * cover(d_lv - r, px);
                    if ghost && y < 0.06 * fy {
                        v += 0.4 * c;
                    }
                    let signal = gain * v * coil[j * nx + i];
                    let (n1, n2) = (gain * noise * rng.normal(), gain * noise * rng.normal());
                    let idx = base + j * nx + i;
                    image[idx] = ((signal + n1).hypot(n2)).round() as f32;
                    labels[idx] = if d_lv < r {
                        LABEL_LV_BLOOD_POOL
                    } else if d_lv < epi {
                        LABEL_LV_MYOCARDIUM
                    } else if d_rv < rv_r {
                        3
                    } else {
                        0
                    };
                }
            }
        }
    }
    let study = CmrStudy {
        image,
        dims: [nx, ny, nz, nt],
        voxel_mm: [px, px, 8.0],
        labels: Some(labels),
    };
    (study, es)
}

fn without_labels(study: &CmrStudy) -> CmrStudy {
    CmrStudy {
        labels: None,
        ..study.clone()
    }
}

/// Distance in mm between two (row, column) pixel positions.
fn distance_mm(study: &CmrStudy, a: (f64, f64), b: (f64, f64)) -> f64 {
    ((a.0 - b.0) * study.voxel_mm[1]).hypot((a.1 - b.1) * study.voxel_mm[0])
}

#[test]
fn the_lv_is_found_off_centre_with_its_end_systole() {
    let (mut errors, mut old_errors, mut es_exact, mut es_worst) = (Vec::new(), Vec::new(), 0, 0);
    let subjects = 40u64;
    for seed in 0..subjects {
        let (study, es) = phantom(seed, (30.0, 40.0));
        let z = study.dims[2] / 2;
        let truth = study.segmented_lv_centre(z).unwrap();
        assert_eq!(study.phenotypes(None).unwrap().unwrap().es_frame, es);
        let found = without_labels(&study)
            .locate_lv(z)
            .unwrap_or_else(|| panic!("phantom {seed}: no LV found"));
        let error = distance_mm(&study, found.centre, truth);
        let [nx, ny, ..] = study.dims;
        let old = distance_mm(&study, (ny as f64 / 2.0, nx as f64 / 2.0), truth);
        assert!(
            error < 8.0,
            "phantom {seed}: {error:.1} mm off ({old:.1} mm for the image centre)"
        );
        errors.push(error);
        old_errors.push(old);
        let miss = found.es_frame.abs_diff(es);
        es_exact += usize::from(miss == 0);
        es_worst = es_worst.max(miss);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "{subjects} phantoms, LV 30–40 mm off centre: centre error mean {:.2} mm, max {:.2} mm \
         (image centre: mean {:.1}, min {:.1}); ES exact in {es_exact}, worst off by {es_worst}",
        mean(&errors),
        max(&errors),
        mean(&old_errors),
        old_errors.iter().copied().fold(f64::INFINITY, f64::min),
    );
    assert!(mean(&errors) < 3.0, "mean error {:.2} mm", mean(&errors));
    assert!(
        old_errors.iter().all(|&e| e > 25.0),
        "the old fallback would fail this test"
    );
    assert!(es_worst <= 1, "ES off by {es_worst} frames");
    assert!(
        es_exact * 10 >= subjects as usize * 8,
        "ES exact in {es_exact} of {subjects}"
    );
}

#[test]
fn preprocessing_without_segmentation_crops_on_the_located_lv() {
    let (study, es) = phantom(101, (30.0, 40.0));
    let bare = without_labels(&study);
    let cfg = CmrConfig {
        size: 48,
        crop: CropSpec::LvCentre { size_mm: 90.0 },
        ..CmrConfig::default()
    };
    let (with, without) = (
        study.preprocess(&cfg).unwrap(),
        bare.preprocess(&cfg).unwrap(),
    );
    assert_eq!((without.slice, without.es_frame), (with.slice, es));
    // The same anatomy in both crops: close pixel by pixel, unlike the image-centred crop.
    let centred = bare
        .preprocess(&CmrConfig {
            crop: CropSpec::Fraction {
                top: 0.5 - 45.0 / (study.dims[1] as f64 * study.voxel_mm[1]),
                left: 0.5 - 45.0 / (study.dims[0] as f64 * study.voxel_mm[0]),
                height: 90.0 / (study.dims[1] as f64 * study.voxel_mm[1]),
                width: 90.0 / (study.dims[0] as f64 * study.voxel_mm[0]),
            },
            ..cfg.clone()
        })
        .unwrap();
    let mad = |a: &Image, b: &Image| {
        a.data
            .iter()
            .zip(&b.data)
            .map(|(x, y)| (x - y).abs())
            .sum::<f32>()
            / a.data.len() as f32
    };
    let (located, image_centre) = (
        mad(&with.image, &without.image),
        mad(&with.image, &centred.image),
    );
    eprintln!(
        "mean |difference| to the segmentation's crop: located {located:.3}, image centre {image_centre:.3}"
    );
    assert!(
        located < 0.05 && image_centre > 3.0 * located,
        "{located} vs {image_centre}"
    );

    // A fixed frame in the configuration still wins over the estimate.
    let fixed = CmrConfig {
        es_frame_without_segmentation: EsWithoutSegmentation::Frame(2),
        ..cfg
    };
    assert_eq!(bare.preprocess(&fixed).unwrap().es_frame, 2);
}

/// The preprocessing of a segmented study as it was before the image-based heuristic: ES from
/// the segmentation, the middle of the slices holding LV, the crop on the labels' LV centroid.
fn segmented_reference(study: &CmrStudy, cfg: &CmrConfig) -> Image {
    let [nx, ny, nz, _] = study.dims;
    let labels = study.labels.as_ref().unwrap();
    let plane = |z: usize, t: usize| ((t * nz + z) * nx * ny, (t * nz + z + 1) * nx * ny);
    let es = study.phenotypes(None).unwrap().unwrap().es_frame;
    let with_lv: Vec<usize> = (0..nz)
        .filter(|&z| {
            let (a, b) = plane(z, 0);
            labels[a..b].contains(&LABEL_LV_BLOOD_POOL)
        })
        .collect();
    let z = match cfg.slice {
        SliceSpec::Index(z) => z,
        SliceSpec::MidVentricular => with_lv.get(with_lv.len() / 2).copied().unwrap_or(nz / 2),
    };
    let frames: Vec<usize> = cfg.channels.iter().map(|f| f.index(es)).collect();
    let mut stacked = Image::zeros(frames.len(), ny, nx);
    for (c, &t) in frames.iter().enumerate() {
        let (a, b) = plane(z, t);
        stacked.data[c * nx * ny..(c + 1) * nx * ny].copy_from_slice(&study.image[a..b]);
    }
    let CropSpec::LvCentre { size_mm } = cfg.crop else {
        panic!("an LV-centred crop")
    };
    let (a, b) = plane(z, 0);
    let (mut sy, mut sx, mut n) = (0.0, 0.0, 0usize);
    for (i, &l) in labels[a..b].iter().enumerate() {
        if l == LABEL_LV_BLOOD_POOL || l == LABEL_LV_MYOCARDIUM {
            sy += (i / nx) as f64 + 0.5;
            sx += (i % nx) as f64 + 0.5;
            n += 1;
        }
    }
    let (cy, cx) = if n > 0 {
        (sy / n as f64, sx / n as f64)
    } else {
        (ny as f64 / 2.0, nx as f64 / 2.0)
    };
    let h = ((size_mm / study.voxel_mm[1]).round() as usize).max(1);
    let w = ((size_mm / study.voxel_mm[0]).round() as usize).max(1);
    let top = (cy - h as f64 / 2.0).round() as isize;
    let left = (cx - w as f64 / 2.0).round() as isize;
    let mut out = stacked.crop(top, left, h, w).resize(cfg.size, cfg.size);
    normalise_intensity(&mut out.data, cfg.intensity);
    out
}

#[test]
fn a_segmentation_is_used_exactly_as_before() {
    let fixture = common::fixture("cmr/1000001");
    let nibabel = read_study(
        &fixture.join("sa.nii.gz"),
        Some(&fixture.join("seg_sa.nii.gz")),
    )
    .unwrap();
    let (phantom_study, _) = phantom(7, (30.0, 40.0));
    // Labels that disagree with the images: moved 12 pixels and one frame later, so that any
    // use of the image-based estimate would show.
    let mut moved = phantom_study.clone();
    let [nx, ny, nz, nt] = moved.dims;
    let old = moved.labels.take().unwrap();
    let mut labels = vec![0u8; old.len()];
    for t in 0..nt {
        for z in 0..nz {
            for y in 0..ny {
                for x in 12..nx {
                    let src = (((t + nt - 1) % nt * nz + z) * ny + y) * nx + x - 12;
                    labels[((t * nz + z) * ny + y) * nx + x] = old[src];
                }
            }
        }
    }
    moved.labels = Some(labels);
    for study in [&nibabel, &phantom_study, &moved] {
        for cfg in [
            CmrConfig {
                size: 32,
                crop: CropSpec::LvCentre { size_mm: 25.0 },
                ..CmrConfig::default()
            },
            CmrConfig {
                size: 40,
                channels: vec![FrameSpec::Es, FrameSpec::Frame(1)],
                slice: SliceSpec::Index(study.dims[2] - 1),
                es_frame_without_segmentation: EsWithoutSegmentation::Frame(1),
                ..CmrConfig::default()
            },
        ] {
            let out = study.preprocess(&cfg).unwrap();
            assert_eq!(out.image, segmented_reference(study, &cfg));
            assert_eq!(
                out.es_frame,
                study.phenotypes(None).unwrap().unwrap().es_frame
            );
        }
    }
}

#[test]
fn degenerate_studies_fall_back_without_error() {
    let study = |dims: [usize; 4], image: Vec<f32>| CmrStudy {
        image,
        dims,
        voxel_mm: [1.8, 1.8, 8.0],
        labels: None,
    };
    // A crop of the slice's shorter side (a 1 × 1 slice allows no more).
    let cfg = |s: &CmrStudy| CmrConfig {
        size: 16,
        crop: CropSpec::LvCentre {
            size_mm: 1.8 * s.dims[0].min(s.dims[1]) as f64,
        },
        ..CmrConfig::default()
    };
    let centred = |s: &CmrStudy| {
        let [nx, ny, ..] = s.dims;
        let h = nx.min(ny);
        let mut expected = Image::zeros(3, ny, nx);
        let z = s.dims[2] / 2;
        for c in 0..3 {
            let n = nx * ny;
            expected.data[c * n..(c + 1) * n].copy_from_slice(&s.image[z * n..(z + 1) * n]);
        }
        let top = (ny as f64 / 2.0 - h as f64 / 2.0).round() as isize;
        let left = (nx as f64 / 2.0 - h as f64 / 2.0).round() as isize;
        let mut out = expected.crop(top, left, h, h).resize(16, 16);
        normalise_intensity(&mut out.data, CmrConfig::default().intensity);
        out
    };
    let flat = study([40, 30, 3, 10], vec![100.0; 40 * 30 * 3 * 10]);
    let one_frame = {
        let (s, _) = phantom(3, (30.0, 40.0));
        let n = s.dims[0] * s.dims[1] * s.dims[2];
        study([s.dims[0], s.dims[1], s.dims[2], 1], s.image[..n].to_vec())
    };
    let pixel = study([1, 1, 1, 5], vec![1.0, 5.0, 2.0, 7.0, 3.0]);
    let nan = study([20, 20, 2, 4], vec![f32::NAN; 20 * 20 * 2 * 4]);
    let inf = study(
        [20, 20, 1, 4],
        (0..1600)
            .map(|i| if i % 7 == 0 { f32::INFINITY } else { 100.0 })
            .collect(),
    );
    for s in [&flat, &one_frame, &pixel, &nan, &inf] {
        let out = s
            .preprocess(&cfg(s))
            .unwrap_or_else(|e| panic!("{:?}: {e}", s.dims));
        assert_eq!(out.es_frame, 0, "{:?}", s.dims);
        assert!(s.locate_lv(s.dims[2] / 2).is_none(), "{:?}", s.dims);
        if s.image.iter().all(|v| v.is_finite()) {
            assert_eq!(out.image, centred(s), "{:?}: the image centre", s.dims);
        }
    }
    assert!(flat.locate_lv(3).is_none(), "a slice outside the stack");

    // Scattered non-finite voxels do not mislead it.
    let (mut s, es) = phantom(11, (30.0, 40.0));
    let truth = s.segmented_lv_centre(3).unwrap();
    let mut rng = Rng::new(5);
    for v in s.image.iter_mut() {
        if rng.chance(0.01) {
            *v = if rng.chance(0.5) {
                f32::NAN
            } else {
                f32::INFINITY
            };
        }
    }
    let found = without_labels(&s).locate_lv(3).unwrap();
    let error = distance_mm(&s, found.centre, truth);
    assert!(
        error < 8.0 && found.es_frame.abs_diff(es) <= 1,
        "{error} mm, ES {}",
        found.es_frame
    );
}

#[test]
fn the_end_systole_setting_reads_old_and_new_configurations() {
    let parse =
        |text: &str| toml::from_str::<CmrConfig>(text).map(|c| c.es_frame_without_segmentation);
    assert_eq!(parse("").unwrap(), EsWithoutSegmentation::FromImage);
    assert_eq!(
        parse("es_frame_without_segmentation = 4").unwrap(),
        EsWithoutSegmentation::Frame(4)
    );
    assert_eq!(
        parse("es_frame_without_segmentation = \"image\"").unwrap(),
        EsWithoutSegmentation::FromImage
    );
    for bad in ["-1", "\"ES\"", "2.5"] {
        let err = parse(&format!("es_frame_without_segmentation = {bad}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("a frame number or \"image\""), "{bad}: {err}");
    }
    let json: CmrConfig = serde_json::from_str(r#"{"es_frame_without_segmentation": 0}"#).unwrap();
    assert_eq!(
        json.es_frame_without_segmentation,
        EsWithoutSegmentation::Frame(0)
    );
    for cfg in [
        CmrConfig::default(),
        CmrConfig {
            es_frame_without_segmentation: EsWithoutSegmentation::Frame(7),
            ..CmrConfig::default()
        },
    ] {
        let text = toml::to_string(&cfg).unwrap();
        assert_eq!(toml::from_str::<CmrConfig>(&text).unwrap(), cfg, "{text}");
        let json = serde_json::to_string(&cfg).unwrap();
        assert_eq!(
            serde_json::from_str::<CmrConfig>(&json).unwrap(),
            cfg,
            "{json}"
        );
    }
    assert!(
        toml::to_string(&CmrConfig::default())
            .unwrap()
            .contains("es_frame_without_segmentation = \"image\"")
    );
}

//! Cardiac phenotypes measured from a short-axis segmentation, and their UK Biobank fields.
//!
//! The synthetic cohort writes its `phenotypes.csv` with [`measure_phenotypes`], and the data
//! layer recomputes phenotypes from `seg_sa.nii.gz` with the same function, so the two agree
//! exactly.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Label of the LV blood pool in `seg_sa.nii.gz`.
pub const LABEL_LV_BLOOD_POOL: u8 = 1;
/// Label of the LV myocardium.
pub const LABEL_LV_MYOCARDIUM: u8 = 2;
/// Label of the RV blood pool.
pub const LABEL_RV_BLOOD_POOL: u8 = 3;
/// Myocardial density used for LV mass, g/mL.
pub const MYOCARDIAL_DENSITY_G_PER_ML: f64 = 1.05;

/// The phenotypes derived from one subject's segmentation (volumes in mL, fractions in %,
/// mass in g, cardiac output in L/min).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CardiacPhenotypes {
    /// LV end-diastolic volume.
    pub lvedv: f64,
    /// LV end-systolic volume.
    pub lvesv: f64,
    /// LV stroke volume.
    pub lvsv: f64,
    /// LV ejection fraction.
    pub lvef: f64,
    /// LV cardiac output (needs a heart rate; `NaN` without one).
    pub lvco: f64,
    /// LV myocardial mass at end-diastole.
    pub lvm: f64,
    /// RV end-diastolic volume.
    pub rvedv: f64,
    /// RV end-systolic volume (at the LV's end-systolic frame).
    pub rvesv: f64,
    /// RV stroke volume.
    pub rvsv: f64,
    /// RV ejection fraction.
    pub rvef: f64,
    /// The end-systolic frame (smallest LV blood-pool volume; end-diastole is frame 0).
    pub es_frame: usize,
}

/// A phenotype and its UK Biobank field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhenotypeField {
    /// Short name used in our tables and reports (`lvedv`, …).
    pub name: &'static str,
    /// UK Biobank field id of the imaging-derived phenotype (24100-series).
    pub field: u32,
    /// Older UK Biobank field carrying the same quantity, where one exists (22420-series).
    pub legacy_field: Option<u32>,
    /// Unit.
    pub unit: &'static str,
}

/// The phenotypes of [`CardiacPhenotypes`] in UK Biobank field order 24100–24109.
pub const PHENOTYPE_FIELDS: [PhenotypeField; 10] = [
    PhenotypeField {
        name: "lvedv",
        field: 24100,
        legacy_field: Some(22421),
        unit: "mL",
    },
    PhenotypeField {
        name: "lvesv",
        field: 24101,
        legacy_field: Some(22422),
        unit: "mL",
    },
    PhenotypeField {
        name: "lvsv",
        field: 24102,
        legacy_field: Some(22423),
        unit: "mL",
    },
    PhenotypeField {
        name: "lvef",
        field: 24103,
        legacy_field: Some(22420),
        unit: "%",
    },
    PhenotypeField {
        name: "lvco",
        field: 24104,
        legacy_field: Some(22424),
        unit: "L/min",
    },
    PhenotypeField {
        name: "lvm",
        field: 24105,
        legacy_field: None,
        unit: "g",
    },
    PhenotypeField {
        name: "rvedv",
        field: 24106,
        legacy_field: None,
        unit: "mL",
    },
    PhenotypeField {
        name: "rvesv",
        field: 24107,
        legacy_field: None,
        unit: "mL",
    },
    PhenotypeField {
        name: "rvsv",
        field: 24108,
        legacy_field: None,
        unit: "mL",
    },
    PhenotypeField {
        name: "rvef",
        field: 24109,
        legacy_field: None,
        unit: "%",
    },
];

/// The unit of the phenotype named `name` (`lvedv` → `mL`, case-insensitive), if it is one of
/// [`PHENOTYPE_FIELDS`]: for axis labels and tables, which must never mix units unlabelled.
pub fn phenotype_unit(name: &str) -> Option<&'static str> {
    PHENOTYPE_FIELDS
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case(name))
        .map(|f| f.unit)
}

/// The UK Biobank column name of a field at the imaging visit: `24100-2.0`.
pub fn ukb_column(field: u32) -> String {
    format!("{field}-2.0")
}

impl CardiacPhenotypes {
    /// Values in the order of [`PHENOTYPE_FIELDS`].
    pub fn values(&self) -> [f64; 10] {
        [
            self.lvedv, self.lvesv, self.lvsv, self.lvef, self.lvco, self.lvm, self.rvedv,
            self.rvesv, self.rvsv, self.rvef,
        ]
    }
}

/// Measures the phenotypes of a 4-D label volume.
///
/// `labels` is in NIfTI order (x fastest, then y, z slice, t frame) with
/// `dims = [x, y, z, t]`; `voxel_mm` is the voxel size (pixdim 1–3) in mm. End-diastole is
/// frame 0; end-systole is the frame of smallest LV blood-pool volume (the first, on ties).
/// Cardiac output is stroke volume × heart rate when a heart rate is given.
///
/// # Errors
/// When the array length does not match `dims`, a voxel size is not positive and finite, or
/// there are no frames.
pub fn measure_phenotypes(
    labels: &[u8],
    dims: [usize; 4],
    voxel_mm: [f64; 3],
    heart_rate_bpm: Option<f64>,
) -> Result<CardiacPhenotypes> {
    let [nx, ny, nz, nt] = dims;
    let frame_len = nx * ny * nz;
    if nt == 0 || frame_len == 0 {
        return Err(Error::InvalidInput(format!(
            "segmentation has an empty dimension: {dims:?}"
        )));
    }
    if labels.len() != frame_len * nt {
        return Err(Error::InvalidInput(format!(
            "segmentation holds {} voxels but its dimensions {dims:?} need {}",
            labels.len(),
            frame_len * nt
        )));
    }
    if voxel_mm.iter().any(|v| !v.is_finite() || *v <= 0.0) {
        return Err(Error::InvalidInput(format!(
            "voxel size must be positive, got {voxel_mm:?} mm"
        )));
    }
    let ml_per_voxel = voxel_mm[0] * voxel_mm[1] * voxel_mm[2] / 1000.0;
    // counts[t][label] for labels 0..=3 (anything else is ignored).
    let counts: Vec<[u64; 4]> = labels
        .chunks_exact(frame_len)
        .map(|frame| {
            let mut c = [0u64; 4];
            for &l in frame {
                if (l as usize) < 4 {
                    c[l as usize] += 1;
                }
            }
            c
        })
        .collect();
    let volume = |t: usize, label: u8| counts[t][label as usize] as f64 * ml_per_voxel;
    let es_frame = (0..nt)
        .min_by(|&a, &b| {
            counts[a][LABEL_LV_BLOOD_POOL as usize]
                .cmp(&counts[b][LABEL_LV_BLOOD_POOL as usize])
                .then(a.cmp(&b))
        })
        .unwrap_or(0);
    let lvedv = volume(0, LABEL_LV_BLOOD_POOL);
    let lvesv = volume(es_frame, LABEL_LV_BLOOD_POOL);
    let rvedv = volume(0, LABEL_RV_BLOOD_POOL);
    let rvesv = volume(es_frame, LABEL_RV_BLOOD_POOL);
    let lvsv = lvedv - lvesv;
    let rvsv = rvedv - rvesv;
    let fraction = |sv: f64, edv: f64| {
        if edv > 0.0 {
            100.0 * sv / edv
        } else {
            f64::NAN
        }
    };
    Ok(CardiacPhenotypes {
        lvedv,
        lvesv,
        lvsv,
        lvef: fraction(lvsv, lvedv),
        lvco: heart_rate_bpm.map_or(f64::NAN, |hr| lvsv * hr / 1000.0),
        lvm: volume(0, LABEL_LV_MYOCARDIUM) * MYOCARDIAL_DENSITY_G_PER_ML,
        rvedv,
        rvesv,
        rvsv,
        rvef: fraction(rvsv, rvedv),
        es_frame,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_mass_and_fractions() -> Result<()> {
        // 10x10 slices, 2 slices, 3 frames; voxel 2x2x5 mm = 0.02 mL.
        let dims = [10, 10, 2, 3];
        let frame = 200;
        let mut seg = vec![0u8; frame * 3];
        let lv = [50, 20, 30]; // voxels per frame
        let rv = [40, 25, 30];
        for t in 0..3 {
            let f = &mut seg[t * frame..(t + 1) * frame];
            f[..lv[t]].fill(LABEL_LV_BLOOD_POOL);
            f[lv[t]..lv[t] + 10].fill(LABEL_LV_MYOCARDIUM);
            f[100..100 + rv[t]].fill(LABEL_RV_BLOOD_POOL);
        }
        let p = measure_phenotypes(&seg, dims, [2.0, 2.0, 5.0], Some(60.0))?;
        assert_eq!(p.es_frame, 1);
        assert!((p.lvedv - 1.0).abs() < 1e-12);
        assert!((p.lvesv - 0.4).abs() < 1e-12);
        assert!((p.lvef - 60.0).abs() < 1e-9);
        assert!((p.lvm - 0.2 * 1.05).abs() < 1e-12);
        assert!((p.rvesv - 0.5).abs() < 1e-12, "RV at the LV's ES frame");
        assert!((p.lvco - 0.6 * 60.0 / 1000.0).abs() < 1e-12);
        Ok(())
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(measure_phenotypes(&[0; 10], [2, 2, 2, 2], [1.0; 3], None).is_err());
        assert!(measure_phenotypes(&[0; 8], [2, 2, 2, 1], [1.0, 0.0, 1.0], None).is_err());
        assert!(measure_phenotypes(&[], [0, 2, 2, 1], [1.0; 3], None).is_err());
        assert_eq!(ukb_column(24100), "24100-2.0");
    }
}

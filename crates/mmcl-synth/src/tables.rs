//! The cohort's CSV tables: `phenotypes.csv`, `diagnoses.csv` and `hidden_state.csv`.
//!
//! Numbers are written in Rust's shortest round-trip form, so a reader parsing them gets the
//! exact values (the data layer's recomputation from the segmentation compares equal).

use std::io::Write;
use std::path::Path;

use mmcl_data::phenotypes::{CardiacPhenotypes, PHENOTYPE_FIELDS, ukb_column};

use crate::Result;
use crate::cohort::SubjectRecord;
use crate::io::write_file_atomic;

/// File name of the phenotype table.
pub const PHENOTYPES_CSV: &str = "phenotypes.csv";
/// File name of the diagnosis table.
pub const DIAGNOSES_CSV: &str = "diagnoses.csv";
/// File name of the ground-truth table.
pub const HIDDEN_STATE_CSV: &str = "hidden_state.csv";
/// Header of the diagnosis table's code column; codes are joined by `;`.
pub const ICD10_COLUMN: &str = "icd10_codes";

/// The header of `phenotypes.csv`: `eid` and the UK Biobank columns `24100-2.0` … `24109-2.0`.
pub fn phenotype_header() -> Vec<String> {
    std::iter::once("eid".to_string())
        .chain(PHENOTYPE_FIELDS.iter().map(|f| ukb_column(f.field)))
        .collect()
}

fn phenotype_row(eid: u64, p: &CardiacPhenotypes) -> String {
    let mut row = eid.to_string();
    for v in p.values() {
        row.push(',');
        if v.is_finite() {
            row.push_str(&v.to_string());
        }
    }
    row
}

/// Writes `phenotypes.csv` into `dir`.
///
/// # Errors
/// a file error ([`crate::Error::Core`]) naming the file.
pub fn write_phenotypes(dir: &Path, records: &[SubjectRecord]) -> Result<()> {
    write_file_atomic(&dir.join(PHENOTYPES_CSV), |w| {
        writeln!(w, "{}", phenotype_header().join(","))?;
        for r in records {
            writeln!(w, "{}", phenotype_row(r.state.eid, &r.phenotypes))?;
        }
        Ok(())
    })
}

/// Writes `diagnoses.csv` (`eid,icd10_codes`, codes joined by `;`, empty for none) into `dir`.
///
/// # Errors
/// a file error ([`crate::Error::Core`]) naming the file.
pub fn write_diagnoses(dir: &Path, records: &[SubjectRecord]) -> Result<()> {
    write_file_atomic(&dir.join(DIAGNOSES_CSV), |w| {
        writeln!(w, "eid,{ICD10_COLUMN}")?;
        for r in records {
            writeln!(w, "{},{}", r.state.eid, r.state.icd10_codes().join(";"))?;
        }
        Ok(())
    })
}

/// The columns of `hidden_state.csv`, with their meaning (used by the cohort README).
pub const HIDDEN_STATE_COLUMNS: [(&str, &str); 43] = [
    ("eid", "participant id"),
    ("age", "age at the imaging visit, years"),
    ("sex", "M or F"),
    ("height_cm", "height, cm"),
    ("weight_kg", "weight, kg"),
    ("bmi", "body-mass index, kg/m²"),
    ("bsa", "body-surface area (Mosteller), m²"),
    ("hypertension", "0/1"),
    ("diabetes", "0/1"),
    ("diabetes_type1", "0/1 (type 1 among diabetics)"),
    ("cad", "coronary artery disease, 0/1"),
    ("prior_mi", "prior myocardial infarction, 0/1"),
    (
        "territory",
        "hypokinetic territory: anterior, inferior, lateral or empty",
    ),
    ("af", "atrial fibrillation, 0/1"),
    ("lvh", "LV hypertrophy, 0/1"),
    ("lvedv", "hidden LV end-diastolic volume, mL"),
    ("lvesv", "hidden LV end-systolic volume, mL"),
    ("lvef", "hidden LV ejection fraction, %"),
    ("lvm", "hidden LV mass, g"),
    ("rvedv", "hidden RV end-diastolic volume, mL"),
    ("rvesv", "hidden RV end-systolic volume, mL"),
    ("rvef", "hidden RV ejection fraction, %"),
    ("hypokinesis", "severity of the regional hypokinesis, 0-1"),
    (
        "territory_wall",
        "wall thickness left in the territory, relative",
    ),
    (
        "heart_rate_bpm",
        "intrinsic mean heart rate at rest (the ECG's), bpm",
    ),
    (
        "cmr_heart_rate_bpm",
        "heart rate during the CMR scan (cine cycle, cardiac output), bpm",
    ),
    (
        "ecg_heart_rate_bpm",
        "heart rate of the ECG strip (mean RR of its beats), bpm",
    ),
    ("rr_variability", "RR standard deviation / mean"),
    ("pr_ms", "PR interval, ms (sinus rhythm)"),
    ("p_ms", "P-wave duration, ms"),
    ("qrs_ms", "QRS duration, ms"),
    ("qtc_ms", "QTc (Bazett), ms"),
    (
        "frontal_axis_deg",
        "direction of the main QRS force, degrees",
    ),
    (
        "horizontal_rotation_deg",
        "anterior rotation of the QRS forces, degrees",
    ),
    ("qrs_amplitude_mv", "magnitude of the main QRS dipole, mV"),
    ("t_ratio", "T dipole / QRS dipole"),
    ("q_waves", "pathological Q waves, 0/1"),
    (
        "ischaemic_t_inversion",
        "T inversion facing the territory, 0/1",
    ),
    ("strain", "LVH strain pattern, 0/1"),
    ("ecg_r_axis", "device-measured QRS axis, degrees"),
    ("ecg_qrs_ms", "device-measured QRS duration, ms"),
    ("cmr_es_frame", "end-systolic frame of the cine"),
    ("icd10_codes", "the codes written to diagnoses.csv"),
];

fn hidden_row(r: &SubjectRecord) -> String {
    let s = &r.state;
    let c = &s.conditions;
    let b = |x: bool| if x { "1" } else { "0" };
    let f = |x: f64| x.to_string();
    [
        s.eid.to_string(),
        f(s.age),
        (if s.male { "M" } else { "F" }).to_string(),
        f(s.height_cm),
        f(s.weight_kg),
        f(s.bmi),
        f(s.bsa),
        b(c.hypertension).into(),
        b(c.diabetes).into(),
        b(c.diabetes_type1).into(),
        b(c.cad).into(),
        b(c.prior_mi).into(),
        c.territory.map_or("", |t| t.name()).into(),
        b(c.af).into(),
        b(c.lvh).into(),
        f(s.lvedv),
        f(s.lvesv),
        f(s.lvef),
        f(s.lvm),
        f(s.rvedv),
        f(s.rvesv),
        f(s.rvef),
        f(s.hypokinesis),
        f(s.territory_wall),
        f(s.heart_rate_bpm),
        f(s.cmr_heart_rate_bpm),
        f(r.ecg_heart_rate_bpm),
        f(s.rr_variability),
        if c.af { String::new() } else { f(s.pr_ms) },
        if c.af { String::new() } else { f(s.p_ms) },
        f(s.qrs_ms),
        f(s.qtc_ms),
        f(s.frontal_axis_deg),
        f(s.horizontal_rotation_deg),
        f(s.qrs_amplitude_mv),
        f(s.t_ratio),
        b(s.q_waves).into(),
        b(s.ischaemic_t_inversion).into(),
        b(s.strain).into(),
        r.ecg.r_axis.to_string(),
        r.ecg.qrs_duration.to_string(),
        r.phenotypes.es_frame.to_string(),
        s.icd10_codes().join(";"),
    ]
    .join(",")
}

/// Writes `hidden_state.csv` (the ground truth, for analysis only) into `dir`.
///
/// # Errors
/// a file error ([`crate::Error::Core`]) naming the file.
pub fn write_hidden_state(dir: &Path, records: &[SubjectRecord]) -> Result<()> {
    write_file_atomic(&dir.join(HIDDEN_STATE_CSV), |w| {
        let header: Vec<&str> = HIDDEN_STATE_COLUMNS.iter().map(|(n, _)| *n).collect();
        writeln!(w, "{}", header.join(","))?;
        for r in records {
            writeln!(w, "{}", hidden_row(r))?;
        }
        Ok(())
    })
}

//! The cohort is learnable but not trivial: from classical ECG features a linear model detects
//! AF well, estimates LV mass moderately and EF poorly; the CMR segmentation recovers every
//! phenotype almost exactly.

mod common;

use mmcl_synth::Cohort;
use mmcl_synth::analysis::learnability;

#[test]
fn ecg_carries_the_anatomy_weakly_and_the_cmr_strongly() {
    // The hidden state and the ECG do not depend on the cine's size; a small cine is enough.
    let cfg = common::small_cohort(800, 2024, 64, 10, 6);
    let cohort = Cohort::new(cfg).unwrap();
    let l = learnability(&cohort, 800, 5).unwrap();
    let get = |v: &[(&str, f64)], name: &str| v.iter().find(|(n, _)| *n == name).unwrap().1;
    eprintln!("{l:#?}");

    let af = get(&l.ecg_condition_auroc, "af");
    assert!(af > 0.95, "AF AUROC from ECG features {af}");
    let lvm = get(&l.ecg_phenotype_r2, "lvm");
    assert!(
        (0.25..0.7).contains(&lvm),
        "LV mass R² from ECG features {lvm}"
    );
    let lvef = get(&l.ecg_phenotype_r2, "lvef");
    assert!(lvef < 0.25, "LVEF R² from ECG features {lvef}");
    for (name, r2) in &l.cmr_phenotype_r2 {
        assert!(*r2 > 0.97, "{name}: segmentation vs hidden state R² {r2}");
    }
}

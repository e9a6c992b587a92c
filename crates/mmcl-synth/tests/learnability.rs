//! The cohort is learnable but not trivial: from classical ECG features a linear model detects
//! AF well and estimates the anatomy through the couplings' effect sizes (well but not exactly
//! with the default couplings, weakly with `Couplings::weak()`), never the negative control
//! (RVEF); the CMR segmentation recovers every phenotype almost exactly.

mod common;

use mmcl_synth::analysis::{Learnability, learnability};
use mmcl_synth::{Cohort, Couplings};

fn cohort_learnability(couplings: Couplings) -> Learnability {
    // The hidden state and the ECG do not depend on the cine's size; a small cine is enough.
    let mut cfg = common::small_cohort(800, 2024, 64, 10, 6);
    cfg.couplings = couplings;
    let cohort = Cohort::new(cfg).unwrap();
    learnability(&cohort, 800, 5).unwrap()
}

fn get(v: &[(&str, f64)], name: &str) -> f64 {
    v.iter().find(|(n, _)| *n == name).unwrap().1
}

#[test]
fn ecg_carries_the_anatomy_through_the_couplings_and_the_cmr_exactly() {
    let l = cohort_learnability(Couplings::default());
    eprintln!("{l:#?}");
    let af = get(&l.ecg_condition_auroc, "af");
    assert!(af > 0.95, "AF AUROC from ECG features {af}");
    let lvm = get(&l.ecg_phenotype_r2, "lvm");
    assert!(
        (0.5..0.9).contains(&lvm),
        "LV mass R² from ECG features {lvm}"
    );
    let lvef = get(&l.ecg_phenotype_r2, "lvef");
    assert!(
        (0.3..0.85).contains(&lvef),
        "LVEF R² from ECG features {lvef}"
    );
    // The negative control: visible to the CMR, not to the ECG.
    let rvef = get(&l.ecg_phenotype_r2, "rvef");
    assert!(rvef < 0.05, "RVEF R² from ECG features {rvef}");
    for (name, r2) in &l.cmr_phenotype_r2 {
        assert!(*r2 > 0.97, "{name}: segmentation vs hidden state R² {r2}");
    }

    // The weak couplings of the earlier generator: LV mass moderately, EF poorly.
    let weak = cohort_learnability(Couplings::weak());
    let lvm_weak = get(&weak.ecg_phenotype_r2, "lvm");
    assert!(lvm_weak < lvm - 0.1, "weak {lvm_weak} vs default {lvm}");
    assert!(get(&weak.ecg_phenotype_r2, "lvef") < 0.25);
}

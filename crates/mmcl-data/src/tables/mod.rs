//! Subject tables: UK Biobank phenotypes, ICD-10 diagnoses turned into disease labels,
//! standardisation with missing-value masks, joining modalities by `eid`, and deterministic
//! (stratified) splits.
//!
//! # Phenotypes CSV
//! A header row with `eid` and UK Biobank columns `<field>-<instance>.<array>`; for every
//! phenotype of [`PHENOTYPE_FIELDS`](crate::phenotypes::PHENOTYPE_FIELDS) the imaging-visit
//! column `24100-2.0` … `24109-2.0` is used, else the legacy column (`22421-2.0` …), else a
//! column named like the phenotype (`lvedv`). Empty cells and `NA`/`NaN` are missing values
//! (masked, reported); `inf`/`-inf` are missing values too, with a warning naming the file,
//! column and count ([`PhenotypeTable::warnings`]); anything else that is not a number is an
//! error naming the file, line and column. A repeated `eid` is an error naming both lines.
//!
//! # Dialects
//! Both tables take the delimiter of their header line: `,`, or `;` or a tab where the header
//! has more of those (spreadsheets saved in locales with a decimal comma; the `txt` output of
//! UK Biobank's `ukbconv`). Column names in `ukbconv`'s R layout (`f.eid`, `f.24100.2.0`) read
//! as their CSV names (`eid`, `24100-2.0`). Where the delimiter is not a comma, a number may
//! carry a decimal comma (`152,3`).
//!
//! # Diagnoses CSV
//! Columns `eid` and `icd10` (also accepted: `icd10_codes`); the cell lists codes separated by
//! `;` (or `|`, `,`, whitespace, newlines), with or without the dot (`I25.1` = `I251`); a code
//! that does not have an ICD-10 shape is an error naming the file, line and code. A subject may
//! also appear on several rows (one per code, "long" layout): its codes are united. UK
//! Biobank's own wide layout works too: every `41270-0.<i>` column holds one code. A subject
//! listed with no code has no diagnosis.
//!
//! # Strict parsing
//! Both tables are parsed strictly, so that a broken file is an error rather than silently
//! shifted labels: a record with another number of fields than the header, or a quote still
//! open at the end of the file (which would swallow every later row into one cell, turning
//! every later subject into a silent negative), is an error naming the file and line.
//! A disease is a list of code prefixes and ranges (`I20-I25`); a subject has it when any of
//! its codes starts with one of them.

mod icd10;
mod phenotypes;
mod split;
mod strict_csv;

pub use icd10::{
    DiagnosisTable, DiseaseDefinition, disease_labels, is_icd10_code, normalise_code,
    read_diagnoses,
};
pub use phenotypes::{PhenotypeTable, Standardiser, read_phenotypes};
pub use split::{JoinReport, Split, SplitConfig, join_by_eid, split_by_eid};

/// A UK Biobank participant identifier.
pub type Eid = u64;

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ranges_expand_and_codes_match() {
        let cad = DiseaseDefinition::new("CAD", &["I20-I25"]);
        assert_eq!(
            cad.prefixes().unwrap(),
            vec!["I20", "I21", "I22", "I23", "I24", "I25"]
        );
        assert!(
            DiseaseDefinition::new("x", &["I20-J25"])
                .prefixes()
                .is_err()
        );
        assert_eq!(normalise_code(" i25.1 "), "I251");
    }

    #[test]
    fn standardiser_masks_missing() {
        let rows = [vec![1.0, f64::NAN], vec![3.0, 5.0]];
        let s = Standardiser::fit(rows.iter().map(Vec::as_slice), 2);
        assert_eq!(s.mean, vec![2.0, 5.0]);
        assert_eq!(s.std, vec![1.0, 1.0]);
        let (v, m) = s.transform(&rows[0]);
        assert_eq!((v, m), (vec![-1.0, 0.0], vec![1.0, 0.0]));
    }

    #[test]
    fn splits_are_deterministic_stratified_and_order_free() {
        let eids: Vec<Eid> = (1000..2000).collect();
        let strata: Vec<i64> = eids.iter().map(|e| (e % 10 == 0) as i64).collect();
        let cfg = SplitConfig::default();
        let a = split_by_eid(&eids, Some(&strata), &cfg).unwrap();
        let mut rev = eids.clone();
        rev.reverse();
        let rev_strata: Vec<i64> = rev.iter().map(|e| (e % 10 == 0) as i64).collect();
        let b = split_by_eid(&rev, Some(&rev_strata), &cfg).unwrap();
        for (i, e) in eids.iter().enumerate() {
            let j = rev.iter().position(|x| x == e).unwrap();
            assert_eq!(a[i], b[j]);
        }
        let positives_train = (0..eids.len())
            .filter(|&i| strata[i] == 1 && a[i] == Split::Train)
            .count();
        assert_eq!(positives_train, 80);
        assert_eq!(a.iter().filter(|s| **s == Split::Test).count(), 100);
        assert!(split_by_eid(&eids, None, &SplitConfig { train: 0.9, ..cfg }).is_err());
    }

    #[test]
    fn join_reports_missing_modalities() {
        let ecg: HashSet<Eid> = [1, 2, 3].into();
        let cmr: HashSet<Eid> = [2, 3, 4].into();
        let r = join_by_eid(&[("ecg", &ecg), ("cmr", &cmr)], &["ecg", "cmr"]);
        assert_eq!(r.complete, vec![2, 3]);
        assert_eq!(r.missing["ecg"], vec![4]);
        assert_eq!(r.missing["cmr"], vec![1]);
    }
}

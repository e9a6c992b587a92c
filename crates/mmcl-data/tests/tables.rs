//! Phenotype and diagnosis tables: UK Biobank columns, legacy fields, missing values, bad rows.

mod common;

use mmcl_data::tables::{
    DiseaseDefinition, Standardiser, disease_labels, read_diagnoses, read_phenotypes,
};

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    common::write(dir.path(), name, text)
}

/// The message of the error reading the phenotype table `text` (as `name`) gives.
fn phenotype_error(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    read_phenotypes(&write(dir, name, text))
        .unwrap_err()
        .to_string()
}

#[test]
fn phenotypes_from_ukb_and_legacy_columns_with_missing_values() {
    let (_dir, p) = common::write_temp(
        "phenotypes.csv",
        "eid,24100-2.0,22422-2.0,24103-2.0,22420-2.0,31-0.0\n\
         1000001,150.5,60,,58.2,1\n\
         1000002,,55,61.0,,0\n\
         1000003,NA,,NaN,,1\n",
    );
    let t = read_phenotypes(&p).unwrap();
    assert_eq!(t.len(), 3);
    assert_eq!(t.columns[0].as_deref(), Some("24100-2.0"));
    assert_eq!(t.columns[1].as_deref(), Some("22422-2.0"), "legacy LVESV");
    let a = t.get(1000001).unwrap();
    assert_eq!(
        (a[0], a[1], a[3]),
        (150.5, 60.0, 58.2),
        "LVEF falls back to 22420"
    );
    let b = t.get(1000002).unwrap();
    assert!(b[0].is_nan());
    assert_eq!(b[3], 61.0);
    assert!(t.get(1000003).unwrap()[..4].iter().all(|v| v.is_nan()));
    assert_eq!(t.missing_counts[0], 2);
    assert!(
        t.get(1000003).unwrap()[5].is_nan(),
        "no LV mass column at all"
    );

    let rows: Vec<&[f64]> = t.eids().into_iter().map(|e| t.get(e).unwrap()).collect();
    let s = Standardiser::fit(rows.iter().copied(), 10);
    let (_, mask) = s.transform(t.get(1000002).unwrap());
    assert_eq!(&mask[..4], &[0.0, 1.0, 0.0, 1.0]);
}

#[test]
fn bad_phenotype_tables_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let dup = write(&dir, "dup.csv", "eid,24100-2.0\n5,1\n6,2\n5,3\n");
    let err = read_phenotypes(&dup).unwrap_err().to_string();
    assert!(
        err.contains("dup.csv") && err.contains("eid 5 appears twice"),
        "{err}"
    );
    assert!(err.contains("lines 2 and 4"), "{err}");
    let text = write(&dir, "text.csv", "eid,24100-2.0\n5,abc\n");
    let err = read_phenotypes(&text).unwrap_err().to_string();
    assert!(
        err.contains("text.csv") && err.contains("\"abc\"") && err.contains("24100-2.0"),
        "{err}"
    );
    let no_eid = phenotype_error(&dir, "noeid.csv", "id,24100-2.0\n5,1\n");
    assert!(no_eid.contains("no eid column"));
    let ragged = phenotype_error(&dir, "ragged.csv", "eid,24100-2.0\n5,1,7\n");
    assert!(ragged.contains("ragged.csv"));
    let bad_eid = phenotype_error(&dir, "badeid.csv", "eid,24100-2.0\nx5,1\n");
    assert!(bad_eid.contains("line 2"));
    let empty = write(&dir, "empty.csv", "");
    assert!(read_phenotypes(&empty).is_err());
}

#[test]
fn diagnoses_in_wide_and_long_layouts() {
    let (dir, p) = common::write_temp(
        "diagnoses.csv",
        "eid,icd10\n1,I25.1;E11.9\n2,\n3,I48\n3,I21\n4,K35\n",
    );
    let t = read_diagnoses(&p).unwrap();
    let d = DiseaseDefinition::defaults();
    assert_eq!(
        disease_labels(&t, &d, 1, true).unwrap(),
        vec![Some(1), Some(0), Some(1)]
    );
    assert_eq!(disease_labels(&t, &d, 2, true).unwrap(), vec![Some(0); 3]);
    assert_eq!(
        disease_labels(&t, &d, 3, true).unwrap(),
        vec![Some(1), Some(1), Some(0)]
    );
    assert_eq!(disease_labels(&t, &d, 4, false).unwrap(), vec![Some(0); 3]);
    assert_eq!(disease_labels(&t, &d, 9, false).unwrap(), vec![None; 3]);
    assert_eq!(disease_labels(&t, &d, 9, true).unwrap(), vec![Some(0); 3]);
    let synth = write(&dir, "synth.csv", "eid,icd10_codes\n7,I25.2;I48.9\n");
    let t = read_diagnoses(&synth).unwrap();
    assert_eq!(
        disease_labels(&t, &d, 7, true).unwrap(),
        vec![Some(1), Some(1), Some(0)]
    );
    let ukb = write(
        &dir,
        "ukb.csv",
        "eid,41270-0.0,41270-0.1,41270-0.2\n8,E119,K35,\n9,,,\n",
    );
    let t = read_diagnoses(&ukb).unwrap();
    assert_eq!(
        disease_labels(&t, &d, 8, false).unwrap(),
        vec![Some(0), Some(0), Some(1)]
    );
    assert_eq!(disease_labels(&t, &d, 9, false).unwrap(), vec![Some(0); 3]);
    let bad = write(&dir, "bad.csv", "eid,code\n1,I25\n");
    assert!(
        read_diagnoses(&bad)
            .unwrap_err()
            .to_string()
            .contains("no icd10 column")
    );
}

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

/// One table as UK Biobank's `ukbconv` and spreadsheets write it: comma CSV; semicolons with
/// decimal commas, a byte-order mark and CRLF (a spreadsheet in a decimal-comma locale); tabs
/// (`ukbconv txt`); tabs with the R layout's names (`ukbconv r`: `f.eid`, `f.24100.2.0`). All
/// read the same; the delimiter comes from the header line.
#[test]
fn phenotype_tables_in_every_dialect_read_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let dialects = [
        (
            "comma.csv",
            "eid,24100-2.0,24101-2.0,sex\n1,150.5,60,\"F, 1\"\n2,,55.25,M\n",
        ),
        (
            "semicolon.csv",
            "\u{feff}eid;24100-2.0;24101-2.0;sex\r\n1;150,5;60;\"F; 1\"\r\n2;;55,25;M\r\n",
        ),
        (
            "ukbconv.txt",
            "eid\t24100-2.0\t24101-2.0\tsex\n1\t150.5\t60\tF, 1\n2\tNA\t55.25\tM\n",
        ),
        (
            "ukbconv.tab",
            "f.eid\tf.24100.2.0\tf.24101.2.0\tsex\n1\t150.5\t60\tF\n2\tNA\t55.25\tM\n",
        ),
    ];
    for (name, text) in dialects {
        let t = read_phenotypes(&write(&dir, name, text)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.eids(), vec![1, 2], "{name}");
        assert_eq!(t.columns[0].as_deref(), Some("24100-2.0"), "{name}");
        assert_eq!(&t.get(1).unwrap()[..2], &[150.5, 60.0], "{name}");
        let b = t.get(2).unwrap();
        assert!(b[0].is_nan() && b[1] == 55.25, "{name}: {b:?}");
    }
    // A comma CSV keeps the comma a delimiter: `150,5` there is two cells, a width error.
    let err = phenotype_error(&dir, "mixed.csv", "eid,24100-2.0\n1,150,5\n");
    assert!(err.contains("line 2") && err.contains("field"), "{err}");
    // The R layout's ICD-10 columns (`f.41270.0.i`) are UK Biobank's wide diagnoses.
    let ukb_r = write(
        &dir,
        "diagnoses.tab",
        "f.eid\tf.41270.0.0\tf.41270.0.1\n8\tE119\tI251\n9\t\t\n",
    );
    let t = read_diagnoses(&ukb_r).unwrap();
    let d = DiseaseDefinition::defaults();
    assert_eq!(
        disease_labels(&t, &d, 8, false).unwrap(),
        vec![Some(1), Some(0), Some(1)]
    );
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

//! Hostile and broken CSV tables: quoted newlines in code lists, unbalanced quotes, records of
//! the wrong width, codes that are not ICD-10, non-finite phenotypes. Each is either read
//! correctly or a typed error naming the file and line, never silently shifted labels.

mod common;

use std::path::Path;

use common::{format_error, write, write_temp};
use mmcl_data::tables::{DiseaseDefinition, disease_labels, read_diagnoses, read_phenotypes};

/// Writes `text` as `dir/name` and asserts that `read` refuses it with a format error naming
/// the file whose message holds each of `needles` (the line, the culprit).
fn refused<T: std::fmt::Debug>(
    dir: &Path,
    name: &str,
    text: &str,
    read: impl FnOnce(&Path) -> mmcl_data::Result<T>,
    needles: &[&str],
) {
    let p = write(dir, name, text);
    let msg = format_error(read(&p), &p);
    for needle in needles {
        assert!(msg.contains(needle), "{name}: {needle:?} not in: {msg}");
    }
}

#[test]
fn a_quoted_newline_in_a_code_list_splits_into_two_codes() {
    // The friendlier answer: the cell holds two valid codes, so both are kept.
    let (dir, p) = write_temp(
        "diagnoses.csv",
        "eid,icd10\n1,\"I25.1\nE11.9\"\n2,I48\n3,\"I48 , E10\"\n",
    );
    let t = read_diagnoses(&p).unwrap();
    assert_eq!(t.codes(1).unwrap(), ["I251", "E119"]);
    let d = DiseaseDefinition::defaults();
    assert_eq!(
        disease_labels(&t, &d, 1, true).unwrap(),
        vec![Some(1), Some(0), Some(1)]
    );
    assert_eq!(
        disease_labels(&t, &d, 2, true).unwrap(),
        vec![Some(0), Some(1), Some(0)]
    );
    assert_eq!(t.codes(3).unwrap(), ["I48", "E10"]);
    // Quoted headers and cells with CRLF line ends read as before.
    let crlf = write(
        dir.path(),
        "crlf.csv",
        "\"eid\",\"icd10\"\r\n\"4\",\"I25.1;E11.9\"\r\n5,\r\n",
    );
    let t = read_diagnoses(&crlf).unwrap();
    assert_eq!(t.codes(4).unwrap(), ["I251", "E119"]);
    assert_eq!(t.codes(5).unwrap(), [] as [String; 0]);
}

#[test]
fn an_unbalanced_quote_is_an_error_naming_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    refused(
        dir.path(),
        "open_quote.csv",
        "eid,icd10\n1,I25.1\n2,\"I48\n3,E11\n4,K35\n",
        read_diagnoses,
        &["line 3", "never closed"],
    );
    refused(
        dir.path(),
        "open_quote_phenotypes.csv",
        "eid,24100-2.0,31-0.0\n1,150,\"male\n2,140,female\n",
        read_phenotypes,
        &["line 2", "never closed"],
    );
    // Two stray quotes close each other and swallow the rows between: the swallowed eids are
    // not ICD-10 codes, so this is an error too, not silent negatives.
    refused(
        dir.path(),
        "stray_quotes.csv",
        "eid,icd10\n1,\"I25.1\n2,I48\n3,\"E11\n",
        read_diagnoses,
        &["line 2", "\"2\""],
    );
}

#[test]
fn a_record_of_the_wrong_width_is_an_error_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    refused(
        dir.path(),
        "ragged.csv",
        "eid,icd10\n1,I25.1\n2,I48,E11\n3,K35\n",
        read_diagnoses,
        &["line 3", "3 field(s)"],
    );
    refused(
        dir.path(),
        "short_row.csv",
        "eid,24100-2.0,24101-2.0\n1,150\n",
        read_phenotypes,
        &["line 2"],
    );
}

#[test]
fn a_code_that_is_not_icd10_is_an_error_naming_file_line_and_code() {
    let dir = tempfile::tempdir().unwrap();
    refused(
        dir.path(),
        "bad_code.csv",
        "eid,41270-0.0,41270-0.1\n1,I251,\n2,E119,heart attack\n",
        read_diagnoses,
        &["line 3", "\"heart\"", "41270-0.1"],
    );
    // Missing markers are no codes, not errors.
    let p = write(dir.path(), "na.csv", "eid,icd10\n1,NA\n2,\n");
    let t = read_diagnoses(&p).unwrap();
    assert!(t.codes(1).unwrap().is_empty());
}

#[test]
fn non_finite_phenotypes_are_missing_with_a_warning() {
    let (_dir, p) = write_temp(
        "inf.csv",
        "eid,24100-2.0,24101-2.0\n1,inf,60\n2,-inf,1e999\n3,150,-INF\n4,140,55\n",
    );
    let t = read_phenotypes(&p).unwrap();
    assert!(t.get(1).unwrap()[0].is_nan() && t.get(2).unwrap()[0].is_nan());
    assert_eq!(t.get(3).unwrap()[0], 150.0);
    assert_eq!(t.missing_counts[..2], [2, 2]);
    assert_eq!(t.warnings.len(), 2, "{:?}", t.warnings);
    assert!(
        t.warnings[0].contains("inf.csv")
            && t.warnings[0].contains("24100-2.0")
            && t.warnings[0].contains("2 non-finite"),
        "{:?}",
        t.warnings
    );
    assert!(t.warnings[1].contains("24101-2.0") && t.warnings[1].contains("2 non-finite"));
    // Every kept value is finite, so standardisation stays finite.
    let rows: Vec<&[f64]> = t.eids().into_iter().map(|e| t.get(e).unwrap()).collect();
    let s = mmcl_data::tables::Standardiser::fit(rows.iter().copied(), 10);
    assert!(s.mean.iter().chain(&s.std).all(|v| v.is_finite()));
}

#[test]
fn the_build_report_counts_labels_and_missing_phenotypes() {
    use mmcl_data::build::{BuildConfig, build_dataset};
    use mmcl_data::cmr::CmrConfig;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ukb");
    let fixture = common::fixture("cmr/1000001");
    for eid in 1..=4 {
        let sub = root.join(format!("cmr/{eid}"));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::copy(fixture.join("sa.nii.gz"), sub.join("sa.nii.gz")).unwrap();
    }
    write(
        &root,
        "phenotypes.csv",
        "eid,24100-2.0,24101-2.0\n1,150,inf\n2,,60\n3,140,55\n4,130,50\n",
    );
    write(
        &root,
        "diagnoses.csv",
        "eid,icd10\n1,\"I25.1\nE11.9\"\n2,I48\n3,\n",
    );
    let cfg = BuildConfig {
        root: root.clone(),
        output: dir.path().join("cache"),
        ecg_dir: None,
        absent_diagnosis_is_negative: false,
        phenotypes_from_segmentation: false,
        cmr: CmrConfig {
            size: 8,
            ..CmrConfig::default()
        },
        ..BuildConfig::default()
    };
    let (_, report) = build_dataset(&cfg, &|_, _| {}).unwrap();
    let counts: Vec<(&str, usize, usize, usize)> = report
        .labels
        .iter()
        .map(|l| (l.name.as_str(), l.positive, l.negative, l.unknown))
        .collect();
    assert_eq!(
        counts,
        [("CAD", 1, 2, 1), ("AF", 1, 2, 1), ("diabetes", 1, 2, 1)]
    );
    let missing: Vec<usize> = report.phenotypes.iter().map(|p| p.missing).collect();
    assert_eq!(&missing[..3], &[1, 1, 4]);
    assert_eq!(report.phenotypes[1].column.as_deref(), Some("24101-2.0"));
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("phenotypes.csv") && w.contains("24101-2.0")),
        "{:?}",
        report.warnings
    );
}

//! Subject tables: UK Biobank phenotypes, ICD-10 diagnoses turned into disease labels,
//! standardisation with missing-value masks, joining modalities by `eid`, and deterministic
//! (stratified) splits.
//!
//! # Phenotypes CSV
//! A header row with `eid` and UK Biobank columns `<field>-<instance>.<array>`; for every
//! phenotype of [`PHENOTYPE_FIELDS`] the imaging-visit column `24100-2.0` … `24109-2.0` is
//! used, else the legacy column (`22421-2.0` …), else a column named like the phenotype
//! (`lvedv`). Empty cells and `NA`/`NaN` are missing values (masked, reported); anything else
//! that is not a number is an error naming the file, line and column. A repeated `eid` is an
//! error naming both lines.
//!
//! # Diagnoses CSV
//! Columns `eid` and `icd10` (also accepted: `icd10_codes`); the cell lists codes separated by
//! `;` (or `|`), with or without the dot (`I25.1` = `I251`). A subject may also appear on
//! several rows (one per code, "long" layout): its codes are united. UK Biobank's own wide
//! layout works too: every `41270-0.<i>` column holds one code. A subject listed with no code
//! has no diagnosis.
//! A disease is a list of code prefixes and ranges (`I20-I25`); a subject has it when any of
//! its codes starts with one of them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::phenotypes::{PHENOTYPE_FIELDS, ukb_column};
use crate::rng::Rng;
use crate::{Error, Result};

/// A UK Biobank participant identifier.
pub type Eid = u64;

fn csv_reader(path: &Path) -> Result<csv::Reader<std::fs::File>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(file))
}

fn parse_eid(text: &str, path: &Path, line: u64) -> Result<Eid> {
    text.parse::<Eid>().map_err(|_| {
        Error::format(
            path,
            format!("line {line}: eid {text:?} is not a positive integer"),
        )
    })
}

fn is_missing(cell: &str) -> bool {
    cell.is_empty()
        || matches!(
            cell.to_ascii_lowercase().as_str(),
            "na" | "nan" | "null" | "none"
        )
}

/// Phenotype values by subject (`NaN` = missing), in the order of [`PHENOTYPE_FIELDS`].
#[derive(Debug, Clone, PartialEq)]
pub struct PhenotypeTable {
    /// Phenotype names (`lvedv`, …).
    pub names: Vec<String>,
    /// The column each phenotype was read from (`None` when the file has none).
    pub columns: Vec<Option<String>>,
    rows: HashMap<Eid, Vec<f64>>,
    /// Missing values per phenotype, over all subjects.
    pub missing_counts: Vec<usize>,
}

impl PhenotypeTable {
    /// The values of a subject.
    pub fn get(&self, eid: Eid) -> Option<&[f64]> {
        self.rows.get(&eid).map(Vec::as_slice)
    }

    /// Number of subjects.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the table has no subject.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The subjects, sorted.
    pub fn eids(&self) -> Vec<Eid> {
        let mut e: Vec<Eid> = self.rows.keys().copied().collect();
        e.sort_unstable();
        e
    }
}

/// Reads a phenotypes CSV (see the module documentation).
///
/// # Errors
/// Unreadable or malformed CSV, no `eid` column, a bad `eid`, a repeated `eid`, a non-numeric
/// value; each naming the file (and line).
pub fn read_phenotypes(path: &Path) -> Result<PhenotypeTable> {
    let mut reader = csv_reader(path)?;
    let csv_err = |source| Error::Csv {
        path: path.to_path_buf(),
        source,
    };
    let headers = reader.headers().map_err(csv_err)?.clone();
    let find = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let eid_col = find("eid").ok_or_else(|| Error::format(path, "no eid column"))?;
    // For every phenotype: the preferred column and the fallbacks, in order.
    let sources: Vec<Vec<usize>> = PHENOTYPE_FIELDS
        .iter()
        .map(|f| {
            let mut cols = vec![find(&ukb_column(f.field))];
            cols.push(f.legacy_field.and_then(|l| find(&ukb_column(l))));
            cols.push(find(f.name));
            cols.into_iter().flatten().collect()
        })
        .collect();
    let columns = sources
        .iter()
        .map(|c| c.first().map(|&i| headers[i].to_string()))
        .collect();
    let mut rows = HashMap::new();
    let mut first_line: HashMap<Eid, u64> = HashMap::new();
    let mut missing_counts = vec![0; PHENOTYPE_FIELDS.len()];
    for record in reader.records() {
        let record = record.map_err(csv_err)?;
        let line = record.position().map_or(0, |p| p.line());
        let eid = parse_eid(&record[eid_col], path, line)?;
        if let Some(previous) = first_line.insert(eid, line) {
            return Err(Error::format(
                path,
                format!("eid {eid} appears twice (lines {previous} and {line})"),
            ));
        }
        let mut values = Vec::with_capacity(PHENOTYPE_FIELDS.len());
        for (k, cols) in sources.iter().enumerate() {
            let mut value = f64::NAN;
            for &c in cols {
                let cell = &record[c];
                if is_missing(cell) {
                    continue;
                }
                value = cell.parse::<f64>().map_err(|_| {
                    Error::format(
                        path,
                        format!(
                            "line {line}, column {}: {cell:?} is not a number",
                            &headers[c]
                        ),
                    )
                })?;
                break;
            }
            if value.is_nan() {
                missing_counts[k] += 1;
            }
            values.push(value);
        }
        rows.insert(eid, values);
    }
    Ok(PhenotypeTable {
        names: PHENOTYPE_FIELDS
            .iter()
            .map(|f| f.name.to_string())
            .collect(),
        columns,
        rows,
        missing_counts,
    })
}

/// A disease as a list of ICD-10 code prefixes and ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiseaseDefinition {
    /// Label name (`CAD`).
    pub name: String,
    /// Prefixes (`I48`) and same-letter ranges (`I20-I25`).
    pub codes: Vec<String>,
}

impl DiseaseDefinition {
    /// A definition from a name and code list.
    pub fn new(name: &str, codes: &[&str]) -> Self {
        Self {
            name: name.to_string(),
            codes: codes.iter().map(|c| c.to_string()).collect(),
        }
    }

    /// The paper's targets: CAD (I20–I25), AF (I48), diabetes (E10–E14).
    pub fn defaults() -> Vec<Self> {
        vec![
            Self::new("CAD", &["I20-I25"]),
            Self::new("AF", &["I48"]),
            Self::new("diabetes", &["E10-E14"]),
        ]
    }

    /// The code prefixes, ranges expanded (`I20-I25` → I20, I21, …, I25).
    ///
    /// # Errors
    /// A malformed range.
    pub fn prefixes(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for code in &self.codes {
            let code = normalise_code(code);
            match code.split_once('-') {
                None => out.push(code),
                Some((a, b)) => {
                    let bad = || {
                        Error::InvalidInput(format!(
                            "disease {}: range {code:?} must look like I20-I25",
                            self.name
                        ))
                    };
                    let (la, na) = a.split_at(1);
                    let (lb, nb) = b.split_at(b.len().min(1));
                    if la != lb || na.len() != nb.len() || na.is_empty() {
                        return Err(bad());
                    }
                    let lo: u32 = na.parse().map_err(|_| bad())?;
                    let hi: u32 = nb.parse().map_err(|_| bad())?;
                    if lo > hi {
                        return Err(bad());
                    }
                    let width = na.len();
                    out.extend((lo..=hi).map(|n| format!("{la}{n:0width$}")));
                }
            }
        }
        Ok(out)
    }
}

/// Upper case, no dots or spaces: `i25.1` → `I251`.
pub fn normalise_code(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '.')
        .flat_map(char::to_uppercase)
        .collect()
}

/// ICD-10 codes by subject.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DiagnosisTable {
    codes: HashMap<Eid, Vec<String>>,
}

impl DiagnosisTable {
    /// The codes of a subject (`None` when the subject is not in the table).
    pub fn codes(&self, eid: Eid) -> Option<&[String]> {
        self.codes.get(&eid).map(Vec::as_slice)
    }

    /// Number of subjects.
    pub fn len(&self) -> usize {
        self.codes.len()
    }

    /// Whether no subject is listed.
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// Whether a subject has any code starting with one of `prefixes` (`None` when the subject
    /// is not in the table).
    pub fn has_any(&self, eid: Eid, prefixes: &[String]) -> Option<bool> {
        self.codes(eid).map(|codes| {
            codes
                .iter()
                .any(|c| prefixes.iter().any(|p| c.starts_with(p)))
        })
    }
}

/// Reads a diagnoses CSV (see the module documentation).
///
/// # Errors
/// Unreadable or malformed CSV, no `eid` or `icd10` column, a bad `eid`.
pub fn read_diagnoses(path: &Path) -> Result<DiagnosisTable> {
    let mut reader = csv_reader(path)?;
    let csv_err = |source| Error::Csv {
        path: path.to_path_buf(),
        source,
    };
    let headers = reader.headers().map_err(csv_err)?.clone();
    let find = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let eid_col = find("eid").ok_or_else(|| Error::format(path, "no eid column"))?;
    // Code columns: a list column (`icd10`, or `icd10_codes` as the synthetic cohort writes
    // it) and/or UK Biobank's own wide layout, one code per `41270-0.<i>` column.
    let code_cols: Vec<usize> = headers
        .iter()
        .enumerate()
        .filter(|(_, h)| {
            let h = h.to_ascii_lowercase();
            matches!(h.as_str(), "icd10" | "icd10_codes" | "icd10_code") || h.starts_with("41270-")
        })
        .map(|(i, _)| i)
        .collect();
    if code_cols.is_empty() {
        return Err(Error::format(
            path,
            "no icd10 column (expected icd10, icd10_codes or UK Biobank 41270-0.* columns)",
        ));
    }
    let mut codes: HashMap<Eid, Vec<String>> = HashMap::new();
    for record in reader.records() {
        let record = record.map_err(csv_err)?;
        let line = record.position().map_or(0, |p| p.line());
        let eid = parse_eid(&record[eid_col], path, line)?;
        let entry = codes.entry(eid).or_default();
        for &col in &code_cols {
            for code in record[col].split([';', '|']) {
                let code = normalise_code(code);
                if !code.is_empty() && !entry.contains(&code) {
                    entry.push(code);
                }
            }
        }
    }
    Ok(DiagnosisTable { codes })
}

/// Disease labels of one subject: 1/0 per disease, `None` where unknown.
///
/// A subject absent from the table is negative when `absent_is_negative` (UK Biobank's
/// hospital records list every participant's codes, so no code means no diagnosis), unknown
/// otherwise.
///
/// # Errors
/// A malformed disease definition.
pub fn disease_labels(
    table: &DiagnosisTable,
    diseases: &[DiseaseDefinition],
    eid: Eid,
    absent_is_negative: bool,
) -> Result<Vec<Option<u8>>> {
    diseases
        .iter()
        .map(|d| {
            let prefixes = d.prefixes()?;
            Ok(match table.has_any(eid, &prefixes) {
                Some(has) => Some(has as u8),
                None if absent_is_negative => Some(0),
                None => None,
            })
        })
        .collect()
}

/// Per-column mean and standard deviation over the observed (non-NaN) values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standardiser {
    /// Means.
    pub mean: Vec<f64>,
    /// Standard deviations (population; 1 where a column has fewer than two values or none).
    pub std: Vec<f64>,
}

impl Standardiser {
    /// Fits on rows of equal length (`NaN` = missing).
    pub fn fit<'a>(rows: impl IntoIterator<Item = &'a [f64]>, columns: usize) -> Self {
        let mut sum = vec![0.0; columns];
        let mut sum_sq = vec![0.0; columns];
        let mut n = vec![0usize; columns];
        let rows: Vec<&[f64]> = rows.into_iter().collect();
        for row in &rows {
            for (k, &v) in row.iter().enumerate().take(columns) {
                if !v.is_nan() {
                    sum[k] += v;
                    n[k] += 1;
                }
            }
        }
        let mean: Vec<f64> = (0..columns)
            .map(|k| if n[k] > 0 { sum[k] / n[k] as f64 } else { 0.0 })
            .collect();
        for row in &rows {
            for (k, &v) in row.iter().enumerate().take(columns) {
                if !v.is_nan() {
                    sum_sq[k] += (v - mean[k]).powi(2);
                }
            }
        }
        let std = (0..columns)
            .map(|k| {
                let s = if n[k] > 1 {
                    (sum_sq[k] / n[k] as f64).sqrt()
                } else {
                    0.0
                };
                if s > 0.0 { s } else { 1.0 }
            })
            .collect();
        Self { mean, std }
    }

    /// Standardised values and the mask (1 observed, 0 missing; missing values become 0).
    pub fn transform(&self, row: &[f64]) -> (Vec<f32>, Vec<f32>) {
        row.iter()
            .enumerate()
            .map(|(k, &v)| {
                if v.is_nan() {
                    (0.0, 0.0)
                } else {
                    (((v - self.mean[k]) / self.std[k]) as f32, 1.0)
                }
            })
            .unzip()
    }
}

/// Which subjects have which modality, after joining by `eid`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct JoinReport {
    /// Subjects with every required modality (sorted).
    pub complete: Vec<Eid>,
    /// For each modality name, the subjects (of the union) that lack it.
    pub missing: BTreeMap<String, Vec<Eid>>,
}

/// Joins modalities (name → subjects) by `eid`; `required` names the ones a subject must have.
pub fn join_by_eid(modalities: &[(&str, &HashSet<Eid>)], required: &[&str]) -> JoinReport {
    let mut all: Vec<Eid> = modalities
        .iter()
        .flat_map(|(_, s)| s.iter().copied())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    all.sort_unstable();
    let mut missing = BTreeMap::new();
    for (name, set) in modalities {
        let lacking: Vec<Eid> = all.iter().copied().filter(|e| !set.contains(e)).collect();
        missing.insert(name.to_string(), lacking);
    }
    let complete = all
        .into_iter()
        .filter(|e| {
            modalities
                .iter()
                .filter(|(n, _)| required.contains(n))
                .all(|(_, s)| s.contains(e))
        })
        .collect();
    JoinReport { complete, missing }
}

/// A partition of the subjects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Training.
    Train,
    /// Validation.
    Val,
    /// Test.
    Test,
}

/// Fractions of a train/val/test split and its seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitConfig {
    /// Training fraction.
    pub train: f64,
    /// Validation fraction.
    pub val: f64,
    /// Test fraction.
    pub test: f64,
    /// Seed of the assignment.
    pub seed: u64,
    /// Stratify by this disease label (name), if any.
    pub stratify_by: Option<String>,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            train: 0.8,
            val: 0.1,
            test: 0.1,
            seed: 2022,
            stratify_by: None,
        }
    }
}

/// Assigns each subject to a split, deterministically from `(seed, eids)`: within each stratum
/// (`strata[i]`, or one stratum) subjects are ordered by a seeded hash of their `eid`, and
/// the first `round(train·n)` go to training, the next `round(val·n)` to validation, the rest to
/// test. The input order does not matter.
///
/// # Errors
/// Fractions that are negative or do not sum to 1, or strata of another length.
pub fn split_by_eid(eids: &[Eid], strata: Option<&[i64]>, cfg: &SplitConfig) -> Result<Vec<Split>> {
    let total = cfg.train + cfg.val + cfg.test;
    if cfg.train < 0.0 || cfg.val < 0.0 || cfg.test < 0.0 || (total - 1.0).abs() > 1e-6 {
        return Err(Error::InvalidInput(format!(
            "split fractions {}/{}/{} must be non-negative and sum to 1",
            cfg.train, cfg.val, cfg.test
        )));
    }
    if let Some(s) = strata
        && s.len() != eids.len()
    {
        return Err(Error::InvalidInput(
            "one stratum per subject is needed".into(),
        ));
    }
    let mut groups: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for i in 0..eids.len() {
        groups
            .entry(strata.map_or(0, |s| s[i]))
            .or_default()
            .push(i);
    }
    let mut out = vec![Split::Train; eids.len()];
    for (_, mut members) in groups {
        members.sort_by_key(|&i| (Rng::derive(cfg.seed, &[eids[i]]).next_u64(), eids[i]));
        let n = members.len() as f64;
        let n_train = (cfg.train * n).round() as usize;
        let n_val =
            ((cfg.val * n).round() as usize).min(members.len() - n_train.min(members.len()));
        for (rank, &i) in members.iter().enumerate() {
            out[i] = if rank < n_train {
                Split::Train
            } else if rank < n_train + n_val {
                Split::Val
            } else {
                Split::Test
            };
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
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

//! Subject tables: UK Biobank phenotypes, ICD-10 diagnoses turned into disease labels,
//! standardisation with missing-value masks, joining modalities by `eid`, and deterministic
//! (stratified) splits.
//!
//! # Phenotypes CSV
//! A header row with `eid` and UK Biobank columns `<field>-<instance>.<array>`; for every
//! phenotype of [`PHENOTYPE_FIELDS`] the imaging-visit column `24100-2.0` … `24109-2.0` is
//! used, else the legacy column (`22421-2.0` …), else a column named like the phenotype
//! (`lvedv`). Empty cells and `NA`/`NaN` are missing values (masked, reported); `inf`/`-inf`
//! are missing values too, with a warning naming the file, column and count
//! ([`PhenotypeTable::warnings`]); anything else that is not a number is an error naming the
//! file, line and column. A repeated `eid` is an error naming both lines.
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::phenotypes::{PHENOTYPE_FIELDS, ukb_column};
use crate::rng::Rng;
use crate::{Error, Result};
use mmcl_core::files::open_regular;

/// A UK Biobank participant identifier.
pub type Eid = u64;

/// A CSV table read strictly, so that a malformed file is an error rather than silently shifted
/// labels: a quote left open at end of file (which would swallow every later row into one
/// cell) is found by a first pass over the bytes, and a record with another number of fields
/// than the header is an error naming its line.
struct StrictCsv<'p> {
    path: &'p Path,
    reader: csv::Reader<std::io::BufReader<std::fs::File>>,
    /// Column names.
    headers: csv::StringRecord,
    record: csv::StringRecord,
}

impl<'p> StrictCsv<'p> {
    fn open(path: &'p Path) -> Result<Self> {
        check_quotes(path)?;
        let (file, _) = open_regular(path)?;
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .flexible(false)
            .from_reader(std::io::BufReader::new(file));
        let headers = reader.headers().map_err(|e| csv_error(path, e))?.clone();
        Ok(Self {
            path,
            reader,
            headers,
            record: csv::StringRecord::new(),
        })
    }

    /// The column named `name` (any case).
    fn find(&self, name: &str) -> Option<usize> {
        self.headers
            .iter()
            .position(|h| h.eq_ignore_ascii_case(name))
    }

    /// The next record and the line it starts on; `None` at the end of the file.
    fn next_record(&mut self) -> Result<Option<(u64, &csv::StringRecord)>> {
        let more = self
            .reader
            .read_record(&mut self.record)
            .map_err(|e| csv_error(self.path, e))?;
        if !more {
            return Ok(None);
        }
        let line = self.record.position().map_or(0, csv::Position::line);
        Ok(Some((line, &self.record)))
    }
}

/// A CSV parser error naming the file, and the line for a record of the wrong width.
fn csv_error(path: &Path, e: csv::Error) -> Error {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            pos,
            expected_len,
            len,
        } => Error::format(
            path,
            format!(
                "line {}: {len} field(s), the header has {expected_len} (a stray delimiter or \
                 quote?)",
                pos.as_ref().map_or(0, csv::Position::line)
            ),
        ),
        _ => Error::Csv {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

/// Scans `path` with the quoting rules of the `csv` parser (a quote opens a quoted field only
/// as the first character of a field; `""` inside it is a literal quote) and refuses a quote
/// still open at the end of the file, naming the line where it opened.
fn check_quotes(path: &Path) -> Result<()> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        FieldStart,
        Unquoted,
        Quoted,
        QuoteInQuoted,
    }
    // Only regular files: a FIFO or device would block or never end.
    let (file, _) = open_regular(path)?;
    let mut reader = std::io::BufReader::new(file);
    let (mut state, mut line, mut opened) = (State::FieldStart, 1u64, 0u64);
    let mut first = true;
    loop {
        let buf = std::io::BufRead::fill_buf(&mut reader).map_err(|e| Error::io(path, e))?;
        if buf.is_empty() {
            break;
        }
        let mut bytes = buf;
        // The parser skips a UTF-8 byte-order mark at the start; so does this scan.
        if first {
            bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
            first = false;
        }
        for &b in bytes {
            let separator = matches!(b, b',' | b'\n' | b'\r');
            state = match (state, b) {
                (State::Quoted, b'"') => State::QuoteInQuoted,
                (State::Quoted, _) => State::Quoted,
                (State::QuoteInQuoted, b'"') => State::Quoted,
                (State::FieldStart, b'"') => {
                    opened = line;
                    State::Quoted
                }
                (_, _) if separator => State::FieldStart,
                (_, _) => State::Unquoted,
            };
            if b == b'\n' {
                line += 1;
            }
        }
        let n = buf.len();
        std::io::BufRead::consume(&mut reader, n);
    }
    if state == State::Quoted {
        return Err(Error::format(
            path,
            format!(
                "line {opened}: a quote opened here is never closed (it would swallow every \
                 later line into one cell)"
            ),
        ));
    }
    Ok(())
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
    /// Problems that did not stop reading (non-finite values read as missing), each naming the
    /// file, the column and the count; callers print them.
    pub warnings: Vec<String>,
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
/// Unreadable or malformed CSV (a record of the wrong width, a quote never closed), no `eid`
/// column, a bad `eid`, a repeated `eid`, a non-numeric value; each naming the file (and line).
pub fn read_phenotypes(path: &Path) -> Result<PhenotypeTable> {
    let mut csv = StrictCsv::open(path)?;
    let eid_col = csv
        .find("eid")
        .ok_or_else(|| Error::format(path, "no eid column"))?;
    // For every phenotype: the preferred column and the fallbacks, in order.
    let sources: Vec<Vec<usize>> = PHENOTYPE_FIELDS
        .iter()
        .map(|f| {
            let mut cols = vec![csv.find(&ukb_column(f.field))];
            cols.push(f.legacy_field.and_then(|l| csv.find(&ukb_column(l))));
            cols.push(csv.find(f.name));
            cols.into_iter().flatten().collect()
        })
        .collect();
    let headers = csv.headers.clone();
    let columns = sources
        .iter()
        .map(|c| c.first().map(|&i| headers[i].to_string()))
        .collect();
    let mut rows = HashMap::new();
    let mut first_line: HashMap<Eid, u64> = HashMap::new();
    let mut missing_counts = vec![0; PHENOTYPE_FIELDS.len()];
    // Non-finite values per source column, reported once per column.
    let mut non_finite: BTreeMap<usize, usize> = BTreeMap::new();
    while let Some((line, record)) = csv.next_record()? {
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
                let v = cell.parse::<f64>().map_err(|_| {
                    Error::format(
                        path,
                        format!(
                            "line {line}, column {}: {cell:?} is not a number",
                            &headers[c]
                        ),
                    )
                })?;
                // `inf` (or an overflowing `1e999`) would turn every standardised value of the
                // column into NaN: it is a missing value, reported below.
                if !v.is_finite() {
                    *non_finite.entry(c).or_default() += 1;
                    continue;
                }
                value = v;
                break;
            }
            if value.is_nan() {
                missing_counts[k] += 1;
            }
            values.push(value);
        }
        rows.insert(eid, values);
    }
    let warnings = non_finite
        .into_iter()
        .map(|(c, n)| {
            format!(
                "{}: column {}: {n} non-finite value(s) (inf/nan) read as missing",
                path.display(),
                &headers[c]
            )
        })
        .collect();
    Ok(PhenotypeTable {
        names: PHENOTYPE_FIELDS
            .iter()
            .map(|f| f.name.to_string())
            .collect(),
        columns,
        rows,
        missing_counts,
        warnings,
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

/// Whether `code` has the shape of an ICD-10 code: a letter, a digit, a digit (or a letter, as
/// ICD-10-CM's `C4A`), then optionally a dot and up to four letters or digits (`I25.1`, `I251`,
/// `M16.06`, `S72.001A`).
pub fn is_icd10_code(code: &str) -> bool {
    let b = code.as_bytes();
    if b.len() < 3
        || !b[0].is_ascii_alphabetic()
        || !b[1].is_ascii_digit()
        || !b[2].is_ascii_alphanumeric()
    {
        return false;
    }
    let (dotted, rest) = match b[3..].strip_prefix(b".") {
        Some(rest) => (true, rest),
        None => (false, &b[3..]),
    };
    !(dotted && rest.is_empty()) && rest.len() <= 4 && rest.iter().all(u8::is_ascii_alphanumeric)
}

/// Reads a diagnoses CSV (see the module documentation).
///
/// A cell may list several codes separated by `;`, `|`, `,` or any whitespace (a quoted cell
/// holding `"I25.1\nE11.9"` is the two codes I25.1 and E11.9); each must have the shape of an
/// ICD-10 code ([`is_icd10_code`]).
///
/// # Errors
/// Unreadable or malformed CSV (a record of the wrong width, a quote never closed), no `eid` or
/// `icd10` column, a bad `eid`, a code that is not an ICD-10 code; each naming the file and line.
pub fn read_diagnoses(path: &Path) -> Result<DiagnosisTable> {
    let mut csv = StrictCsv::open(path)?;
    let eid_col = csv
        .find("eid")
        .ok_or_else(|| Error::format(path, "no eid column"))?;
    // Code columns: a list column (`icd10`, or `icd10_codes` as the synthetic cohort writes
    // it) and/or UK Biobank's own wide layout, one code per `41270-0.<i>` column.
    let code_cols: Vec<usize> = csv
        .headers
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
    let headers = csv.headers.clone();
    let mut codes: HashMap<Eid, Vec<String>> = HashMap::new();
    while let Some((line, record)) = csv.next_record()? {
        let eid = parse_eid(&record[eid_col], path, line)?;
        let entry = codes.entry(eid).or_default();
        for &col in &code_cols {
            let cell = &record[col];
            if is_missing(cell) {
                continue;
            }
            let separator = |c: char| matches!(c, ';' | '|' | ',') || c.is_whitespace();
            for code in cell.split(separator).filter(|c| !c.is_empty()) {
                if !is_icd10_code(code) {
                    return Err(Error::format(
                        path,
                        format!(
                            "line {line}, column {}: {code:?} is not an ICD-10 code (expected \
                             a letter, two digits and an optional dot part, like I25.1)",
                            &headers[col]
                        ),
                    ));
                }
                let code = normalise_code(code);
                if !entry.contains(&code) {
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

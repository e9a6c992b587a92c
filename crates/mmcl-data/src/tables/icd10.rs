//! ICD-10 diagnoses: the diagnoses CSV (list, long and UK Biobank wide layouts), code shapes,
//! and diseases as code prefixes and ranges turned into labels.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Eid;
use super::strict_csv::{StrictCsv, is_missing, parse_eid};
use crate::{Error, Result};

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

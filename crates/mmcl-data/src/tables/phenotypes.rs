//! The phenotypes CSV (UK Biobank columns, missing and non-finite values) and the
//! standardisation of phenotype values with missing-value masks.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Eid;
use super::strict_csv::{StrictCsv, is_missing, parse_eid, parse_number};
use crate::phenotypes::{PHENOTYPE_FIELDS, ukb_column};
use crate::{Error, Result};

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
    let decimal_comma = csv.decimal_comma();
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
                let v = parse_number(cell, decimal_comma).ok_or_else(|| {
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

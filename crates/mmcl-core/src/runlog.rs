//! Training run logs: JSON lines such as
//! `{"epoch": 3, "step": 120, "split": "train", "loss": 1.23, "lr": 0.001}`.
//!
//! Every numeric key other than `epoch` and `step` is a metric; `split` (default `"train"`)
//! groups the lines. Blank lines are ignored; anything else that is not a JSON object is an
//! error naming the file and line.

use std::collections::BTreeMap;
use std::path::Path;

use crate::files::MAX_JSON_BYTES;
use crate::{Error, Result};

/// One line of a run log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    /// The split the line belongs to (`train`, `val`, …).
    pub split: String,
    /// The epoch, if given.
    pub epoch: Option<f64>,
    /// The optimiser step, if given.
    pub step: Option<f64>,
    /// Metric name → value.
    pub values: BTreeMap<String, f64>,
}

/// A parsed run log.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunLog {
    /// The lines, in file order.
    pub records: Vec<LogRecord>,
}

/// One metric of one split against the epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The split.
    pub split: String,
    /// `(epoch, value)` points, by increasing epoch; several lines of one epoch are averaged.
    pub points: Vec<(f64, f64)>,
}

/// The JSON objects of a JSON-lines text, skipping blank lines; any other line is an error
/// naming `path` and the line number. The reader and the writer (re-opening a resumed run's
/// log) both parse with it, so they accept the same files.
fn json_object_lines(
    text: &str,
    path: &Path,
) -> Result<Vec<serde_json::Map<String, serde_json::Value>>> {
    let mut objects = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|source| Error::Json {
                path: path.to_path_buf(),
                line: Some(index + 1),
                source,
            })?;
        let serde_json::Value::Object(map) = value else {
            return Err(Error::Format {
                path: path.to_path_buf(),
                reason: format!("line {}: expected a JSON object", index + 1),
            });
        };
        objects.push(map);
    }
    Ok(objects)
}

impl RunLog {
    /// Reads a JSON-lines log.
    pub fn read(path: &Path) -> Result<Self> {
        let text = crate::files::read_text_bounded(path, MAX_JSON_BYTES, "the run log")?;
        Self::parse(&text, path)
    }

    /// Parses the text of a JSON-lines log; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut records = Vec::new();
        for map in json_object_lines(text, path)? {
            let mut record = LogRecord {
                split: "train".into(),
                epoch: None,
                step: None,
                values: BTreeMap::new(),
            };
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("split", serde_json::Value::String(s)) => record.split = s,
                    ("epoch", v) => record.epoch = v.as_f64(),
                    ("step", v) => record.step = v.as_f64(),
                    (_, serde_json::Value::Number(n)) => {
                        if let Some(x) = n.as_f64() {
                            record.values.insert(key, x);
                        }
                    }
                    _ => {}
                }
            }
            records.push(record);
        }
        if records.is_empty() {
            return Err(Error::Format {
                path: path.to_path_buf(),
                reason: "the run log has no records".into(),
            });
        }
        Ok(Self { records })
    }

    /// Names of all metrics, sorted, with `loss`-like names first.
    pub fn metric_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .records
            .iter()
            .flat_map(|r| r.values.keys().cloned())
            .collect();
        names.sort_by_key(|n| (!n.contains("loss"), n.clone()));
        names.dedup();
        names
    }

    /// Names of all splits, in order of first appearance.
    pub fn splits(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in &self.records {
            if !out.contains(&r.split) {
                out.push(r.split.clone());
            }
        }
        out
    }

    /// `metric` against the epoch, one series per split that logs it. Lines without an epoch
    /// use their step divided by the largest step of the split (or their position) so that
    /// they still plot.
    pub fn series(&self, metric: &str) -> Vec<Series> {
        let mut out = Vec::new();
        for split in self.splits() {
            let rows: Vec<&LogRecord> = self
                .records
                .iter()
                .filter(|r| r.split == split && r.values.contains_key(metric))
                .collect();
            if rows.is_empty() {
                continue;
            }
            let mut by_epoch: BTreeMap<i64, (f64, f64, usize)> = BTreeMap::new();
            for (position, r) in rows.iter().enumerate() {
                let x = r.epoch.or(r.step).unwrap_or(position as f64);
                // Group equal epochs exactly; the key keeps 1e-9 resolution for fractional ones.
                let key = (x * 1e9).round() as i64;
                let e = by_epoch.entry(key).or_insert((x, 0.0, 0));
                e.1 += r.values[metric];
                e.2 += 1;
            }
            out.push(Series {
                split,
                points: by_epoch
                    .into_values()
                    .map(|(x, sum, n)| (x, sum / n as f64))
                    .collect(),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_groups_by_split_and_epoch() {
        let text = r#"{"epoch": 0, "step": 10, "split": "train", "loss": 2.0, "lr": 0.001}
{"epoch": 0, "step": 20, "split": "train", "loss": 1.0, "lr": 0.002}

{"epoch": 0, "split": "val", "loss": 1.5, "auroc": 0.7}
{"epoch": 1, "step": 30, "loss": 0.5}
"#;
        let log = RunLog::parse(text, Path::new("log.jsonl")).unwrap();
        assert_eq!(log.records.len(), 4);
        assert_eq!(log.metric_names(), vec!["loss", "auroc", "lr"]);
        let loss = log.series("loss");
        assert_eq!(loss.len(), 2);
        assert_eq!(loss[0].points, vec![(0.0, 1.5), (1.0, 0.5)]);
        assert_eq!(loss[1].split, "val");
    }

    #[test]
    fn bad_lines_name_the_line() {
        let err = RunLog::parse("{\"loss\": 1}\nnot json\n", Path::new("run.jsonl")).unwrap_err();
        assert!(err.to_string().contains("run.jsonl, line 2"), "{err}");
        assert!(RunLog::parse("[1, 2]\n", Path::new("a")).is_err());
        assert!(RunLog::parse("\n\n", Path::new("a")).is_err());
    }
}

/// Appends records to a run's `metrics.jsonl` and keeps a `metrics.csv` beside it.
///
/// The JSON-lines file is the record of truth: each [`RunLogWriter::append`] adds one line and
/// flushes it, so a crash loses nothing written before. The CSV (one column per key seen so far,
/// empty cells where a line lacks a key) is rewritten from all records after each append, through
/// a temporary file, so spreadsheet users always find a complete table.
///
/// Re-opening an existing log (a resumed run) keeps its lines; [`RunLogWriter::truncate_after`]
/// drops the lines of epochs that are about to be re-run.
#[derive(Debug)]
pub struct RunLogWriter {
    jsonl: std::path::PathBuf,
    csv: std::path::PathBuf,
    lines: Vec<serde_json::Map<String, serde_json::Value>>,
}

impl RunLogWriter {
    /// Opens (or creates) `<dir>/metrics.jsonl` and `<dir>/metrics.csv`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let jsonl = dir.join("metrics.jsonl");
        let csv = dir.join("metrics.csv");
        let lines = if jsonl.exists() {
            let text = crate::files::read_text_bounded(&jsonl, MAX_JSON_BYTES, "the run log")?;
            json_object_lines(&text, &jsonl)?
        } else {
            Vec::new()
        };
        Ok(Self { jsonl, csv, lines })
    }

    /// The JSON-lines file.
    pub fn path(&self) -> &Path {
        &self.jsonl
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether no record has been written.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Appends one record: `split`, `epoch`, `step` and the metric values.
    pub fn append(
        &mut self,
        split: &str,
        epoch: usize,
        step: usize,
        values: &[(&str, f64)],
    ) -> Result<()> {
        let mut map = serde_json::Map::new();
        map.insert("split".into(), split.into());
        map.insert("epoch".into(), epoch.into());
        map.insert("step".into(), step.into());
        for (k, v) in values {
            // JSON has no NaN/inf: write null so readers see a gap, not a parse error.
            let value = serde_json::Number::from_f64(*v)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null);
            map.insert((*k).to_string(), value);
        }
        let line = serde_json::Value::Object(map.clone()).to_string();
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.jsonl)
            .map_err(|source| Error::Io {
                path: self.jsonl.clone(),
                source,
            })?;
        writeln!(file, "{line}")
            .and_then(|_| file.flush())
            .map_err(|source| Error::Io {
                path: self.jsonl.clone(),
                source,
            })?;
        self.lines.push(map);
        self.write_csv()
    }

    /// Drops every record whose `epoch` is `>= epoch` (before re-running those epochs after a
    /// resume), rewriting both files.
    pub fn truncate_after(&mut self, epoch: usize) -> Result<()> {
        self.lines.retain(|m| {
            m.get("epoch")
                .and_then(serde_json::Value::as_u64)
                .is_none_or(|e| (e as usize) < epoch)
        });
        let mut text = String::new();
        for m in &self.lines {
            text.push_str(&serde_json::Value::Object(m.clone()).to_string());
            text.push('\n');
        }
        write_text_atomic(&self.jsonl, &text)?;
        self.write_csv()
    }

    fn write_csv(&self) -> Result<()> {
        // Columns: split, epoch, step first, then every other key in first-seen order.
        let mut columns: Vec<String> = vec!["split".into(), "epoch".into(), "step".into()];
        for m in &self.lines {
            for k in m.keys() {
                if !columns.iter().any(|c| c == k) {
                    columns.push(k.clone());
                }
            }
        }
        let mut text = columns.join(",");
        text.push('\n');
        for m in &self.lines {
            let cells: Vec<String> = columns
                .iter()
                .map(|c| match m.get(c) {
                    None | Some(serde_json::Value::Null) => String::new(),
                    Some(serde_json::Value::String(s)) => s.replace(',', ";"),
                    Some(v) => v.to_string(),
                })
                .collect();
            text.push_str(&cells.join(","));
            text.push('\n');
        }
        write_text_atomic(&self.csv, &text)
    }
}

fn write_text_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod writer_tests {
    use super::*;

    #[test]
    fn writes_reads_back_and_truncates() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("mmcl-runlog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut w = RunLogWriter::open(&dir)?;
        w.append("train", 0, 10, &[("loss", 2.0), ("lr", 0.0)])?;
        w.append("val", 0, 10, &[("loss", 2.5), ("top1", 0.1)])?;
        w.append("train", 1, 20, &[("loss", f64::NAN)])?;
        let log = RunLog::read(w.path())?;
        assert_eq!(log.records.len(), 3);
        assert_eq!(log.splits(), vec!["train".to_string(), "val".to_string()]);
        let csv = std::fs::read_to_string(dir.join("metrics.csv")).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        assert_eq!(csv.lines().next(), Some("split,epoch,step,loss,lr,top1"));
        assert_eq!(csv.lines().nth(2), Some("val,0,10,2.5,,0.1"));
        let mut again = RunLogWriter::open(&dir)?;
        assert_eq!(again.len(), 3);
        again.truncate_after(1)?;
        assert_eq!(RunLog::read(again.path())?.records.len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}

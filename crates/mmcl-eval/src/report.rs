//! Run reports: metrics tables (plain text for terminals, Markdown for reports) and a Markdown
//! report with figures, built from a metrics JSON.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::Result;
use crate::metrics::{Estimate, Evaluation, TargetMetrics};
use mmcl_core::files::MAX_JSON_BYTES;

/// Reads an [`Evaluation`] written by [`write_evaluation`] (or `mmcl probe --output`).
pub fn read_evaluation(path: &Path) -> Result<Evaluation> {
    Ok(mmcl_core::files::read_json_bounded(
        path,
        MAX_JSON_BYTES,
        "the metrics file",
    )?)
}

/// Writes an [`Evaluation`] as pretty JSON, atomically.
pub fn write_evaluation(path: &Path, evaluation: &Evaluation) -> Result<()> {
    let text =
        serde_json::to_string_pretty(evaluation).map_err(|e| mmcl_core::Error::json(path, e))?;
    mmcl_nn::io::write_bytes_atomic(path, format!("{text}\n").as_bytes())?;
    Ok(())
}

/// `0.812 (0.785–0.839)`, or the value alone without an interval.
pub fn format_estimate(e: &Estimate) -> String {
    match (e.ci_low, e.ci_high) {
        (Some(lo), Some(hi)) => format!("{:.3} ({lo:.3}–{hi:.3})", e.value),
        _ => format!("{:.3}", e.value),
    }
}

fn rows(evaluation: &Evaluation) -> Vec<&TargetMetrics> {
    let mut rows: Vec<&TargetMetrics> = evaluation.targets.iter().collect();
    if evaluation.targets.len() > 1 {
        rows.push(&evaluation.average);
    }
    rows
}

fn header(evaluation: &Evaluation) -> Vec<String> {
    let mut h = vec!["target".to_string(), "n".to_string()];
    if evaluation.task == crate::metrics::Task::Classification {
        h.push("positives".into());
    }
    h.extend(evaluation.task.metric_names().iter().map(|m| m.to_string()));
    h
}

fn cells(evaluation: &Evaluation, t: &TargetMetrics) -> Vec<String> {
    let mut c = vec![t.name.clone(), t.n.to_string()];
    if evaluation.task == crate::metrics::Task::Classification {
        c.push(t.n_positive.map(|p| p.to_string()).unwrap_or_default());
    }
    // The mean absolute error is in the target's unit: say which, where it is known.
    let unit = mmcl_data::phenotypes::phenotype_unit(&t.name);
    c.extend(
        evaluation
            .task
            .metric_names()
            .iter()
            .map(|m| match (t.metrics.get(*m), unit) {
                (Some(e), Some(u)) if !crate::metrics::Task::is_unit_free(m) => {
                    format!("{} {u}", format_estimate(e))
                }
                (Some(e), _) => format_estimate(e),
                (None, _) => "–".into(),
            }),
    );
    c
}

/// The metrics as an aligned plain-text table (targets, then their average).
pub fn text_table(evaluation: &Evaluation) -> String {
    let mut table = vec![header(evaluation)];
    table.extend(rows(evaluation).into_iter().map(|t| cells(evaluation, t)));
    let widths: Vec<usize> = (0..table[0].len())
        .map(|j| {
            table
                .iter()
                .map(|r| r[j].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, row) in table.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(j, (cell, &w))| {
                if j == 0 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        out += line.join("  ").trim_end();
        out.push('\n');
        if i == 0 {
            out += &"-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1));
            out.push('\n');
        }
    }
    out
}

/// The metrics as a Markdown table.
pub fn markdown_table(evaluation: &Evaluation) -> String {
    let h = header(evaluation);
    let mut out = format!("| {} |\n", h.join(" | "));
    out += &format!(
        "|{}\n",
        h.iter()
            .enumerate()
            .map(|(j, _)| if j == 0 { "---|" } else { "---:|" })
            .collect::<String>()
    );
    for t in rows(evaluation) {
        let mut c = cells(evaluation, t);
        if t.name == "average" && evaluation.targets.len() > 1 {
            c[0] = "**average**".into();
        }
        out += &format!("| {} |\n", c.join(" | "));
    }
    out
}

/// Classification targets with fewer positives than this get a warning in reports: their AUROC
/// rests on a handful of cases and its interval is wide.
pub const FEW_POSITIVES: usize = 10;

/// What a reader must know beside the table: targets without metrics and why, targets whose
/// classification metrics rest on few positives. Empty when there is nothing to say.
pub fn caveats(evaluation: &Evaluation) -> String {
    let mut lines = Vec::new();
    for t in &evaluation.targets {
        if let Some(why) = &t.undefined {
            lines.push(format!("- **{}**: no metrics — {why}.", t.name));
        } else if let Some(p) = t.n_positive.filter(|&p| p < FEW_POSITIVES) {
            lines.push(format!(
                "- **{}**: only {p} positive{} among {} rows; its metrics are unreliable.",
                t.name,
                if p == 1 { "" } else { "s" },
                t.n
            ));
        }
    }
    if lines.is_empty() {
        return String::new();
    }
    let defined = evaluation
        .targets
        .iter()
        .filter(|t| t.undefined.is_none())
        .count();
    if defined < evaluation.targets.len() && evaluation.targets.len() > 1 {
        lines.push(format!(
            "- The average is over the {defined} target{} with metrics.",
            if defined == 1 { "" } else { "s" }
        ));
    }
    format!("\n{}\n", lines.join("\n"))
}

/// A Markdown run report: title, metrics table, figures and notes.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    /// Title (first heading).
    pub title: String,
    /// The metrics.
    pub evaluation: &'a Evaluation,
    /// `(caption, path)` of each figure; paths are written as given (make them relative to
    /// the report).
    pub figures: Vec<(String, PathBuf)>,
    /// Free paragraphs appended at the end (data, model, command line…).
    pub notes: Vec<String>,
}

impl Report<'_> {
    /// The report as Markdown.
    pub fn to_markdown(&self) -> String {
        let e = self.evaluation;
        let mut out = format!("# {}\n\n", self.title);
        let _ = writeln!(
            out,
            "Task: **{}**, {} target{}.{}",
            e.task,
            e.targets.len(),
            if e.targets.len() == 1 { "" } else { "s" },
            e.threshold
                .map(|t| format!(" Thresholded metrics at {t}."))
                .unwrap_or_default()
        );
        if e.bootstrap.resamples > 0 {
            let _ = writeln!(
                out,
                "Intervals: {:.0} % percentile bootstrap, {} resamples of the evaluation rows (seed {}); resamples on which a metric is undefined are skipped.",
                e.bootstrap.confidence * 100.0,
                e.bootstrap.resamples,
                e.bootstrap.seed
            );
        }
        out += "\n## Metrics\n\n";
        out += &markdown_table(e);
        out += &caveats(e);
        if !self.figures.is_empty() {
            out += "\n## Figures\n";
            for (caption, path) in &self.figures {
                let _ = write!(
                    out,
                    "\n### {caption}\n\n![{caption}]({})\n",
                    path.display().to_string().replace('\\', "/")
                );
            }
        }
        if !self.notes.is_empty() {
            out += "\n## Notes\n\n";
            for n in &self.notes {
                out += n;
                out += "\n\n";
            }
        }
        out
    }

    /// Writes the Markdown atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        mmcl_nn::io::write_bytes_atomic(path, self.to_markdown().as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Matrix;
    use crate::metrics::{Bootstrap, Task, evaluate};

    fn evaluation() -> Evaluation {
        let truth = Matrix::new(
            6,
            2,
            vec![1.0, 2.0, 2.0, 3.0, 3.0, 5.0, 4.0, 4.0, 5.0, 8.0, 6.0, 7.0],
        )
        .unwrap();
        let pred = Matrix::new(
            6,
            2,
            vec![1.1, 2.5, 2.2, 2.0, 2.7, 5.0, 4.4, 4.0, 5.0, 7.0, 5.5, 7.5],
        )
        .unwrap();
        let boot = Bootstrap {
            resamples: 50,
            ..Bootstrap::default()
        };
        evaluate(
            Task::Regression,
            &truth,
            &pred,
            &["LVEDV".into(), "LVM".into()],
            0.5,
            &boot,
        )
        .unwrap()
    }

    #[test]
    fn tables_list_targets_and_average() {
        let e = evaluation();
        let text = text_table(&e);
        assert_eq!(text.lines().count(), 5, "{text}");
        assert!(text.contains("LVEDV") && text.contains("average") && text.contains("pearson_r"));
        let md = markdown_table(&e);
        assert!(
            md.starts_with("| target | n | r2 | pearson_r | mae |"),
            "{md}"
        );
        assert!(md.contains("**average**"));
    }

    #[test]
    fn evaluation_round_trips_through_json() {
        let e = evaluation();
        let dir = std::env::temp_dir().join(format!("mmcl-eval-report-{}", std::process::id()));
        let path = dir.join("metrics.json");
        write_evaluation(&path, &e).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(json["targets"][0]["r2"]["ci_low"].is_number());
        assert!(json["average"]["r2"]["value"].is_number());
        // MAE is in each target's unit: never averaged over targets.
        assert!(json["average"].get("mae").is_none());
        // JSON keeps ~17 significant digits: compare to rounding.
        let back = read_evaluation(&path).unwrap();
        assert_eq!(back.targets.len(), 2);
        for (a, b) in back
            .targets
            .iter()
            .chain([&back.average])
            .zip(e.targets.iter().chain([&e.average]))
        {
            assert_eq!(a.name, b.name);
            for (m, est) in &b.metrics {
                assert!((a.metrics[m].value - est.value).abs() < 1e-14);
                assert!((a.metrics[m].ci_low.unwrap() - est.ci_low.unwrap()).abs() < 1e-14);
            }
        }
        let report = Report {
            title: "Probe".into(),
            evaluation: &e,
            figures: vec![("Scatter".into(), "scatter.png".into())],
            notes: vec!["synthetic".into()],
        };
        let md = report.to_markdown();
        assert!(md.contains("![Scatter](scatter.png)") && md.contains("## Metrics"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

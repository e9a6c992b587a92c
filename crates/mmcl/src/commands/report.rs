//! `mmcl plot-curves` (training curves from a JSON-lines run log) and `mmcl report` (a
//! Markdown report from a metrics JSON, with figures).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use mmcl_eval::plot::TrainingCurvesFigure;
use mmcl_eval::report::{self, Report};
use mmcl_eval::runlog::RunLog;

use super::common::{OutputKind, ensure_output_not_input};

/// The training-curves figure written beside the report `output`: `<stem>_curves.png`.
fn curves_path(output: &Path) -> PathBuf {
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report".into());
    output.with_file_name(format!("{stem}_curves.png"))
}

/// Arguments of `mmcl plot-curves`.
#[derive(Debug, clap::Args)]
pub struct PlotCurvesArgs {
    /// Run log: one JSON object per line, e.g. `{"epoch": 3, "split": "val", "loss": 1.2}`.
    #[arg(long)]
    log: PathBuf,
    /// Output figure (`.png` or `.svg`).
    #[arg(long)]
    output: PathBuf,
    /// Comma-separated metrics to draw (default: every numeric key but epoch and step).
    #[arg(long, value_delimiter = ',')]
    metrics: Vec<String>,
    /// Title of the figure.
    #[arg(long, default_value = "Training curves")]
    title: String,
}

/// Runs `mmcl plot-curves`.
pub fn plot_curves(args: PlotCurvesArgs) -> Result<()> {
    ensure_output_not_input(&args.output, OutputKind::File, &[&args.log])?;
    let log = RunLog::read(&args.log)?;
    let figure = TrainingCurvesFigure {
        log: &log,
        title: args.title,
        metrics: args.metrics,
    };
    figure.save(&args.output).with_context(|| {
        format!(
            "cannot plot the curves of {} into {}",
            args.log.display(),
            args.output.display()
        )
    })?;
    eprintln!(
        "{} records, {} metrics → {}",
        log.records.len(),
        log.metric_names().len(),
        args.output.display()
    );
    Ok(())
}

/// Arguments of `mmcl report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Metrics JSON written by `mmcl probe --output`.
    #[arg(long)]
    metrics: PathBuf,
    /// Output Markdown file.
    #[arg(long)]
    output: PathBuf,
    /// A figure to include, as `CAPTION=PATH` (PATH as seen from the report); repeatable.
    #[arg(long = "figure")]
    figures: Vec<String>,
    /// Also draw the training curves of this run log beside the report and include them.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Title of the report.
    #[arg(long, default_value = "Evaluation report")]
    title: String,
    /// A paragraph appended under "Notes"; repeatable.
    #[arg(long = "note")]
    notes: Vec<String>,
}

/// Runs `mmcl report`.
pub fn report(args: ReportArgs) -> Result<()> {
    let mut inputs = vec![args.metrics.as_path()];
    inputs.extend(args.log.as_deref());
    ensure_output_not_input(&args.output, OutputKind::File, &inputs)?;
    if args.log.is_some() {
        ensure_output_not_input(&curves_path(&args.output), OutputKind::File, &inputs)?;
    }
    let evaluation = report::read_evaluation(&args.metrics)?;
    let mut figures = Vec::new();
    for spec in &args.figures {
        let Some((caption, path)) = spec.split_once('=') else {
            bail!("--figure {spec:?}: expected CAPTION=PATH");
        };
        figures.push((caption.to_string(), PathBuf::from(path)));
    }
    if let Some(log_path) = &args.log {
        let log = RunLog::read(log_path)?;
        let target = curves_path(&args.output);
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        TrainingCurvesFigure::new(&log)
            .save(&target)
            .with_context(|| format!("cannot plot the curves of {}", log_path.display()))?;
        figures.push(("Training curves".into(), PathBuf::from(name)));
    }
    Report {
        title: args.title,
        evaluation: &evaluation,
        figures,
        notes: args.notes,
    }
    .save(&args.output)
    .with_context(|| format!("cannot write {}", args.output.display()))?;
    print!("{}", report::text_table(&evaluation));
    eprintln!("report written to {}", args.output.display());
    Ok(())
}

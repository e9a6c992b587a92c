//! `mmcl probe`: linear probing of frozen embeddings, with bootstrapped metrics.
//!
//! Reads embeddings `X` (N × D) and targets `y` (N or N × K, NaN where missing) as `.npy`,
//! fits one logistic (classification) or ridge (regression) head per target on the training
//! split, chooses the regularisation on the validation split (or on a seeded 20 % hold-out of
//! the training rows when none is given), and reports test metrics with 95 % intervals.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use mmcl_eval::Matrix;
use mmcl_eval::metrics::{self, Bootstrap, Evaluation, Task};
use mmcl_eval::plot;
use mmcl_eval::probe::{LinearProbe, ProbeConfig};
use mmcl_eval::report::{self, Report};

use super::common::{OutputKind, ensure_output_not_input};

/// Arguments of `mmcl probe`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Training embeddings, `.npy` of shape (N, D).
    #[arg(long)]
    train_x: PathBuf,
    /// Training targets, `.npy` of shape (N,) or (N, K); NaN marks a missing value.
    #[arg(long)]
    train_y: PathBuf,
    /// Test embeddings, `.npy` of shape (M, D).
    #[arg(long)]
    test_x: PathBuf,
    /// Test targets, `.npy` of shape (M,) or (M, K).
    #[arg(long)]
    test_y: PathBuf,
    /// classification (0/1 labels, one binary task per column) or regression.
    #[arg(long, value_parser = ["classification", "regression"])]
    task: String,
    /// Validation embeddings used to choose the regularisation (with --val-y).
    #[arg(long, requires = "val_y")]
    val_x: Option<PathBuf>,
    /// Validation targets.
    #[arg(long, requires = "val_x")]
    val_y: Option<PathBuf>,
    /// Write the metrics (with intervals, per target and averaged) to this JSON file.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Write the test predictions (probabilities or values), float32 (M, K), to this `.npy`.
    #[arg(long)]
    predictions: Option<PathBuf>,
    /// Draw ROC curves (classification) or predicted-vs-true plots (regression) into this
    /// directory, and a Markdown report `report.md` beside them.
    #[arg(long)]
    figures: Option<PathBuf>,
    /// Comma-separated target names (default: target_0, target_1, …).
    #[arg(long, value_delimiter = ',')]
    target_names: Vec<String>,
    /// Probability threshold of F1, balanced accuracy and accuracy.
    #[arg(long, default_value_t = metrics::DEFAULT_THRESHOLD)]
    threshold: f64,
    /// Bootstrap resamples of the test rows for the confidence intervals (0: none).
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    /// Coverage of the confidence intervals.
    #[arg(long, default_value_t = 0.95)]
    confidence: f64,
    /// Seed of the bootstrap and of the hold-out split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Comma-separated grid of C (logistic regression; default 1e-4 … 1e4).
    #[arg(long, value_delimiter = ',')]
    cs: Vec<f64>,
    /// Comma-separated grid of alpha (ridge regression; default 1e-2 … 1e6).
    #[arg(long, value_delimiter = ',')]
    alphas: Vec<f64>,
}

/// Runs `mmcl probe`.
pub fn run(args: Args) -> Result<()> {
    let task: Task = args.task.parse()?;
    if !(args.confidence > 0.0 && args.confidence < 1.0) {
        bail!("--confidence must lie in (0, 1), got {}", args.confidence);
    }
    check_outputs(&args)?;
    let train_x = read_embeddings(&args.train_x)?;
    let train_y = read_targets(&args.train_y)?;
    let test_x = read_embeddings(&args.test_x)?;
    let test_y = read_targets(&args.test_y)?;
    check_pair(&args.train_x, &train_x, &args.train_y, &train_y)?;
    check_pair(&args.test_x, &test_x, &args.test_y, &test_y)?;
    check_compatible(
        (&args.train_x, &args.train_y),
        (&train_x, &train_y),
        (&args.test_x, &args.test_y),
        (&test_x, &test_y),
    )?;
    let validation = match (&args.val_x, &args.val_y) {
        (Some(px), Some(py)) => {
            let (vx, vy) = (read_embeddings(px)?, read_targets(py)?);
            check_pair(px, &vx, py, &vy)?;
            check_compatible(
                (&args.train_x, &args.train_y),
                (&train_x, &train_y),
                (px, py),
                (&vx, &vy),
            )?;
            Some((vx, vy))
        }
        _ => None,
    };
    let k = train_y.cols();
    let names = if args.target_names.is_empty() {
        (0..k).map(|j| format!("target_{j}")).collect()
    } else if args.target_names.len() == k {
        args.target_names.clone()
    } else {
        bail!(
            "--target-names lists {} names but the targets have {k} columns",
            args.target_names.len()
        );
    };
    check_targets(task, &args.train_y, &train_y, &names, true)?;
    check_targets(task, &args.test_y, &test_y, &names, false)?;
    if let (Some((_, vy)), Some(path)) = (&validation, &args.val_y) {
        check_targets(task, path, vy, &names, false)?;
    }

    let mut config = ProbeConfig {
        seed: args.seed,
        ..ProbeConfig::default()
    };
    if !args.cs.is_empty() {
        config.cs = args.cs.clone();
    }
    if !args.alphas.is_empty() {
        config.alphas = args.alphas.clone();
    }
    eprintln!(
        "fitting {} {task} probe{} on {} × {} embeddings{}",
        k,
        if k == 1 { "" } else { "s" },
        train_x.rows(),
        train_x.cols(),
        if validation.is_some() {
            ", choosing the regularisation on the validation split"
        } else {
            ", choosing the regularisation on a 20 % hold-out of the training rows"
        }
    );
    let start = Instant::now();
    let probe = LinearProbe::fit(
        task,
        &train_x,
        &train_y,
        validation.as_ref().map(|(x, y)| (x, y)),
        &config,
    )
    .context("cannot fit the probe")?;
    eprintln!("fitted in {:.1} s", start.elapsed().as_secs_f64());
    for (name, head) in names.iter().zip(&probe.heads) {
        let best = head
            .selection
            .iter()
            .find(|s| s.regularisation == head.regularisation)
            .map(|s| s.validation_score)
            .unwrap_or(f64::NAN);
        let converged = match head.fit {
            Some(f) if !f.converged => format!(
                " (solver stopped after {} iterations, gradient {:.1e})",
                f.iterations, f.gradient_norm
            ),
            _ => String::new(),
        };
        eprintln!(
            "  {name}: {} = {:e} (validation {} {best:.4}){converged}",
            if task == Task::Classification {
                "C"
            } else {
                "alpha"
            },
            head.regularisation,
            if task == Task::Classification {
                "AUROC"
            } else {
                "R²"
            },
        );
    }

    let predictions = probe.predict(&test_x)?;
    let bootstrap = Bootstrap {
        resamples: args.bootstrap,
        seed: args.seed,
        confidence: args.confidence,
    };
    let evaluation = metrics::evaluate(
        task,
        &test_y,
        &predictions,
        &names,
        args.threshold,
        &bootstrap,
    )
    .with_context(|| {
        format!(
            "cannot evaluate the test predictions against {}",
            args.test_y.display()
        )
    })?;
    print!("{}", report::text_table(&evaluation));

    if let Some(path) = &args.output {
        report::write_evaluation(path, &evaluation)?;
        eprintln!("metrics written to {}", path.display());
    }
    if let Some(path) = &args.predictions {
        write_npy_f32(path, &predictions)?;
        eprintln!("predictions written to {}", path.display());
    }
    if let Some(dir) = &args.figures {
        write_figures(dir, task, &evaluation, &test_y, &predictions, &args)?;
        eprintln!("figures and report written to {}", dir.display());
    }
    Ok(())
}

/// Refuses outputs (metrics, predictions, the figure folder's files) that are inputs.
fn check_outputs(args: &Args) -> Result<()> {
    let inputs: Vec<&Path> = [&args.train_x, &args.train_y, &args.test_x, &args.test_y]
        .into_iter()
        .chain(args.val_x.iter())
        .chain(args.val_y.iter())
        .map(PathBuf::as_path)
        .collect();
    let mut outputs: Vec<PathBuf> = args
        .output
        .iter()
        .chain(&args.predictions)
        .cloned()
        .collect();
    if let Some(dir) = &args.figures {
        outputs.push(dir.clone());
        outputs.extend(["roc.png", "scatter.png", "report.md"].map(|f| dir.join(f)));
    }
    for output in &outputs {
        ensure_output_not_input(output, OutputKind::File, &inputs)?;
    }
    Ok(())
}

fn write_figures(
    dir: &Path,
    task: Task,
    evaluation: &Evaluation,
    truth: &Matrix<f64>,
    predictions: &Matrix<f64>,
    args: &Args,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let figure = plot::save_evaluation_figure(dir, evaluation, truth, predictions, "test split")?;
    let notes = vec![format!(
        "Linear probe on frozen embeddings: training `{}`, test `{}`{}. Standardisation fitted on the training rows; {} per target.",
        args.train_x.display(),
        args.test_x.display(),
        args.val_x
            .as_ref()
            .map(|v| format!(", validation `{}`", v.display()))
            .unwrap_or_default(),
        match task {
            Task::Classification =>
                "L2 logistic regression with balanced class weights, C chosen by validation AUROC",
            Task::Regression => "ridge regression, alpha chosen by validation R²",
        }
    )];
    Report {
        title: "Linear probe".into(),
        evaluation,
        figures: vec![figure],
        notes,
    }
    .save(&dir.join("report.md"))?;
    Ok(())
}

/// A numeric `.npy` array as f64 values with its shape.
fn read_npy(path: &Path) -> Result<(Vec<u64>, Vec<f64>)> {
    // The workspace's checked opener: header, shape size and data length are validated
    // against the file before anything is allocated from them.
    let checked = mmcl_core::npy::open_npy(path)?;
    let shape: Vec<u64> = checked.layout().shape.iter().map(|&d| d as u64).collect();
    let order = checked.layout().order;
    let descr = checked.layout().dtype.to_string();
    let npy = checked.into_npy();
    let read_err = || {
        format!(
            "{}: cannot read the {descr} data (truncated file?)",
            path.display()
        )
    };
    let kind = descr.trim_start_matches(['<', '>', '|', '=']);
    let values: Vec<f64> = match kind {
        "f4" => npy
            .into_vec::<f32>()
            .with_context(read_err)?
            .into_iter()
            .map(f64::from)
            .collect(),
        "f8" => npy.into_vec::<f64>().with_context(read_err)?,
        "i4" => npy
            .into_vec::<i32>()
            .with_context(read_err)?
            .into_iter()
            .map(f64::from)
            .collect(),
        "i8" => npy
            .into_vec::<i64>()
            .with_context(read_err)?
            .into_iter()
            .map(|v| v as f64)
            .collect(),
        "u1" => npy
            .into_vec::<u8>()
            .with_context(read_err)?
            .into_iter()
            .map(f64::from)
            .collect(),
        "b1" => npy
            .into_vec::<bool>()
            .with_context(read_err)?
            .into_iter()
            .map(|b| b as u8 as f64)
            .collect(),
        _ => bail!(
            "{}: unsupported dtype {descr} (use float32)",
            path.display()
        ),
    };
    let expected: u64 = shape.iter().product();
    if values.len() as u64 != expected {
        bail!(
            "{}: holds {} values but its shape {:?} needs {expected}",
            path.display(),
            values.len(),
            shape
        );
    }
    // Fortran order: transpose the 2-D case into row-major.
    let values = if order == npyz::Order::Fortran && shape.len() == 2 {
        let (r, c) = (shape[0] as usize, shape[1] as usize);
        let mut out = vec![0.0; values.len()];
        for i in 0..r {
            for j in 0..c {
                out[i * c + j] = values[j * r + i];
            }
        }
        out
    } else {
        values
    };
    Ok((shape, values))
}

fn read_embeddings(path: &Path) -> Result<Matrix<f32>> {
    let (shape, values) = read_npy(path)?;
    let [n, d] = shape[..] else {
        bail!(
            "{}: embeddings must be a 2-D array (N, D), got shape {:?}",
            path.display(),
            shape
        );
    };
    if n == 0 || d == 0 {
        bail!("{}: empty embedding array {:?}", path.display(), shape);
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!(
            "{}: row {} holds a NaN or infinite value",
            path.display(),
            i / d as usize
        );
    }
    Ok(Matrix::new(
        n as usize,
        d as usize,
        values.into_iter().map(|v| v as f32).collect(),
    )?)
}

fn read_targets(path: &Path) -> Result<Matrix<f64>> {
    let (shape, values) = read_npy(path)?;
    let (n, k) = match shape[..] {
        [n] => (n, 1),
        [n, k] => (n, k),
        _ => bail!(
            "{}: targets must have shape (N,) or (N, K), got {:?}",
            path.display(),
            shape
        ),
    };
    if n == 0 || k == 0 {
        bail!("{}: empty target array {:?}", path.display(), shape);
    }
    if values.iter().any(|v| v.is_infinite()) {
        bail!("{}: holds an infinite value", path.display());
    }
    Ok(Matrix::new(n as usize, k as usize, values)?)
}

fn check_pair(px: &Path, x: &Matrix<f32>, py: &Path, y: &Matrix<f64>) -> Result<()> {
    if x.rows() != y.rows() {
        bail!(
            "{} has {} rows but {} has {}: embeddings and targets must list the same subjects",
            px.display(),
            x.rows(),
            py.display(),
            y.rows()
        );
    }
    Ok(())
}

fn check_compatible(
    (train_x_path, train_y_path): (&Path, &Path),
    (train_x, train_y): (&Matrix<f32>, &Matrix<f64>),
    (x_path, y_path): (&Path, &Path),
    (x, y): (&Matrix<f32>, &Matrix<f64>),
) -> Result<()> {
    if x.cols() != train_x.cols() {
        bail!(
            "{} has {} features but {} has {}",
            x_path.display(),
            x.cols(),
            train_x_path.display(),
            train_x.cols()
        );
    }
    if y.cols() != train_y.cols() {
        bail!(
            "{} has {} target columns but {} has {}",
            y_path.display(),
            y.cols(),
            train_y_path.display(),
            train_y.cols()
        );
    }
    Ok(())
}

fn check_targets(
    task: Task,
    path: &Path,
    y: &Matrix<f64>,
    names: &[String],
    training: bool,
) -> Result<()> {
    for (j, name) in names.iter().enumerate() {
        let present: Vec<f64> = y.column(j).into_iter().filter(|v| !v.is_nan()).collect();
        if present.is_empty() {
            bail!(
                "{}: target {name} (column {j}) is missing (NaN) in every row",
                path.display()
            );
        }
        if task == Task::Classification {
            if let Some(v) = present.iter().find(|&&v| v != 0.0 && v != 1.0) {
                bail!(
                    "{}: target {name} (column {j}) holds {v}; classification labels must be 0 or 1 (NaN when missing)",
                    path.display()
                );
            }
            let positives = present.iter().filter(|&&v| v == 1.0).count();
            if positives == 0 || positives == present.len() {
                bail!(
                    "{}: target {name} (column {j}) has one class only (all {} present labels are {}); {} needs both classes",
                    path.display(),
                    present.len(),
                    if positives == 0 { 0 } else { 1 },
                    if training {
                        "fitting a classifier"
                    } else {
                        "computing AUROC"
                    }
                );
            }
        } else if training && present.len() < 2 {
            bail!(
                "{}: target {name} (column {j}) has fewer than 2 values",
                path.display()
            );
        }
    }
    Ok(())
}

/// Writes a row-major f32 matrix as a version-1.0 `.npy`, atomically.
fn write_npy_f32(path: &Path, m: &Matrix<f64>) -> Result<()> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        m.rows(),
        m.cols()
    );
    // Magic (6) + version (2) + length (2) + header + newline, padded to a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + 4 * m.as_slice().len());
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for &v in m.as_slice() {
        bytes.extend_from_slice(&(v as f32).to_le_bytes());
    }
    mmcl_nn::io::write_bytes_atomic(path, &bytes)?;
    Ok(())
}

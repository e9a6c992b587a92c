//! `mmcl probe`: linear probing of frozen embeddings, with bootstrapped metrics.
//!
//! ```text
//! mmcl probe --cache DIR --encoder MODEL --output DIR [--task classification|regression]
//! mmcl probe --train-x X.npy --train-y Y.npy --test-x … --test-y … --task TASK
//!     [--val-x … --val-y …] [--output metrics.json] [--predictions P.npy] [--figures DIR]
//! ```
//!
//! **From a cache and an encoder** (one command after training): the cache's train, val and
//! test splits are embedded as every evaluation does (`mmcl embed-ecg --cache`), then one
//! logistic probe per disease (AUROC) and one ridge probe per phenotype (R²) are fitted on
//! train, regularised on val and evaluated on test; `DIR/diseases/` and `DIR/phenotypes/` each
//! receive `metrics.json`, `predictions.npy`, a figure and `report.md`.
//!
//! **From arrays**, embeddings `X` (N × D) and targets `y` (N or N × K, NaN where missing) as
//! `.npy`, with the regularisation chosen on the validation split (or on a seeded 20 %
//! hold-out of the training rows when none is given).
//!
//! A target that cannot be probed — a rare disease with one class only in a split — is
//! reported (no metrics, a warning with its counts) and the others go on. Output folders are
//! written whole: refused when they hold files unless `--overwrite`, and never left partial.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use mmcl_data::cache::Cache;
use mmcl_data::tables::Split;
use mmcl_eval::Matrix;
use mmcl_eval::metrics::{self, Bootstrap, Evaluation, Task};
use mmcl_eval::plot;
use mmcl_eval::probe::{ProbeConfig, ProbeOutcome, probe_and_evaluate};
use mmcl_eval::report::{self, Report};

use super::common::{OutputKind, StagedDir, ensure_output_not_input, load_ecg_encoder};

/// Arguments of `mmcl probe`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A dataset cache (`mmcl build-dataset`): probe its diseases and phenotypes on the
    /// embeddings of --encoder.
    #[arg(long, requires = "encoder", conflicts_with_all = ["train_x", "train_y", "test_x", "test_y", "val_x", "val_y"])]
    cache: Option<PathBuf>,
    /// With --cache: the ECG encoder (a run folder, a checkpoint folder or a file).
    #[arg(long, value_name = "MODEL", requires = "cache")]
    encoder: Option<PathBuf>,
    /// With --cache: the encoder's JSON configuration, for files that carry none.
    #[arg(long, requires = "cache")]
    config: Option<PathBuf>,
    /// With --cache: the pooling (default: the encoder configuration's).
    #[arg(long, requires = "cache")]
    pooling: Option<String>,
    /// With --cache: ECGs per forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// With --cache: device of the encoder (cpu, cuda or cuda:N).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Training embeddings, `.npy` of shape (N, D).
    #[arg(long, required_unless_present = "cache")]
    train_x: Option<PathBuf>,
    /// Training targets, `.npy` of shape (N,) or (N, K); NaN marks a missing value.
    #[arg(long, required_unless_present = "cache")]
    train_y: Option<PathBuf>,
    /// Test embeddings, `.npy` of shape (M, D).
    #[arg(long, required_unless_present = "cache")]
    test_x: Option<PathBuf>,
    /// Test targets, `.npy` of shape (M,) or (M, K).
    #[arg(long, required_unless_present = "cache")]
    test_y: Option<PathBuf>,
    /// classification (0/1 labels, one binary task per column) or regression; with --cache,
    /// only the diseases or only the phenotypes (default: both).
    #[arg(long, value_parser = ["classification", "regression"], required_unless_present = "cache")]
    task: Option<String>,
    /// Validation embeddings used to choose the regularisation (with --val-y).
    #[arg(long, requires = "val_y")]
    val_x: Option<PathBuf>,
    /// Validation targets.
    #[arg(long, requires = "val_x")]
    val_y: Option<PathBuf>,
    /// Where to write: with arrays, the metrics JSON (with intervals, per target and averaged);
    /// with --cache, the output folder.
    #[arg(long)]
    output: Option<PathBuf>,
    /// With arrays: write the test predictions (probabilities or values), float32 (M, K), to
    /// this `.npy`.
    #[arg(long, conflicts_with = "cache")]
    predictions: Option<PathBuf>,
    /// With arrays: write ROC curves (classification) or predicted-vs-true plots (regression),
    /// the metrics, the predictions and a Markdown report `report.md` into this folder.
    #[arg(long, conflicts_with = "cache")]
    figures: Option<PathBuf>,
    /// Replace an existing, non-empty output folder.
    #[arg(long)]
    overwrite: bool,
    /// With arrays: comma-separated target names (default: target_0, target_1, …; a cache
    /// names its own).
    #[arg(long, value_delimiter = ',', conflicts_with = "cache")]
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

/// One split's embeddings and targets.
type SplitData = (Matrix<f32>, Matrix<f64>);

/// Runs `mmcl probe`.
pub fn run(args: Args) -> Result<()> {
    if let Err(mmcl_eval::Error::InvalidInput(reason)) = bootstrap(&args).check() {
        bail!("--bootstrap/--confidence: {reason}");
    }
    match (&args.cache, &args.encoder) {
        (Some(cache), Some(encoder)) => run_cache(&args, cache, encoder),
        _ => run_arrays(&args),
    }
}

/// The bootstrap's settings from the command line.
fn bootstrap(args: &Args) -> Bootstrap {
    Bootstrap {
        resamples: args.bootstrap,
        seed: args.seed,
        confidence: args.confidence,
    }
}

/// The probe's settings from the command line.
fn probe_config(args: &Args) -> ProbeConfig {
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
    config
}

/// Fits and evaluates one task, printing the choices, the warnings and the metrics table.
fn probe_task(
    args: &Args,
    task: Task,
    [train, val, test]: [Option<&SplitData>; 3],
    names: &[String],
) -> Result<ProbeOutcome> {
    let (train, test) = match (train, test) {
        (Some(a), Some(b)) => (a, b),
        _ => bail!("the training and test splits are both needed"),
    };
    let k = names.len();
    eprintln!(
        "fitting {k} {task} probe{} on {} × {} embeddings{}",
        if k == 1 { "" } else { "s" },
        train.0.rows(),
        train.0.cols(),
        if val.is_some() {
            ", choosing the regularisation on the validation split"
        } else {
            ", choosing the regularisation on a 20 % hold-out of the training rows"
        }
    );
    let start = Instant::now();
    let bootstrap = bootstrap(args);
    let outcome = probe_and_evaluate(
        task,
        (&train.0, &train.1),
        val.map(|v| (&v.0, &v.1)),
        (&test.0, &test.1),
        names,
        &probe_config(args),
        args.threshold,
        &bootstrap,
    )
    .context("cannot fit the probe")?;
    eprintln!("fitted in {:.1} s", start.elapsed().as_secs_f64());
    let (knob, score) = match task {
        Task::Classification => ("C", "AUROC"),
        Task::Regression => ("alpha", "R²"),
    };
    for target in &outcome.probes.targets {
        let Some(head) = target.probe.as_ref().and_then(|p| p.heads.first()) else {
            continue;
        };
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
            "  {}: {knob} = {:e} (validation {score} {best:.4}){converged}",
            target.name, head.regularisation
        );
    }
    for (name, note) in outcome.probes.notes() {
        eprintln!("warning: {name}: {note}");
    }
    for t in &outcome.evaluation.targets {
        if let Some(why) = &t.undefined
            && outcome
                .probes
                .targets
                .iter()
                .any(|p| p.name == t.name && p.probe.is_some())
        {
            eprintln!("warning: {}: no test metrics: {why}", t.name);
        }
    }
    print!("{}", report::text_table(&outcome.evaluation));
    if outcome
        .evaluation
        .targets
        .iter()
        .all(|t| t.undefined.is_some())
    {
        let reasons: Vec<String> = outcome
            .evaluation
            .undefined_targets()
            .map(|(n, why)| format!("{n}: {why}"))
            .collect();
        bail!("no target could be probed ({})", reasons.join("; "));
    }
    Ok(outcome)
}

/// `mmcl probe --cache DIR --encoder MODEL`.
fn run_cache(args: &Args, cache_dir: &Path, encoder_path: &Path) -> Result<()> {
    let Some(output) = &args.output else {
        bail!("--output DIR is needed with --cache");
    };
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    ensure_output_not_input(output, OutputKind::Directory, &[cache_dir, encoder_path])?;
    let tasks = match args.task.as_deref() {
        Some(t) => vec![t.parse::<Task>()?],
        None => vec![Task::Classification, Task::Regression],
    };
    let device = super::common::parse_device(&args.device)?;
    let encoder = load_ecg_encoder(
        encoder_path,
        args.config.as_deref(),
        args.pooling.as_deref(),
        &device,
    )?;
    eprintln!("{}", encoder.summary);
    let cache = Arc::new(Cache::open(cache_dir)?);
    let out = StagedDir::begin(output, args.overwrite)?;
    let mut splits = Vec::new();
    for split in [Split::Train, Split::Val, Split::Test] {
        let (x, targets) = super::embed_ecg::embed_cache_split(
            &cache,
            Some(split),
            &encoder,
            args.batch_size,
            &device,
        )?;
        splits.push((x, targets));
    }
    let index = cache.index();
    for task in tasks {
        let (folder, names) = match task {
            Task::Classification => ("diseases", &index.label_names),
            Task::Regression => ("phenotypes", &index.phenotype_names),
        };
        if names.is_empty() {
            eprintln!("the cache has no {folder}: nothing to probe");
            continue;
        }
        let data: Vec<SplitData> = splits
            .iter()
            .map(|(x, t)| {
                let y = match task {
                    Task::Classification => t.labels.clone(),
                    Task::Regression => t.phenotypes.clone(),
                };
                (x.clone(), y)
            })
            .collect();
        eprintln!("{folder}:");
        let outcome = probe_task(
            args,
            task,
            [Some(&data[0]), Some(&data[1]), Some(&data[2])],
            names,
        )?;
        let dir = out.path().join(folder);
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let description = format!(
            "Linear probe on the frozen ECG embeddings of `{}` ({} pooling) over the cache `{}`: \
             fitted on its training split ({} subjects), regularisation chosen on its validation \
             split ({}), evaluated on its test split ({}).",
            encoder_path.display(),
            encoder.pooling,
            cache_dir.display(),
            data[0].0.rows(),
            data[1].0.rows(),
            data[2].0.rows()
        );
        write_results(&dir, task, &outcome, &data[2].1, description)?;
    }
    out.commit()?;
    eprintln!(
        "metrics, predictions, figures and reports written to {}",
        output.display()
    );
    Ok(())
}

/// `mmcl probe --train-x … --test-y …`.
fn run_arrays(args: &Args) -> Result<()> {
    let (Some(train_x), Some(train_y), Some(test_x), Some(test_y), Some(task)) = (
        &args.train_x,
        &args.train_y,
        &args.test_x,
        &args.test_y,
        &args.task,
    ) else {
        bail!("give --cache and --encoder, or --train-x, --train-y, --test-x, --test-y and --task");
    };
    let task: Task = task.parse()?;
    check_outputs(args, [train_x, train_y, test_x, test_y])?;
    let train = (read_embeddings(train_x)?, read_targets(train_y)?);
    let test = (read_embeddings(test_x)?, read_targets(test_y)?);
    check_pair(train_x, &train.0, train_y, &train.1)?;
    check_pair(test_x, &test.0, test_y, &test.1)?;
    check_compatible(
        (train_x, train_y),
        (&train.0, &train.1),
        (test_x, test_y),
        (&test.0, &test.1),
    )?;
    let validation = match (&args.val_x, &args.val_y) {
        (Some(px), Some(py)) => {
            let (vx, vy) = (read_embeddings(px)?, read_targets(py)?);
            check_pair(px, &vx, py, &vy)?;
            check_compatible(
                (train_x, train_y),
                (&train.0, &train.1),
                (px, py),
                (&vx, &vy),
            )?;
            Some((vx, vy))
        }
        _ => None,
    };
    let k = train.1.cols();
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
    check_targets(task, train_y, &train.1, &names)?;
    check_targets(task, test_y, &test.1, &names)?;
    if let (Some((_, vy)), Some(path)) = (&validation, &args.val_y) {
        check_targets(task, path, vy, &names)?;
    }
    let outcome = probe_task(
        args,
        task,
        [Some(&train), validation.as_ref(), Some(&test)],
        &names,
    )?;

    if let Some(path) = &args.output {
        report::write_evaluation(path, &outcome.evaluation)?;
        eprintln!("metrics written to {}", path.display());
    }
    if let Some(path) = &args.predictions {
        write_predictions(path, &outcome.predictions)?;
        eprintln!("predictions written to {}", path.display());
    }
    if let Some(dir) = &args.figures {
        let staged = StagedDir::begin(dir, args.overwrite)?;
        let description = format!(
            "Linear probe on frozen embeddings: training `{}`, test `{}`{}.",
            train_x.display(),
            test_x.display(),
            args.val_x
                .as_ref()
                .map(|v| format!(", validation `{}`", v.display()))
                .unwrap_or_default(),
        );
        write_results(staged.path(), task, &outcome, &test.1, description)?;
        staged.commit()?;
        eprintln!(
            "metrics, predictions, figures and report written to {}",
            dir.display()
        );
    }
    Ok(())
}

/// Refuses outputs (metrics, predictions, the figure folder) that are inputs.
fn check_outputs(args: &Args, required: [&PathBuf; 4]) -> Result<()> {
    let inputs: Vec<&Path> = required
        .into_iter()
        .chain(args.val_x.iter())
        .chain(args.val_y.iter())
        .map(PathBuf::as_path)
        .collect();
    for output in args.output.iter().chain(&args.predictions) {
        ensure_output_not_input(output, OutputKind::File, &inputs)?;
    }
    if let Some(dir) = &args.figures {
        ensure_output_not_input(dir, OutputKind::Directory, &inputs)?;
    }
    Ok(())
}

/// `metrics.json`, `predictions.npy`, the figure and `report.md` of one task, into `dir`.
fn write_results(
    dir: &Path,
    task: Task,
    outcome: &ProbeOutcome,
    truth: &Matrix<f64>,
    description: String,
) -> Result<()> {
    let evaluation: &Evaluation = &outcome.evaluation;
    report::write_evaluation(&dir.join("metrics.json"), evaluation)?;
    write_predictions(&dir.join("predictions.npy"), &outcome.predictions)?;
    let defined = evaluation.targets.iter().any(|t| t.undefined.is_none());
    let figures = if defined {
        vec![plot::save_evaluation_figure(
            dir,
            evaluation,
            truth,
            &outcome.predictions,
            "test split",
        )?]
    } else {
        Vec::new()
    };
    let mut notes = vec![format!(
        "{description} Standardisation fitted on the training rows; {} per target.",
        match task {
            Task::Classification =>
                "L2 logistic regression with balanced class weights, C chosen by validation AUROC",
            Task::Regression => "ridge regression, alpha chosen by validation R²",
        }
    )];
    let knob = match task {
        Task::Classification => "C",
        Task::Regression => "alpha",
    };
    let chosen: Vec<String> = outcome
        .probes
        .targets
        .iter()
        .map(|t| match t.probe.as_ref().and_then(|p| p.heads.first()) {
            Some(h) => format!("{} {knob} = {:e}", t.name, h.regularisation),
            None => format!("{} not fitted", t.name),
        })
        .collect();
    notes.push(format!("Chosen regularisation: {}.", chosen.join("; ")));
    notes.extend(
        outcome
            .probes
            .notes()
            .map(|(name, note)| format!("**{name}**: {note}.")),
    );
    Report {
        title: match task {
            Task::Classification => "Linear probe: classification".into(),
            Task::Regression => "Linear probe: regression".into(),
        },
        evaluation,
        figures,
        notes,
    }
    .save(&dir.join("report.md"))?;
    Ok(())
}

/// The elements of `npy` (of type `T`), each widened to f64 by `widen`: every dtype
/// [`read_npy`] takes is read alike.
fn widened<T: npyz::Deserialize, R: std::io::Read>(
    npy: npyz::NpyFile<R>,
    widen: fn(T) -> f64,
) -> std::io::Result<Vec<f64>> {
    Ok(npy.into_vec::<T>()?.into_iter().map(widen).collect())
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
    let values = match kind {
        "f4" => widened::<f32, _>(npy, f64::from),
        "f8" => npy.into_vec::<f64>(),
        "i4" => widened::<i32, _>(npy, f64::from),
        "i8" => widened::<i64, _>(npy, |v| v as f64),
        "u1" => widened::<u8, _>(npy, f64::from),
        "b1" => widened::<bool, _>(npy, |b| b as u8 as f64),
        _ => bail!(
            "{}: unsupported dtype {descr} (use float32)",
            path.display()
        ),
    }
    .with_context(read_err)?;
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

/// Refuses labels other than 0/1 (classification) and a target missing in every row; a
/// target with one class only is left to the probes, which report it and go on.
fn check_targets(task: Task, path: &Path, y: &Matrix<f64>, names: &[String]) -> Result<()> {
    for (j, name) in names.iter().enumerate() {
        let present: Vec<f64> = y.column(j).into_iter().filter(|v| !v.is_nan()).collect();
        if present.is_empty() {
            bail!(
                "{}: target {name} (column {j}) is missing (NaN) in every row",
                path.display()
            );
        }
        if task == Task::Classification
            && let Some(v) = present.iter().find(|&&v| v != 0.0 && v != 1.0)
        {
            bail!(
                "{}: target {name} (column {j}) holds {v}; classification labels must be 0 or 1 (NaN when missing)",
                path.display()
            );
        }
    }
    Ok(())
}

/// Writes the predictions as a float32 `(M, K)` `.npy`, atomically.
fn write_predictions(path: &Path, m: &Matrix<f64>) -> Result<()> {
    let values: Vec<f32> = m.as_slice().iter().map(|&v| v as f32).collect();
    mmcl_core::npy::write_npy_f32(path, &[m.rows(), m.cols()], &values)
        .with_context(|| format!("cannot write {}", path.display()))
}
